"""Bytewax sink writing the analyst tables through one `TableStore` (Parquet + DuckDB).

What happens on failure. Bytewax recovery is at-least-once: after a crash the flow resumes from
its last snapshot and replays the work done since. This sink makes that exactly-once *per key*:

- `snapshot()` never lets the recovery snapshot run ahead of durable output: it carries the
  frames not yet durable (up to `carry_rows` rows), which a resumed partition commits before
  anything else, or, for more, commits them and waits.
- Output may run ahead of the snapshot (commits every `commit_interval`, or a crash after the
  commit but before Bytewax stored its snapshot). The replay then writes the same keys again and
  every write is an upsert by key, so each key still has exactly one row, holding the replayed
  values. A row that the replay would *not* produce again (an operator that is not deterministic,
  e.g. one driven by wall-clock time) stays as committed.
- A crash in the middle of a commit leaves every dataset with at most one row per key; staging
  left behind is cleaned when the next `TableStore` starts (see `sinks.tables`).
- If a commit raises (disk full, DuckDB locked by an analyst for longer than the store's lock
  timeout), the exception stops the flow; the rows stay buffered only in the dead process, and the
  restarted flow replays them from the last snapshot.

There is ONE partition, so exactly one worker (in one process) owns the `TableStore` and DuckDB
has a single writer, whatever `-w/-i` say; Bytewax routes every item to that worker.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import structlog
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from schemas.tables import TABLES, Table
from sinks.tables import TableStore

#: what reaches `write_batch`: Bytewax strips the routing key, so normally a bare frame; a
#: `(table_name, frame)` pair is accepted too (for streams keyed by something else)
TableValue = pl.DataFrame | tuple[str, pl.DataFrame]
#: resume state: {"commits": int, "committed_at": ISO-8601 str | None, "unsaved": frames not
#: yet durable when the snapshot was taken, as (table, frame) pairs}
ResumeState = dict[str, Any]

PARTITION = "tables"

log = structlog.get_logger(__name__)


def _signatures(tables: dict[str, Table]) -> dict[tuple[str, ...], str]:
    sigs: dict[tuple[str, ...], str] = {}
    for name, t in tables.items():
        sig = tuple(t.columns)
        if sig in sigs:
            raise ValueError(
                f"tables {sigs[sig]!r} and {name!r} have the same columns; "
                "route (table_name, frame) pairs as values instead"
            )
        sigs[sig] = name
    return sigs


def _lower_priority() -> None:
    """Run the commit thread at nice +10 (Linux: a thread id is a process id to setpriority), so
    that on a busy machine the worker's micro-batches, whose latency matters, get the CPU first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: commit at normal priority
        pass


