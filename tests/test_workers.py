"""Several workers: 1, 2 and 3 worker processes (and `python -m bytewax.run` with `-w 2` and
with two `-i/-a` processes) give the same tables; a failing worker fails the run with its own
error; signals reach the workers and no worker process outlives the run.

The input is generated (150 users x 21 days, 2 % bad and 1 % duplicate records) and read in
micro-batches of 1500 records, so days close mid-run, on shards spread over the workers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from learnstream.broker import LocalBroker
from learnstream.config import Settings, load_settings
from learnstream.runner import RunSpec, WorkerFailed, run_flow
from schemas.tables import TABLES
from sources.generator import write_events
from tests.outputs import read_duckdb_table, read_parquet_table

ROOT = Path(__file__).resolve().parents[1]
SECRET = "workers-secret"
BATCH = 1500
#: processing-time columns: the only ones allowed to differ between runs of the same input
VOLATILE = {"emitted_at", "received_at", "run_id", "started_at", "ended_at"}
#: `timestamp_in_future` details quote "how far after processing time", which is wall-clock
_SKEW = re.compile(r"is [0-9.]+ s after processing time")


def _table(out: Path, name: str) -> pl.DataFrame:
    """Every row of a table's Parquet dataset, sorted by key, without processing-time columns."""
    return _stable(read_parquet_table(out, name), name)


def _db_table(out: Path, name: str) -> pl.DataFrame:
    return _stable(read_duckdb_table(out, name), name)


def _stable(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    columns = [c for c in TABLES[name].columns if c not in VOLATILE and c in frame.columns]
    frame = frame.select(columns)
    if name == "rejected_events":
        frame = frame.with_columns(pl.col("detail").str.replace(_SKEW.pattern, "is N s after processing time"))
    return frame.sort([k for k in TABLES[name].key if k in columns])


def _assert_same(left: pl.DataFrame, right: pl.DataFrame, label: str) -> None:
    assert left.columns == right.columns, label
    assert left.height == right.height, f"{label}: {left.height} rows vs {right.height}"
    for column in left.columns:
        a, b = left[column], right[column]
        # Series.equals: same values, nulls in the same places (floats compared exactly)
        assert a.equals(b), f"{label}.{column}: first difference at row {int((a.ne_missing(b)).arg_max() or 0)}"


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workers") / "events.jsonl"
    stats = write_events(path, users=150, days=21, seed=3, bad_fraction=0.02, duplicate_fraction=0.01)
    assert stats.bad > 0 and stats.duplicates > 0
    return path


def _spec(events: Path, out: Path) -> RunSpec:
    settings = load_settings(pseudonym_key=SECRET, batch_size=BATCH)
    return RunSpec(settings=settings, out_dir=out, secret=SECRET.encode(), paths=[events])


@pytest.fixture(scope="module")
def runs(events: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, RunSpec]]:
    """The same input run with 1, 2 and 3 worker processes (learnstream's runner)."""
    base = tmp_path_factory.mktemp("runs")
    done: dict[str, tuple[Path, RunSpec]] = {}
    for workers in (1, 2, 3):
        out = base / f"w{workers}"
        spec = _spec(events, out)
        run_flow(spec, workers=workers)
        done[f"{workers} workers"] = (out, spec)
    return done


def _bytewax_run(events: Path, out: Path, *flags: str, process_id: int | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(
        LEARNSTREAM_SOURCE=f"file:{events}",
        LEARNSTREAM_OUT=str(out),
        LEARNSTREAM_PSEUDONYM_KEY=SECRET,
        LEARNSTREAM_BATCH_SIZE=str(BATCH),
        LEARNSTREAM_RUN_ID="bytewax-run-test",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "flows.file:flow", *flags],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]


