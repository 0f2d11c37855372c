"""Converters of the real data sets in shared/data into learnstream input events (SPEC §1).

Test support only: the data are read from `<repo>/../shared/data` (never copied into the
repository); `data_dir` may be that directory or the data set's own directory.

EdNet KT4 sample (`ednet-kt4-sample/`, users u1, u3 .. u10; Santa TOEIC app, Korea) — mapping:

- `submit` of a bundle (`b…`) -> `exercise_completed` at the submit's time, with
  `content_id` = the bundle id, `skill` = `part-<part>` of the bundle's questions (every bundle's
  questions share one part), `duration_s` = seconds since the latest `enter` of that bundle before
  the submit, and `score` = 100 × (correct questions / questions of the bundle in questions.csv).
  A question counts as correct when its last `respond` between the previous submit of the bundle
  and this submit has `user_answer == correct_answer`. Sharp edge: the sample often logs responds
  for only some of a multi-question bundle's questions; unanswered questions count as not correct
  (so 1 right of 4 gives 25). A submit without any `respond` carries no `score`.
- `enter` of a lecture (`l…`) -> `material_viewed`; its `quit` -> `lesson_completed` with
  `duration_s` since that lecture's latest `enter`; `skill` = `part-<part>` from lectures.csv.
- `enter` of an explanation (`e…`) -> `material_viewed` (`skill` from its questions' part).
- Everything else (`respond`, `quit` of an explanation, audio/video play/pause, `erase_choice`,
  `pay`) is not an event of its own. No sessions are derived (EdNet has no session ids).
- `event_id` = `ednet-<user>-<row>` with `row` the 0-based data row of the action in the user's
  CSV; `user_id` = the file stem (`u1`); `timestamp` = the Unix ms as RFC 3339 UTC with
  milliseconds and `Z`; `timezone` = `Asia/Seoul`. `duration_s` is omitted when above 86400 s.
  No cohort or org. Events are sorted by (time, user, row): a stream in event-time order.

OULAD J presentations (`oulad-j/`), `studentAssessment.csv` joined with `assessments.csv`:

- each row -> `assessment_completed`, or `quiz_completed` when `assessment_type` is CMA;
- `timestamp` = 12:00 UTC of (1 October of the presentation year + `date_submitted` days)
  (2013J starts 2013-10-01, 2014J 2014-10-01); `score` as given (omitted when missing);
  `skill` = `code_module`; `cohort_id` = `<code_module>-<code_presentation>`; `org_id` = `OU`;
  `user_id` = `str(id_student)`; `event_id` = `oulad-<id_assessment>-<id_student>`;
  `timezone` = `Europe/London`;
- rows with `is_banked == 1` are skipped: they re-use a result from an earlier presentation
  (713 of 36,184 rows);
- only those fields: no column of studentInfo.csv (demographics) is ever read.
  Sorted by (time, event_id).

`ednet_expected` is the oracle for end-to-end tests: computed with plain polars from the
converted events (Asia/Seoul local days), not with learnstream code.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson
import polars as pl

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
EDNET_USERS = ("u1", "u3", "u4", "u5", "u6", "u7", "u8", "u9", "u10")
EDNET_TIMEZONE = "Asia/Seoul"
OULAD_TIMEZONE = "Europe/London"
COMPLETION_TYPES = (
    "lesson_completed",
    "exercise_completed",
    "quiz_completed",
    "assessment_completed",
    "material_completed",
)
_MAX_DURATION_S = 86400.0
_FIELD_ORDER = (
    "event_id",
    "user_id",
    "type",
    "timestamp",
    "timezone",
    "cohort_id",
    "org_id",
    "skill",
    "content_id",
    "score",
    "duration_s",
)


def _dataset_dir(data_dir: Path, name: str) -> Path:
    data_dir = Path(data_dir)
    return data_dir / name if (data_dir / name).is_dir() else data_dir


def _to_dicts(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts in SPEC field order, null fields omitted (null means absent)."""
    cols = [c for c in _FIELD_ORDER if c in frame.columns]
    return [
        {k: v for k, v in row.items() if v is not None}
        for row in frame.select(cols).iter_rows(named=True)
    ]


