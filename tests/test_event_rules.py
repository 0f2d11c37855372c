"""`struggling` and `low_performance` (SPEC §6) on small event tables.

Tables read like the SPEC: one line per event in arrival order; `when` is `d<day> HH:MM` (UTC)
from 2024-03-01; `score` `-` means unscored. Expected alerts are worked out in the comments.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import orjson
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.event_rules import (
    EVENT_RULE_STATE_SCHEMA,
    FIRED_SCHEMA,
    apply_event_rules,
    empty_event_rule_state,
    struggling_now,
)
from schemas.events import ASSESSMENT_TYPES, EVENT_BATCH_SCHEMA

HOUR = 3_600_000_000
DAY = 24 * HOUR
T0 = 1_709_251_200 * 1_000_000  # 2024-03-01T00:00:00Z
TYPES = {
    "quiz": "quiz_completed",
    "assess": "assessment_completed",
    "lesson": "lesson_completed",
    "exercise": "exercise_completed",
    "session": "session_started",
}


def at(when: str) -> int:
    """`d1 09:30` -> µs since the epoch."""
    day, clock = when.split()
    hh, mm = clock.split(":")
    return T0 + int(day[1:]) * DAY + int(hh) * HOUR + int(mm) * 60_000_000


def batch(table: str, *, first_seq: int = 0) -> pl.DataFrame:
    """An event batch from `| user | type | when | score | skill |` lines (header optional)."""
    records: list[dict[str, Any]] = []
    for line in table.strip().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "user":
            continue
        user, kind, when, score = cells[:4]
        skill = cells[4] if len(cells) > 4 and cells[4] not in ("", "-") else None
        t = at(when)
        seq = first_seq + len(records)
        records.append(
            {
                "seq": seq,
                "source_ref": f"file:test:{seq}",
                "event_id": f"e{seq}",
                "user_key": user,
                "type": TYPES[kind],
                "t_us": t,
                "timezone": "UTC",
                "date": (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=t)).date(),
                "cohort_id": f"c-{user}",
                "org_id": None,
                "skill": skill,
                "score": None if score == "-" else float(score),
            }
        )
    return frame(records)


def frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    df = (
        pl.DataFrame(
            records, schema={k: v for k, v in EVENT_BATCH_SCHEMA.items() if k in records[0]}
        )
        if records
        else pl.DataFrame(schema=EVENT_BATCH_SCHEMA)
    )
    return df.select(
        pl.col(c).cast(t) if c in df.columns else pl.lit(None, t).alias(c)
        for c, t in EVENT_BATCH_SCHEMA.items()
    )


def run(*tables: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Feed the tables as consecutive batches; return (final state, all fired rows)."""
    state = empty_event_rule_state()
    fired = []
    seq = 0
    for table in tables:
        b = batch(table, first_seq=seq)
        seq += b.height
        state, f = apply_event_rules(state, b)
        fired.append(f)
    return state, pl.concat(fired)


def fired_list(fired: pl.DataFrame, rule: str) -> list[tuple[str, dict[str, Any]]]:
    f = fired.filter(pl.col("rule") == rule)
    return [(r["trigger"], orjson.loads(r["evidence"])) for r in f.iter_rows(named=True)]


# ------------------------------------------------------------------------------------ struggling


def test_struggling_fires_once_then_rearms() -> None:
    state, fired = run(
        """
        | user | type     | when     | score |
        | u    | quiz     | d0 09:00 | 40    |
        | u    | lesson   | d0 09:10 | -     |
        | u    | exercise | d0 09:20 | 55    |
        | u    | exercise | d0 09:30 | 38    |
        | u    | exercise | d0 09:40 | 20    |
        | u    | exercise | d0 09:50 | 75    |
        | u    | exercise | d0 10:00 | 10    |
        | u    | exercise | d0 10:10 | 20    |
        | u    | exercise | d0 10:20 | 30    |
        | u    | exercise | d0 10:30 | 40    |
        | u    | exercise | d0 10:40 | 50    |
        """
    )
    # e0 40: 1 scored -> false; e1 unscored: not evaluated; e2 55: 2 -> false
    # e3 38: [40, 55, 38] 3 all < 60 -> true, previous false -> FIRES
    # e4 20: [40, 55, 38, 20] true, previous true -> silent
    # e5 75: [40, 55, 38, 20, 75] -> false (re-arms)
    # e6 10: [55, 38, 20, 75, 10] -> false (75 still among the last 5)
    # e7 20, e8 30, e9 40: 75 still among the last 5 -> false
    # e10 50: last 5 = [10, 20, 30, 40, 50]: 75 dropped out -> true -> FIRES again
    got = fired_list(fired, "struggling")
    assert [t for t, _ in got] == ["e3", "e10"]
    assert got[0][1] == {
        "scores": [40.0, 55.0, 38.0],
        "count": 3,
        "below": 3,
        "window_hours": 24,
        "threshold": 60,
    }
    assert got[1][1]["scores"] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert got[1][1]["count"] == 5
    r = state.row(0, named=True)
    # slot 1 = most recent
    assert [r[f"s{k}_score"] for k in range(1, 6)] == [50.0, 40.0, 30.0, 20.0, 10.0]
    assert r["s1_t_us"] == at("d0 10:40") and r["s5_t_us"] == at("d0 10:00")
    assert r["struggling_active"] is True


