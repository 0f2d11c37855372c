"""CohortAggregator: cohort_daily / org_daily (SPEC §7) and cohort_engagement_drop (SPEC §6).

Expected numbers are worked out by hand in the comments; z-scores are also recomputed with the
standard library's `statistics` module as an independent formula.
"""

from __future__ import annotations

import hashlib
import pickle
import statistics
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import polars as pl
import pytest

from operators.alerts import build_alerts
from operators.cohorts import FIRED_SCHEMA, RULE, CohortAggregator, CohortOutput
from schemas.tables import ALERTS, COHORT_DAILY, ORG_DAILY, USER_DAILY

D0 = date(2024, 3, 4)
EMITTED_US = 1_710_000_000_000_000
NO_ALERTS = ALERTS.empty()


def day(n: int) -> date:
    return D0 + timedelta(days=n)


def user_daily(
    rows: Sequence[tuple[str, date, str | None, str | None, int, int, int, float | None, float]],
) -> pl.DataFrame:
    """(user_key, date, cohort_id, org_id, events, completions, scored_events, avg_score,
    time_spent_s) -> a USER_DAILY frame (other columns null)."""
    cols = (
        "user_key",
        "date",
        "cohort_id",
        "org_id",
        "events",
        "completions",
        "scored_events",
        "avg_score",
        "time_spent_s",
    )
    frame = pl.DataFrame(
        [dict(zip(cols, r, strict=True)) for r in rows],
        schema={c: USER_DAILY.schema[c] for c in cols},
    )
    return USER_DAILY.conform(frame)


def alerts(rows: Sequence[tuple[str | None, str, date, str | None, str | None]]) -> pl.DataFrame:
    """(alert_id, rule, date, cohort_id, org_id) -> an ALERTS frame (other columns null)."""
    cols = ("alert_id", "rule", "date", "cohort_id", "org_id")
    frame = pl.DataFrame(
        [dict(zip(cols, r, strict=True)) for r in rows],
        schema={c: ALERTS.schema[c] for c in cols},
    )
    return ALERTS.conform(frame)


def series_rows(
    cohort: str, org: str, counts: Sequence[int | None], start: int = 0
) -> pl.DataFrame:
    """Rows giving `cohort` active_users = counts[i] on day(start + i): n active users (one
    completion each); 0 -> one inactive user-day (a row, active_users 0); None -> no row at all."""
    rows: list[tuple[str, date, str | None, str | None, int, int, int, float | None, float]] = []
    for i, n in enumerate(counts):
        if n is None:
            continue
        d = day(start + i)
        if n == 0:
            rows.append((f"{cohort}-idle", d, cohort, org, 1, 0, 0, None, 0.0))
        for u in range(n):
            rows.append((f"{cohort}-u{u}", d, cohort, org, 1, 1, 0, None, 60.0))
    return user_daily(rows)


def run_days(agg: CohortAggregator, frame: pl.DataFrame, days: range) -> CohortOutput:
    """Feed one date at a time and close it, like the flow does; concatenate the outputs."""
    outs = []
    for n in days:
        agg.add(frame.filter(pl.col("date") == day(n)), NO_ALERTS)
        outs.append(agg.close_through(day(n), emitted_at_us=EMITTED_US))
    return concat(outs)


def concat(outs: list[CohortOutput]) -> CohortOutput:
    return CohortOutput(
        cohort_daily=pl.concat([o.cohort_daily for o in outs]),
        org_daily=pl.concat([o.org_daily for o in outs]),
        cohort_alerts=pl.concat([o.cohort_alerts for o in outs]),
    )


def evidence(fired: pl.DataFrame) -> list[dict[str, Any]]:
    return [orjson.loads(e) for e in fired["evidence"]]


def z_independent(history: list[int], x: int) -> float:
    return (x - statistics.mean(history)) / max(statistics.stdev(history), 1.0)


# -- aggregation ------------------------------------------------------------------------------


