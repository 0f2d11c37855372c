"""Turn fired rule rows into rows of the `alerts` table (SPEC §6).

Every rule — event rules (`operators.event_rules`) and day rules (the daily-series engine) —
produces "fired" rows: rule, user_key (null for cohort rules), cohort_id, org_id, trigger
(event_id or ISO date), date, event_time and evidence (a JSON object as text). `build_alerts`
adds the id, severity, title, message and recommendations. The texts are plain English with
rounded numbers, while `evidence` keeps full precision.

`build_alerts` is columnar (see "columnar texts" below): per rule, the evidence is decoded
with `str.json_decode`; numbers are looked up in tables of the per-row formatters' own output;
the texts are rows of indices into one pool of strings, joined in one go. It gives exactly
what the per-row functions (`alert_text`, `severity`) give: they stay, as the public API and
as the fallback for the rows the tables do not cover. Only `alert_id` is computed per row in
Python (`hashlib`, ~0.3 µs per alert): neither polars nor pyarrow has SHA-256.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

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
    # SPEC §6 gives it "medium" alone: "the same rule as anomalies" is the firing rule (z <= -3)
    "cohort_engagement_drop": "medium",
}
#: SPEC §6: anomaly_* are medium, high at |z| ≥ this
HIGH_SEVERITY_ABS_Z = 4.0
Z_RULES = frozenset({"anomaly_velocity", "anomaly_engagement", "anomaly_performance"})
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
    """SPEC §6 severity; the anomaly rules read |evidence["z"]|."""
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
_METRIC_ENUM = pl.Enum([*_METRIC_LABEL, ""])
_METRIC_CODE = {metric: i for i, metric in enumerate(_METRIC_ENUM.categories)}
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
    return _minutes(int(round(s / 60)))


def _minutes(minutes: int) -> str:
    """Whole minutes as `25 min` or `2 h 10 min` (the columnar path uses a table of these)."""
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
    # the rule is per user: the two assessments may be of different skills; the skill named
    # (in the title and the recommendations too) is that of the latest one, which fired it
    latest = f"; the latest was in {skill}" if skill else ""
    message = (
        f"The last 2 assessments scored {_num(prev)} and {_num(cur)}, "
        f"both below {threshold}{latest}."
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


# ---------------------------------------------------------------------------- columnar texts
# A call's texts are rows of indices into one pool of strings: the fixed words, precomputed
# tables of number texts, and the strings of the call (dates, skills, per-row texts). A
# message is the concatenation of its row of pieces: one gather from the pool and one
# `arr.join` for every message at once. Numbers are table lookups: the tables hold the
# per-row formatters' own output (`_num`, `_z`, `_minutes`) for every value they cover, so
# only the rounding to a table index is done here, in numpy. A row with a number no table
# covers (|x| ≥ 1000 with decimals, durations over 100 h, |z| ≥ 1000, …) is built per row,
# as are rows whose evidence does not decode to the rule's types. The numbers of a call are
# formatted in one pass per kind, after every rule has asked for its own (see `_Where`). A
# call costs ~15 polars operations plus ~5 per rule present, whatever its size: the
# pipeline calls it per batch and per closed day, ~110 times per 1M events.

#: table ranges: one-decimal numbers k/10 for |k| ≤ _DEC1, two-decimal k/100 for |k| ≤ _DEC2,
#: z = ±k/10 for k ≤ _ZMAX, durations: seconds to ±60, minutes to ±_MINUTES
_DEC1 = 9_999
_DEC2 = 999
_ZMAX = 9_999
_MINUTES = 5_999
#: longest list of scores built columnar (longer lists: per row)
_MAX_SCORES = 8
#: integers formatted through an Int64 cast when no table covers them, up to 2**53
_MAX_EXACT_INT = 2.0**53
#: Dekker's splitter for doubles: 2**27 + 1
_SPLIT = 134_217_729.0

#: slots in each call's pool for the fixed words of the texts (about 90 are used)
_LITERALS = 256
_EMPTY = 0  # pool index of ""
_NA = 1  # pool index of "n/a"


class _Tables:
    """The fixed part of every pool: "", "n/a" and the number tables (built once, ~30 ms)."""

    def __init__(self) -> None:
        texts = ["", "n/a"]

        def table(values: list[str]) -> int:
            start = len(texts)
            texts.extend(values)
            return start

        # index of value 0 in each signed table
        self.dec1 = table([_num(k / 10) for k in range(-_DEC1, _DEC1 + 1)]) + _DEC1
        self.dec2 = table([_num(k / 100, 2) for k in range(-_DEC2, _DEC2 + 1)]) + _DEC2
        self.zpos = table([_z(k / 10) for k in range(_ZMAX + 1)])
        self.zneg = table([_z(-k / 10) if k else _z(-0.0) for k in range(_ZMAX + 1)])
        self.secs = table([f"{_num(float(k), 0)} s" for k in range(-60, 61)]) + 60
        self.mins = table([_minutes(m) for m in range(-_MINUTES, _MINUTES + 1)]) + _MINUTES
        self.arrow = pa.array(texts, pa.large_string())
        self.size = len(texts)


@lru_cache(maxsize=1)
def _tables() -> _Tables:
    return _Tables()


def _round_abs(a: np.ndarray, scale: int) -> np.ndarray:
    """a·scale rounded to an integer (float64) the way `format()` rounds, for 0 ≤ a < 1e12.

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


