"""The contract models (schemas.models), topic messages (schemas.messages) and the printed JSON
Schemas (schemas.jsonschema).

The `jsonschema` package is not in the venv, so the rendered schemas are checked by the small
validator below (`check`), which implements exactly the keywords pydantic emits here and fails
on any other keyword, so that it cannot pass a schema it does not understand.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import types
import typing
from typing import Any, get_args

import orjson
import polars as pl
import pytest
from pydantic import AwareDatetime, BaseModel, ValidationError

from schemas.events import EVENT_TYPES
from schemas.jsonschema import all_json_schemas, render
from schemas.messages import (
    TOPICS,
    AlertMessage,
    DeadLetterMessage,
    MetricMessage,
    alert_messages,
    dead_letter_messages,
    metric_messages,
)
from schemas.models import (
    ROW_MODELS,
    AlertRow,
    EventType,
    InputEvent,
    PipelineRunRow,
    RejectedEventRow,
    UserDailyRow,
    UserStateRow,
    rejection_reason,
)
from schemas.tables import ALERTS, REJECTED_EVENTS, TABLES, USER_DAILY, USER_STATE

UTC = dt.UTC
KEY_A = "0123456789abcdef0123456789abcdef"
KEY_B = "fedcba9876543210fedcba9876543210"
T0 = dt.datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
EMITTED = dt.datetime(2024, 5, 2, 1, 0, 0, 5000, tzinfo=UTC)  # .005 s

# ---------------------------------------------------------------------------------------------
# InputEvent (SPEC §1)

BASE = {
    "event_id": "e1",
    "user_id": "alice",
    "type": "quiz_completed",
    "timestamp": "2024-05-01T09:30:00+02:00",
}


def reason_of(**changes: Any) -> str | None:
    """The rejection reason for BASE with `changes` (None value = drop the field), or None if valid."""
    event = {**BASE}
    for name, value in changes.items():
        if value is None:
            event.pop(name, None)
        else:
            event[name] = value
    try:
        InputEvent.model_validate(event)
    except ValidationError as exc:
        return rejection_reason(exc)
    return None


def test_event_type_literal_is_exactly_the_event_types() -> None:
    assert get_args(EventType) == EVENT_TYPES


def test_full_event_from_json_and_unknown_fields_dropped() -> None:
    raw = json.dumps(
        {
            **BASE,
            "cohort_id": "c1",
            "org_id": "o1",
            "skill_area": "algebra",
            "content_id": "q17",
            "score": 85,
            "duration_s": 120.5,
            "xp": 10,
            "session_id": "s1",
            "timezone": "Europe/Paris",
            "email": "alice@example.org",  # outside the allow-list
        }
    )
    event = InputEvent.model_validate_json(raw)
    assert event.skill == "algebra"
    assert event.score == 85.0 and event.duration_s == 120.5 and event.xp == 10
    # 09:30 at +02:00 is 07:30 UTC; the offset is kept
    assert event.timestamp.astimezone(UTC) == dt.datetime(2024, 5, 1, 7, 30, tzinfo=UTC)
    dumped = event.model_dump()
    assert "email" not in dumped and "skill_area" not in dumped
    assert set(dumped) == set(InputEvent.model_fields)


def test_skill_wins_over_skill_area_and_null_skill_falls_back() -> None:
    both = InputEvent.model_validate({**BASE, "skill": "a", "skill_area": "b"})
    assert both.skill == "a"
    null_skill = InputEvent.model_validate({**BASE, "skill": None, "skill_area": "b"})
    assert null_skill.skill == "b"
    assert reason_of(skill_area="x" * 129) == "invalid_field:skill"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"event_id": None}, "missing_field:event_id"),
        ({"user_id": None}, "missing_field:user_id"),
        ({"type": None}, "missing_field:type"),
        ({"timestamp": None}, "missing_field:timestamp"),
        # lengths: 1-128 / 1-256 (SPEC §1)
        ({"event_id": ""}, "invalid_field:event_id"),
        ({"event_id": "x" * 128}, None),
        ({"event_id": "x" * 129}, "invalid_field:event_id"),
        ({"user_id": "x" * 256}, None),
        ({"user_id": "x" * 257}, "invalid_field:user_id"),
        ({"cohort_id": "x" * 128}, None),
        ({"cohort_id": "x" * 129}, "invalid_field:cohort_id"),
        ({"org_id": ""}, "invalid_field:org_id"),
        ({"content_id": "x" * 256}, None),
        ({"content_id": "x" * 257}, "invalid_field:content_id"),
        ({"session_id": "x" * 129}, "invalid_field:session_id"),
        ({"cohort_id": 7}, "invalid_field:cohort_id"),
        # type
        ({"type": "lesson_started"}, "unknown_type"),
        ({"type": 3}, "unknown_type"),
        # ranges
        ({"score": 0}, None),
        ({"score": 100}, None),
        ({"score": 100.01}, "invalid_field:score"),
        ({"score": -0.01}, "invalid_field:score"),
        ({"score": "90"}, "invalid_field:score"),
        ({"score": True}, "invalid_field:score"),
        ({"duration_s": 86400}, None),
        ({"duration_s": 86400.5}, "invalid_field:duration_s"),
        ({"duration_s": -1}, "invalid_field:duration_s"),
        ({"xp": 0}, None),
        ({"xp": 7.0}, None),  # JSON Schema `integer` accepts 7.0
        ({"xp": 7.5}, "invalid_field:xp"),
        ({"xp": -1}, "invalid_field:xp"),
        ({"xp": "7"}, "invalid_field:xp"),
        ({"xp": True}, "invalid_field:xp"),
        # timestamps: RFC 3339 with offset or Z only
        ({"timestamp": "2024-05-01T09:30:00Z"}, None),
        ({"timestamp": "2024-05-01t09:30:00.123456789z"}, None),
        ({"timestamp": "2024-05-01T09:30:00-05:30"}, None),
        ({"timestamp": "2024-05-01T09:30:00"}, "timestamp_missing_timezone"),
        ({"timestamp": "2024-05-01T09:30:00.5"}, "timestamp_missing_timezone"),
        ({"timestamp": "2024-05-01 09:30:00Z"}, None),  # a space for the T, as decode accepts
        ({"timestamp": "2024-05-01"}, "invalid_field:timestamp"),
        ({"timestamp": "2024-02-30T09:30:00Z"}, "invalid_field:timestamp"),
        ({"timestamp": 1714555800}, "invalid_field:timestamp"),
        # time zones: IANA names only
        ({"timezone": "Asia/Seoul"}, None),
        ({"timezone": "UTC"}, None),
        ({"timezone": "Mars/Olympus_Mons"}, "invalid_field:timezone"),
        ({"timezone": "+02:00"}, "invalid_field:timezone"),
        ({"timezone": "../../etc/passwd"}, "invalid_field:timezone"),
    ],
)
def test_input_event_rules(changes: dict[str, Any], reason: str | None) -> None:
    assert reason_of(**changes) == reason


def test_optional_null_means_absent_and_non_objects_are_rejected() -> None:
    event = InputEvent.model_validate({**BASE, "score": None, "timezone": None})
    assert event.score is None and event.timezone is None
    for raw in ("[1, 2]", '"text"', "3"):
        with pytest.raises(ValidationError) as info:
            InputEvent.model_validate_json(raw)
        assert rejection_reason(info.value) == "not_an_object"


def test_naive_python_datetime_is_missing_timezone() -> None:
    assert reason_of(timestamp=dt.datetime(2024, 5, 1, 9, 30)) == "timestamp_missing_timezone"
    assert reason_of(timestamp=T0) is None


# ---------------------------------------------------------------------------------------------
# row models mirror schemas.tables


def _python_type(annotation: Any) -> tuple[Any, bool]:
    """(base Python type, nullable) of a field annotation; Literal[str...] counts as str."""
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        assert len(args) == 1, annotation
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        kinds = {type(a) for a in typing.get_args(annotation)}
        assert len(kinds) == 1, annotation
        annotation = kinds.pop()
    if annotation is AwareDatetime:
        annotation = dt.datetime
    return annotation, nullable


def _polars_of(py: Any) -> pl.DataType:
    if typing.get_origin(py) is list:
        (inner,) = typing.get_args(py)
        return pl.List(_polars_of(inner))
    mapping = {
        str: pl.String(),
        int: pl.Int64(),
        float: pl.Float64(),
        bool: pl.Boolean(),
        dt.date: pl.Date(),
        dt.datetime: pl.Datetime("us", "UTC"),
    }
    return mapping[py]


def test_every_table_has_a_row_model() -> None:
    assert list(ROW_MODELS) == list(TABLES)


@pytest.mark.parametrize("name", list(TABLES))
def test_row_model_matches_table(name: str) -> None:
    model, table = ROW_MODELS[name], TABLES[name]
    fields = [f for f in model.model_fields if f != "schema_version"]
    assert fields == table.columns
    assert model.model_fields["schema_version"].default == 1
    assert model.__doc__ and model.__doc__.strip()
    for column, dtype in table.schema.items():
        info = model.model_fields[column]
        assert info.description, f"{name}.{column} has no description"
        py, nullable = _python_type(info.annotation)
        assert _polars_of(py) == dtype, f"{name}.{column}: {info.annotation} vs {dtype}"
        # key columns are never null
        if column in table.key:
            assert not nullable, f"{name}.{column} is a key column"


def test_nullable_columns_are_the_documented_ones() -> None:
    # the columns SPEC lets be null: ids a user may not have, means over no scored events,
    # trend numbers under insufficient_data, anomaly scores without history, open runs
    expected = {
        "user_daily": {"cohort_id", "org_id", "avg_score", "min_score", "max_score"},
        "user_skill_daily": {"avg_score"},
        "user_skill_state": {"avg_score_30d", "trend_slope"},
        "user_state": {
            "cohort_id",
            "org_id",
            "last_activity_at",
            "trend_slope",
            "projected_score_7d",
            "anomaly_performance",
            "anomaly_engagement",
            "anomaly_velocity",
        },
        "cohort_daily": {"org_id", "avg_score"},
        "org_daily": {"avg_score"},
        "alerts": {"user_key", "cohort_id", "org_id"},
        "rejected_events": set(),
        "late_events": set(),
        "pipeline_runs": {"ended_at", "watermark"},
    }
    for name, model in ROW_MODELS.items():
        got = {f for f, i in model.model_fields.items() if _python_type(i.annotation)[1]}
        assert got == expected[name], name


def test_streak_description_is_spec_wording() -> None:
    desc = UserDailyRow.model_fields["streak"].description or ""
    assert desc.startswith(
        "number of consecutive active days ending at this date (0 if not active)"
    )


# ---------------------------------------------------------------------------------------------
# sample rows, built as polars frames with the table schemas (the way operators emit them)


def user_daily_frame() -> pl.DataFrame:
    return USER_DAILY.conform(
        pl.DataFrame(
            {
                "user_key": [KEY_A, KEY_B],
                "date": [dt.date(2024, 5, 1), dt.date(2024, 5, 1)],
                "cohort_id": ["c1", None],
                "org_id": ["o1", None],
                # A: 3 quizzes (scores 70, 90, 95) and a session; B: one material view
                "events": [4, 1],
                "completions": [3, 0],
                "lessons_completed": [0, 0],
                "exercises_completed": [0, 0],
                "quizzes_completed": [3, 0],
                "assessments_completed": [0, 0],
                "materials_completed": [0, 0],
                "sessions": [1, 0],
                "scored_events": [3, 0],
                "avg_score": [85.0, None],  # (70 + 90 + 95) / 3
                "min_score": [70.0, None],
                "max_score": [95.0, None],
                "excellent_scores": [2, 0],  # 90 and 95 are >= 80
                "time_spent_s": [900.0, 30.0],
                "xp": [30, 0],
                "streak": [1, 0],
                "emitted_at": [EMITTED, None],  # B's is stamped by the builder
            }
        )
    )


def user_state_frame() -> pl.DataFrame:
    return USER_STATE.conform(
        pl.DataFrame(
            {
                "user_key": [KEY_A],
                "cohort_id": ["c1"],
                "org_id": ["o1"],
                "as_of": [T0],
                "first_seen_at": [T0 - dt.timedelta(days=10)],
                "last_activity_at": [T0 - dt.timedelta(hours=2)],
                "days_active": [6],
                "current_streak": [2],
                "longest_streak": [4],
                "momentum": ["high"],
                "trend_slope": [None],
                "trend_direction": ["insufficient_data"],
                "trend_confidence": [0.1],  # 2 points / 20
                "projected_score_7d": [None],
                "velocity_7d": [12 / 7],
                "consistency_7d": [5 / 7],
                # 0.5·min(6300/12600, 1) + 0.5·min(12/21, 1) = 0.25 + 0.2857...
                "engagement_7d": [0.25 + 0.5 * 12 / 21],
                "anomaly_performance": [None],
                "anomaly_engagement": [-1.5],
                "anomaly_velocity": [float("nan")],  # NaN travels as null
                "struggling": [False],
                "strengths": [["algebra"]],
                "weaknesses": [[]],
                "total_completions": [40],
                "emitted_at": [EMITTED],
            }
        )
    )


def alerts_frame() -> pl.DataFrame:
    return ALERTS.conform(
        pl.DataFrame(
            {
                "alert_id": ["a" * 32, "b" * 32],
                "rule": ["struggling", "cohort_engagement_drop"],
                "severity": ["high", "medium"],
                "user_key": [KEY_A, None],
                "cohort_id": ["c1", "c9"],
                "org_id": ["o1", None],
                "date": [dt.date(2024, 5, 1), dt.date(2024, 4, 30)],
                "event_time": [T0, dt.datetime(2024, 5, 1, tzinfo=UTC)],
                "title": ["Struggling", "Cohort engagement drop"],
                "message": ['3 scores < 60 within 24 h: 40, 55, "50"', "active users z = -3.2"],
                "evidence": ['{"scores": [40, 55, 50], "window_h": 24}', '{"z": -3.2}'],
                "recommendations": [["Offer a review session"], []],
                "emitted_at": [EMITTED, EMITTED],
            }
        )
    )


def rejected_frame() -> pl.DataFrame:
    raw_bad = b"\xff\xfe{not utf-8"
    return REJECTED_EVENTS.conform(
        pl.DataFrame(
            {
                "source_ref": ["file:in.jsonl:3", "kafka:learning.events/0/17"],
                "received_at": [T0, T0],
                "reason": ["missing_field:user_id", "invalid_utf8"],
                "detail": ["user_id is required", "byte 0xff at offset 0"],
                "payload": ['{"event_id": "e9", "tipo": "é"}', base64.b64encode(raw_bad).decode()],
                "date": [dt.date(2024, 5, 1)] * 2,
                "emitted_at": [EMITTED, EMITTED],
            }
        )
    )


@pytest.mark.parametrize(
    ("name", "frame"),
    [
        ("user_daily", user_daily_frame),
        ("user_state", user_state_frame),
        ("alerts", alerts_frame),
        ("rejected_events", rejected_frame),
    ],
)
def test_sample_rows_validate_against_row_models(name: str, frame: Any) -> None:
    rows = frame().with_columns(pl.col("emitted_at").fill_null(EMITTED)).to_dicts()
    for row in rows:
        if name == "user_state":
            row["anomaly_velocity"] = None  # NaN is not a valid value (null is)
        ROW_MODELS[name].model_validate(row)


def test_row_models_enforce_contract_rules() -> None:
    alert = {**alerts_frame().to_dicts()[0]}
    AlertRow.model_validate(alert)
    with pytest.raises(ValidationError, match="JSON object"):
        AlertRow.model_validate({**alert, "evidence": "[1, 2]"})
    with pytest.raises(ValidationError, match="not valid JSON"):
        AlertRow.model_validate({**alert, "evidence": "{oops"})
    with pytest.raises(ValidationError, match="needs a user_key"):
        AlertRow.model_validate({**alert, "user_key": None})
    with pytest.raises(ValidationError, match="cohort alert"):
        AlertRow.model_validate({**alert, "rule": "cohort_engagement_drop"})
    with pytest.raises(ValidationError):
        AlertRow.model_validate({**alert, "severity": "critical"})
    with pytest.raises(ValidationError):  # a raw user_id is not a user_key
        AlertRow.model_validate({**alert, "user_key": "alice"})
    with pytest.raises(ValidationError):  # extra columns are drift, not data
        AlertRow.model_validate({**alert, "user_id": "alice"})

    run = {
        "run_id": "r1",
        "started_at": T0,
        "ended_at": None,
        "records_in": 10,
        "accepted": 6,
        "rejected": 2,
        "duplicates": 1,
        "late": 1,
        "alerts": 0,
        "watermark": None,
        "date": T0.date(),
        "emitted_at": EMITTED,
    }
    PipelineRunRow.model_validate(run)  # 6 + 2 + 1 + 1 = 10
    with pytest.raises(ValidationError, match="records_in=11"):
        PipelineRunRow.model_validate({**run, "records_in": 11})

    rejected = rejected_frame().to_dicts()[0]
    for reason in ("oversized", "invalid_field:score", "timestamp_in_future"):
        RejectedEventRow.model_validate({**rejected, "reason": reason})
    for reason in ("missing_field", "too_big", "oversized:x"):
        with pytest.raises(ValidationError):
            RejectedEventRow.model_validate({**rejected, "reason": reason})


# ---------------------------------------------------------------------------------------------
# topic messages


def test_topic_names() -> None:
    assert TOPICS == {
        "events": "learning.events",
        "alerts": "learning.alerts",
        "metrics": "learning.metrics",
        "dlq": "learning.events.dlq",
    }


def test_alert_messages() -> None:
    pairs = alert_messages(alerts_frame())
    assert [k for k, _ in pairs] == [KEY_A.encode(), b"c9"]  # cohort alert keyed by cohort_id
    first = orjson.loads(pairs[0][1])
    assert first["schema_version"] == 1
    assert first["evidence"] == {"scores": [40, 55, 50], "window_h": 24}
    assert first["event_time"] == "2024-05-01T09:30:00Z"
    assert first["emitted_at"] == "2024-05-02T01:00:00.005Z"
    assert first["date"] == "2024-05-01"
    assert first["message"] == '3 scores < 60 within 24 h: 40, 55, "50"'
    assert list(first) == list(AlertMessage.model_fields)
    for _, value in pairs:
        message = AlertMessage.model_validate_json(value)
        assert message.emitted_at == EMITTED
    second = AlertMessage.model_validate_json(pairs[1][1])
    assert second.user_key is None and second.evidence == {"z": -3.2}
    assert alert_messages(ALERTS.empty()) == []


def test_metric_messages_user_day() -> None:
    before = dt.datetime.now(UTC)
    pairs = metric_messages("user_day", user_daily_frame())
    assert [k for k, _ in pairs] == [KEY_A.encode(), KEY_B.encode()]
    a, b = (MetricMessage.model_validate_json(v) for _, v in pairs)
    assert a.kind == "user_day" and isinstance(a.values, UserDailyRow)
    assert a.values.avg_score == 85.0 and a.values.excellent_scores == 2
    assert a.emitted_at == a.values.emitted_at == EMITTED
    # B had no emitted_at: stamped with processing time, the same in the message and the row
    assert isinstance(b.values, UserDailyRow)
    assert b.values.avg_score is None and b.values.cohort_id is None
    assert b.emitted_at == b.values.emitted_at and b.emitted_at >= before.replace(microsecond=0)
    raw = orjson.loads(pairs[0][1])
    assert list(raw) == ["schema_version", "kind", "user_key", "values", "emitted_at"]
    assert list(raw["values"]) == USER_DAILY.columns
    assert raw["values"]["date"] == "2024-05-01"


def test_metric_messages_user_state() -> None:
    ((key, value),) = metric_messages("user_state", user_state_frame())
    assert key == KEY_A.encode()
    message = MetricMessage.model_validate_json(value)
    assert isinstance(message.values, UserStateRow)
    state = message.values
    assert state.strengths == ["algebra"] and state.weaknesses == []
    assert state.anomaly_velocity is None  # NaN became null
    assert state.engagement_7d == pytest.approx(0.25 + 0.5 * 12 / 21)
    assert orjson.loads(value)["values"]["as_of"] == "2024-05-01T09:30:00Z"


def test_metric_message_kind_must_match_values() -> None:
    ((_, value),) = metric_messages("user_state", user_state_frame())
    wrong = orjson.loads(value)
    wrong["kind"] = "user_day"
    with pytest.raises(ValidationError, match="needs values of a UserDailyRow"):
        MetricMessage.model_validate(wrong)
    with pytest.raises(ValueError, match="unknown metric kind"):
        metric_messages("cohort_day", user_state_frame())
    assert metric_messages("user_day", USER_DAILY.empty()) == []


def test_dead_letter_messages() -> None:
    pairs = dead_letter_messages(rejected_frame())
    assert [k for k, _ in pairs] == [b"file:in.jsonl:3", b"kafka:learning.events/0/17"]
    text, binary = (DeadLetterMessage.model_validate_json(v) for _, v in pairs)
    assert text.payload_encoding == "utf-8"
    assert text.payload == '{"event_id": "e9", "tipo": "é"}'
    assert binary.payload_encoding == "base64"
    assert base64.b64decode(binary.payload) == b"\xff\xfe{not utf-8"
    assert list(orjson.loads(pairs[0][1])) == list(DeadLetterMessage.model_fields)
    # an explicit payload_encoding column wins over the reason-based rule
    explicit = rejected_frame().with_columns(payload_encoding=pl.lit("base64"))
    explicit = explicit.with_columns(
        payload=pl.Series([base64.b64encode(b"x").decode(), explicit["payload"][1]])
    )
    first = DeadLetterMessage.model_validate_json(dead_letter_messages(explicit)[0][1])
    assert first.payload_encoding == "base64"
    with pytest.raises(ValidationError, match="not base64"):
        DeadLetterMessage.model_validate(
            {**orjson.loads(pairs[0][1]), "payload_encoding": "base64"}
        )


# ---------------------------------------------------------------------------------------------
# the printed JSON Schemas, checked by a small validator


_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "$schema",
    "$comment",
    "$defs",
    "contentMediaType",
}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def errors(schema: dict[str, Any], value: Any, root: dict[str, Any], path: str = "$") -> list[str]:
    """JSON Schema errors of `value` (the subset of draft 2020-12 pydantic emits here)."""
    out: list[str] = []
    for keyword, arg in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword == "$ref":
            assert arg.startswith("#/$defs/"), arg
            out += errors(root["$defs"][arg.removeprefix("#/$defs/")], value, root, path)
        elif keyword == "type":
            if not _TYPES[arg](value):
                out.append(f"{path}: not {arg}")
        elif keyword == "enum":
            if value not in arg:
                out.append(f"{path}: {value!r} not in enum")
        elif keyword == "const":
            if value != arg:
                out.append(f"{path}: {value!r} != {arg!r}")
        elif keyword == "anyOf":
            if all(errors(option, value, root, path) for option in arg):
                out.append(f"{path}: matches no anyOf option")
        elif keyword == "allOf":
            for option in arg:
                out += errors(option, value, root, path)
        elif keyword == "if":
            branch = "then" if not errors(arg, value, root, path) else "else"
            out += errors(schema.get(branch, {}), value, root, path)
        elif keyword in ("then", "else"):
            continue  # handled with "if"
        elif keyword == "properties":
            if isinstance(value, dict):
                for name, sub in arg.items():
                    if name in value:
                        out += errors(sub, value[name], root, f"{path}.{name}")
        elif keyword == "required":
            if isinstance(value, dict):
                out += [f"{path}: missing {name}" for name in arg if name not in value]
        elif keyword == "additionalProperties":
            if isinstance(value, dict) and arg is False:
                extra = set(value) - set(schema.get("properties", {}))
                out += [f"{path}: extra {name}" for name in sorted(extra)]
            else:
                assert arg is True, arg
        elif keyword == "items":
            if isinstance(value, list):
                for i, item in enumerate(value):
                    out += errors(arg, item, root, f"{path}[{i}]")
        elif keyword in ("minimum", "maximum", "minLength", "maxLength", "maxItems"):
            size = len(value) if keyword in ("minLength", "maxLength", "maxItems") else value
            if isinstance(value, int | float | str | list) and not isinstance(value, bool):
                if (keyword.startswith("min") and size < arg) or (
                    keyword.startswith("max") and size > arg
                ):
                    out.append(f"{path}: {keyword} {arg} violated")
        elif keyword == "pattern":
            if isinstance(value, str) and not re.search(arg, value):
                out.append(f"{path}: does not match {arg}")
        elif keyword == "format":
            pattern = {"date": _DATE, "date-time": _DATE_TIME}[arg]
            if isinstance(value, str) and not pattern.match(value):
                out.append(f"{path}: not a {arg}")
        else:
            raise AssertionError(f"validator does not know keyword {keyword!r}")
    return out


def check(schema: dict[str, Any], value: Any) -> list[str]:
    return errors(schema, value, schema)


@pytest.fixture(scope="module")
def printed() -> dict[str, Any]:
    text = render()
    return json.loads(text)  # valid JSON


def test_render_names_every_table_and_topic(printed: dict[str, Any]) -> None:
    assert printed["schema_version"] == 1
    assert set(printed) == {"schema_version", "input", "tables", "topics"}
    assert list(printed["tables"]) == list(TABLES)
    assert set(printed["topics"]) == set(TOPICS.values())
    assert printed == all_json_schemas()
    for name, schema in printed["tables"].items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        props = list(schema["properties"])
        assert props == ["schema_version", *TABLES[name].columns]
        assert schema["properties"]["schema_version"]["const"] == 1
        assert all(schema["properties"][c].get("description") for c in TABLES[name].columns)
    # the input schema shows the alias and the allow-list policy
    assert "skill_area" in printed["input"]["properties"]
    assert printed["input"]["required"] == ["event_id", "user_id", "type", "timestamp"]
    assert printed["input"]["properties"]["type"]["enum"] == list(EVENT_TYPES)


def test_printed_schemas_accept_built_messages(printed: dict[str, Any]) -> None:
    topics = printed["topics"]
    samples = {
        TOPICS["alerts"]: alert_messages(alerts_frame()),
        TOPICS["metrics"]: metric_messages("user_day", user_daily_frame())
        + metric_messages("user_state", user_state_frame()),
        TOPICS["dlq"]: dead_letter_messages(rejected_frame()),
    }
    models: dict[str, type[BaseModel]] = {
        TOPICS["alerts"]: AlertMessage,
        TOPICS["metrics"]: MetricMessage,
        TOPICS["dlq"]: DeadLetterMessage,
    }
    for topic, pairs in samples.items():
        assert pairs
        for _, value in pairs:
            message = orjson.loads(value)
            assert check(topics[topic], message) == [], topic
            models[topic].model_validate(message)  # and the pydantic model agrees


def test_printed_schemas_reject_bad_messages(printed: dict[str, Any]) -> None:
    topics = printed["topics"]
    alert = orjson.loads(alert_messages(alerts_frame())[0][1])
    assert check(topics[TOPICS["alerts"]], {**alert, "rule": "bored"})
    assert check(topics[TOPICS["alerts"]], {**alert, "evidence": "{}"})  # object, not text
    no_version = {k: v for k, v in alert.items() if k != "schema_version"}
    assert check(topics[TOPICS["alerts"]], no_version) == ["$: missing schema_version"]

    state = orjson.loads(metric_messages("user_state", user_state_frame())[0][1])
    # kind says user_day but values is a user_state row: caught by the if/then of the schema
    assert check(topics[TOPICS["metrics"]], {**state, "kind": "user_day"})
    dlq = orjson.loads(dead_letter_messages(rejected_frame())[0][1])
    assert check(topics[TOPICS["dlq"]], {**dlq, "payload_encoding": "latin-1"})
    assert check(topics[TOPICS["dlq"]], {**dlq, "reason": "bad"})


def test_printed_input_schema_agrees_with_the_model(printed: dict[str, Any]) -> None:
    schema = printed["topics"][TOPICS["events"]]
    assert {k: v for k, v in schema.items() if k != "$comment"} == printed["input"]
    good = {**BASE, "skill_area": "algebra", "score": 90, "xp": 3, "timezone": "UTC", "x": 1}
    assert check(schema, good) == []
    InputEvent.model_validate(good)
    for bad in (
        {**BASE, "timestamp": "2024-05-01T09:30:00"},  # no offset
        {**BASE, "score": 101},
        {**BASE, "xp": -1},
        {**BASE, "type": "unknown"},
        {**BASE, "skill_area": ""},
        {k: v for k, v in BASE.items() if k != "event_id"},
    ):
        assert check(schema, bad), bad
        with pytest.raises(ValidationError):
            InputEvent.model_validate(bad)