def test_three_users_two_cohorts_one_org_two_dates() -> None:
    agg = CohortAggregator()
    agg.add(
        user_daily(
            [
                # user, date, cohort, org, events, completions, scored, avg_score, time_spent_s
                ("u1", day(0), "c1", "o1", 5, 2, 2, 90.0, 600.0),
                ("u2", day(0), "c1", "o1", 3, 0, 1, 60.0, 300.0),
                ("u3", day(0), "c2", "o1", 4, 1, 0, None, 120.0),
                ("u1", day(1), "c1", "o1", 2, 1, 1, 70.0, 200.0),
                ("u3", day(1), "c2", "o1", 6, 3, 3, 50.0, 900.0),
            ]
        ),
        NO_ALERTS,
    )
    out = agg.close_through(day(1), emitted_at_us=EMITTED_US)

    assert out.cohort_daily.schema == COHORT_DAILY.schema
    assert out.org_daily.schema == ORG_DAILY.schema
    assert out.cohort_alerts.schema == pl.Schema(FIRED_SCHEMA)
    assert out.cohort_alerts.height == 0  # no series has 7 days of history
    emitted = datetime(2024, 3, 9, 16, 0, tzinfo=UTC)  # 1_710_000_000 s since the epoch
    assert out.cohort_daily["emitted_at"].to_list() == [emitted] * 4
    assert out.org_daily["emitted_at"].to_list() == [emitted] * 2

    cohort = out.cohort_daily.drop("emitted_at").rows()
    assert cohort == [
        # c1 day 0: active u1 only (u2 has 0 completions) -> 1; events 5+3 = 8; completions 2;
        # scored 2+1 = 3; avg = (90*2 + 60*1) / 3 = 240/3 = 80.0; time 600+300 = 900
        ("c1", day(0), "o1", 1, 8, 2, 3, 80.0, 900.0, 0),
        # c2 day 0: u3 active; no scored events -> avg null
        ("c2", day(0), "o1", 1, 4, 1, 0, None, 120.0, 0),
        # c1 day 1: u1 alone: avg 70 (1 scored event)
        ("c1", day(1), "o1", 1, 2, 1, 1, 70.0, 200.0, 0),
        ("c2", day(1), "o1", 1, 6, 3, 3, 50.0, 900.0, 0),
    ]
    org = out.org_daily.drop("emitted_at").rows()
    assert org == [
        # day 0: active u1, u3 -> 2; events 12; completions 3; scored 3;
        # avg = (90*2 + 60*1 + (u3 not scored)) / 3 = 80.0; time 1020; cohorts c1, c2 -> 2
        ("o1", day(0), 2, 12, 3, 3, 80.0, 1020.0, 0, 2),
        # day 1: active 2; events 8; completions 4; scored 1+3 = 4;
        # avg = (70*1 + 50*3) / 4 = 220/4 = 55.0; time 1100; cohorts 2
        ("o1", day(1), 2, 8, 4, 4, 55.0, 1100.0, 0, 2),
    ]


def test_null_keys_org_choice_and_duplicate_rows() -> None:
    agg = CohortAggregator()
    rows = user_daily(
        [
            # day 0: c1 has one row in o2 and one in o1 -> tie -> smallest id "o1"
            ("u1", day(0), "c1", "o2", 1, 1, 0, None, 0.0),
            ("u2", day(0), "c1", "o1", 1, 1, 0, None, 0.0),
            # no cohort: counts in o1 only (o1 then has u2, u4: 2 active, 1 cohort)
            ("u4", day(0), None, "o1", 2, 1, 1, 40.0, 10.0),
            # no org: c2 appears in cohort_daily with org_id null, not in org_daily
            ("u5", day(0), "c2", None, 1, 1, 0, None, 0.0),
            # day 1: c1 has two rows in o2, one in o1 (and one with null org) -> "o2"
            ("u1", day(1), "c1", "o2", 1, 1, 0, None, 0.0),
            ("u3", day(1), "c1", "o2", 1, 1, 0, None, 0.0),
            ("u2", day(1), "c1", "o1", 1, 1, 0, None, 0.0),
            ("u6", day(1), "c1", None, 1, 1, 0, None, 0.0),
        ]
    )
    agg.add(rows, NO_ALERTS)
    # a replayed row of the same (user_key, date) is counted once (last one wins)
    agg.add(rows.filter(pl.col("user_key") == "u4"), NO_ALERTS)
    out = agg.close_through(day(1), emitted_at_us=EMITTED_US)

    cohort = out.cohort_daily.select("cohort_id", "date", "org_id", "active_users").rows()
    assert cohort == [
        ("c1", day(0), "o1", 2),
        ("c2", day(0), None, 1),
        ("c1", day(1), "o2", 4),
    ]
    org = out.org_daily.select(
        "org_id", "date", "active_users", "events", "avg_score", "cohorts"
    ).rows()
    assert org == [
        # day 0 o1: u2 (c1) and u4 (no cohort): active 2, events 1+2 = 3, avg 40 from u4,
        # cohorts = distinct non-null cohort ids = {c1} -> 1
        ("o1", day(0), 2, 3, 40.0, 1),
        # day 0 o2: u1 (c1)
        ("o2", day(0), 1, 1, None, 1),
        # day 1: o1 has u2; o2 has u1, u3 (u6 has no org)
        ("o1", day(1), 1, 1, None, 1),
        ("o2", day(1), 2, 2, None, 1),
    ]


