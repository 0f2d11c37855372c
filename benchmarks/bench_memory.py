"""State memory per user of the analytics operator (issue 5: target <= 1 KB per user).

    .venv/bin/python benchmarks/bench_memory.py [--users 1000000] [--events-per-user 3]

Feeds `UserAnalytics` (one shard holding every user: the worst case for one process) with
`--events-per-user` scored completions per user over two days, closes the days, and prints the
bytes of every piece of state divided by the number of users, plus the process RSS growth.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import polars as pl

from learnstream.config import Settings
from operators.timeutil import local_days
from operators.users import UserAnalytics
from schemas.events import EVENT_BATCH_SCHEMA

DAY_US = 86_400_000_000
START_US = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z


def batch(first_user: int, users: int, per_user: int, seq0: int, rng: np.random.Generator) -> pl.DataFrame:
    n = users * per_user
    user = np.repeat(np.arange(first_user, first_user + users), per_user)
    t = START_US + rng.integers(0, 2 * DAY_US, n)
    frame = pl.DataFrame(
        {
            "seq": np.arange(seq0, seq0 + n),
            "source_ref": pl.repeat("file:bench:1", n, eager=True),
            "event_id": pl.Series(np.arange(seq0, seq0 + n)).cast(pl.String),
            "user_key": pl.Series(user).cast(pl.String).str.zfill(32),
            "type": pl.repeat("exercise_completed", n, eager=True),
            "t_us": np.sort(t),
            "timezone": pl.repeat("UTC", n, eager=True),
            "cohort_id": pl.Series(user % 500).cast(pl.String),
            "org_id": pl.Series(user % 20).cast(pl.String),
            "skill": pl.Series(["algebra", "reading", "grammar"]).gather(user % 3),
            "score": rng.uniform(30, 100, n),
            "duration_s": rng.uniform(60, 900, n),
            "xp": rng.integers(0, 50, n),
        }
    ).with_columns(content_id=pl.lit(None, pl.String), session_id=pl.lit(None, pl.String))
    frame = frame.with_columns(date=local_days(frame["t_us"], frame["timezone"]))
    return frame.select([pl.col(c).cast(d) for c, d in EVENT_BATCH_SCHEMA.items()])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events-per-user", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    users = UserAnalytics(Settings())
    start = time.perf_counter()
    seq = 0
    for first in range(0, args.users, args.chunk):
        size = min(args.chunk, args.users - first)
        events = batch(first, size, args.events_per_user, seq, rng)
        seq += len(events)
        users.ingest(events, emitted_at_us=0)
    users.advance(START_US + 3 * DAY_US, final=True, emitted_at_us=0)
    elapsed = time.perf_counter() - start
    n = users.size
    rule_arrays = users.a.RULES
    parts = {
        "numpy per-user arrays": sum(
            v[:n].nbytes for k, v in users.a.data.items() if k not in rule_arrays
        ),
        "slots (user_key -> slot)": users.slots.estimated_size(),
        "slot index (hashes)": sum(a.nbytes for part in (users._slot_index._base or (), users._slot_index._delta) for a in part),
        "cohort/org per user": users.cohort_id.estimated_size() + users.org_id.estimated_size(),
        "event-rule state": sum(users.a.data[k][:n].nbytes for k in rule_arrays),
        "open days": users.open_days.estimated_size() + users.open_skill_days.estimated_size(),
        "recent events (7 d)": users.recent.estimated_size(),
        "scored events (30 d)": users.scored.estimated_size(),
        "skills per user": users.skills.estimated_size(),
    }
    fixed = sum(v for k, v in parts.items() if not k.startswith(("recent", "scored")))
    print(f"{n:,} users, {seq:,} events, {elapsed:.1f} s")
    for name, size in parts.items():
        print(f"  {name:28s} {size / n:8.1f} B/user")
    print(f"  {'fixed-size state':28s} {fixed / n:8.1f} B/user (excludes the time-bounded event windows)")
    print(f"  {'all state':28s} {sum(parts.values()) / n:8.1f} B/user")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS {rss / 1024:,.0f} MiB (+{(rss - rss0) / 1024:,.0f} MiB)")


if __name__ == "__main__":
    main()
