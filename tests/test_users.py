"""UserAnalytics on hand-made event tables; every expected number is worked out in a comment."""

from __future__ import annotations

import json
import statistics
from datetime import date

import polars as pl
import pytest

from learnstream.config import Settings
from operators.users import UserAnalytics
from tests.eventtable import events, to_us


def run(table: str, *, final_at: str | None = None) -> dict[str, pl.DataFrame]:
    users = UserAnalytics(Settings())
    batch = events(table)
    got = users.ingest(batch, emitted_at_us=0)
    as_of = to_us(final_at) if final_at else int(batch["t_us"].max())  # type: ignore[arg-type]
    closed = users.advance(as_of, final=True, emitted_at_us=0)
    return {
        "user_daily": closed.user_daily,
        "user_state": closed.user_state,
        "alerts": pl.concat([got.alerts, closed.alerts]),
        "user_skill_daily": closed.user_skill_daily,
        "user_skill_state": closed.user_skill_state,
    }


def daily(out: dict[str, pl.DataFrame], user: str) -> list[tuple[date, int, int]]:
    rows = out["user_daily"].filter(pl.col("user_key") == user).sort("date")
    return list(zip(rows["date"], rows["completions"], rows["streak"], strict=True))


def state(out: dict[str, pl.DataFrame], user: str) -> dict[str, object]:
    return out["user_state"].filter(pl.col("user_key") == user).row(0, named=True)


def test_streak_across_dst_change_in_local_days() -> None:
    # New York switches to EDT at 2026-03-08 02:00 local. Completions at 23:30 local each day:
    # 03-07 23:30 EST = 03-08 04:30Z; 03-08 23:30 EDT = 03-09 03:30Z; 03-09 23:30 EDT = 03-10 03:30Z.
    # Local days 03-07, 03-08, 03-09 -> streak 1, 2, 3 (the UTC dates would be 03-08..03-10).
    out = run(
        """
        | user | type             | timestamp            | zone             |
        | ny   | lesson_completed | 2026-03-08T04:30:00Z | America/New_York |
        | ny   | lesson_completed | 2026-03-09T03:30:00Z | America/New_York |
        | ny   | lesson_completed | 2026-03-10T03:30:00Z | America/New_York |
        """
    )
    assert daily(out, "ny") == [
        (date(2026, 3, 7), 1, 1),
        (date(2026, 3, 8), 1, 2),
        (date(2026, 3, 9), 1, 3),
    ]
    s = state(out, "ny")
    assert (s["days_active"], s["current_streak"], s["longest_streak"]) == (3, 3, 3)
    assert s["momentum"] == "high"  # as_of = 03-10 03:30Z = 03-09 23:30 local: active today


def test_local_midnight_on_another_utc_date() -> None:
    # Seoul is UTC+9: 03-01 15:30Z = 03-02 00:30 KST and 03-02 14:30Z = 03-02 23:30 KST: one local
    # day with 2 completions although the UTC dates differ; 03-03 14:59Z = 03-03 23:59 KST.
    out = run(
        """
        | user | type               | timestamp            | zone       | score |
        | kr   | exercise_completed | 2026-03-01T15:30:00Z | Asia/Seoul | 70    |
        | kr   | exercise_completed | 2026-03-02T14:30:00Z | Asia/Seoul | 90    |
        | kr   | quiz_completed     | 2026-03-03T14:59:00Z | Asia/Seoul | 85    |
        """
    )
    assert daily(out, "kr") == [(date(2026, 3, 2), 2, 1), (date(2026, 3, 3), 1, 2)]
    row = out["user_daily"].filter(pl.col("date") == date(2026, 3, 2)).row(0, named=True)
    # avg of 70 and 90 = 80; one excellent score (>= 80)
    assert (row["avg_score"], row["min_score"], row["max_score"], row["excellent_scores"]) == (80.0, 70.0, 90.0, 1)


TEN_DAYS_THEN_DECLINE = "\n".join(
    ["| user | type | timestamp | score | duration | skill |"]
    + [
        f"| u1 | lesson_completed | 2026-03-{d:02d}T10:00:00Z |  | 600 | algebra |\n"
        f"| u1 | quiz_completed | 2026-03-{d:02d}T11:00:00Z | {90 if d <= 7 else 40} | 600 | algebra |"
        for d in range(1, 11)
    ]
)


