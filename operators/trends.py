"""Score trends and strengths/weaknesses over scored events (SPEC §5).

Both functions are pure and columnar: they take a frame of scored events (whatever the caller
keeps for the trailing `trend_window`), filter it to the window (as_of − window, as_of] and
aggregate vectorised (`trend_stats` with numpy over rows sorted by group, time and score, so
that its floats do not depend on row order). No Python runs per event or per group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

US_PER_DAY = 86_400_000_000
#: SPEC §5: a slope above +0.5 points/day is "improving", below −0.5 "declining"
TREND_SLOPE_THRESHOLD = 0.5
#: SPEC §5: trend_confidence = min(1, n / 20)
TREND_CONFIDENCE_N = 20
#: SPEC §5: projected_score_7d is the fitted value this many days after the last point
PROJECTION_DAYS = 7.0
#: SPEC §5 strengths/weaknesses
SKILL_MIN_EVENTS = 3
STRENGTH_MIN_MEAN = 80.0
WEAKNESS_MAX_MEAN = 60.0
SKILL_TOP_N = 3

TREND_COLUMNS: dict[str, pl.DataType] = {
    "scored_events": pl.Int64(),
    "avg_score": pl.Float64(),
    "trend_slope": pl.Float64(),
    "trend_direction": pl.String(),
    "trend_confidence": pl.Float64(),
    "projected_score_7d": pl.Float64(),
}
SKILL_PROFILE_SCHEMA: dict[str, pl.DataType] = {
    "user_key": pl.String(),
    "strengths": pl.List(pl.String()),
    "weaknesses": pl.List(pl.String()),
}


def _in_window(scored: pl.DataFrame, as_of_us: int, window_us: int) -> pl.DataFrame:
    """Rows with a score and t_us in (as_of − window, as_of] (SPEC §5 "trailing N days")."""
    return scored.filter(
        (pl.col("t_us") > as_of_us - window_us)
        & (pl.col("t_us") <= as_of_us)
        & pl.col("score").is_not_null()
    )


def trend_stats(
    scored: pl.DataFrame, *, as_of_us: int, window_us: int, by: Sequence[str]
) -> pl.DataFrame:
    """OLS trend of `score` against event time in days, one row per `by` group in the window.

    `scored` needs the `by` columns, `t_us` (Int64 µs since the epoch) and `score` (Float64);
    rows with a null score are ignored. Returns by…, scored_events, avg_score, trend_slope
    (points per day), trend_direction, trend_confidence, projected_score_7d; groups without a
    row in (as_of − window, as_of] are absent. A null in a `by` column forms its own group:
    filter it out first if that is not wanted (e.g. events without a skill).

    Numerics: x is centred per group in two exact steps — the integer µs offset from the group's
    first time (exact), then the group mean of that offset in days — so Σ(x − x̄)² never sees
    raw epoch days (~2·10⁴, whose squares would cancel catastrophically). "All points share one
    time" is decided on the integer times, exactly. With fewer than 3 points or one time, slope
    and projection are null and the direction is "insufficient_data".
    """
    keys = list(by)
    if not keys:
        raise ValueError("trend_stats needs at least one `by` column (e.g. ['user_key'])")
    # Sorted by group, time and score, and summed in that order with numpy: the same rows give
    # the same floats however they were chunked or ordered (a parallel group_by may add them up
    # in another order from run to run, and a resumed run must equal an uninterrupted one).
    window = (
        _in_window(scored, as_of_us, window_us)
        .select(*keys, pl.col("t_us").cast(pl.Int64), pl.col("score").cast(pl.Float64))
        .sort([*keys, "t_us", "score"], nulls_last=True, maintain_order=True)
    )
    if window.is_empty():
        agg = window.select(keys).with_columns(
            scored_events=pl.lit(0, pl.Int64),
            avg_score=pl.lit(None, pl.Float64),
            _sxy=pl.lit(None, pl.Float64),
            _sxx=pl.lit(None, pl.Float64),
            _xc_last=pl.lit(None, pl.Float64),
            _distinct=pl.lit(None, pl.Boolean),
        )
    else:
        group = window.select(pl.struct(keys).rle_id()).to_series().to_numpy()
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        count = np.diff(np.r_[starts, len(group)])
        t = window["t_us"].to_numpy()
        y = window["score"].to_numpy()
        # x centred per group in two exact steps: integer µs from the group's first time, then
        # the group mean of that offset in days
        dx = (t - np.repeat(t[starts], count)).astype(np.float64) / US_PER_DAY
        mx = np.add.reduceat(dx, starts) / count
        my = np.add.reduceat(y, starts) / count
        xc = dx - np.repeat(mx, count)
        yc = y - np.repeat(my, count)
        agg = window[starts].select(keys).with_columns(
            scored_events=pl.Series(count.astype(np.int64)),
            avg_score=pl.Series(my),
            _sxy=pl.Series(np.add.reduceat(xc * yc, starts)),
            _sxx=pl.Series(np.add.reduceat(xc * xc, starts)),
            _xc_last=pl.Series(np.maximum.reduceat(xc, starts)),
            _distinct=pl.Series(t[starts + count - 1] > t[starts]),
        )

    enough = (pl.col("scored_events") >= 3) & pl.col("_distinct")
    slope = pl.when(enough).then(pl.col("_sxy") / pl.col("_sxx"))
    out = agg.with_columns(trend_slope=slope).with_columns(
        trend_direction=pl.when(~enough)
        .then(pl.lit("insufficient_data"))
        .when(pl.col("trend_slope") > TREND_SLOPE_THRESHOLD)
        .then(pl.lit("improving"))
        .when(pl.col("trend_slope") < -TREND_SLOPE_THRESHOLD)
        .then(pl.lit("declining"))
        .otherwise(pl.lit("stable")),
        trend_confidence=(pl.col("scored_events").cast(pl.Float64) / TREND_CONFIDENCE_N).clip(
            upper_bound=1.0
        ),
        # fitted value at (last x + 7): ȳ + slope · (x_last − x̄ + 7), clamped to [0, 100]
        projected_score_7d=(
            pl.col("avg_score") + pl.col("trend_slope") * (pl.col("_xc_last") + PROJECTION_DAYS)
        ).clip(0.0, 100.0),
    )
    # rows are in key order already (the window was sorted by the keys, nulls last)
    return out.select(*keys, *(pl.col(c).cast(t) for c, t in TREND_COLUMNS.items()))


def skill_profile(scored: pl.DataFrame, *, as_of_us: int, window_us: int) -> pl.DataFrame:
    """Per user: strengths and weaknesses among skills scored in (as_of − window, as_of].

    `scored` needs user_key, skill, t_us and score; rows with a null skill or score are ignored.
    A skill qualifies with ≥3 scored events in the window; strengths have mean ≥ 80 (top 3,
    highest mean first), weaknesses mean < 60 (top 3, lowest mean first); ties by skill name
    ascending. Both are List(String), empty when none. One row per user with any scored skill
    event in the window. The thresholds compare the float mean as computed (no rounding), so a
    mean that is 80 only in decimal arithmetic may land just below it.
    """
    window = _in_window(scored, as_of_us, window_us).filter(pl.col("skill").is_not_null())
    per_skill = window.group_by("user_key", "skill").agg(_n=pl.len(), _mean=pl.col("score").mean())
    qualified = pl.col("_n") >= SKILL_MIN_EVENTS
    strong = qualified & (pl.col("_mean") >= STRENGTH_MIN_MEAN)
    weak = qualified & (pl.col("_mean") < WEAKNESS_MAX_MEAN)

    def ranked(cond: pl.Expr, *, descending: bool) -> pl.Expr:
        return (
            pl.col("skill")
            .filter(cond)
            .sort_by(
                [pl.col("_mean").filter(cond), pl.col("skill").filter(cond)],
                descending=[descending, False],
            )
            .head(SKILL_TOP_N)
        )

    out = per_skill.group_by("user_key").agg(
        strengths=ranked(strong, descending=True),
        weaknesses=ranked(weak, descending=False),
    )
    return out.select(*(pl.col(c).cast(t) for c, t in SKILL_PROFILE_SCHEMA.items())).sort(
        "user_key"
    )


__all__ = ["SKILL_PROFILE_SCHEMA", "TREND_COLUMNS", "skill_profile", "trend_stats"]