def test_alerts_counted_per_date_and_key() -> None:
    agg = CohortAggregator()
    agg.add(
        user_daily(
            [
                ("u1", day(0), "c1", "o1", 1, 1, 0, None, 0.0),
                ("u3", day(0), "c2", "o1", 1, 1, 0, None, 0.0),
                ("u1", day(1), "c1", "o1", 1, 1, 0, None, 0.0),
                ("u3", day(1), "c2", "o1", 1, 0, 0, None, 0.0),
            ]
        ),
        alerts(
            [
                ("a1", "struggling", day(0), "c1", "o1"),
                ("a2", "streak_broken", day(0), "c2", "o1"),
                # no cohort: counts for o1 only
                ("a4", "low_performance", day(0), None, "o1"),
                # c9 has no user_daily rows on day 0: no c9 row, but o1 counts it
                ("a5", "stagnation", day(0), "c9", "o1"),
                ("a3", "engagement_drop", day(1), "c1", "o1"),
            ]
        ),
    )
    # the same alert delivered twice (a replay) counts once; a cohort alert fed back in is
    # ignored because the aggregator counts its own
    agg.add(
        user_daily([]),
        alerts(
            [
                ("a3", "engagement_drop", day(1), "c1", "o1"),
                ("x", RULE, day(1), "c1", "o1"),
            ]
        ),
    )
    out = agg.close_through(day(1), emitted_at_us=EMITTED_US)
    assert out.cohort_daily.select("cohort_id", "date", "alerts").rows() == [
        ("c1", day(0), 1),  # a1
        ("c2", day(0), 1),  # a2
        ("c1", day(1), 1),  # a3 (once)
        ("c2", day(1), 0),
    ]
    assert out.org_daily.select("org_id", "date", "alerts").rows() == [
        ("o1", day(0), 4),  # a1, a2, a4, a5
        ("o1", day(1), 1),  # a3
    ]


def test_late_rows_and_alerts_are_dropped_and_counted() -> None:
    agg = CohortAggregator()
    agg.add(series_rows("c1", "o1", [2]), NO_ALERTS)
    first = agg.close_through(day(0), emitted_at_us=EMITTED_US)
    assert first.cohort_daily["active_users"].to_list() == [2]
    # closing the same date again emits nothing
    assert agg.close_through(day(0), emitted_at_us=EMITTED_US).cohort_daily.height == 0

    agg.add(
        user_daily([("late", day(0), "c1", "o1", 1, 1, 0, None, 0.0)]),
        alerts([("a", "struggling", day(0), "c1", "o1")]),
    )
    assert (agg.late_user_daily_rows, agg.late_alerts) == (1, 1)
    out = agg.close_through(day(1), emitted_at_us=EMITTED_US)
    # day 1 has no rows: c1's series gets a 0 but no row is emitted
    assert out.cohort_daily.height == 0 and out.org_daily.height == 0


# -- cohort_engagement_drop -------------------------------------------------------------------