def test_day_rules_anomalies_and_state_worked_by_hand() -> None:
    # u1: 2 completions (1200 s) every day 03-01..03-10, quiz 90 on days 1-7 then 40; as_of 03-12 10:00Z
    # closes 03-11 and 03-12 (both inactive).
    out = run(TEN_DAYS_THEN_DECLINE, final_at="2026-03-12T10:00:00+00:00")
    alerts = {(r["rule"], r["date"]): r for r in out["alerts"].iter_rows(named=True)}
    # performance on 03-08: history 7 scored days of 90 (std 0 -> floor 5): z = (40-90)/5 = -10
    perf = alerts[("anomaly_performance", date(2026, 3, 8))]
    assert json.loads(perf["evidence"])["z"] == pytest.approx(-10.0)
    assert perf["severity"] == "high"
    # 03-09 has z = (40 - mean(90*7, 40)) / std(...) = (40-83.75)/17.68 = -2.47: re-arms, no alert;
    # 03-10: history 90*7,40,40 -> mean 78.89, std 20.28 -> z = -1.92 -> nothing.
    assert [k for k in alerts if k[0] == "anomaly_performance"] == [("anomaly_performance", date(2026, 3, 8))]
    # 03-11: first day without a completion ends a 10-day streak
    assert json.loads(alerts[("streak_broken", date(2026, 3, 11))]["evidence"])["streak"] == 10
    # time spent on 03-11: 0 against 10 days of 1200 s (std 0 -> floor 300): z = -4 -> high
    eng = alerts[("anomaly_engagement", date(2026, 3, 11))]
    assert json.loads(eng["evidence"])["z"] == pytest.approx(-4.0)
    assert eng["severity"] == "high"
    # completions on 03-11: (0 - 2) / max(0, 1) = -2: no velocity alert
    assert not [k for k in alerts if k[0] == "anomaly_velocity"]
    # low_performance fired on the second assessment below 60 (03-09 11:00), once
    low = [k for k in alerts if k[0] == "low_performance"]
    assert low == [("low_performance", date(2026, 3, 9))]

    s = state(out, "u1")
    assert (s["days_active"], s["current_streak"], s["longest_streak"]) == (10, 0, 10)
    assert s["momentum"] == "low"  # last active 03-10, two days before 03-12
    # trailing 7 closed days 03-06..03-12: 5 active days x 2 completions
    assert s["velocity_7d"] == 10 / 7  # exactly (float32 state gave 1.4285714626)
    assert s["consistency_7d"] == pytest.approx(5 / 7)
    # trailing 7 days of events (03-05 10:00, 03-12 10:00]: 03-05 11:00 quiz + 10 events of 03-06..10
    # = 11 events x 600 s = 6600 s and 11 completions -> 0.5*6600/12600 + 0.5*11/21 = 0.5238
    assert s["engagement_7d"] == pytest.approx(0.5 * 6600 / 12600 + 0.5 * 11 / 21)
    # engagement series on 03-12: previous 11 days = 10 x 1200, 0 -> z = (0 - mean)/std
    prev = [1200.0] * 10 + [0.0]
    expected = (0 - statistics.mean(prev)) / max(statistics.stdev(prev), 300)
    assert s["anomaly_engagement"] == pytest.approx(expected)
    # anomaly scores are those of the last closed day (03-12); it has no score: no performance z
    assert s["anomaly_performance"] is None
    assert s["total_completions"] == 20
    assert s["struggling"] is False


def test_anomaly_performance_of_state_is_that_of_the_last_closed_day() -> None:
    # the final watermark closes 03-10, a scored day: history 90 x 7, 40 (03-08), 40 (03-09)
    out = run(TEN_DAYS_THEN_DECLINE, final_at="2026-03-10T12:00:00+00:00")
    prev = [90.0] * 7 + [40.0, 40.0]
    expected = (40 - statistics.mean(prev)) / max(statistics.stdev(prev), 5)  # = -1.92
    assert state(out, "u1")["anomaly_performance"] == pytest.approx(expected)


