"""The Kafka topic messages of SPEC §7 and vectorised builders for them.

Messages are JSON objects with `schema_version`. The pydantic models document and validate them
(tests, consumers, `learnstream schema`); the Kafka sink uses the builders below, which turn
table frames (`schemas.tables` columns) into `(key, value)` byte pairs without per-row pydantic:
polars `struct.json_encode` for frames that can be large (metrics, dead letters) and orjson over
`to_dicts()` for alerts, whose `evidence` text has to be parsed back into an object.

Times are RFC 3339 strings in UTC with a `Z` suffix and only as many fractional digits as needed
(`2024-05-01T09:30:00Z`, `2024-05-01T09:30:00.005Z`); dates are `YYYY-MM-DD`. NaN and infinite
floats become `null`.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any, Literal

import orjson
import polars as pl
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from schemas.models import (
    REASON_PATTERN,
    SCHEMA_VERSION,
    AlertRow,
    UserDailyRow,
    UserStateRow,
)
from schemas.tables import ALERTS, REJECTED_EVENTS, USER_DAILY, USER_STATE, Table

#: default topic names (SPEC §7); configurable with --events-topic, --alerts-topic, ...
TOPICS: dict[str, str] = {
    "events": "learning.events",
    "alerts": "learning.alerts",
    "metrics": "learning.metrics",
    "dlq": "learning.events.dlq",
}

MetricKind = Literal["user_day", "user_state"]

_RFC3339_UTC = "%Y-%m-%dT%H:%M:%S%.fZ"


class _Message(BaseModel):
    """Common configuration: exact fields, immutable; every field is always present on the wire."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )


