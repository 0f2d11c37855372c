"""End-to-end throughput of `learnstream run` on files, beside the polars ceiling.

    .venv/bin/python benchmarks/bench_file_run.py [--users 10000] [--days 30] [--runs 3]

Generates (once, cached under bench-data/) the synthetic events, then alternates, `--runs` times:
the polars ceiling (`pl.read_ndjson` + `group_by(user_id)` on the same file) and a full
`learnstream run` (one worker, fresh output directory) in a child process, so peak memory (max RSS)
is the run's own. Prints each run, the medians, the ratio of medians and peak memory per 10k users.
Machines here are noisy: compare the ratio, not the absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
from pathlib import Path
from learnstream.config import load_settings
from learnstream.runner import RunSpec, run_flow
events, out = Path(sys.argv[1]), Path(sys.argv[2])
spec = RunSpec(settings=load_settings(), out_dir=out, secret=b"bench-secret", paths=[events])
start = time.perf_counter()
summary = run_flow(spec)
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": elapsed, "peak_bytes": peak, "records_in": summary.get("records_in"),
                  "accepted": summary.get("accepted"), "alerts": summary.get("alerts")}))
"""


def ceiling(path: Path) -> float:
    start = time.perf_counter()
    frame = pl.read_ndjson(path)
    frame.group_by("user_id").agg(pl.len(), pl.col("score").mean())
    return time.perf_counter() - start


def pipeline(path: Path, out: Path) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(out)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cached_events(users: int, days: int, seed: int) -> Path:
    """The generated input of the file benchmarks, written once under bench-data/ (gitignored)."""
    sys.path.insert(0, str(ROOT))
    from sources.generator import write_events

    data = ROOT / "bench-data"
    data.mkdir(exist_ok=True)
    events = data / f"events-{users}u-{days}d-s{seed}.jsonl"
    if not events.exists():
        stats = write_events(events, users=users, days=days, seed=seed)
        print(f"generated {stats.events} events -> {events}")
    return events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    events = cached_events(args.users, args.days, args.seed)
    n = sum(1 for _ in events.open("rb"))
    print(f"input: {n} events, {events.stat().st_size / 1e6:.0f} MB, {args.users} users, {args.days} days")

    ceilings, runs = [], []
    for i in range(args.runs):
        c = ceiling(events)
        r = pipeline(events, events.parent / "out")
        ceilings.append(n / c)
        runs.append(r)
        print(
            f"run {i + 1}: polars ceiling {n / c:,.0f} ev/s ({c:.2f} s) | learnstream "
            f"{n / r['seconds']:,.0f} ev/s ({r['seconds']:.2f} s), peak RSS {r['peak_bytes'] / 2**20:,.0f} MiB, "
            f"accepted {r['accepted']}, alerts {r['alerts']}"
        )
    pipe = statistics.median(n / r["seconds"] for r in runs)
    ceil = statistics.median(ceilings)
    peak = statistics.median(r["peak_bytes"] for r in runs)
    print(f"median polars ceiling: {ceil:,.0f} events/s")
    print(f"median learnstream run: {pipe:,.0f} events/s")
    print(f"ratio learnstream/ceiling: {pipe / ceil:.2f}")
    print(f"peak RSS: {peak / 2**20:,.0f} MiB = {peak / 2**20 / (args.users / 10_000):,.0f} MiB per 10k users")


if __name__ == "__main__":
    main()
