"""Turn fired rule rows into rows of the `alerts` table (SPEC §6).

Every rule — event rules (`operators.event_rules`) and day rules (the daily-series engine) —
produces "fired" rows: rule, user_key (null for cohort rules), cohort_id, org_id, trigger
(event_id or ISO date), date, event_time and evidence (a JSON object as text). `build_alerts`
adds the id, severity, title, message and recommendations. The texts are plain English with
rounded numbers, while `evidence` keeps full precision.

`build_alerts` is columnar: per rule, the evidence is decoded with `str.json_decode` and the
texts are polars string expressions (`_*_x` below) that reproduce the per-row Python texts
(`alert_text`) character for character, rounding included. The per-row functions stay: they
are the public `alert_text`, and the fallback for the few rows the columnar path does not
handle exactly (see `build_alerts`). Only `alert_id` is computed per row in Python
(`hashlib`, ~0.5 µs per alert): neither polars nor pyarrow has SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from schemas.tables import ALERTS

#: rules whose subject is a cohort rather than a user
COHORT_RULES = frozenset({"cohort_engagement_drop"})
#: SPEC §6 fixed severities
FIXED_SEVERITY = {
    "struggling": "high",
    "low_performance": "medium",
    "engagement_drop": "medium",
    "stagnation": "low",
    "low_consistency": "low",
    "streak_broken": "low",
}
#: SPEC §6: anomaly_* and cohort_engagement_drop are medium, high at |z| ≥ this
HIGH_SEVERITY_ABS_Z = 4.0
Z_RULES = frozenset(
    {"anomaly_velocity", "anomaly_engagement", "anomaly_performance", "cohort_engagement_drop"}
)
RULES = frozenset(FIXED_SEVERITY) | Z_RULES

FIRED_COLUMNS = (
    "rule",
    "user_key",
    "cohort_id",
    "org_id",
    "trigger",
    "date",
    "event_time",
    "evidence",
)

Evidence = dict[str, Any]
Text = tuple[str, str, list[str]]


def alert_id(rule: str, subject: str, trigger: str) -> str:
    """First 32 hex chars of SHA-256 of `rule|subject|trigger` (SPEC §6).

    `subject` is the user_key, or the cohort_id for cohort rules; `trigger` the triggering
    event_id or the closed local date (ISO). Stable across runs, so consumers dedupe by it.
    """
    return hashlib.sha256(f"{rule}|{subject}|{trigger}".encode()).hexdigest()[:32]


def severity(rule: str, evidence: Evidence) -> str:
    """SPEC §6 severity; anomaly and cohort rules read |evidence["z"]|."""
    if rule in FIXED_SEVERITY:
        return FIXED_SEVERITY[rule]
    if rule in Z_RULES:
        z = evidence.get("z")
        return "high" if z is not None and abs(float(z)) >= HIGH_SEVERITY_ABS_Z else "medium"
    raise ValueError(f"unknown alert rule {rule!r}; known: {', '.join(sorted(RULES))}")


# ------------------------------------------------------------------ fixed texts (both paths)

_STRUGGLING_TITLE = "Learner is struggling: repeated low scores"
_STRUGGLING_RECS = (
    "Reach out to the learner today",
    "Review the material behind the recent low scores together",
    "Offer an easier practice set or a worked example before the next attempt",
)
_LOW_PERF_TITLE = "Low assessment performance"
_LOW_PERF_LAST_REC = "Check whether the assessment level matches the learner's progress"
_LOW_PERF_RECS_NO_SKILL = (
    "Review the topics of the last two assessments with the learner",
    "Assign targeted practice before the next assessment",
    _LOW_PERF_LAST_REC,
)
_INACTIVITY_LABEL = {"engagement_drop": "Engagement drop", "stagnation": "Stagnation"}
_INACTIVITY_RECS = (
    "Send the learner a reminder with one short next activity",
    "Ask whether something is blocking progress",
    "Suggest a fixed daily study time",
)
_LOW_CONSISTENCY_TITLE = "Irregular study rhythm"
_LOW_CONSISTENCY_RECS = (
    "Suggest a short daily goal (e.g. one lesson a day)",
    "Turn on study reminders for the learner",
    "Break the next unit into smaller steps",
)
_STREAK_RECS = (
    "Encourage the learner to restart the streak today",
    "Suggest a quick activity to get back on track",
)
_ANOMALY_TITLE = {
    "anomaly_velocity": "Unusual number of completions",
    "anomaly_engagement": "Unusual time spent",
    "anomaly_performance": "Unusual drop in scores",
}
_ANOMALY_METRIC = {
    "anomaly_velocity": "completions",
    "anomaly_engagement": "time_spent_s",
    "anomaly_performance": "avg_score",
}
#: metric -> label in the message; time_spent_s is written as a duration, the others as numbers
_METRIC_LABEL = {
    "completions": "Completions",
    "time_spent_s": "Time spent",
    "avg_score": "Average score",
}
_PERFORMANCE_RECS = (
    "Look at the day's low-scoring activities with the learner",
    "Check whether new material was harder than usual",
)
_HIGH_ACTIVITY_RECS = (
    "Check that the activity is genuine (e.g. not rushing or skipping)",
    "Acknowledge the extra effort if it is genuine",
)
_LOW_ACTIVITY_RECS = (
    "Check in with the learner about the drop in activity",
    "Suggest a short activity to get back on track",
)
_COHORT_TITLE = "Cohort engagement drop"
_COHORT_RECS = (
    "Check for a schedule change, holiday or technical problem on that day",
    "Send the cohort a reminder about upcoming activities",
    "Ask the instructor whether the cohort's workload changed",
)


# ------------------------------------------------------------------ per-row number formatting


def _num(x: Any, digits: int = 1) -> str:
    """A number for a sentence: integers without decimals, others rounded to `digits`.

    Rounds like `format()`: from the exact binary value, ties to even (0.35 -> "0.3",
    0.25 -> "0.2"). Trailing zeros are stripped only after a decimal point (`digits=0` once
    turned 40.4 s into "4 s").
    """
    if x is None:
        return "n/a"
    value = float(x)
    if value == round(value):
        return str(int(round(value)))
    text = f"{value:.{digits}f}"
    if digits > 0:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _duration(seconds: Any) -> str:
    """Seconds as `45 s`, `25 min` or `2 h 10 min`."""
    if seconds is None:
        return "n/a"
    s = float(seconds)
    if abs(s) < 60:
        return f"{_num(s, 0)} s"
    minutes = int(round(s / 60))
    if abs(minutes) < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h" if rest == 0 else f"{hours} h {rest} min"


def _days(n: Any) -> str:
    return f"{_num(n)} day" if n is not None and float(n) == 1 else f"{_num(n)} days"


def _z(z: Any) -> str:
    return "n/a" if z is None else f"{float(z):+.1f}"


# ---------------------------------------------------------------------------- per-row texts


def _struggling(ev: Evidence, row: dict[str, Any]) -> Text:
    scores = ", ".join(_num(s) for s in ev.get("scores", []))
    threshold = _num(ev.get("threshold", 60))
    message = (
        f"{_num(ev.get('below'))} of the last {_num(ev.get('count'))} scores in "
        f"{_num(ev.get('window_hours', 24))} h were below {threshold}: {scores}."
    )
    return _STRUGGLING_TITLE, message, list(_STRUGGLING_RECS)


def _low_performance(ev: Evidence, row: dict[str, Any]) -> Text:
    scores = ev.get("scores") or [None, None]
    prev, cur = (scores + [None, None])[:2]
    skill = ev.get("skill")
    threshold = _num(ev.get("threshold", 60))
    where = f" in {skill}" if skill else ""
    message = (
        f"The last 2 assessments{where} scored {_num(prev)} and {_num(cur)}, "
        f"both below {threshold}."
    )
    if skill:
        recs = [
            f"Review the fundamentals of {skill} with the learner",
            f"Assign targeted practice on {skill} before the next assessment",
            _LOW_PERF_LAST_REC,
        ]
    else:
        recs = list(_LOW_PERF_RECS_NO_SKILL)
    return f"{_LOW_PERF_TITLE}{where}", message, recs


def _inactivity(label: str) -> Callable[[Evidence, dict[str, Any]], Text]:
    def text(ev: Evidence, row: dict[str, Any]) -> Text:
        days = ev.get("inactive_days")
        last = ev.get("last_active_day")
        message = f"No completions for {_days(days)} since the last active day, {last}."
        return f"{label}: {_days(days)} without a completion", message, list(_INACTIVITY_RECS)

    return text


def _low_consistency(ev: Evidence, row: dict[str, Any]) -> Text:
    k = ev.get("active_days_7d")
    c = ev.get("consistency_7d")
    threshold = ev.get("threshold", 0.5)
    message = (
        f"Active on {_num(k)} of the last 7 days (consistency {_num(c, 2)}, "
        f"below {_num(threshold, 2)})."
    )
    return _LOW_CONSISTENCY_TITLE, message, list(_LOW_CONSISTENCY_RECS)


def _streak_broken(ev: Evidence, row: dict[str, Any]) -> Text:
    streak = ev.get("streak")
    last = ev.get("last_active_day")
    message = f"A {_num(streak)}-day streak ended: no completion since {last}."
    return f"{_num(streak)}-day streak broken", message, list(_STREAK_RECS)


def _baseline(ev: Evidence, fmt: Callable[[Any], str]) -> str:
    """`a mean of 3.1 (std 1.2) over the previous 21 days`, noting when the floor applied."""
    std = ev.get("std")
    floor = ev.get("floor")
    spread = f"std {fmt(std)}"
    if floor is not None and (std is None or float(std) < float(floor)):
        spread += f", floor {fmt(floor)}"
    return f"a mean of {fmt(ev.get('mean'))} ({spread}) over the previous {_days(ev.get('history_days'))}"


def _anomaly(rule: str) -> Callable[[Evidence, dict[str, Any]], Text]:
    def text(ev: Evidence, row: dict[str, Any]) -> Text:
        metric = ev.get("metric") or _ANOMALY_METRIC[rule]
        label = _METRIC_LABEL.get(metric, metric)
        fmt = _duration if metric == "time_spent_s" else _num
        z = ev.get("z")
        high = z is not None and float(z) > 0
        message = (
            f"{label} on {row['date']}: {fmt(ev.get('value'))}, against "
            f"{_baseline(ev, fmt)} (z = {_z(z)})."
        )
        title = _ANOMALY_TITLE[rule]
        if rule == "anomaly_performance":
            recs = list(_PERFORMANCE_RECS)
        elif high:
            title = title.replace("Unusual", "Unusually high")
            recs = list(_HIGH_ACTIVITY_RECS)
        else:
            title = title.replace("Unusual", "Unusually low")
            recs = list(_LOW_ACTIVITY_RECS)
        return title, message, recs

    return text


def _cohort_drop(ev: Evidence, row: dict[str, Any]) -> Text:
    cohort = row.get("cohort_id")
    message = (
        f"Cohort {cohort} had {_num(ev.get('active_users'))} active learners on {row['date']}, "
        f"against {_baseline(ev, _num)} (z = {_z(ev.get('z'))})."
    )
    return _COHORT_TITLE, message, list(_COHORT_RECS)


_TEXTS: dict[str, Callable[[Evidence, dict[str, Any]], Text]] = {
    "struggling": _struggling,
    "low_performance": _low_performance,
    "engagement_drop": _inactivity(_INACTIVITY_LABEL["engagement_drop"]),
    "stagnation": _inactivity(_INACTIVITY_LABEL["stagnation"]),
    "low_consistency": _low_consistency,
    "streak_broken": _streak_broken,
    "anomaly_velocity": _anomaly("anomaly_velocity"),
    "anomaly_engagement": _anomaly("anomaly_engagement"),
    "anomaly_performance": _anomaly("anomaly_performance"),
    "cohort_engagement_drop": _cohort_drop,
}


def alert_text(rule: str, evidence: Evidence, row: dict[str, Any]) -> Text:
    """(title, message, recommendations) for one fired row."""
    try:
        make = _TEXTS[rule]
    except KeyError:
        raise ValueError(
            f"unknown alert rule {rule!r}; known: {', '.join(sorted(RULES))}"
        ) from None
    return make(evidence, row)


# --------------------------------------------------------------- columnar number formatting
# Each `_fmt_*` takes a Float64 Series (nulls allowed, |x| < _FAST_LIMIT) and returns the
# String Series its per-row twin gives. The rounding runs in numpy; the text is polars' cast of
# the rounded float to String, which is Python's repr (shortest round-trip digits, positional
# below 1e16, "3.0" for integers): the rounded value k / 10**digits has at most 14 significant
# digits, so its shortest repr is exactly those digits. (One polars expression per number,
# with the rounding inside, was 10x slower: planning a tree that repeats its operands.)

#: the columnar formatting is exact for |x| below this (x·100 stays far below 2**52); rows
#: with a larger number go through the per-row texts
_FAST_LIMIT = 1e12
#: Dekker's splitter for doubles: 2**27 + 1
_SPLIT = 134_217_729.0

Part = str | pl.Expr


@lru_cache(maxsize=512)
def _lit(text: str) -> pl.Expr:
    """A String literal, cached: the texts use a few hundred per call, and building one
    costs ~6 µs."""
    return pl.lit(text, pl.String)


def _cat(*parts: Part) -> pl.Expr:
    """Concatenate strings and string expressions (a null part makes the result null)."""
    return pl.concat_str([_lit(p) if isinstance(p, str) else p for p in parts])


def _str_list(*items: Part) -> pl.Expr:
    return pl.concat_list([_lit(i) if isinstance(i, str) else i for i in items])


#: every fixed list of recommendations; rows carry an index into this table (plus, per call,
#: the lists that name a skill) until the very end, so that lists are built only once
_REC_TABLE: tuple[tuple[str, ...], ...] = (
    _STRUGGLING_RECS,
    _LOW_PERF_RECS_NO_SKILL,
    _INACTIVITY_RECS,
    _LOW_CONSISTENCY_RECS,
    _STREAK_RECS,
    _PERFORMANCE_RECS,
    _HIGH_ACTIVITY_RECS,
    _LOW_ACTIVITY_RECS,
    _COHORT_RECS,
)
_REC_ID = {recs: i for i, recs in enumerate(_REC_TABLE)}
_REC_SERIES = pl.Series([list(r) for r in _REC_TABLE], dtype=pl.List(pl.String))


def _rec(recs: tuple[str, ...]) -> pl.Expr:
    return pl.lit(_REC_ID[recs], pl.Int64)


def _round_abs(a: np.ndarray, scale: int) -> np.ndarray:
    """a·scale rounded to an integer (as float64) the way `format()` rounds, for 0 ≤ a < 1e12.

    `format()` rounds the exact binary value of `a`, ties to even (0.35 is 0.34999…, so
    "0.3"; 0.25 is exact, so "0.2"). p = fl(a·scale) is within half an ulp of the exact
    product and every half-integer is a double here, so p and the exact product have the
    same nearest integer — unless p lands exactly on a half. Only there the rounding error
    of the product decides, computed exactly with Dekker's split (scale has few bits, so
    hi·scale and lo·scale are exact); an error of 0 is a true tie and goes to even.
    """
    s = float(scale)
    p = a * s
    k = np.rint(p)  # ties to even
    ties = np.flatnonzero(np.abs(p - k) == 0.5)
    if len(ties):
        at, pt = a[ties], p[ties]
        c = at * _SPLIT
        hi = c - (c - at)
        err = (hi * s - pt) + (at - hi) * s
        k[ties] = np.where(err > 0, np.ceil(pt), np.where(err < 0, np.floor(pt), k[ties]))
    return k


def _as_text(values: np.ndarray, null: np.ndarray) -> pl.Series:
    """repr() of each float without a trailing ".0" (so integers read as such), or null."""
    return (
        pl.Series(np.where(null, np.nan, values), nan_to_null=True)
        .cast(pl.String)
        .str.strip_suffix(".0")
    )


def _values(x: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values with nulls as 0, the null mask)."""
    return x.fill_null(0.0).to_numpy(), x.is_null().to_numpy()


