"""The analyst tables of SPEC §7: columns, types, keys and partitioning.

This module is the single place that names table columns. Operators build polars frames with
exactly these schemas (`conform`), sinks write them to Parquet and DuckDB, and the pydantic row
models in `schemas.models` document the same columns for `learnstream schema`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from polars._typing import PolarsDataType

UTC_TS = pl.Datetime("us", "UTC")
STR = pl.String
I64 = pl.Int64
F64 = pl.Float64


@dataclass(frozen=True)
class Table:
    """One analyst table: its columns in order, its key and how it is stored."""

    name: str
    schema: dict[str, PolarsDataType]
    key: tuple[str, ...]
    #: hive partition column (`date=YYYY-MM-DD`), or None for an unpartitioned table
    partition: str | None = "date"
    #: "append": rows are final when emitted (merged by key on write);
    #: "snapshot": the latest row per key replaces the whole dataset on each commit
    mode: str = "append"

    @property
    def columns(self) -> list[str]:
        return list(self.schema)

    def conform(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Select this table's columns in order, cast to its types (missing columns -> null)."""
        exprs = []
        for name, dtype in self.schema.items():
            if name in frame.columns:
                exprs.append(pl.col(name).cast(dtype))
            else:
                exprs.append(pl.lit(None, dtype=dtype).alias(name))
        return frame.select(exprs)

    def empty(self) -> pl.DataFrame:
        """A frame with no rows and this table's schema (shared: frames are never changed in
        place here, and building one costs ~0.2 ms, which adds up per micro-batch)."""
        frame = _EMPTY.get(self.name)
        if frame is None:
            frame = _EMPTY[self.name] = pl.DataFrame(schema=self.schema)
        return frame


_EMPTY: dict[str, pl.DataFrame] = {}


_DAILY_AGG: dict[str, PolarsDataType] = {
    "active_users": I64,
    "events": I64,
    "completions": I64,
    "scored_events": I64,
    "avg_score": F64,
    "time_spent_s": F64,
    "alerts": I64,
}

USER_DAILY = Table(
    "user_daily",
    {
        "user_key": STR,
        "date": pl.Date,
        "cohort_id": STR,
        "org_id": STR,
        "events": I64,
        "completions": I64,
        "lessons_completed": I64,
        "exercises_completed": I64,
        "quizzes_completed": I64,
        "assessments_completed": I64,
        "materials_completed": I64,
        "sessions": I64,
        "scored_events": I64,
        "avg_score": F64,
        "min_score": F64,
        "max_score": F64,
        "excellent_scores": I64,
        "time_spent_s": F64,
        "xp": I64,
        "streak": I64,
        "emitted_at": UTC_TS,
    },
    key=("user_key", "date"),
)

USER_SKILL_DAILY = Table(
    "user_skill_daily",
    {
        "user_key": STR,
        "date": pl.Date,
        "skill": STR,
        "completions": I64,
        "scored_events": I64,
        "avg_score": F64,
        "time_spent_s": F64,
        "emitted_at": UTC_TS,
    },
    key=("user_key", "date", "skill"),
)

USER_SKILL_STATE = Table(
    "user_skill_state",
    {
        "user_key": STR,
        "skill": STR,
        "as_of": UTC_TS,
        "scored_events_30d": I64,
        "avg_score_30d": F64,
        "trend_slope": F64,
        "trend_direction": STR,
        "trend_confidence": F64,
        # partition column: the UTC date of as_of
        "date": pl.Date,
        "emitted_at": UTC_TS,
    },
    key=("user_key", "skill"),
    mode="snapshot",
)

USER_STATE = Table(
    "user_state",
    {
        "user_key": STR,
        "cohort_id": STR,
        "org_id": STR,
        "as_of": UTC_TS,
        "first_seen_at": UTC_TS,
        "last_activity_at": UTC_TS,
        "days_active": I64,
        "current_streak": I64,
        "longest_streak": I64,
        "momentum": STR,
        "trend_slope": F64,
        "trend_direction": STR,
        "trend_confidence": F64,
        "projected_score_7d": F64,
        "velocity_7d": F64,
        "consistency_7d": F64,
        "engagement_7d": F64,
        "anomaly_performance": F64,
        "anomaly_engagement": F64,
        "anomaly_velocity": F64,
        "struggling": pl.Boolean,
        "strengths": pl.List(STR),
        "weaknesses": pl.List(STR),
        "total_completions": I64,
        "emitted_at": UTC_TS,
    },
    key=("user_key",),
    partition=None,
    mode="snapshot",
)

COHORT_DAILY = Table(
    "cohort_daily",
    {"cohort_id": STR, "date": pl.Date, "org_id": STR, **_DAILY_AGG, "emitted_at": UTC_TS},
    key=("cohort_id", "date"),
)

ORG_DAILY = Table(
    "org_daily",
    {"org_id": STR, "date": pl.Date, **_DAILY_AGG, "cohorts": I64, "emitted_at": UTC_TS},
    key=("org_id", "date"),
)

ALERTS = Table(
    "alerts",
    {
        "alert_id": STR,
        "rule": STR,
        "severity": STR,
        "user_key": STR,
        "cohort_id": STR,
        "org_id": STR,
        "date": pl.Date,
        "event_time": UTC_TS,
        "title": STR,
        "message": STR,
        # a JSON object, as text
        "evidence": STR,
        "recommendations": pl.List(STR),
        "emitted_at": UTC_TS,
    },
    key=("alert_id",),
)

REJECTED_EVENTS = Table(
    "rejected_events",
    {
        "source_ref": STR,
        "received_at": UTC_TS,
        "reason": STR,
        "detail": STR,
        # restricted: the one place raw input survives (UTF-8 text, or base64 of invalid UTF-8)
        "payload": STR,
        # partition column: the UTC date of received_at
        "date": pl.Date,
        "emitted_at": UTC_TS,
    },
    key=("source_ref",),
)

LATE_EVENTS = Table(
    "late_events",
    {
        "source_ref": STR,
        "received_at": UTC_TS,
        "event_id": STR,
        "user_key": STR,
        "event_time": UTC_TS,
        # the event's local day (in its own time zone)
        "date": pl.Date,
        "emitted_at": UTC_TS,
    },
    key=("source_ref",),
)

PIPELINE_RUNS = Table(
    "pipeline_runs",
    {
        "run_id": STR,
        "started_at": UTC_TS,
        "ended_at": UTC_TS,
        "records_in": I64,
        "accepted": I64,
        "rejected": I64,
        "duplicates": I64,
        "late": I64,
        "alerts": I64,
        "watermark": UTC_TS,
        # partition column: the UTC date of started_at
        "date": pl.Date,
        "emitted_at": UTC_TS,
    },
    key=("run_id",),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        USER_DAILY,
        USER_SKILL_DAILY,
        USER_SKILL_STATE,
        USER_STATE,
        COHORT_DAILY,
        ORG_DAILY,
        ALERTS,
        REJECTED_EVENTS,
        LATE_EVENTS,
        PIPELINE_RUNS,
    )
}

#: stable rejection reasons of SPEC §2 (field-specific ones are `missing_field:<name>` and
#: `invalid_field:<name>`)
REJECTION_REASONS = (
    "malformed_json",
    "not_an_object",
    "invalid_utf8",
    "oversized",
    "missing_field",
    "invalid_field",
    "unknown_type",
    "timestamp_missing_timezone",
    "timestamp_in_future",
)