def test_drop_fires_with_hand_worked_z() -> None:
    # day 0: c1 has a user-day without completions: the series has not started yet.
    # days 1-7: 10, 10, 11, 9, 10, 10, 10 -> mean 70/7 = 10;
    #   squared deviations 0+0+1+1+0+0+0 = 2; sample variance 2/6 = 1/3; std = 0.5774
    #   -> below the floor 1 -> denominator 1.
    # day 8: x = 6 -> z = (6 - 10) / 1 = -4 -> fires (and severity is high at |z| >= 4).
    # day 9: x = 10, history 10,10,11,9,10,10,10,6: mean 76/8 = 9.5; squared deviations
    #   6*0.25 + 2.25 + 12.25 = 16; variance 16/7; std 1.512 -> z = 0.5/1.512 = 0.33 -> no.
    # day 10: x = 10 -> no.
    counts: Sequence[int | None] = [0, 10, 10, 11, 9, 10, 10, 10, 6, 10, 10]
    agg = CohortAggregator()
    out = run_days(agg, series_rows("c1", "o1", counts), range(11))

    fired = out.cohort_alerts
    assert fired.height == 1
    row = fired.row(0, named=True)
    assert row == {
        "rule": "cohort_engagement_drop",
        "user_key": None,
        "cohort_id": "c1",
        "org_id": "o1",
        "trigger": "2024-03-12",
        "date": day(8),
        "event_time": datetime(2024, 3, 13, tzinfo=UTC),
        "evidence": row["evidence"],
    }
    ev = evidence(fired)[0]
    assert ev == {
        "active_users": 6,
        "mean": pytest.approx(10.0),
        "std": pytest.approx(0.5774, abs=1e-4),
        "floor": 1,
        "history_days": 7,  # day 0 (no active user) is not part of the series
        "z": pytest.approx(-4.0),
    }
    assert ev["z"] == pytest.approx(z_independent([10, 10, 11, 9, 10, 10, 10], 6))
    # the cohort alert counts in that date's cohort_daily and org_daily alerts
    alerts_by_date = dict(out.cohort_daily.select("date", "alerts").iter_rows())
    assert alerts_by_date[day(8)] == 1
    assert sum(alerts_by_date.values()) == 1
    assert out.org_daily.filter(pl.col("date") == day(8))["alerts"].to_list() == [1]


def test_fired_frame_passes_through_build_alerts() -> None:
    # the series of test_drop_fires_with_hand_worked_z: z = -4 on day 8; and test_normal_day_rearms'
    # second alert: z = -3.75. SPEC §6 gives cohort_engagement_drop "medium" whatever the z.
    counts: Sequence[int | None] = [0, 10, 10, 11, 9, 10, 10, 10, 6, 10, 10]
    out = run_days(CohortAggregator(), series_rows("c1", "o1", counts), range(11))
    built = build_alerts(out.cohort_alerts, emitted_at_us=EMITTED_US)
    assert built.schema == ALERTS.schema
    row = built.row(0, named=True)
    # SPEC §6: alert_id = first 32 hex of SHA-256 of "rule|cohort_id|trigger"
    expected_id = hashlib.sha256(b"cohort_engagement_drop|c1|2024-03-12").hexdigest()[:32]
    assert (row["alert_id"], row["severity"], row["user_key"], row["cohort_id"]) == (
        expected_id,
        "medium",
        None,
        "c1",
    )
    assert (row["org_id"], row["date"], row["event_time"]) == (
        "o1",
        day(8),
        datetime(2024, 3, 13, tzinfo=UTC),
    )
    assert "6 active learners" in row["message"]

    counts = [10] * 14 + [0, 10, 0]
    out = run_days(CohortAggregator(), series_rows("c1", "o1", counts), range(17))
    built = build_alerts(out.cohort_alerts, emitted_at_us=EMITTED_US)
    assert built.select("date", "severity").rows() == [(day(14), "medium"), (day(16), "medium")]

    # built alerts fed back into add() are not counted twice
    agg = CohortAggregator()
    agg.add(series_rows("c1", "o1", counts[:16]), NO_ALERTS)
    first = agg.close_through(day(15), emitted_at_us=EMITTED_US)
    agg.add(series_rows("c1", "o1", counts, 0).filter(pl.col("date") == day(16)), NO_ALERTS)
    agg.add(user_daily([]), build_alerts(first.cohort_alerts, emitted_at_us=EMITTED_US))
    assert agg.late_alerts == 0  # ignored by rule, before the lateness check
    last = agg.close_through(day(16), emitted_at_us=EMITTED_US)
    assert last.cohort_daily["alerts"].to_list() == [1]