def _fmt_num(x: pl.Series, digits: int = 1) -> pl.Series:
    """`_num`: integers as such, others rounded to `digits` without trailing zeros."""
    v, null = _values(x)
    scale = 10**digits
    k = _round_abs(np.abs(v), scale)
    rounded = np.where(v < 0, -k, k) / scale + 0.0  # + 0.0: a rounded -0.04 reads "0"
    return _as_text(rounded, null).fill_null("n/a")


def _fmt_z(z: pl.Series) -> pl.Series:
    """`_z`: `+7.1`, `+7.0`, `-0.0`; a negative zero keeps its sign, as `format()` does."""
    v, null = _values(z)
    magnitude = _round_abs(np.abs(v), 10) / 10  # repr always has a decimal here: "7.0"
    sign = pl.Series(np.signbit(v).astype(np.uint8)).replace_strict(
        [0, 1], ["+", "-"], return_dtype=pl.String
    )
    text = pl.Series(np.where(null, np.nan, magnitude), nan_to_null=True).cast(pl.String)
    return pl.select(pl.concat_str([sign, text])).to_series().fill_null("n/a")


_UNITS = pl.Series([" s", " min", " h"], dtype=pl.String)
_REST = pl.Series([""] + [f" {m} min" for m in range(1, 60)], dtype=pl.String)