class AlertMessage(AlertRow):
    """A message on `learning.alerts` (key: `user_key`, or `cohort_id` for cohort alerts).

    The fields of an `alerts` row, with `evidence` as a JSON object instead of JSON text.
    Consumers de-duplicate by `alert_id`: a replay after a crash may deliver an alert twice.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )

    schema_version: Literal[1] = Field(default=1, description="version of this message schema")
    # pydantic lets a subclass replace a field's type (text -> object); mypy objects to that
    evidence: dict[str, Any] = Field(  # type: ignore[assignment]
        description="JSON object of the numbers that fired the rule"
    )


def _metric_schema_extra(schema: dict[str, Any]) -> None:
    """Tie `kind` to the shape of `values` in the JSON Schema too (if/then per kind).

    Relies on the order of the `values` union: UserDailyRow first, UserStateRow second (refs
    are not final names yet when this runs, so they are matched by position).
    """
    options = schema["properties"]["values"]["anyOf"]
    schema["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": {"properties": {"values": dict(option)}},
        }
        for kind, option in zip(("user_day", "user_state"), options, strict=True)
    ]


class MetricMessage(_Message):
    """A message on `learning.metrics` (key: `user_key`).

    One per closed user-day (`kind` user_day, `values` a `user_daily` row) and one per change of
    a user's state (`kind` user_state, `values` a `user_state` row).
    """

    model_config = ConfigDict(json_schema_extra=_metric_schema_extra)

    schema_version: Literal[1] = Field(default=1, description="version of this message schema")
    kind: MetricKind = Field(
        description="user_day: values is a user_daily row; user_state: a user_state row"
    )
    user_key: str = Field(pattern=r"^[0-9a-f]{32}$", description="the user (also the message key)")
    values: UserDailyRow | UserStateRow = Field(description="the table row as an object")
    emitted_at: AwareDatetime = Field(description="processing time the row was emitted (UTC)")

    @model_validator(mode="after")
    def _kind_matches(self) -> MetricMessage:
        expected = UserDailyRow if self.kind == "user_day" else UserStateRow
        if not isinstance(self.values, expected):
            raise ValueError(f"kind {self.kind} needs values of a {expected.__name__}")
        if self.values.user_key != self.user_key:
            raise ValueError("values.user_key differs from user_key")
        return self


class DeadLetterMessage(_Message):
    """A message on `learning.events.dlq` (key: `source_ref`): one rejected record.

    RESTRICTED: `payload` is the raw input and may hold personal data such as a raw user_id.
    """

    schema_version: Literal[1] = Field(default=1, description="version of this message schema")
    source_ref: str = Field(
        min_length=1,
        description="kafka:<topic>/<partition>/<offset> or file:<path>:<line>",
    )
    received_at: AwareDatetime = Field(description="processing time the record was read (UTC)")
    reason: str = Field(pattern=REASON_PATTERN, description="stable rejection reason (SPEC §2)")
    detail: str = Field(description="human-readable detail")
    payload: str = Field(description="RESTRICTED raw input, encoded as payload_encoding says")
    payload_encoding: Literal["utf-8", "base64"] = Field(
        description="utf-8: payload is the original text; base64: the original bytes were not "
        "valid UTF-8"
    )
    emitted_at: AwareDatetime = Field(description="processing time the row was emitted (UTC)")

    @model_validator(mode="after")
    def _base64(self) -> DeadLetterMessage:
        if self.payload_encoding == "base64":
            try:
                base64.b64decode(self.payload, validate=True)
            except ValueError as exc:  # binascii.Error, or non-ASCII text
                raise ValueError(f"payload is not base64: {exc}") from exc
        return self


TOPIC_MODELS: dict[str, type[BaseModel]] = {
    "alerts": AlertMessage,
    "metrics": MetricMessage,
    "dlq": DeadLetterMessage,
}


# ---------------------------------------------------------------------------------------------
# builders


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _prepare(frame: pl.DataFrame, table: Table) -> pl.DataFrame:
    """Conform to `table`, stamp missing `emitted_at` with now, render times as RFC 3339 text."""
    out = table.conform(frame).with_columns(
        pl.col("emitted_at").fill_null(pl.lit(_now(), dtype=table.schema["emitted_at"]))
    )
    times = [name for name, dtype in out.schema.items() if isinstance(dtype, pl.Datetime)]
    return out.with_columns(
        pl.col(name).dt.convert_time_zone("UTC").dt.to_string(_RFC3339_UTC) for name in times
    )


def _pairs(keys: pl.Series, values: pl.Series) -> list[tuple[bytes, bytes]]:
    return list(zip(keys.cast(pl.Binary).to_list(), values.cast(pl.Binary).to_list(), strict=True))


def alert_messages(alerts: pl.DataFrame) -> list[tuple[bytes, bytes]]:
    """`(key, value)` pairs for `learning.alerts` from a frame with the `alerts` columns.

    The key is `user_key`, or `cohort_id` when there is no user (cohort alerts), or as a last
    resort `alert_id`. `evidence` JSON text is parsed back into an object (null becomes `{}`);
    invalid evidence text raises `orjson.JSONDecodeError` (an operator bug, not bad input).
    Loops in Python per alert, which is fine: alerts are few.
    """
    if alerts.height == 0:
        return []
    frame = _prepare(alerts, ALERTS).with_columns(
        pl.col("date").dt.to_string("%Y-%m-%d"),
        _key=pl.coalesce("user_key", "cohort_id", "alert_id"),
    )
    out: list[tuple[bytes, bytes]] = []
    for row in frame.to_dicts():
        key = row.pop("_key")
        evidence = row["evidence"]
        row["evidence"] = {} if evidence is None else orjson.loads(evidence)
        value = orjson.dumps({"schema_version": SCHEMA_VERSION, **row})
        out.append((key.encode("utf-8"), value))
    return out


def metric_messages(kind: str, rows: pl.DataFrame) -> list[tuple[bytes, bytes]]:
    """`(key, value)` pairs for `learning.metrics`: `kind` "user_day" with `user_daily` rows, or
    "user_state" with `user_state` rows. Key `user_key`; vectorised (polars `json_encode`).

    The message's `emitted_at` is the row's `emitted_at` (filled with now when null).
    """
    if kind == "user_day":
        table = USER_DAILY
    elif kind == "user_state":
        table = USER_STATE
    else:
        raise ValueError(f"unknown metric kind {kind!r}: use 'user_day' or 'user_state'")
    if rows.height == 0:
        return []
    frame = _prepare(rows, table)
    if "date" in frame.columns:
        frame = frame.with_columns(pl.col("date").dt.to_string("%Y-%m-%d"))
    value = pl.struct(
        schema_version=pl.lit(SCHEMA_VERSION, dtype=pl.Int64),
        kind=pl.lit(kind),
        user_key=pl.col("user_key"),
        values=pl.struct(table.columns),
        emitted_at=pl.col("emitted_at"),
    ).struct.json_encode()
    encoded = frame.select(key=pl.col("user_key"), value=value)
    return _pairs(encoded["key"], encoded["value"])


def dead_letter_messages(rejected: pl.DataFrame) -> list[tuple[bytes, bytes]]:
    """`(key, value)` pairs for `learning.events.dlq` from `rejected_events` rows; key `source_ref`.

    Sharp edge: the `rejected_events` table has no encoding column, so `payload_encoding` is
    "base64" exactly when `reason` is `invalid_utf8` (the only records whose bytes are not text),
    unless the frame carries its own `payload_encoding` column, which then wins.
    """
    if rejected.height == 0:
        return []
    encoding: pl.Expr = (
        pl.when(pl.col("reason") == "invalid_utf8")
        .then(pl.lit("base64"))
        .otherwise(pl.lit("utf-8"))
    )
    if "payload_encoding" in rejected.columns:
        encoding = pl.coalesce(pl.col("payload_encoding").cast(pl.String), encoding)
    encodings = rejected.select(encoding.alias("payload_encoding")).to_series()
    frame = _prepare(rejected, REJECTED_EVENTS).with_columns(encodings)
    value = pl.struct(
        schema_version=pl.lit(SCHEMA_VERSION, dtype=pl.Int64),
        source_ref=pl.col("source_ref"),
        received_at=pl.col("received_at"),
        reason=pl.col("reason"),
        detail=pl.col("detail"),
        payload=pl.col("payload"),
        payload_encoding=pl.col("payload_encoding"),
        emitted_at=pl.col("emitted_at"),
    ).struct.json_encode()
    encoded = frame.select(key=pl.col("source_ref"), value=value)
    return _pairs(encoded["key"], encoded["value"])


__all__ = [
    "SCHEMA_VERSION",
    "TOPICS",
    "TOPIC_MODELS",
    "AlertMessage",
    "DeadLetterMessage",
    "MetricKind",
    "MetricMessage",
    "alert_messages",
    "dead_letter_messages",
    "metric_messages",
]
