"""`learnstream run --source kafka` end to end against a real (Tansu) broker.

Generated events (100 learners x 14 days, 2 % bad records, 1 % duplicates) are produced once per
module, keyed by `user_id` as a producer would, to two events topics of 3 partitions: "spread"
uses all three (read in 1000-record batches, the partitions' event times drift apart, which is
what the minimum-over-partitions watermark is for); "gappy" uses partitions 0 and 2 only, so
partition 1 stays empty and must neither block the watermark (live: it idles) nor the end of a
stop-at-end run. The same events are also run in file mode; that run is the reference: a Kafka
run must give the same table rows (except processing times, source references and run ids) and
publish every alert, closed user-day, user_state and rejected record.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from polars.testing import assert_frame_equal

from learnstream.broker import LocalBroker
from learnstream.cli import main
from schemas.tables import TABLES
from sources.generator import write_events
from tests.outputs import read_parquet_table as read_table

SECRET = "kafka-e2e-secret"
PARTITIONS = 3
#: columns that hold processing time, the record's origin or the run's identity
VOLATILE = {"emitted_at", "received_at", "source_ref", "run_id", "started_at", "ended_at"}
COUNTS = ["records_in", "accepted", "rejected", "duplicates", "late", "alerts"]

ReadTopic = Callable[[str, str], list[tuple[int, int, bytes | None, bytes | None]]]


def comparable(out: Path, name: str) -> pl.DataFrame:
    """A table without its volatile columns, in a canonical row order.

    `rejected_events.date` is the UTC date of `received_at`; the detail of
    `timestamp_in_future` quotes the distance to processing time: both are masked.
    """
    frame = read_table(out, name)
    drop = VOLATILE | ({"date"} if name in ("rejected_events", "pipeline_runs") else set())
    frame = frame.select([c for c in TABLES[name].columns if c not in drop])
    if name == "rejected_events":
        frame = frame.with_columns(
            pl.col("detail").str.replace(r"is [0-9.]+ s after processing time", "is N s after processing time")
        )
    return frame.sort(frame.columns, nulls_last=True)


def assert_same_rows(got: pl.DataFrame, want: pl.DataFrame, name: str) -> None:
    # floats are sums in another order (cohort averages differ in the 14th digit)
    try:
        assert_frame_equal(got, want, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)
    except AssertionError as exc:
        raise AssertionError(f"{name}: {exc}") from None


def user_key_partition(line: bytes, gappy: bool) -> tuple[bytes | None, int]:
    """Key and partition as a keyed producer would choose them (gappy: partition 1 left empty)."""
    try:
        user = json.loads(line).get("user_id")
    except (ValueError, UnicodeDecodeError, AttributeError):
        user = None
    key = user.encode() if isinstance(user, str) else None
    spread = zlib.crc32(key or line)
    return key, 2 * (spread % 2) if gappy else spread % PARTITIONS


@dataclass
class Topics:
    events: str
    alerts: str
    metrics: str
    dlq: str

    def args(self) -> list[str]:
        return ["--events-topic", self.events, "--alerts-topic", self.alerts,
                "--metrics-topic", self.metrics, "--dlq-topic", self.dlq]


def new_topics(broker: LocalBroker, events: str, label: str) -> Topics:
    tag = uuid.uuid4().hex[:8]
    topics = Topics(events, f"e2e.{label}.alerts.{tag}", f"e2e.{label}.metrics.{tag}", f"e2e.{label}.dlq.{tag}")
    broker.create_topics([topics.alerts, topics.metrics, topics.dlq], partitions=PARTITIONS)
    return topics


def json_values(records: list[tuple[int, int, bytes | None, bytes | None]]) -> list[tuple[bytes, dict[str, Any]]]:
    out = []
    for _, _, key, value in records:
        assert key is not None and value is not None
        out.append((key, json.loads(value)))
    return out


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    write_events(path, users=100, days=14, seed=11, bad_fraction=0.02, duplicate_fraction=0.01)
    return path


def produce_events(broker: LocalBroker, events_file: Path, *, gappy: bool) -> str:
    topic = f"e2e.events.{'gappy' if gappy else 'spread'}.{uuid.uuid4().hex[:8]}"
    broker.create_topics([topic], partitions=PARTITIONS)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
    for line in events_file.read_bytes().split(b"\n"):
        if line:
            key, partition = user_key_partition(line, gappy)
            producer.produce(topic, line, key, partition=partition)
    assert producer.flush(30) == 0
    return topic


@pytest.fixture(scope="module")
def gappy_topic(broker: LocalBroker, events_file: Path) -> str:
    return produce_events(broker, events_file, gappy=True)


@pytest.fixture(scope="module", params=["spread", "gappy"])
def events_topic(request: pytest.FixtureRequest, broker: LocalBroker, events_file: Path, gappy_topic: str) -> str:
    return gappy_topic if request.param == "gappy" else produce_events(broker, events_file, gappy=False)


@pytest.fixture(scope="module")
def file_out(events_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("file") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
        mp.setenv("LEARNSTREAM_BATCH_SIZE", "1000")
        assert main(["run", "--source", f"file:{events_file}", "--out", str(out)]) == 0
    return out


def stop_at_end_run(broker: LocalBroker, events: str, label: str, out: Path, **env: str) -> Topics:
    """`learnstream run --source kafka --stop-at-end` in this process, to fresh output topics."""
    topics = new_topics(broker, events, label)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
        for name, value in env.items():
            mp.setenv(name, value)
        code = main(["run", "--source", "kafka", "--bootstrap", broker.bootstrap, "--stop-at-end",
                     "--out", str(out), *topics.args()])
    assert code == 0
    return topics


@pytest.fixture(scope="module")
def kafka_run(broker: LocalBroker, events_topic: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Topics]:
    """`--stop-at-end` run in this process; small batches so days close while partitions are read
    at different speeds (partition 0 and 2 interleave, partition 1 is empty)."""
    out = tmp_path_factory.mktemp("kafka") / "out"
    return out, stop_at_end_run(broker, events_topic, "stop", out, LEARNSTREAM_BATCH_SIZE="1000")


@pytest.mark.parametrize("name", sorted(TABLES))
def test_stop_at_end_run_writes_the_same_tables_as_a_file_run(
    kafka_run: tuple[Path, Topics], file_out: Path, name: str
) -> None:
    out, _ = kafka_run
    got, want = comparable(out, name), comparable(file_out, name)
    if name == "late_events":
        assert len(want) == 0  # the generator's disorder stays within max_out_of_orderness
    elif name not in ("pipeline_runs",):
        assert len(want) > 0, name
    assert_same_rows(got, want, name)


def test_stop_at_end_accounting(kafka_run: tuple[Path, Topics], file_out: Path, events_file: Path) -> None:
    out, _ = kafka_run
    run = read_table(out, "pipeline_runs").row(0, named=True)
    lines = sum(1 for line in events_file.read_bytes().split(b"\n") if line)
    assert run["records_in"] == lines
    assert run["records_in"] == run["accepted"] + run["rejected"] + run["duplicates"] + run["late"]
    assert run["duplicates"] > 0 and run["rejected"] > 0
    file_run = read_table(file_out, "pipeline_runs").row(0, named=True)
    assert {k: run[k] for k in [*COUNTS, "watermark"]} == {k: file_run[k] for k in [*COUNTS, "watermark"]}


def test_rejected_records_reference_their_kafka_offset_and_reach_the_dlq(
    kafka_run: tuple[Path, Topics], broker: LocalBroker, events_topic: str, read_topic: ReadTopic
) -> None:
    out, topics = kafka_run
    rejected = read_table(out, "rejected_events")
    source = {(p, o): v for p, o, _, v in read_topic(broker.bootstrap, events_topic)}
    for row in rejected.iter_rows(named=True):
        match = re.fullmatch(rf"kafka:{re.escape(events_topic)}/(\d+)/(\d+)", row["source_ref"])
        assert match, row["source_ref"]
        raw = source[(int(match[1]), int(match[2]))]
        assert raw is not None
        assert row["payload"] in (raw.decode("utf-8", "replace"), base64.b64encode(raw).decode())
    messages = json_values(read_topic(broker.bootstrap, topics.dlq))
    by_ref = {m["source_ref"]: (key, m) for key, m in messages}
    assert len(by_ref) == len(messages) == len(rejected)  # each rejected record once
    for row in rejected.iter_rows(named=True):
        key, m = by_ref[row["source_ref"]]
        assert key == row["source_ref"].encode()
        assert (m["reason"], m["detail"], m["payload"]) == (row["reason"], row["detail"], row["payload"])
        assert m["schema_version"] == 1


def _check_alert_topic(alerts: pl.DataFrame, messages: list[tuple[bytes, dict[str, Any]]]) -> None:
    """Every alert row on the topic; repeats only as exact copies of one alert_id."""
    by_id: dict[str, list[tuple[bytes, dict[str, Any]]]] = {}
    for key, m in messages:
        by_id.setdefault(m["alert_id"], []).append((key, m))
    assert set(by_id) == set(alerts["alert_id"])
    fields = ["rule", "severity", "user_key", "cohort_id", "org_id", "title", "message"]
    for row in alerts.iter_rows(named=True):
        copies = by_id[row["alert_id"]]
        for key, m in copies:
            assert key == (row["user_key"] or row["cohort_id"]).encode()
            assert {f: m[f] for f in fields} == {f: row[f] for f in fields}
            assert m["date"] == row["date"].isoformat()
            assert m["evidence"] == json.loads(row["evidence"])
            assert m["recommendations"] == list(row["recommendations"])


def test_every_alert_is_published_once(
    kafka_run: tuple[Path, Topics], broker: LocalBroker, read_topic: ReadTopic
) -> None:
    out, topics = kafka_run
    alerts = read_table(out, "alerts")
    assert {"struggling", "cohort_engagement_drop"} & set(alerts["rule"]) and len(alerts) > 50
    messages = json_values(read_topic(broker.bootstrap, topics.alerts))
    _check_alert_topic(alerts, messages)
    assert len(messages) == len(alerts)  # no crash, no replay: exactly once here


def test_metric_messages_match_user_daily_and_user_state(
    kafka_run: tuple[Path, Topics], broker: LocalBroker, read_topic: ReadTopic
) -> None:
    out, topics = kafka_run
    messages = json_values(read_topic(broker.bootstrap, topics.metrics))
    for key, m in messages:
        assert key.decode() == m["user_key"] == m["values"]["user_key"]
    days = [m for _, m in messages if m["kind"] == "user_day"]
    daily = read_table(out, "user_daily")
    got = Counter((m["user_key"], m["values"]["date"]) for m in days)
    assert got == Counter((k, d.isoformat()) for k, d in daily.select("user_key", "date").iter_rows())
    cols = ["events", "completions", "sessions", "scored_events", "xp", "streak"]
    want = {(r["user_key"], r["date"].isoformat()): [r[c] for c in cols] for r in daily.iter_rows(named=True)}
    for m in days:
        assert [m["values"][c] for c in cols] == want[(m["user_key"], m["values"]["date"])]
    states = [m for _, m in messages if m["kind"] == "user_state"]
    state = read_table(out, "user_state")
    assert {m["user_key"] for m in states} == set(state["user_key"])
    last = {m["user_key"]: m["values"] for m in states}  # the newest message per user (one partition per key)
    for row in state.iter_rows(named=True):
        assert (last[row["user_key"]]["days_active"], last[row["user_key"]]["longest_streak"]) == (
            row["days_active"], row["longest_streak"])


# ------------------------------------------------------------------------------------ live runs


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from learnstream.cli import main; sys.exit(main())", *args]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
    return {**env, "LEARNSTREAM_PSEUDONYM_KEY": SECRET, **extra}


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Subprocesses started by a test; killed if the test leaves one running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for(bootstrap: str, topic: str, done: Callable[[list[bytes]], bool], timeout: float) -> list[bytes]:
    """Tail `topic` until `done(values so far)`; fail after `timeout` seconds."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-tail", "fetch.wait.max.ms": 50})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while not done(values):
            assert time.monotonic() < deadline, f"{topic}: condition not reached in {timeout} s ({len(values)} messages)"
            for msg in consumer.consume(1000, 0.1):
                value = msg.value()
                if msg.error() is None and value is not None:
                    values.append(value)
        return values
    finally:
        consumer.close()