def test_inactive_weeks_count_as_zero_days() -> None:
    # active with 2 completions on 03-01..03-10, silent 03-11..03-30, 1 completion on 03-31.
    rows = ["| user | type | timestamp |"]
    rows += [f"| u | lesson_completed | 2026-03-{d:02d}T09:00:00Z |" for d in range(1, 11) for _ in (0, 1)]
    rows += ["| u | lesson_completed | 2026-03-31T09:00:00Z |"]
    out = run("\n".join(rows))
    s = state(out, "u")
    # previous 28 days of 03-31 = 03-03..03-30: eight 2s then twenty 0s: mean 16/28 = 0.5714,
    # sample std 0.9201 < floor 1 -> z = (1 - 0.5714) / 1 = 0.4286
    history = [2.0] * 8 + [0.0] * 20
    assert s["anomaly_velocity"] == pytest.approx((1 - statistics.mean(history)) / 1.0)
    assert s["anomaly_velocity"] == pytest.approx(0.428571, abs=1e-6)
    alerts = out["alerts"]
    # engagement_drop on the 3rd empty day (03-13), stagnation on the 5th (03-15), once each
    drops = alerts.filter(pl.col("rule").is_in(["engagement_drop", "stagnation"])).sort("date")
    assert list(zip(drops["rule"], drops["date"], strict=True)) == [
        ("engagement_drop", date(2026, 3, 13)),
        ("stagnation", date(2026, 3, 15)),
    ]
    # the velocity anomaly of the silence: on 03-11 history = ten 2s (std 0 -> floor 1): z = -2;
    # it never reaches -3 while the zeros enter the baseline
    assert alerts.filter(pl.col("rule") == "anomaly_velocity").is_empty()
    # 31 local days, zero-filled, but user_daily only has the 11 days with events
    assert len(out["user_daily"]) == 11
    assert (s["current_streak"], s["longest_streak"], s["days_active"]) == (1, 10, 11)


def test_anomaly_needs_seven_history_days() -> None:
    # 6 days of 1 completion then a burst of 9: only 6 history values -> null, no alert
    rows = ["| user | type | timestamp |"]
    rows += [f"| b | lesson_completed | 2026-03-{d:02d}T09:00:00Z |" for d in range(1, 7)]
    rows += ["| b | lesson_completed | 2026-03-07T09:00:00Z |"] * 9
    out = run("\n".join(rows))
    assert state(out, "b")["anomaly_velocity"] is None
    assert out["alerts"].filter(pl.col("rule") == "anomaly_velocity").is_empty()


def test_velocity_anomaly_fires_once_and_rearms() -> None:
    # 8 days of 1 completion, then 03-09: 5 completions -> z = (5-1)/1 = 4 (high);
    # 03-10: 5 again -> history 1x8, 5 -> mean 1.444, std 1.333 -> z = 2.67 < 3: re-arms;
    # 03-11: 9 -> history 1x8,5,5 -> mean 1.8, std 1.687 -> z = 4.27 -> fires again
    rows = ["| user | type | timestamp |"]
    rows += [f"| v | lesson_completed | 2026-03-{d:02d}T09:00:00Z |" for d in range(1, 9)]
    rows += ["| v | lesson_completed | 2026-03-09T09:00:00Z |"] * 5
    rows += ["| v | lesson_completed | 2026-03-10T09:00:00Z |"] * 5
    rows += ["| v | lesson_completed | 2026-03-11T09:00:00Z |"] * 9
    out = run("\n".join(rows))
    fired = out["alerts"].filter(pl.col("rule") == "anomaly_velocity").sort("date")
    assert fired["date"].to_list() == [date(2026, 3, 9), date(2026, 3, 11)]
    z = [json.loads(e)["z"] for e in fired["evidence"]]
    h2 = [1.0] * 8 + [5.0, 5.0]
    assert z == pytest.approx([4.0, (9 - statistics.mean(h2)) / statistics.stdev(h2)])
    assert fired["severity"].to_list() == ["high", "high"]


def test_user_daily_cohort_is_last_non_null_of_the_day_and_skill_rows() -> None:
    out = run(
        """
        | user | type               | timestamp            | cohort | org | skill   | score | duration | xp |
        | c    | session_started    | 2026-03-02T08:00:00Z | A      | O   |         |       |          |    |
        | c    | exercise_completed | 2026-03-02T08:10:00Z | B      | O   | algebra | 50    | 300      | 10 |
        | c    | exercise_completed | 2026-03-02T08:20:00Z |        |     | algebra | 70    | 200      |    |
        | c    | material_viewed    | 2026-03-02T08:30:00Z |        |     | reading |       | 100      | 5  |
        """
    )
    row = out["user_daily"].row(0, named=True)
    assert (row["cohort_id"], row["org_id"]) == ("B", "O")
    assert (row["events"], row["completions"], row["exercises_completed"], row["sessions"]) == (4, 2, 2, 1)
    assert (row["time_spent_s"], row["xp"], row["avg_score"]) == (600.0, 15, 60.0)
    skills = {r["skill"]: r for r in out["user_skill_daily"].iter_rows(named=True)}
    assert (skills["algebra"]["completions"], skills["algebra"]["avg_score"], skills["algebra"]["time_spent_s"]) == (2, 60.0, 500.0)
    assert (skills["reading"]["completions"], skills["reading"]["avg_score"]) == (0, None)


