"""The JSON Schemas printed by `learnstream schema`: the input event, every table and topic.

`all_json_schemas()` returns one document:
`{"schema_version": 1, "input": ..., "tables": {table: ...}, "topics": {topic: ...}}`.
Topics are keyed by their default names (SPEC §7; names are configurable at run time), and
`learning.events` carries input events. Each schema is self-contained (draft 2020-12, its own
`$defs`) so it can be handed to a validator or a schema registry on its own.

Input and table schemas describe what validates (optional input fields may be absent; a row has
every column); topic schemas describe what is sent, so every message field is required.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel

from schemas.messages import TOPIC_MODELS, TOPICS
from schemas.models import ROW_MODELS, SCHEMA_VERSION, InputEvent
from schemas.tables import TABLES

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _schema(
    model: type[BaseModel],
    mode: Literal["validation", "serialization"],
    comment: str | None = None,
) -> dict[str, Any]:
    body = model.model_json_schema(
        mode="serialization" if mode == "serialization" else "validation"
    )
    head: dict[str, Any] = {"$schema": DRAFT}
    if comment:
        head["$comment"] = comment
    return {**head, **body}


def all_json_schemas() -> dict[str, Any]:
    """Every contract schema, keyed as described in the module docstring."""
    tables: dict[str, Any] = {}
    for name, table in TABLES.items():
        tables[name] = _schema(
            ROW_MODELS[name],
            "validation",
            f"table {name}: key ({', '.join(table.key)}); "
            + (f"partitioned by {table.partition}" if table.partition else "not partitioned")
            + f"; {table.mode} table",
        )
    topics: dict[str, Any] = {
        TOPICS["events"]: _schema(
            InputEvent,
            "validation",
            "key: chosen by producers (keying by user keeps a user's events in order); "
            "value: one input event",
        ),
        TOPICS["alerts"]: _schema(
            TOPIC_MODELS["alerts"], "serialization", "key: user_key, or cohort_id for cohort alerts"
        ),
        TOPICS["metrics"]: _schema(TOPIC_MODELS["metrics"], "serialization", "key: user_key"),
        TOPICS["dlq"]: _schema(
            TOPIC_MODELS["dlq"],
            "serialization",
            "key: source_ref; RESTRICTED: payload is raw input",
        ),
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "input": _schema(InputEvent, "validation"),
        "tables": tables,
        "topics": topics,
    }


def render() -> str:
    """`all_json_schemas()` as pretty, key-order-preserving JSON (no trailing newline)."""
    return json.dumps(all_json_schemas(), indent=2, ensure_ascii=False)


__all__ = ["DRAFT", "all_json_schemas", "render"]
