"""Trends and strengths/weaknesses (SPEC §5) on small scored-event tables."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from operators.trends import skill_profile, trend_stats

DAY = 86_400_000_000
# 2024-03-01T00:00:00Z in µs: realistic epoch offsets make naive Σx² lose precision
T0 = 1_709_251_200 * 1_000_000
WINDOW = 30 * DAY


def scored(rows: list[tuple[str, float, float]], skill: str | None = None) -> pl.DataFrame:
    """(user_key, day offset from T0, score) rows."""
    return pl.DataFrame(
        {
            "user_key": [r[0] for r in rows],
            "skill": [skill] * len(rows),
            "t_us": [T0 + int(round(r[1] * DAY)) for r in rows],
            "score": [float(r[2]) for r in rows],
        },
        schema={"user_key": pl.String, "skill": pl.String, "t_us": pl.Int64, "score": pl.Float64},
    )


def row(frame: pl.DataFrame, **keys: str) -> dict:
    hit = frame.filter(*(pl.col(k) == v for k, v in keys.items()))
    assert hit.height == 1, hit
    return hit.row(0, named=True)


def test_hand_worked_line() -> None:
    # | day | score |   points on score = 50 + 10·day: slope 10/day, avg 65,
    # |  0  |  50   |   projection at day 3 + 7 = 10: 150 -> clamped to 100
    # |  1  |  60   |
    # |  2  |  70   |
    # |  3  |  80   |
    df = scored([("a", 0, 50), ("a", 1, 60), ("a", 2, 70), ("a", 3, 80)])
    out = trend_stats(df, as_of_us=T0 + 3 * DAY, window_us=WINDOW, by=["user_key"])
    r = row(out, user_key="a")
    assert r["scored_events"] == 4
    assert r["avg_score"] == pytest.approx(65.0)
    assert r["trend_slope"] == pytest.approx(10.0, rel=1e-12)
    assert r["trend_direction"] == "improving"
    assert r["trend_confidence"] == pytest.approx(4 / 20)
    assert r["projected_score_7d"] == 100.0


def test_declining_and_stable_and_low_clamp() -> None:
    # d: 80, 70, 60 on days 0,1,2 -> slope -10, projection at day 9: 80 - 90 = -10 -> 0
    # s: 70, 70.4, 70.8 on days 0,1,2 -> slope 0.4 (≤ 0.5: stable), projection 70.8 + 2.8 = 73.6
    # e: exactly +0.5/day -> stable (improving needs > 0.5)
    df = scored(
        [("d", 0, 80), ("d", 1, 70), ("d", 2, 60)]
        + [("s", 0, 70), ("s", 1, 70.4), ("s", 2, 70.8)]
        + [("e", 0, 70), ("e", 2, 71), ("e", 4, 72)]
    )
    out = trend_stats(df, as_of_us=T0 + 5 * DAY, window_us=WINDOW, by=["user_key"])
    d, s, e = row(out, user_key="d"), row(out, user_key="s"), row(out, user_key="e")
    assert d["trend_slope"] == pytest.approx(-10.0)
    assert d["trend_direction"] == "declining"
    assert d["projected_score_7d"] == 0.0
    assert s["trend_slope"] == pytest.approx(0.4)
    assert s["trend_direction"] == "stable"
    assert s["projected_score_7d"] == pytest.approx(73.6)
    assert e["trend_slope"] == pytest.approx(0.5)
    assert e["trend_direction"] == "stable"


def test_matches_numpy_polyfit_on_random_groups() -> None:
    rng = np.random.default_rng(7)
    rows: list[tuple[str, str, int, float]] = []
    for g in range(12):
        n = int(rng.integers(3, 40))
        # random µs times within the 30-day window (distinct with overwhelming probability)
        ts = T0 - rng.integers(0, WINDOW - 1, size=n)
        sc = rng.uniform(0, 100, size=n)
        for t, s in zip(ts, sc, strict=True):
            rows.append((f"u{g % 4}", f"k{g // 4}", int(t), float(s)))
    df = pl.DataFrame(
        rows, schema=["user_key", "skill", "t_us", "score"], orient="row"
    ).with_columns(pl.col("t_us").cast(pl.Int64))
    out = trend_stats(df, as_of_us=T0, window_us=WINDOW, by=["user_key", "skill"])
    groups = df.partition_by(["user_key", "skill"], as_dict=True)
    assert out.height == len(groups)
    for (user, skill), g in groups.items():
        x = g["t_us"].to_numpy() / 86_400e6  # event time in days, as SPEC defines x
        y = g["score"].to_numpy()
        slope, intercept = np.polyfit(x, y, 1)
        expected_proj = min(100.0, max(0.0, slope * (x.max() + 7) + intercept))
        r = row(out, user_key=str(user), skill=str(skill))
        assert r["scored_events"] == len(x)
        assert r["avg_score"] == pytest.approx(y.mean(), rel=1e-12)
        assert r["trend_slope"] == pytest.approx(slope, rel=1e-9, abs=1e-12)
        assert r["projected_score_7d"] == pytest.approx(expected_proj, rel=1e-9, abs=1e-12)
        assert r["trend_confidence"] == pytest.approx(min(1.0, len(x) / 20))


def test_window_boundaries() -> None:
    # window (as_of − 30d, as_of]: the point exactly 30 days before as_of is out, the point
    # exactly at as_of is in, a point after as_of is out.
    as_of = T0 + 30 * DAY
    df = scored([("a", 0, 10), ("a", 10, 50), ("a", 20, 60), ("a", 30, 70), ("a", 30.5, 99)])
    r = row(trend_stats(df, as_of_us=as_of, window_us=WINDOW, by=["user_key"]), user_key="a")
    # kept: days 10, 20, 30 with 50, 60, 70 -> slope 1/day, avg 60
    assert r["scored_events"] == 3
    assert r["avg_score"] == pytest.approx(60.0)
    assert r["trend_slope"] == pytest.approx(1.0)
    # projection at day 37: 70 + 7 = 77
    assert r["projected_score_7d"] == pytest.approx(77.0)
    # one µs later the day-0 point is still out and the day-30 point still in
    r2 = trend_stats(df, as_of_us=as_of + 1, window_us=WINDOW, by=["user_key"])
    assert row(r2, user_key="a")["scored_events"] == 3
    # a group with nothing in the window has no row
    assert trend_stats(df, as_of_us=T0 - 1, window_us=WINDOW, by=["user_key"]).height == 0


def test_insufficient_data() -> None:
    # two points: n < 3; three points at one instant: all x equal
    df = scored(
        [("two", 0, 40), ("two", 1, 90)] + [("same", 2, 10), ("same", 2, 50), ("same", 2, 60)]
    )
    out = trend_stats(df, as_of_us=T0 + 3 * DAY, window_us=WINDOW, by=["user_key"])
    for user, n, avg in (("two", 2, 65.0), ("same", 3, 40.0)):
        r = row(out, user_key=user)
        assert r["scored_events"] == n
        assert r["avg_score"] == pytest.approx(avg)
        assert r["trend_direction"] == "insufficient_data"
        assert r["trend_slope"] is None
        assert r["projected_score_7d"] is None
        assert r["trend_confidence"] == pytest.approx(n / 20)


def test_confidence_caps_at_one_and_schema() -> None:
    df = scored([("a", i / 10, 50 + i) for i in range(25)])
    out = trend_stats(df, as_of_us=T0 + 3 * DAY, window_us=WINDOW, by=["user_key"])
    assert row(out, user_key="a")["trend_confidence"] == 1.0
    assert out.schema == pl.Schema(
        {
            "user_key": pl.String,
            "scored_events": pl.Int64,
            "avg_score": pl.Float64,
            "trend_slope": pl.Float64,
            "trend_direction": pl.String,
            "trend_confidence": pl.Float64,
            "projected_score_7d": pl.Float64,
        }
    )


def test_skill_profile() -> None:
    # user a, events in the window:
    # | skill   | scores        | n | mean | verdict                      |
    # | algebra | 90, 85, 95    | 3 | 90   | strength                     |
    # | art     | 80, 80, 80    | 3 | 80   | strength (≥ 80), ties music  |
    # | music   | 70, 90, 80    | 3 | 80   | strength, after art by name  |
    # | physics | 100, 100      | 2 | 100  | too few events               |
    # | zoology | 81, 81, 81    | 3 | 81   | strength                     |
    # strengths by mean: algebra 90, zoology 81, art 80, music 80 -> top 3 drops music
    # | chem    | 50, 40, 30    | 3 | 40   | weakness                     |
    # | bio     | 59, 59, 59.5  | 3 | 59.17| weakness                     |
    # | geo     | 60, 60, 60    | 3 | 60   | not a weakness (< 60 needed) |
    # weaknesses = chem (40), bio (59.17)
    # user b: one skill with two events only -> row with empty lists
    # user c: only an old event (outside the window) -> no row
    def ev(user: str, skill: str, scores: list[float], day: float = 1) -> list[dict]:
        return [
            {"user_key": user, "skill": skill, "t_us": T0 + int(day * DAY), "score": s}
            for s in scores
        ]

    rows = (
        ev("a", "algebra", [90, 85, 95])
        + ev("a", "art", [80, 80, 80])
        + ev("a", "music", [70, 90, 80])
        + ev("a", "physics", [100, 100])
        + ev("a", "zoology", [81, 81, 81])
        + ev("a", "chem", [50, 40, 30])
        + ev("a", "bio", [59, 59, 59.5])
        + ev("a", "geo", [60, 60, 60])
        # outside the window: would make physics qualify if counted
        + ev("a", "physics", [100], day=-40)
        + ev("b", "algebra", [10, 20])
        + ev("c", "algebra", [10, 20, 30], day=-40)
    )
    # a null skill is ignored
    rows.append({"user_key": "a", "skill": None, "t_us": T0 + DAY, "score": 1.0})
    df = pl.DataFrame(
        rows,
        schema={"user_key": pl.String, "skill": pl.String, "t_us": pl.Int64, "score": pl.Float64},
    )
    out = skill_profile(df, as_of_us=T0 + 2 * DAY, window_us=WINDOW)
    assert out["user_key"].to_list() == ["a", "b"]
    a = row(out, user_key="a")
    assert a["strengths"] == ["algebra", "zoology", "art"]
    assert a["weaknesses"] == ["chem", "bio"]
    b = row(out, user_key="b")
    assert b["strengths"] == [] and b["weaknesses"] == []
    assert out.schema == pl.Schema(
        {"user_key": pl.String, "strengths": pl.List(pl.String), "weaknesses": pl.List(pl.String)}
    )


def test_weaknesses_top3_lowest_first_ties_by_name() -> None:
    # means: d 10, c 20, b 20, a 30, e 50 -> lowest three: d, b, c (b before c by name)
    df = pl.concat(
        [
            scored([("u", 1, s)] * 3, skill=k)
            for k, s in (("a", 30), ("b", 20), ("c", 20), ("d", 10), ("e", 50))
        ]
    )
    out = skill_profile(df, as_of_us=T0 + 2 * DAY, window_us=WINDOW)
    assert row(out, user_key="u")["weaknesses"] == ["d", "b", "c"]
