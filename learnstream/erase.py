"""Erasure and retention of SPEC §3, with an audit record per action.

`erase_users(out, user_ids, secret)` removes every row of those learners from every table of an
output directory (Parquet datasets and the DuckDB database); `apply_retention(out, days, now)`
drops every date partition older than `days` before today (UTC). Both go through
`sinks.tables.TableStore.delete_rows`, so each Parquet directory is swapped atomically and DuckDB
is changed in one transaction per table. Each action appends one JSON line to
`<out>/audit/audit.jsonl` (fsynced; the record of truth: `audit_id`, `action`, `status`, `at`,
`user_keys` or `retention_days`/`cutoff`/`partitions`, rows removed per table) and the same record
as a row of the DuckDB table `audit_log` (`at` is `performed_at` there: AT is an SQL keyword).
A failed action appends a record with `status` "failed" and is safe to run again.

What erasure removes, per table:

- `user_daily`, `user_skill_daily`, `user_skill_state`, `user_state`, `alerts`, `late_events`:
  rows whose `user_key` is one of the users' keys (HMAC of the raw id with the run's secret,
  `operators.pseudonymize.user_key`). Cohort alerts (`user_key` null) stay.
- `rejected_events`: dead letters whose restricted raw `payload` names one of the raw ids as its
  `user_id` (see `payload_mentions` for the exact rule).
- `cohort_daily`, `org_daily`, `pipeline_runs` are left as they are: they carry no `user_key`, they
  are aggregates over many learners, and rewriting them would contradict alerts (the
  `cohort_engagement_drop` evidence) and topic messages already published from them. Sharp edge:
  in a cohort or org of one learner, its daily row still shows that learner's sums.

Physical removal. DuckDB's DELETE only marks rows deleted: measured with duckdb 2.0.1, the bytes of
deleted rows stay in the database file even after CHECKPOINT and VACUUM. Both actions therefore
rewrite the database into a new file (`COPY FROM DATABASE`) and atomically rename it over the old
one (`compact=True`, the default; cost: one copy of the database). Old Parquet files are unlinked;
what the file system or its snapshots keep of unlinked blocks is outside learnstream's reach.

Limitations (said out loud, SPEC §3 asks for more than this module can do alone):

- Live state. A running pipeline holds per-user state (open days, streaks, baselines, skill
  trends) in memory and in its Bytewax recovery snapshots. An output directory has one writer (the
  TableStore lock), so erasure refuses to run while a pipeline writes to it
  (`OutputBusyError`): stop the run, erase, restart. A restart *without* the recovery snapshots
  starts from empty state; a restart *from* them restores the erased users' state, and the flow
  writes their `user_state` (and, for new events, every other table) again, including the final
  row written when `state_ttl` evicts them. `erased_user_keys(out)` lists every erased key from
  the audit log so that a flow can drop those users' state on restore and their rows in its sinks;
  until the flow does that, restart without recovery after an erasure. Input that still holds the
  user's events (a JSONL file run again, a Kafka topic re-read from its start because the offsets
  lived in the recovery store) brings them back: erase from the source data as well.
- Kafka topics (`learning.alerts`, `learning.metrics`, `learning.events.dlq`) and the input topic
  are not touched: messages can only age out by the topics' retention (or, for compacted topics
  keyed by `user_key`, tombstones written by the operator).
- The audit record keeps the erased users' `user_key`s (never the raw ids): it is the proof that
  erasure happened and the list a flow needs to keep them erased.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import polars as pl
import structlog

from operators.pseudonymize import user_key
from schemas.tables import TABLES
from sinks.tables import DUCKDB_FILE, PARQUET_DIR, TableStore, connect_duckdb

__all__ = [
    "AGGREGATE_TABLES",
    "AUDIT_FILE",
    "AUDIT_TABLE",
    "USER_TABLES",
    "EraseReport",
    "OutputBusyError",
    "RetentionReport",
    "apply_retention",
    "compact_duckdb",
    "erase_users",
    "erased_user_keys",
    "payload_mentions",
    "read_audit",
    "retention_cutoff",
]

#: tables whose rows belong to one learner through `user_key`
USER_TABLES: tuple[str, ...] = tuple(n for n, t in TABLES.items() if "user_key" in t.schema)
#: the dead-letter table, matched on the raw payload
REJECTED_TABLE = "rejected_events"
#: tables erasure leaves as they are (no user_key; aggregates or run bookkeeping)
AGGREGATE_TABLES: tuple[str, ...] = tuple(
    n for n in TABLES if n not in USER_TABLES and n != REJECTED_TABLE
)
#: partitioned tables, which retention applies to (every table but user_state)
PARTITIONED_TABLES: tuple[str, ...] = tuple(n for n, t in TABLES.items() if t.partition)

AUDIT_DIR = "audit"
AUDIT_FILE = "audit.jsonl"
AUDIT_TABLE = "audit_log"
_COMPACT_FILE = ".learnstream.duckdb.compacting"

log = structlog.get_logger(__name__)

_AUDIT_DDL = (
    f"CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} ("
    "audit_id VARCHAR PRIMARY KEY, action VARCHAR, status VARCHAR, performed_at TIMESTAMPTZ, "
    "user_keys VARCHAR[], retention_days BIGINT, cutoff DATE, rows_removed BIGINT, "
    "record VARCHAR)"
)


class OutputBusyError(RuntimeError):
    """Another process writes to (or holds the database of) the output directory."""


@dataclass(frozen=True)
class EraseReport:
    """What `erase_users` removed. `rows` maps every table considered to its removed row count."""

    audit_id: str
    at: datetime
    user_keys: tuple[str, ...]
    rows: dict[str, int]
    duckdb_compacted: bool
    audit_path: Path

    @property
    def rows_removed(self) -> int:
        return sum(self.rows.values())


@dataclass(frozen=True)
class RetentionReport:
    """What `apply_retention` removed: rows per table and the Parquet partitions dropped."""

    audit_id: str
    at: datetime
    retention_days: int
    #: partitions dated before this day were dropped
    cutoff: date
    rows: dict[str, int]
    #: table -> dates (ISO) of the Parquet partition directories dropped
    partitions: dict[str, list[str]] = field(default_factory=dict)
    duckdb_compacted: bool = False
    audit_path: Path = Path()

    @property
    def rows_removed(self) -> int:
        return sum(self.rows.values())


# ---------------------------------------------------------------------------------------------
# matching raw ids in dead-letter payloads

#: characters that continue an id-like token: an id found next to one of these is part of a
#: longer value (`user-1` inside `user-10` or `alice` inside `alice.smith`), not a mention
_TOKEN_CHARS = r"\w.@+\-"
_BASE64 = r"^[A-Za-z0-9+/]+={0,2}$"


def _needles(user_ids: Iterable[str]) -> list[str]:
    """Each id as it may appear in JSON text: raw, and escaped the ways JSON encoders write it."""
    out: set[str] = set()
    for uid in user_ids:
        out.add(uid)
        out.add(json.dumps(uid)[1:-1])
        out.add(json.dumps(uid, ensure_ascii=False)[1:-1])
    return sorted(out, key=lambda s: (-len(s), s))


def _json_user_ids(value: Any) -> set[str]:
    """Every `"user_id"` value (string, or number as its JSON text) at any depth of a JSON value."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            uid = item.get("user_id")
            if isinstance(uid, str):
                found.add(uid)
            elif isinstance(uid, int | float) and not isinstance(uid, bool):
                found.add(orjson.dumps(uid).decode())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class _Matcher:
    """Decides whether one payload names one of `user_ids` (see `payload_mentions`)."""

    def __init__(self, user_ids: Iterable[str]) -> None:
        self.ids = set(user_ids)
        self.needles = _needles(self.ids)
        alternatives = "|".join(re.escape(n) for n in self.needles)
        self.token = re.compile(f"(?<![{_TOKEN_CHARS}])(?:{alternatives})(?![{_TOKEN_CHARS}])")

    def text(self, payload: str) -> bool:
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return self.token.search(payload) is not None
        return bool(_json_user_ids(parsed) & self.ids)

    def __call__(self, payload: str | None) -> bool:
        if payload is None:
            return False
        if self.text(payload):
            return True
        if len(payload) % 4 == 0 and re.match(_BASE64, payload):
            import base64

            try:
                raw = base64.b64decode(payload, validate=True)
            except ValueError:
                return False
            try:
                return self.text(raw.decode("utf-8"))
            except UnicodeDecodeError:  # the usual case: decode keeps only non-UTF-8 as base64
                return self.token.search(raw.decode("utf-8", errors="replace")) is not None
        return False