def test_edge_triggered_two_low_days_fire_once() -> None:
    # days 0-13: 10 each; day 14: 0 -> mean 10, std 0 -> floor 1 -> z = -10 -> fires.
    # day 15: 0, history 14 x 10 and 0: mean 140/15 = 9.333; squared deviations
    #   14 * 0.4444 + 87.11 = 93.33; variance 93.33/14 = 6.667; std 2.582
    #   -> z = -9.333/2.582 = -3.615 <= -3: still true, but the rule has not re-armed.
    counts: Sequence[int | None] = [10] * 14 + [0, 0]
    assert z_independent([10] * 14 + [0], 0) == pytest.approx(-3.615, abs=1e-3)
    out = run_days(CohortAggregator(), series_rows("c1", "o1", counts), range(16))
    assert out.cohort_alerts["date"].to_list() == [day(14)]
    assert evidence(out.cohort_alerts)[0]["z"] == pytest.approx(-10.0)


def test_normal_day_rearms() -> None:
    # days 0-13: 10; day 14: 0 -> fires (z = -10).
    # day 15: 10 -> z = (10 - 9.333) / 2.582 = +0.26 -> false -> re-arms.
    # day 16: 0, history 14 x 10, 0, 10 (16 values): mean 150/16 = 9.375; squared deviations
    #   15 * 0.390625 + 87.890625 = 93.75; variance 93.75/15 = 6.25; std 2.5
    #   -> z = -9.375/2.5 = -3.75 -> fires again.
    counts: Sequence[int | None] = [10] * 14 + [0, 10, 0]
    out = run_days(CohortAggregator(), series_rows("c1", "o1", counts), range(17))
    assert out.cohort_alerts["date"].to_list() == [day(14), day(16)]
    ev = evidence(out.cohort_alerts)[1]
    assert (ev["history_days"], ev["mean"], ev["std"], ev["z"]) == (
        16,
        pytest.approx(9.375),
        pytest.approx(2.5),
        pytest.approx(-3.75),
    )
    assert ev["z"] == pytest.approx(z_independent([10] * 14 + [0, 10], 0))


def test_fewer_than_seven_history_values_no_alert() -> None:
    # days 0-5: 10 (6 values); day 6: 0 -> history of 6 < 7 -> z null -> no alert.
    # day 7: 0, history 10 x 6, 0 (7 values): mean 60/7 = 8.571; squared deviations
    #   6 * 2.041 + 73.47 = 85.71; variance 14.29; std 3.780 -> z = -2.268 -> no alert.
    counts: Sequence[int | None] = [10] * 6 + [0, 0]
    assert z_independent([10] * 6 + [0], 0) == pytest.approx(-2.268, abs=1e-3)
    out = run_days(CohortAggregator(), series_rows("c1", "o1", counts), range(8))
    assert out.cohort_alerts.height == 0


