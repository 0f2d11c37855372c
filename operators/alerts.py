"""Turn fired rule rows into rows of the `alerts` table (SPEC §6).

Every rule — event rules (`operators.event_rules`) and day rules (the daily-series engine) —
produces "fired" rows: rule, user_key (null for cohort rules), cohort_id, org_id, trigger
(event_id or ISO date), date, event_time and evidence (a JSON object as text). `build_alerts`
adds the id, severity, title, message and recommendations. Alerts are rare, so this runs a
Python loop per alert row; the texts are plain English with rounded numbers, while `evidence`
keeps full precision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import orjson
import polars as pl

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


# ---------------------------------------------------------------------------- number formatting


def _num(x: Any, digits: int = 1) -> str:
    """A number for a sentence: integers without decimals, others rounded to `digits`."""
    if x is None:
        return "n/a"
    value = float(x)
    if value == round(value):
        return str(int(round(value)))
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
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


# ---------------------------------------------------------------------------------- rule texts


def _struggling(ev: Evidence, row: dict[str, Any]) -> Text:
    scores = ", ".join(_num(s) for s in ev.get("scores", []))
    threshold = _num(ev.get("threshold", 60))
    message = (
        f"{_num(ev.get('below'))} of the last {_num(ev.get('count'))} scores in "
        f"{_num(ev.get('window_hours', 24))} h were below {threshold}: {scores}."
    )
    return (
        "Learner is struggling: repeated low scores",
        message,
        [
            "Reach out to the learner today",
            "Review the material behind the recent low scores together",
            "Offer an easier practice set or a worked example before the next attempt",
        ],
    )


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
            "Check whether the assessment level matches the learner's progress",
        ]
    else:
        recs = [
            "Review the topics of the last two assessments with the learner",
            "Assign targeted practice before the next assessment",
            "Check whether the assessment level matches the learner's progress",
        ]
    title = f"Low assessment performance{where}"
    return title, message, recs


def _inactivity(label: str) -> Callable[[Evidence, dict[str, Any]], Text]:
    def text(ev: Evidence, row: dict[str, Any]) -> Text:
        days = ev.get("inactive_days")
        last = ev.get("last_active_day")
        message = f"No completions for {_days(days)} since the last active day, {last}."
        return (
            f"{label}: {_days(days)} without a completion",
            message,
            [
                "Send the learner a reminder with one short next activity",
                "Ask whether something is blocking progress",
                "Suggest a fixed daily study time",
            ],
        )

    return text


def _low_consistency(ev: Evidence, row: dict[str, Any]) -> Text:
    k = ev.get("active_days_7d")
    c = ev.get("consistency_7d")
    threshold = ev.get("threshold", 0.5)
    message = (
        f"Active on {_num(k)} of the last 7 days (consistency {_num(c, 2)}, "
        f"below {_num(threshold, 2)})."
    )
    return (
        "Irregular study rhythm",
        message,
        [
            "Suggest a short daily goal (e.g. one lesson a day)",
            "Turn on study reminders for the learner",
            "Break the next unit into smaller steps",
        ],
    )


def _streak_broken(ev: Evidence, row: dict[str, Any]) -> Text:
    streak = ev.get("streak")
    last = ev.get("last_active_day")
    message = f"A {_num(streak)}-day streak ended: no completion since {last}."
    return (
        f"{_num(streak)}-day streak broken",
        message,
        [
            "Encourage the learner to restart the streak today",
            "Suggest a quick activity to get back on track",
        ],
    )


_METRIC: dict[str, tuple[str, Callable[[Any], str]]] = {
    # metric: (label, formatter)
    "completions": ("Completions", _num),
    "time_spent_s": ("Time spent", _duration),
    "avg_score": ("Average score", _num),
}
_ANOMALY_TITLE = {
    "anomaly_velocity": "Unusual number of completions",
    "anomaly_engagement": "Unusual time spent",
    "anomaly_performance": "Unusual drop in scores",
}


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
        metric = (
            ev.get("metric")
            or {
                "anomaly_velocity": "completions",
                "anomaly_engagement": "time_spent_s",
                "anomaly_performance": "avg_score",
            }[rule]
        )
        label, fmt = _METRIC.get(metric, (metric, _num))
        z = ev.get("z")
        high = z is not None and float(z) > 0
        message = (
            f"{label} on {row['date']}: {fmt(ev.get('value'))}, against "
            f"{_baseline(ev, fmt)} (z = {_z(z)})."
        )
        title = _ANOMALY_TITLE[rule]
        if rule == "anomaly_performance":
            recs = [
                "Look at the day's low-scoring activities with the learner",
                "Check whether new material was harder than usual",
            ]
        elif high:
            title = title.replace("Unusual", "Unusually high")
            recs = [
                "Check that the activity is genuine (e.g. not rushing or skipping)",
                "Acknowledge the extra effort if it is genuine",
            ]
        else:
            title = title.replace("Unusual", "Unusually low")
            recs = [
                "Check in with the learner about the drop in activity",
                "Suggest a short activity to get back on track",
            ]
        return title, message, recs

    return text


def _cohort_drop(ev: Evidence, row: dict[str, Any]) -> Text:
    cohort = row.get("cohort_id")
    message = (
        f"Cohort {cohort} had {_num(ev.get('active_users'))} active learners on {row['date']}, "
        f"against {_baseline(ev, _num)} (z = {_z(ev.get('z'))})."
    )
    return (
        "Cohort engagement drop",
        message,
        [
            "Check for a schedule change, holiday or technical problem on that day",
            "Send the cohort a reminder about upcoming activities",
            "Ask the instructor whether the cohort's workload changed",
        ],
    )


_TEXTS: dict[str, Callable[[Evidence, dict[str, Any]], Text]] = {
    "struggling": _struggling,
    "low_performance": _low_performance,
    "engagement_drop": _inactivity("Engagement drop"),
    "stagnation": _inactivity("Stagnation"),
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


def build_alerts(fired: pl.DataFrame, *, emitted_at_us: int) -> pl.DataFrame:
    """Rows of the `alerts` table (conformed to `schemas.tables.ALERTS`) from fired rows.

    Raises ValueError for an unknown rule, a missing subject (user_key, or cohort_id for
    cohort rules) or evidence that is not a JSON object: those are bugs in a rule, not bad
    input. Rows with the same alert_id (a rule replayed after a restart) are kept once.
    """
    missing = [c for c in FIRED_COLUMNS if c not in fired.columns]
    if missing:
        raise ValueError(f"fired rows lack columns {missing}; expected {list(FIRED_COLUMNS)}")
    out: dict[str, list[Any]] = {c: [] for c in ALERTS.columns if c != "emitted_at"}
    for row in fired.select(FIRED_COLUMNS).iter_rows(named=True):
        rule = row["rule"]
        subject = row["cohort_id"] if rule in COHORT_RULES else row["user_key"]
        if subject is None:
            raise ValueError(f"{rule} alert without a subject (trigger {row['trigger']!r})")
        evidence = orjson.loads(row["evidence"]) if row["evidence"] else {}
        if not isinstance(evidence, dict):
            raise ValueError(f"{rule} evidence is not a JSON object: {row['evidence']!r}")
        title, message, recs = alert_text(rule, evidence, row)
        out["alert_id"].append(alert_id(rule, subject, str(row["trigger"])))
        out["rule"].append(rule)
        out["severity"].append(severity(rule, evidence))
        out["user_key"].append(row["user_key"])
        out["cohort_id"].append(row["cohort_id"])
        out["org_id"].append(row["org_id"])
        out["date"].append(row["date"])
        out["event_time"].append(row["event_time"])
        out["title"].append(title)
        out["message"].append(message)
        out["evidence"].append(row["evidence"])
        out["recommendations"].append(recs)
    schema = {c: t for c, t in ALERTS.schema.items() if c != "emitted_at"}
    frame = pl.DataFrame(out, schema=schema).with_columns(
        emitted_at=pl.lit(emitted_at_us, pl.Int64).cast(pl.Datetime("us", "UTC"))
    )
    return ALERTS.conform(frame.unique(subset="alert_id", keep="first", maintain_order=True))


__all__ = ["RULES", "alert_id", "alert_text", "build_alerts", "severity"]