def test_live_run_closes_days_when_idle_and_stops_cleanly_on_sigterm(
    broker: LocalBroker,
    gappy_topic: str,
    file_out: Path,
    read_topic: ReadTopic,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    out = tmp_path / "out"
    # partition 1 of the events topic is empty: it must idle too, or no day would ever close
    topics = new_topics(broker, gappy_topic, "live")
    proc = subprocess.Popen(
        _cli("run", "--source", "kafka", "--bootstrap", broker.bootstrap, "--out", str(out), *topics.args()),
        env=_env(LEARNSTREAM_IDLE_TIMEOUT="3s", LEARNSTREAM_BATCH_SIZE="1000"),  # idle only once read
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    processes.append(proc)
    want_daily = comparable(file_out, "user_daily")
    # The data is from March 2026: one idle advance to wall-clock time closes every day, so
    # every user-day of the file run gets its metric message; until then none is closed.
    user_days = b'"kind":"user_day"'
    _wait_for(broker.bootstrap, topics.metrics, lambda vs: sum(user_days in v for v in vs) >= len(want_daily), 60)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert "SIGTERM: stopping" in stderr.decode()
    assert "records_in=" in stdout.decode()

    # tables committed: user days as in the file run; Parquet and DuckDB agree
    assert_same_rows(comparable(out, "user_daily"), want_daily, "user_daily")
    assert_same_rows(comparable(out, "user_skill_daily"), comparable(file_out, "user_skill_daily"), "user_skill_daily")
    assert_same_rows(comparable(out, "rejected_events"), comparable(file_out, "rejected_events"), "rejected_events")
    con = duckdb.connect(str(out / "learnstream.duckdb"), read_only=True)
    try:
        for name in ("user_daily", "user_state", "alerts", "rejected_events", "pipeline_runs"):
            row = con.execute(f"SELECT count(*) FROM {name}").fetchone()
            assert row is not None and row[0] == len(read_table(out, name)), name
    finally:
        con.close()
    run = read_table(out, "pipeline_runs").row(0, named=True)
    file_run = read_table(file_out, "pipeline_runs").row(0, named=True)
    assert {k: run[k] for k in COUNTS[:5]} == {k: file_run[k] for k in COUNTS[:5]}
    assert run["alerts"] == len(read_table(out, "alerts"))
    # the idle watermark is wall-clock time minus max_out_of_orderness (5 min), not March
    assert run["watermark"].year == time.gmtime().tm_year and run["watermark"] > file_run["watermark"]
    # as of "now", every user has been inactive for months
    state = read_table(out, "user_state")
    assert len(state) == 100 and set(state["momentum"]) == {"stalled"} and (state["current_streak"] == 0).all()

    # alerts: the file run's (same rows), plus day rules on the days after the data ended
    alerts, file_alerts = read_table(out, "alerts"), read_table(file_out, "alerts")
    cols = [c for c in TABLES["alerts"].columns if c not in VOLATILE]
    same = alerts.filter(pl.col("alert_id").is_in(file_alerts["alert_id"].implode()))
    assert_same_rows(same.select(cols).sort("alert_id"), file_alerts.select(cols).sort("alert_id"), "alerts")
    extra = alerts.filter(~pl.col("alert_id").is_in(file_alerts["alert_id"].implode()))
    assert len(extra) > 0 and set(extra["rule"]) <= {"engagement_drop", "stagnation", "low_consistency", "streak_broken"}
    _check_alert_topic(alerts, json_values(read_topic(broker.bootstrap, topics.alerts)))


def test_stopped_broker_makes_the_run_fail_loudly(
    events_file: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Outputs that cannot be delivered are counted and reported, and the exit status is 1."""
    own = LocalBroker()  # not the session broker: this test stops it
    own.start()
    try:
        topics = Topics("ev", "al", "me", "dlq")
        own.create_topics(["ev", "al", "me", "dlq"], partitions=1)
        producer = Producer({"bootstrap.servers": own.bootstrap, "linger.ms": 20})
        for line in events_file.read_bytes().split(b"\n")[:1500]:
            if line:
                producer.produce("ev", line)
        assert producer.flush(30) == 0
        del producer
        kafka_config = tmp_path / "kafka.properties"
        kafka_config.write_text("# give up on a message after 2 s (default 5 min)\nmessage.timeout.ms=2000\n")
        proc = subprocess.Popen(
            _cli("run", "--source", "kafka", "--bootstrap", own.bootstrap, "--out", str(tmp_path / "out"),
                 "--kafka-config", str(kafka_config), *topics.args()),
            env=_env(LEARNSTREAM_IDLE_TIMEOUT="5s"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        processes.append(proc)
        # Dead letters are published with the first batch; the days close (and their metrics
        # and alerts are published) only at the idle advance, 5 s after the last record...
        _wait_for(own.bootstrap, "dlq", lambda vs: len(vs) > 0, 60)
    finally:
        own.stop(grace=0.1)  # ...by which time the broker is gone
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 1
    # one line of ours (librdkafka's own threads may still log connection errors around it)
    ours = [ln for ln in stderr.decode().splitlines() if ln.startswith("learnstream run: ")]
    assert len(ours) == 1, stderr.decode()[-3000:]
    last = ours[0]
    assert last.startswith("learnstream run: Kafka delivery to ") and "message(s) failed" in last, last
    failed = re.search(r"failed (\d+) in total", last)
    assert failed and int(failed[1]) > 0
    assert "Message timed out" in last


# ------------------------------------------------------------------------------------ demo


def test_demo_shows_alerts_arriving_on_a_real_topic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from learnstream.config import load_settings
    from learnstream.demo_live import SHOWN, show_live_alerts

    events = tmp_path / "events.jsonl"
    write_events(events, users=40, days=10, seed=5, bad_fraction=0.01)
    show_live_alerts(events, load_settings(), b"demo-secret")
    lines = capsys.readouterr().out.strip().splitlines()
    shown = [ln for ln in lines if re.match(r"^  \+ *\d+\.\d\ds  alert (high|medium|low) \w+ (user [0-9a-f]{6}…|cohort \S+) \d{4}-\d\d-\d\d: ", ln)]
    assert len(shown) == SHOWN, lines
    summary = re.search(r"live: (\d+) alerts on learning.alerts \((\d+) in the run\)", lines[-1])
    assert summary and summary[1] == summary[2] and int(summary[1]) >= SHOWN, lines[-1]


def test_demo_says_so_in_one_line_when_no_broker_can_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from learnstream.config import load_settings
    from learnstream.demo_live import show_live_alerts

    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    show_live_alerts(tmp_path / "unused.jsonl", load_settings(), b"demo-secret")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("live: skipped, no local Kafka broker could start ("), out


def test_a_tombstone_is_counted_and_dead_lettered(broker: LocalBroker, read_topic: ReadTopic, tmp_path: Path) -> None:
    # SPEC §2: every record read ends as exactly one of accepted/rejected/duplicate/late; a
    # message with a null value (tombstone) is no event: a dead letter, not a silent skip.
    topic = f"e2e.tombstone.{uuid.uuid4().hex[:8]}"
    broker.create_topics([topic], partitions=1)
    good = json.dumps({"event_id": "t1", "user_id": "u1", "type": "lesson_completed",
                       "timestamp": "2026-03-01T10:00:00Z"}).encode()
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for value in (good, None, good.replace(b"t1", b"t2")):
        producer.produce(topic, value, b"u1", partition=0)
    assert producer.flush(30) == 0
    out = tmp_path / "out"
    topics = stop_at_end_run(broker, topic, "tomb", out)
    run = read_table(out, "pipeline_runs").row(0, named=True)
    assert (run["records_in"], run["accepted"], run["rejected"]) == (3, 2, 1)
    rejected = read_table(out, "rejected_events").row(0, named=True)
    assert (rejected["source_ref"], rejected["reason"], rejected["payload"]) == (
        f"kafka:{topic}/0/1", "malformed_json", ""
    )
    messages = json_values(read_topic(broker.bootstrap, topics.dlq))
    assert [(key, m["source_ref"], m["reason"]) for key, m in messages] == [
        (f"kafka:{topic}/0/1".encode(), f"kafka:{topic}/0/1", "malformed_json")
    ]


def test_a_resend_through_another_partition_is_a_duplicate(
    broker: LocalBroker, read_topic: ReadTopic, tmp_path: Path
) -> None:
    # SPEC §2: a duplicate is the same event_id within dedup_horizon, whatever partition it came
    # through. e1 is sent to partition 0, and again (same bytes) to partition 1 an event later.
    topic = f"e2e.resend.{uuid.uuid4().hex[:8]}"
    broker.create_topics([topic], partitions=2)

    def event(event_id: str, user: str, minute: int) -> bytes:
        return json.dumps({"event_id": event_id, "user_id": user, "type": "lesson_completed",
                           "timestamp": f"2026-03-01T10:{minute:02d}:00Z"}).encode()

    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic, event("e1", "u1", 0), b"u1", partition=0)
    producer.produce(topic, event("e2", "u2", 1), b"u2", partition=1)
    producer.produce(topic, event("e1", "u1", 0), b"resent", partition=1)
    producer.produce(topic, event("e3", "u1", 2), b"u1", partition=0)
    assert producer.flush(30) == 0
    out = tmp_path / "out"
    stop_at_end_run(broker, topic, "resend", out)
    run = read_table(out, "pipeline_runs").row(0, named=True)
    assert (run["records_in"], run["accepted"], run["duplicates"], run["late"]) == (4, 3, 1, 0)
    daily = read_table(out, "user_daily").sort("user_key").select("events").to_series().to_list()
    assert sorted(daily) == [1, 2]  # u1: e1 once and e3; u2: e2
