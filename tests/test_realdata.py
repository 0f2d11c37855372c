"""Sanity checks of the real-data converters in tests/realdata.py.

Hand-checked numbers are worked out in the comments from the raw CSVs in shared/data.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from tests.realdata import (
    DATA_DIR,
    EDNET_USERS,
    ednet_events,
    ednet_expected,
    oulad_events,
    write_jsonl,
)

EDNET = DATA_DIR / "ednet-kt4-sample"
OULAD = DATA_DIR / "oulad-j"
SPEC_FIELDS = {
    "event_id",
    "user_id",
    "type",
    "timestamp",
    "cohort_id",
    "org_id",
    "skill",
    "content_id",
    "score",
    "duration_s",
    "xp",
    "session_id",
    "timezone",
}


@pytest.fixture(scope="module")
def ednet() -> list[dict]:
    return ednet_events(DATA_DIR)


@pytest.fixture(scope="module")
def oulad() -> list[dict]:
    return oulad_events(DATA_DIR)


def test_ednet_u10_by_hand(ednet: list[dict]) -> None:
    # u10.csv: enter b7922 @1567147108108, respond q10645 'd', submit b7922 @1567147212397,
    # enter e7922 @1567147212492, quit e7922.
    # questions.csv: b7922 holds q10642..q10645 (part 6); q10645's correct answer is 'd'.
    # -> exercise_completed, score 100 * 1/4 = 25, duration (212397 - 108108) ms = 104.289 s;
    #    material_viewed for the explanation. 1567147212 s = 2019-08-30 06:40:12 UTC.
    u10 = [e for e in ednet if e["user_id"] == "u10"]
    assert u10 == [
        {
            "event_id": "ednet-u10-2",
            "user_id": "u10",
            "type": "exercise_completed",
            "timestamp": "2019-08-30T06:40:12.397Z",
            "timezone": "Asia/Seoul",
            "skill": "part-6",
            "content_id": "b7922",
            "score": 25.0,
            "duration_s": 104.289,
        },
        {
            "event_id": "ednet-u10-3",
            "user_id": "u10",
            "type": "material_viewed",
            "timestamp": "2019-08-30T06:40:12.492Z",
            "timezone": "Asia/Seoul",
            "skill": "part-6",
            "content_id": "e7922",
        },
    ]


def test_ednet_u3_u6_u8_scores_by_hand(ednet: list[dict]) -> None:
    # u3.csv: 8 submits and 1 explanation enter -> 9 events. Single-question bundles, answer vs key:
    # b2952 q4420 c/a 0, b266 q266 a/a 100, b377 q377 a/a 100, b2170 q3638 d/c 0,
    # b3139 q4607 a/d 0, b4644 q6112 a/a 100, b4569 q6037 b/c 0;
    # b1498 has q1692..q1694, only q1692 answered (b, key d) -> 0 of 3 = 0.
    u3 = [e for e in ednet if e["user_id"] == "u3"]
    assert len(u3) == 9
    assert [(e["content_id"], e.get("score")) for e in u3] == [
        ("b2952", 0.0),
        ("b266", 100.0),
        ("b377", 100.0),
        ("b2170", 0.0),
        ("b3139", 0.0),
        ("b4644", 100.0),
        ("b4569", 0.0),
        ("b1498", 0.0),
        ("e1498", None),
    ]
    # first bundle: enter 1566620746548, submit 1566620788071 -> 41.523 s
    assert u3[0]["duration_s"] == 41.523
    # u6: 7 single-question bundles, only b2961 (q4429 b == key b) right
    u6 = [e for e in ednet if e["user_id"] == "u6"]
    assert [e["score"] for e in u6] == [0.0] * 6 + [100.0]
    # u8 answers q3950 'b' then 'd' before submitting b2482; the last respond ('d') is the key
    (b2482,) = [e for e in ednet if e["user_id"] == "u8" and e.get("content_id") == "b2482"]
    assert b2482["score"] == 100.0


def test_ednet_counts_match_the_raw_actions(ednet: list[dict]) -> None:
    # independent count straight from the CSVs: submits of bundles, enters/quits of lectures,
    # enters of explanations (totals: 2394 + 178 + 2510 + 178 = 5260)
    raw: Counter[tuple[str, str]] = Counter()
    for user in EDNET_USERS:
        with (EDNET / f"{user}.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                raw[(row["action_type"], row["item_id"][0])] += 1
    types = Counter(e["type"] for e in ednet)
    assert types["exercise_completed"] == raw[("submit", "b")] == 2394
    assert types["lesson_completed"] == raw[("quit", "l")] == 178
    assert types["material_viewed"] == raw[("enter", "l")] + raw[("enter", "e")] == 178 + 2510
    assert len(ednet) == 5260
    assert len({e["event_id"] for e in ednet}) == len(ednet)
    assert {e["user_id"] for e in ednet} == set(EDNET_USERS)
    # a stream in event-time order, every field one of SPEC §1's and in range
    stamps = [e["timestamp"] for e in ednet]
    assert stamps == sorted(stamps)
    for e in ednet:
        assert set(e) <= SPEC_FIELDS and e["timezone"] == "Asia/Seoul"
        assert 0 <= e.get("score", 0) <= 100 and 0 <= e.get("duration_s", 0) <= 86400
    # submits without any respond carry no score (57 + 14 of them, see realdata's docstring)
    assert sum("score" not in e for e in ednet if e["type"] == "exercise_completed") == 71


def test_oulad_rows_by_hand(oulad: list[dict]) -> None:
    # 36,184 rows, 713 banked -> 35,471 events; CMAs are BBB-2013J's 15003/15004 only
    assert len(oulad) == 36184 - 713
    assert Counter(e["type"] for e in oulad) == {
        "assessment_completed": 35471 - 2557,
        "quiz_completed": 2557,
    }
    # first data row: 1752,11391,18,0,78 with 1752 = AAA 2013J TMA -> 2013-10-01 + 18 days
    by_id = {e["event_id"]: e for e in oulad}
    assert by_id["oulad-1752-11391"] == {
        "event_id": "oulad-1752-11391",
        "user_id": "11391",
        "type": "assessment_completed",
        "timestamp": "2013-10-19T12:00:00Z",
        "timezone": "Europe/London",
        "cohort_id": "AAA-2013J",
        "org_id": "OU",
        "skill": "AAA",
        "score": 78.0,
    }
    # banked row 14997,501208,-1,1,<empty> is skipped; 1760,2606802,180,0,<empty> keeps no score
    assert "oulad-14997-501208" not in by_id
    assert "score" not in by_id["oulad-1760-2606802"]
    assert sum("score" not in e for e in oulad) == 17  # 18 empty scores, one of them banked
    assert len(by_id) == len(oulad)
    # only SPEC fields: nothing of studentInfo (gender, region, age_band, ...) can leak
    assert set().union(*(set(e) for e in oulad)) == {
        "event_id",
        "user_id",
        "type",
        "timestamp",
        "timezone",
        "cohort_id",
        "org_id",
        "skill",
        "score",
    }
    stamps = [e["timestamp"] for e in oulad]
    assert stamps == sorted(stamps)


def test_write_jsonl_round_trips(tmp_path: Path, oulad: list[dict]) -> None:
    path = tmp_path / "oulad.jsonl"
    write_jsonl(oulad[:100], path)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 101
    assert [json.loads(line) for line in lines[:-1]] == oulad[:100]


def test_ednet_expected_small_users_by_hand() -> None:
    expected = ednet_expected(DATA_DIR)
    daily, state = expected["user_daily"], expected["user_state"]
    # u3: 7 submits on 2019-08-24 (04:26..04:34 UTC = 13:26..13:34 Seoul), 3 of them 100
    # -> avg 300/7; then 2019-08-30 (05:18 UTC = 14:18 Seoul): submit + explanation.
    u3 = daily.filter(pl.col("user_id") == "u3")
    assert u3.select("date", "events", "completions", "scored_events", "streak").rows() == [
        (date(2019, 8, 24), 7, 7, 7, 1),
        (date(2019, 8, 30), 2, 1, 1, 1),
    ]
    assert u3["avg_score"][0] == pytest.approx(300 / 7)
    assert state.filter(pl.col("user_id") == "u3").select(
        "days_active", "longest_streak", "total_completions"
    ).rows() == [(2, 1, 8)]
    # u10: one day, one completion, score 25
    assert daily.filter(pl.col("user_id") == "u10").select(
        "date", "events", "completions", "avg_score", "streak"
    ).rows() == [(date(2019, 8, 30), 2, 1, 25.0, 1)]
    # u9's last day (2019-09-20) has 3 events and no completion: streak 0
    u9_last = daily.filter(pl.col("user_id") == "u9").sort("date").row(-1, named=True)
    assert (u9_last["date"], u9_last["completions"], u9_last["streak"]) == (
        date(2019, 9, 20),
        0,
        0,
    )


def test_ednet_expected_agrees_with_a_plain_python_walk(ednet: list[dict]) -> None:
    # independent formula: Seoul dates via zoneinfo, streaks by walking sorted active dates
    seoul = ZoneInfo("Asia/Seoul")
    completions = {
        "lesson_completed",
        "exercise_completed",
        "quiz_completed",
        "assessment_completed",
        "material_completed",
    }
    active: dict[str, set[date]] = {}
    events: Counter[tuple[str, date]] = Counter()
    for e in ednet:
        day = datetime.fromisoformat(e["timestamp"]).astimezone(seoul).date()
        events[(e["user_id"], day)] += 1
        if e["type"] in completions:
            active.setdefault(e["user_id"], set()).add(day)
    streaks: dict[tuple[str, date], int] = {}
    for user, days in active.items():
        for day in sorted(days):
            streaks[(user, day)] = streaks.get((user, day - timedelta(days=1)), 0) + 1
    expected = ednet_expected(DATA_DIR)
    daily = expected["user_daily"]
    assert {(u, d): n for u, d, n in daily.select("user_id", "date", "events").rows()} == events
    assert {
        (u, d): s for u, d, s in daily.select("user_id", "date", "streak").rows() if s
    } == streaks
    state = {
        row[0]: row[1:]
        for row in expected["user_state"].select("user_id", "days_active", "longest_streak").rows()
    }
    for user, days in active.items():
        longest = max(s for (u, _), s in streaks.items() if u == user)
        assert state[user] == (len(days), longest)
    # u1, the longest-running user, has a 7-day streak somewhere
    assert state["u1"][1] == 7
