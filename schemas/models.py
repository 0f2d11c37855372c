"""Pydantic models of the contract: the input event (SPEC §1) and one row model per table (§7).

These models define and document the contract; `learnstream schema` prints their JSON Schemas.
They validate at the edges where records are few (tests, adapters, documentation). They are
not the per-event hot path: decode validates columns with vectorised polars expressions, and
operators build frames with the schemas of `schemas.tables`, which these row models mirror
column for column (a test keeps the two in step).

Every row model carries `schema_version` (a constant 1, not stored as a column) so that the
version of the contract appears in each printed schema; rows read back from Parquet or DuckDB
validate without it.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.tables import REJECTION_REASONS

SCHEMA_VERSION: Literal[1] = 1

# ---------------------------------------------------------------------------------------------
# enumerations (SPEC §1, §5, §6)

EventType = Literal[
    "lesson_completed",
    "exercise_completed",
    "quiz_completed",
    "assessment_completed",
    "material_completed",
    "session_started",
    "session_ended",
    "material_viewed",
    "xp_earned",
    "level_up",
    "achievement_unlocked",
    "milestone_reached",
]
TrendDirection = Literal["improving", "declining", "stable", "insufficient_data"]
Momentum = Literal["high", "medium", "low", "stalled"]
Severity = Literal["low", "medium", "high"]
AlertRule = Literal[
    "struggling",
    "low_performance",
    "engagement_drop",
    "stagnation",
    "low_consistency",
    "streak_broken",
    "anomaly_velocity",
    "anomaly_engagement",
    "anomaly_performance",
    "cohort_engagement_drop",
]

TREND_DIRECTIONS: tuple[str, ...] = get_args(TrendDirection)
MOMENTUM_LEVELS: tuple[str, ...] = get_args(Momentum)
SEVERITIES: tuple[str, ...] = get_args(Severity)
ALERT_RULES: tuple[str, ...] = get_args(AlertRule)

#: `user_key` and `alert_id`: 32 lower-case hex chars (SPEC §3, §6)
HEX32_PATTERN = r"^[0-9a-f]{32}$"
#: the stable rejection reasons of SPEC §2; `missing_field` / `invalid_field` carry `:<name>`
REASON_PATTERN = (
    "^(?:"
    + "|".join(r for r in REJECTION_REASONS if r not in ("missing_field", "invalid_field"))
    + "|(?:missing_field|invalid_field):.+)$"
)
#: RFC 3339 date-time; the offset (`Z` or `±hh:mm`) is required. A space may stand for the `T`
#: (RFC 3339 §5.6 allows it; decode accepts it too)
RFC3339_PATTERN = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$"
_RFC3339_ANY_OFFSET = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?$"
)


# ---------------------------------------------------------------------------------------------
# the input event (SPEC §1)


@lru_cache(maxsize=1)
def _iana_zones() -> frozenset[str]:
    from zoneinfo import available_timezones

    return frozenset(available_timezones())


def _rfc3339_with_offset(value: Any) -> Any:
    """Reject anything but an RFC 3339 string with an offset; pydantic then parses it.

    Pydantic alone would also take Unix numbers and `YYYY-MM-DD HH:MM:SS`; SPEC §1 takes neither.
    A date-time without offset gets its own error type, `timestamp_missing_timezone`, the
    rejection reason of SPEC §2.
    """
    if isinstance(value, dt.datetime):
        return value  # already parsed (Python callers); AwareDatetime still checks the offset
    if not isinstance(value, str):
        raise PydanticCustomError("rfc3339", "timestamp must be an RFC 3339 string")
    match = _RFC3339_ANY_OFFSET.match(value)
    if match is None:
        raise PydanticCustomError(
            "rfc3339",
            "not an RFC 3339 date-time (e.g. 2024-05-01T09:30:00Z): {value}",
            {"value": value},
        )
    if match.group("offset") is None:
        raise PydanticCustomError(
            "timestamp_missing_timezone",
            "timestamp has no offset; add Z or ±hh:mm: {value}",
            {"value": value},
        )
    return value


def _iana_zone(value: str) -> str:
    if value not in _iana_zones():
        raise PydanticCustomError(
            "iana_zone",
            "unknown IANA time zone '{value}' (e.g. Europe/Paris, UTC)",
            {"value": value},
        )
    return value


def _integral(value: Any) -> Any:
    """JSON integers, and floats with no fractional part (JSON Schema `integer`); no bools/strings."""
    if isinstance(value, bool) or isinstance(value, str):
        raise PydanticCustomError("int_type", "xp must be an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _input_schema_extra(schema: dict[str, Any]) -> None:
    """Show the `skill_area` alias in the JSON Schema (pydantic lists only the first alias)."""
    props = schema.get("properties", {})
    if "skill" in props:
        props["skill_area"] = {
            **props["skill"],
            "description": "alias of `skill` (used when `skill` is absent)",
        }


class InputEvent(BaseModel):
    """One learning event as producers send it (SPEC §1): a JSON object per message or line.

    Unknown fields are dropped (the allow-list of SPEC §1). `skill_area` is accepted as an alias
    of `skill`; when both are present and `skill` is not null, `skill` wins. Explicit `null` in an
    optional field means absent. Not checked here, because they need pipeline state or the
    clock: duplicates (`dedup_horizon`), `timestamp_in_future` (processing time +
    `max_clock_skew`), `oversized` and lateness. `rejection_reason` maps a validation error to the SPEC §2 reason.
    """

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        allow_inf_nan=False,
        json_schema_extra=_input_schema_extra,
    )

    event_id: str = Field(
        min_length=1,
        max_length=128,
        description="unique per producer; used for de-duplication",
    )
    user_id: str = Field(
        min_length=1,
        max_length=256,
        description="personal data: pseudonymised at ingest into user_key (HMAC-SHA256) and "
        "never written to any output but the restricted dead-letter payload",
    )
    type: EventType = Field(description="the event type (SPEC §1)")
    timestamp: Annotated[AwareDatetime, BeforeValidator(_rfc3339_with_offset)] = Field(
        description="event time: RFC 3339 with offset or Z, e.g. 2024-05-01T09:30:00+02:00",
        json_schema_extra={"pattern": RFC3339_PATTERN},
    )
    cohort_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="classroom / course / presentation",
    )
    org_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="institution"
    )
    skill: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="skill or topic the event is about; alias `skill_area` accepted",
    )
    content_id: str | None = Field(default=None, min_length=1, max_length=256)
    score: float | None = Field(
        default=None,
        ge=0,
        le=100,
        strict=True,
        description="score in points, 0 to 100; an event with a score is a scored event",
    )
    duration_s: float | None = Field(
        default=None,
        ge=0,
        le=86400,
        strict=True,
        description="time spent in seconds, 0 to 86400; missing counts as 0",
    )
    xp: Annotated[int | None, BeforeValidator(_integral)] = Field(
        default=None, ge=0, description="experience points, an integer ≥ 0; missing counts as 0"
    )
    session_id: str | None = Field(default=None, min_length=1, max_length=128)
    timezone: Annotated[str, AfterValidator(_iana_zone)] | None = Field(
        default=None,
        description="IANA zone name that decides the local day; default default_timezone=UTC",
    )

    @model_validator(mode="before")
    @classmethod
    def _skill_alias(cls, data: Any) -> Any:
        """`skill_area` stands in for `skill` when `skill` is absent or null."""
        if isinstance(data, dict) and data.get("skill") is None and "skill_area" in data:
            data = {**data, "skill": data["skill_area"]}
        return data


def rejection_reason(error: ValidationError) -> str:
    """The SPEC §2 rejection reason for a failed `InputEvent.model_validate` (first error wins).

    `missing_field:<name>`, `unknown_type`, `timestamp_missing_timezone`, `not_an_object`, or
    `invalid_field:<name>`. Adapters use it so that their dead letters carry the same reasons as
    the columnar decoder's.
    """
    first = error.errors(include_url=False)[0]
    loc = first.get("loc", ())
    kind = first.get("type", "")
    if not loc:
        return "not_an_object"
    name = str(loc[0])
    if kind == "missing":
        return f"missing_field:{name}"
    if name == "type":
        return "unknown_type"
    if kind in ("timestamp_missing_timezone", "timezone_aware"):
        return "timestamp_missing_timezone"
    return f"invalid_field:{name}"


# ---------------------------------------------------------------------------------------------
# table rows (SPEC §7)


def _json_object_text(value: str) -> str:
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PydanticCustomError(
            "json_object_text", "evidence is not valid JSON: {error}", {"error": str(exc)}
        ) from exc
    if not isinstance(parsed, dict):
        raise PydanticCustomError("json_object_text", "evidence must be a JSON object")
    return value


JsonObjectText = Annotated[
    str,
    AfterValidator(_json_object_text),
    Field(json_schema_extra={"contentMediaType": "application/json"}),
]


class _Row(BaseModel):
    """Common configuration of the table row models: exact columns, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = Field(
        default=1,
        description="version of the learnstream contract (not stored as a column)",
    )


