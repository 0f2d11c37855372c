"""The analyst tables of SPEC §7 on disk: Parquet datasets and a DuckDB database, one row per key.

Layout under `out_dir`:

```
parquet/<table>/date=YYYY-MM-DD/part-<uuid>.parquet   partitioned tables (one file per partition)
parquet/user_state/part-<uuid>.parquet                the unpartitioned table
learnstream.duckdb                                    same tables, PRIMARY KEY on the table key
.staging/<uuid>/                                      a commit in progress (never read by anyone)
.tablestore.lock                                      flock held by the one writing TableStore
```

The `date` partition column is stored in the path *and* kept in the file, so a single file reads
back complete; duckdb's `read_parquet(..., hive_partitioning=true)` and polars'
`scan_parquet(..., hive_partitioning=True)` both yield one `date` column of type DATE (the path
value wins when both are present).

How a commit stays "one row per key" for readers and across crashes:

- Rows are upserted by key: in the buffer the last written row wins; on commit against what is on
  disk. "append" tables rewrite each touched partition (existing rows anti-joined with the new
  keys, plus the new rows, sorted by key) into ONE new file; "snapshot" tables keep the latest row
  per key in memory and rewrite the whole dataset.
- New content is written and fsynced in `.staging/<uuid>/new/<i>` (a whole partition directory, or a
  whole table directory for snapshot tables), then swapped with the live directory in one
  `renameat2(RENAME_EXCHANGE)` system call (Linux), so a reader listing a partition sees either
  the old file set or the new one, never both. The old content ends up in staging and is deleted.
  Where the exchange is unsupported (not Linux, some network or overlay file systems) the swap is
  two renames (live -> `.staging/<uuid>/old/<i>`, new -> live): a reader can then briefly find the
  partition missing, never doubled, and a crash between the renames is rolled forward at the next
  start from the fsynced `manifest.json`.
- Staging lives outside `parquet/` on purpose: measured with duckdb 2.0.1 and polars 2.1.0, neither
  `read_parquet('…/**/*.parquet')` nor `scan_parquet` skips files or directories whose names start
  with `.` or `_`, so hidden temporary names inside the dataset would be read.
- A key that moves between partitions (a snapshot table's `date`, or an append table whose key does
  not contain `date`, e.g. a `rejected_events` row replayed after midnight with a new
  `received_at`) is removed from its old partition before it is added to the new one, so a crash in
  between can lose the row until the replay rewrites it but never doubles it. For those append
  tables the store keeps a key -> partition index in memory (loaded from disk on first use).
- Parquet is written before DuckDB, or at the same time (`concurrent_duckdb`, DuckDB on a second
  thread); DuckDB gets all tables in one transaction. A crash in between can leave either one
  behind the other until the Bytewax replay upserts the same rows again.

Sharp edges: one writer per `out_dir` (enforced with an flock; a second TableStore raises). Commit
cost grows with the size of the touched partitions, and for snapshot tables with the whole table
(kept in memory: memory grows with the number of users x skills). Readers that opened a file just
before it was swapped out get a "file not found" and must retry; they never see a key twice.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import duckdb
import polars as pl
import structlog
from polars.datatypes import DataTypeClass

from schemas.tables import TABLES, Table

try:  # POSIX only; without it the single-writer check is skipped
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = structlog.get_logger(__name__)

PARQUET_DIR = "parquet"
DUCKDB_FILE = "learnstream.duckdb"
STAGING_DIR = ".staging"
LOCK_FILE = ".tablestore.lock"
#: the 0-row file (the table's schema) at the root of a table that has no rows yet, so that
#: `read_parquet('<out>/parquet/<table>/**/*.parquet')` reads an empty table instead of failing
EMPTY_FILE = "empty.parquet"

# ---------------------------------------------------------------------------------------------
# file system primitives


def _load_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28 or musl without the wrapper
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False when the OS or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _has_parquet(directory: Path) -> bool:
    """Whether any Parquet file lies under `directory` (stops at the first one)."""
    return directory.is_dir() and any(p.is_file() for p in directory.rglob("*.parquet"))


def _parquet_files(directory: Path, recursive: bool) -> list[Path]:
    if not directory.is_dir():
        return []
    found = directory.rglob("*.parquet") if recursive else directory.glob("*.parquet")
    return sorted(p for p in found if p.is_file())


# ---------------------------------------------------------------------------------------------
# DuckDB DDL

_DUCK_TYPES: dict[pl.DataType, str] = {
    pl.String(): "VARCHAR",
    pl.Date(): "DATE",
    pl.Int64(): "BIGINT",
    pl.Float64(): "DOUBLE",
    pl.Boolean(): "BOOLEAN",
    pl.Datetime("us", "UTC"): "TIMESTAMPTZ",
    pl.List(pl.String()): "VARCHAR[]",
}


def duckdb_type(dtype: pl.DataType | DataTypeClass) -> str:
    """The DuckDB column type of a table column (SPEC §7 uses only these seven)."""
    try:
        return _DUCK_TYPES[dtype]  # type: ignore[index]  # classes hash like their instances
    except KeyError:
        raise TypeError(
            f"no DuckDB type for polars {dtype}; extend sinks.tables._DUCK_TYPES"
        ) from None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(table: Table, *, primary_key: bool = True) -> str:
    """`CREATE TABLE` for `table` with its PRIMARY KEY (without: add it with `add_key_sql`)."""
    cols = ", ".join(f"{_q(c)} {duckdb_type(t)}" for c, t in table.schema.items())
    key = f", PRIMARY KEY ({', '.join(_q(k) for k in table.key)})" if primary_key else ""
    return f"CREATE TABLE {_q(table.name)} ({cols}{key})"


def add_key_sql(table: Table) -> str:
    """`ALTER TABLE` adding the PRIMARY KEY of a table created with `primary_key=False`."""
    return f"ALTER TABLE {_q(table.name)} ADD PRIMARY KEY ({', '.join(_q(k) for k in table.key)})"


def _is_lock_error(exc: duckdb.Error) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def connect_duckdb(
    path: str | Path, *, read_only: bool = False, timeout_s: float = 60.0
) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file, retrying with backoff while another process holds its lock.

    DuckDB locks the file per process: a writer excludes every other process, and a read-only
    connection in another process (an analyst) excludes a writer. Waits up to `timeout_s`
    (backoff 20 ms doubling to 1 s), then raises TimeoutError naming the file. The session time zone
    is set to UTC so that TIMESTAMPTZ values come back labelled UTC (the instant never changes).
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    warned = False
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{path} stayed locked by another process for {timeout_s:g}s: {exc}; "
                    "close the other DuckDB connection (read-only readers too) and retry"
                ) from exc
            if not warned:
                log.info("duckdb_locked_retrying", path=str(path), timeout_s=timeout_s)
                warned = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
    con.execute("SET TimeZone = 'UTC'")
    return con


# ---------------------------------------------------------------------------------------------
# the store


@dataclass
class CommitStats:
    """What one `TableStore.commit` did."""

    #: rows upserted per table (after de-duplication by key within the buffer)
    rows: dict[str, int] = field(default_factory=dict)
    #: directories swapped in or removed (a partition, or a whole snapshot table)
    units: int = 0
    files: int = 0
    parquet_s: float = 0.0
    duckdb_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.parquet_s + self.duckdb_s


@dataclass
class _Unit:
    """One directory to replace atomically: `relpath` under parquet/, its full new content."""

    table: Table
    relpath: str
    #: the complete new content; None or empty removes the directory
    frame: pl.DataFrame | None
    #: write `frame` as hive partitions inside the directory (whole snapshot table)
    partitioned: bool = False


class TableStore:
    """Writes table rows to <out>/parquet/<table>/date=YYYY-MM-DD/*.parquet and <out>/learnstream.duckdb.

    `write` only buffers; `commit` makes everything buffered durable (Parquet, and one DuckDB
    transaction after it or, with `concurrent_duckdb`, beside it) and returns when both are done.
    Upsert by key everywhere: a later row for the same key replaces the earlier one. If `commit`
    raises, the buffer is kept and the next `commit` redoes all of it (every step is an idempotent
    upsert).

    The DuckDB file is opened only inside `commit` / `delete_rows` and closed again, so analysts can
    open it read-only between commits; while one has it open, a commit waits for up to
    `lock_timeout_s` (retrying with backoff) before raising TimeoutError.

    At start the store takes an exclusive flock on `<out>/.tablestore.lock` (one writer per
    directory; a second store raises RuntimeError) and cleans up `<out>/.staging` left by a crash,
    rolling forward a directory swap that a crash interrupted half-way. Not thread-safe.
    """

    def __init__(
        self,
        out_dir: str | Path,
        tables: Mapping[str, Table] = TABLES,
        *,
        lock_timeout_s: float = 60.0,
        compression: str = "zstd",
        concurrent_duckdb: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.parquet_dir = self.out_dir / PARQUET_DIR
        self.db_path = self.out_dir / DUCKDB_FILE
        self.staging_dir = self.out_dir / STAGING_DIR
        self.tables = dict(tables)
        self.lock_timeout_s = lock_timeout_s
        self._compression: Any = compression
        self._buffer: dict[str, list[pl.DataFrame]] = {}
        #: snapshot tables: the latest row per key (loaded from Parquet on first use)
        self._state: dict[str, pl.DataFrame] = {}
        #: append tables whose key lacks the partition column: key -> partition of each stored row
        self._index: dict[str, pl.DataFrame] = {}
        self._duck_checked: set[str] = set()
        #: with `concurrent_duckdb`, a commit writes DuckDB on this thread while it writes Parquet:
        #: faster when the machine has a core to spare (the end of a file run), slower for a
        #: live worker sharing the cores (20k events/s on 2 cores: alert p99 ~300 ms instead of
        #: ~245 ms), so live runs commit one after the other
        self._duck_thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="tables-duckdb") if concurrent_duckdb else None
        )
        self._closed = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = self._acquire_lock()
        self.recover()
        for t in self.tables.values():
            self._ensure_readable(t)

    # -- lifecycle ----------------------------------------------------------------------------

    def _acquire_lock(self) -> IO[bytes] | None:
        if fcntl is None:  # pragma: no cover - Windows
            return None
        path = self.out_dir / LOCK_FILE
        handle = open(path, "a+b")  # noqa: SIM115 - held for the store's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RuntimeError(
                f"another TableStore is writing to {self.out_dir} (lock {path} is held); "
                "stop that process (or close that store) first"
            ) from None
        return handle

    def recover(self) -> int:
        """Finish or discard commits a crash interrupted; returns how many were found.

        Called by the constructor. A commit whose staging has no manifest never touched the
        dataset and is discarded. With a manifest, a swap interrupted between its two renames
        (fallback path only) is rolled forward: the new directory was complete and fsynced.
        """
        if not self.staging_dir.is_dir():
            return 0
        found = 0
        for commit_dir in sorted(self.staging_dir.iterdir()):
            found += 1
            manifest = commit_dir / "manifest.json"
            if manifest.is_file():
                try:
                    entries = json.loads(manifest.read_text())
                except ValueError:  # torn manifest: written before any swap started
                    entries = []
                for entry in entries:
                    target = self.parquet_dir / entry["target"]
                    new = commit_dir / entry["new"]
                    old = commit_dir / entry["old"]
                    if not target.exists() and old.exists() and new.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.rename(new, target)
                        _fsync_path(target.parent)
                        log.warning("tablestore_rolled_forward", target=str(target))
            shutil.rmtree(commit_dir, ignore_errors=True)
        if found:
            log.info("tablestore_staging_cleaned", commits=found, path=str(self.staging_dir))
        return found

    def close(self) -> None:
        """Commit what is buffered and release the writer lock. Idempotent."""
        if self._closed:
            return
        try:
            self.commit()
        finally:
            self._closed = True
            if self._duck_thread is not None:
                self._duck_thread.shutdown(wait=True)
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def __enter__(self) -> TableStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # do not commit half-built output on error; just release the lock
            self._closed = True
            if self._duck_thread is not None:
                self._duck_thread.shutdown(wait=True)
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    # -- writing ------------------------------------------------------------------------------

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            raise ValueError(f"unknown table {name!r}; known: {', '.join(self.tables)}") from None

    def write(self, table: str, frame: pl.DataFrame) -> None:
        """Buffer rows for `table` (no I/O). The frame must have exactly the table's columns.

        Columns in another order or castable types are conformed; missing or extra columns, and
        nulls in the key or the partition column, raise ValueError naming them.
        """
        if self._closed:
            raise RuntimeError(f"TableStore for {self.out_dir} is closed")
        t = self.table(table)
        if frame.height == 0:
            return
        if list(frame.schema.items()) != list(t.schema.items()):
            missing = [c for c in t.columns if c not in frame.columns]
            extra = [c for c in frame.columns if c not in t.schema]
            if missing or extra:
                raise ValueError(
                    f"{table}: frame columns do not match schemas.tables (missing {missing}, "
                    f"unexpected {extra}); build frames with TABLES[{table!r}].conform(frame)"
                )
            frame = t.conform(frame)
        required = list(dict.fromkeys([*t.key, *([t.partition] if t.partition else [])]))
        nulls = frame.select(pl.col(c).null_count() for c in required).row(0)
        bad = [c for c, n in zip(required, nulls, strict=True) if n]
        if bad:
            raise ValueError(f"{table}: null values in key/partition column(s) {bad}")
        self._buffer.setdefault(table, []).append(frame)

    def pending_rows(self) -> int:
        """Rows buffered and not yet committed (before de-duplication)."""
        return sum(f.height for frames in self._buffer.values() for f in frames)

    def commit(self) -> CommitStats:
        """Make everything buffered durable: Parquet (atomic per directory) and DuckDB (one
        transaction for all tables). A no-op without buffered rows."""
        stats = CommitStats()
        if not self._buffer:
            return stats
        new: dict[str, pl.DataFrame] = {}
        for name, frames in self._buffer.items():
            t = self.tables[name]
            merged = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
            new[name] = merged.unique(subset=list(t.key), keep="last", maintain_order=True)
            stats.rows[name] = new[name].height

        # snapshot tables: the whole new state, which both Parquet and DuckDB may need
        states = {
            name: self._merged_state(self.tables[name], frame)
            for name, frame in new.items()
            if self.tables[name].mode == "snapshot"
        }
        # DuckDB on its own thread while Parquet is written on this one (`concurrent_duckdb`):
        # both are native code that releases the GIL (the final commit of the file benchmark:
        # 0.6 s instead of 0.8 s); else DuckDB after Parquet
        duck: Future[float] | None = None
        if self._duck_thread is not None:
            duck = self._duck_thread.submit(self._duckdb_upsert, new, states)
        started = time.perf_counter()
        try:
            for name, frame in new.items():
                t = self.tables[name]
                if t.mode == "snapshot":
                    self._apply_units([_Unit(t, t.name, states[name], partitioned=t.partition is not None)], stats)
                    self._state[name] = states[name]
                else:
                    self._commit_append(t, frame, stats)
            stats.parquet_s = time.perf_counter() - started
        finally:
            if duck is not None:
                stats.duckdb_s = duck.result()  # waits (and re-raises) even when Parquet failed
        if duck is None:
            stats.duckdb_s = self._duckdb_upsert(new, states)
        self._buffer.clear()
        return stats

    # -- append tables ------------------------------------------------------------------------

    def _moves_tracked(self, t: Table) -> bool:
        return t.partition is not None and t.partition not in t.key

    def _key_index(self, t: Table) -> pl.DataFrame:
        """Key -> partition of every stored row of `t` (append tables with `date` not in key)."""
        assert t.partition is not None
        if t.name not in self._index:
            cols = [*t.key, t.partition]
            lf = self._scan(t)
            if lf is None:
                idx = pl.DataFrame(schema={c: t.schema[c] for c in cols})
            else:
                idx = lf.select(cols).collect().cast({c: t.schema[c] for c in cols})
            self._index[t.name] = idx.unique(subset=list(t.key), keep="last")
        return self._index[t.name]

    def _commit_append(self, t: Table, new: pl.DataFrame, stats: CommitStats) -> None:
        key = list(t.key)
        p = t.partition
        if p is None:
            unit = _Unit(t, t.name, self._merge(self._read_unit(t, t.name), new, key))
            self._apply_units([unit], stats)
            return
        new_index: pl.DataFrame | None = None
        if self._moves_tracked(t):
            idx = self._key_index(t)
            old_p = f"{p}__old"
            moved = (
                new.select([*key, p])
                .join(idx.rename({p: old_p}), on=key, how="inner")
                .filter(pl.col(p) != pl.col(old_p))
            )
            if moved.height:
                # phase 1: take moved keys out of their old partitions before adding them anywhere
                removals = []
                for (old_value,), keys in moved.partition_by(old_p, as_dict=True).items():
                    rel = self._partition_relpath(t, old_value)
                    kept = self._read_unit(t, rel).join(keys.select(key), on=key, how="anti")
                    removals.append(_Unit(t, rel, kept))
                self._apply_units(removals, stats)
            new_index = pl.concat(
                [idx.join(new.select(key), on=key, how="anti"), new.select([*key, p])]
            )

        units = []
        for (value,), rows in new.partition_by(p, as_dict=True, maintain_order=True).items():
            rel = self._partition_relpath(t, value)
            units.append(_Unit(t, rel, self._merge(self._read_unit(t, rel), rows, key)))
        self._apply_units(units, stats)
        if new_index is not None:
            self._index[t.name] = new_index

    @staticmethod
    def _merge(existing: pl.DataFrame, new: pl.DataFrame, key: list[str]) -> pl.DataFrame:
        if existing.height == 0:
            return new.sort(key)
        kept = existing.join(new.select(key), on=key, how="anti")
        return pl.concat([kept, new], how="vertical").sort(key)

    def _partition_relpath(self, t: Table, value: object) -> str:
        text = value.isoformat() if isinstance(value, date) else str(value)
        return f"{t.name}/{t.partition}={text}"

    def _read_unit(self, t: Table, relpath: str) -> pl.DataFrame:
        """Current rows of one partition directory (or of an unpartitioned table)."""
        files = _parquet_files(self.parquet_dir / relpath, recursive=False)
        if not files:
            return t.empty()
        frames = [t.conform(pl.read_parquet(f, hive_partitioning=False)) for f in files]
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")

    # -- snapshot tables ----------------------------------------------------------------------

    def _snapshot_state(self, t: Table) -> pl.DataFrame:
        if t.name not in self._state:
            self._state[t.name] = self.read(t.name).unique(subset=list(t.key), keep="last")
        return self._state[t.name]

    def _merged_state(self, t: Table, new: pl.DataFrame) -> pl.DataFrame:
        """The snapshot table's rows with `new` upserted (not stored until the commit is done)."""
        key = list(t.key)
        state = self._snapshot_state(t)
        merged = pl.concat([state.join(new.select(key), on=key, how="anti"), new], how="vertical")
        return merged.sort(key)

    # -- directory swaps ----------------------------------------------------------------------

    def _write_file(self, frame: pl.DataFrame, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"part-{uuid.uuid4().hex}.parquet"
        frame.write_parquet(path, compression=self._compression, statistics=True)
        _fsync_path(path)
        _fsync_path(directory)

    def _apply_units(self, units: list[_Unit], stats: CommitStats) -> None:
        """Stage every unit's new directory, then swap them all in, then drop the old content."""
        if not units:
            return
        commit_dir = self.staging_dir / uuid.uuid4().hex
        commit_dir.mkdir(parents=True)
        entries = []
        for i, unit in enumerate(units):
            new_dir = commit_dir / "new" / str(i)
            entries.append({"target": unit.relpath, "new": f"new/{i}", "old": f"old/{i}"})
            frame = unit.frame
            if frame is None or frame.height == 0:
                continue
            if unit.partitioned:
                p = unit.table.partition
                assert p is not None
                for (value,), rows in frame.partition_by(p, as_dict=True).items():
                    part_name = self._partition_relpath(unit.table, value).split("/", 1)[1]
                    self._write_file(rows, new_dir / part_name)
                    stats.files += 1
                _fsync_path(new_dir)
            else:
                self._write_file(frame, new_dir)
                stats.files += 1
        (commit_dir / "old").mkdir()
        for t in {id(u.table): u.table for u in units}.values():
            # a table's first partition: the empty-table file goes first (readers would find a
            # file outside the hive partitions); a whole-table swap replaces it anyway
            placeholder = self._table_dir(t) / EMPTY_FILE
            if placeholder.exists() and any(u.relpath != t.name for u in units if u.table is t):
                placeholder.unlink()
                _fsync_path(placeholder.parent)
        manifest = commit_dir / "manifest.json"
        manifest.write_text(json.dumps(entries))
        _fsync_path(manifest)
        _fsync_path(commit_dir)
        for entry in entries:
            self._swap(
                commit_dir / entry["new"],
                self.parquet_dir / entry["target"],
                commit_dir / entry["old"],
            )
            stats.units += 1
        shutil.rmtree(commit_dir)
        for t in {id(u.table): u.table for u in units}.values():
            self._ensure_readable(t)

    def _ensure_readable(self, t: Table) -> None:
        """Give a table without any Parquet file its empty-table file (`EMPTY_FILE`)."""
        directory = self._table_dir(t)
        if _has_parquet(directory):
            return
        staged = self.staging_dir / uuid.uuid4().hex
        staged.mkdir(parents=True)
        t.empty().write_parquet(staged / EMPTY_FILE, compression=self._compression)
        _fsync_path(staged / EMPTY_FILE)
        directory.mkdir(parents=True, exist_ok=True)
        os.rename(staged / EMPTY_FILE, directory / EMPTY_FILE)
        _fsync_path(directory)
        shutil.rmtree(staged)

    @staticmethod
    def _swap(new: Path, target: Path, old: Path) -> None:
        """Make `new` (absent = remove) the content of `target`, atomically where the OS can."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if not new.exists():
            if target.exists():
                os.rename(target, old)
        elif not target.exists():
            os.rename(new, target)
        elif not exchange_paths(new, target):
            os.rename(target, old)
            os.rename(new, target)
        _fsync_path(target.parent)

    # -- DuckDB -------------------------------------------------------------------------------

    def _check_duck_columns(self, con: duckdb.DuckDBPyConnection, t: Table) -> None:
        if t.name in self._duck_checked:
            return
        got = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position",
                [t.name],
            ).fetchall()
        ]
        if got != t.columns:
            raise RuntimeError(
                f"{self.db_path}: table {t.name} has columns {got}, expected {t.columns}; "
                f"drop that table (it is rebuilt from new output) or write to a new --out"
            )
        self._duck_checked.add(t.name)

    def _duckdb_upsert(
        self, frames: Mapping[str, pl.DataFrame], states: Mapping[str, pl.DataFrame]
    ) -> float:
        """Upsert the committed rows of all tables in ONE transaction (creating missing tables);
        `states` are the snapshot tables' whole new states. Returns the seconds it took.

        Append tables: INSERT OR REPLACE. Snapshot tables: when at most 1/50 of the table changed,
        DELETE the changed keys + INSERT them; otherwise DROP + CREATE + INSERT the whole in-memory
        state. Reason: with DuckDB 2.0.1, replacing many existing rows of a table that has a
        VARCHAR[] column and a PRIMARY KEY is pathologically slow (measured on 2 vCPUs, 1M-row
        user_state: 10k changed rows 0.4 s, 100k 3.4 s, all 1M 64 s; full rewrite about 2 s).

        A table created in this transaction is filled first and gets its PRIMARY KEY afterwards
        (the rows are unique by key): building the index once is cheaper than maintaining it row
        by row (first commit of the file benchmark, 610k rows in 5 tables: 0.71 s instead of
        1.3 s with INSERT OR REPLACE).
        """
        started = time.perf_counter()
        if not frames:
            return 0.0
        con = connect_duckdb(self.db_path, timeout_s=self.lock_timeout_s)
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                existing = {
                    r[0]
                    for r in con.execute(
                        "SELECT table_name FROM duckdb_tables() "
                        "WHERE database_name = current_database() AND schema_name = 'main'"
                    ).fetchall()
                }
                for name, t in self.tables.items():  # every table exists, even when empty
                    if name not in existing and name not in frames:
                        con.execute(create_table_sql(t))
                for name, frame in frames.items():
                    t = self.tables[name]
                    cols = ", ".join(_q(c) for c in t.columns)
                    view = f"__staged_{name}"
                    rows, verb, incremental, created = frame, "INSERT INTO", False, False
                    if t.mode != "snapshot":
                        if name in existing:
                            self._check_duck_columns(con, t)
                            verb = "INSERT OR REPLACE INTO"
                        else:
                            con.execute(create_table_sql(t, primary_key=False))
                            created = True
                    elif name in existing and frame.height * 50 <= states[name].height:
                        self._check_duck_columns(con, t)
                        incremental = True
                    else:
                        rows = states[name]
                        con.execute(f"DROP TABLE IF EXISTS {_q(name)}")
                        con.execute(create_table_sql(t, primary_key=False))
                        created = True
                    # zero-copy: the newest compat level keeps polars' string views as Arrow views
                    con.register(view, rows.to_arrow(compat_level=pl.CompatLevel.newest()))
                    if incremental:
                        match = " AND ".join(f"{_q(name)}.{_q(k)} = s.{_q(k)}" for k in t.key)
                        con.execute(f"DELETE FROM {_q(name)} USING {_q(view)} AS s WHERE {match}")
                    con.execute(f"{verb} {_q(name)} ({cols}) SELECT {cols} FROM {_q(view)}")
                    con.unregister(view)
                    if created:
                        con.execute(add_key_sql(t))
                con.execute("COMMIT")
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:  # the transaction may already be aborted
                    pass
                raise
        finally:
            con.close()
        return time.perf_counter() - started

    # -- reading and erasure ------------------------------------------------------------------

    def _table_dir(self, t: Table) -> Path:
        return self.parquet_dir / t.name

    def _scan(self, t: Table) -> pl.LazyFrame | None:
        directory = self._table_dir(t)
        if not _parquet_files(directory, recursive=True):
            return None
        return pl.scan_parquet(str(directory / "**" / "*.parquet"), hive_partitioning=True)

    def read(self, table: str) -> pl.DataFrame:
        """The committed Parquet dataset of `table`, in the table's column order and types."""
        t = self.table(table)
        lf = self._scan(t)
        if lf is None:
            return t.empty()
        return t.conform(lf.collect())

    def _duckdb_matches(
        self, con: duckdb.DuckDBPyConnection, t: Table, predicate: pl.Expr
    ) -> pl.DataFrame:
        """Keys of DuckDB rows matching a polars predicate (streamed in record batches)."""
        key = list(t.key)
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [t.name]
        ).fetchall()
        if not exists[0][0]:
            return t.empty().select(key)
        reader = con.sql(
            f"SELECT {', '.join(_q(c) for c in t.columns)} FROM {_q(t.name)}"
        ).to_arrow_reader(1_000_000)
        hits = [
            t.conform(pl.DataFrame(pl.from_arrow(batch))).filter(predicate).select(key)
            for batch in _batches(reader)
        ]
        return pl.concat(hits) if hits else t.empty().select(key)

    def delete_rows(self, table: str, predicate: pl.Expr) -> int:
        """Remove the rows of `table` matching `predicate` from Parquet, DuckDB and the buffer.

        Used for erasure and retention; durable when it returns. The predicate is evaluated with
        polars on every store (DuckDB rows are streamed out in record batches), so any polars
        expression over the table's columns works. Returns the number of distinct keys removed.
        """
        t = self.table(table)
        key = list(t.key)
        removed: list[pl.DataFrame] = []

        # buffer
        frames = self._buffer.get(table, [])
        for i, frame in enumerate(frames):
            hit = frame.filter(predicate)
            if hit.height:
                removed.append(hit.select(key))
                frames[i] = frame.join(hit.select(key), on=key, how="anti")

        # Parquet
        stats = CommitStats()
        if t.mode == "snapshot":
            state = self._snapshot_state(t)
            hit = state.filter(predicate).select(key)
            if hit.height:
                removed.append(hit)
                kept = state.join(hit, on=key, how="anti")
                self._apply_units(
                    [_Unit(t, t.name, kept, partitioned=t.partition is not None)], stats
                )
                self._state[t.name] = kept
        else:
            lf = self._scan(t)
            p = t.partition
            if lf is not None:
                cols = list(dict.fromkeys([*key, *([p] if p else [])]))
                hits = (
                    lf.filter(predicate).select(cols).collect().cast({c: t.schema[c] for c in cols})
                )
                if hits.height:
                    removed.append(hits.select(key))
                    groups = hits.partition_by(p, as_dict=True) if p else {(None,): hits}
                    units = []
                    for (value,), rows in groups.items():
                        rel = self._partition_relpath(t, value) if p else t.name
                        kept = self._read_unit(t, rel).join(rows.select(key), on=key, how="anti")
                        units.append(_Unit(t, rel, kept))
                    self._apply_units(units, stats)
                    if t.name in self._index:
                        self._index[t.name] = self._index[t.name].join(
                            hits.select(key), on=key, how="anti"
                        )

        # DuckDB
        if self.db_path.exists():
            con = connect_duckdb(self.db_path, timeout_s=self.lock_timeout_s)
            try:
                hit = self._duckdb_matches(con, t, predicate)
                if hit.height:
                    removed.append(hit)
                    con.execute("BEGIN TRANSACTION")
                    con.register("__erase", hit.to_arrow(compat_level=pl.CompatLevel.newest()))
                    match = " AND ".join(f"{_q(t.name)}.{_q(k)} = e.{_q(k)}" for k in key)
                    con.execute(f"DELETE FROM {_q(t.name)} USING __erase AS e WHERE {match}")
                    con.execute("COMMIT")
            finally:
                con.close()

        if not removed:
            return 0
        return pl.concat(removed, how="vertical").unique().height


def _batches(reader: Any) -> Iterator[Any]:
    """Record batches of a pyarrow RecordBatchReader (typed loosely: pyarrow ships no stubs)."""
    yield from reader
