"""The event-triggered alert rules of SPEC §6: `struggling` and `low_performance`.

Both rules are edge-triggered and evaluated at each matching event in arrival order (`seq`).
`fire_event_rules` does that for a whole micro-batch at once, in numpy: per rule it orders the
batch's matching rows by user (stable, so arrival order holds within a user), and reads "the
k-th previous event" as the row k back when it is the same user's, else the user's carried
slot; "the previous evaluation" likewise. No Python runs per event, and the cost is O(batch):
state is read and written only at the batch's users' rows (`RuleArrays`, indexed by slot).

State is bounded per user: the last 5 scored events (time and score, most recent first), the
last assessment's score and three flags. `UserAnalytics` keeps it as `RuleArrays` inside its
per-user arrays (eviction and erasure drop the rows with the user). `apply_event_rules` and
`struggling_now` are the same rules over state kept as a frame, one row per user
(`EVENT_RULE_STATE_SCHEMA`): the form the tests read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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



def empty_event_rule_state() -> pl.DataFrame:
    """State with no users."""
    return pl.DataFrame(schema=EVENT_RULE_STATE_SCHEMA)


def _empty_fired() -> pl.DataFrame:
    return pl.DataFrame(schema=FIRED_SCHEMA)


# ------------------------------------------------------------------ the array form (the hot path)

#: "no scored event in this slot" in `RuleArrays.t`
NO_TIME = np.iinfo(np.int64).min


@dataclass
class RuleArrays:
    """Event-rule state as arrays indexed by a user's slot (row); the form `UserAnalytics` keeps.

    The same 14 facts per user as `EVENT_RULE_STATE_SCHEMA`, with NaN for a null score and
    `NO_TIME` for an empty slot. Arrays may be longer than the users in use (capacity).
    """

    t: np.ndarray
    """int64 (n, 5): event time of the k-th most recent scored event in column k - 1."""
    score: np.ndarray
    """float64 (n, 5): its score."""
    struggling: np.ndarray
    """bool (n,): the last `struggling` evaluation."""
    last_assessment: np.ndarray
    """float64 (n,): the last assessment's score (NaN: unscored, or none yet)."""
    assessed: np.ndarray
    """bool (n,): the user had an assessment."""
    low_perf: np.ndarray
    """bool (n,): the last `low_performance` evaluation."""

    @classmethod
    def empty(cls, n: int) -> RuleArrays:
        return cls(
            t=np.full((n, STRUGGLING_LAST_N), NO_TIME, dtype=np.int64),
            score=np.full((n, STRUGGLING_LAST_N), np.nan),
            struggling=np.zeros(n, dtype=np.bool_),
            last_assessment=np.full(n, np.nan),
            assessed=np.zeros(n, dtype=np.bool_),
            low_perf=np.zeros(n, dtype=np.bool_),
        )