@pytest.mark.parametrize("split", [False, True])
def test_gap_days_count_as_zero(split: bool) -> None:
    # c1: days 0-13: 10; day 14: no rows anywhere (a gap); day 15: 10; day 16: 0.
    # day 14 counts as 0: z = -10 -> fires, dated day 14, org_id the last seen (o1); no
    #   cohort_daily / org_daily row exists for day 14 to count it.
    # day 15: re-arms; day 16: history 14 x 10, 0, 10 -> z = -3.75 (as in test_normal_day_rearms)
    #   with history_days 16 and mean 9.375: the gap is a zero inside the history.
    #   (Had the gap been skipped: history 15 x 10 -> std 0 -> z = -10, history_days 15.)
    frame = series_rows("c1", "o1", [10] * 14 + [None, 10, 0])
    agg = CohortAggregator()
    agg.add(frame, NO_ALERTS)
    if split:
        # the gap falls between two calls
        outs = [
            agg.close_through(day(13), emitted_at_us=EMITTED_US),
            agg.close_through(day(15), emitted_at_us=EMITTED_US),
            agg.close_through(day(16), emitted_at_us=EMITTED_US),
        ]
        out = concat(outs)
    else:
        out = agg.close_through(day(16), emitted_at_us=EMITTED_US)
    assert out.cohort_alerts.select("date", "org_id").rows() == [(day(14), "o1"), (day(16), "o1")]
    ev = evidence(out.cohort_alerts)
    assert (ev[0]["active_users"], ev[0]["z"]) == (0, pytest.approx(-10.0))
    assert (ev[1]["history_days"], ev[1]["mean"], ev[1]["z"]) == (
        16,
        pytest.approx(9.375),
        pytest.approx(-3.75),
    )
    assert day(14) not in out.cohort_daily["date"].to_list()
    # the alert of day 16 counts in day 16's rows
    assert out.cohort_daily.filter(pl.col("date") == day(16))["alerts"].to_list() == [1]


def test_cohort_silent_while_others_active_fires_and_counts_in_org() -> None:
    # c1 and c2 in o1; c1 has no rows on day 7 while c2 does: c1's x = 0 -> z = -10 -> fires;
    # the alert counts in o1's org_daily row of day 7 (c1 has no cohort_daily row that date).
    c1 = series_rows("c1", "o1", [5] * 7 + [None])
    c2 = series_rows("c2", "o1", [3] * 8)
    out = run_days(CohortAggregator(), pl.concat([c1, c2]), range(8))
    assert out.cohort_alerts.select("cohort_id", "date").rows() == [("c1", day(7))]
    assert out.cohort_daily.filter(pl.col("date") == day(7)).select(
        "cohort_id", "alerts"
    ).rows() == [("c2", 0)]
    assert out.org_daily.filter(pl.col("date") == day(7))["alerts"].to_list() == [1]


# -- recovery ---------------------------------------------------------------------------------


def test_snapshot_restore_mid_stream_matches_uninterrupted_run() -> None:
    c1 = series_rows("c1", "o1", [10, 10, 11, 9, 10, 10, 10, 6, 10, 0, 10, 10])
    c2 = series_rows("c2", "o1", [4] * 9 + [None, None, 4])
    c3 = series_rows("c3", "o2", [None, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 2])
    frame = pl.concat([c1, c2, c3])
    user_alerts = alerts(
        [(f"a{n}", "struggling", day(n), "c1", "o1") for n in range(12)]
        + [(f"b{n}", "stagnation", day(n), "c3", "o2") for n in range(0, 12, 3)]
    )

    def feed(agg: CohortAggregator, n: int) -> None:
        agg.add(
            frame.filter(pl.col("date") == day(n)),
            user_alerts.filter(pl.col("date") == day(n)),
        )

    def step(agg: CohortAggregator, n: int) -> CohortOutput:
        # rows of day n+1 arrive before day n closes (different time zones), so the buffer is
        # never empty at a snapshot
        feed(agg, n + 1)
        return agg.close_through(day(n), emitted_at_us=EMITTED_US + n)

    straight = CohortAggregator()
    feed(straight, 0)
    expected = concat([step(straight, n) for n in range(12)])

    first = CohortAggregator()
    feed(first, 0)
    outs = [step(first, n) for n in range(6)]
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    resumed = CohortAggregator.restore(snap)
    outs += [step(resumed, n) for n in range(6, 12)]
    got = concat(outs)

    assert expected.cohort_alerts.height >= 2  # the stream does exercise the rule
    assert got.cohort_daily.equals(expected.cohort_daily)
    assert got.org_daily.equals(expected.org_daily)
    assert got.cohort_alerts.equals(expected.cohort_alerts)
    with pytest.raises(ValueError, match="snapshot"):
        CohortAggregator.restore({"version": 0})