def _user_key(
    description: str = "pseudonymous user key (SPEC §3): first 32 hex chars of "
    "HMAC-SHA256 of the user_id; never the raw user_id",
) -> Any:
    return Field(pattern=HEX32_PATTERN, description=description)


def _emitted_at() -> Any:
    return Field(description="processing time at which the row was emitted (UTC)")


def _count(description: str) -> Any:
    return Field(ge=0, description=description)


def _score(description: str) -> Any:
    return Field(ge=0, le=100, description=description)


def _fraction(description: str) -> Any:
    return Field(ge=0, le=1, description=description)


_AS_OF = "the watermark the state is evaluated at (SPEC §5 'As of'), UTC"
_TREND_SLOPE = (
    "ordinary least squares slope of score against event time in days over the scored events "
    "of the trailing trend_window=30d, in score points per day; null when trend_direction is "
    "insufficient_data"
)
_TREND_DIRECTION = (
    "improving if trend_slope > 0.5, declining if < -0.5, else stable; insufficient_data below "
    "3 points or when all points share one time"
)
_TREND_CONFIDENCE = "min(1, n / 20) with n the number of points of the trend"


class UserDailyRow(_Row):
    """`user_daily`: one row per user and local day with ≥1 accepted event (key user_key, date).

    Days without events have no row (they count as zeros in the analytics). Partitioned by
    `date`.
    """

    user_key: str = _user_key()
    date: dt.date = Field(description="the user's local day (calendar date in the user's zone)")
    cohort_id: str | None = Field(description="last non-null cohort_id seen that day")
    org_id: str | None = Field(description="last non-null org_id seen that day")
    events: int = Field(ge=1, description="accepted events of the day")
    completions: int = _count(
        "completion events of the day (lesson_, exercise_, quiz_, assessment_ and "
        "material_completed)"
    )
    lessons_completed: int = _count("lesson_completed events of the day")
    exercises_completed: int = _count("exercise_completed events of the day")
    quizzes_completed: int = _count("quiz_completed events of the day")
    assessments_completed: int = _count("assessment_completed events of the day")
    materials_completed: int = _count("material_completed events of the day")
    sessions: int = _count("session_started events of the day")
    scored_events: int = _count("accepted events of the day with a score")
    avg_score: float | None = _score("mean score of the day's scored events; null when none")
    min_score: float | None = _score("lowest score of the day; null when no scored event")
    max_score: float | None = _score("highest score of the day; null when no scored event")
    excellent_scores: int = _count("scored events of the day with score ≥ 80")
    time_spent_s: float = Field(
        ge=0, description="sum of duration_s over the day's events (missing counts as 0)"
    )
    xp: int = _count("sum of xp over the day's events (missing counts as 0)")
    streak: int = _count(
        "number of consecutive active days ending at this date (0 if not active); an active "
        "day has ≥1 completion"
    )
    emitted_at: AwareDatetime = _emitted_at()