def payload_mentions(payloads: pl.Series, user_ids: Iterable[str]) -> pl.Series:
    """True where a dead-letter `payload` belongs to one of the raw `user_ids`.

    The rule, for a payload as stored by decode (UTF-8 text, or base64 of bytes that are not UTF-8):

    - Text that parses as JSON matches when a `"user_id"` member, at any depth (a batch sent as an
      array counts), equals one of the ids (a number matches its JSON text). An id under any other
      name (a `content_id` that happens to equal it) does not match.
    - Text that does not parse (truncated, unquoted keys, ...) and base64 payloads (decoded, with
      invalid bytes replaced) match when an id occurs as a whole token: not preceded or followed by
      a letter, digit or one of `_ . @ + -`. So `"user_id":"u-1","ty` and `{user_id:u-1}` match
      `u-1`, while `u-10` and `u-1.old` do not; an id cut off by truncation (`"u-1` at the very
      end) is taken as a match, erring towards erasure.
    - Ids are also looked for in their JSON-escaped forms (`\\u00e9`, `\\"`); a payload that escapes
      an id some other way (upper-case hex in `\\u00E9`) is found only when it parses as JSON.

    Vectorised pre-filter (polars substring search for any form of any id, or any `\\u` escape, or a
    base64 payload whose bytes contain an id), then Python only for the candidate rows.
    """
    matcher = _Matcher(user_ids)
    s = payloads.cast(pl.String).rename("p")
    if s.len() == 0 or not matcher.ids:
        return pl.Series(payloads.name, [False] * s.len(), dtype=pl.Boolean)
    p = pl.col("p")
    b64 = (
        pl.when((p.str.len_bytes() % 4 == 0) & p.str.contains(_BASE64))
        .then(p.str.decode("base64", strict=False))
        .otherwise(None)
    )
    in_b64 = pl.any_horizontal(b64.bin.contains(n.encode("utf-8")) for n in matcher.ids)
    candidate = (
        p.str.contains_any(matcher.needles) | p.str.contains("\\u", literal=True) | in_b64
    ).fill_null(False)
    frame = s.to_frame().with_row_index("i").filter(candidate)
    hits = [i for i, text in frame.iter_rows() if matcher(text)]  # candidates only
    mask = pl.zeros(s.len(), dtype=pl.Boolean, eager=True)
    if hits:
        mask = mask.scatter(hits, True)
    return mask.rename(payloads.name)


