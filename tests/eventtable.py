"""Small readable event tables for operator tests (test support, no tests here).

    | user | type             | timestamp                 | zone             | score |
    | u1   | lesson_completed | 2026-03-01T10:00:00+00:00 | UTC              |       |

Columns other than user/type/timestamp are optional; `zone` defaults to UTC, `duration` to empty.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from operators.timeutil import local_days
from schemas.events import EVENT_BATCH_SCHEMA


def to_us(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp() * 1_000_000)


def events(table: str, *, seq_start: int = 0) -> pl.DataFrame:
    """Parse a markdown-style table into an EVENT_BATCH_SCHEMA frame (arrival order = row order)."""
    lines = [ln.strip() for ln in table.strip().splitlines() if ln.strip().startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = []
    for n, line in enumerate(lines[1:]):
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        i = seq_start + n
        rows.append(
            {
                "seq": i,
                "source_ref": f"file:test.jsonl:{i + 1}",
                "event_id": cells.get("event_id") or f"e{i}",
                "user_key": cells["user"],
                "type": cells["type"],
                "t_us": to_us(cells["timestamp"]),
                "timezone": cells.get("zone") or "UTC",
                "date": None,
                "cohort_id": cells.get("cohort") or None,
                "org_id": cells.get("org") or None,
                "skill": cells.get("skill") or None,
                "content_id": None,
                "score": float(cells["score"]) if cells.get("score") else None,
                "duration_s": float(cells["duration"]) if cells.get("duration") else None,
                "xp": int(cells["xp"]) if cells.get("xp") else None,
                "session_id": None,
            }
        )
    frame = pl.DataFrame(rows, schema=EVENT_BATCH_SCHEMA)
    return frame.with_columns(date=local_days(frame["t_us"], frame["timezone"]))
