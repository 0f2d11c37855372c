"""Live mode through a local Kafka broker (Tansu): alert latency at offered rates, and capacity.

    .venv/bin/python benchmarks/bench_live.py [--rates 5000,20000,50000] [--duration 30]
        [--workers 1,2] [--partitions 2] [--capacity 400000] [--probe-every 100] [--recovery]

For each worker count and offered rate: fresh topics, a live `learnstream run --source kafka`
in a child process, a paced producer (this process) and an alert consumer (another process).
Events carry the current time as event time. Every `--probe-every`-th event belongs to one of
up to 200 *probe* learners whose assessments score 90, 40, 40, 90, 40, 40, ...: each second 40 fires
`low_performance` (event-triggered; never `struggling`, as a 90 is always among the last 5).
Latency = time the alert message is received by the consumer - time the triggering event was
handed to the producer (`produce()`); the alert_id is known in advance (SPEC §6 formula), so
every probe alert is matched to its event. The other events are background learners (lessons,
sessions, quizzes scoring >= 60: no alerts).

A rate is *sustained* when every probe alert arrived and the p99 latency of the last third of
the run is under 1 s (no growing backlog). `--capacity N` also measures the catch-up rate on a
backlog of N events handed to a running pipeline as fast as this process can produce them:
N / (last probe alert received - first event produced), the most the pipeline can take (bounded
by the producer's own speed, which is printed too).

Everything shares the machine: broker, producer, consumer and the pipeline's workers. Prints a
table; never asserts (benchmarks measure, tests assert).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import multiprocessing as mp
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learnstream.broker import LocalBroker  # noqa: E402

SECRET = "bench-live-secret"
PROBE_USERS = 200  # at most; fewer on short runs (see make_workload)
RULE = "low_performance"
CHILD = "import sys; from learnstream.cli import main; sys.exit(main())"


def user_key(user_id: str) -> str:
    return hmac.new(SECRET.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


def alert_id(user_id: str, event_id: str) -> str:
    return hashlib.sha256(f"{RULE}|{user_key(user_id)}|{event_id}".encode()).hexdigest()[:32]


@dataclass
class Workload:
    """Messages in produce order; `triggers[i]` is the alert_id that message i fires, if any."""

    keys: list[bytes]
    values: list[bytes]
    triggers: dict[int, str]


def make_workload(n: int, rate: float, start: float, tag: str, probe_every: int, seed: int = 1) -> Workload:
    """`n` events timed `start + i / rate` (event time = planned produce time), built with polars."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    probe = idx % probe_every == 0
    k = np.cumsum(probe) - 1  # probe sequence number
    # every probe learner goes through >= 5 cycles of (90, 40, 40)
    users = int(min(PROBE_USERS, max(1, int(probe.sum()) // 15)))
    probe_user = k % users
    position = (k // users) % 3  # 0: score 90, 1 and 2: score 40 (2 fires)
    bg_user = rng.integers(0, 20_000, n)
    bg_type = rng.choice(
        np.array(["lesson_completed", "session_started", "quiz_completed", "exercise_completed"]),
        n,
        p=[0.4, 0.2, 0.2, 0.2],
    )
    bg_score = np.round(rng.uniform(60, 100, n), 1)
    frame = pl.DataFrame(
        {
            "event_id": [f"{tag}-{i}" for i in range(n)],
            "user_id": np.where(probe, np.char.add(f"probe-{tag}-", probe_user.astype(str)),
                                np.char.add("bg-", bg_user.astype(str))),
            "type": np.where(probe, "assessment_completed", bg_type),
            "score": np.where(probe, np.where(position == 0, 90.0, 40.0),
                              np.where(bg_type == "quiz_completed", bg_score, np.nan)),
            "t": ((start + idx / rate) * 1e6).astype(np.int64),
            "cohort": np.char.add("cohort-", (bg_user % 50).astype(str)),
        }
    ).with_columns(
        pl.col("score").fill_nan(None),
        pl.col("t").cast(pl.Datetime("us", "UTC")).dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ").alias("ts"),
    )
    value = pl.concat_str(
        [
            pl.lit('{"event_id":"'), pl.col("event_id"),
            pl.lit('","user_id":"'), pl.col("user_id"),
            pl.lit('","type":"'), pl.col("type"),
            pl.lit('","timestamp":"'), pl.col("ts"),
            pl.lit('","cohort_id":"'), pl.col("cohort"),
            pl.lit('","org_id":"org-1","duration_s":60'),
            pl.when(pl.col("score").is_not_null())
            .then(pl.lit(',"score":') + pl.col("score").cast(pl.String))
            .otherwise(pl.lit("")),
            pl.lit("}"),
        ]
    )
    out = frame.select(key=pl.col("user_id").cast(pl.Binary), value=value.cast(pl.Binary))
    fires = np.nonzero(probe & (position == 2))[0]
    user_ids = frame["user_id"].to_list()
    event_ids = frame["event_id"].to_list()
    triggers = {int(i): alert_id(user_ids[i], event_ids[i]) for i in fires}
    return Workload(out["key"].to_list(), out["value"].to_list(), triggers)


def consume_alerts(bootstrap: str, topic: str, partitions: int, out: Any, stop: Any, ready: Any) -> None:
    """Child process: (receipt time, alert_id) for every alert, as soon as each arrives."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-live", "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 5, "fetch.error.backoff.ms": 5})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    ready.set()
    pending: list[tuple[float, str]] = []
    last_put = time.monotonic()
    while not stop.is_set():
        msg = consumer.poll(0.02)
        now = time.time()
        value = None if msg is None or msg.error() is not None else msg.value()
        if value is not None:
            pending.append((now, orjson.loads(value)["alert_id"]))
        if pending and (msg is None or time.monotonic() - last_put > 0.05):
            out.put(pending)
            pending, last_put = [], time.monotonic()
    if pending:
        out.put(pending)
    consumer.close()


@dataclass
class Result:
    workers: int
    label: str
    offered: float
    produced_per_s: float
    expected: int
    received: int
    latencies_ms: list[float] = field(default_factory=list)
    late_p99_ms: float = float("nan")
    drain_s: float = float("nan")
    capacity: float = float("nan")
    records_in: int | None = None

    @property
    def sustained(self) -> bool:
        return self.received == self.expected and self.late_p99_ms < 1000

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))


class Pipeline:
    """A live `learnstream run --source kafka` child process with its own topics and output."""

    def __init__(self, broker: LocalBroker, partitions: int, workers: int, base: Path, extra_env: dict[str, str],
                 kafka_config: Path | None = None, recovery: bool = False) -> None:
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.events, self.alerts = f"bench.events.{tag}", f"bench.alerts.{tag}"
        broker.create_topics([self.events], partitions=partitions)
        broker.create_topics([self.alerts, f"bench.metrics.{tag}", f"bench.dlq.{tag}"], partitions=2)
        self.out = base / f"out-{tag}"
        self.log = (base / f"run-{tag}.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
        env.update({"LEARNSTREAM_PSEUDONYM_KEY": SECRET, **extra_env})
        self.args = [sys.executable, "-c", CHILD, "run", "--source", "kafka", "--bootstrap", broker.bootstrap,
                     "--out", str(self.out), "--workers", str(workers),
                     "--events-topic", self.events, "--alerts-topic", self.alerts,
                     "--metrics-topic", f"bench.metrics.{tag}", "--dlq-topic", f"bench.dlq.{tag}"]
        if kafka_config is not None:
            self.args += ["--kafka-config", str(kafka_config)]
        if recovery:
            self.args += ["--recovery-dir", str(base / f"recovery-{tag}")]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def records_in(self) -> int | None:
        files = list((self.out / "parquet" / "pipeline_runs").glob("**/*.parquet"))
        if not files:
            return None
        top = pl.read_parquet(files)["records_in"].max()  # the empty-table file alone: no row yet
        return None if top is None else int(top)  # type: ignore[arg-type]


class Alerts:
    """The alert consumer process and what it has received so far."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        ctx = mp.get_context("spawn")
        self.queue: Any = ctx.Queue()
        self.stop_event = ctx.Event()
        ready = ctx.Event()
        self.proc = ctx.Process(target=consume_alerts, args=(bootstrap, topic, 2, self.queue, self.stop_event, ready))
        self.proc.start()
        ready.wait(30)
        self.seen: dict[str, float] = {}

    def drain(self, timeout: float = 0.0) -> None:
        try:
            while True:
                for t, aid in self.queue.get(timeout=timeout):
                    self.seen.setdefault(aid, t)
                timeout = 0.0
        except queue.Empty:
            pass

    def wait_for(self, ids: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not ids <= self.seen.keys():
            if time.monotonic() > deadline:
                return False
            self.drain(0.05)
        return True

    def close(self) -> None:
        self.stop_event.set()
        self.drain(0.2)
        self.proc.join(10)
        self.drain()


def producer(bootstrap: str) -> Any:
    """The load generator's producer: librdkafka's default `linger.ms=5`. (With `linger.ms=1`
    it sends ~1,000 tiny batches a second at 5k events/s; Tansu's in-memory log then answers
    fetches ever more slowly as the batches pile up: by itself, with no pipeline, its p50
    produce-to-consume latency went from 15 to 71 ms in 40 s; with 5 ms it stays at 15-19 ms
    for 40 s, at 20k/s too.)"""
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "queue.buffering.max.messages": 2_000_000})


def warm_up(bootstrap: str, topic: str, alerts: Alerts, timeout: float = 90.0) -> float:
    """One probe cycle for a warm-up learner; returns when its alert arrived (pipeline ready)."""
    prod = producer(bootstrap)
    now = datetime.now(UTC)
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    user, tag = f"warm-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
    for i, score in enumerate((90, 40, 40)):
        value = orjson.dumps({"event_id": f"warm-{tag}-{i}", "user_id": user, "type": "assessment_completed",
                              "timestamp": ts, "score": score})
        prod.produce(topic, value, user.encode())
    prod.flush(30)
    start = time.monotonic()
    alerts.wait_for({alert_id(user, f"warm-{tag}-2")}, timeout)
    return time.monotonic() - start


def paced_produce(bootstrap: str, topic: str, work: Workload, rate: float, start: float) -> tuple[dict[int, float], float]:
    """Produce `work` at `rate`/s from wall-clock `start`; (produce time of each trigger, end)."""
    prod = producer(bootstrap)
    sent_at: dict[int, float] = {}
    n = len(work.values)
    sent = 0
    triggers = work.triggers
    keys, values = work.keys, work.values
    while sent < n:
        now = time.time()
        due = min(n, int((now - start) * rate) + 1)
        for i in range(sent, due):
            try:
                prod.produce(topic, values[i], keys[i])
            except BufferError:
                prod.poll(0.01)
                prod.produce(topic, values[i], keys[i])
            if i in triggers:
                sent_at[i] = time.time()
        sent = max(sent, due)
        prod.poll(0)
        time.sleep(0.001)
    end = time.time()
    prod.flush(60)
    return sent_at, end


def run_rate(broker: LocalBroker, workers: int, rate: float, duration: float, args: argparse.Namespace, base: Path) -> Result:
    pipe = Pipeline(broker, args.partitions, workers, base, args.env, args.kafka_config, args.recovery)
    alerts = Alerts(broker.bootstrap, pipe.alerts)
    n = int(rate * duration)
    result = Result(workers, f"{rate:,.0f}/s", rate, 0.0, 0, 0)
    try:
        pipe.start()
        ready_s = warm_up(broker.bootstrap, pipe.events, alerts)
        start = time.time() + 0.5
        work = make_workload(n, rate, start, pipe.tag, args.probe_every)
        start = max(start, time.time())
        sent_at, end = paced_produce(broker.bootstrap, pipe.events, work, rate, start)
        result.produced_per_s = n / (end - start)
        ids = set(work.triggers.values())
        alerts.wait_for(ids, timeout=args.drain_timeout)
        alerts.drain()
        result.expected = len(ids)
        got = [(i, alerts.seen[aid] - sent_at[i]) for i, aid in work.triggers.items() if aid in alerts.seen]
        result.received = len(got)
        result.latencies_ms = [1000 * lat for _, lat in got]
        tail = [1000 * lat for i, lat in got if i >= 2 * n // 3]
        result.late_p99_ms = float(np.percentile(tail, 99)) if tail else float("nan")
        if got:
            result.drain_s = max(alerts.seen[work.triggers[i]] for i, _ in got) - end
        print(f"  workers={workers} rate={rate:,.0f}/s: ready after warm-up {ready_s:.1f}s, "
              f"{result.received}/{result.expected} probe alerts, p50 {result.pct(50):.0f} ms, "
              f"p99 {result.pct(99):.0f} ms", flush=True)
    finally:
        alerts.close()
        code = pipe.stop()
        result.records_in = pipe.records_in()
        if code not in (0, None):
            print(f"  (pipeline exit status {code}; log {pipe.log.name})", flush=True)
    return result


def run_capacity(broker: LocalBroker, workers: int, events: int, args: argparse.Namespace, base: Path) -> Result:
    """Catch-up rate: a ready pipeline is handed `events` as fast as this process can produce
    them; rate = events / (last probe alert received - first event produced)."""
    pipe = Pipeline(broker, args.partitions, workers, base, args.env, args.kafka_config, args.recovery)
    alerts = Alerts(broker.bootstrap, pipe.alerts)
    result = Result(workers, f"backlog {events:,}", float("nan"), float("nan"), 0, 0)
    try:
        pipe.start()
        warm_up(broker.bootstrap, pipe.events, alerts)
        work = make_workload(events, 1e6, time.time(), pipe.tag, args.probe_every)
        start = time.time()
        sent_at, end = paced_produce(broker.bootstrap, pipe.events, work, 1e9, start)
        result.produced_per_s = events / (end - start)
        ids = set(work.triggers.values())
        alerts.wait_for(ids, timeout=args.drain_timeout + events / 5_000)
        alerts.drain()
        got = [alerts.seen[aid] for aid in ids if aid in alerts.seen]
        result.expected, result.received = len(ids), len(got)
        if got:
            result.capacity = events / (max(got) - start)
        print(f"  workers={workers} backlog {events:,}: produced at {result.produced_per_s:,.0f}/s, "
              f"{result.received}/{result.expected} probe alerts, catch-up {result.capacity:,.0f} events/s",
              flush=True)
    finally:
        alerts.close()
        pipe.stop()
        result.records_in = pipe.records_in()
    return result


def table(results: list[Result]) -> str:
    head = f"{'workers':>7} | {'offered':>16} | {'produced/s':>10} | {'alerts':>11} | {'p50 ms':>7} | {'p99 ms':>7} | {'max ms':>7} | {'drain s':>7} | {'sustained':>9} | {'catch-up/s':>10}"
    lines = [head, "-" * len(head)]
    for r in results:
        cap = f"{r.capacity:,.0f}" if r.capacity == r.capacity else ""
        produced = f"{r.produced_per_s:,.0f}" if r.produced_per_s == r.produced_per_s else ""
        sustained = ("yes" if r.sustained else "no") if r.offered == r.offered else ""
        mx = max(r.latencies_ms) if r.latencies_ms else float("nan")
        lines.append(
            f"{r.workers:>7} | {r.label:>16} | {produced:>10} | {r.received:>5}/{r.expected:<5} | "
            f"{r.pct(50):>7.0f} | {r.pct(99):>7.0f} | {mx:>7.0f} | {r.drain_s:>7.2f} | {sustained:>9} | {cap:>10}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", default="5000,20000,50000", help="offered events/s, comma-separated")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per offered rate")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--partitions", type=int, default=2, help="events topic partitions (a multiple of workers)")
    parser.add_argument("--probe-every", type=int, default=100, help="every N-th event is a probe assessment")
    parser.add_argument("--capacity", type=int, default=400_000, help="backlog events for the catch-up rate (0: skip)")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to wait for the last alerts")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a LEARNSTREAM_<NAME> setting for the pipeline, e.g. --set snapshot_interval=60s")
    parser.add_argument("--recovery", action="store_true",
                        help="run the pipeline with --recovery-dir (snapshots every snapshot_interval)")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy the pipelines' logs here before cleaning up")
    parser.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE",
                        help="a librdkafka setting for the pipeline (--kafka-config), e.g. --kafka fetch.wait.max.ms=10")
    args = parser.parse_args()
    args.env = {f"LEARNSTREAM_{k.upper()}": v for k, v in (s.split("=", 1) for s in args.set)}
    rates = [float(r) for r in args.rates.split(",") if r]
    worker_counts = [int(w) for w in args.workers.split(",") if w]
    results: list[Result] = []
    base = Path(tempfile.mkdtemp(prefix="bench-live-"))
    args.kafka_config = None
    if args.kafka:
        args.kafka_config = base / "kafka.properties"
        args.kafka_config.write_text("\n".join(args.kafka) + "\n")
    print(f"bench_live: rates {args.rates}/s x {args.duration:g} s, workers {args.workers}, "
          f"{args.partitions} partitions, settings {args.env or 'defaults'}, kafka {args.kafka or 'defaults'}, "
          f"recovery {'on' if args.recovery else 'off'}; "
          f"{os.cpu_count()} CPUs", flush=True)
    try:
        with LocalBroker() as broker:
            for workers in worker_counts:
                for rate in rates:
                    results.append(run_rate(broker, workers, rate, args.duration, args, base))
                if args.capacity:
                    results.append(run_capacity(broker, workers, args.capacity, args, base))
    finally:
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in base.glob("run-*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(results))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")
    for workers in worker_counts:
        ok = [r.offered for r in results if r.workers == workers and r.offered == r.offered and r.sustained]
        cap = [r.capacity for r in results if r.workers == workers and r.capacity == r.capacity]
        best = f"{max(ok):,.0f}/s" if ok else "none of the offered rates"
        extra = f"; catch-up rate on a backlog {cap[0]:,.0f}/s" if cap else ""
        print(f"workers={workers}: highest sustained offered rate {best}{extra}")
    if any(r.latencies_ms for r in results):
        all_p99 = [r.pct(99) for r in results if r.latencies_ms]
        print(f"median of p99 over runs: {statistics.median(all_p99):.0f} ms")


if __name__ == "__main__":
    main()
