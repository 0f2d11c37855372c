"""Reproducible synthetic learners, written as SPEC §1 input events (JSONL).

`write_events(path, users, days, seed)` simulates `users` learners over `days` local days from
`start` (default 2026-03-01) and writes one JSON object per line, in event-time order, the way a
real stream arrives. Same arguments -> byte-identical file (numpy PCG64 seeded with `seed`, every
draw in a fixed order, stable sorts only).

Scale: about 3.3 events per user-day on average over all user-days (inactive days included), so
`users=10_000, days=30` writes roughly 1,000,000 events. Everything is vectorised per column
(numpy for the simulation, polars string expressions for the JSON lines): no Python code per event.

What the learners look like:

- Habits, one per user: `steady`, `weekend` (active on local Saturdays/Sundays only), `dropout`
  (stops after 3 .. 0.6*days days), `struggler` (scores mostly < 60), `improver` (scores rise
  1–2 points a day), `decliner` (scores fall 1–2 points a day), `burst` (few active days with many
  sessions each). Every user has at least one active day.
- Sessions: `session_started`, then 1 + Poisson activities (lessons, exercises, quizzes,
  assessments, materials viewed/completed, gamification), then `session_ended` (with the session's
  `duration_s`); every event of a session carries its `session_id`. Activities carry `skill`,
  `content_id` and `duration_s`; exercises, quizzes and assessments a `score` in [0, 100] (integer
  or one decimal, per user); `xp_earned` an integer `xp`. Skills come from the cohort's subject
  (math: algebra, geometry, arithmetic, statistics; language: reading, grammar, vocabulary,
  listening, writing); many users have one weak and/or one strong skill.
- Cohorts and organisations: about 30 users per cohort, about 6 cohorts per org, each cohort in one
  org; about 3% of users have neither (those fields are then omitted).
- Time zones per user (mostly the cohort's zone): UTC, America/New_York and America/Los_Angeles
  (DST from 2026-03-08), Europe/Berlin and Europe/London (DST from 2026-03-29), Australia/Sydney
  (DST ends 2026-04-05), Asia/Seoul, Asia/Kolkata (+05:30). Sessions start around the user's
  preferred local hour (morning .. night owl), so many local days straddle two UTC dates.
- Timestamps are RFC 3339, per event either `Z` (UTC) or the local offset that is correct for that
  instant in the user's zone (DST included), with or without milliseconds (per user). Every event
  carries `timezone`, except about half of the events of UTC users, which omit it (the decoder's
  `default_timezone=UTC` then gives the same local day).

Stream imperfections (all bounded so that nothing is late unless asked):

- About 0.5% of events arrive out of order: delayed by 1 s .. 4 min, always < 5 min
  (`max_out_of_orderness`).
- `duplicate_fraction`: that many extra lines (relative to the events) re-send an earlier line
  byte for byte, 1 .. 50 s after the original arrived, so still within 5 min of its event time.
- `bad_fraction`: that fraction of all lines replaced by bad records covering every rejection
  reason of SPEC §2 (see `BAD_KINDS`); the first `len(BAD_KINDS)` bad records cover each kind once.
  Only events without a duplicate are replaced, so a run's expected counts are exact:
  accepted = events - bad - duplicates, rejected = bad, duplicate = duplicates, late = 0.

Sharp edges: string fields are generated ASCII without quotes or backslashes, so no JSON escaping
is done. A `start` in the future produces future timestamps (which the decoder rejects). Memory is
about 1 KB per event while generating.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

__all__ = [
    "BAD_KINDS",
    "EVENTS_PER_USER_DAY",
    "HABITS",
    "SKILLS",
    "ZONES",
    "GenerateStats",
    "write_events",
]

#: mean events per user-day (over all user-days), the scale knob documented above
EVENTS_PER_USER_DAY = 3.3

ZONES = (
    "UTC",
    "America/New_York",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Europe/London",
    "Australia/Sydney",
    "Asia/Seoul",
    "Asia/Kolkata",
)
_ZONE_WEIGHTS = (0.14, 0.16, 0.08, 0.16, 0.08, 0.12, 0.14, 0.12)

HABITS = ("steady", "weekend", "dropout", "struggler", "improver", "decliner", "burst")
_HABIT_WEIGHTS = (0.34, 0.10, 0.12, 0.10, 0.12, 0.10, 0.12)

_MATH = ("algebra", "geometry", "arithmetic", "statistics")
_LANGUAGE = ("reading", "grammar", "vocabulary", "listening", "writing")
SKILLS = _MATH + _LANGUAGE

# event types: index -> name; 0 and 1 are the session brackets, the rest are "middle" events
_TYPES = (
    "session_started",
    "session_ended",
    "lesson_completed",
    "exercise_completed",
    "quiz_completed",
    "assessment_completed",
    "material_viewed",
    "material_completed",
    "xp_earned",
    "level_up",
    "achievement_unlocked",
    "milestone_reached",
)
_MID_TYPES = np.arange(2, len(_TYPES))
_MID_WEIGHTS = np.array([0.16, 0.30, 0.11, 0.03, 0.12, 0.07, 0.14, 0.02, 0.03, 0.02])
# median activity duration in seconds per type (0 = instantaneous gamification event)
_MEDIAN_DURATION = np.array([0, 0, 480, 150, 360, 1500, 120, 300, 0, 0, 0, 0], dtype=np.float64)
_SCORED = np.zeros(len(_TYPES), dtype=bool)
_SCORED[[3, 4, 5]] = True
_HAS_SKILL = np.zeros(len(_TYPES), dtype=bool)
_HAS_SKILL[2:8] = True
_CONTENT_PREFIX = ("", "", "lesson", "ex", "quiz", "exam", "mat", "mat", "", "", "", "")

#: every kind of bad record: (SPEC §2 rejection reason, variant)
BAD_KINDS: tuple[tuple[str, str], ...] = (
    ("malformed_json", "truncated"),
    ("malformed_json", "double_comma"),
    ("malformed_json", "unquoted_keys"),
    ("not_an_object", "array"),
    ("not_an_object", "string"),
    ("not_an_object", "number"),
    ("invalid_utf8", "raw_bytes"),
    ("oversized", "padding"),
    ("missing_field:event_id", ""),
    ("missing_field:user_id", ""),
    ("missing_field:type", ""),
    ("missing_field:timestamp", ""),
    ("invalid_field:score", "150"),
    ("invalid_field:duration_s", "-1"),
    ("invalid_field:xp", "1.5"),
    ("invalid_field:xp", '"7"'),
    ("invalid_field:timezone", "Mars/Olympus"),
    ("invalid_field:cohort_id", '""'),
    ("invalid_field:event_id", "129 chars"),
    ("invalid_field:timestamp", "not a date"),
    ("unknown_type", "video_watched"),
    ("timestamp_missing_timezone", "local time"),
    ("timestamp_in_future", "year 2999"),
)
# kinds after the first round are drawn with these weights (oversized lines are 70 KB: keep rare)
_BAD_WEIGHTS = np.array([0.2 if reason == "oversized" else 1.0 for reason, _ in BAD_KINDS])
_OVERSIZED_PAD = 70_000
# placeholder for the invalid UTF-8 bytes (polars strings must be valid UTF-8)
_MARK = "\u0001\u0002BAD\u0002\u0001"
_RAW_BAD_BYTES = b"\xff\xfe\xc3("

_OUT_OF_ORDER_FRACTION = 0.005
_MAX_DELAY_MS = 240_000  # out-of-order delay bound: 4 min
_MAX_RESEND_MS = 50_000  # duplicate re-send after the original: <= 50 s (total < 5 min)


@dataclass(frozen=True)
class GenerateStats:
    """What `write_events` wrote.

    `events`: lines in the file (good events + duplicate re-sends + bad records);
    `bad`: bad records among them; `users`: learners simulated (each has >= 1 event before bad
    records replace some lines); `path`: the file; `duplicates`: re-sent lines.
    """

    events: int
    bad: int
    users: int
    path: str
    duplicates: int = 0


def write_events(
    path: str | Path,
    users: int,
    days: int,
    seed: int,
    *,
    start: date = date(2026, 3, 1),
    bad_fraction: float = 0.0,
    duplicate_fraction: float = 0.0,
) -> GenerateStats:
    """Write reproducible synthetic events for `users` learners over `days` local days to `path`.

    Raises ValueError naming the bad argument. Overwrites `path`.
    """
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise ValueError(f"users must be an integer >= 1, got {users!r}")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be an integer >= 1, got {days!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if not 0.0 <= bad_fraction < 1.0:
        raise ValueError(f"bad_fraction must be in [0, 1), got {bad_fraction!r}")
    if not 0.0 <= duplicate_fraction < 1.0:
        raise ValueError(f"duplicate_fraction must be in [0, 1), got {duplicate_fraction!r}")

    rng = np.random.default_rng(seed)
    events = _simulate(rng, users, days, start)
    lines, n_dup, n_bad = _arrange(rng, events, seed, bad_fraction, duplicate_fraction)

    buf = io.BytesIO()
    pl.DataFrame({"line": lines}).write_csv(buf, include_header=False, quote_style="never")
    data = buf.getvalue()
    if n_bad:
        data = data.replace(_MARK.encode("utf-8"), _RAW_BAD_BYTES)
    out = Path(path)
    out.write_bytes(data)
    return GenerateStats(events=len(lines), bad=n_bad, users=users, path=str(out), duplicates=n_dup)


# --------------------------------------------------------------------------------------------
# simulation: numpy arrays, one entry per user / user-day / session / event


def _simulate(rng: np.random.Generator, n: int, days: int, start: date) -> pl.DataFrame:
    """Good events in generation order as columns (times in UTC ms, fields as strings/nulls)."""
    # --- users -------------------------------------------------------------------------
    habit = rng.choice(len(HABITS), size=n, p=np.array(_HABIT_WEIGHTS) / sum(_HABIT_WEIGHTS))
    n_cohorts = max(1, -(-n // 30))
    n_orgs = max(1, -(-n_cohorts // 6))
    cohort_zone = rng.choice(len(ZONES), size=n_cohorts, p=_ZONE_WEIGHTS)
    cohort_subject = rng.integers(0, 2, size=n_cohorts)  # 0 math, 1 language
    cohort = rng.integers(0, n_cohorts, size=n)
    has_cohort = rng.random(n) >= 0.03
    own_zone = rng.random(n) < 0.15
    zone = np.where(
        has_cohort & ~own_zone,
        cohort_zone[cohort],
        rng.choice(len(ZONES), size=n, p=_ZONE_WEIGHTS),
    )
    subject = np.where(has_cohort, cohort_subject[cohort], rng.integers(0, 2, size=n))
    pref_hour = rng.choice(
        np.array([7.5, 12.5, 17.0, 20.0, 22.5]), size=n, p=[0.2, 0.15, 0.25, 0.28, 0.12]
    )
    p_z = rng.choice(np.array([0.0, 0.4, 1.0]), size=n, p=[0.35, 0.35, 0.3])
    ms_precision = rng.random(n) < 0.6
    integer_scores = rng.random(n) < 0.5

    ability_mu = np.array([76, 72, 62, 45, 52, 85, 70], dtype=np.float64)[habit]
    ability_sd = np.array([8, 10, 10, 6, 6, 5, 10], dtype=np.float64)[habit]
    ability = rng.normal(ability_mu, ability_sd)
    slope = rng.normal(0.0, 0.1, size=n)
    slope = np.where(habit == 4, rng.uniform(1.0, 2.0, size=n), slope)
    slope = np.where(habit == 5, rng.uniform(-2.0, -1.0, size=n), slope)
    slope = np.where(habit == 2, rng.normal(-0.3, 0.2, size=n), slope)
    skill_off = rng.normal(0.0, 5.0, size=(n, len(SKILLS)))
    rows = np.arange(n)
    weak = rng.integers(0, len(SKILLS), size=n)
    strong = rng.integers(0, len(SKILLS), size=n)
    skill_off[rows, weak] -= np.where(rng.random(n) < 0.3, 22.0, 0.0)
    skill_off[rows, strong] += np.where(rng.random(n) < 0.3, 10.0, 0.0)

    # --- user-days: who is active when -----------------------------------------------
    p_day = np.array([0.85, 0.0, 0.8, 0.7, 0.8, 0.75, 0.15])[habit]
    p_day = p_day * rng.uniform(0.85, 1.0, size=n)
    weekday = (start.weekday() + np.arange(days)) % 7
    weekend = weekday >= 5
    p = np.broadcast_to(p_day[:, None], (n, days)).copy()
    p[habit == 1] = np.where(weekend, 0.9, 0.03)[None, :]
    drop_day = rng.integers(3, max(4, int(days * 0.6)) + 1, size=n)
    p[(habit == 2)[:, None] & (np.arange(days)[None, :] >= drop_day[:, None])] = 0.0
    active = rng.random((n, days)) < p
    idle = ~active.any(axis=1)
    active[idle, np.argmax(p[idle], axis=1)] = True

    sess_lam = np.array([0.25, 0.5, 0.3, 0.3, 0.3, 0.3, 3.5])[habit]
    sess_min = np.where(habit == 6, 3, 1)
    au, ad = np.nonzero(active)  # row-major: by user, then day
    n_sess = sess_min[au] + rng.poisson(sess_lam[au])

    # --- sessions ---------------------------------------------------------------------
    s_user = np.repeat(au, n_sess)
    s_day = np.repeat(ad, n_sess)
    n_s = len(s_user)
    ud_first = np.repeat(np.cumsum(n_sess) - n_sess, n_sess)  # first session of its user-day
    mid_lam = np.array([1.05, 1.5, 1.0, 1.05, 1.05, 1.05, 1.2])[habit]
    n_mid = 1 + rng.poisson(mid_lam[s_user])
    n_ev = n_mid + 2

    # --- events -----------------------------------------------------------------------
    e_sess = np.repeat(np.arange(n_s), n_ev)
    n_e = len(e_sess)
    sess_first = np.cumsum(n_ev) - n_ev
    pos = np.arange(n_e) - np.repeat(sess_first, n_ev)
    is_start = pos == 0
    is_end = pos == np.repeat(n_ev - 1, n_ev)
    etype = rng.choice(_MID_TYPES, size=n_e, p=_MID_WEIGHTS / _MID_WEIGHTS.sum())
    etype[is_start] = 0
    etype[is_end] = 1
    e_user = s_user[e_sess]
    e_day = s_day[e_sess]

    # time steps inside a session (ms): activity durations, short gaps for the rest
    median = _MEDIAN_DURATION[etype]
    dur_s = np.rint(median * rng.lognormal(0.0, 0.45, size=n_e)).astype(np.int64)
    step_ms = np.where(median > 0, dur_s * 1000, rng.integers(300, 5000, size=n_e))
    step_ms = np.where(is_end, rng.integers(5_000, 60_000, size=n_e), step_ms)
    step_ms[is_start] = 0
    csum = np.cumsum(step_ms)
    offset_ms = csum - np.repeat(csum[sess_first], n_ev)  # step at session start is 0
    sess_len_ms = offset_ms[sess_first + n_ev - 1]

    # session starts in local wall time: first around the preferred hour, then after breaks
    first_start = (pref_hour[s_user] * 3_600_000 + rng.normal(0.0, 1.2, size=n_s) * 3_600_000).clip(
        0, 86_399_000
    )
    brk = rng.uniform(15 * 60_000, 3 * 3_600_000, size=n_s)
    advance = sess_len_ms + brk
    cadv = np.cumsum(advance)
    before = (cadv - advance) - (cadv - advance)[ud_first]  # advance of earlier sessions that day
    sess_local_ms = np.rint(first_start[ud_first] + before).astype(np.int64)
    day0_ms = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp()) * 1000
    local_ms = day0_ms + e_day * 86_400_000 + sess_local_ms[e_sess] + offset_ms
    e_zone = zone[e_user]
    utc_ms = _local_to_utc(local_ms, e_zone, start, days)
    whole_seconds = ~ms_precision[e_user]
    utc_ms = np.where(whole_seconds, utc_ms - utc_ms % 1000, utc_ms)
    off_s = _offsets(utc_ms, e_zone, start, days)
    use_z = rng.random(n_e) < p_z[e_user]

    # scores: ability + trend over the period + skill strength + noise
    skill_pick = rng.integers(0, 5, size=n_e)
    e_subject = subject[e_user]
    skill = np.where(
        e_subject == 0, skill_pick % len(_MATH), len(_MATH) + skill_pick % len(_LANGUAGE)
    )
    raw = (
        ability[e_user]
        + slope[e_user] * e_day
        + skill_off[e_user, skill]
        - np.where(etype == 5, 3.0, 0.0)
        + rng.normal(0.0, 9.0, size=n_e)
    ).clip(0.0, 100.0)
    score = np.where(integer_scores[e_user], np.rint(raw), np.round(raw, 1))
    xp = rng.integers(5, 51, size=n_e)
    content_n = rng.integers(1, 241, size=n_e)
    omit_tz = (e_zone == 0) & (rng.random(n_e) < 0.5)

    scored = _SCORED[etype]
    with_skill = _HAS_SKILL[etype]
    with_duration = (median > 0) | is_end
    duration = np.where(is_end, np.rint(sess_len_ms[e_sess] / 1000).astype(np.int64), dur_s)

    width = max(5, len(str(n - 1)))
    return pl.DataFrame(
        {
            "gen": np.arange(n_e, dtype=np.int64),
            "utc_ms": utc_ms,
            "user": e_user.astype(np.int64),
            "type": etype.astype(np.int64),
            "zone": e_zone.astype(np.int64),
            "off_s": off_s,
            "use_z": use_z,
            "ms": ~whole_seconds,
            "omit_tz": omit_tz,
            "cohort": np.where(has_cohort[e_user], cohort[e_user], -1).astype(np.int64),
            "org": np.where(has_cohort[e_user], cohort[e_user] % n_orgs, -1).astype(np.int64),
            "session": e_sess.astype(np.int64),
            "skill": np.where(with_skill, skill, -1).astype(np.int64),
            "content_n": np.where(with_skill, content_n, -1).astype(np.int64),
            "score": np.where(scored, score, np.nan),
            "int_score": integer_scores[e_user],
            "duration": np.where(with_duration, duration, -1).astype(np.int64),
            "xp": np.where(etype == 8, xp, -1).astype(np.int64),
        }
    ).with_columns(width=pl.lit(width))


def _zone_tables(start: date, days: int) -> tuple[int, np.ndarray]:
    """(base hour in Unix hours, offsets[zone, hour] in seconds) over the period plus margins.

    Exact because every zone in ZONES changes offset on a whole UTC hour (checked here).
    """
    base = datetime(start.year, start.month, start.day, tzinfo=UTC) - timedelta(days=3)
    hours = (days + 8) * 24
    table = np.empty((len(ZONES), hours), dtype=np.int64)
    for zi, name in enumerate(ZONES):
        tz = ZoneInfo(name)
        for h in range(hours):
            at = base + timedelta(hours=h)
            off = at.astimezone(tz).utcoffset()
            assert off is not None
            table[zi, h] = int(off.total_seconds())
        for change in np.nonzero(np.diff(table[zi]))[0].tolist():  # between hour h and h+1
            just_before = (base + timedelta(hours=change + 1, seconds=-1)).astimezone(tz)
            if just_before.utcoffset() != timedelta(seconds=int(table[zi, change])):
                raise RuntimeError(f"{name} changes offset off the hour; the table needs minutes")
    return int(base.timestamp()) // 3600, table


_TABLE_CACHE: dict[tuple[date, int], tuple[int, np.ndarray]] = {}


def _table(start: date, days: int) -> tuple[int, np.ndarray]:
    key = (start, days)
    if key not in _TABLE_CACHE:
        _TABLE_CACHE.clear()
        _TABLE_CACHE[key] = _zone_tables(start, days)
    return _TABLE_CACHE[key]


def _offsets(utc_ms: np.ndarray, zone: np.ndarray, start: date, days: int) -> np.ndarray:
    base_h, table = _table(start, days)
    hour = (utc_ms // 3_600_000 - base_h).clip(0, table.shape[1] - 1)
    return table[zone, hour]


def _local_to_utc(local_ms: np.ndarray, zone: np.ndarray, start: date, days: int) -> np.ndarray:
    """UTC instant of a local wall time (a wall time in a DST gap moves by the gap)."""
    guess = local_ms - _offsets(local_ms, zone, start, days) * 1000
    return local_ms - _offsets(guess, zone, start, days) * 1000


# --------------------------------------------------------------------------------------------
# arrival order, duplicates, bad records, JSON lines


def _arrange(
    rng: np.random.Generator,
    ev: pl.DataFrame,
    seed: int,
    bad_fraction: float,
    duplicate_fraction: float,
) -> tuple[pl.Series, int, int]:
    """Lines in arrival order; returns (lines, duplicates, bad)."""
    utc_ms = ev["utc_ms"].to_numpy()
    n_e = len(utc_ms)
    order = np.lexsort((ev["gen"].to_numpy(), utc_ms))  # event time, ties by generation
    ev = ev[order].with_columns(rank=pl.int_range(pl.len(), dtype=pl.Int64))
    t = utc_ms[order]
    lines = _good_lines(ev, seed)

    delay = np.where(
        rng.random(n_e) < _OUT_OF_ORDER_FRACTION, rng.integers(1000, _MAX_DELAY_MS + 1, n_e), 0
    )
    key = t + delay
    n_dup = int(round(n_e * duplicate_fraction))
    dup_of = np.sort(rng.choice(n_e, size=n_dup, replace=False)) if n_dup else np.empty(0, int)
    dup_key = key[dup_of] + rng.integers(1000, _MAX_RESEND_MS + 1, size=n_dup)

    src = np.concatenate([np.arange(n_e), dup_of])
    all_key = np.concatenate([key, dup_key])
    is_dup = np.concatenate([np.zeros(n_e, dtype=np.int8), np.ones(n_dup, dtype=np.int8)])
    arrival = np.lexsort((is_dup, src, all_key))
    src = src[arrival]
    is_dup = is_dup[arrival]
    out = lines.gather(src)
    n_lines = len(out)

    n_bad = int(round(n_lines * bad_fraction))
    if n_bad:
        duplicated = np.zeros(n_e, dtype=bool)
        duplicated[dup_of] = True
        candidates = np.nonzero((is_dup == 0) & ~duplicated[src])[0]
        if n_bad > len(candidates):
            raise ValueError(
                f"bad_fraction={bad_fraction!r} with duplicate_fraction={duplicate_fraction!r} "
                "leaves too few events to replace; lower one of them"
            )
        where = np.sort(rng.choice(candidates, size=n_bad, replace=False))
        kinds = rng.choice(len(BAD_KINDS), size=n_bad, p=_BAD_WEIGHTS / _BAD_WEIGHTS.sum())
        first_round = min(n_bad, len(BAD_KINDS))
        kinds[rng.permutation(n_bad)[:first_round]] = rng.permutation(len(BAD_KINDS))[:first_round]
        base = ev[src[where]].with_columns(
            line=out.gather(where), kind=pl.Series(kinds, dtype=pl.Int64)
        )
        bad = _bad_lines(base)
        out = out.scatter(where, bad)
    return out, n_dup, n_bad


def _good_lines(ev: pl.DataFrame, seed: int) -> pl.Series:
    """One JSON object per row; absent optional fields are omitted (null fragments skipped)."""

    def opt(cond: pl.Expr, *parts: pl.Expr | str) -> pl.Expr:
        frag = pl.concat_str([p if isinstance(p, pl.Expr) else pl.lit(p) for p in parts])
        return pl.when(cond).then(frag).otherwise(pl.lit(None, dtype=pl.String))

    offsets = np.unique(ev["off_s"].to_numpy())
    off_text = pl.Series("o", [_offset_text(int(o)) for o in offsets], dtype=pl.String)
    off_map = dict(zip(offsets.tolist(), off_text.to_list(), strict=True))
    local = (
        pl.when(pl.col("use_z"))
        .then(pl.col("utc_ms"))
        .otherwise(pl.col("utc_ms") + pl.col("off_s") * 1000)
        .cast(pl.Datetime("ms"))
        .dt.strftime("%Y-%m-%dT%H:%M:%S%.3f")
    )
    stamp = pl.when(pl.col("ms")).then(local).otherwise(local.str.slice(0, 19))
    suffix = (
        pl.when(pl.col("use_z"))
        .then(pl.lit("Z"))
        .otherwise(pl.col("off_s").replace_strict(off_map, return_dtype=pl.String))
    )
    width = int(ev["width"][0])
    types = pl.Series(_TYPES, dtype=pl.String)
    zones = pl.Series(ZONES, dtype=pl.String)
    skills = pl.Series(SKILLS, dtype=pl.String)
    prefixes = pl.Series(_CONTENT_PREFIX, dtype=pl.String)
    frame = ev.with_columns(
        type_s=types.gather(ev["type"]),
        zone_s=zones.gather(ev["zone"]),
        skill_s=skills.gather(ev["skill"].clip(0)),
        prefix_s=prefixes.gather(ev["type"]),
    )
    score_text = (
        pl.when(pl.col("int_score"))
        .then(pl.col("score").cast(pl.Int64).cast(pl.String))
        .otherwise(pl.col("score").cast(pl.String))
    )
    line = pl.concat_str(
        [
            pl.lit('{"event_id":"e-' + str(seed) + "-"),
            pl.col("rank").cast(pl.String),
            pl.lit('","user_id":"user-'),
            pl.col("user").cast(pl.String).str.zfill(width),
            pl.lit('","type":"'),
            pl.col("type_s"),
            pl.lit('","timestamp":"'),
            stamp,
            suffix,
            pl.lit('"'),
            opt(~pl.col("omit_tz"), ',"timezone":"', pl.col("zone_s"), '"'),
            opt(
                pl.col("cohort") >= 0,
                ',"cohort_id":"cohort-',
                pl.col("cohort").cast(pl.String).str.zfill(4),
                '","org_id":"org-',
                pl.col("org").cast(pl.String).str.zfill(3),
                '"',
            ),
            pl.lit(',"session_id":"s-' + str(seed) + "-"),
            pl.col("session").cast(pl.String),
            pl.lit('"'),
            opt(pl.col("skill") >= 0, ',"skill":"', pl.col("skill_s"), '"'),
            opt(
                pl.col("content_n") >= 0,
                ',"content_id":"',
                pl.col("prefix_s"),
                "-",
                pl.col("skill_s"),
                "-",
                pl.col("content_n").cast(pl.String).str.zfill(3),
                '"',
            ),
            opt(pl.col("score").is_not_nan(), ',"score":', score_text),
            opt(pl.col("duration") >= 0, ',"duration_s":', pl.col("duration").cast(pl.String)),
            opt(pl.col("xp") >= 0, ',"xp":', pl.col("xp").cast(pl.String)),
            pl.lit("}"),
        ],
        ignore_nulls=True,
    )
    return frame.select(line.alias("line"))["line"]


def _offset_text(seconds: int) -> str:
    sign = "+" if seconds >= 0 else "-"
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _bad_lines(base: pl.DataFrame) -> pl.Series:
    """Bad records for the rows of `base` (a good line each, plus `kind` into BAD_KINDS).

    Each record has exactly one defect, so its rejection reason is unambiguous.
    """
    line = pl.col("line")
    # the good line with its first field (event_id) cut off: `"user_id":...}`
    after_id = line.str.replace(r'^\{"event_id":"[^"]*",', "")
    eid = line.str.extract(r'^\{"event_id":"([^"]*)"', 1)
    uid = line.str.extract(r'"user_id":"([^"]*)"', 1)
    typ = line.str.extract(r'"type":"([^"]*)"', 1)
    ts = line.str.extract(r'"timestamp":"([^"]*)"', 1)

    def obj(*parts: pl.Expr | str) -> pl.Expr:
        return pl.concat_str([p if isinstance(p, pl.Expr) else pl.lit(p) for p in parts])

    def required(
        event_id: pl.Expr | str | None = None,
        user_id: pl.Expr | str | None = None,
        type_: pl.Expr | str | None = None,
        timestamp: pl.Expr | str | None = None,
        extra: str = "",
        skip: str = "",
    ) -> pl.Expr:
        fields: list[pl.Expr | str] = []
        values = {
            "event_id": eid if event_id is None else event_id,
            "user_id": uid if user_id is None else user_id,
            "type": typ if type_ is None else type_,
            "timestamp": ts if timestamp is None else timestamp,
        }
        for name, value in values.items():
            if name == skip:
                continue
            fields += [("," if fields else "{") + f'"{name}":"', value, '"']
        return obj(*fields, extra + "}")

    no_zone = ts.str.replace(r"(Z|[+-]\d\d:\d\d)$", "")
    # the record's own time in year 2999 (not a leap year: 29 February becomes the 28th)
    future = obj("2999", ts.str.slice(4)).str.replace("^2999-02-29", "2999-02-28")
    exprs: dict[tuple[str, str], pl.Expr] = {
        ("malformed_json", "truncated"): obj('{"event_id":"', eid, '","user_id":"', uid, '","ty'),
        ("malformed_json", "double_comma"): obj('{"event_id":"', eid, '",,', after_id),
        ("malformed_json", "unquoted_keys"): obj("{event_id:", eid, ",user_id:", uid, "}"),
        ("not_an_object", "array"): pl.lit("[1,2]"),
        ("not_an_object", "string"): pl.lit('"x"'),
        ("not_an_object", "number"): pl.lit("42"),
        ("invalid_utf8", "raw_bytes"): required(user_id=obj(uid, _MARK)),
        ("oversized", "padding"): obj(
            line.str.slice(0, line.str.len_chars() - 1),
            ',"note":"' + "x" * _OVERSIZED_PAD + '"}',
        ),
        ("missing_field:event_id", ""): obj("{", after_id),
        ("missing_field:user_id", ""): required(skip="user_id"),
        ("missing_field:type", ""): required(skip="type"),
        ("missing_field:timestamp", ""): required(skip="timestamp"),
        ("invalid_field:score", "150"): required(extra=',"score":150'),
        ("invalid_field:duration_s", "-1"): required(extra=',"duration_s":-1'),
        ("invalid_field:xp", "1.5"): required(extra=',"xp":1.5'),
        ("invalid_field:xp", '"7"'): required(extra=',"xp":"7"'),
        ("invalid_field:timezone", "Mars/Olympus"): required(extra=',"timezone":"Mars/Olympus"'),
        ("invalid_field:cohort_id", '""'): required(extra=',"cohort_id":""'),
        ("invalid_field:event_id", "129 chars"): required(
            event_id=obj(eid, "-", pl.lit("z" * 129))
        ),
        ("invalid_field:timestamp", "not a date"): required(timestamp="not a date"),
        ("unknown_type", "video_watched"): required(type_="video_watched"),
        ("timestamp_missing_timezone", "local time"): required(timestamp=no_zone),
        ("timestamp_in_future", "year 2999"): required(timestamp=future),
    }
    assert set(exprs) == set(BAD_KINDS)
    parts = []
    with_pos = base.with_columns(pos=pl.int_range(pl.len(), dtype=pl.Int64))
    for k, kind in enumerate(BAD_KINDS):
        sub = with_pos.filter(pl.col("kind") == k)
        if sub.height:
            parts.append(sub.select("pos", exprs[kind].alias("bad")))
    return pl.concat(parts).sort("pos")["bad"]