def test_struggling_needs_all_kept_below_60() -> None:
    # the spec's example: 5 latest 40, 50, 70, 30, 20 all within 24 h -> not all < 60 -> false
    _, fired = run(
        """
        | user | type     | when     | score |
        | u    | exercise | d0 08:00 | 40    |
        | u    | exercise | d0 09:00 | 50    |
        | u    | exercise | d0 10:00 | 70    |
        | u    | exercise | d0 11:00 | 30    |
        | u    | exercise | d0 12:00 | 20    |
        """
    )
    # e1: 2 scores; e2: 70 breaks it; e3: [40,50,70,30] false; e4: [40,50,70,30,20] false
    assert fired.height == 0


def test_struggling_ignores_scores_older_than_24h() -> None:
    _, fired = run(
        """
        | user | type     | when     | score |
        | u    | exercise | d0 09:00 | 10    |
        | u    | exercise | d0 10:00 | 20    |
        | u    | exercise | d1 09:00 | 30    |
        | u    | exercise | d1 10:00 | 40    |
        | u    | exercise | d1 10:01 | 50    |
        """
    )
    # e2 at d1 09:00: window is after d0 09:00 (exclusive): e0 (exactly 24 h before) is out,
    #   e1 in -> [20, 30] 2 kept -> false
    # e3 at d1 10:00: e1 exactly 24 h before -> out -> [30, 40] -> false
    # e4 at d1 10:01: [30, 40, 50] -> true -> FIRES with count 3 (not 5)
    got = fired_list(fired, "struggling")
    assert [t for t, _ in got] == ["e4"]
    assert got[0][1]["scores"] == [30.0, 40.0, 50.0]
    assert got[0][1]["count"] == 3


def test_struggling_per_user_and_carried_fields() -> None:
    _, fired = run(
        """
        | user | type     | when     | score |
        | a    | exercise | d0 09:00 | 10    |
        | b    | exercise | d0 09:01 | 10    |
        | a    | exercise | d0 09:02 | 10    |
        | b    | exercise | d0 09:03 | 90    |
        | a    | exercise | d0 09:04 | 10    |
        | b    | exercise | d0 09:05 | 10    |
        """
    )
    # a: 3 lows at e4 -> fires; b: 10, 90, 10 -> no
    assert fired.schema == pl.Schema(FIRED_SCHEMA)
    assert fired.height == 1
    r = fired.row(0, named=True)
    assert r["rule"] == "struggling" and r["user_key"] == "a" and r["trigger"] == "e4"
    assert r["cohort_id"] == "c-a" and r["org_id"] is None
    assert r["date"] == dt.date(2024, 3, 1)
    assert r["event_time"] == dt.datetime(2024, 3, 1, 9, 4, tzinfo=dt.UTC)


def test_struggling_state_across_batches() -> None:
    # the same events as test_struggling_fires_once_then_rearms, cut after e3 (fired in batch 1)
    # and after e4, e7: batch 2 must not fire again while the condition stays true
    _, fired = run(
        """
        | u | quiz     | d0 09:00 | 40 |
        | u | lesson   | d0 09:10 | -  |
        | u | exercise | d0 09:20 | 55 |
        | u | exercise | d0 09:30 | 38 |
        """,
        """
        | u | exercise | d0 09:40 | 20 |
        """,
        """
        | u | exercise | d0 09:50 | 75 |
        | u | exercise | d0 10:00 | 10 |
        | u | exercise | d0 10:10 | 20 |
        """,
        """
        | u | exercise | d0 10:20 | 30 |
        | u | exercise | d0 10:30 | 40 |
        | u | exercise | d0 10:40 | 50 |
        """,
    )
    assert [t for t, _ in fired_list(fired, "struggling")] == ["e3", "e10"]


