"""Throughput of `decode_batch` on 1M clean synthetic events, beside `pl.read_ndjson`.

    .venv/bin/python benchmarks/bench_decode.py [--events 1000000] [--batch 100000] [--runs 3]

Events come from `sources.generator.write_events` when it is available (else simple ones made
here). Both measurements run in the same process on the same bytes: decode gets the lines in
micro-batches of `--batch` (as a source would hand them over), `pl.read_ndjson` the whole buffer
at once (parse only: no validation, no pseudonymisation, no local dates). Prints the median of
`--runs` runs of each and the ratio. Target: decode >= 400k events/s.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from learnstream.config import Settings
from operators.decode import RawBatch, decode_batch
from operators.pseudonymize import Pseudonymizer

NOW_US = int(datetime(2026, 12, 31, tzinfo=UTC).timestamp() * 1_000_000)


def make_lines(n: int) -> tuple[list[bytes], str]:
    """About `n` clean event lines and where they came from."""
    try:
        from sources.generator import write_events
    except ImportError:
        pass
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "events.jsonl"
            write_events(path, users=max(1, n // 100), days=30, seed=7)
            lines = path.read_bytes().splitlines()
        lines = [line for line in lines if line][:n]
        if len(lines) >= n * 0.9:
            return lines, "sources.generator.write_events"
    rng = np.random.default_rng(7)
    types = ["lesson_completed", "quiz_completed", "session_started", "xp_earned"]
    zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Seoul"]
    base = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp())
    out = []
    for i in range(n):
        ts = datetime.fromtimestamp(base + int(rng.integers(0, 30 * 86400)), UTC)
        event = {
            "event_id": f"ev-{i:09d}",
            "user_id": f"user-{int(rng.integers(0, n // 100 + 1))}",
            "type": types[i % 4],
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cohort_id": "cohort-1",
            "skill": "algebra",
            "score": round(float(rng.random()) * 100, 1),
            "duration_s": 120.0,
            "xp": 10,
            "timezone": zones[i % 4],
        }
        out.append(orjson.dumps(event))
    return out, "simple synthetic events"


def run_decode(lines: list[bytes], batch: int) -> tuple[float, int, int]:
    settings = Settings()
    pseudonymizer = Pseudonymizer(b"bench-secret")
    accepted = rejected = 0
    start = time.perf_counter()
    for lo in range(0, len(lines), batch):
        chunk = lines[lo : lo + batch]
        raw = RawBatch(
            lines=chunk,
            ref_prefix="file:/bench.jsonl:",
            positions=np.arange(lo + 1, lo + 1 + len(chunk), dtype=np.int64),
            received_at_us=NOW_US,
        )
        result = decode_batch(raw, settings, pseudonymizer, now_us=NOW_US, seq_start=lo)
        accepted += result.events.height
        rejected += result.rejected.height
    return time.perf_counter() - start, accepted, rejected


def run_read_ndjson(buf: bytes) -> float:
    start = time.perf_counter()
    pl.read_ndjson(io.BytesIO(buf))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=Settings().batch_size)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    lines, origin = make_lines(args.events)
    buf = b"\n".join(lines) + b"\n"
    n = len(lines)
    print(f"{n:,} events from {origin}, {len(buf) / n:.0f} bytes/event, batch {args.batch:,}")

    decode_times, ndjson_times = [], []
    accepted = rejected = 0
    for _ in range(args.runs):
        seconds, accepted, rejected = run_decode(lines, args.batch)
        decode_times.append(seconds)
        ndjson_times.append(run_read_ndjson(buf))
    decode_s = statistics.median(decode_times)
    ndjson_s = statistics.median(ndjson_times)
    print(f"accepted {accepted:,}, rejected {rejected:,}")
    print(f"decode_batch     {n / decode_s:>12,.0f} events/s  (median {decode_s:.3f} s)")
    print(f"pl.read_ndjson   {n / ndjson_s:>12,.0f} events/s  (median {ndjson_s:.3f} s)")
    print(f"ratio decode / read_ndjson: {ndjson_s / decode_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