class _Where:
    """A piece chosen per row, `then` where `mask` else `otherwise`: number pieces are only
    filled in when the call formats all its numbers at once, so the choice waits for it."""

    __slots__ = ("mask", "then", "otherwise")

    def __init__(self, mask: np.ndarray, then: Piece, otherwise: Piece) -> None:
        self.mask, self.then, self.otherwise = mask, then, otherwise

    def resolve(self) -> np.ndarray:
        return np.where(self.mask, _resolve(self.then), _resolve(self.otherwise))


#: a piece of a text for every row of a placement: a pool index, one per row, or a choice
Piece = int | np.ndarray | _Where


def _resolve(piece: Piece) -> int | np.ndarray:
    return piece.resolve() if isinstance(piece, _Where) else piece


def _codes(values: pl.Series, enum: pl.Enum) -> np.ndarray:
    """Position of each value among the enum's categories, -1 for null or any other value."""
    physical = values.cast(pl.String).cast(enum, strict=False).to_physical().to_numpy()
    if physical.dtype.kind == "f":  # nulls: NaN
        return np.where(np.isnan(physical), -1, physical).astype(np.int64)
    return physical.astype(np.int64)


def _or_none(texts: pl.Series) -> pl.Series:
    """`f"{x}"` of each text: null reads "None"."""
    return texts.fill_null("None") if texts.null_count() else texts


def _stack(pieces: list[Piece], m: int) -> np.ndarray:
    """The pieces of `m` rows as an m × len(pieces) matrix of pool indices."""
    out = np.empty((m, len(pieces)), np.int64)
    for j, piece in enumerate(pieces):
        out[:, j] = _resolve(piece)
    return out