def _runs(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by user keeping arrival order: (order, slot per sorted row, position of the
    row within its user (0 = the user's first in the batch), whether it is the user's last)."""
    order = np.argsort(slots, kind="stable")
    s = slots[order]
    n = len(s)
    index = np.arange(n)
    change = s[1:] != s[:-1]
    first = np.ones(n, dtype=np.bool_)
    first[1:] = change
    last = np.ones(n, dtype=np.bool_)
    last[:-1] = change
    position = index - np.maximum.accumulate(np.where(first, index, 0))
    return order, s, position, last


def _previous(values: np.ndarray, position: np.ndarray, carried: np.ndarray) -> np.ndarray:
    """Per sorted row: the value of the user's previous row in the batch, else `carried`."""
    before = np.roll(values, 1)  # row 0 is a user's first row: never read
    return np.where(position >= 1, before, carried)


def _struggling_rows(
    state: RuleArrays, slots: np.ndarray, t: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate `struggling` at every scored event (rows in arrival order); update `state`.

    Returns (order, fire, kept, scores) over the rows sorted by user: `kept[i, k]` says whether
    the user's k-th previous scored event (k = 0: this one) counts, `scores[i, k]` its score.
    """
    order, s, position, last = _runs(slots)
    t, score = t[order], score[order]
    m = len(s)
    index = np.arange(m)
    times = np.empty((m, STRUGGLING_LAST_N), dtype=np.int64)
    scores = np.empty((m, STRUGGLING_LAST_N))
    for k in range(STRUGGLING_LAST_N):
        # k rows back within the batch, or carried slot k - position - 1 (0 = most recent)
        in_batch = position >= k
        back = np.where(in_batch, index - k, 0)
        carried = np.clip(k - position - 1, 0, STRUGGLING_LAST_N - 1)
        times[:, k] = np.where(in_batch, t[back], state.t[s, carried])
        scores[:, k] = np.where(in_batch, score[back], state.score[s, carried])
    kept = (times != NO_TIME) & (times > (t - STRUGGLING_WINDOW_US)[:, None])
    n_kept = kept.sum(axis=1)
    n_below = (kept & (scores < LOW_SCORE_THRESHOLD)).sum(axis=1)
    cond = (n_kept >= STRUGGLING_MIN_EVENTS) & (n_below == n_kept)
    fire = cond & ~_previous(cond, position, state.struggling[s])
    ends = s[last]
    state.t[ends] = times[last]
    state.score[ends] = scores[last]
    state.struggling[ends] = cond[last]
    return order, fire, kept, scores


def _low_performance_rows(
    state: RuleArrays, slots: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate `low_performance` at every assessment (rows in arrival order); update `state`.

    Returns (order, fire, previous score) over the rows sorted by user.
    """
    order, s, position, last = _runs(slots)
    score = score[order]
    carried_score = np.where(state.assessed[s], state.last_assessment[s], np.nan)
    prev_score = _previous(score, position, carried_score)
    # NaN (an unscored assessment) compares false: the pair does not hold
    cond = (score < LOW_SCORE_THRESHOLD) & (prev_score < LOW_SCORE_THRESHOLD)
    fire = cond & ~_previous(cond, position, state.assessed[s] & state.low_perf[s])
    ends = s[last]
    state.last_assessment[ends] = score[last]
    state.assessed[ends] = True
    state.low_perf[ends] = cond[last]
    return order, fire, prev_score


def _fired(events: pl.DataFrame, rows: np.ndarray, rule: str, evidence: pl.Expr, **extra: np.ndarray) -> pl.DataFrame:
    """Fired rows (with `seq`, for ordering) from the triggering events `events[rows]`."""
    picked = events[rows].with_columns(**{name: pl.Series(name, values) for name, values in extra.items()})
    return picked.select(
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


def fire_event_rules(state: RuleArrays, slots: np.ndarray, events: pl.DataFrame) -> pl.DataFrame:
    """Evaluate both rules at each matching event of a micro-batch; update `state` in place.

    `events` has the `EVENT_BATCH_SCHEMA` columns in arrival order (`seq` ascending, also across
    batches); `slots[i]` is the state row of `events[i]`'s user. Returns the fired rows with
    `FIRED_SCHEMA`, in arrival order of their triggering event. Numpy over the batch's rows:
    the cost does not depend on how many users the state holds.
    """
    if events.is_empty():
        return _empty_fired()
    score = events["score"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    t = events["t_us"].to_numpy()
    parts = []

    scored = np.nonzero(~np.isnan(score))[0]
    if len(scored):
        order, fire, kept, scores = _struggling_rows(state, slots[scored], t[scored], score[scored])
        if fire.any():
            lags = range(STRUGGLING_LAST_N)
            columns = {f"_kept{k}": kept[fire, k] for k in lags}
            columns |= {f"_score{k}": scores[fire, k] for k in lags}
            n_kept = kept[fire].sum(axis=1).astype(np.int64)
            evidence = pl.struct(
                # kept scores, oldest -> newest
                scores=pl.concat_list(
                    [pl.when(pl.col(f"_kept{k}")).then(pl.col(f"_score{k}")) for k in reversed(lags)]
                ).list.drop_nulls(),
                count=pl.col("_n"),
                below=pl.col("_n"),  # fired: every kept score is below the threshold
                window_hours=pl.lit(STRUGGLING_WINDOW_HOURS, pl.Int64),
                threshold=pl.lit(int(LOW_SCORE_THRESHOLD), pl.Int64),
            )
            parts.append(_fired(events, scored[order][fire], "struggling", evidence, _n=n_kept, **columns))

    assessed = np.nonzero(events["type"].is_in(ASSESSMENT_TYPES).to_numpy())[0]
    if len(assessed):
        order, fire, prev_score = _low_performance_rows(state, slots[assessed], score[assessed])
        if fire.any():
            evidence = pl.struct(
                scores=pl.concat_list([pl.col("_prev_score"), pl.col("score")]),
                threshold=pl.lit(int(LOW_SCORE_THRESHOLD), pl.Int64),
                skill=pl.col("skill"),
            )
            parts.append(
                _fired(events, assessed[order][fire], "low_performance", evidence, _prev_score=prev_score[fire])
            )
    if not parts:
        return _empty_fired()
    return (
        pl.concat(parts, how="vertical_relaxed")
        .sort("seq", "rule", maintain_order=True)
        .select(*(pl.col(c).cast(t) for c, t in FIRED_SCHEMA.items()))
    )


def struggling_at(t: np.ndarray, score: np.ndarray, as_of_us: int) -> np.ndarray:
    """Whether the `struggling` condition holds at `as_of` for rows of `RuleArrays.t`/`.score`.

    Among the carried last <= 5 scored events, those with t > as_of - 24 h must number >= 3 and
    all be below 60. Events after `as_of` (the watermark lags the newest event) count as recent.
    """
    kept = (t != NO_TIME) & (t > as_of_us - STRUGGLING_WINDOW_US)
    n_kept = kept.sum(axis=1)
    n_below = (kept & (score < LOW_SCORE_THRESHOLD)).sum(axis=1)
    return (n_kept >= STRUGGLING_MIN_EVENTS) & (n_below == n_kept)


# ------------------------------------------------------------------ the frame form (one row per user)


def _to_arrays(state: pl.DataFrame, slots: np.ndarray, n: int) -> RuleArrays:
    arrays = RuleArrays.empty(n)
    for k in _SLOTS:
        arrays.t[slots, k - 1] = state[f"s{k}_t_us"].fill_null(NO_TIME).to_numpy()
        arrays.score[slots, k - 1] = state[f"s{k}_score"].fill_null(np.nan).to_numpy()
    arrays.struggling[slots] = state["struggling_active"].fill_null(False).to_numpy()
    arrays.last_assessment[slots] = state["last_assessment_score"].fill_null(np.nan).to_numpy()
    arrays.assessed[slots] = state["has_assessment"].fill_null(False).to_numpy()
    arrays.low_perf[slots] = state["low_perf_active"].fill_null(False).to_numpy()
    return arrays


def _to_frame(keys: pl.Series, arrays: RuleArrays) -> pl.DataFrame:
    def times(k: int) -> pl.Series:
        column = arrays.t[:, k - 1]
        return pl.Series(column).set(pl.Series(column == NO_TIME), None)  # type: ignore[arg-type]

    return pl.DataFrame(
        {
            "user_key": keys,
            **{f"s{k}_t_us": times(k) for k in _SLOTS},
            **{f"s{k}_score": pl.Series(arrays.score[:, k - 1], nan_to_null=True) for k in _SLOTS},
            "struggling_active": arrays.struggling,
            "last_assessment_score": pl.Series(arrays.last_assessment, nan_to_null=True),
            "has_assessment": arrays.assessed,
            "low_perf_active": arrays.low_perf,
        },
        schema=EVENT_RULE_STATE_SCHEMA,
    )


def apply_event_rules(
    state: pl.DataFrame, events: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`fire_event_rules` on state kept as a frame (one row per user, `EVENT_RULE_STATE_SCHEMA`).

    `events` has the `EVENT_BATCH_SCHEMA` columns of accepted events, arrival order = `seq`
    ascending (also across batches). Returns (new state, one row per user of old state ∪ batch,
    sorted by user_key; fired rows with `FIRED_SCHEMA`, in arrival order of their triggering
    event). Feeding the same events split into several batches gives the same result as one
    batch. Start with `empty_event_rule_state()`.
    """
    state = state.select(*(pl.col(c).cast(t) for c, t in EVENT_RULE_STATE_SCHEMA.items()))
    if events.is_empty():
        return state.sort("user_key"), _empty_fired()
    events = events.sort("seq")
    keys = pl.concat([state["user_key"], events["user_key"]]).unique().sort()
    index = pl.DataFrame({"user_key": keys}).with_row_index("slot")
    state_slots = state.join(index, on="user_key", how="left", maintain_order="left")["slot"].to_numpy()
    arrays = _to_arrays(state, state_slots, len(keys))
    slots = events.join(index, on="user_key", how="left", maintain_order="left")["slot"].to_numpy()
    fired = fire_event_rules(arrays, slots.astype(np.int64), events)
    return _to_frame(keys, arrays), fired


def struggling_now(state: pl.DataFrame, as_of_us: int) -> pl.DataFrame:
    """`struggling_at` for state kept as a frame: user_key, struggling for every user in `state`."""
    state = state.sort("user_key")
    arrays = _to_arrays(state, np.arange(len(state)), len(state))
    return pl.DataFrame(
        {"user_key": state["user_key"].cast(pl.String), "struggling": struggling_at(arrays.t, arrays.score, as_of_us)}
    )


__all__ = [
    "EVENT_RULE_STATE_SCHEMA",
    "FIRED_SCHEMA",
    "LOW_SCORE_THRESHOLD",
    "apply_event_rules",
    "empty_event_rule_state",
    "struggling_now",
]