class UserSkillDailyRow(_Row):
    """`user_skill_daily`: per user, local day and skill (key user_key, date, skill).

    Only events with a `skill` contribute. Partitioned by `date`.
    """

    user_key: str = _user_key()
    date: dt.date = Field(description="the user's local day")
    skill: str = Field(min_length=1, description="the event's skill (or skill_area)")
    completions: int = _count("completion events of the day with this skill")
    scored_events: int = _count("scored events of the day with this skill")
    avg_score: float | None = _score("mean score of those scored events; null when none")
    time_spent_s: float = Field(
        ge=0, description="sum of duration_s of the day's events with this skill"
    )
    emitted_at: AwareDatetime = _emitted_at()


class UserSkillStateRow(_Row):
    """`user_skill_state`: the latest per-skill state of a user (key user_key, skill).

    A snapshot table: each commit replaces the latest row per key. `date` is the UTC date of
    `as_of`, used only as the partition column.
    """

    user_key: str = _user_key()
    skill: str = Field(min_length=1, description="the skill")
    as_of: AwareDatetime = Field(description=_AS_OF)
    scored_events_30d: int = _count(
        "scored events of this skill in the trailing 30 days (event time in (as_of - 30 d, as_of])"
    )
    avg_score_30d: float | None = _score("mean score of those events; null when none")
    trend_slope: float | None = Field(description=_TREND_SLOPE + " (this skill only)")
    trend_direction: TrendDirection = Field(description=_TREND_DIRECTION)
    trend_confidence: float = _fraction(_TREND_CONFIDENCE)
    date: dt.date = Field(description="partition column: the UTC date of as_of")
    emitted_at: AwareDatetime = _emitted_at()