def _elements(lists: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(all elements as float64 with NaN for null, length of each list, start of each list in
    the elements); a null list has length 0."""
    arrow = lists.to_arrow()
    values = arrow.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = arrow.value_lengths().to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = np.nan_to_num(lengths).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return values, lengths, starts


class _Call:
    """The pool, the pieces and the other outputs of one `build_alerts` call.

    Formatting methods take float64 arrays (NaN for null: JSON has no NaN) and return pool
    indices, -1 where no table covers the value (the row is then built per row).
    """

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame
        self.n = frame.height
        self.tables = _tables()
        # pool: the tables, `_LITERALS` slots for the call's fixed words, then `parts`
        self.literals: dict[str, int] = {}
        self.literal_base = self.tables.size
        self.parts: list[pl.Series] = []
        self.size = self.literal_base + _LITERALS
        self.requests: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.placed: list[tuple[np.ndarray, list[Piece], list[Piece], Any, Any]] = []
        self.messages: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, pieces m×k)
        self.titles: list[tuple[np.ndarray, np.ndarray]] = []
        self.severity = np.zeros(self.n, np.int64)
        self.rec = np.zeros(self.n, np.int64)
        self.recs: list[pa.Array] = [_REC_ARROW]
        self.n_recs = len(_REC_ARROW)
        self._dates: int | None = None
        self._cohorts: int | None = None

    # ---------------------------------------------------------------------------- the pool
    def lit(self, text: str) -> int:
        """Pool index of a fixed word (one Series for all of them, made in `columns`)."""
        index = self.literals.get(text)
        if index is None:
            if len(self.literals) == _LITERALS:
                raise RuntimeError(f"more than {_LITERALS} fixed words in alert texts")
            index = self.literals[text] = self.literal_base + len(self.literals)
        return index

    def add(self, texts: pl.Series) -> int:
        """Pool index of texts[0] (the others follow)."""
        start = self.size
        self.parts.append(texts)
        self.size += len(texts)
        return start

    def strings(self, texts: pl.Series) -> np.ndarray:
        return self.add(texts) + np.arange(len(texts))

    def dates(self, rows: np.ndarray) -> np.ndarray:
        """`str(date)` of the rows ("None" for null), as Python writes it."""
        if self._dates is None:
            self._dates = self.add(_or_none(self.frame["date"].cast(pl.String)))
        return self._dates + rows

    def cohorts(self, rows: np.ndarray) -> np.ndarray:
        if self._cohorts is None:
            self._cohorts = self.add(_or_none(self.frame["cohort_id"].cast(pl.String)))
        return self._cohorts + rows

    # ------------------------------------------------------------------------- the numbers
    # `num`, `z` and `duration` return arrays that `_format_numbers` fills in, all numbers of
    # a kind at once: use them only as pieces (or in `_Where`) until then.
    def _request(self, kind: str, values: np.ndarray) -> np.ndarray:
        out = np.empty(len(values), np.int64)
        self.requests.setdefault(kind, []).append((values, out))
        return out

    def num(self, v: np.ndarray, digits: int = 1) -> np.ndarray:
        """`_num(v, digits)` for digits 1 or 2."""
        return self._request(f"num{digits}", v)

    def z(self, v: np.ndarray) -> np.ndarray:
        """`_z(v)`: `+7.1`, `-0.0` (the sign bit decides, as `format()` does)."""
        return self._request("z", v)

    def duration(self, v: np.ndarray) -> np.ndarray:
        """`_duration(v)`: seconds below a minute, else `_minutes(round(v / 60))`."""
        return self._request("duration", v)

    def days(self, v: np.ndarray) -> list[Piece]:
        """`_days(v)`: `1 day`, `3 days`, `n/a days`."""
        return [self.num(v), np.where(v == 1, self.lit(" day"), self.lit(" days"))]

    def num_lists(self, lists: pl.Series) -> list[Piece]:
        """`", ".join(_num(s) for s in scores)` per row (a null list reads as empty); -1 in
        every piece of a row with more than `_MAX_SCORES` scores."""
        values, lengths, starts = _elements(lists)
        too_long = lengths > _MAX_SCORES
        sep = self.lit(", ")
        pieces: list[Piece] = []
        for i in range(min(int(lengths.max(initial=0)), _MAX_SCORES)):
            has = lengths > i
            value = values[np.minimum(starts + i, len(values) - 1)]
            if i:
                pieces.append(np.where(has, sep, _EMPTY))
            pieces.append(_Where(too_long, -1, _Where(has, self.num(value), _EMPTY)))
        return pieces

    def _format_numbers(self) -> None:
        kinds: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "num1": lambda v: self._num_indices(v, 1),
            "num2": lambda v: self._num_indices(v, 2),
            "z": self._z_indices,
            "duration": self._duration_indices,
        }
        for kind, requests in self.requests.items():
            indices = kinds[kind](np.concatenate([values for values, _ in requests]))
            start = 0
            for values, out in requests:
                out[:] = indices[start : start + len(values)]
                start += len(values)
        self.requests.clear()

    def _num_indices(self, v: np.ndarray, digits: int) -> np.ndarray:
        scale, limit = (10, _DEC1) if digits == 1 else (100, _DEC2)
        base = self.tables.dec1 if digits == 1 else self.tables.dec2
        a = np.abs(v)
        small = a < 1e12  # NaN: False
        k = _round_abs(np.where(small, a, 0.0), scale)
        covered = small & (k <= limit)
        out = np.where(covered, base + np.copysign(k, v).astype(np.int64), -1)
        if not covered.all():
            out[np.isnan(v)] = _NA
            # integers beyond the table: str(int(v)) is the Int64 cast
            big = ~covered & (v == np.floor(v)) & (a < _MAX_EXACT_INT)
            if big.any():
                out[big] = self.strings(pl.Series(v[big].astype(np.int64)).cast(pl.String))
        return out

    def _z_indices(self, v: np.ndarray) -> np.ndarray:
        a = np.abs(v)
        small = a < 1e12  # NaN: False
        k = _round_abs(np.where(small, a, 0.0), 10)
        covered = small & (k <= _ZMAX)
        base = np.where(np.signbit(v), self.tables.zneg, self.tables.zpos)
        out = np.where(covered, base + k.astype(np.int64), -1)
        out[np.isnan(v)] = _NA
        return out

    def _duration_indices(self, v: np.ndarray) -> np.ndarray:
        out = np.full(len(v), -1, np.int64)
        out[np.isnan(v)] = _NA
        a = np.abs(v)
        secs = a < 60
        k = _round_abs(np.where(secs, a, 0.0), 1)
        out[secs] = self.tables.secs + np.copysign(k[secs], v[secs]).astype(np.int64)
        minutes = np.rint(np.where(secs | np.isnan(v), 0.0, v) / 60.0)  # round(): to even
        covered = ~secs & ~np.isnan(v) & (np.abs(minutes) <= _MINUTES)
        out[covered] = self.tables.mins + minutes[covered].astype(np.int64)
        return out

    # ---------------------------------------------------------------------------- the rows
    def place(
        self,
        rows: np.ndarray,
        message: list[Piece],
        title: list[Piece],
        severity: int | np.ndarray,
        rec: int | np.ndarray,
    ) -> None:
        """Record the texts of `rows` (resolved, and checked for values no table covers, in
        `columns`)."""
        self.placed.append((rows, message, title, severity, rec))

    def _resolve_placed(self) -> None:
        """Rows' pieces as pool indices; rows with an uncovered value go per row."""
        for rows, message, title, severity, rec in self.placed:
            msg = _stack(message, len(rows))
            ttl = _stack(title, len(rows))
            bad = (msg < 0).any(axis=1) | (ttl < 0).any(axis=1)
            uncovered = rows[bad]
            if len(uncovered):
                good = ~bad
                rows, msg, ttl = rows[good], msg[good], ttl[good]
                severity = severity[good] if isinstance(severity, np.ndarray) else severity
                rec = rec[good] if isinstance(rec, np.ndarray) else rec
                self.per_row(uncovered)
            self.messages.append((rows, msg))
            self.titles.append((rows, ttl))
            self.severity[rows] = severity
            self.rec[rows] = rec
        self.placed.clear()

    def add_recs(self, lists: pa.Array) -> int:
        """Index of the first of `lists` among the call's recommendation lists."""
        first = self.n_recs
        self.recs.append(lists.cast(_REC_ARROW.type))
        self.n_recs += len(lists)
        return first

    def per_row(self, rows: np.ndarray) -> None:
        """Texts of `rows` from the per-row functions (they raise as they always did)."""
        messages, titles, severities, recs = [], [], [], []
        extra: list[list[str]] = []
        subset = self.frame.select(FIRED_COLUMNS)[rows]
        for row in subset.iter_rows(named=True):
            evidence = _evidence_of(row)
            title, message, rec_list = alert_text(row["rule"], evidence, row)
            messages.append(message)
            titles.append(title)
            severities.append(_SEVERITY_CODE[severity(row["rule"], evidence)])
            rec = _REC_ID.get(tuple(rec_list))
            if rec is None:
                rec = self.n_recs + len(extra)
                extra.append(rec_list)
            recs.append(rec)
        if extra:
            self.add_recs(pa.array(extra, _REC_ARROW.type))
        msg = self.strings(pl.Series(messages, dtype=pl.String))
        ttl = self.strings(pl.Series(titles, dtype=pl.String))
        self.messages.append((rows, msg[:, None]))
        self.titles.append((rows, ttl[:, None]))
        self.severity[rows] = severities
        self.rec[rows] = recs

    def texts(self, placed: list[tuple[np.ndarray, np.ndarray]], pool: pa.Array) -> pl.Series:
        """Each row's pieces joined. (pyarrow: its calls cost a few µs where polars' cost
        ~30, and a call makes a dozen of them whatever its size.)"""
        width = max(p.shape[1] for _, p in placed)
        matrix = np.full((self.n, width), _EMPTY, np.int64)
        for rows, pieces in placed:
            matrix[rows, : pieces.shape[1]] = pieces
        taken = pool.take(pa.array(matrix.reshape(-1)))
        offsets = pa.array(np.arange(0, self.n * width + 1, width, dtype=np.int64))
        rows_of_pieces = pa.LargeListArray.from_arrays(offsets, taken)
        return pl.Series(pc.binary_join(rows_of_pieces, _NO_SEPARATOR))

    def columns(self) -> list[pl.Series]:
        """title, message, severity, recommendations: one per row of the frame."""
        self._format_numbers()
        self._resolve_placed()
        words = list(self.literals) + [""] * (_LITERALS - len(self.literals))
        parts = [p.cast(pl.String).to_arrow().cast(pa.large_string()) for p in self.parts]
        words_arrow = pa.array(words, pa.large_string())
        pool = pa.concat_arrays([self.tables.arrow, words_arrow, *parts])
        recs = pa.concat_arrays(self.recs).take(pa.array(self.rec))
        return [
            self.texts(self.titles, pool).alias("title"),
            self.texts(self.messages, pool).alias("message"),
            pl.Series("severity", _SEVERITIES.take(pa.array(self.severity))),
            pl.Series("recommendations", recs, dtype=pl.List(pl.String)),
        ]


_NO_SEPARATOR = pa.scalar("", pa.large_string())
_SEVERITIES = pa.array(["high", "medium", "low"], pa.large_string())
_SEVERITY_CODE = {s: i for i, s in enumerate(_SEVERITIES.to_pylist())}
_HIGH, _MEDIUM = _SEVERITY_CODE["high"], _SEVERITY_CODE["medium"]

#: every fixed list of recommendations; rows carry an index into these (plus, per call, the
#: lists that name a skill or were made per row) until the very end
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
_REC_ARROW = pa.array([list(r) for r in _REC_TABLE], pa.large_list(pa.large_string()))

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
_STRUCTS = {rule: pl.Struct(types) for rule, types in _EVIDENCE_TYPES.items()}
#: keys the per-row texts read with `ev.get(key, default)`: decoding cannot tell an explicit
#: null (which `ev.get` returns) from a missing key (the default), so such rows go per row
_DEFAULTED = {
    "struggling": ("scores", "threshold", "window_hours"),
    "low_performance": ("threshold",),
    "low_consistency": ("threshold",),
}


class _Evidence:
    """The decoded evidence of one rule's rows: numbers as float64 (NaN for null)."""

    def __init__(self, rows: np.ndarray, fields: pl.DataFrame) -> None:
        self.rows = rows
        self.fields = dict(zip(fields.columns, fields.get_columns(), strict=True))

    def num(self, key: str, default: float | None = None) -> np.ndarray:
        values = self.fields[key].to_numpy().astype(np.float64, copy=False)
        return values if default is None else np.where(np.isnan(values), default, values)

    def text(self, key: str) -> pl.Series:
        return self.fields[key]


Texts = tuple[list[Piece], list[Piece], int | np.ndarray]  # message, title, recommendations


def _struggling_x(c: _Call, ev: _Evidence) -> Texts:
    message: list[Piece] = [
        c.num(ev.num("below")),
        c.lit(" of the last "),
        c.num(ev.num("count")),
        c.lit(" scores in "),
        c.num(ev.num("window_hours", 24.0)),
        c.lit(" h were below "),
        c.num(ev.num("threshold", 60.0)),
        c.lit(": "),
        *c.num_lists(ev.text("scores")),
        c.lit("."),
    ]
    return message, [c.lit(_STRUGGLING_TITLE)], _REC_ID[_STRUGGLING_RECS]


def _low_performance_x(c: _Call, ev: _Evidence) -> Texts:
    # the distinct skills: their words and recommendations are made once per call
    skills = pc.dictionary_encode(ev.text("skill").cast(pl.String).to_arrow())
    names = skills.dictionary
    which = skills.indices.to_numpy(zero_copy_only=False)  # NaN for null
    which = np.nan_to_num(which.astype(np.float64), nan=-1).astype(np.int64)
    # (no Python scalars in pyarrow calls: converting one imports modules, every time)
    named = pc.utf8_length(names).to_numpy(zero_copy_only=False) > 0
    has_skill = (which >= 0) & named[np.maximum(which, 0)] if len(names) else which >= 0
    skill_text = c.strings(pl.Series(names)) if len(names) else np.zeros(0, np.int64)
    where = [
        np.where(has_skill, c.lit(" in "), _EMPTY),
        np.where(has_skill, skill_text[np.maximum(which, 0)] if len(names) else 0, _EMPTY),
    ]
    values, lengths, starts = _elements(ev.text("scores"))
    last = max(len(values) - 1, 0)
    first = np.where(lengths > 0, values[np.minimum(starts, last)] if len(values) else 0, np.nan)
    second = np.where(
        lengths > 1, values[np.minimum(starts + 1, last)] if len(values) else 0, np.nan
    )
    latest = [
        np.where(has_skill, c.lit("; the latest was in "), _EMPTY),
        np.where(has_skill, skill_text[np.maximum(which, 0)] if len(names) else 0, _EMPTY),
    ]
    message: list[Piece] = [
        c.lit("The last 2 assessments scored "),
        c.num(first),
        c.lit(" and "),
        c.num(second),
        c.lit(", both below "),
        c.num(ev.num("threshold", 60.0)),
        *latest,
        c.lit("."),
    ]
    rec: int | np.ndarray = _REC_ID[_LOW_PERF_RECS_NO_SKILL]
    if has_skill.any():
        first_list = c.add_recs(_skill_recs(names))
        rec = np.where(has_skill, first_list + which, rec)
    return message, [c.lit(_LOW_PERF_TITLE), *where], rec


def _skill_recs(skills: pa.Array) -> pa.Array:
    """The low_performance recommendations that name each skill (lists of strings)."""
    text = skills.type

    def around(before: str, after: str) -> pa.Array:
        words = pa.scalar(before, text), pa.scalar(after, text)
        return pc.binary_join_element_wise(words[0], skills, words[1], pa.scalar("", text))

    k = len(skills)
    recs = pa.concat_arrays(
        [
            around("Review the fundamentals of ", " with the learner"),
            around("Assign targeted practice on ", " before the next assessment"),
            pa.array([_LOW_PERF_LAST_REC] * k, text),
        ]
    )
    interleaved = recs.take(np.arange(3 * k).reshape(3, k).T.reshape(-1))
    offsets = pa.array(np.arange(0, 3 * k + 1, 3), pa.int64())
    return pa.LargeListArray.from_arrays(offsets, interleaved)


def _inactivity_x(label: str) -> Callable[[_Call, _Evidence], Texts]:
    def texts(c: _Call, ev: _Evidence) -> Texts:
        days = c.days(ev.num("inactive_days"))
        last = c.strings(_or_none(ev.text("last_active_day")))
        message: list[Piece] = [
            c.lit("No completions for "),
            *days,
            c.lit(" since the last active day, "),
            last,
            c.lit("."),
        ]
        title = [c.lit(f"{label}: "), *days, c.lit(" without a completion")]
        return message, title, _REC_ID[_INACTIVITY_RECS]

    return texts


def _low_consistency_x(c: _Call, ev: _Evidence) -> Texts:
    message: list[Piece] = [
        c.lit("Active on "),
        c.num(ev.num("active_days_7d")),
        c.lit(" of the last 7 days (consistency "),
        c.num(ev.num("consistency_7d"), 2),
        c.lit(", below "),
        c.num(ev.num("threshold", 0.5), 2),
        c.lit(")."),
    ]
    return message, [c.lit(_LOW_CONSISTENCY_TITLE)], _REC_ID[_LOW_CONSISTENCY_RECS]


def _streak_broken_x(c: _Call, ev: _Evidence) -> Texts:
    streak = c.num(ev.num("streak"))
    last = c.strings(_or_none(ev.text("last_active_day")))
    message: list[Piece] = [
        c.lit("A "),
        streak,
        c.lit("-day streak ended: no completion since "),
        last,
        c.lit("."),
    ]
    return message, [streak, c.lit("-day streak broken")], _REC_ID[_STREAK_RECS]


def _baseline_x(c: _Call, ev: _Evidence, fmt: Callable[[np.ndarray], Piece]) -> list[Piece]:
    """`a mean of 3.1 (std 1.2, floor 1) over the previous 21 days` (floor when it applied)."""
    std, floor = ev.num("std"), ev.num("floor")
    floored = ~np.isnan(floor) & (np.isnan(std) | (std < floor))
    return [
        c.lit("a mean of "),
        fmt(ev.num("mean")),
        c.lit(" (std "),
        fmt(std),
        np.where(floored, c.lit(", floor "), _EMPTY),
        _Where(floored, fmt(floor), _EMPTY),
        c.lit(") over the previous "),
        *c.days(ev.num("history_days")),
    ]


def _anomaly_x(rule: str) -> Callable[[_Call, _Evidence], Texts]:
    def texts(c: _Call, ev: _Evidence) -> Texts:
        raw = ev.text("metric")
        code = _codes(raw, _METRIC_ENUM)  # "" and null: the rule's metric
        code = np.where(code == _METRIC_CODE[""], _METRIC_CODE[_ANOMALY_METRIC[rule]], code)
        if raw.null_count():
            code[raw.is_null().to_numpy()] = _METRIC_CODE[_ANOMALY_METRIC[rule]]
        is_duration = code == _METRIC_CODE["time_spent_s"]
        labels = np.array([c.lit(text) for text in _METRIC_LABEL.values()] + [_EMPTY])
        label = labels[code]
        if (code < 0).any():  # any other metric names itself
            label = np.where(code < 0, c.strings(raw), label)

        def fmt(values: np.ndarray) -> Piece:
            if not is_duration.any():
                return c.num(values)
            if is_duration.all():
                return c.duration(values)
            return _Where(is_duration, c.duration(values), c.num(values))

        z = ev.num("z")
        message: list[Piece] = [
            label,
            c.lit(" on "),
            c.dates(ev.rows),
            c.lit(": "),
            fmt(ev.num("value")),
            c.lit(", against "),
            *_baseline_x(c, ev, fmt),
            c.lit(" (z = "),
            c.z(z),
            c.lit(")."),
        ]
        title = _ANOMALY_TITLE[rule]
        if rule == "anomaly_performance":
            return message, [c.lit(title)], _REC_ID[_PERFORMANCE_RECS]
        high = z > 0  # NaN: False
        return (
            message,
            [
                np.where(
                    high,
                    c.lit(title.replace("Unusual", "Unusually high")),
                    c.lit(title.replace("Unusual", "Unusually low")),
                )
            ],
            np.where(high, _REC_ID[_HIGH_ACTIVITY_RECS], _REC_ID[_LOW_ACTIVITY_RECS]),
        )

    return texts


def _cohort_drop_x(c: _Call, ev: _Evidence) -> Texts:
    message: list[Piece] = [
        c.lit("Cohort "),
        c.cohorts(ev.rows),
        c.lit(" had "),
        c.num(ev.num("active_users")),
        c.lit(" active learners on "),
        c.dates(ev.rows),
        c.lit(", against "),
        *_baseline_x(c, ev, c.num),
        c.lit(" (z = "),
        c.z(ev.num("z")),
        c.lit(")."),
    ]
    return message, [c.lit(_COHORT_TITLE)], _REC_ID[_COHORT_RECS]


_TEXTS_X: dict[str, Callable[[_Call, _Evidence], Texts]] = {
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


def _evidence_of(row: dict[str, Any]) -> Evidence:
    evidence = orjson.loads(row["evidence"]) if row["evidence"] else {}
    if not isinstance(evidence, dict):
        raise ValueError(f"{row['rule']} evidence is not a JSON object: {row['evidence']!r}")
    return evidence


def _rule_texts(c: _Call, rule: str, rows: np.ndarray, evidence: pl.Series) -> None:
    """Texts of the rows of one rule (`evidence`: theirs, "{}" for null): columnar, except the
    rows `_Call.place` or this function hands to `_Call.per_row`.

    Evidence that does not decode to the rule's types (malformed JSON, not an object, a
    string where a number goes) sends all the rule's rows per row, which raises or formats
    exactly as before; so do rows that are the JSON literal null or have an explicit null
    under a defaulted key.
    """
    try:
        decoded = evidence.str.json_decode(_STRUCTS[rule])
    except pl.exceptions.PolarsError:
        c.per_row(rows)
        return
    fields = decoded.struct.unnest()
    slow = np.zeros(len(rows), bool)
    if decoded.null_count():  # the JSON literal null
        slow |= decoded.is_null().to_numpy()
    for key in _DEFAULTED.get(rule, ()):
        if fields[key].null_count():  # null and written (perhaps elsewhere: needlessly)
            written = evidence.str.contains(f'"{key}"', literal=True).to_numpy()
            slow |= fields[key].is_null().to_numpy() & written
    if slow.any():
        c.per_row(rows[slow])
        rows, fields = rows[~slow], fields.filter(pl.Series(~slow))
    if not len(rows):
        return
    ev = _Evidence(rows, fields)
    message, title, rec = _TEXTS_X[rule](c, ev)
    sev: int | np.ndarray = (
        _SEVERITY_CODE[FIXED_SEVERITY[rule]] if rule in FIXED_SEVERITY else _MEDIUM
    )
    if rule in Z_RULES:
        sev = np.where(np.abs(ev.num("z")) >= HIGH_SEVERITY_ABS_Z, _HIGH, _MEDIUM)
    c.place(rows, message, title, sev, rec)


def _check_rows(frame: pl.DataFrame, bad: np.ndarray, no_subject: np.ndarray) -> None:
    """Raise for the first row with no subject or an unknown rule (bugs in a rule)."""
    first = int(np.argmax(bad))
    row = frame.row(first, named=True)
    if no_subject[first]:
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

    Output equals the per-row functions' (`alert_text`, `severity`) row for row, except for
    evidence no rule writes, which polars decodes differently from orjson: of two duplicate
    keys it reads the first (orjson the last); a number or boolean under a text key (skill,
    metric, last_active_day) becomes polars' text for it (`true`, not `True`); a number where
    the scores list goes is a one-element list (per row: TypeError); a lone surrogate escape
    decodes (orjson raises). When several rows are bad, the error may name another of them
    than the per-row loop would (rules are taken in turn, not rows).

    Costs ~1.6 µs per alert plus ~0.15 ms per rule present and ~1 ms per call (one thread
    of a shared 2-core VM): fewer, larger calls are cheaper. `benchmarks/bench_alerts.py`
    measures it.
    """
    missing = [c for c in FIRED_COLUMNS if c not in fired.columns]
    if missing:
        raise ValueError(f"fired rows lack columns {missing}; expected {list(FIRED_COLUMNS)}")
    if fired.is_empty():
        return ALERTS.empty()
    frame = fired if fired.columns == list(FIRED_COLUMNS) else fired.select(FIRED_COLUMNS)
    rows = frame.select(_ROW_EXPRS)
    code = _codes(frame["rule"], _RULE_ENUM)
    no_subject = rows["no_subject"].to_numpy()
    bad = no_subject | (code < 0)
    if bad.any():
        _check_rows(frame, bad, no_subject)

    call = _Call(frame)
    order = np.argsort(code, kind="stable")
    bounds = np.searchsorted(code[order], np.arange(len(_RULE_ORDER) + 1))
    grouped = pl.Series(rows["evidence"].to_arrow().take(pa.array(order)))
    for i, name in enumerate(_RULE_ORDER):
        start, end = int(bounds[i]), int(bounds[i + 1])
        if start < end:
            _rule_texts(call, name, order[start:end], grouped.slice(start, end - start))
    emitted = pl.Series("emitted_at", [emitted_at_us], pl.Int64).cast(pl.Datetime("us", "UTC"))
    made = {s.name: s for s in [_alert_ids(rows["key"]), *call.columns()]}
    made["emitted_at"] = emitted.new_from_index(0, frame.height)
    out = pl.DataFrame([made[c] if c in made else frame[c] for c in ALERTS.columns])
    if out.dtypes != _ALERT_TYPES:
        out = ALERTS.conform(out)
    if out["alert_id"].n_unique() < out.height:
        out = out.filter(pl.col("alert_id").is_first_distinct())
    return out


def _row_exprs() -> list[pl.Expr]:
    rule, evidence = pl.col("rule"), pl.col("evidence")
    subject = (
        pl.when(rule.is_in(sorted(COHORT_RULES)))
        .then(pl.col("cohort_id"))
        .otherwise(pl.col("user_key"))
        .cast(pl.String)
    )
    trigger = pl.col("trigger").cast(pl.String).fill_null("None")
    return [
        subject.is_null().alias("no_subject"),
        pl.concat_str([rule, subject, trigger], separator="|").alias("key"),
        # orjson.loads is skipped for "" and null: an empty object
        pl.when(evidence.is_null() | (evidence == ""))
        .then(pl.lit("{}"))
        .otherwise(evidence)
        .alias("evidence"),
    ]


#: per fired row: no subject?, the alert_id key, the evidence to decode
_ROW_EXPRS = _row_exprs()
_ALERT_TYPES = list(ALERTS.schema.values())
_RULE_ORDER = sorted(RULES)
_RULE_ENUM = pl.Enum(_RULE_ORDER)


__all__ = ["RULES", "alert_id", "alert_text", "build_alerts", "severity"]