def test_struggling_now() -> None:
    state, _ = run(
        """
        | user | type     | when     | score |
        | a    | exercise | d0 09:00 | 10    |
        | a    | exercise | d0 10:00 | 20    |
        | a    | exercise | d0 11:00 | 30    |
        | b    | exercise | d0 09:00 | 10    |
        | b    | exercise | d0 10:00 | 90    |
        | c    | session  | d0 10:00 | -     |
        """
    )
    now = struggling_now(state, at("d0 12:00"))
    # a: 3 lows within 24 h -> true; b: has a 90 -> false; c: no scores -> false
    assert now.to_dicts() == [
        {"user_key": "a", "struggling": True},
        {"user_key": "b", "struggling": False},
        {"user_key": "c", "struggling": False},
    ]
    # at d1 09:30 a's 09:00 score is older than 24 h: 2 left -> false
    later = struggling_now(state, at("d1 09:30"))
    assert later.filter(pl.col("user_key") == "a")["struggling"].item() is False
    # at d1 08:59 all three are still within 24 h
    still = struggling_now(state, at("d1 08:59"))
    assert still.filter(pl.col("user_key") == "a")["struggling"].item() is True


# ------------------------------------------------------------------------------ low_performance


def test_low_performance_pair_and_rearm() -> None:
    _, fired = run(
        """
        | user | type   | when     | score | skill   |
        | u    | quiz   | d0 09:00 | 50    | algebra |
        | u    | lesson | d0 09:30 | 10    | algebra |
        | u    | assess | d0 10:00 | 40    | algebra |
        | u    | quiz   | d0 11:00 | 30    | algebra |
        | u    | quiz   | d0 12:00 | 60    | algebra |
        | u    | quiz   | d0 13:00 | 55    |         |
        | u    | quiz   | d0 14:00 | 20    |         |
        """
    )
    # e0 50: no previous -> false; e1 is a lesson (not an assessment)
    # e2 40 after 50 -> true -> FIRES; e3 30 after 40 -> true, silent
    # e4 60 -> false (re-arms); e5 55 after 60 -> false; e6 20 after 55 -> true -> FIRES
    got = fired_list(fired, "low_performance")
    assert [t for t, _ in got] == ["e2", "e6"]
    assert got[0][1] == {"scores": [50.0, 40.0], "threshold": 60, "skill": "algebra"}
    assert got[1][1] == {"scores": [55.0, 20.0], "threshold": 60, "skill": None}


def test_low_performance_pair_across_batches() -> None:
    state, fired = run(
        """
        | user | type | when     | score |
        | u    | quiz | d0 09:00 | 50    |
        """,
        """
        | user   | type    | when     | score |
        | other  | lesson  | d0 09:30 | 90    |
        """,
        """
        | user | type   | when     | score |
        | u    | assess | d1 09:00 | 45    |
        """,
    )
    # the pair (50 in batch 1, 45 in batch 3) spans batches; batch 2 has no event of u
    got = fired_list(fired, "low_performance")
    assert got == [("e2", {"scores": [50.0, 45.0], "threshold": 60, "skill": None})]
    u = state.filter(pl.col("user_key") == "u").row(0, named=True)
    assert u["last_assessment_score"] == 45.0 and u["has_assessment"] and u["low_perf_active"]


def test_unscored_assessment_resets_pair() -> None:
    state, fired = run(
        """
        | user | type | when     | score |
        | u    | quiz | d0 09:00 | 50    |
        | u    | quiz | d0 10:00 | -     |
        | u    | quiz | d0 11:00 | 40    |
        """,
        """
        | user | type | when     | score |
        | u    | quiz | d0 12:00 | 30    |
        | u    | quiz | d0 13:00 | -     |
        """,
    )
    # e1 unscored: pair (50, -) false; e2: pair (-, 40) false; e3 (40, 30) -> FIRES
    # e4 unscored: false again; state keeps a null last score
    assert [t for t, _ in fired_list(fired, "low_performance")] == ["e3"]
    u = state.row(0, named=True)
    assert u["last_assessment_score"] is None
    assert u["has_assessment"] is True and u["low_perf_active"] is False


def test_empty_batch_and_state_rows() -> None:
    state, fired = apply_event_rules(empty_event_rule_state(), frame([]))
    assert state.height == 0 and fired.height == 0
    assert state.schema == pl.Schema(EVENT_RULE_STATE_SCHEMA)
    assert fired.schema == pl.Schema(FIRED_SCHEMA)
    s1, _ = run("| a | session | d0 09:00 | - |")
    # a user with only unscored events still gets a (default) row
    assert s1.to_dicts()[0]["struggling_active"] is False
    s2, f2 = apply_event_rules(s1, batch("| b | lesson | d0 10:00 | 50 |", first_seq=1))
    assert s2["user_key"].to_list() == ["a", "b"] and f2.height == 0
    assert s2.filter(pl.col("user_key") == "a").equals(s1)