class UserStateRow(_Row):
    """`user_state`: the latest state of each user (key user_key), evaluated as of the watermark.

    A snapshot table, not partitioned: each commit replaces the latest row per key. Also the
    `values` of `user_state` metric messages.
    """

    user_key: str = _user_key()
    cohort_id: str | None = Field(description="the user's last non-null cohort_id")
    org_id: str | None = Field(description="the user's last non-null org_id")
    as_of: AwareDatetime = Field(description=_AS_OF)
    first_seen_at: AwareDatetime = Field(description="event time of the first accepted event")
    last_activity_at: AwareDatetime | None = Field(
        description="event time of the latest completion (an activity); null before the first"
    )
    days_active: int = _count("count of active days (local days with ≥1 completion)")
    current_streak: int = _count(
        "streak at the latest active day if that day is today or yesterday in local time "
        "relative to the watermark, else 0"
    )
    longest_streak: int = _count("the longest streak ever (consecutive active days)")
    momentum: Momentum = Field(
        description="relative to the watermark's local day: high (active today), medium (last "
        "active day ≤1 day ago), low (≤3), stalled (otherwise)"
    )
    trend_slope: float | None = Field(description=_TREND_SLOPE)
    trend_direction: TrendDirection = Field(description=_TREND_DIRECTION)
    trend_confidence: float = _fraction(_TREND_CONFIDENCE)
    projected_score_7d: float | None = _score(
        "fitted trend value 7 days after the last point, clamped to [0, 100]; null when "
        "trend_direction is insufficient_data"
    )
    velocity_7d: float = Field(
        ge=0, description="completions in the trailing 7 closed local days / 7"
    )
    consistency_7d: float = _fraction("active days among the trailing 7 closed days / 7")
    engagement_7d: float = _fraction(
        "0.5·min(time_spent_s over 7 days / (7·1800), 1) + 0.5·min(completions over 7 days / "
        "(7·3), 1)"
    )
    anomaly_performance: float | None = Field(
        description="z-score of the latest closed day's mean score against the previous ≤28 "
        "scored days (sample std floored at 5 points, ≥7 values needed); null with too little "
        "history"
    )
    anomaly_engagement: float | None = Field(
        description="z-score of the latest closed day's time_spent_s against the previous ≤28 "
        "days since the first active day (std floored at 300 s, ≥7 values needed); null with "
        "too little history"
    )
    anomaly_velocity: float | None = Field(
        description="z-score of the latest closed day's completions against the previous ≤28 "
        "days since the first active day (std floored at 1, ≥7 values needed); null with too "
        "little history"
    )
    struggling: bool = Field(
        description="whether the struggling condition holds now: the last ≤5 scored events "
        "within 24 h number ≥3 and all are < 60"
    )
    strengths: list[str] = Field(
        max_length=3,
        description="skills with ≥3 scored events in the trailing 30 days and mean ≥ 80; top 3, "
        "highest mean first (ties by skill name)",
    )
    weaknesses: list[str] = Field(
        max_length=3,
        description="skills with ≥3 scored events in the trailing 30 days and mean < 60; top 3, "
        "lowest mean first (ties by skill name)",
    )
    total_completions: int = _count("completion events ever")
    emitted_at: AwareDatetime = _emitted_at()