def test_watermark_closes_days_incrementally_and_late_after_close() -> None:
    users = UserAnalytics(Settings())
    first = events(
        """
        | user | type             | timestamp            |
        | w    | lesson_completed | 2026-03-01T10:00:00Z |
        """
    )
    users.ingest(first, emitted_at_us=0)
    # watermark at 03-02 01:00: day 03-01 ends 03-02 00:00, + 1 h lateness -> reached, not passed
    assert users.advance(to_us("2026-03-02T01:00:00+00:00"), final=False, emitted_at_us=0).user_daily.is_empty()
    closed = users.advance(to_us("2026-03-02T01:00:00+00:00") + 1, final=False, emitted_at_us=0)
    assert closed.user_daily["date"].to_list() == [date(2026, 3, 1)]
    # an event for the closed day 03-01 is late for this user
    again = users.ingest(events("| user | type | timestamp |\n| w | lesson_completed | 2026-03-01T23:00:00Z |", seq_start=1), emitted_at_us=0)
    assert len(again.late) == 1 and again.accepted == 0


def test_idle_users_are_evicted_after_their_final_state_row() -> None:
    # state_ttl 10 d: `old` is last active 03-01 10:00; at the watermark of 03-12 it has been idle
    # for > 10 d. Its final user_state row is emitted in the same call, then its state is gone.
    users = UserAnalytics(Settings(state_ttl="10d"))
    users.ingest(
        events(
            """
            | user | type             | timestamp            |
            | old  | lesson_completed | 2026-03-01T10:00:00Z |
            | new  | lesson_completed | 2026-03-01T11:00:00Z |
            | new  | lesson_completed | 2026-03-11T11:00:00Z |
            """
        ),
        emitted_at_us=0,
    )
    out = users.advance(to_us("2026-03-12T11:00:00+00:00"), final=False, emitted_at_us=0, evaluate=False)
    # evaluate=False, yet the evicted user's final row is written (and only that one)
    assert out.user_state["user_key"].to_list() == ["old"]
    old = out.user_state.filter(pl.col("user_key") == "old").row(0, named=True)
    assert (old["days_active"], old["momentum"]) == (1, "stalled")
    assert users.evicted == 1 and users.size == 1
    assert users.slots["user_key"].to_list() == ["new"]
    # the survivor keeps its history after renumbering: 2 active days, last on 03-11
    final = users.advance(to_us("2026-03-12T11:00:00+00:00"), final=True, emitted_at_us=0)
    row = final.user_state.row(0, named=True)
    assert (row["user_key"], row["days_active"], row["longest_streak"]) == ("new", 2, 1)
    # a returning user starts afresh
    users.ingest(events("| user | type | timestamp |\n| old | lesson_completed | 2026-03-13T09:00:00Z |", seq_start=3), emitted_at_us=0)
    again = users.advance(to_us("2026-03-13T09:00:00+00:00"), final=True, emitted_at_us=0)
    back = again.user_state.filter(pl.col("user_key") == "old").row(0, named=True)
    assert (back["days_active"], back["total_completions"]) == (1, 1)


def test_returning_after_state_ttl_is_decided_per_event_not_per_batch() -> None:
    # state_ttl 10 d. `r` is active 03-01, then `x` moves the watermark to 03-20 and `r` returns
    # on 03-20 (its event arrives when the watermark is already 03-20 - 5 min > 03-01 + 10 d):
    # `r` starts afresh whether the three events come in one batch or in three.
    table = """
        | user | type             | timestamp            |
        | r    | lesson_completed | 2026-03-01T10:00:00Z |
        | x    | lesson_completed | 2026-03-20T10:00:00Z |
        | r    | lesson_completed | 2026-03-20T10:01:00Z |
        """
    from operators.ingest import Admission

    results = []
    for split in ([0, 1, 2, 3], [0, 3]):
        admission, users = Admission(Settings()), UserAnalytics(Settings(state_ttl="10d"))
        frame = events(table)
        rows = []
        for lo, hi in zip(split, split[1:], strict=False):
            admitted = admission.admit(frame.slice(lo, hi - lo))
            got = users.ingest(admitted.accepted, emitted_at_us=0)
            rows.append(got.user_state)
            closed = users.advance(admitted.watermark_us, final=hi == 3, emitted_at_us=0, evaluate=False)
            rows.append(closed.user_state)
        final = pl.concat(rows).filter(pl.col("user_key") == "r").tail(1).row(0, named=True)
        results.append((final["days_active"], final["total_completions"], users.evicted))
    # in both cases: r's old state (1 active day) was dropped; the new r has 1 day, 1 completion
    assert results == [(1, 1, 1), (1, 1, 1)]