# ------------------------------------------------------------- property: batches and an oracle


def oracle(events: pl.DataFrame) -> list[tuple[str, str, dict[str, Any]]]:
    """SPEC §6 read literally, one event at a time: (rule, trigger, evidence) in arrival order."""
    history: dict[str, list[tuple[int, float]]] = defaultdict(list)
    struggling: dict[str, bool] = defaultdict(bool)
    last_assessment: dict[str, float | None] = {}
    low_perf: dict[str, bool] = defaultdict(bool)
    out = []
    for e in events.sort("seq").iter_rows(named=True):
        u, t, s = e["user_key"], e["t_us"], e["score"]
        if s is not None:
            history[u].append((t, s))
            kept = [x for (tt, x) in history[u][-5:] if tt > t - DAY]
            cond = len(kept) >= 3 and all(x < 60 for x in kept)
            if cond and not struggling[u]:
                ev = {"scores": kept, "count": len(kept), "below": len(kept)}
                out.append(
                    ("struggling", e["event_id"], ev | {"window_hours": 24, "threshold": 60})
                )
            struggling[u] = cond
        if e["type"] in ASSESSMENT_TYPES:
            prev = last_assessment.get(u)
            cond = s is not None and prev is not None and s < 60 and prev < 60
            if cond and not low_perf[u]:
                ev = {"scores": [prev, s], "threshold": 60, "skill": e["skill"]}
                out.append(("low_performance", e["event_id"], ev))
            low_perf[u] = cond
            last_assessment[u] = s
    return out


event_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["quiz", "assess", "lesson", "session"]),
        st.integers(0, 72),  # hour offset; arrival order is not time order
        st.one_of(st.none(), st.sampled_from([10.0, 45.5, 59.9, 60.0, 75.0, 95.0])),
        st.sampled_from([None, "algebra"]),
    ),
    min_size=1,
    max_size=40,
)


def events_from(rows: list[tuple[str, str, int, float | None, str | None]]) -> pl.DataFrame:
    records = [
        {
            "seq": i,
            "event_id": f"e{i}",
            "user_key": u,
            "type": TYPES[k],
            "t_us": T0 + h * HOUR,
            "date": dt.date(2024, 3, 1) + dt.timedelta(days=h // 24),
            "cohort_id": None,
            "org_id": "o",
            "skill": skill,
            "score": s,
        }
        for i, (u, k, h, s, skill) in enumerate(rows)
    ]
    return frame(records)


@settings(max_examples=60, deadline=None)
@given(rows=event_rows, cuts=st.lists(st.integers(0, 40), max_size=4), as_of_h=st.integers(0, 100))
def test_batches_match_one_batch_and_oracle(
    rows: list[tuple[str, str, int, float | None, str | None]], cuts: list[int], as_of_h: int
) -> None:
    events = events_from(rows)
    whole_state, whole_fired = apply_event_rules(empty_event_rule_state(), events)

    state = empty_event_rule_state()
    parts = []
    bounds = sorted({0, events.height, *(min(c, events.height) for c in cuts)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        state, f = apply_event_rules(state, events.slice(lo, hi - lo))
        parts.append(f)
    split_fired = pl.concat(parts)

    assert state.equals(whole_state)
    assert split_fired.equals(whole_fired)
    got = [
        (r["rule"], r["trigger"], orjson.loads(r["evidence"]))
        for r in whole_fired.iter_rows(named=True)
    ]
    # both rules may fire on one event: compare per (trigger, rule), independent of that order
    def order(rows: list[tuple[str, str, object]]) -> list[tuple[str, str, object]]:
        return sorted(rows, key=lambda r: (int(r[1].lstrip("e")), r[0]))

    assert order(got) == order(oracle(events))

    # struggling_now against the oracle's reading of "now"
    as_of = T0 + as_of_h * HOUR
    expected = {}
    for u in sorted(set(events["user_key"])):
        scored = events.filter((pl.col("user_key") == u) & pl.col("score").is_not_null())
        kept = [
            s for t, s in scored.sort("seq").select("t_us", "score").rows()[-5:] if t > as_of - DAY
        ]
        expected[u] = len(kept) >= 3 and all(s < 60 for s in kept)
    now = struggling_now(whole_state, as_of)
    assert dict(now.select("user_key", "struggling").rows()) == expected
