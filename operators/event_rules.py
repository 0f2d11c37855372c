"""The event-triggered alert rules of SPEC §6: `struggling` and `low_performance`.

Both rules are edge-triggered and evaluated at each matching event in arrival order (`seq`).
`apply_event_rules` does that for a whole micro-batch at once: per rule it sorts the batch's
matching events by (user_key, seq), puts the user's carried state in front as leading rows,
and reads "the previous events" and "the previous evaluation" with shifts inside user groups
(plain shifts masked to the same user run: equivalent to `shift().over("user_key")`, faster).
No Python runs per event; the only loops are over the five state slots.

State is bounded per user: the last 5 scored events (time and score, most recent first), the
last assessment's score and three flags — 14 columns. The number of users is not bounded
here: the caller drops users (state TTL, erasure) by filtering `user_key`.
"""

from __future__ import annotations

import polars as pl

from schemas.events import ASSESSMENT_TYPES

#: SPEC §6: both rules fire on scores below this
LOW_SCORE_THRESHOLD = 60.0
#: SPEC §6 `struggling`: the last ≤5 scored events …
STRUGGLING_LAST_N = 5
#: … within 24 h (event time after the triggering event's time minus 24 h) …
STRUGGLING_WINDOW_HOURS = 24
STRUGGLING_WINDOW_US = STRUGGLING_WINDOW_HOURS * 3_600_000_000
#: … number at least 3 and are all below the threshold
STRUGGLING_MIN_EVENTS = 3

_SLOTS = range(1, STRUGGLING_LAST_N + 1)

EVENT_RULE_STATE_SCHEMA: dict[str, pl.DataType] = {
    "user_key": pl.String(),
    # the user's last 5 scored events in arrival order, slot 1 = most recent; null = none yet
    **{f"s{k}_t_us": pl.Int64() for k in _SLOTS},
    **{f"s{k}_score": pl.Float64() for k in _SLOTS},
    # the result of the last `struggling` evaluation (at the user's last scored event)
    "struggling_active": pl.Boolean(),
    # the last assessment's score (null when it had none, or when there was none yet)
    "last_assessment_score": pl.Float64(),
    "has_assessment": pl.Boolean(),
    # the result of the last `low_performance` evaluation
    "low_perf_active": pl.Boolean(),
}

FIRED_SCHEMA: dict[str, pl.DataType] = {
    "rule": pl.String(),
    "user_key": pl.String(),
    "cohort_id": pl.String(),
    "org_id": pl.String(),
    # the triggering event_id
    "trigger": pl.String(),
    # the triggering event's local day
    "date": pl.Date(),
    "event_time": pl.Datetime("us", "UTC"),
    # a JSON object of the numbers that fired the rule
    "evidence": pl.String(),
}

_STRUGGLE_COLS = [c for c in EVENT_RULE_STATE_SCHEMA if c.startswith("s") and c[1].isdigit()]
_STRUGGLE_COLS.append("struggling_active")
_LOWPERF_COLS = ["last_assessment_score", "has_assessment", "low_perf_active"]
_TRIGGER_COLS = ["seq", "event_id", "cohort_id", "org_id", "date"]


def empty_event_rule_state() -> pl.DataFrame:
    """State with no users."""
    return pl.DataFrame(schema=EVENT_RULE_STATE_SCHEMA)


def _empty_fired() -> pl.DataFrame:
    return pl.DataFrame(schema=FIRED_SCHEMA)


def _no_fired() -> pl.DataFrame:
    """No fired rows, in the internal form that still carries `seq`."""
    return pl.DataFrame(schema={"seq": pl.Int64(), **FIRED_SCHEMA})


def _sorted_by_user(lead: pl.DataFrame, batch: pl.DataFrame) -> pl.DataFrame:
    """Carried rows then batch rows, sorted by (user_key, carried first, position); `_g`
    numbers the runs of equal user_key so that `_lag` can stay within a user."""
    return (
        pl.concat([lead, batch], how="vertical_relaxed")
        .sort("user_key", "_src", "_pos", maintain_order=True)
        .with_columns(_g=pl.col("user_key").rle_id())
    )