def test_one_two_three_workers_give_identical_tables(runs: dict[str, tuple[Path, RunSpec]]) -> None:
    (base_out, _), *others = runs.values()
    labels = list(runs)
    run = _table(base_out, "pipeline_runs").row(0, named=True)
    # the input really exercises bad and duplicate records, alerts and several micro-batches
    assert run["records_in"] > 5 * BATCH and run["rejected"] > 0 and run["duplicates"] > 0
    assert run["alerts"] > 0
    for name in TABLES:
        expected = _table(base_out, name)
        if name not in ("late_events",):
            assert expected.height > 0, f"{name} is empty: the comparison would prove nothing"
        for label, (out, _) in zip(labels[1:], others, strict=True):
            _assert_same(expected, _table(out, name), f"{name}: {labels[0]} vs {label}")


def test_tables_sink_has_one_writer_across_processes(runs: dict[str, tuple[Path, RunSpec]]) -> None:
    """DuckDB holds what Parquet holds in every run: the frames (pickled between worker
    processes) all reached the one sink partition, and its single writer committed them."""
    for label, (out, _) in runs.items():
        for name in TABLES:
            _assert_same(_table(out, name), _db_table(out, name), f"{name}: parquet vs duckdb, {label}")


def test_workers_agree_on_run_id_and_started_at(runs: dict[str, tuple[Path, RunSpec]]) -> None:
    for label, (out, spec) in runs.items():
        files = list((out / "parquet" / "pipeline_runs").glob("**/*.parquet"))
        rows = pl.read_parquet(files, hive_partitioning=False)
        assert rows["run_id"].to_list() == [spec.run_id], label
        started = rows["started_at"].cast(pl.Int64).item()
        assert started == spec.started_at_us, label
        assert rows["ended_at"].cast(pl.Int64).item() >= started, label


def test_bytewax_run_gives_the_same_tables(
    events: Path, runs: dict[str, tuple[Path, RunSpec]], tmp_path: Path
) -> None:
    """`python -m bytewax.run flows.file:flow` with the LEARNSTREAM_* environment: one worker,
    two workers in one process (`-w 2`), and two processes forming a cluster (`-i/-a`)."""
    base_out = runs["1 workers"][0]
    single, threads, cluster = tmp_path / "single", tmp_path / "threads", tmp_path / "cluster"
    _finish(_bytewax_run(events, single))
    _finish(_bytewax_run(events, threads, "-w", "2"))
    from learnstream.broker import free_port

    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    procs = [_bytewax_run(events, cluster, "-i", str(i), "-a", addresses) for i in (0, 1)]
    for proc in procs:
        _finish(proc)
    for out in (single, threads, cluster):
        for name in TABLES:
            _assert_same(_table(base_out, name), _table(out, name), f"{name}: runner vs bytewax.run {out.name}")
        files = list((out / "parquet" / "pipeline_runs").glob("**/*.parquet"))
        assert pl.read_parquet(files)["run_id"].to_list() == ["bytewax-run-test"], out.name