def _fmt_duration(seconds: pl.Series) -> pl.Series:
    """`_duration`: `45 s`, `25 min`, `2 h 10 min`; minutes = round(s / 60), ties to even."""
    v, null = _values(seconds)
    minutes = np.rint(v / 60.0)  # round(): ties to even
    hours, rest = np.divmod(minutes, 60.0)  # floor division, as divmod()
    secs = np.abs(v) < 60
    mins = ~secs & (np.abs(minutes) < 60)
    rounded_secs = np.where(v < 0, -1.0, 1.0) * _round_abs(np.abs(v), 1) + 0.0
    lead = np.where(secs, rounded_secs, np.where(mins, minutes, hours))
    unit = np.where(secs, 0, np.where(mins, 1, 2))
    tail = np.where(secs | mins, 0, rest).astype(np.int64)
    text = pl.select(
        pl.concat_str([_as_text(lead, null), _UNITS.gather(unit), _REST.gather(tail)])
    ).to_series()
    return text.fill_null("n/a")


def _fmt_num_lists(lists: pl.Series) -> pl.Series:
    """`", ".join(_num(s) for s in scores)` per row; a null list reads as empty."""
    arrow = lists.to_arrow()
    flat = _fmt_num(pl.Series(arrow.flatten(), dtype=pl.Float64))
    lengths = np.nan_to_num(arrow.value_lengths().to_numpy(zero_copy_only=False)).astype(np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int64())
    texts = pa.LargeListArray.from_arrays(offsets, flat.to_arrow())
    return pl.Series(texts, dtype=pl.List(pl.String)).list.join(", ")