def _lag(column: str, k: int) -> pl.Expr:
    """`column` k rows earlier within the same user, null across users.

    Same as `pl.col(column).shift(k).over("user_key")` on a frame sorted by user_key, but
    ~50× faster: a plain shift masked by "same user run" needs no per-group hashing.
    """
    if k == 0:
        return pl.col(column)
    return pl.when(pl.col("_g").shift(k) == pl.col("_g")).then(pl.col(column).shift(k))


#: the last row of each user in a frame sorted by user_key
_IS_LAST = (pl.col("_g").shift(-1) != pl.col("_g")).fill_null(True)


def _no_updates(columns: list[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={"user_key": pl.String(), **_state_types(columns)})


def _fired_frame(rows: pl.DataFrame, rule: str, evidence: pl.Expr) -> pl.DataFrame:
    """Fired rows (with `seq`, for ordering) from triggering events."""
    return rows.select(
        pl.col("seq"),
        pl.lit(rule, pl.String).alias("rule"),
        pl.col("user_key"),
        pl.col("cohort_id"),
        pl.col("org_id"),
        pl.col("event_id").alias("trigger"),
        pl.col("date"),
        pl.col("t_us").cast(pl.Datetime("us", "UTC")).alias("event_time"),
        evidence.struct.json_encode().alias("evidence"),
    )


def _struggling(state: pl.DataFrame, events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(updates: user_key + slot columns + struggling_active for users scored in the batch, fired)."""
    batch = (
        events.filter(pl.col("score").is_not_null())
        .select("user_key", "t_us", "score", *_TRIGGER_COLS)
        .with_columns(_src=pl.lit(1, pl.Int8), _pos=pl.col("seq"), _cond=pl.lit(None, pl.Boolean))
    )
    if batch.is_empty():
        return _no_updates(_STRUGGLE_COLS), _no_fired()
    carried = state.join(batch.select("user_key").unique(), on="user_key", how="semi")
    # leading rows: the carried slots as events, oldest (slot 5) first; every one carries the
    # last evaluation's result so that the first batch row's shift(1) reads it
    lead = pl.concat(
        [
            carried.select(
                "user_key",
                pl.col(f"s{k}_t_us").alias("t_us"),
                pl.col(f"s{k}_score").alias("score"),
                *(pl.lit(None, batch.schema[c]).alias(c) for c in _TRIGGER_COLS),
                _src=pl.lit(0, pl.Int8),
                _pos=pl.lit(-k, pl.Int64),
                _cond=pl.col("struggling_active"),
            )
            for k in _SLOTS
        ]
    ).filter(pl.col("t_us").is_not_null())
    rows = _sorted_by_user(lead, batch)

    # this and the previous ≤4 scored events of the user (arrival order); kept when within 24 h
    lags = range(STRUGGLING_LAST_N)
    rows = rows.with_columns(
        *(_lag("t_us", k).alias(f"_t{k}") for k in lags),
        *(_lag("score", k).alias(f"_score{k}") for k in lags),
    ).with_columns(
        (
            pl.col(f"_t{k}").is_not_null()
            & (pl.col(f"_t{k}") > pl.col("t_us") - STRUGGLING_WINDOW_US)
        ).alias(f"_kept{k}")
        for k in lags
    )
    kept = [pl.col(f"_kept{k}") for k in lags]
    below = [pl.col(f"_kept{k}") & (pl.col(f"_score{k}") < LOW_SCORE_THRESHOLD) for k in lags]
    n_kept = pl.sum_horizontal(*(k.cast(pl.Int64) for k in kept))
    n_below = pl.sum_horizontal(*(b.cast(pl.Int64) for b in below))
    is_batch = pl.col("_src") == 1
    rows = rows.with_columns(_n=n_kept, _below=n_below).with_columns(
        _cond=pl.when(is_batch)
        .then((pl.col("_n") >= STRUGGLING_MIN_EVENTS) & (pl.col("_below") == pl.col("_n")))
        .otherwise(pl.col("_cond"))
    )
    rows = rows.with_columns(_fire=is_batch & pl.col("_cond") & ~_lag("_cond", 1).fill_null(False))

    evidence = pl.struct(
        # kept scores, oldest → newest
        scores=pl.concat_list(
            [pl.when(pl.col(f"_kept{k}")).then(pl.col(f"_score{k}")) for k in reversed(lags)]
        ).list.drop_nulls(),
        count=pl.col("_n"),
        below=pl.col("_below"),
        window_hours=pl.lit(STRUGGLING_WINDOW_HOURS, pl.Int64),
        threshold=pl.lit(int(LOW_SCORE_THRESHOLD), pl.Int64),
    )
    fired = _fired_frame(rows.filter(pl.col("_fire")), "struggling", evidence)

    # new slots: at each user's last row, lag k is slot k + 1
    updates = rows.filter(_IS_LAST).select(
        "user_key",
        *(pl.col(f"_t{k - 1}").alias(f"s{k}_t_us") for k in _SLOTS),
        *(pl.col(f"_score{k - 1}").alias(f"s{k}_score") for k in _SLOTS),
        pl.col("_cond").alias("struggling_active"),
    )
    return updates, fired


def _low_performance(
    state: pl.DataFrame, events: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(updates: user_key + the assessment columns for users assessed in the batch, fired)."""
    batch = (
        events.filter(pl.col("type").is_in(ASSESSMENT_TYPES))
        .select("user_key", "t_us", "score", "skill", *_TRIGGER_COLS)
        .with_columns(_src=pl.lit(1, pl.Int8), _pos=pl.col("seq"), _cond=pl.lit(None, pl.Boolean))
    )
    if batch.is_empty():
        return _no_updates(_LOWPERF_COLS), _no_fired()
    lead = (
        state.join(batch.select("user_key").unique(), on="user_key", how="semi")
        .filter(pl.col("has_assessment"))
        .select(
            "user_key",
            pl.lit(None, pl.Int64).alias("t_us"),
            pl.col("last_assessment_score").alias("score"),
            pl.lit(None, pl.String).alias("skill"),
            *(pl.lit(None, batch.schema[c]).alias(c) for c in _TRIGGER_COLS),
            _src=pl.lit(0, pl.Int8),
            _pos=pl.lit(-1, pl.Int64),
            _cond=pl.col("low_perf_active"),
        )
    )
    rows = _sorted_by_user(lead, batch)
    is_batch = pl.col("_src") == 1
    rows = rows.with_columns(_prev_score=_lag("score", 1)).with_columns(
        # an unscored assessment (null) makes the pair false
        _cond=pl.when(is_batch)
        .then(
            (
                (pl.col("score") < LOW_SCORE_THRESHOLD)
                & (pl.col("_prev_score") < LOW_SCORE_THRESHOLD)
            ).fill_null(False)
        )
        .otherwise(pl.col("_cond"))
    )
    rows = rows.with_columns(_fire=is_batch & pl.col("_cond") & ~_lag("_cond", 1).fill_null(False))
    evidence = pl.struct(
        scores=pl.concat_list([pl.col("_prev_score"), pl.col("score")]),
        threshold=pl.lit(int(LOW_SCORE_THRESHOLD), pl.Int64),
        skill=pl.col("skill"),
    )
    fired = _fired_frame(rows.filter(pl.col("_fire")), "low_performance", evidence)
    updates = rows.filter(_IS_LAST).select(
        "user_key",
        pl.col("score").alias("last_assessment_score"),
        pl.lit(True).alias("has_assessment"),
        pl.col("_cond").alias("low_perf_active"),
    )
    return updates, fired


def _state_types(columns: list[str]) -> dict[str, pl.DataType]:
    return {c: EVENT_RULE_STATE_SCHEMA[c] for c in columns}


def _merge(base: pl.DataFrame, updates: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Replace `columns` of the users in `updates` (nulls included) and keep the rest."""
    if updates.is_empty():
        return base
    joined = base.join(
        updates.with_columns(_upd=pl.lit(True)), on="user_key", how="left", suffix="_new"
    )
    has = pl.col("_upd").fill_null(False)
    return joined.with_columns(
        *(pl.when(has).then(pl.col(f"{c}_new")).otherwise(pl.col(c)).alias(c) for c in columns)
    ).select(list(EVENT_RULE_STATE_SCHEMA))


def apply_event_rules(
    state: pl.DataFrame, events: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Evaluate `struggling` and `low_performance` at each matching event of a micro-batch.

    `state` has `EVENT_RULE_STATE_SCHEMA` (start with `empty_event_rule_state()`); `events` has
    the `EVENT_BATCH_SCHEMA` columns of accepted events, arrival order = `seq` ascending (also
    across batches: a batch must not hold events that arrived before the previous batch's).
    Returns (new state, one row per user of old state ∪ batch, sorted by user_key; fired rows
    with `FIRED_SCHEMA`, in arrival order of their triggering event). Feeding the same events
    split into several batches gives the same result as one batch.
    """
    state = state.select(*(pl.col(c).cast(t) for c, t in EVENT_RULE_STATE_SCHEMA.items()))
    if events.is_empty():
        return state.sort("user_key"), _empty_fired()

    new_users = (
        events.select("user_key")
        .unique()
        .join(state.select("user_key"), on="user_key", how="anti")
        .with_columns(
            *(
                pl.lit(False).alias(c) if t == pl.Boolean else pl.lit(None, t).alias(c)
                for c, t in EVENT_RULE_STATE_SCHEMA.items()
                if c != "user_key"
            )
        )
    )
    base = pl.concat([state, new_users.select(list(EVENT_RULE_STATE_SCHEMA))])

    s_updates, s_fired = _struggling(state, events)
    l_updates, l_fired = _low_performance(state, events)
    new_state = _merge(base, s_updates, _STRUGGLE_COLS)
    new_state = _merge(new_state, l_updates, _LOWPERF_COLS).sort("user_key")

    fired = (
        pl.concat([s_fired, l_fired], how="vertical_relaxed")
        .sort("seq", "rule", maintain_order=True)
        .select(*(pl.col(c).cast(t) for c, t in FIRED_SCHEMA.items()))
    )
    return new_state, fired


def struggling_now(state: pl.DataFrame, as_of_us: int) -> pl.DataFrame:
    """Whether the `struggling` condition holds at `as_of` (for `user_state.struggling`).

    Among the carried last ≤5 scored events, those with t > as_of − 24 h must number ≥3 and all be
    below 60. Events after `as_of` (the watermark lags the newest event) count as recent.
    Returns user_key, struggling (bool) for every user in `state`.
    """
    cutoff = as_of_us - STRUGGLING_WINDOW_US
    kept = [pl.col(f"s{k}_t_us").is_not_null() & (pl.col(f"s{k}_t_us") > cutoff) for k in _SLOTS]
    below = [kept[k - 1] & (pl.col(f"s{k}_score") < LOW_SCORE_THRESHOLD) for k in _SLOTS]
    n_kept = pl.sum_horizontal(*(e.cast(pl.Int64) for e in kept))
    n_below = pl.sum_horizontal(*(e.cast(pl.Int64) for e in below))
    return state.select(
        pl.col("user_key").cast(pl.String),
        ((n_kept >= STRUGGLING_MIN_EVENTS) & (n_below == n_kept)).alias("struggling"),
    ).sort("user_key")


__all__ = [
    "EVENT_RULE_STATE_SCHEMA",
    "FIRED_SCHEMA",
    "LOW_SCORE_THRESHOLD",
    "apply_event_rules",
    "empty_event_rule_state",
    "struggling_now",
]