_ACTIVE_USERS = "active user-days of the date (user_daily rows with ≥1 completion)"
_AGG_EVENTS = "sum of events over the user_daily rows of the date"
_AGG_COMPLETIONS = "sum of completions over the user_daily rows of the date"
_AGG_SCORED = "sum of scored_events over the user_daily rows of the date"
_AGG_AVG = "mean score weighted by scored events; null when none"
_AGG_TIME = "sum of time_spent_s over the user_daily rows of the date"
_AGG_ALERTS = "alerts whose date is this date"


class CohortDailyRow(_Row):
    """`cohort_daily`: the user_daily rows of one cohort and date, aggregated (key cohort_id, date)."""

    cohort_id: str = Field(min_length=1, description="the cohort")
    date: dt.date = Field(description="the local day of the aggregated user-days")
    org_id: str | None = Field(description="the org_id of the cohort's user-days; null when none")
    active_users: int = _count(_ACTIVE_USERS)
    events: int = _count(_AGG_EVENTS)
    completions: int = _count(_AGG_COMPLETIONS)
    scored_events: int = _count(_AGG_SCORED)
    avg_score: float | None = _score(_AGG_AVG)
    time_spent_s: float = Field(ge=0, description=_AGG_TIME)
    alerts: int = _count(_AGG_ALERTS + " for users of this cohort or the cohort itself")
    emitted_at: AwareDatetime = _emitted_at()


class OrgDailyRow(_Row):
    """`org_daily`: the user_daily rows of one org and date, aggregated (key org_id, date)."""

    org_id: str = Field(min_length=1, description="the organisation")
    date: dt.date = Field(description="the local day of the aggregated user-days")
    active_users: int = _count(_ACTIVE_USERS)
    events: int = _count(_AGG_EVENTS)
    completions: int = _count(_AGG_COMPLETIONS)
    scored_events: int = _count(_AGG_SCORED)
    avg_score: float | None = _score(_AGG_AVG)
    time_spent_s: float = Field(ge=0, description=_AGG_TIME)
    alerts: int = _count(_AGG_ALERTS + " for users or cohorts of this org")
    cohorts: int = _count("distinct non-null cohort_id among the org's user-days of the date")
    emitted_at: AwareDatetime = _emitted_at()


class AlertRow(_Row):
    """`alerts`: one row per fired alert (key alert_id). Partitioned by `date`.

    User rules carry `user_key`; `cohort_engagement_drop` carries `cohort_id` and no `user_key`.
    `evidence` is stored as JSON text (a JSON object); on the alerts topic it is an object.
    """

    alert_id: str = Field(
        pattern=HEX32_PATTERN,
        description="first 32 hex chars of SHA-256 of rule|user_key (or cohort_id)|trigger, "
        "where trigger is the triggering event_id or the closed local date (ISO)",
    )
    rule: AlertRule = Field(description="the rule that fired (SPEC §6)")
    severity: Severity = Field(description="severity of the rule (SPEC §6)")
    user_key: str | None = Field(
        pattern=HEX32_PATTERN, description="the user; null for cohort alerts"
    )
    cohort_id: str | None = Field(description="the user's cohort, or the cohort of a cohort alert")
    org_id: str | None = Field(description="the user's or cohort's org")
    date: dt.date = Field(description="the triggering event's local day, or the closed day")
    event_time: AwareDatetime = Field(
        description="the triggering event's time, or the end of the closed day"
    )
    title: str = Field(min_length=1, description="short title")
    message: str = Field(min_length=1, description="plain English with the numbers")
    evidence: JsonObjectText = Field(
        description="JSON object of the numbers that fired the rule, stored as JSON text"
    )
    recommendations: list[str] = Field(description="short recommended actions")
    emitted_at: AwareDatetime = _emitted_at()

    @model_validator(mode="after")
    def _subject(self) -> AlertRow:
        if self.rule == "cohort_engagement_drop":
            if self.cohort_id is None or self.user_key is not None:
                raise ValueError("a cohort alert has a cohort_id and no user_key")
        elif self.user_key is None:
            raise ValueError(f"a {self.rule} alert needs a user_key")
        return self


