"""Cost of `build_alerts` per alert: the columnar version beside the per-row one it replaced.

    .venv/bin/python benchmarks/bench_alerts.py [--alerts 80000] [--runs 3]

Builds `--alerts` fired rows of every rule, shaped as the rules write their evidence
(`tests.test_alerts.random_fired(edge_cases=False)`), and times, `--runs` times in this
process, the old per-row implementation (`tests.test_alerts._reference_build_alerts`) and
`build_alerts` on the same rows, in two ways:

- one call for all rows;
- calls the size the pipeline makes: on the 1M-event benchmark it calls `build_alerts` ~110
  times for ~80,000 alerts — event rules per batch (~190 rows, 2 rules), day rules per
  closed day (~1,250 rows, 7 rules) — so a fixed cost per call matters as much as the cost
  per row. (Cohort rows, 0.5% there but 10% here, go in day-sized calls.)

Checks that both give equal frames, and prints the median µs per alert of each. Machines here
are shared and noisy: compare old and new from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.alerts import build_alerts  # noqa: E402
from tests.test_alerts import _reference_build_alerts, random_fired  # noqa: E402

EMITTED_US = 1_709_300_000 * 1_000_000
EVENT_RULES = ("struggling", "low_performance")
#: rows per call, by source, as the 1M-event pipeline benchmark makes them
CALL_ROWS = {"event": 190, "day": 1_250, "cohort": 1_250}

Build = Callable[..., pl.DataFrame]


def pipeline_calls(fired: pl.DataFrame) -> list[pl.DataFrame]:
    """The rows cut into frames of one source each, of the pipeline's sizes."""
    source = (
        pl.when(pl.col("rule").is_in(EVENT_RULES))
        .then(pl.lit("event"))
        .when(pl.col("rule") == "cohort_engagement_drop")
        .then(pl.lit("cohort"))
        .otherwise(pl.lit("day"))
    )
    tagged = fired.with_columns(source.alias("_source"))
    calls = []
    for (name,), rows in tagged.partition_by("_source", as_dict=True).items():
        rows = rows.drop("_source")
        size = CALL_ROWS[str(name)]
        calls += [rows.slice(i, size) for i in range(0, rows.height, size)]
    return calls


def timed(build: Build, frames: list[pl.DataFrame]) -> tuple[float, list[pl.DataFrame]]:
    start = time.perf_counter()
    out = [build(f, emitted_at_us=EMITTED_US) for f in frames]
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=80_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    fired = random_fired(args.alerts, seed=1, edge_cases=False)
    calls = pipeline_calls(fired)
    print(f"{fired.height} fired rows of {fired['rule'].n_unique()} rules; {len(calls)} calls")
    build_alerts(fired.head(100), emitted_at_us=EMITTED_US)  # warm up (number tables)

    for label, frames in (("one call", [fired]), (f"{len(calls)} calls", calls)):
        seconds: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.runs):
            t_old, old = timed(_reference_build_alerts, frames)
            t_new, new = timed(build_alerts, frames)
            for a, b in zip(new, old, strict=True):
                assert_frame_equal(a, b)
            seconds["old"].append(t_old)
            seconds["new"].append(t_new)
        old_s, new_s = statistics.median(seconds["old"]), statistics.median(seconds["new"])
        n = fired.height
        print(
            f"{label:>10}: old {old_s * 1e6 / n:6.2f} µs/alert ({old_s * 1e3:5.0f} ms)   "
            f"new {new_s * 1e6 / n:5.2f} µs/alert ({new_s * 1e3:4.0f} ms)   "
            f"{old_s / new_s:4.1f}x"
        )


if __name__ == "__main__":
    main()
