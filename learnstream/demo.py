"""`learnstream demo`: the embedded default, end to end on generated data.

Generates reproducible events (with a few bad records and duplicates), runs the file flow into
`./out`, and prints a short summary. It uses a throwaway pseudonymisation key and says so: demo
output is not for real learners.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import duckdb

from learnstream.config import load_settings
from learnstream.query import connect


def run_demo(out_dir: Path, *, users: int, days: int, seed: int, broker: bool = True) -> int:
    from learnstream.runner import RunSpec, run_flow
    from sources.generator import write_events

    out_dir.mkdir(parents=True, exist_ok=True)
    key = os.environ.get("LEARNSTREAM_PSEUDONYM_KEY")
    if not key:
        key = secrets.token_hex(32)
        print("demo: LEARNSTREAM_PSEUDONYM_KEY is not set; using a throwaway local dev key")
    events = out_dir / "events.jsonl"
    stats = write_events(
        events, users=users, days=days, seed=seed, bad_fraction=0.01, duplicate_fraction=0.005
    )
    print(f"demo: generated {stats.events} events for {stats.users} learners ({stats.bad} bad) -> {events}")
    settings = load_settings()
    spec = RunSpec(settings=settings, out_dir=out_dir, secret=key.encode(), paths=[events])
    summary = run_flow(spec)
    print_summary(out_dir, summary)
    if broker:
        from learnstream.demo_live import show_live_alerts

        show_live_alerts(events, settings, key.encode())
    print(f"\nquery it: learnstream query --out {out_dir} \"SELECT * FROM user_state LIMIT 5\"")
    return 0


def _show(con: duckdb.DuckDBPyConnection, title: str, sql: str) -> None:
    print(f"\n{title}")
    try:
        print(con.sql(sql))
    except duckdb.Error as exc:
        print(f"  (not available: {exc})")


def print_summary(out_dir: Path, summary: dict[str, object]) -> None:
    keys = ("records_in", "accepted", "rejected", "duplicates", "late", "alerts")
    print("\nrun: " + "  ".join(f"{k}={summary.get(k)}" for k in keys))
    con = connect(out_dir)
    try:
        _show(
            con,
            "top streaks",
            "SELECT left(user_key, 12) AS learner, cohort_id, current_streak, longest_streak, "
            "days_active, momentum, round(engagement_7d, 2) AS engagement_7d "
            "FROM user_state ORDER BY longest_streak DESC, user_key LIMIT 5",
        )
        _show(
            con,
            "cohorts (whole run)",
            "SELECT cohort_id, any_value(org_id) AS org_id, sum(active_users) AS active_user_days, "
            "sum(completions) AS completions, round(sum(avg_score * scored_events) / "
            "nullif(sum(scored_events), 0), 1) AS avg_score, sum(alerts) AS alerts "
            "FROM cohort_daily GROUP BY cohort_id ORDER BY cohort_id",
        )
        _show(
            con,
            "alerts by rule",
            "SELECT rule, severity, count(*) AS alerts FROM alerts GROUP BY ALL ORDER BY alerts DESC",
        )
        _show(
            con,
            "rejected records by reason",
            "SELECT reason, count(*) AS records FROM rejected_events GROUP BY reason ORDER BY records DESC",
        )
    finally:
        con.close()