class RejectedEventRow(_Row):
    """`rejected_events`: dead letters (key source_ref). Partitioned by the UTC date of receipt.

    RESTRICTED: `payload` is the one place raw input (including raw user_id) survives.
    """

    source_ref: str = Field(
        min_length=1,
        description="where the record came from: kafka:<topic>/<partition>/<offset> or "
        "file:<path>:<line>",
    )
    received_at: AwareDatetime = Field(description="processing time the record was read (UTC)")
    reason: str = Field(
        pattern=REASON_PATTERN,
        description="stable rejection reason (SPEC §2): "
        + ", ".join(REJECTION_REASONS)
        + "; missing_field and invalid_field are followed by :<field name>",
    )
    detail: str = Field(description="human-readable detail")
    payload: str = Field(
        description="RESTRICTED raw input: the original bytes as UTF-8 text, or base64 when "
        "they are not valid UTF-8 (reason invalid_utf8)"
    )
    date: dt.date = Field(description="partition column: the UTC date of received_at")
    emitted_at: AwareDatetime = _emitted_at()


class LateEventRow(_Row):
    """`late_events`: accepted-looking events whose local day had already closed (key source_ref)."""

    source_ref: str = Field(min_length=1, description="where the record came from")
    received_at: AwareDatetime = Field(description="processing time the record was read (UTC)")
    event_id: str = Field(min_length=1, description="the event's event_id")
    user_key: str = _user_key()
    event_time: AwareDatetime = Field(description="the event's time")
    date: dt.date = Field(description="the event's local day (in its own zone), already closed")
    emitted_at: AwareDatetime = _emitted_at()


class PipelineRunRow(_Row):
    """`pipeline_runs`: the record accounting of a run (key run_id).

    `records_in = accepted + rejected + duplicates + late` (SPEC §2) is checked.
    """

    run_id: str = Field(min_length=1, description="identifier of the run")
    started_at: AwareDatetime = Field(description="processing time the run started (UTC)")
    ended_at: AwareDatetime | None = Field(
        description="processing time the run ended; null while running"
    )
    records_in: int = _count("records read = accepted + rejected + duplicates + late")
    accepted: int = _count("accepted events")
    rejected: int = _count("rejected records (dead letters)")
    duplicates: int = _count("duplicate events dropped (same event_id within dedup_horizon)")
    late: int = _count("late events (their local day had closed)")
    alerts: int = _count("alerts fired")
    watermark: AwareDatetime | None = Field(
        description="the watermark at the end of the run; null before the first event"
    )
    date: dt.date = Field(description="partition column: the UTC date of started_at")
    emitted_at: AwareDatetime = _emitted_at()

    @model_validator(mode="after")
    def _balance(self) -> PipelineRunRow:
        total = self.accepted + self.rejected + self.duplicates + self.late
        if self.records_in != total:
            raise ValueError(
                f"records_in={self.records_in} != accepted + rejected + duplicates + late = {total}"
            )
        return self


ROW_MODELS: dict[str, type[BaseModel]] = {
    "user_daily": UserDailyRow,
    "user_skill_daily": UserSkillDailyRow,
    "user_skill_state": UserSkillStateRow,
    "user_state": UserStateRow,
    "cohort_daily": CohortDailyRow,
    "org_daily": OrgDailyRow,
    "alerts": AlertRow,
    "rejected_events": RejectedEventRow,
    "late_events": LateEventRow,
    "pipeline_runs": PipelineRunRow,
}


__all__ = [
    "ALERT_RULES",
    "MOMENTUM_LEVELS",
    "ROW_MODELS",
    "SCHEMA_VERSION",
    "SEVERITIES",
    "TREND_DIRECTIONS",
    "AlertRow",
    "AlertRule",
    "CohortDailyRow",
    "EventType",
    "InputEvent",
    "LateEventRow",
    "Momentum",
    "OrgDailyRow",
    "PipelineRunRow",
    "RejectedEventRow",
    "Severity",
    "TrendDirection",
    "UserDailyRow",
    "UserSkillDailyRow",
    "UserSkillStateRow",
    "UserStateRow",
    "rejection_reason",
]
