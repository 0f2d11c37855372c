"""Erasure and retention (SPEC §3) on the real output of a small file run.

One run (40 generated users over 12 days from 2026-03-01, 5% bad lines, plus the hand-made lines
below) is copied for each test that changes it. Erased: A = user-00003 and B = user-00007;
C = user-00011 stays.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from learnstream.cli import main
from learnstream.erase import (
    AUDIT_FILE,
    OutputBusyError,
    apply_retention,
    compact_duckdb,
    erase_users,
    erased_user_keys,
    payload_mentions,
    read_audit,
)
from schemas.tables import TABLES
from sinks.tables import TableStore

SECRET = "erase-secret"
A, B, C = "user-00003", "user-00007", "user-00011"
USER_TABLES = ["user_daily", "user_skill_daily", "user_skill_state", "user_state", "alerts", "late_events"]
AGGREGATES = ["cohort_daily", "org_daily", "pipeline_runs"]

# Appended after the generated lines; the watermark is then near 2026-03-12, so the two valid
# 2026-03-01 events are late, the rest are rejected. Expected: lines marked "gone" match A or B.
EXTRA: list[tuple[str, bytes]] = [
    ("late A", b'{"event_id":"late-a","user_id":"user-00003","type":"lesson_completed","timestamp":"2026-03-01T10:00:00Z"}'),
    ("late C", b'{"event_id":"late-c","user_id":"user-00011","type":"lesson_completed","timestamp":"2026-03-01T10:00:00Z"}'),
    # gone: JSON user_id written with an escape ("\u0033" is "3")
    ("escaped A", b'{"event_id":"x1","user_id":"user-0000\\u0033","type":"video_watched","timestamp":"2026-03-05T10:00:00Z"}'),
    # gone: truncated JSON, id as a whole quoted token
    ("truncated B", b'{"event_id":"x2","user_id":"user-00007","ty'),
    # gone: unquoted keys, id as a whole bare token
    ("unquoted A", b"{event_id:x3,user_id:user-00003}"),
    # gone: invalid UTF-8, so the payload is kept as base64
    ("utf8 B", b'{"event_id":"x4","user_id":"user-00007","type":"lesson_completed","note":"\xff\xfe"}'),
    # stays: another id that merely starts with A's id
    ("prefix", b'{"event_id":"x5","user_id":"user-000030","type":"video_watched","timestamp":"2026-03-05T10:00:00Z"}'),
    # stays: C's record that names A in another field
    ("other field", b'{"event_id":"x6","user_id":"user-00011","type":"video_watched","timestamp":"2026-03-05T10:00:00Z","content_id":"user-00003"}'),
    # stays: malformed, A's id only as the start of a longer token
    ("longer token", b'{"event_id":"x7","user_id":"user-00003.old",,}'),
]
GONE = {"escaped A", "truncated B", "unquoted A", "utf8 B"}
STAYS = {"prefix", "other field", "longer token"}


def key_of(user_id: str) -> str:
    return hmac.new(SECRET.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


def read_parquet(out: Path, name: str) -> pl.DataFrame:
    if not any((out / "parquet" / name).glob("**/*.parquet")):
        return TABLES[name].empty()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    hive = "true" if TABLES[name].partition else "false"
    glob = str(out / "parquet" / name / "**" / "*.parquet")
    frame = con.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning={hive})").pl()
    con.close()
    return TABLES[name].conform(frame).sort(list(TABLES[name].key))


def read_duck(out: Path, name: str) -> pl.DataFrame:
    con = duckdb.connect(str(out / "learnstream.duckdb"), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    frame = con.sql(f"SELECT * FROM {name}").pl()
    con.close()
    return TABLES[name].conform(frame).sort(list(TABLES[name].key))


def payload_text(payload: str, reason: str) -> str:
    """Readable text of a dead-letter payload (decode keeps invalid UTF-8 as base64)."""
    if reason == "invalid_utf8":
        return base64.b64decode(payload).decode("utf-8", errors="replace")
    return payload


def belongs_to(payload: str, reason: str, ids: set[str]) -> bool:
    """Independent oracle for the generated dead letters: JSON user_id, else id as a token.

    Bytes that are not UTF-8 are not JSON, whatever they look like once decoded lossily.
    """
    text = payload_text(payload, reason)
    try:
        if reason == "invalid_utf8":
            raise ValueError
        return json.loads(text).get("user_id") in ids
    except (ValueError, AttributeError):
        return any(re.search(rf"(?<![\w.@+-]){re.escape(i)}(?![\w.@+-])", text) for i in ids)


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The pristine output directory and the source_ref of each EXTRA line."""
    base = tmp_path_factory.mktemp("erase")
    events = base / "events.jsonl"
    assert main(["generate", "--users", "40", "--days", "12", "--seed", "5", "--out", str(events),
                 "--bad-fraction", "0.05"]) == 0
    body = events.read_bytes()
    first = body.count(b"\n") + 1  # 1-based line number of the first extra line
    events.write_bytes(body + b"\n".join(line for _, line in EXTRA) + b"\n")
    refs = {label: f"file:{events}:{first + i}" for i, (label, _) in enumerate(EXTRA)}
    out = base / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
        mp.setenv("LEARNSTREAM_BATCH_SIZE", "500")
        assert main(["run", "--source", f"file:{events}", "--out", str(out)]) == 0
    return out, refs