# --------------------------------------------------------------------------------------------
# EdNet


def _ednet_user(path: Path, questions: pl.DataFrame, lectures: pl.DataFrame) -> pl.DataFrame:
    """Events of one user's action log as columns (t_ms, row, type, content_id, skill, ...)."""
    log = pl.read_csv(
        path,
        schema_overrides={
            "timestamp": pl.Int64,
            "user_answer": pl.String,
            "cursor_time": pl.Int64,
            "item_id": pl.String,
        },
    ).with_row_index("row")
    log = log.with_columns(pl.col("row").cast(pl.Int64), kind=pl.col("item_id").str.slice(0, 1))
    action, kind = pl.col("action_type"), pl.col("kind")
    bundle_part = questions.group_by("bundle_id").agg(part=pl.col("part").first(), size=pl.len())

    # bundles: submit -> exercise_completed
    enters = (
        log.filter((action == "enter") & (kind == "b"))
        .select("item_id", enter_row="row", enter_ms="timestamp")
        .sort("enter_row")
    )
    submits = (
        log.filter((action == "submit") & (kind == "b"))
        .sort("row")
        .join_asof(
            enters,
            left_on="row",
            right_on="enter_row",
            by="item_id",
            strategy="backward",
            check_sortedness=False,
        )
        .join(bundle_part, left_on="item_id", right_on="bundle_id", how="left")
    )
    previous_submit = submits.select(
        "item_id", "row", prev_row=pl.col("row").shift(1).over("item_id").fill_null(-1)
    )
    responds = (
        log.filter(action == "respond")
        .join(
            questions.select("question_id", "bundle_id", "correct_answer"),
            left_on="item_id",
            right_on="question_id",
            how="inner",
        )
        .sort("row")
        .join_asof(
            previous_submit.rename({"item_id": "bundle_id", "row": "submit_row"}).sort(
                "submit_row"
            ),
            left_on="row",
            right_on="submit_row",
            by="bundle_id",
            strategy="forward",
            check_sortedness=False,
        )
        .filter(pl.col("submit_row").is_not_null() & (pl.col("row") > pl.col("prev_row")))
    )
    last_answer = (
        responds.sort("row")
        .group_by("submit_row", "item_id")
        .agg(correct=(pl.col("user_answer") == pl.col("correct_answer")).last())
    )
    per_submit = last_answer.group_by("submit_row").agg(n_correct=pl.col("correct").sum())
    exercises = submits.join(per_submit, left_on="row", right_on="submit_row", how="left").select(
        "row",
        t_ms="timestamp",
        type=pl.lit("exercise_completed"),
        content_id="item_id",
        skill=pl.lit("part-") + pl.col("part").cast(pl.String),
        score=100.0 * pl.col("n_correct").cast(pl.Float64) / pl.col("size").cast(pl.Float64),
        duration_s=pl.col("timestamp") - pl.col("enter_ms"),
    )

    # lectures: enter -> material_viewed, quit -> lesson_completed
    lecture_part = lectures.select(
        item_id="lecture_id", skill=pl.lit("part-") + pl.col("part").cast(pl.String)
    )
    lecture_rows = log.filter(kind == "l").join(lecture_part, on="item_id", how="left")
    l_enters = lecture_rows.filter(action == "enter")
    l_quits = (
        lecture_rows.filter(action == "quit")
        .sort("row")
        .join_asof(
            l_enters.select("item_id", enter_row="row", enter_ms="timestamp").sort("enter_row"),
            left_on="row",
            right_on="enter_row",
            by="item_id",
            strategy="backward",
            check_sortedness=False,
        )
    )
    viewed = l_enters.select(
        "row",
        t_ms="timestamp",
        type=pl.lit("material_viewed"),
        content_id="item_id",
        skill="skill",
        score=pl.lit(None, dtype=pl.Float64),
        duration_s=pl.lit(None, dtype=pl.Int64),
    )
    lessons = l_quits.select(
        "row",
        t_ms="timestamp",
        type=pl.lit("lesson_completed"),
        content_id="item_id",
        skill="skill",
        score=pl.lit(None, dtype=pl.Float64),
        duration_s=pl.col("timestamp") - pl.col("enter_ms"),
    )

    # explanations: enter -> material_viewed
    explanation_part = questions.group_by("explanation_id").agg(part=pl.col("part").first())
    explained = (
        log.filter((kind == "e") & (action == "enter"))
        .join(explanation_part, left_on="item_id", right_on="explanation_id", how="left")
        .select(
            "row",
            t_ms="timestamp",
            type=pl.lit("material_viewed"),
            content_id="item_id",
            skill=pl.lit("part-") + pl.col("part").cast(pl.String),
            score=pl.lit(None, dtype=pl.Float64),
            duration_s=pl.lit(None, dtype=pl.Int64),
        )
    )
    events = pl.concat([exercises, viewed, lessons, explained], how="vertical")
    # ms -> s with exactly the ms digits (no 30.714000000000002), dropped above 86400 s
    seconds = (pl.col("duration_s").cast(pl.Float64) / 1000.0).round(3)
    return events.with_columns(duration_s=pl.when(seconds <= _MAX_DURATION_S).then(seconds))