# -------------------------------------------------------------------------- columnar texts

_F64 = pl.Float64()
_STR = pl.String()
_SCORES = pl.List(pl.Float64())
_BASELINE_TYPES: dict[str, pl.DataType] = {
    "value": _F64,
    "mean": _F64,
    "std": _F64,
    "floor": _F64,
    "history_days": _F64,
    "z": _F64,
}
#: the evidence fields each rule's texts read, decoded to these types
_EVIDENCE_TYPES: dict[str, dict[str, pl.DataType]] = {
    "struggling": {
        "scores": _SCORES,
        "below": _F64,
        "count": _F64,
        "window_hours": _F64,
        "threshold": _F64,
    },
    "low_performance": {"scores": _SCORES, "threshold": _F64, "skill": _STR},
    "engagement_drop": {"inactive_days": _F64, "last_active_day": _STR},
    "stagnation": {"inactive_days": _F64, "last_active_day": _STR},
    "low_consistency": {"active_days_7d": _F64, "consistency_7d": _F64, "threshold": _F64},
    "streak_broken": {"streak": _F64, "last_active_day": _STR},
    "anomaly_velocity": {"metric": _STR, **_BASELINE_TYPES},
    "anomaly_engagement": {"metric": _STR, **_BASELINE_TYPES},
    "anomaly_performance": {"metric": _STR, **_BASELINE_TYPES},
    "cohort_engagement_drop": {"active_users": _F64, **_BASELINE_TYPES},
}
#: keys the per-row texts read with `ev.get(key, default)`: decoding cannot tell an explicit
#: null (which `ev.get` returns) from a missing key (the default), so such rows go per row
_DEFAULTED = {
    "struggling": ("scores", "threshold", "window_hours"),
    "low_performance": ("threshold",),
    "low_consistency": ("threshold",),
}