def test_late_after_a_zone_change_does_not_depend_on_batches() -> None:
    # u1 is in Auckland (UTC+13): 03-01T21:00Z is local 03-02. u2 moves the watermark to 11:55Z.
    # u1's next event is in Pago Pago (UTC-11): 03-02T07:00Z is local 03-01, a day that ends
    # 03-02T11:00Z there (+1 h lateness: open at 11:55Z, so admission accepts it). But u1's series
    # is in Auckland until this event: 11:55Z - 1 h = 10:55Z is 23:55 on 03-02 in Auckland, so the
    # series has closed 03-01 and the event is late for the user, in one batch as in two (a cut
    # right before it would have closed 03-01 first).
    table = """
        | user | type             | timestamp            | zone              |
        | u1   | lesson_completed | 2026-03-01T21:00:00Z | Pacific/Auckland  |
        | u2   | lesson_completed | 2026-03-02T12:00:00Z | UTC               |
        | u1   | lesson_completed | 2026-03-02T07:00:00Z | Pacific/Pago_Pago |
        """
    from operators.ingest import Admission

    results = []
    for split in ([0, 3], [0, 2, 3], [0, 1, 2, 3]):
        admission, users = Admission(Settings()), UserAnalytics(Settings())
        frame = events(table)
        accepted = late = 0
        for lo, hi in zip(split, split[1:], strict=False):
            admitted = admission.admit(frame.slice(lo, hi - lo))
            assert admitted.late.is_empty()  # open in the event's own zone
            got = users.ingest(admitted.accepted, emitted_at_us=0)
            accepted, late = accepted + got.accepted, late + len(got.late)
            users.advance(admitted.watermark_us, final=False, emitted_at_us=0, evaluate=False)
        results.append((accepted, late))
    assert results == [(2, 1), (2, 1), (2, 1)]


def test_end_of_input_closes_a_day_that_lies_ahead_in_the_users_last_zone() -> None:
    # The first event is in Seoul (UTC+9): 2026-03-01T20:00Z is local 03-02. The user then moves
    # to UTC; the newest event time 03-01T21:00Z is local 03-01 there. The end of the input closes
    # up to 03-01 in the last zone, and the Seoul day 03-02 must close too (no lost user-day).
    out = run(
        """
        | user | type             | timestamp            | zone       |
        | z    | lesson_completed | 2026-03-01T20:00:00Z | Asia/Seoul |
        | z    | lesson_completed | 2026-03-01T21:00:00Z | UTC        |
        """
    )
    rows = out["user_daily"].sort("date")
    assert rows["date"].to_list() == [date(2026, 3, 1), date(2026, 3, 2)]
    assert int(rows["events"].sum()) == 2



def test_open_day_fed_by_several_batches_counts_once_in_user_state() -> None:
    # Live evaluation before any day closes (as of 03-01 20:00, the 03-02 event is ahead of the
    # watermark). u has completions on 03-01 (two batches) and 03-02 (one batch); open days are
    # kept as partial rows per batch, yet each day counts once: days_active 2, one run of 2 days
    # (current and longest streak 2), momentum high (active today or later).
    users = UserAnalytics(Settings())
    for i, ts in enumerate(("2026-03-01T09:00:00Z", "2026-03-01T18:00:00Z", "2026-03-02T09:00:00Z")):
        table = f"| user | type | timestamp |\n| u | lesson_completed | {ts} |"
        users.ingest(events(table, seq_start=i), emitted_at_us=0)
    assert len(users.open_days) == 3  # three partial rows, two days
    out = users.advance(to_us("2026-03-01T20:00:00Z"), final=False, emitted_at_us=0)
    assert out.user_daily.is_empty()  # nothing closed yet
    s = out.user_state.row(0, named=True)
    assert (s["days_active"], s["current_streak"], s["longest_streak"], s["momentum"]) == (2, 2, 2, "high")