def _mentions_expr(user_ids: Iterable[str]) -> pl.Expr:
    ids = list(user_ids)
    return pl.col("payload").map_batches(
        lambda s: payload_mentions(s, ids), return_dtype=pl.Boolean
    )


# ---------------------------------------------------------------------------------------------
# audit


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_audit_line(out_dir: Path, record: Mapping[str, Any]) -> Path:
    """Append one JSON line to `<out>/audit/audit.jsonl` and fsync it (and the directory when new)."""
    directory = out_dir / AUDIT_DIR
    created = not directory.is_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / AUDIT_FILE
    new_file = not path.exists()
    line = orjson.dumps(record) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new_file:
        _fsync_dir(directory)
    if created:
        _fsync_dir(out_dir)
    return path


def _audit_duckdb(db_path: Path, record: Mapping[str, Any], timeout_s: float) -> None:
    """Insert the record into `audit_log` of the DuckDB file (created when missing)."""
    con = connect_duckdb(db_path, timeout_s=timeout_s)
    try:
        con.execute(_AUDIT_DDL)
        con.execute(
            f"INSERT OR REPLACE INTO {AUDIT_TABLE} VALUES (?, ?, ?, ?::TIMESTAMPTZ, ?, ?, ?::DATE, ?, ?)",
            [
                record["audit_id"],
                record["action"],
                record["status"],
                record["at"],
                list(record.get("user_keys", [])),
                record.get("retention_days"),
                record.get("cutoff"),
                record.get("rows_removed"),
                orjson.dumps(record).decode(),
            ],
        )
    finally:
        con.close()