Exprs = tuple[pl.Expr, pl.Expr, pl.Expr]


class _Batch:
    """What the rules of one `build_alerts` call share.

    Numbers to format, by kind, for every rule at once: each `_fmt_*` call costs ~0.2 ms
    whatever its length, so the ~40 columns of a call are formatted in a handful of calls.
    And the recommendation lists: `_REC_TABLE` plus the lists added here (those naming a
    skill, those made per row); rows hold an index into them.
    """

    def __init__(self) -> None:
        self.pending: dict[str, tuple[Callable[[pl.Series], pl.Series], list[pl.Series]]] = {}
        self.done: dict[str, pl.Series] = {}
        self.names = 0
        self.recs: list[pl.Series] = [_REC_SERIES]
        self.n_recs = len(_REC_SERIES)

    def add_recs(self, lists: pl.Series) -> int:
        """Index of the first of `lists` (List[String]) in `rec_table()`."""
        first = self.n_recs
        self.recs.append(lists.cast(pl.List(pl.String)))
        self.n_recs += len(lists)
        return first

    def rec_table(self) -> pl.Series:
        return pl.concat(self.recs, rechunk=True)

    def name(self) -> str:
        self.names += 1
        return f"_f{self.names}"

    def request(self, kind: str, fmt: Callable[[pl.Series], pl.Series], values: pl.Series) -> str:
        name = self.name()
        self.pending.setdefault(kind, (fmt, []))[1].append(values.alias(name))
        return name

    def run(self) -> None:
        for fmt, batch in self.pending.values():
            texts = fmt(pl.concat(batch, rechunk=True))
            start = 0
            for values in batch:
                self.done[values.name] = texts.slice(start, len(values)).alias(values.name)
                start += len(values)
        self.pending.clear()


class _Work:
    """The decoded rows of one rule plus formatted columns, for the text expressions.

    `num`, `z`, `duration` and `days` ask `batch` to format a field (or a Series) and return
    a reference to the column that `frame()` holds once the batch has run. Evidence field `k`
    is column `ev.k`.
    """

    def __init__(self, rows: pl.DataFrame, batch: _Batch) -> None:
        self.rows = rows
        self.batch = batch
        self.cols: list[pl.Series] = []
        self.formatted: list[str] = []

    def field(self, key: str) -> pl.Series:
        return self.rows[f"ev.{key}"]

    def add(self, series: pl.Series) -> pl.Expr:
        name = self.batch.name()
        self.cols.append(series.alias(name))
        return pl.col(name)

    def _later(
        self, kind: str, fmt: Callable[[pl.Series], pl.Series], values: pl.Series
    ) -> pl.Expr:
        name = self.batch.request(kind, fmt, values)
        self.formatted.append(name)
        return pl.col(name)

    def num(self, x: str | pl.Series, digits: int = 1, default: float | None = None) -> pl.Expr:
        values = self.field(x) if isinstance(x, str) else x
        if default is not None:
            values = values.fill_null(default)
        return self._later(f"num{digits}", partial(_fmt_num, digits=digits), values)

    def z(self, key: str) -> pl.Expr:
        return self._later("z", _fmt_z, self.field(key))

    def duration(self, key: str) -> pl.Expr:
        return self._later("duration", _fmt_duration, self.field(key))

    def days(self, key: str) -> pl.Expr:
        """`_days`: `1 day`, `3 days`, `n/a days`."""
        n = self.field(key)
        unit = _DAY_UNITS.gather((n == 1).fill_null(False).cast(pl.UInt8))
        return _cat(self.num(n), self.add(unit))

    def frame(self) -> pl.DataFrame:
        return self.rows.hstack(self.cols + [self.batch.done[n] for n in self.formatted])


_DAY_UNITS = pl.Series([" days", " day"], dtype=pl.String)


def _ev(key: str) -> pl.Expr:
    return pl.col(f"ev.{key}")


