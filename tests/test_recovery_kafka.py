"""Crash recovery of a Kafka run (ARCHITECTURE "Exactly-once outputs", SPEC §2 and §7).

Generated events (100 users x 14 days, 2 % bad records, 2 % duplicates) are produced once, keyed
by `user_id`, to a fresh 3-partition events topic on the session's Tansu broker. The same
`learnstream run --source kafka --stop-at-end --recovery-dir DIR` is started as a child process,
killed with SIGKILL at seeded moments (a timed kill, a kill while a table commit is staging files,
a kill right after the final `pipeline_runs` row reached Parquet — each only once the attempt has
committed a Bytewax snapshot of its own) and restarted with the same arguments until it exits 0.

The reference is an uninterrupted `--stop-at-end` run without recovery on the same topic (same
offsets, so `source_ref` is compared too). Tables must be equal except processing-time values
(`emitted_at`, `received_at`, the `date` of `rejected_events`, the number in `timestamp_in_future`
details, `pipeline_runs`' `run_id`/`started_at`/`ended_at`/`date`); floats to 1e-9 relative
(Kafka batches depend on fetch timing, so sums may be added in another order). One row per key in
Parquet and DuckDB; `pipeline_runs` covers every record exactly once.

Kafka outputs are at-least-once (README): the crashed run's alerts topic must hold every alert of
the table, nothing else, and a repeated message must be a copy of the same alert_id (same key,
same value apart from `emitted_at`).

Settings: `LEARNSTREAM_BATCH_SIZE=500`, `LEARNSTREAM_SNAPSHOT_INTERVAL=1s`. Progress is read from
Bytewax 0.21's recovery partition (see `tests/test_recovery.py`, whose readers are reused).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from confluent_kafka import Producer
from polars.testing import assert_frame_equal

from learnstream.broker import LocalBroker
from schemas.tables import TABLES
from sources.generator import write_events
from tests.crash import kill_until_done
from tests.test_e2e_kafka import (
    Topics,
    _check_alert_topic,
    json_values,
    new_topics,
    user_key_partition,
)
from tests.test_recovery import (
    comparable,
    one_row_per_key,
    read_duckdb_table,
    read_parquet_table,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "LEARNSTREAM_PSEUDONYM_KEY": "kafka-recovery-secret",
    "LEARNSTREAM_BATCH_SIZE": "500",
    "LEARNSTREAM_SNAPSHOT_INTERVAL": "1s",
}
SEED = 20261128
PARTITIONS = 3
RUN_TIMEOUT_S = 300

ReadTopic = Callable[[str, str], list[tuple[int, int, bytes | None, bytes | None]]]
def run_command(bootstrap: str, topics: Topics, out: Path, recovery: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "learnstream.cli", "run", "--source", "kafka", "--bootstrap", bootstrap,
           "--stop-at-end", "--out", str(out), *topics.args()]
    if recovery is not None:
        cmd += ["--recovery-dir", str(recovery)]
    return cmd


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    return {**env, **ENV}


@dataclass
class Input:
    events: str
    lines: int


@pytest.fixture(scope="module")
def events_topic(broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory) -> Input:
    path = tmp_path_factory.mktemp("kafka-recovery-input") / "events.jsonl"
    write_events(path, users=100, days=14, seed=13, bad_fraction=0.02, duplicate_fraction=0.02)
    topic = f"rk.events.{uuid.uuid4().hex[:8]}"
    broker.create_topics([topic], partitions=PARTITIONS)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
    lines = 0
    for line in path.read_bytes().split(b"\n"):
        if line:
            key, partition = user_key_partition(line, gappy=False)
            producer.produce(topic, line, key, partition=partition)
            lines += 1
    assert producer.flush(30) == 0
    return Input(topic, lines)


@dataclass
class Uninterrupted:
    out: Path
    seconds: float


@pytest.fixture(scope="module")
def uninterrupted(broker: LocalBroker, events_topic: Input,
                  tmp_path_factory: pytest.TempPathFactory) -> Uninterrupted:
    """The same topic, no recovery, never killed: the reference output."""
    out = tmp_path_factory.mktemp("kafka-recovery-baseline") / "out"
    topics = new_topics(broker, events_topic.events, "base")
    started = time.monotonic()
    done = subprocess.run(run_command(broker.bootstrap, topics, out, None), env=child_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return Uninterrupted(out, time.monotonic() - started)


@dataclass
class CrashRun:
    out: Path
    recovery: Path
    topics: Topics
    #: (moment, seconds into the attempt, committed epoch when killed)
    kills: list[tuple[str, float, int]]
    #: (Bytewax execution, resume epoch)
    executions: list[tuple[int, int]]
    #: highest committed epoch (one snapshot per epoch)
    epochs: int


@pytest.fixture(scope="module")
def crashed(broker: LocalBroker, events_topic: Input, uninterrupted: Uninterrupted,
            tmp_path_factory: pytest.TempPathFactory) -> CrashRun:
    """Kill the run at seeded moments, restarting it with the same arguments, until it exits 0.

    Plan: a timed kill, a kill while a table commit is staging files, and (until it happened) a
    kill right after the final `pipeline_runs` row reached Parquet (`tests.crash.kill_until_done`).
    """
    base = tmp_path_factory.mktemp("kafka-recovery-crash")
    out, recovery = base / "out", base / "recovery"
    topics = new_topics(broker, events_topic.events, "crash")
    crashes = kill_until_done(
        run_command(broker.bootstrap, topics, out, recovery), child_env(), out, recovery,
        full_run_s=uninterrupted.seconds, rng=random.Random(SEED), plan=("timed", "mid-commit"),
        timeout_s=RUN_TIMEOUT_S, max_kills=5,
    )
    return CrashRun(out, recovery, topics, crashes.kills, crashes.executions, crashes.epochs)


def test_the_run_was_really_killed_and_resumed_from_snapshots(crashed: CrashRun) -> None:
    print("kills (moment, seconds into attempt, committed epoch):", crashed.kills)
    print("executions (number, resume epoch):", crashed.executions, "last committed epoch:", crashed.epochs)
    moments = [k[0] for k in crashed.kills]
    assert "final row written" in moments, crashed.kills  # other planned kills may follow it
    assert {"timed", "mid-commit"} & set(moments), crashed.kills
    assert len(crashed.executions) == len(crashed.kills) + 1, crashed.executions
    resumed = [epoch for _, epoch in crashed.executions[1:]]
    assert all(epoch > 1 for epoch in resumed), crashed.executions
    assert resumed == sorted(resumed), crashed.executions


def assert_close(got: pl.DataFrame, want: pl.DataFrame, what: str) -> None:
    try:
        assert_frame_equal(got, want, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}") from None


@pytest.mark.parametrize("name", [n for n in TABLES if n != "pipeline_runs"])
def test_tables_equal_an_uninterrupted_run(crashed: CrashRun, uninterrupted: Uninterrupted, name: str) -> None:
    want = read_parquet_table(uninterrupted.out, name)
    if name in ("user_daily", "alerts", "rejected_events"):
        assert len(want) > 0, f"{name}: the uninterrupted run wrote no rows; the comparison is void"
    for label, got in (
        ("parquet", read_parquet_table(crashed.out, name)),
        ("duckdb", read_duckdb_table(crashed.out, name)),
        ("uninterrupted duckdb", read_duckdb_table(uninterrupted.out, name)),
    ):
        assert one_row_per_key(got, name), f"{name} ({label}): a key has several rows"
        assert_close(comparable(got, name), comparable(want, name), f"{name} ({label})")


def test_accounting_covers_the_input_exactly_once(
    crashed: CrashRun, uninterrupted: Uninterrupted, events_topic: Input
) -> None:
    want = read_parquet_table(uninterrupted.out, "pipeline_runs")
    assert len(want) == 1
    for label, runs in (("parquet", read_parquet_table(crashed.out, "pipeline_runs")),
                        ("duckdb", read_duckdb_table(crashed.out, "pipeline_runs"))):
        assert len(runs) == 1, f"pipeline_runs ({label}) has {len(runs)} rows for one run:\n{runs}"
        row = runs.row(0, named=True)
        assert row["records_in"] == events_topic.lines, label
        assert row["records_in"] == row["accepted"] + row["rejected"] + row["duplicates"] + row["late"], label
        assert_close(comparable(runs, "pipeline_runs"), comparable(want, "pipeline_runs"), f"pipeline_runs ({label})")
    base = want.row(0, named=True)
    assert base["duplicates"] > 0 and base["rejected"] > 0
    assert base["rejected"] == len(read_parquet_table(crashed.out, "rejected_events"))
    assert base["alerts"] == len(read_parquet_table(crashed.out, "alerts"))


def test_alerts_topic_holds_every_alert_and_repeats_only_copies(
    crashed: CrashRun, broker: LocalBroker, read_topic: ReadTopic
) -> None:
    alerts = read_parquet_table(crashed.out, "alerts")
    messages = json_values(read_topic(broker.bootstrap, crashed.topics.alerts))
    assert len(messages) >= len(alerts) > 0
    _check_alert_topic(alerts, messages)  # the same alert_ids as the table; fields as in the row
    first: dict[str, tuple[bytes, dict[str, Any]]] = {}
    for key, m in messages:
        value = {k: v for k, v in m.items() if k != "emitted_at"}
        seen = first.setdefault(m["alert_id"], (key, value))
        assert seen == (key, value), f"alert {m['alert_id']} published twice with different content"
    print(f"alerts: {len(alerts)} rows, {len(messages)} messages ({len(messages) - len(alerts)} repeats)")