def _write_audit(out_dir: Path, record: dict[str, Any], timeout_s: float) -> Path:
    """JSONL first (the record of truth, fsynced), then DuckDB when the database exists.

    A failure to write `audit_log` (DuckDB locked by a reader past the timeout) is logged, not
    raised: the action is complete and its JSONL record durable.
    """
    path = _append_audit_line(out_dir, record)
    db_path = out_dir / DUCKDB_FILE
    if db_path.exists():
        try:
            _audit_duckdb(db_path, record, timeout_s)
        except (duckdb.Error, TimeoutError) as exc:  # the action is done and recorded in JSONL
            log.warning("audit_log_not_written", path=str(db_path), error=str(exc).splitlines()[0])
    return path


def read_audit(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every audit record of an output directory, oldest first ([] without an audit log).

    A torn last line (a crash while appending) is skipped.
    """
    path = Path(out_dir) / AUDIT_DIR / AUDIT_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def erased_user_keys(out_dir: str | Path) -> set[str]:
    """Every `user_key` a completed erasure removed from `out_dir` (from the audit log).

    For flows that must keep erased users out of restored state and new output (see the module
    docstring on live state).
    """
    keys: set[str] = set()
    for record in read_audit(out_dir):
        if record.get("action") == "erase" and record.get("status") == "ok":
            keys.update(str(k) for k in record.get("user_keys", []))
    return keys


# ---------------------------------------------------------------------------------------------
# DuckDB compaction


def compact_duckdb(db_path: str | Path, *, timeout_s: float = 60.0) -> bool:
    """Rewrite the DuckDB file so that deleted rows are gone from disk; False when there is none.

    Copies every table (with its PRIMARY KEY) into `<dir>/.learnstream.duckdb.compacting` with
    `COPY FROM DATABASE`, fsyncs it and renames it over the original. The caller must be the only
    writer (erasure holds the TableStore lock). A read-only reader that had the file open keeps
    reading the old content until it reconnects. Needs free disk space for one more copy.
    """
    db_path = Path(db_path)
    if not db_path.exists():
        return False
    tmp = db_path.with_name(_COMPACT_FILE)
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    con = connect_duckdb(db_path, timeout_s=timeout_s)
    try:
        source = con.execute("SELECT current_database()").fetchall()[0][0]
        target = str(tmp).replace("'", "''")
        con.execute(f"ATTACH '{target}' AS __compacted")
        quoted = '"' + str(source).replace('"', '""') + '"'
        con.execute(f"COPY FROM DATABASE {quoted} TO __compacted")
        con.execute("DETACH __compacted")
    finally:
        con.close()
    for wal in (db_path.with_name(db_path.name + ".wal"), tmp.with_name(tmp.name + ".wal")):
        if wal.exists():  # a clean close checkpoints; never pair a WAL with another file
            raise RuntimeError(f"{wal} remains after closing DuckDB; not compacting {db_path}")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, db_path)
    _fsync_dir(db_path.parent)
    return True


# ---------------------------------------------------------------------------------------------
# the two actions


def _check_out_dir(out_dir: Path) -> None:
    if not out_dir.is_dir():
        raise FileNotFoundError(f"no output directory {str(out_dir)!r}")
    if not (out_dir / PARQUET_DIR).is_dir() and not (out_dir / DUCKDB_FILE).exists():
        raise FileNotFoundError(
            f"{str(out_dir)!r} holds neither {PARQUET_DIR}/ nor {DUCKDB_FILE}: "
            "not a learnstream output directory"
        )


def _open_store(out_dir: Path, timeout_s: float) -> TableStore:
    try:
        return TableStore(out_dir, lock_timeout_s=timeout_s)
    except RuntimeError as exc:  # the single-writer lock
        raise OutputBusyError(
            f"{out_dir} is being written by another process (a running pipeline?): "
            "stop it, then retry"
        ) from exc


def _scrub(text: str, secrets_: Iterable[str]) -> str:
    for s in sorted(set(secrets_), key=len, reverse=True):
        if s:
            text = text.replace(s, "<user_id>")
    return text


def _act(
    out: Path,
    record: dict[str, Any],
    steps: list[tuple[str, pl.Expr]],
    *,
    compact: bool,
    timeout_s: float,
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
    scrub: Iterable[str] = (),
) -> tuple[dict[str, int], bool, Path]:
    """Under the writer lock: `before`, delete, `after`, compact; then audit.

    On failure an audit line with status "failed", the error (raw ids scrubbed) and the rows
    removed so far is appended, and the error is raised (a DuckDB lock timeout as
    OutputBusyError). Every step is idempotent, so running the action again completes it.
    """
    rows: dict[str, int] = {table: 0 for table, _ in steps}
    compacted = False
    try:
        store = _open_store(out, timeout_s)
        try:
            if before is not None:
                before()
            for table, predicate in steps:
                rows[table] = store.delete_rows(table, predicate)
            if after is not None:
                after()
            if compact:
                compacted = compact_duckdb(out / DUCKDB_FILE, timeout_s=timeout_s)
        finally:
            store.close()  # nothing is buffered: this only releases the lock
    except Exception as exc:
        error = _scrub(f"{type(exc).__name__}: {exc}", scrub)
        failed = {
            **record,
            "status": "failed",
            "error": error,
            "tables": rows,
            "rows_removed": sum(rows.values()),
            "duckdb_compacted": compacted,
        }
        try:
            _append_audit_line(out, failed)
        except OSError:
            pass
        if isinstance(exc, TimeoutError):
            raise OutputBusyError(_scrub(str(exc), scrub)) from None
        raise
    record.update(tables=rows, rows_removed=sum(rows.values()), duckdb_compacted=compacted)
    path = _write_audit(out, record, timeout_s)
    return rows, compacted, path


def erase_users(
    out_dir: str | Path,
    user_ids: Iterable[str],
    secret: bytes,
    *,
    compact: bool = True,
    lock_timeout_s: float = 60.0,
) -> EraseReport:
    """Remove every row of the learners `user_ids` from the output tables; write an audit record.

    `secret` is the run's `LEARNSTREAM_PSEUDONYM_KEY` (UTF-8 bytes): with another secret the keys
    differ and nothing of those users is found (the report then says 0 rows). Idempotent: erasing
    again removes nothing more and writes another audit record. The audit record carries the
    users' `user_key`s, never the raw ids. See the module docstring for what is kept (aggregates,
    Kafka topics) and for live state.

    Raises ValueError for an empty id list or an empty id, FileNotFoundError when `out_dir` is not
    an output directory, OutputBusyError when a pipeline (or a DuckDB reader for longer than
    `lock_timeout_s`) holds it.
    """
    if not secret:
        raise ValueError("the pseudonymisation secret must not be empty")
    ids = list(dict.fromkeys(user_ids))
    if not ids:
        raise ValueError("no user id given")
    if any(not isinstance(uid, str) or uid == "" for uid in ids):
        raise ValueError("a user id is empty")
    out = Path(out_dir)
    _check_out_dir(out)
    keys = sorted({user_key(secret, uid) for uid in ids})
    at = datetime.now(UTC)
    audit_id = uuid.uuid4().hex
    record: dict[str, Any] = {
        "audit_id": audit_id,
        "action": "erase",
        "status": "ok",
        "at": _rfc3339(at),
        "user_keys": keys,
        "kept": {name: "no user_key: aggregate or run counts" for name in AGGREGATE_TABLES},
    }
    steps = [(name, pl.col("user_key").is_in(keys)) for name in USER_TABLES]
    steps.append((REJECTED_TABLE, _mentions_expr(ids)))
    rows, compacted, path = _act(
        out, record, steps, compact=compact, timeout_s=lock_timeout_s, scrub=ids
    )
    return EraseReport(audit_id, at, tuple(keys), rows, compacted, path)


def retention_cutoff(retention_days: int, now: datetime) -> date:
    """The first day kept: today (UTC date of `now`) minus `retention_days`."""
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware, got {now!r}")
    return now.astimezone(UTC).date() - timedelta(days=retention_days)


def _partitions(out: Path, table: str) -> Iterator[tuple[date, Path]]:
    directory = out / PARQUET_DIR / table
    if not directory.is_dir():
        return
    prefix = f"{TABLES[table].partition}="
    for child in sorted(directory.iterdir()):
        if child.is_dir() and child.name.startswith(prefix):
            try:
                yield date.fromisoformat(child.name[len(prefix) :]), child
            except ValueError:
                continue


def apply_retention(
    out_dir: str | Path,
    retention_days: int,
    now: datetime | None = None,
    *,
    compact: bool = True,
    lock_timeout_s: float = 60.0,
) -> RetentionReport:
    """Drop every date partition older than `retention_days` before today (UTC); audit it.

    A partition `date=D` of any partitioned table is dropped when D < today − retention_days
    (`retention_cutoff`), in Parquet and the same rows in DuckDB; `user_state` (unpartitioned, one
    row per learner) is kept. The `date` is each table's partition column, so the age is the
    learner's local day for daily tables and alerts, the UTC day of `as_of` for
    `user_skill_state` (a skill state not refreshed for that long goes), of `received_at` for
    `rejected_events`, of `started_at` for `pipeline_runs`. `now` defaults to the current time.

    Raises ValueError for `retention_days` < 1 or a naive `now`; FileNotFoundError and
    OutputBusyError as `erase_users`.
    """
    if isinstance(retention_days, bool) or not isinstance(retention_days, int):
        raise ValueError(f"retention_days must be a whole number, got {retention_days!r}")
    if retention_days < 1:
        raise ValueError(f"retention_days must be >= 1, got {retention_days}")
    at = datetime.now(UTC)
    cutoff = retention_cutoff(retention_days, now if now is not None else at)
    out = Path(out_dir)
    _check_out_dir(out)
    partitions: dict[str, list[str]] = {}

    def list_partitions() -> None:  # under the writer lock, so the list is what gets dropped
        for name in PARTITIONED_TABLES:
            old = [d.isoformat() for d, _ in _partitions(out, name) if d < cutoff]
            if old:
                partitions[name] = old

    record: dict[str, Any] = {
        "audit_id": uuid.uuid4().hex,
        "action": "retention",
        "status": "ok",
        "at": _rfc3339(at),
        "retention_days": retention_days,
        "cutoff": cutoff.isoformat(),
        "partitions": partitions,
    }
    steps = [
        (name, pl.col(TABLES[name].partition or "date") < cutoff) for name in PARTITIONED_TABLES
    ]

    def drop_empty_dirs() -> None:  # partition directories without a file to delete rows from
        for name in PARTITIONED_TABLES:
            for day, directory in _partitions(out, name):
                if day < cutoff and not any(directory.iterdir()):
                    directory.rmdir()

    rows, compacted, path = _act(
        out,
        record,
        steps,
        compact=compact,
        timeout_s=lock_timeout_s,
        before=list_partitions,
        after=drop_empty_dirs,
    )
    return RetentionReport(
        record["audit_id"], at, retention_days, cutoff, rows, partitions, compacted, path
    )