_DATE = pl.col("date").cast(pl.String).fill_null("None")


def _struggling_x(w: _Work) -> Exprs:
    message = _cat(
        w.num("below"),
        " of the last ",
        w.num("count"),
        " scores in ",
        w.num("window_hours", default=24.0),
        " h were below ",
        w.num("threshold", default=60.0),
        ": ",
        w.add(_fmt_num_lists(w.field("scores"))),
        ".",
    )
    return _lit(_STRUGGLING_TITLE), message, _rec(_STRUGGLING_RECS)


def _low_performance_x(w: _Work) -> Exprs:
    scores = w.field("scores")
    skill = _ev("skill")
    has_skill = (skill.is_not_null() & (skill != "")).fill_null(False)
    where = pl.when(has_skill).then(_cat(" in ", skill)).otherwise(_lit(""))
    message = _cat(
        "The last 2 assessments",
        where,
        " scored ",
        w.num(scores.list.get(0, null_on_oob=True)),
        " and ",
        w.num(scores.list.get(1, null_on_oob=True)),
        ", both below ",
        w.num("threshold", default=60.0),
        ".",
    )
    recs = _rec(_LOW_PERF_RECS_NO_SKILL)
    named = w.rows.filter(has_skill)
    if named.height:
        lists = named.select(
            _str_list(
                _cat("Review the fundamentals of ", skill, " with the learner"),
                _cat("Assign targeted practice on ", skill, " before the next assessment"),
                _LOW_PERF_LAST_REC,
            )
        ).to_series()
        first = w.batch.add_recs(lists)
        nth = has_skill.cum_sum().cast(pl.Int64)
        recs = pl.when(has_skill).then(first - 1 + nth).otherwise(recs)
    return _cat(_LOW_PERF_TITLE, where), message, recs


def _inactivity_x(label: str) -> Callable[[_Work], Exprs]:
    def exprs(w: _Work) -> Exprs:
        days = w.days("inactive_days")
        last = _ev("last_active_day").fill_null("None")
        message = _cat("No completions for ", days, " since the last active day, ", last, ".")
        title = _cat(label, ": ", days, " without a completion")
        return title, message, _rec(_INACTIVITY_RECS)

    return exprs


def _low_consistency_x(w: _Work) -> Exprs:
    message = _cat(
        "Active on ",
        w.num("active_days_7d"),
        " of the last 7 days (consistency ",
        w.num("consistency_7d", 2),
        ", below ",
        w.num("threshold", 2, default=0.5),
        ").",
    )
    return _lit(_LOW_CONSISTENCY_TITLE), message, _rec(_LOW_CONSISTENCY_RECS)


def _streak_broken_x(w: _Work) -> Exprs:
    streak = w.num("streak")
    last = _ev("last_active_day").fill_null("None")
    message = _cat("A ", streak, "-day streak ended: no completion since ", last, ".")
    return _cat(streak, "-day streak broken"), message, _rec(_STREAK_RECS)


def _baseline_x(w: _Work, fmt: Callable[[str], pl.Expr]) -> pl.Expr:
    std, floor = _ev("std"), _ev("floor")
    std_text = fmt("std")
    spread = (
        pl.when(floor.is_not_null() & (std.is_null() | (std < floor)))
        .then(_cat("std ", std_text, ", floor ", fmt("floor")))
        .otherwise(_cat("std ", std_text))
    )
    history = w.days("history_days")
    return _cat("a mean of ", fmt("mean"), " (", spread, ") over the previous ", history)


def _anomaly_x(rule: str) -> Callable[[_Work], Exprs]:
    def exprs(w: _Work) -> Exprs:
        metric = w.field("metric")
        metric = pl.select(
            pl.when(metric.is_null() | (metric == ""))
            .then(_lit(_ANOMALY_METRIC[rule]))
            .otherwise(metric)
        ).to_series()
        is_duration = metric == "time_spent_s"

        def fmt(key: str) -> pl.Expr:
            if not is_duration.any():
                return w.num(key)
            duration = w.duration(key)
            if is_duration.all():
                return duration
            return pl.when(w.add(is_duration)).then(duration).otherwise(w.num(key))

        z = _ev("z")
        message = _cat(
            w.add(metric.replace(_METRIC_LABEL)),
            " on ",
            _DATE,
            ": ",
            fmt("value"),
            ", against ",
            _baseline_x(w, fmt),
            " (z = ",
            w.z("z"),
            ").",
        )
        title = _ANOMALY_TITLE[rule]
        if rule == "anomaly_performance":
            return _lit(title), message, _rec(_PERFORMANCE_RECS)
        high = z > 0
        return (
            pl.when(high)
            .then(_lit(title.replace("Unusual", "Unusually high")))
            .otherwise(_lit(title.replace("Unusual", "Unusually low"))),
            message,
            pl.when(high).then(_rec(_HIGH_ACTIVITY_RECS)).otherwise(_rec(_LOW_ACTIVITY_RECS)),
        )

    return exprs


