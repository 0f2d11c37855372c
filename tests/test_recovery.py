"""Crash recovery of a file run (ARCHITECTURE "Exactly-once outputs", SPEC §2 and §7).

`learnstream run --recovery-dir DIR` is started as a child process and killed with SIGKILL at
seeded random moments — some purely timed, one while a table commit is staging files, one right
after the run's final `pipeline_runs` row reached Parquet — and restarted with the same arguments
until it finishes. The final tables must equal those of an uninterrupted run without recovery:
every row and every value, except processing-time values (`emitted_at`, `received_at`, the
`date` partition of `rejected_events` derived from `received_at`, and `pipeline_runs`' run-level
`run_id`/`started_at`/`ended_at`/`date`), in Parquet and in DuckDB, with one row per key.

What a restart means here: the same run continued, not a new one. So `pipeline_runs` has exactly
one row, its counts cover the input exactly once (records_in = non-blank lines =
accepted + rejected + duplicates + late), and its `started_at` is the first attempt's start.

Settings: 200 users x 21 days (about 14.4k lines: 2% bad records, 2% duplicates, 20 late events
appended), `LEARNSTREAM_BATCH_SIZE=1000` (15 micro-batches), `LEARNSTREAM_SNAPSHOT_INTERVAL=1s`
(Bytewax epoch and table commit interval).

Sharp edge: progress is read from Bytewax 0.21's recovery partition (`part-0.sqlite3`, tables
`commits` and `exs`), read-only; another Bytewax version may lay it out differently.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from schemas.tables import TABLES
from sources.generator import write_events
from tests.crash import kill_until_done
from tests.outputs import read_duckdb_table, read_parquet_table

SECRET = "recovery-test-secret"
ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "LEARNSTREAM_PSEUDONYM_KEY": SECRET,
    "LEARNSTREAM_BATCH_SIZE": "250",
    "LEARNSTREAM_SNAPSHOT_INTERVAL": "1s",
}
SEED = 20261127
RUN_TIMEOUT_S = 900
#: values that depend on processing time, not on the input
PROCESSING_TIME_COLUMNS = {"emitted_at", "received_at"}
RUN_LEVEL_COLUMNS = {"run_id", "started_at", "ended_at", "date"}


def run_command(events: Path, out: Path, recovery: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "learnstream.cli", "run", "--source", f"file:{events}", "--out", str(out)]
    if recovery is not None:
        cmd += ["--recovery-dir", str(recovery)]
    return cmd


def child_env() -> dict[str, str]:
    return {**os.environ, **ENV}


def comparable(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """Sorted by key, without processing-time values.

    `timestamp_in_future` details name the distance to processing time ("is 30682992611.8 s after
    processing time"); that number is blanked, the rest of the detail is compared.
    """
    table = TABLES[name]
    drop = set(PROCESSING_TIME_COLUMNS)
    if name == "pipeline_runs":
        drop |= RUN_LEVEL_COLUMNS
    if name == "rejected_events":
        drop.add("date")  # the UTC date of received_at
        frame = frame.with_columns(
            detail=pl.when(pl.col("reason") == "timestamp_in_future")
            .then(pl.col("detail").str.replace(r" is [0-9.]+ s after ", " is _ s after "))
            .otherwise(pl.col("detail"))
        )
    return frame.sort(list(table.key)).drop([c for c in drop if c in frame.columns])


def assert_same(got: pl.DataFrame, want: pl.DataFrame, what: str) -> None:
    """Exact equality (values, types, row order after sorting by key), naming the table."""
    try:
        assert_frame_equal(got, want, check_exact=True)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}") from None


def one_row_per_key(frame: pl.DataFrame, name: str) -> bool:
    return not frame.select(TABLES[name].key).is_duplicated().any()


@dataclass
class CrashRun:
    events: Path
    out: Path
    recovery: Path
    lines: int
    #: wall-clock time of the first kill
    first_kill_at: datetime | None = None
    #: (trigger, seconds into the attempt, committed epoch when killed)
    kills: list[tuple[str, float, int]] = field(default_factory=list)
    executions: list[tuple[int, int]] = field(default_factory=list)
    stdout: str = ""


def crash_and_resume(events: Path, base: Path, lines: int, full_run_s: float) -> CrashRun:
    """Kill the run at planned moments, restarting it with the same arguments, until it finishes.

    Plan (seeded): a timed kill, a kill while a table commit is staging files, another timed kill;
    and, until it has happened, a kill right after the final `pipeline_runs` row reached Parquet
    (see `tests.crash.kill_until_done`).
    """
    out, recovery = base / "out", base / "recovery"
    crashes = kill_until_done(
        run_command(events, out, recovery), child_env(), out, recovery,
        full_run_s=full_run_s, rng=random.Random(SEED), plan=("timed", "mid-commit", "timed"),
        timeout_s=RUN_TIMEOUT_S, max_kills=6,
    )
    return CrashRun(events, out, recovery, lines, crashes.first_kill_at, crashes.kills,
                    crashes.executions, crashes.stdout)


def _non_blank_lines(path: Path) -> int:
    return sum(1 for line in path.read_bytes().split(b"\n") if line not in (b"", b"\r"))


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recovery-input") / "events.jsonl"
    write_events(path, users=200, days=21, seed=7, bad_fraction=0.02, duplicate_fraction=0.02)
    late = [
        json.dumps({"event_id": f"late-{i}", "user_id": f"late-user-{i % 3}", "type": "lesson_completed",
                    "timestamp": f"2026-03-02T10:{i:02d}:00Z"})
        for i in range(20)
    ]
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(late) + "\n")
    return path


@dataclass
class Uninterrupted:
    out: Path
    seconds: float


@pytest.fixture(scope="module")
def uninterrupted_run(events: Path, tmp_path_factory: pytest.TempPathFactory) -> Uninterrupted:
    """The same input, no recovery, never killed: the reference output."""
    out = tmp_path_factory.mktemp("recovery-baseline") / "out"
    started = time.monotonic()
    done = subprocess.run(run_command(events, out, None), env=child_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return Uninterrupted(out, time.monotonic() - started)


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run: Uninterrupted) -> Path:
    return uninterrupted_run.out


@pytest.fixture(scope="module")
def crashed(
    events: Path, uninterrupted_run: Uninterrupted, tmp_path_factory: pytest.TempPathFactory
) -> CrashRun:
    return crash_and_resume(events, tmp_path_factory.mktemp("recovery-crash"),
                            _non_blank_lines(events), uninterrupted_run.seconds)


def test_the_run_was_really_killed_and_resumed_from_snapshots(crashed: CrashRun) -> None:
    print("kills (trigger, seconds into attempt, committed epoch):", crashed.kills)
    print("executions (number, resume epoch):", crashed.executions)
    moments = [k[0] for k in crashed.kills]
    # killed right after the final row reached Parquet at least once (other planned kills may
    # come after it, in the attempts that replay from the last snapshot)
    assert "final row written" in moments, crashed.kills
    assert {"timed", "mid-commit"} & set(moments), crashed.kills  # killed in the middle too
    # one Bytewax execution per attempt; restarts resumed from a snapshot, not from the start
    assert len(crashed.executions) == len(crashed.kills) + 1, crashed.executions
    resumed = [epoch for _, epoch in crashed.executions[1:]]
    assert all(epoch > 1 for epoch in resumed), crashed.executions
    assert resumed == sorted(resumed), crashed.executions


@pytest.mark.parametrize("name", [n for n in TABLES if n != "pipeline_runs"])
def test_tables_equal_an_uninterrupted_run(crashed: CrashRun, uninterrupted: Path, name: str) -> None:
    want = read_parquet_table(uninterrupted, name)
    if name in ("user_daily", "alerts", "rejected_events", "late_events"):
        assert len(want) > 0, f"{name}: the uninterrupted run wrote no rows; the comparison is void"
    for label, got in (
        ("parquet", read_parquet_table(crashed.out, name)),
        ("duckdb", read_duckdb_table(crashed.out, name)),
        ("uninterrupted duckdb", read_duckdb_table(uninterrupted, name)),
    ):
        assert one_row_per_key(got, name), f"{name} ({label}): a key has several rows"
        assert_same(comparable(got, name), comparable(want, name), f"{name} ({label})")


def test_accounting_covers_the_input_exactly_once(crashed: CrashRun, uninterrupted: Path) -> None:
    want = read_parquet_table(uninterrupted, "pipeline_runs")
    for label, runs in (("parquet", read_parquet_table(crashed.out, "pipeline_runs")),
                        ("duckdb", read_duckdb_table(crashed.out, "pipeline_runs"))):
        for row in runs.iter_rows(named=True):
            assert row["records_in"] == crashed.lines, label
            assert row["records_in"] == row["accepted"] + row["rejected"] + row["duplicates"] + row["late"]
        assert_same(comparable(runs, "pipeline_runs").unique(), comparable(want, "pipeline_runs"),
                    f"pipeline_runs ({label})")
    base = want.row(0, named=True)
    assert base["records_in"] == crashed.lines
    assert base["late"] == 20 and base["duplicates"] > 0 and base["rejected"] > 0
    assert base["rejected"] == len(read_parquet_table(crashed.out, "rejected_events"))
    assert base["late"] == len(read_parquet_table(crashed.out, "late_events"))
    assert base["alerts"] == len(read_parquet_table(crashed.out, "alerts"))


def test_a_restarted_run_is_the_same_run(crashed: CrashRun) -> None:
    """One pipeline_runs row for the whole run, started when the first attempt started."""
    for label, runs in (("parquet", read_parquet_table(crashed.out, "pipeline_runs")),
                        ("duckdb", read_duckdb_table(crashed.out, "pipeline_runs"))):
        assert len(runs) == 1, f"pipeline_runs ({label}) has {len(runs)} rows for one run:\n{runs}"
        row = runs.row(0, named=True)
        assert crashed.first_kill_at is not None
        assert row["started_at"] < crashed.first_kill_at, (label, row["started_at"], crashed.kills)
        assert row["ended_at"] > crashed.first_kill_at, label


def test_rerunning_a_finished_run_changes_nothing(crashed: CrashRun, tmp_path: Path) -> None:
    """The same arguments once more after the run completed: no second run, the same tables."""
    out, recovery = tmp_path / "out", tmp_path / "recovery"
    shutil.copytree(crashed.out, out)
    shutil.copytree(crashed.recovery, recovery)
    done = subprocess.run(run_command(crashed.events, out, recovery), env=child_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in TABLES:
        before = comparable(read_parquet_table(crashed.out, name), name)
        after = comparable(read_parquet_table(out, name), name)
        if name == "pipeline_runs":
            assert len(read_parquet_table(out, name)) == len(read_parquet_table(crashed.out, name))
        assert_same(after, before, name)


def test_a_restart_with_another_shard_count_is_refused(crashed: CrashRun, tmp_path: Path) -> None:
    """State is kept per shard: resuming with another LEARNSTREAM_SHARDS would lose users' state,
    so the run exits 2 with one line naming both counts and the fix."""
    out, recovery = tmp_path / "out", tmp_path / "recovery"
    shutil.copytree(crashed.out, out)
    shutil.copytree(crashed.recovery, recovery)
    recorded = json.loads((recovery / "learnstream-run.json").read_text())["shards"]
    other = recorded + 1
    done = subprocess.run(run_command(crashed.events, out, recovery), env={**child_env(), "LEARNSTREAM_SHARDS": str(other)},
                          cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"shards={other}" in lines[0] and f"shards={recorded}" in lines[0]
    assert f"LEARNSTREAM_SHARDS={recorded}" in lines[0]