def test_bytewax_run_bad_environment_exits_2_with_one_line(events: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(LEARNSTREAM_SOURCE=f"file:{events}", LEARNSTREAM_OUT=str(tmp_path / "out"),
               LEARNSTREAM_PSEUDONYM_KEY=SECRET, LEARNSTREAM_BATCHSIZE="10")
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.file:flow"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "LEARNSTREAM_BATCHSIZE" in lines[0], done.stderr


# -- failures and signals ----------------------------------------------------------------------

def _marked(mark: str) -> list[int]:
    """Pids of live processes whose environment holds `mark` (children inherit it)."""
    found = []
    needle = f"TEST_MARK={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def mark() -> Iterator[str]:
    """A unique TEST_MARK for the processes a test starts; the test fails if any outlives it."""
    value = uuid.uuid4().hex
    old = os.environ.get("TEST_MARK")
    os.environ["TEST_MARK"] = value
    try:
        yield value
    finally:
        if old is None:
            os.environ.pop("TEST_MARK", None)
        else:
            os.environ["TEST_MARK"] = old
        left = _marked(value)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left running: {left}"


def _wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_failing_worker_fails_the_run_with_its_error(events: Path, tmp_path: Path, mark: str) -> None:
    # the output directory cannot be created: only the worker holding the tables sink fails,
    # its peers only see it disappear (Bytewax reports nothing but "Send thread panic" there)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    spec = _spec(events, blocker / "out")
    with pytest.raises(WorkerFailed) as failed:
        run_flow(spec, workers=2)
    message = str(failed.value)
    assert "step 'tables'" in message and "NotADirectoryError" in message, message
    assert str(blocker / "out") in message
    assert failed.value.workers == 2 and failed.value.exit_code != 0
    assert _marked(mark) == []


def test_sigkill_of_the_parent_takes_the_workers_down(
    broker: LocalBroker, topic_names: object, tmp_path: Path, mark: str
) -> None:
    topic = topic_names("events")  # type: ignore[operator]
    broker.create_topics([topic], partitions=2)
    proc = _live_run(broker, topic, tmp_path)
    try:
        _wait_until(lambda: len(_marked(mark)) >= 3, 60, "the parent and two workers")
    finally:
        proc.kill()
        proc.wait()
    _wait_until(lambda: _marked(mark) == [], 10, "the workers to die with their parent")


def _live_run(broker: LocalBroker, topic: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    env.update(LEARNSTREAM_PSEUDONYM_KEY=SECRET, LEARNSTREAM_IDLE_TIMEOUT="1s",
               LEARNSTREAM_SNAPSHOT_INTERVAL="1s")
    return subprocess.Popen(
        [sys.executable, "-m", "learnstream.cli", "run", "--source", "kafka", "--bootstrap",
         broker.bootstrap, "--events-topic", topic, "--alerts-topic", f"{topic}.alerts",
         "--metrics-topic", f"{topic}.metrics", "--dlq-topic", f"{topic}.dlq",
         "--out", str(tmp_path / "out"), "--workers", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sigterm_stops_a_live_multi_worker_run_cleanly(
    broker: LocalBroker, topic_names: object, tmp_path: Path, mark: str, events: Path
) -> None:
    """SIGTERM to `learnstream run --workers 2` (live Kafka): forwarded to both workers, which
    end their sources and commit; exit 0; every record consumed before is in the run row."""
    from confluent_kafka import Producer

    topic = topic_names("events")  # type: ignore[operator]
    names = [topic, f"{topic}.alerts", f"{topic}.metrics", f"{topic}.dlq"]
    broker.create_topics(names, partitions=2)
    lines = [ln for ln in events.read_bytes().split(b"\n") if ln][:600]
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i, line in enumerate(lines):
        producer.produce(topic, line, partition=i % 2)
    assert producer.flush(30) == 0
    proc = _live_run(broker, topic, tmp_path)
    out = tmp_path / "out"
    try:
        # days close after 1 s without records (idle advance): user rows show the records were read
        _wait_until(lambda: any((out / "parquet" / "user_daily").glob("date=*/*.parquet")) or proc.poll() is not None,
                    120, "user_daily rows")
        assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")[-3000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    row = pl.read_parquet(list((out / "parquet" / "pipeline_runs").glob("**/*.parquet"))).row(0, named=True)
    assert row["records_in"] == len(lines)
    assert row["records_in"] == row["accepted"] + row["rejected"] + row["duplicates"] + row["late"]


def test_live_runs_without_recovery_use_short_epochs(tmp_path: Path) -> None:
    # Items crossing workers wait for the end of Bytewax's epoch, so a live run that keeps no
    # recovery store uses 0.25 s epochs; with a store, the epoch is the snapshot interval.
    from learnstream.runner import KafkaSpec, _epoch

    settings = Settings(snapshot_interval=timedelta(seconds=10))
    kafka = KafkaSpec(bootstrap="127.0.0.1:9")
    live = RunSpec(settings=settings, out_dir=tmp_path, secret=b"k", kafka=kafka)
    assert _epoch(live) == timedelta(milliseconds=250)
    assert _epoch(replace(live, recovery_dir=tmp_path / "rec")) == timedelta(seconds=10)
    assert _epoch(replace(live, external_recovery=True)) == timedelta(seconds=10)
    assert _epoch(replace(live, kafka=None, paths=[tmp_path / "x"])) == timedelta(seconds=10)
    fast = replace(live, settings=Settings(snapshot_interval=timedelta(milliseconds=100)))
    assert _epoch(fast) == timedelta(milliseconds=100)
