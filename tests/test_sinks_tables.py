"""TableStore and TablesSink: one row per key in Parquet and DuckDB, across commits and crashes.

Everything runs on real files: Parquet written by polars, read back by duckdb and polars; a real
DuckDB file; readers and crashing writers in real subprocesses.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import hypothesis.strategies as st
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSource, run_main
from hypothesis import HealthCheck, given, settings

import sinks.tables as tables_mod
from schemas.tables import TABLES
from sinks.bytewax_tables import TablesSink
from sinks.tables import TableStore

D1, D2, D3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 3)
T0 = datetime(2024, 3, 1, 23, 30, tzinfo=UTC)
EMITTED = datetime(2024, 3, 4, 8, 0, tzinfo=UTC)


def frame(table: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A frame conformed to `table`; unspecified columns are null, emitted_at defaults."""
    t = TABLES[table]
    rows = [{"emitted_at": EMITTED, **r} for r in rows]
    return t.conform(pl.DataFrame(rows, schema={c: t.schema[c] for c in rows[0]}))


def daily(user: str, day: date, events: int, **extra: Any) -> dict[str, Any]:
    return {"user_key": user, "date": day, "events": events, **extra}


def duck(out: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(out / "learnstream.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def parquet_rows(
    out: Path, table: str, select: str = "*", order: str = ""
) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    glob = out / "parquet" / table / "**" / "*.parquet"
    sql = f"SELECT {select} FROM read_parquet('{glob}', hive_partitioning=true) {order}"
    return con.execute(sql).fetchall()


def data_files(out: Path) -> list[Path]:
    """Parquet files holding rows: every file but the empty-table files."""
    return [p for p in (out / "parquet").rglob("*.parquet") if p.name != tables_mod.EMPTY_FILE]


@pytest.fixture(params=[False, True], ids=["duckdb-after-parquet", "duckdb-concurrent"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TableStore]:
    s = TableStore(tmp_path / "out", concurrent_duckdb=request.param)
    yield s
    s.close()


# ----------------------------------------------------------------------------------------------
# upsert semantics


def test_same_key_across_commits_keeps_one_row_with_last_values(store: TableStore) -> None:
    out = store.out_dir
    store.write("user_daily", frame("user_daily", [daily("u1", D1, 1), daily("u2", D1, 2)]))
    store.commit()
    # within one buffer the last write wins: u1@D1 -> 7, then -> 9
    store.write("user_daily", frame("user_daily", [daily("u1", D1, 7)]))
    store.write("user_daily", frame("user_daily", [daily("u1", D1, 9), daily("u1", D2, 3)]))
    stats = store.commit()
    assert stats.rows == {"user_daily": 2}  # u1@D1 once after de-dup, u1@D2

    expected = [("u1", D1, 9), ("u1", D2, 3), ("u2", D1, 2)]
    got = store.read("user_daily").sort("user_key", "date").select("user_key", "date", "events")
    assert got.rows() == expected
    assert parquet_rows(out, "user_daily", "user_key, date, events", "ORDER BY 1, 2") == expected
    assert duck(out, "SELECT user_key, date, events FROM user_daily ORDER BY 1, 2") == expected
    # the rewritten partition D1 holds exactly one file (merged, not appended)
    assert len(list((out / "parquet/user_daily/date=2024-03-01").glob("*.parquet"))) == 1


def test_empty_commit_does_no_io(tmp_path: Path) -> None:
    with TableStore(tmp_path) as s:
        before = sorted((tmp_path / "parquet").rglob("*"))
        assert s.commit().rows == {}
        assert sorted((tmp_path / "parquet").rglob("*")) == before
    assert not (tmp_path / "learnstream.duckdb").exists()
    assert not data_files(tmp_path)


def test_a_table_without_rows_reads_as_empty_until_its_first_partition(tmp_path: Path) -> None:
    # SPEC §7: every table is a Parquet dataset under <out>/parquet/<table>/. A table with no row
    # yet holds one 0-row file with its schema at the root, so the analysts' read_parquet glob
    # gives 0 rows instead of "no files found"; it goes before the first partition is added
    # (a file outside the partitions would break hive partitioning).
    with TableStore(tmp_path) as s:
        for name, table in TABLES.items():
            assert [p.name for p in (tmp_path / "parquet" / name).rglob("*.parquet")] == ["empty.parquet"]
            con = duckdb.connect()
            glob = tmp_path / "parquet" / name / "**" / "*.parquet"
            relation = con.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning=true)")
            assert relation.columns == table.columns and relation.fetchall() == [], name
        s.write("user_daily", frame("user_daily", [daily("u1", D1, 1)]))
        s.commit()
        assert not (tmp_path / "parquet" / "user_daily" / "empty.parquet").exists()
        assert parquet_rows(tmp_path, "user_daily", "user_key, date, events") == [("u1", D1, 1)]
        # erasing every row leaves an empty, still readable table
        assert s.delete_rows("user_daily", pl.col("user_key") == "u1") == 1
    assert parquet_rows(tmp_path, "user_daily", "count(*)") == [(0,)]
    with TableStore(tmp_path):  # a restart leaves the empty-table file alone
        assert [p.name for p in (tmp_path / "parquet" / "user_daily").rglob("*.parquet")] == ["empty.parquet"]


def test_write_rejects_wrong_columns_null_keys_and_unknown_tables(store: TableStore) -> None:
    with pytest.raises(ValueError, match=r"missing \['user_key'"):
        store.write("user_daily", pl.DataFrame({"date": [D1]}))
    bad = frame("user_daily", [daily("u1", D1, 1)]).with_columns(user_key=pl.lit(None, pl.String))
    with pytest.raises(ValueError, match="user_key"):
        store.write("user_daily", bad)
    with pytest.raises(ValueError, match="unknown table 'user_dialy'"):
        store.write("user_dialy", bad)
    # columns in another order are conformed, not refused
    ok = frame("user_daily", [daily("u1", D1, 1)])
    store.write("user_daily", ok.select(reversed(ok.columns)))
    assert store.pending_rows() == 1


def test_second_writer_on_same_directory_is_refused(store: TableStore) -> None:
    with pytest.raises(RuntimeError, match="another TableStore is writing"):
        TableStore(store.out_dir)


# ----------------------------------------------------------------------------------------------
# types and hive partitions


def alert_rows() -> list[dict[str, Any]]:
    return [
        {
            "alert_id": "a1",
            "rule": "struggling",
            "severity": "high",
            "user_key": "u1",
            "cohort_id": None,  # NULL string
            "date": D1,
            "event_time": T0,
            "evidence": '{"scores": [40, 50, 55]}',
            "recommendations": ["review fractions", "pair with a tutor"],
        },
        {
            "alert_id": "a2",
            "rule": "stagnation",
            "severity": "low",
            "user_key": "u2",
            "cohort_id": "c1",
            "date": D2,
            "event_time": None,  # NULL timestamp
            "recommendations": None,  # NULL list
        },
    ]


def test_hive_partitions_read_back_with_types_in_duckdb_and_polars(store: TableStore) -> None:
    out = store.out_dir
    store.write("alerts", frame("alerts", alert_rows()))
    store.write("user_daily", frame("user_daily", [daily("u1", D1, 4, avg_score=None)]))
    store.commit()
    assert sorted(p.name for p in (out / "parquet/alerts").iterdir()) == [
        "date=2024-03-01",
        "date=2024-03-02",
    ]

    # duckdb over the Parquet dataset: one `date` column, typed DATE; TIMESTAMPTZ; VARCHAR[]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    glob = out / "parquet/alerts/**/*.parquet"
    described = con.sql(f"DESCRIBE SELECT * FROM read_parquet('{glob}', hive_partitioning=true)")
    types = {r[0]: r[1] for r in described.fetchall()}
    assert list(types) == TABLES["alerts"].columns  # no duplicate `date`, table order
    assert types["date"] == "DATE"
    assert types["event_time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["recommendations"] == "VARCHAR[]"
    rows = con.execute(
        f"SELECT alert_id, date, event_time, recommendations, cohort_id "
        f"FROM read_parquet('{glob}', hive_partitioning=true) ORDER BY alert_id"
    ).fetchall()
    assert rows[0][1] == D1 and rows[0][2] == T0
    assert rows[0][3] == ["review fractions", "pair with a tutor"] and rows[0][4] is None
    assert rows[1][1:] == (D2, None, None, "c1")

    # polars over the same files: the table's exact schema, values equal to what was written
    scanned = pl.scan_parquet(str(glob), hive_partitioning=True).collect()
    assert scanned.columns == TABLES["alerts"].columns
    assert scanned.schema == pl.Schema(TABLES["alerts"].schema)
    assert scanned.sort("alert_id").equals(frame("alerts", alert_rows()))

    # DuckDB database: same names, SPEC types, primary key
    db_types = dict(
        duck(
            out,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'alerts'",
        )
    )
    assert db_types["date"] == "DATE" and db_types["recommendations"] == "VARCHAR[]"
    assert db_types["event_time"] == "TIMESTAMP WITH TIME ZONE"
    assert duck(out, "SELECT avg_score IS NULL, events FROM user_daily") == [(True, 4)]
    # every table exists in the database from the first commit on, empty ones too
    assert {r[0] for r in duck(out, "SELECT table_name FROM duckdb_tables()")} == set(TABLES)
    assert duck(out, "SELECT count(*) FROM late_events") == [(0,)]
    pk = duck(
        out,
        "SELECT constraint_column_names FROM duckdb_constraints() "
        "WHERE table_name = 'user_daily' AND constraint_type = 'PRIMARY KEY'",
    )
    assert pk == [(["user_key", "date"],)]


def test_timestamptz_round_trips_whatever_the_session_time_zone(store: TableStore) -> None:
    store.write("alerts", frame("alerts", alert_rows()[:1]))
    store.commit()
    con = duckdb.connect(str(store.db_path), read_only=True)
    try:
        con.execute("SET TimeZone = 'America/New_York'")
        # 2024-03-01T23:30Z as epoch microseconds, independent of the session zone
        assert con.execute("SELECT epoch_us(event_time) FROM alerts").fetchall() == [
            (int(T0.timestamp()) * 1_000_000,)
        ]
        as_text = con.execute("SELECT event_time::VARCHAR FROM alerts").fetchall()
        assert as_text == [("2024-03-01 18:30:00-05",)]  # same instant, shown in New York time
    finally:
        con.close()


# ----------------------------------------------------------------------------------------------
# keys that move between partitions


def skill_state(user: str, skill: str, as_of: datetime, slope: float) -> dict[str, Any]:
    return {
        "user_key": user,
        "skill": skill,
        "as_of": as_of,
        "trend_slope": slope,
        "date": as_of.date(),
    }


def test_snapshot_table_key_moves_partition_and_survives_restart(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with TableStore(out) as s:
        s.write(
            "user_skill_state",
            frame(
                "user_skill_state",
                [skill_state("u1", "math", T0, 1.0), skill_state("u2", "math", T0, 2.0)],
            ),
        )
        s.commit()
        # u1/math is re-evaluated a day later: its row moves from date=D1 to date=D2
        s.write(
            "user_skill_state",
            frame("user_skill_state", [skill_state("u1", "math", T0 + timedelta(days=1), -1.0)]),
        )
        s.commit()
    expected = [("u1", "math", D2, -1.0), ("u2", "math", D1, 2.0)]
    sql_cols = "user_key, skill, date, trend_slope"
    assert parquet_rows(out, "user_skill_state", sql_cols, "ORDER BY 1") == expected
    assert duck(out, f"SELECT {sql_cols} FROM user_skill_state ORDER BY 1") == expected

    # a new store loads the latest rows from disk: adding u3 keeps u1 and u2
    with TableStore(out) as s:
        s.write("user_skill_state", frame("user_skill_state", [skill_state("u3", "art", T0, 0.0)]))
    assert [r[0] for r in parquet_rows(out, "user_skill_state", "user_key", "ORDER BY 1")] == [
        "u1",
        "u2",
        "u3",
    ]
    assert duck(out, "SELECT count(*) FROM user_skill_state") == [(3,)]


def test_user_state_is_unpartitioned_with_lists(store: TableStore) -> None:
    out = store.out_dir
    rows: list[dict[str, Any]] = [
        {"user_key": "u1", "strengths": ["math"], "weaknesses": [], "struggling": False},
        {"user_key": "u2", "strengths": None, "weaknesses": ["art", "music"]},
    ]
    store.write("user_state", frame("user_state", rows))
    store.commit()
    store.write("user_state", frame("user_state", [{"user_key": "u1", "struggling": True}]))
    store.commit()
    files = list((out / "parquet/user_state").iterdir())
    assert len(files) == 1 and files[0].suffix == ".parquet"  # no date= directories
    got = (
        store.read("user_state")
        .sort("user_key")
        .select("user_key", "strengths", "weaknesses", "struggling")
    )
    assert got.rows() == [("u1", None, None, True), ("u2", None, ["art", "music"], None)]
    assert duck(out, "SELECT user_key, weaknesses, struggling FROM user_state ORDER BY 1") == [
        ("u1", None, True),
        ("u2", ["art", "music"], None),
    ]


def test_append_table_key_replayed_into_another_partition_moves(tmp_path: Path) -> None:
    # a rejected record replayed after a restart gets a new received_at, after midnight UTC
    out = tmp_path / "out"

    def rejected(day: date, detail: str) -> pl.DataFrame:
        return frame(
            "rejected_events",
            [
                {
                    "source_ref": "file:a.jsonl:7",
                    "reason": "unknown_type",
                    "detail": detail,
                    "date": day,
                }
            ],
        )

    with TableStore(out) as s:
        s.write("rejected_events", rejected(D1, "first"))
        s.commit()
    with TableStore(out) as s:  # the key index is rebuilt from disk
        s.write("rejected_events", rejected(D2, "replayed"))
        s.commit()
        assert s.read("rejected_events").select("date", "detail").rows() == [(D2, "replayed")]
    assert not (out / "parquet/rejected_events/date=2024-03-01").exists()
    assert duck(out, "SELECT date, detail FROM rejected_events") == [(D2, "replayed")]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["r1", "r2", "r3"]),
                st.sampled_from([D1, D2, D3]),
                st.integers(0, 9),
            ),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_any_sequence_of_upserts_matches_last_write_wins(
    tmp_path_factory: Any, commits: list[list[tuple[str, date, int]]]
) -> None:
    """Model: a dict key -> last (date, value); both tables must equal it after every commit."""
    out = tmp_path_factory.mktemp("prop")
    model: dict[str, tuple[date, int]] = {}
    with TableStore(out) as s:
        for batch in commits:
            for ref, day, value in batch:
                model[ref] = (day, value)
                s.write(
                    "late_events",
                    frame(
                        "late_events", [{"source_ref": ref, "date": day, "event_id": str(value)}]
                    ),
                )
                s.write(
                    "user_skill_state",
                    frame(
                        "user_skill_state",
                        [{"user_key": ref, "skill": "s", "date": day, "scored_events_30d": value}],
                    ),
                )
            s.commit()
            expected = sorted((k, d, v) for k, (d, v) in model.items())
            late = parquet_rows(
                out, "late_events", "source_ref, date, event_id::BIGINT", "ORDER BY 1"
            )
            skill = parquet_rows(
                out, "user_skill_state", "user_key, date, scored_events_30d", "ORDER BY 1"
            )
            assert late == expected and skill == expected
            assert (
                duck(out, "SELECT source_ref, date, event_id::BIGINT FROM late_events ORDER BY 1")
                == expected
            )


# ----------------------------------------------------------------------------------------------
# erasure


def test_delete_rows_removes_from_parquet_duckdb_and_buffer(store: TableStore) -> None:
    out = store.out_dir
    store.write(
        "user_daily",
        frame("user_daily", [daily("u1", D1, 1), daily("u1", D2, 2), daily("u2", D2, 3)]),
    )
    store.write("user_state", frame("user_state", [{"user_key": "u1"}, {"user_key": "u2"}]))
    store.commit()
    store.write("user_daily", frame("user_daily", [daily("u1", D3, 4)]))  # buffered only

    gone = pl.col("user_key") == "u1"
    assert store.delete_rows("user_daily", gone) == 3  # u1@D1, u1@D2 stored, u1@D3 buffered
    assert store.delete_rows("user_state", gone) == 1
    store.commit()  # the buffered u1 row must not come back
    assert parquet_rows(out, "user_daily", "user_key, date", "ORDER BY 2") == [("u2", D2)]
    assert duck(out, "SELECT user_key, date FROM user_daily") == [("u2", D2)]
    assert not (out / "parquet/user_daily/date=2024-03-01").exists()  # emptied partition removed
    assert duck(out, "SELECT user_key FROM user_state") == [("u2",)]
    assert store.read("user_state")["user_key"].to_list() == ["u2"]
    assert store.delete_rows("user_daily", gone) == 0


# ----------------------------------------------------------------------------------------------
# concurrent analyst, DuckDB lock


READER = textwrap.dedent(
    """
    import json, os, sys, time, duckdb
    out, stop = sys.argv[1], sys.argv[2]
    db = os.path.join(out, "learnstream.duckdb")
    glob = os.path.join(out, "parquet", "user_daily", "**", "*.parquet")
    seen = {"duck": [], "parquet": [], "dup": 0, "retries": 0}
    while not os.path.exists(stop):
        try:
            con = duckdb.connect(db, read_only=True)
            try:
                n, k = con.execute("SELECT count(*), count(DISTINCT (user_key, date)) "
                                   "FROM user_daily").fetchall()[0]
            finally:
                con.close()
            seen["duck"].append(n); seen["dup"] += n != k
            n, k = duckdb.sql(f"SELECT count(*), count(DISTINCT (user_key, date)) FROM "
                              f"read_parquet('{glob}', hive_partitioning=true)").fetchall()[0]
            seen["parquet"].append(n); seen["dup"] += n != k
        except (duckdb.IOException, duckdb.CatalogException, duckdb.InvalidInputException):
            seen["retries"] += 1  # locked by the writer, not created yet, or a file swapped out
        time.sleep(0.005)
    print(json.dumps(seen))
    """
)


def test_readonly_reader_in_another_process_sees_consistent_counts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(out), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        with TableStore(out, lock_timeout_s=30) as s:
            for i in range(40):
                # each commit adds 10 new user-days to ONE partition and rewrites 3 old ones, so
                # any consistent view holds a multiple of 10 rows with no key twice
                day = [D1, D2, D3][i % 3]
                new = [daily(f"u{i:03d}-{j}", day, i) for j in range(10)]
                old = [daily(f"u{k:03d}-0", day, 100 + i) for k in range(i % 3, i, 3)][:3]
                s.write("user_daily", frame("user_daily", new + old))
                s.commit()
    finally:
        stop.touch()
        stdout, _ = reader.communicate(timeout=60)
    seen = json.loads(stdout)
    assert reader.returncode == 0
    assert seen["dup"] == 0
    assert len(seen["duck"]) >= 5 and len(seen["parquet"]) >= 5
    for counts in (seen["duck"], seen["parquet"]):
        assert all(n % 10 == 0 and 0 < n <= 400 for n in counts)
        assert counts == sorted(counts)  # never goes backwards
    assert duck(out, "SELECT count(*) FROM user_daily") == [(400,)]


HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    print("open", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def test_commit_waits_for_a_reader_lock_and_keeps_the_buffer_on_timeout(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with TableStore(out, lock_timeout_s=0.3) as s:
        s.write("user_daily", frame("user_daily", [daily("u1", D1, 1)]))
        s.commit()  # creates the database
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(s.db_path), "1.5"], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        s.write("user_daily", frame("user_daily", [daily("u1", D1, 2)]))
        with pytest.raises(TimeoutError, match="locked by another process"):
            s.commit()
        assert s.pending_rows() == 1  # kept for the next commit
        s.lock_timeout_s = 30  # now wait the reader out
        s.commit()
        holder.wait(timeout=30)
    assert duck(out, "SELECT events FROM user_daily") == [(2,)]
    assert parquet_rows(out, "user_daily", "events") == [(2,)]


# ----------------------------------------------------------------------------------------------
# crashes


def test_stray_staging_is_invisible_to_readers_and_cleaned_at_start(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with TableStore(out) as s:
        s.write("user_daily", frame("user_daily", [daily("u1", D1, 1)]))
    # what a kill in the middle of writing leaves: a complete file holding a duplicate of u1@D1,
    # and a torn one, in a staging directory without a manifest
    leftover = out / ".staging" / "deadbeef" / "new" / "0"
    leftover.mkdir(parents=True)
    frame("user_daily", [daily("u1", D1, 99)]).write_parquet(leftover / "part-x.parquet")
    (leftover / "part-y.parquet").write_bytes(b"PAR1 torn")
    # readers of the dataset glob do not reach staging
    assert parquet_rows(out, "user_daily", "user_key, events") == [("u1", 1)]
    assert pl.scan_parquet(
        str(out / "parquet/user_daily/**/*.parquet"), hive_partitioning=True
    ).collect()["events"].to_list() == [1]
    with TableStore(out) as s:
        assert not (out / ".staging" / "deadbeef").exists()
        assert s.read("user_daily")["events"].to_list() == [1]


def test_swap_interrupted_between_renames_is_rolled_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without RENAME_EXCHANGE a swap is two renames; a crash between them leaves the partition
    missing, and the next start moves the complete new directory into place."""
    out = tmp_path / "out"
    with TableStore(out) as s:
        s.write("user_daily", frame("user_daily", [daily("u1", D1, 1), daily("u2", D1, 2)]))

    real_rename = os.rename
    calls: list[str] = []

    def crash_after_first_rename(src: Any, dst: Any) -> None:
        calls.append(str(dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill between the two renames")
        real_rename(src, dst)

    monkeypatch.setattr(tables_mod, "exchange_paths", lambda a, b: False)
    monkeypatch.setattr(tables_mod.os, "rename", crash_after_first_rename)
    with pytest.raises(KeyboardInterrupt), TableStore(out) as s:
        s.write("user_daily", frame("user_daily", [daily("u1", D1, 10)]))
        s.commit()
    monkeypatch.undo()
    assert not (out / "parquet/user_daily/date=2024-03-01").exists()  # the crash window

    with TableStore(out) as s:
        got = s.read("user_daily").sort("user_key").select("user_key", "events").rows()
    assert got == [("u1", 10), ("u2", 2)]
    assert not any((out / ".staging").iterdir())


CRASHER = textwrap.dedent(
    """
    import sys, datetime as dt, polars as pl
    from schemas.tables import TABLES
    from sinks.tables import TableStore
    out, seed = sys.argv[1], int(sys.argv[2])
    utc = dt.timezone.utc
    s = TableStore(out)
    i = 0
    while True:
        i += 1
        day = dt.date(2024, 3, 1 + (i % 3))
        keys = pl.Series([f"u{(seed * 7 + i + j) % 50:02d}" for j in range(40)])
        s.write("user_daily", TABLES["user_daily"].conform(pl.DataFrame(
            {"user_key": keys, "date": [day] * 40, "events": [i] * 40})))
        s.write("user_skill_state", TABLES["user_skill_state"].conform(pl.DataFrame(
            {"user_key": keys, "skill": ["math"] * 40, "date": [day] * 40})))
        s.write("late_events", TABLES["late_events"].conform(pl.DataFrame(
            {"source_ref": keys, "date": [day] * 40})))
        s.commit()
        print(i, flush=True)
    """
)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_any_moment_leaves_one_row_per_key(tmp_path: Path, seed: int) -> None:
    out = tmp_path / "out"
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHER, str(out), str(seed + attempt)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for _ in range(2 + seed):  # let a few commits land, then kill mid-way through another
            assert proc.stdout.readline()
        time.sleep(0.003 * ((seed * 5 + attempt * 3) % 10))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # before any cleanup, straight after the crash: no key twice in any dataset
        for table, key in (
            ("user_daily", "user_key, date"),
            ("user_skill_state", "user_key, skill"),
            ("late_events", "source_ref"),
        ):
            [(n, k)] = parquet_rows(out, table, f"count(*), count(DISTINCT ({key}))")
            assert n == k and n > 0
    with TableStore(out) as s:
        assert not any((out / ".staging").iterdir())
        for name in ("user_daily", "user_skill_state", "late_events"):
            got = s.read(name)
            assert got.height == got.unique(subset=list(TABLES[name].key)).height
        # the snapshot table's in-memory state starts from disk: 50 keys at most, each once
        assert s.read("user_skill_state").height <= 50
    # DuckDB replays its WAL after the kill; the primary key holds
    assert duck(out, "SELECT count(*) = count(DISTINCT (user_key, date)) FROM user_daily") == [
        (True,)
    ]


# ----------------------------------------------------------------------------------------------
# Bytewax sink


def test_tables_sink_in_a_flow(tmp_path: Path) -> None:
    out = tmp_path / "out"
    items = [
        ("user_daily", frame("user_daily", [daily("u1", D1, 1), daily("u2", D1, 2)])),
        ("user_state", frame("user_state", [{"user_key": "u1", "days_active": 1}])),
        ("user_daily", frame("user_daily", [daily("u1", D1, 5)])),  # replaces u1@D1
        ("alerts", frame("alerts", alert_rows())),
    ]
    flow = Dataflow("tables_sink")
    op_input = __import__("bytewax.operators", fromlist=["input"])
    stream = op_input.input("in", flow, TestingSource(items))
    op_input.output("out", stream, TablesSink(out, commit_interval=timedelta(0)))
    run_main(flow)
    assert duck(out, "SELECT user_key, events FROM user_daily ORDER BY 1") == [("u1", 5), ("u2", 2)]
    assert parquet_rows(out, "user_state", "user_key, days_active") == [("u1", 1)]
    assert duck(out, "SELECT count(*) FROM alerts") == [(2,)]


def test_tables_sink_resumes_after_abort_with_one_row_per_key(tmp_path: Path) -> None:
    """Commit on every batch (output runs ahead of snapshots), abort, resume: the replayed items
    upsert the same keys, so every key still has one row with its last value."""
    import bytewax.operators as op

    out = tmp_path / "out"
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    items: list[Any] = []
    for i in range(8):
        items.append(
            ("user_daily", frame("user_daily", [daily("u1", D1, i), daily(f"v{i}", D2, i)]))
        )
        items.append(("user_state", frame("user_state", [{"user_key": "u1", "days_active": i}])))
        if i == 5:
            items.append(TestingSource.ABORT())
    seen: list[str] = []

    def build() -> Dataflow:
        flow = Dataflow("tables_resume")
        stream = op.input("in", flow, TestingSource(items))
        stream = op.inspect("seen", stream, lambda _step, item: seen.append(item[0]))
        op.output("out", stream, TablesSink(out, commit_interval=timedelta(0)))
        return flow

    # one long epoch: no snapshot is taken before the abort, so the resume replays everything
    config = RecoveryConfig(str(recovery))
    run_main(build(), epoch_interval=timedelta(hours=1), recovery_config=config)  # stops at ABORT
    assert len(seen) == 12  # items 0..5, two frames each
    assert duck(out, "SELECT events FROM user_daily WHERE user_key = 'u1'") == [(5,)]
    assert duck(out, "SELECT count(*) FROM user_daily") == [(7,)]  # u1 + v0..v5

    run_main(build(), epoch_interval=timedelta(hours=1), recovery_config=config)
    assert len(seen) == 12 + 16  # the resumed run replayed items 0..5 and went on to 7

    assert duck(out, "SELECT events FROM user_daily WHERE user_key = 'u1'") == [(7,)]
    assert duck(out, "SELECT count(*), count(DISTINCT user_key) FROM user_daily") == [(9, 9)]
    assert parquet_rows(out, "user_daily", "count(*)") == [(9,)]
    assert parquet_rows(out, "user_state", "user_key, days_active") == [("u1", 7)]


def test_tables_sink_names_an_unknown_frame(tmp_path: Path) -> None:
    import bytewax.operators as op

    flow = Dataflow("tables_bad")
    stream = op.input("in", flow, TestingSource([("user_daily", pl.DataFrame({"x": [1]}))]))
    op.output("out", stream, TablesSink(tmp_path, commit_interval=timedelta(0)))
    with pytest.raises(Exception, match=r"columns \['x'\] that match no table"):
        run_main(flow)


def test_tables_sink_has_one_writer_with_two_workers(tmp_path: Path) -> None:
    """Two workers in one process: only the worker owning the single partition opens a
    TableStore (a second one would fail on the directory's writer lock)."""
    import bytewax.operators as op
    from bytewax.testing import cluster_main

    out = tmp_path / "out"
    items = [("user_daily", frame("user_daily", [daily(f"u{i}", D1, i)])) for i in range(6)]
    flow = Dataflow("tables_two_workers")
    stream = op.input("in", flow, TestingSource(items))
    # spread the items over both workers before the sink, so both route to the one partition
    spread = op.redistribute("spread", stream)
    op.output("out", spread, TablesSink(out, commit_interval=timedelta(0)))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert duck(out, "SELECT count(*), sum(events) FROM user_daily") == [(6, 15)]  # 0+1+...+5


def test_snapshot_table_small_change_of_a_large_table_in_duckdb(store: TableStore) -> None:
    """100 users, then 1 changed (1 * 50 <= 100: DuckDB takes the DELETE + INSERT path) and
    then 60 changed (full rewrite path): both leave exactly the in-memory state."""
    users = [
        {"user_key": f"u{i:03d}", "days_active": i, "strengths": [f"s{i}"]} for i in range(100)
    ]
    store.write("user_state", frame("user_state", users))
    store.commit()
    store.write("user_state", frame("user_state", [{"user_key": "u007", "days_active": 70}]))
    store.commit()
    out = store.out_dir
    assert duck(out, "SELECT count(*), sum(days_active) FROM user_state") == [(100, 4950 + 63)]
    assert duck(out, "SELECT strengths FROM user_state WHERE user_key = 'u007'") == [(None,)]
    store.write("user_state", frame("user_state", [{"user_key": f"u{i:03d}"} for i in range(60)]))
    store.commit()
    # days_active of u060..u099 remain: 60 + ... + 99 = 40 * (60 + 99) / 2 = 3180
    assert duck(out, "SELECT count(*), sum(days_active) FROM user_state") == [(100, 3180)]
    assert store.read("user_state")["days_active"].sum() == 3180


def test_retention_style_delete_by_date_and_rewrite_of_a_moved_key(store: TableStore) -> None:
    out = store.out_dir
    store.write("alerts", frame("alerts", alert_rows()))  # a1 on D1, a2 on D2
    store.commit()
    assert store.delete_rows("alerts", pl.col("date") < D2) == 1
    assert not (out / "parquet/alerts/date=2024-03-01").exists()
    # a1 comes back on D3: nothing stale in the key index moves or duplicates it
    store.write("alerts", frame("alerts", [{**alert_rows()[0], "date": D3}]))
    store.commit()
    assert parquet_rows(out, "alerts", "alert_id, date", "ORDER BY 1") == [("a1", D3), ("a2", D2)]
    assert duck(out, "SELECT alert_id, date FROM alerts ORDER BY 1") == [("a1", D3), ("a2", D2)]


def test_without_rename_exchange_the_two_rename_swap_gives_the_same_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tables_mod, "exchange_paths", lambda a, b: False)
    out = tmp_path / "out"
    with TableStore(out) as s:
        for events in (1, 2, 3):
            s.write("user_daily", frame("user_daily", [daily("u1", D1, events)]))
            s.write(
                "user_skill_state",
                frame(
                    "user_skill_state",
                    [skill_state("u1", "math", T0 + timedelta(days=events), float(events))],
                ),
            )
            s.commit()
    assert parquet_rows(out, "user_daily", "events") == [(3,)]
    assert parquet_rows(out, "user_skill_state", "date, trend_slope") == [(date(2024, 3, 4), 3.0)]
    assert sorted(p.name for p in (out / "parquet/user_skill_state").iterdir()) == [
        "date=2024-03-04"
    ]
    assert not any((out / ".staging").iterdir())


def test_snapshot_carries_what_is_not_durable_and_a_resumed_sink_commits_it(tmp_path: Path) -> None:
    # commit_interval 1 h: nothing is committed by time. With a recovery store the snapshot
    # carries the buffered row instead of waiting for a commit; a partition built from that
    # snapshot commits it before anything else (the crashed process never did).
    sink = TablesSink(tmp_path, commit_interval=timedelta(hours=1), drain_on_snapshot=True)
    part = sink.build_part("out", "tables", None)
    part.write_batch([frame("user_daily", [daily("u1", D1, 1)])])
    state = part.snapshot()
    assert [(name, f.height) for name, f in state["unsaved"]] == [("user_daily", 1)]
    assert state["commits"] == 0 and not data_files(tmp_path)
    part._committer.shutdown(wait=True)  # the process dies: no close(), nothing committed
    part._store.close()
    resumed = sink.build_part("out", "tables", pickle.loads(pickle.dumps(state)))
    assert parquet_rows(tmp_path, "user_daily", "user_key, events") == [("u1", 1)]
    resumed.close()


def test_snapshot_above_carry_rows_commits_and_waits(tmp_path: Path) -> None:
    sink = TablesSink(tmp_path, commit_interval=timedelta(hours=1), carry_rows=1)
    part = sink.build_part("out", "tables", None)
    part.write_batch([frame("user_daily", [daily("u1", D1, 1), daily("u2", D1, 2)])])
    state = part.snapshot()
    assert state["commits"] == 1 and "unsaved" not in state
    assert parquet_rows(tmp_path, "user_daily", "count(*)") == [(2,)]
    part.close()


def test_snapshot_without_a_recovery_store_neither_carries_nor_waits(tmp_path: Path) -> None:
    sink = TablesSink(tmp_path, commit_interval=timedelta(hours=1), drain_on_snapshot=False)
    part = sink.build_part("out", "tables", None)
    part.write_batch([frame("user_daily", [daily("u1", D1, 1)])])
    state = part.snapshot()
    assert state == {"commits": 0, "committed_at": None}
    assert not data_files(tmp_path)
    part.close()  # committed at close
    assert parquet_rows(tmp_path, "user_daily", "user_key, events") == [("u1", 1)]


def test_make_flow_drains_tables_when_recovery_is_possible(tmp_path: Path) -> None:
    from learnstream.config import Settings
    from learnstream.runner import RunSpec, make_flow

    def drains(**kw: Any) -> bool:
        spec = RunSpec(settings=Settings(), out_dir=tmp_path, secret=b"k", paths=[tmp_path / "x"], **kw)
        flow = make_flow(spec)
        sinks = [s for s in _walk(flow.substeps) if isinstance(getattr(s, "sink", None), TablesSink)]
        assert len(sinks) == 1
        return bool(sinks[0].sink.drain_on_snapshot)

    assert drains(recovery_dir=tmp_path / "rec")
    assert drains(external_recovery=True)  # python -m bytewax.run: its -r decides
    assert not drains()


def _walk(steps: list[Any]) -> Iterator[Any]:
    for step in steps:
        yield step
        yield from _walk(getattr(step, "substeps", []))