def _cohort_drop_x(w: _Work) -> Exprs:
    message = _cat(
        "Cohort ",
        pl.col("cohort_id").cast(pl.String).fill_null("None"),
        " had ",
        w.num("active_users"),
        " active learners on ",
        _DATE,
        ", against ",
        _baseline_x(w, w.num),
        " (z = ",
        w.z("z"),
        ").",
    )
    return _lit(_COHORT_TITLE), message, _rec(_COHORT_RECS)


_TEXTS_X: dict[str, Callable[[_Work], Exprs]] = {
    "struggling": _struggling_x,
    "low_performance": _low_performance_x,
    "engagement_drop": _inactivity_x(_INACTIVITY_LABEL["engagement_drop"]),
    "stagnation": _inactivity_x(_INACTIVITY_LABEL["stagnation"]),
    "low_consistency": _low_consistency_x,
    "streak_broken": _streak_broken_x,
    "anomaly_velocity": _anomaly_x("anomaly_velocity"),
    "anomaly_engagement": _anomaly_x("anomaly_engagement"),
    "anomaly_performance": _anomaly_x("anomaly_performance"),
    "cohort_engagement_drop": _cohort_drop_x,
}

_TEXT_SCHEMA = {
    "severity": pl.String(),
    "title": pl.String(),
    "message": pl.String(),
    # index into the recommendation lists of the call (`_Batch.rec_table`)
    "rec": pl.Int64(),
}


def _evidence_of(row: dict[str, Any]) -> Evidence:
    evidence = orjson.loads(row["evidence"]) if row["evidence"] else {}
    if not isinstance(evidence, dict):
        raise ValueError(f"{row['rule']} evidence is not a JSON object: {row['evidence']!r}")
    return evidence


def _texts_per_row(rows: pl.DataFrame, batch: _Batch) -> pl.DataFrame:
    """`_row` and the text columns, one Python call per row (the exact reference path)."""
    out: dict[str, list[Any]] = {c: [] for c in _TEXT_SCHEMA}
    extra: list[list[str]] = []
    for row in rows.select(FIRED_COLUMNS).iter_rows(named=True):
        evidence = _evidence_of(row)
        title, message, recs = alert_text(row["rule"], evidence, row)
        out["severity"].append(severity(row["rule"], evidence))
        out["title"].append(title)
        out["message"].append(message)
        rec = _REC_ID.get(tuple(recs))
        if rec is None:
            rec = batch.n_recs + len(extra)
            extra.append(recs)
        out["rec"].append(rec)
    if extra:
        batch.add_recs(pl.Series(extra, dtype=pl.List(pl.String)))
    return rows.select("_row").hstack(pl.DataFrame(out, schema=_TEXT_SCHEMA))


class _RuleTexts:
    """The texts of one rule's rows: built columnar, except for `per_row` (see `prepare`)."""

    def __init__(self, rule: str, rows: pl.DataFrame, batch: _Batch) -> None:
        self.rule = rule
        self.rows = rows
        self.work: _Work | None = None
        self.per_row: pl.DataFrame | None = None
        self.exprs: Exprs | None = None
        self.batch = batch
        self.prepare(batch)

    def prepare(self, batch: _Batch) -> None:
        """Decode the evidence and ask `batch` for the numbers the texts need.

        Evidence that does not decode to the rule's types (malformed JSON, not an object, a
        string where a number goes) sends the whole rule per row, which raises or formats
        exactly as before; so do single rows with a number beyond `_FAST_LIMIT` or an
        explicit null under a defaulted key.
        """
        rule, rows = self.rule, self.rows
        types = _EVIDENCE_TYPES[rule]
        raw = pl.col("evidence")
        text = pl.when(raw.is_null() | (raw == "")).then(_lit("{}")).otherwise(raw)
        try:
            decoded = rows.select(
                "_row",
                "date",
                "cohort_id",
                text.str.json_decode(pl.Struct(types)).alias("_ev"),
                raw,
            )
        except pl.exceptions.PolarsError:
            self.per_row = rows
            return
        field = pl.col("_ev").struct.field
        numbers = [field(k).abs() for k, t in types.items() if t == _F64]
        numbers += [
            field(k).list.eval(pl.element().abs()).list.max()
            for k, t in types.items()
            if t == _SCORES
        ]
        per_row = pl.col("_ev").is_null()  # the JSON literal null
        per_row |= (pl.max_horizontal(numbers) >= _FAST_LIMIT).fill_null(False)
        for key in _DEFAULTED.get(rule, ()):
            # null and written (perhaps elsewhere: then per row needlessly, still exact)
            written = raw.str.contains(f'"{key}"', literal=True).fill_null(False)
            per_row |= field(key).is_null() & written
        decoded = decoded.select(
            "_row",
            "date",
            "cohort_id",
            pl.col("_ev").struct.field(*types).name.prefix("ev."),
            per_row.alias("_per_row"),
        )
        slow = decoded["_per_row"]
        if slow.any():
            self.per_row = rows.filter(slow)
            decoded = decoded.filter(~slow)
        self.work = _Work(decoded.drop("_per_row"), batch)
        self.exprs = _TEXTS_X[rule](self.work)

    def finish(self) -> list[pl.DataFrame]:
        """`_row` and the text columns (once the batch has run)."""
        out = []
        if self.work is not None and self.exprs is not None:
            title, message, recs = self.exprs
            sev = (
                pl.when(_ev("z").abs() >= HIGH_SEVERITY_ABS_Z)
                .then(_lit("high"))
                .otherwise(_lit("medium"))
                if self.rule in Z_RULES
                else _lit(FIXED_SEVERITY[self.rule])
            )
            out.append(
                self.work.frame().select(
                    "_row",
                    sev.alias("severity"),
                    title.alias("title"),
                    message.alias("message"),
                    recs.cast(pl.Int64).alias("rec"),
                )
            )
        if self.per_row is not None:
            out.append(_texts_per_row(self.per_row, self.batch))
        return out