@pytest.fixture
def out(run_out: tuple[Path, dict[str, str]], tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(run_out[0], copy)
    return copy


def test_erase_two_users_everywhere(out: Path, run_out: tuple[Path, dict[str, str]]) -> None:
    refs = run_out[1]
    gone_keys = {key_of(A), key_of(B)}
    before = {name: read_parquet(out, name) for name in TABLES}
    duck_before = {name: read_duck(out, name) for name in TABLES}
    # the run gave A and B rows in every per-user table (late_events: the hand-made late line)
    for name in USER_TABLES:
        assert before[name]["user_key"].is_in(list(gone_keys)).sum() > 0, name
    assert set(before["late_events"]["user_key"]) == {key_of(A), key_of(C)}
    rejected = before["rejected_events"]
    assert set(refs.values()) - {refs["late A"], refs["late C"]} <= set(rejected["source_ref"])
    expected_rejected = sum(
        belongs_to(p, r, {A, B}) for p, r in rejected.select("payload", "reason").iter_rows()
    )
    assert expected_rejected >= len(GONE)

    report = erase_users(out, [A, B, A], SECRET.encode())

    assert set(report.user_keys) == gone_keys
    assert report.duckdb_compacted
    for name in USER_TABLES:
        others = before[name].filter(~pl.col("user_key").is_in(list(gone_keys)) | pl.col("user_key").is_null())
        assert report.rows[name] == before[name].height - others.height, name
        for frame in (read_parquet(out, name), read_duck(out, name)):
            assert not frame["user_key"].is_in(list(gone_keys)).any(), name
            assert frame.equals(others), name  # everyone else's rows, untouched
        assert duck_before[name].height == before[name].height, name
    # cohort alerts (no user_key) are kept
    assert read_parquet(out, "alerts")["user_key"].null_count() == before["alerts"]["user_key"].null_count()

    after = read_parquet(out, "rejected_events")
    assert report.rows["rejected_events"] == expected_rejected == rejected.height - after.height
    assert read_duck(out, "rejected_events").equals(after)
    left = set(after["source_ref"])
    assert not {refs[label] for label in GONE} & left
    assert {refs[label] for label in STAYS} <= left
    still_naming = [
        ref for ref, p, r in after.select("source_ref", "payload", "reason").iter_rows()
        if re.search(r"user-0000[37](?![\w.@+-])", payload_text(p, r))
    ]
    assert still_naming == [refs["other field"]]  # A only as C's content_id

    for name in AGGREGATES:
        assert read_parquet(out, name).equals(before[name]), name
        assert read_duck(out, name).equals(duck_before[name]), name

    # audit: one JSON line, user_keys only, counts equal to the report
    raw = (out / "audit" / AUDIT_FILE).read_bytes()
    assert A.encode() not in raw and B.encode() not in raw
    (record,) = read_audit(out)
    assert record["action"] == "erase" and record["status"] == "ok"
    assert sorted(record["user_keys"]) == sorted(gone_keys)
    assert record["tables"] == report.rows
    assert record["rows_removed"] == report.rows_removed
    assert datetime.fromisoformat(record["at"]) == report.at
    con = duckdb.connect(str(out / "learnstream.duckdb"), read_only=True)
    rows = con.execute("SELECT action, status, user_keys, rows_removed FROM audit_log").fetchall()
    con.close()
    assert rows == [("erase", "ok", sorted(gone_keys), report.rows_removed)]
    assert erased_user_keys(out) == gone_keys

    # idempotent: nothing left to remove, another audit record
    again = erase_users(out, [A, B], SECRET.encode(), compact=False)
    assert again.rows_removed == 0 and len(read_audit(out)) == 2


def test_retention_drops_exactly_the_old_partitions(out: Path) -> None:
    now = datetime(2026, 3, 12, 12, 0, tzinfo=UTC)
    cutoff = date(2026, 3, 7)  # 12 March minus 5 days: 1..6 March go
    partitioned = [name for name, t in TABLES.items() if t.partition]
    dirs_before = {
        name: sorted(p.name for p in (out / "parquet" / name).glob("date=*")) for name in partitioned
    }
    old_dirs = {name: [d for d in dirs if d < f"date={cutoff}"] for name, dirs in dirs_before.items()}
    assert len(old_dirs["user_daily"]) == 6 and len(dirs_before["user_daily"]) == 12
    before = {name: read_parquet(out, name) for name in TABLES}

    report = apply_retention(out, 5, now)

    assert report.cutoff == cutoff
    assert report.partitions == {
        name: [d.removeprefix("date=") for d in dirs] for name, dirs in old_dirs.items() if dirs
    }
    for name in partitioned:
        kept = before[name].filter(pl.col("date") >= cutoff)
        assert report.rows[name] == before[name].height - kept.height, name
        dirs_after = sorted(p.name for p in (out / "parquet" / name).glob("date=*"))
        assert dirs_after == [d for d in dirs_before[name] if d not in old_dirs[name]], name
        assert read_parquet(out, name).equals(kept), name
        assert read_duck(out, name).equals(kept), name
    # daily tables lost 1..6 March; the cutoff is in the middle of the data
    assert 0 < report.rows["user_daily"] < before["user_daily"].height
    assert read_parquet(out, "user_state").equals(before["user_state"])
    assert read_duck(out, "user_state").equals(before["user_state"])
    (record,) = read_audit(out)
    assert record["action"] == "retention" and record["cutoff"] == "2026-03-07"
    assert record["retention_days"] == 5 and record["tables"] == report.rows
    assert record["partitions"] == report.partitions


def test_erase_refuses_while_a_pipeline_writes(out: Path) -> None:
    store = TableStore(out)  # what a running pipeline holds
    try:
        with pytest.raises(OutputBusyError):
            erase_users(out, [A], SECRET.encode())
    finally:
        store.close()
    (record,) = read_audit(out)
    assert record["status"] == "failed" and record["rows_removed"] == 0
    assert A not in json.dumps(record)
    assert erased_user_keys(out) == set()  # a failed erasure is not reported as done
    assert read_parquet(out, "user_state")["user_key"].is_in([key_of(A)]).any()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        erase_users(tmp_path / "missing", [A], b"k")
    with pytest.raises(FileNotFoundError):
        erase_users(tmp_path, [A], b"k")  # exists but is no output directory
    with pytest.raises(ValueError):
        erase_users(tmp_path, [], b"k")
    with pytest.raises(ValueError):
        erase_users(tmp_path, [""], b"k")
    with pytest.raises(ValueError):
        apply_retention(tmp_path, 0)
    with pytest.raises(ValueError):
        apply_retention(tmp_path, 3, datetime(2026, 3, 1))  # naive time


def test_payload_mentions_rule() -> None:
    #  payload                                           names u-1?
    rows = [
        ('{"user_id":"u-1","type":"x"}', True),                  # JSON user_id
        ('{"user_id":"u-10","type":"x"}', False),                # another id
        ('{"user_id":"v","content_id":"u-1"}', False),           # only another field
        ('[{"user_id":"v"},{"user_id":"u-1"}]', True),           # a batch as an array
        ('{"user_id":"\\u0075-1"}', True),                       # escaped "u"
        ('{"event_id":"e","user_id":"u-1","ty', True),           # truncated
        ("{event_id:e,user_id:u-1}", True),                      # unquoted keys
        ('{"user_id":"u-1.old",,}', False),                      # longer token
        ('{"user_id":"u-1', True),                               # cut right after the id
        (base64.b64encode(b'{"user_id":"u-1","x":"\xff"}').decode(), True),   # invalid UTF-8
        (base64.b64encode(b'{"user_id":"u-12","x":"\xff"}').decode(), False),
        ("42", False),
    ]
    got = payload_mentions(pl.Series("payload", [p for p, _ in rows]), ["u-1"])
    assert got.to_list() == [want for _, want in rows]
    assert payload_mentions(pl.Series("payload", ['{"user_id":12345}']), ["12345"]).to_list() == [True]


def test_compact_duckdb_removes_deleted_bytes(tmp_path: Path) -> None:
    db = tmp_path / "t.duckdb"
    con = duckdb.connect(str(db))
    con.execute("SET force_compression = 'uncompressed'")  # so the raw bytes are findable
    con.execute("CREATE TABLE r (k VARCHAR PRIMARY KEY, payload VARCHAR)")
    con.execute(
        "INSERT INTO r SELECT 'k' || i, 'secret-' || lpad(i::VARCHAR, 6, '0') || repeat('x', 100) "
        "FROM range(5000) t(i)"
    )
    con.close()
    assert db.read_bytes().count(b"secret-000042") == 1
    con = duckdb.connect(str(db))
    con.execute("DELETE FROM r WHERE k = 'k42'")
    con.close()
    assert compact_duckdb(db)
    assert db.read_bytes().count(b"secret-000042") == 0
    con = duckdb.connect(str(db))
    assert con.execute("SELECT count(*) FROM r").fetchone() == (4999,)
    with pytest.raises(duckdb.ConstraintException):  # the primary key survived the copy
        con.execute("INSERT INTO r VALUES ('k1', 'again')")
    con.close()
    assert not compact_duckdb(tmp_path / "none.duckdb")


def test_cli(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEARNSTREAM_PSEUDONYM_KEY", raising=False)
    assert main(["erase", "--out", str(out), "--user-id", A]) == 2
    monkeypatch.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
    assert main(["erase", "--out", str(out), "--user-id", A, "--user-id", B]) == 0
    assert erased_user_keys(out) == {key_of(A), key_of(B)}
    assert main(["retention", "--out", str(out), "--retention-days", "0"]) == 2
    assert main(["retention", "--out", str(out), "--retention-days", "100000"]) == 0