def ednet_events(data_dir: Path) -> list[dict[str, Any]]:
    """All users of ednet-kt4-sample as learnstream events, in event-time order (see module doc)."""
    root = _dataset_dir(data_dir, "ednet-kt4-sample")
    questions = pl.read_csv(
        root / "questions.csv",
        columns=["question_id", "bundle_id", "explanation_id", "correct_answer", "part"],
        schema_overrides={"correct_answer": pl.String, "part": pl.Int64},
    )
    lectures = pl.read_csv(
        root / "lectures.csv", columns=["lecture_id", "part"], schema_overrides={"part": pl.Int64}
    )
    frames = []
    for user in EDNET_USERS:
        frames.append(
            _ednet_user(root / f"{user}.csv", questions, lectures).with_columns(
                user_id=pl.lit(user)
            )
        )
    events = (
        pl.concat(frames)
        .sort("t_ms", "user_id", "row")
        .with_columns(
            event_id=pl.concat_str(
                [pl.lit("ednet-"), pl.col("user_id"), pl.lit("-"), pl.col("row").cast(pl.String)]
            ),
            timestamp=pl.col("t_ms")
            .cast(pl.Datetime("ms", "UTC"))
            .dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
            timezone=pl.lit(EDNET_TIMEZONE),
        )
    )
    return _to_dicts(events)


# --------------------------------------------------------------------------------------------
# OULAD


def _presentation_start(code_presentation: str) -> date:
    """1 October of the presentation year: `2013J` -> 2013-10-01 (J presentations only)."""
    if not code_presentation.endswith("J"):
        raise ValueError(f"only J (October) presentations are mapped, got {code_presentation!r}")
    return date(int(code_presentation[:4]), 10, 1)


def oulad_events(data_dir: Path) -> list[dict[str, Any]]:
    """studentAssessment of oulad-j as learnstream events (banked rows skipped; see module doc)."""
    root = _dataset_dir(data_dir, "oulad-j")
    assessments = pl.read_csv(
        root / "assessments.csv",
        columns=["code_module", "code_presentation", "id_assessment", "assessment_type"],
    )
    starts = pl.DataFrame(
        {
            "code_presentation": sorted(set(assessments["code_presentation"].to_list())),
        }
    ).with_columns(
        start=pl.col("code_presentation").map_elements(_presentation_start, return_dtype=pl.Date)
    )
    rows = pl.read_csv(
        root / "studentAssessment.csv",
        schema_overrides={"score": pl.Float64, "date_submitted": pl.Int64},
        null_values=["", "?"],
    )
    events = (
        rows.filter(pl.col("is_banked") != 1)
        .join(assessments, on="id_assessment", how="inner", validate="m:1")
        .join(starts, on="code_presentation", how="left")
        .with_columns(
            day=pl.col("start") + pl.duration(days=pl.col("date_submitted")),
        )
        .select(
            event_id=pl.format("oulad-{}-{}", "id_assessment", "id_student"),
            user_id=pl.col("id_student").cast(pl.String),
            type=pl.when(pl.col("assessment_type") == "CMA")
            .then(pl.lit("quiz_completed"))
            .otherwise(pl.lit("assessment_completed")),
            timestamp=pl.col("day").dt.strftime("%Y-%m-%dT12:00:00Z"),
            timezone=pl.lit(OULAD_TIMEZONE),
            cohort_id=pl.format("{}-{}", "code_module", "code_presentation"),
            org_id=pl.lit("OU"),
            skill="code_module",
            score="score",
        )
        .sort("timestamp", "event_id")
    )
    return _to_dicts(events)