def _check_rows(frame: pl.DataFrame, subject: pl.Expr) -> None:
    """Raise for the first row with no subject or an unknown rule (bugs in a rule)."""
    known = pl.col("rule").is_in(sorted(RULES)).fill_null(False)
    bad = frame.select(no_subject=subject.is_null(), unknown=~known)
    rows = bad.select((pl.col("no_subject") | pl.col("unknown")).arg_true()).to_series()
    if rows.is_empty():
        return
    first = int(rows[0])
    row = frame.row(first, named=True)
    if bad["no_subject"][first]:
        raise ValueError(f"{row['rule']} alert without a subject (trigger {row['trigger']!r})")
    raise ValueError(f"unknown alert rule {row['rule']!r}; known: {', '.join(sorted(RULES))}")


def _alert_ids(keys: pl.Series) -> pl.Series:
    """`alert_id` of each `rule|subject|trigger` key (no nulls).

    One hashlib call per alert (~0.3 µs; neither polars nor pyarrow has SHA-256). The hex of
    all digests is one `bytes.hex()`; numpy keeps the first 32 characters of each 64 and
    arrow takes the result as one buffer.
    """
    sha256 = hashlib.sha256
    digests = b"".join([sha256(k).digest() for k in keys.cast(pl.Binary).to_list()])
    n = len(keys)
    hexed = np.frombuffer(digests.hex().encode("ascii"), np.uint8).reshape(n, 64)
    text = np.ascontiguousarray(hexed[:, :32])
    offsets = np.arange(0, 32 * n + 1, 32, dtype=np.int32)
    ids = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))
    return pl.Series("alert_id", ids, dtype=pl.String)


def build_alerts(fired: pl.DataFrame, *, emitted_at_us: int) -> pl.DataFrame:
    """Rows of the `alerts` table (conformed to `schemas.tables.ALERTS`) from fired rows.

    Raises ValueError for an unknown rule, a missing subject (user_key, or cohort_id for
    cohort rules) or evidence that is not a JSON object: those are bugs in a rule, not bad
    input. Rows with the same alert_id (a rule replayed after a restart) are kept once, in
    input order.

    Sharp edges: the columnar path decodes evidence with polars, which reads the first of two
    duplicate keys (orjson, per row, the last) and turns a number or boolean under a text key
    (skill, metric, last_active_day) into polars' text for it (`true`, not Python's `True`).
    The rules never write either.
    """
    missing = [c for c in FIRED_COLUMNS if c not in fired.columns]
    if missing:
        raise ValueError(f"fired rows lack columns {missing}; expected {list(FIRED_COLUMNS)}")
    if fired.is_empty():
        return ALERTS.empty()
    frame = fired.select(FIRED_COLUMNS).with_row_index("_row")
    rule = pl.col("rule")
    subject = (
        pl.when(rule.is_in(sorted(COHORT_RULES)))
        .then(pl.col("cohort_id"))
        .otherwise(pl.col("user_key"))
        .cast(pl.String)
    )
    _check_rows(frame, subject)

    batch = _Batch()
    rules = [
        _RuleTexts(str(key[0]), rows, batch)
        for key, rows in frame.partition_by("rule", as_dict=True, maintain_order=True).items()
    ]
    batch.run()
    texts = pl.concat([part for r in rules for part in r.finish()]).sort("_row")
    trigger = pl.col("trigger").cast(pl.String).fill_null("None")
    keys = frame.select(pl.concat_str([rule, subject, trigger], separator="|")).to_series()
    out = frame.hstack(texts.drop("_row", "rec")).with_columns(
        _alert_ids(keys),
        batch.rec_table().gather(texts["rec"]).alias("recommendations"),
        emitted_at=pl.lit(emitted_at_us, pl.Int64).cast(pl.Datetime("us", "UTC")),
    )
    if out["alert_id"].n_unique() < out.height:
        out = out.filter(pl.col("alert_id").is_first_distinct())
    return ALERTS.conform(out)


__all__ = ["RULES", "alert_id", "alert_text", "build_alerts", "severity"]
