"""Cost of `build_alerts` per alert: the columnar version beside the per-row one it replaced.

    .venv/bin/python benchmarks/bench_alerts.py [--alerts 80000] [--runs 3]

Builds `--alerts` fired rows of every rule, shaped as the rules write their evidence
(`tests.test_alerts.random_fired(edge_cases=False)`), then alternates, `--runs` times, the old
per-row implementation (`tests.test_alerts._reference_build_alerts`) and `build_alerts` on the
same frame in this process, checks that both give equal frames, and prints the median µs per
alert of each, the speed-up and the share of the new time spent on the alert ids (hashlib).
The 1M-event pipeline benchmark produces about 80,000 alerts.
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

from operators.alerts import _alert_ids, build_alerts  # noqa: E402
from tests.test_alerts import _reference_build_alerts, random_fired  # noqa: E402

EMITTED_US = 1_709_300_000 * 1_000_000


def timed(fn: Callable[[], pl.DataFrame]) -> tuple[float, pl.DataFrame]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=80_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    fired = random_fired(args.alerts, seed=1, edge_cases=False)
    counts = fired["rule"].value_counts(sort=True)
    print(f"{fired.height} fired rows, {counts.height} rules")
    build_alerts(fired.head(1000), emitted_at_us=EMITTED_US)  # warm up polars

    old_s, new_s, id_s = [], [], []
    for run in range(args.runs):
        t_old, old = timed(lambda: _reference_build_alerts(fired, emitted_at_us=EMITTED_US))
        t_new, new = timed(lambda: build_alerts(fired, emitted_at_us=EMITTED_US))
        subject = pl.coalesce("user_key", "cohort_id")
        keys = fired.select(pl.concat_str("rule", subject, "trigger", separator="|"))
        t0 = time.perf_counter()
        _alert_ids(keys.to_series())
        id_s.append(time.perf_counter() - t0)
        assert_frame_equal(new, old)
        old_s.append(t_old)
        new_s.append(t_new)
        print(
            f"run {run + 1}: old {t_old * 1e3:8.1f} ms   new {t_new * 1e3:7.1f} ms   "
            f"({new.height} alerts)"
        )
    n = fired.height
    old_med, new_med, id_med = (statistics.median(s) for s in (old_s, new_s, id_s))
    print(f"old (per row) : {old_med * 1e6 / n:6.2f} µs per alert  ({old_med * 1e3:.0f} ms)")
    print(f"new (columnar): {new_med * 1e6 / n:6.2f} µs per alert  ({new_med * 1e3:.0f} ms)")
    print(f"speed-up      : {old_med / new_med:.1f}x")
    print(f"of which ids  : {id_med * 1e6 / n:6.2f} µs per alert (hashlib, per row)")


if __name__ == "__main__":
    main()
