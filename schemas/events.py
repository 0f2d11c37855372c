"""The input event of SPEC §1 and the columnar form it takes inside the pipeline.

`decode` turns raw records into an *event batch*: a polars DataFrame with `EVENT_BATCH_SCHEMA`.
Every later stage (dedup, lateness, analytics) works on that frame; raw `user_id` is gone by
then (replaced by `user_key`), and fields outside the allow-list never enter it.
"""

from __future__ import annotations

import polars as pl
from polars._typing import PolarsDataType

COMPLETION_TYPES = (
    "lesson_completed",
    "exercise_completed",
    "quiz_completed",
    "assessment_completed",
    "material_completed",
)
ASSESSMENT_TYPES = ("quiz_completed", "assessment_completed")
ENGAGEMENT_TYPES = ("session_started", "session_ended", "material_viewed")
GAMIFICATION_TYPES = ("xp_earned", "level_up", "achievement_unlocked", "milestone_reached")
EVENT_TYPES = COMPLETION_TYPES + ENGAGEMENT_TYPES + GAMIFICATION_TYPES

#: the allow-list of input fields (`skill_area` is accepted as an alias of `skill`)
INPUT_FIELDS = (
    "event_id",
    "user_id",
    "type",
    "timestamp",
    "cohort_id",
    "org_id",
    "skill",
    "content_id",
    "score",
    "duration_s",
    "xp",
    "session_id",
    "timezone",
)
REQUIRED_FIELDS = ("event_id", "user_id", "type", "timestamp")

#: the columnar event batch every stage after decode works on
EVENT_BATCH_SCHEMA: dict[str, PolarsDataType] = {
    # arrival order within the source partition (0, 1, 2, ... across batches)
    "seq": pl.Int64,
    # `file:<path>:<line>` or `kafka:<topic>/<partition>/<offset>`
    "source_ref": pl.String,
    "event_id": pl.String,
    "user_key": pl.String,
    "type": pl.String,
    # event time, microseconds since the Unix epoch, UTC
    "t_us": pl.Int64,
    # the IANA zone that decides the local day (the event's `timezone` or `default_timezone`)
    "timezone": pl.String,
    # the local day of the event in that zone
    "date": pl.Date,
    "cohort_id": pl.String,
    "org_id": pl.String,
    "skill": pl.String,
    "content_id": pl.String,
    "score": pl.Float64,
    "duration_s": pl.Float64,
    "xp": pl.Int64,
    "session_id": pl.String,
}

#: dead letters produced by decode
REJECTED_BATCH_SCHEMA: dict[str, PolarsDataType] = {
    "seq": pl.Int64,
    "source_ref": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "payload": pl.String,
}