class _TablesPartition(StatefulSinkPartition[TableValue, ResumeState]):
    """Buffers frames and commits them on a background thread.

    The `TableStore` is touched only by the single commit thread, so the worker keeps processing
    batches while Parquet files and DuckDB are written (both release the GIL). At most one commit
    runs at a time; `close()` waits until everything handed over is durable, `snapshot()` carries
    what is not (or waits, above `carry_rows`), and an error of a background commit is raised on the worker's next call.
    """

    def __init__(
        self,
        store: TableStore,
        commit_interval: timedelta,
        signatures: dict[tuple[str, ...], str],
        resume_state: ResumeState | None,
        *,
        drain_on_snapshot: bool = True,
        carry_rows: int = 100_000,
    ) -> None:
        self._store = store
        self._drain_on_snapshot = drain_on_snapshot
        self._carry_rows = carry_rows
        self._interval_s = commit_interval.total_seconds()
        self._signatures = signatures
        state = resume_state or {}
        self._commits = int(state.get("commits", 0))
        self._committed_at: str | None = state.get("committed_at")
        self._last_commit = time.monotonic()
        self._pending: list[tuple[str, pl.DataFrame]] = []
        self._committer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tables-commit", initializer=_lower_priority
        )
        self._inflight: Future[None] | None = None
        #: the frames of the commit running on the thread (not durable until it is done)
        self._inflight_frames: list[tuple[str, pl.DataFrame]] = []
        unsaved = state.get("unsaved") or []
        if unsaved:
            # output the snapshot carried instead of waiting for it: made durable before anything
            # else (the replay that follows rewrites the keys written after the snapshot)
            self._commit_now(list(unsaved))

    def _table_of(self, value: TableValue) -> tuple[str, pl.DataFrame]:
        if isinstance(value, tuple):
            return value
        name = self._signatures.get(tuple(value.columns))
        if name is None:
            raise ValueError(
                f"TablesSink got a frame with columns {value.columns} that match no table in "
                "schemas.tables; build frames with TABLES[name].conform(frame)"
            )
        return name, value

    def _commit_now(self, frames: list[tuple[str, pl.DataFrame]]) -> None:
        """Runs on the commit thread."""
        for name, frame in frames:
            self._store.write(name, frame)
        stats = self._store.commit()
        log.debug(
            "tables_committed",
            rows=sum(stats.rows.values()),
            parquet_s=round(stats.parquet_s, 3),
            duckdb_s=round(stats.duckdb_s, 3),
        )
        if stats.rows:
            self._commits += 1
            self._committed_at = datetime.now(UTC).isoformat()

    def _check(self) -> bool:
        """True when no commit is running; raises the error of a failed background commit."""
        if self._inflight is None:
            return True
        if not self._inflight.done():
            return False
        done, self._inflight = self._inflight, None
        self._inflight_frames = []
        done.result()  # re-raises a background failure on the worker
        return True

    def _hand_over(self) -> None:
        frames, self._pending = self._pending, []
        self._last_commit = time.monotonic()
        self._inflight_frames = frames
        self._inflight = self._committer.submit(self._commit_now, frames)

    def _drain(self) -> None:
        """Commit everything buffered and wait until it is durable."""
        if self._inflight is not None:
            self._inflight.result()
            self._inflight = None
        self._hand_over()
        self._check_wait()

    def _check_wait(self) -> None:
        if self._inflight is not None:
            done, self._inflight = self._inflight, None
            self._inflight_frames = []
            done.result()

    def write_batch(self, values: list[TableValue]) -> None:
        """Buffer frames; hand them to the commit thread every `commit_interval`."""
        for value in values:
            self._pending.append(self._table_of(value))
        idle = self._check()
        if idle and self._pending and time.monotonic() - self._last_commit >= self._interval_s:
            self._hand_over()

    def snapshot(self) -> ResumeState:
        """Never run ahead of durable output: the snapshot either carries the frames that are not
        durable yet (the running commit's and the buffered ones, up to `carry_rows` rows; a
        resumed partition commits them first) or, above that, commits them and waits.

        Carrying keeps the worker from waiting for a commit at every snapshot (~0.15 s at 20k
        events/s in live mode). Without a recovery store (`drain_on_snapshot=False`) snapshots
        are never read and carry nothing.
        """
        state: ResumeState = {"commits": self._commits, "committed_at": self._committed_at}
        if not self._drain_on_snapshot:
            return state
        self._check()  # a finished commit's frames are durable (and its error surfaces here)
        unsaved = [*self._inflight_frames, *self._pending]
        if sum(frame.height for _, frame in unsaved) <= self._carry_rows:
            state["unsaved"] = unsaved
            return state
        started = time.perf_counter()
        self._drain()
        log.debug("tables_snapshot_drained", waited_s=round(time.perf_counter() - started, 3))
        return {"commits": self._commits, "committed_at": self._committed_at}

    def close(self) -> None:
        try:
            self._drain()
        finally:
            self._committer.shutdown(wait=True)
            self._store.close()


class TablesSink(FixedPartitionedSink[TableValue, ResumeState]):
    """Write `(table_name, polars.DataFrame)` items to Parquet and DuckDB under `out_dir`.

    Frames must be conformed to their table (`schemas.tables.Table.conform`). Bytewax hands the
    partition only the frame, so the table is recognised by its exact column list (distinct for
    every table; checked here). Commits happen every `commit_interval` of wall-clock time (checked
    when a batch arrives) and at every Bytewax snapshot, i.e. at least once per epoch; with
    `drain_on_snapshot=False` (no recovery store) a snapshot does not wait for the commit.
    """

    def __init__(
        self,
        out_dir: str | Path,
        commit_interval: timedelta = timedelta(seconds=10),
        *,
        tables: dict[str, Table] | None = None,
        lock_timeout_s: float = 60.0,
        drain_on_snapshot: bool = True,
        carry_rows: int = 100_000,
        concurrent_duckdb: bool = False,
    ) -> None:
        if commit_interval < timedelta(0):
            raise ValueError(f"commit_interval must not be negative, got {commit_interval}")
        self.out_dir = Path(out_dir)
        self.commit_interval = commit_interval
        self.tables = dict(TABLES if tables is None else tables)
        self.lock_timeout_s = lock_timeout_s
        self.drain_on_snapshot = drain_on_snapshot
        self.carry_rows = carry_rows
        self.concurrent_duckdb = concurrent_duckdb
        self._signatures = _signatures(self.tables)

    def list_parts(self) -> list[str]:
        return [PARTITION]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(
        self, step_id: str, for_part: str, resume_state: ResumeState | None
    ) -> _TablesPartition:
        """Open the store (which cleans up after a crash). Nothing needs rolling back: rows
        committed after the snapshot are overwritten by the replay's upserts."""
        store = TableStore(
            self.out_dir,
            self.tables,
            lock_timeout_s=self.lock_timeout_s,
            concurrent_duckdb=self.concurrent_duckdb,
        )
        return _TablesPartition(
            store,
            self.commit_interval,
            self._signatures,
            resume_state,
            drain_on_snapshot=self.drain_on_snapshot,
            carry_rows=self.carry_rows,
        )