# --------------------------------------------------------------------------------------------
# output and oracle


def write_jsonl(events: list[dict[str, Any]], path: Path) -> None:
    """One compact JSON object per line, in the given order."""
    with Path(path).open("wb") as out:
        for event in events:
            out.write(orjson.dumps(event))
            out.write(b"\n")


def ednet_expected(data_dir: Path) -> dict[str, pl.DataFrame]:
    """Expected per-day and per-user numbers for the EdNet events, computed with plain polars.

    Keys (raw `user_id`; map it to `user_key` with the run's HMAC secret before comparing):

    - `user_daily`: one row per user and Asia/Seoul local date with >= 1 event: `events`,
      `completions`, `scored_events`, `avg_score` (null when none), `time_spent_s` (sum of
      `duration_s`), `streak` (consecutive local days with >= 1 completion ending that day;
      0 on a day without completion).
    - `user_state`: per user `days_active`, `longest_streak`, `total_completions`,
      `first_date`, `last_active_date`.

    Sharp edge: `current_streak` is not here: it depends on the run's watermark.
    """
    frame = pl.DataFrame(
        ednet_events(data_dir),
        schema={
            "event_id": pl.String,
            "user_id": pl.String,
            "type": pl.String,
            "timestamp": pl.String,
            "timezone": pl.String,
            "skill": pl.String,
            "content_id": pl.String,
            "score": pl.Float64,
            "duration_s": pl.Float64,
        },
    )
    frame = frame.with_columns(
        date=pl.col("timestamp")
        .str.to_datetime("%Y-%m-%dT%H:%M:%S%.3fZ", time_unit="ms", time_zone="UTC")
        .dt.convert_time_zone(EDNET_TIMEZONE)
        .dt.date(),
        completion=pl.col("type").is_in(COMPLETION_TYPES),
    )
    daily = (
        frame.group_by("user_id", "date")
        .agg(
            events=pl.len(),
            completions=pl.col("completion").sum(),
            scored_events=pl.col("score").is_not_null().sum(),
            avg_score=pl.col("score").mean(),
            time_spent_s=pl.col("duration_s").fill_null(0.0).sum(),
        )
        .sort("user_id", "date")
    )
    active = daily.filter(pl.col("completions") > 0).select("user_id", "date")
    # a run of consecutive days shares (date - its rank within the user): streak = place in run
    active = (
        active.with_columns(rank=pl.int_range(pl.len()).over("user_id"))
        .with_columns(run=pl.col("date") - pl.duration(days=pl.col("rank")))
        .with_columns(streak=pl.int_range(1, pl.len() + 1).over("user_id", "run"))
        .select("user_id", "date", "streak")
    )
    daily = daily.join(active, on=["user_id", "date"], how="left").with_columns(
        pl.col("streak").fill_null(0).cast(pl.Int64),
        pl.col("events").cast(pl.Int64),
        pl.col("completions").cast(pl.Int64),
        pl.col("scored_events").cast(pl.Int64),
    )
    state = (
        daily.group_by("user_id")
        .agg(
            days_active=(pl.col("completions") > 0).sum().cast(pl.Int64),
            longest_streak=pl.col("streak").max(),
            total_completions=pl.col("completions").sum(),
            first_date=pl.col("date").min(),
            last_active_date=pl.col("date").filter(pl.col("completions") > 0).max(),
        )
        .sort("user_id")
    )
    return {"user_daily": daily, "user_state": state}
