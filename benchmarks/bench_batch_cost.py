"""Cost of one live micro-batch in each stage of the flow, without the engine or a broker.

    .venv/bin/python benchmarks/bench_batch_cost.py [--batch 200,4000] [--seconds 60] [--rate 20000]

Live latency is set by what one micro-batch costs: a worker that needs C ms per batch answers an
event after roughly 1.5 C ms plus the broker round trips. This drives the flow's own stateful
logics (`IngestLogic`, one `UserLogic` per shard, `CohortLogic`) in a loop with live settings,
on the `bench_live` workload (event time = now, 20,000 background learners, probe learners
whose assessments fire `low_performance`), building the topic messages as live mode does, and
prints per stage the median and p99 milliseconds
per batch, early in the run and late (when every background learner is known), so that a cost
that grows with the state shows. `--seconds` of event time are fed at `--rate` events/s, cut in
batches of each `--batch` size. The state interval (user_state evaluation) runs as in live mode,
every 2 s of wall-clock time; its cost is printed separately.

Prints figures; never asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_live import make_workload  # noqa: E402

from flows.pipeline import (  # noqa: E402
    CohortInput,
    CohortLogic,
    FlowConfig,
    IngestLogic,
    Publish,
    ShardInput,
    UserLogic,
)
from learnstream.config import Settings  # noqa: E402
from operators.decode import RawBatch  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(batch: int, seconds: float, rate: float, shards: int) -> dict[str, dict[str, list[float]]]:
    settings = Settings(shards=shards)
    cfg = FlowConfig(settings=settings, out_dir=Path("/nonexistent"), run_id="bench", secret=b"bench-live-secret",
                     live=True, sources=("p0",), state_interval=timedelta(seconds=2),
                     publish=Publish("alerts", "metrics", "dlq"))
    n = int(seconds * rate)
    start = time.time() - seconds  # event time ends now: nothing is in the future
    work = make_workload(n, rate, start, "cost", probe_every=100)
    ingest = IngestLogic(cfg, None)
    users = {str(k): UserLogic(str(k), cfg, None) for k in range(shards)}
    cohorts = CohortLogic(cfg, None)
    ingest.on_item(RawBatch([], "p0", np.zeros(0, np.int64), 0))
    times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    batches = range(0, n, batch)
    for b, lo in enumerate(batches):
        phase = "early" if b < len(batches) // 3 else ("late" if b >= 2 * len(batches) // 3 else "middle")
        lines = work.values[lo : lo + batch]
        raw = RawBatch(lines, "p0", np.arange(lo, lo + len(lines), dtype=np.int64), time.time_ns() // 1000)
        t0 = time.perf_counter()
        out, _ = ingest.on_item(raw)
        t1 = time.perf_counter()
        times[phase]["ingest"].append(1e3 * (t1 - t0))
        total_users = 0.0
        evaluated = False
        cohort_inputs: list[Any] = []
        for kind, key, payload in out:
            if kind != "shard":
                continue
            assert isinstance(payload, ShardInput)
            payload.source = "p0"
            logic = users[key]
            due = logic.pending and time.time_ns() // 1000 >= logic.next_eval_us
            s0 = time.perf_counter()
            got, _ = logic.on_item(payload)
            spent = 1e3 * (time.perf_counter() - s0)
            total_users += spent
            evaluated = evaluated or due
            cohort_inputs.extend((key, p) for k, _, p in got if k == "cohort")
        times[phase]["users (all shards, evaluating)" if evaluated else "users (all shards)"].append(total_users)
        c0 = time.perf_counter()
        for shard, item in cohort_inputs:
            assert isinstance(item, CohortInput)
            item.shard = shard
            cohorts.on_item(item)
        times[phase]["cohorts"].append(1e3 * (time.perf_counter() - c0))
        times[phase]["total"].append(1e3 * (time.perf_counter() - t0))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batch", default="200,4000", help="events per micro-batch, comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of event time to feed")
    parser.add_argument("--rate", type=float, default=20_000, help="events per second of event time")
    parser.add_argument("--shards", type=int, default=Settings().shards)
    args = parser.parse_args()
    print(f"bench_batch_cost: {args.seconds:g} s of events at {args.rate:,.0f}/s, {args.shards} shards, "
          f"{os.cpu_count()} CPUs")
    for size in (int(b) for b in args.batch.split(",")):
        times = run(size, args.seconds, args.rate, args.shards)
        print(f"\nbatch of {size:,} events ({len(sum((v['total'] for v in times.values()), []))} batches)")
        print(f"  {'stage':<32} {'phase':<7} {'batches':>7} {'median ms':>10} {'p99 ms':>8}")
        for phase in ("early", "late"):
            for stage, values in times[phase].items():
                print(f"  {stage:<32} {phase:<7} {len(values):>7} {statistics.median(values):>10.1f} {pct(values, 99):>8.1f}")


if __name__ == "__main__":
    main()
