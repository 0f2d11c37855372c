"""Per-user analytics for one shard: open days, closing days, streaks, anomalies, day rules, state.

`UserAnalytics` is pure (no I/O, no Bytewax) and columnar. Users get a *slot* (row index) on first
sight; numeric per-user state lives in numpy arrays indexed by slot, and every update is a vectorised
operation over the slots a batch or a closing day touches.

Two entry points, called in this order for every micro-batch of accepted events:

* `ingest(events)` folds events into the *open days* (per user and local day) and runs the
  event-triggered alert rules (`struggling`, `low_performance`).
* `advance(watermark_us, final=...)` closes every local day the watermark has passed (SPEC §4), one
  day-step at a time over all lagging users at once, emitting `user_daily` / `user_skill_daily` rows,
  updating streaks and anomaly baselines and firing the day rules; then it evaluates `user_state` and
  `user_skill_state` as of the watermark for every user whose state changed.

Bounded state (horizon of each piece):

* per-user scalars (streak counters, armed flags, last values): fixed size per user; users idle for
  `state_ttl` are evicted by `evict_idle` after their final `user_state` row was written.
* daily rings of the last 28 closed days (completions, time spent) and of the last 28 scored days'
  mean score: the anomaly baselines; fixed size per user.
* open days: only days not yet closed (today and yesterday, within `allowed_lateness`), kept as
  partial sums appended per batch and merged per key once they have doubled (and at close).
* `recent`: accepted events of the trailing 7 days (for `engagement_7d`); `scored`: scored events of the
  trailing `trend_window` (trends, strengths, weaknesses). Bounded by time, not by history length.
* the event-rule state: the last 5 scored events and the last assessment score per user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl
from polars._typing import PolarsDataType

from learnstream.config import Settings
from operators.alerts import build_alerts
from operators.event_rules import (
    NO_TIME,
    STRUGGLING_LAST_N,
    RuleArrays,
    fire_event_rules,
    struggling_at,
)
from operators.keyindex import KeyIndex
from operators.timeutil import US_PER_DAY, day_end_us, local_day_of
from operators.trends import skill_profile, trend_stats
from schemas.events import ASSESSMENT_TYPES, COMPLETION_TYPES, EVENT_BATCH_SCHEMA
from schemas.tables import (
    ALERTS,
    USER_DAILY,
    USER_SKILL_DAILY,
    USER_SKILL_STATE,
    USER_STATE,
)

RING = 28  # days of history behind an anomaly score (SPEC §5: the previous <= 28 values)
MIN_HISTORY = 7  # values needed for an anomaly score
FLOOR_COMPLETIONS = 1.0
FLOOR_TIME_S = 300.0
FLOOR_SCORE = 5.0
_NO_DAY = np.iinfo(np.int32).min
_EPOCH = Date(1970, 1, 1)

_NO_EVENTS = pl.DataFrame(schema=EVENT_BATCH_SCHEMA)


def _late_columns(frame: pl.DataFrame) -> list[str]:
    """The event columns of late rows, plus `received_at_us` when the events carry it."""
    return [*EVENT_BATCH_SCHEMA, *(["received_at_us"] if "received_at_us" in frame.columns else [])]

_PER_TYPE = {
    "lessons_completed": "lesson_completed",
    "exercises_completed": "exercise_completed",
    "quizzes_completed": "quiz_completed",
    "assessments_completed": "assessment_completed",
    "materials_completed": "material_completed",
}

_OPEN_DAY_SCHEMA: dict[str, PolarsDataType] = {
    "slot": pl.Int64,
    "date": pl.Date,
    "events": pl.Int64,
    "completions": pl.Int64,
    **{name: pl.Int64 for name in _PER_TYPE},
    "sessions": pl.Int64,
    "scored_events": pl.Int64,
    "score_sum": pl.Float64,
    "min_score": pl.Float64,
    "max_score": pl.Float64,
    "excellent_scores": pl.Int64,
    "time_spent_s": pl.Float64,
    "xp": pl.Int64,
    "cohort_id": pl.String,
    "cohort_seq": pl.Int64,
    "org_id": pl.String,
    "org_seq": pl.Int64,
}
_OPEN_SKILL_SCHEMA: dict[str, PolarsDataType] = {
    "slot": pl.Int64,
    "date": pl.Date,
    "skill": pl.String,
    "completions": pl.Int64,
    "scored_events": pl.Int64,
    "score_sum": pl.Float64,
    "time_spent_s": pl.Float64,
}
_RECENT_SCHEMA: dict[str, PolarsDataType] = {
    "slot": pl.Int64,
    "t_us": pl.Int64,
    "time_spent_s": pl.Float64,
    "completion": pl.Int64,
}
_SCORED_SCHEMA: dict[str, PolarsDataType] = {
    "slot": pl.Int64,
    "skill": pl.String,
    "t_us": pl.Int64,
    "score": pl.Float64,
}


def _us(delta: timedelta) -> int:
    return int(delta / timedelta(microseconds=1))


def _iso(day: int) -> str:
    return (_EPOCH + timedelta(days=int(day))).isoformat()


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class UserOutput:
    """What one call emits; every frame is conformed to its table (or EVENT_BATCH_SCHEMA)."""

    user_daily: pl.DataFrame = field(default_factory=USER_DAILY.empty)
    user_skill_daily: pl.DataFrame = field(default_factory=USER_SKILL_DAILY.empty)
    user_state: pl.DataFrame = field(default_factory=USER_STATE.empty)
    user_skill_state: pl.DataFrame = field(default_factory=USER_SKILL_STATE.empty)
    alerts: pl.DataFrame = field(default_factory=ALERTS.empty)
    late: pl.DataFrame = field(default_factory=lambda: _NO_EVENTS)
    accepted: int = 0

    def extend(self, other: UserOutput) -> None:
        """Append another output's rows (the later one wins on upsert, as emitted)."""
        for name in ("user_daily", "user_skill_daily", "user_state", "user_skill_state", "alerts"):
            setattr(self, name, pl.concat([getattr(self, name), getattr(other, name)]))
        late = pl.concat([self.late, other.late], how="diagonal_relaxed")
        self.late = late.select(_late_columns(late))
        self.accepted += other.accepted


class _Arrays:
    """Numeric per-user state, one entry per slot (grown by doubling)."""

    INT32 = (
        "zone",
        "last_closed",
        "first_active",
        "last_active",
        "streak",
        "last_run",
        "longest",
        "days_active",
        "inactive_run",
        "scored_days",
        "last_scored_day",
    )
    #: day-valued entries start as "no day"; the other int32 entries are counters starting at 0
    DAYS = ("last_closed", "first_active", "last_active", "last_scored_day")
    INT64 = ("first_seen_us", "last_activity_us", "total_completions")
    FLOAT = (
        "velocity_7d",
        "consistency_7d",
        "z_velocity",
        "z_engagement",
        "z_performance",
        "last_assessment",
    )
    BOOL = (
        "armed_off_lc",
        "armed_off_vel",
        "armed_off_eng",
        "armed_off_perf",
        "dirty",
        "struggling_active",
        "assessed",
        "low_perf_active",
    )
    RINGS = ("ring_completions", "ring_time", "ring_score")
    #: the arrays behind `rules()` (see `operators.event_rules.RuleArrays`)
    RULES = (
        "rule_t",
        "rule_score",
        "struggling_active",
        "last_assessment",
        "assessed",
        "low_perf_active",
    )

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = 0
        self.data: dict[str, np.ndarray] = {}
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        def extend(name: str, dtype: Any, fill: Any, width: int | None = None) -> None:
            shape = (capacity,) if width is None else (capacity, width)
            fresh = np.full(shape, fill, dtype=dtype)
            if name in self.data:
                fresh[: self.capacity] = self.data[name]
            self.data[name] = fresh

        for name in self.INT32:
            extend(name, np.int32, _NO_DAY if name in self.DAYS else 0)
        for name in self.INT64:
            extend(name, np.int64, 0)
        for name in self.FLOAT:
            extend(name, np.float64, np.nan)
        for name in self.BOOL:
            extend(name, np.bool_, False)
        for name in self.RINGS:
            # daily completions are small integers (int16, saturating at 32767 a day: 56 bytes
            # per user instead of 112); time and scores are float64 so that the metrics built on
            # them are exact (float32 made e.g. velocity_7d 1.28571427 instead of 9/7)
            extend(name, np.int16 if name == "ring_completions" else np.float64, 0, RING)
        extend("rule_t", np.int64, NO_TIME, STRUGGLING_LAST_N)
        extend("rule_score", np.float64, np.nan, STRUGGLING_LAST_N)
        self.capacity = capacity

    def rules(self) -> RuleArrays:
        """The event-rule state (views of these arrays, indexed by slot)."""
        return RuleArrays(
            t=self.rule_t,
            score=self.rule_score,
            struggling=self.struggling_active,
            last_assessment=self.last_assessment,
            assessed=self.assessed,
            low_perf=self.low_perf_active,
        )

    def ensure(self, size: int) -> None:
        if size > self.capacity:
            self._grow(max(size, 2 * self.capacity))

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["data"][name]
        except KeyError as exc:
            raise AttributeError(name) from exc


class UserAnalytics:
    """All per-user state of one shard and the operators over it (see module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lateness_us = _us(settings.allowed_lateness)
        self.trend_window_us = _us(settings.trend_window)
        self.streak_alert_min = settings.streak_alert_min
        self.state_ttl_us = _us(settings.state_ttl)
        #: users forgotten after `state_ttl` without activity (their last user_state row stays)
        self.evicted = 0
        self.size = 0
        self.a = _Arrays()
        #: user_key -> slot: the i-th key is slot i (see the `slots` frame)
        self._slot_index = KeyIndex()
        self.cohort_id = pl.Series("cohort_id", [], dtype=pl.String)
        self.org_id = pl.Series("org_id", [], dtype=pl.String)
        self.zones: list[str] = []
        self.open_days = pl.DataFrame(schema=_OPEN_DAY_SCHEMA)
        self.open_skill_days = pl.DataFrame(schema=_OPEN_SKILL_SCHEMA)
        #: rows of the open-day frames at their last merge (they hold partial sums in between)
        self._open_merged = 0
        self.recent = pl.DataFrame(schema=_RECENT_SCHEMA)
        self.scored = pl.DataFrame(schema=_SCORED_SCHEMA)
        self.skills = pl.DataFrame(schema={"slot": pl.Int64, "skill": pl.String})
        self._skills_deduped = 0
        self.watermark_us: int | None = None

    # ------------------------------------------------------------------ slots and zones
    def _zone_ids(self, zones: pl.Series) -> np.ndarray:
        for zone in zones.unique().to_list():
            if zone not in self.zones:
                self.zones.append(zone)
        lookup = pl.DataFrame({"z": self.zones, "zi": np.arange(len(self.zones), dtype=np.int32)})
        return (
            pl.DataFrame({"z": zones}).join(lookup, on="z", how="left", maintain_order="left")["zi"]
        ).to_numpy()

    @property
    def _user_keys(self) -> pl.Series:
        """user_key of every slot (element i is slot i)."""
        return self._slot_index.keys.alias("user_key")

    @property
    def slots(self) -> pl.DataFrame:
        """user_key, slot of every user of this shard (for joins)."""
        keys = self._user_keys
        return pl.DataFrame({"user_key": keys, "slot": np.arange(len(keys), dtype=np.int64)})

    def _assign_slots(self, keys: pl.Series) -> pl.DataFrame:
        """user_key -> slot for the distinct keys of a batch, creating slots for new users."""
        distinct = keys.unique(maintain_order=True)
        slot = self._slot_index.lookup(distinct)
        new = slot < 0
        if new.any():
            fresh = distinct.filter(pl.Series(new))
            slot[new] = self._slot_index.append(fresh)
            self.size += len(fresh)
            self.a.ensure(self.size)
            grow = self.size - len(self.cohort_id)
            self.cohort_id = self.cohort_id.extend(pl.Series([None] * grow, dtype=pl.String))
            self.org_id = self.org_id.extend(pl.Series([None] * grow, dtype=pl.String))
        return pl.DataFrame({"user_key": distinct, "slot": slot})

    def _closing_instant(self, watermark_us: Any) -> Any:
        """The instant whose local day is the first one still open at `watermark_us` (an int or
        an Int64 Series): a day closes once the watermark *passes* its end plus the lateness."""
        return watermark_us - self.lateness_us - 1

    def _closed_horizon(self, zone_ids: np.ndarray, as_of_us: int, final: bool) -> np.ndarray:
        """Per user: the last local day the watermark has closed (SPEC §4)."""
        instant = as_of_us if final else self._closing_instant(as_of_us)
        used = np.unique(zone_ids)
        days = local_day_of(instant, [self.zones[i] for i in used])
        table = np.zeros(len(self.zones), dtype=np.int32)
        for i in used:
            table[i] = days[self.zones[i]] - (0 if final else 1)
        return table[zone_ids]

    # ------------------------------------------------------------------ ingest
    def ingest(self, events: pl.DataFrame, *, emitted_at_us: int) -> UserOutput:
        """Fold accepted events (EVENT_BATCH_SCHEMA) into open days; run the event rules.

        With a `watermark_us` column (the watermark at each event's arrival, from admission), a
        user who comes back after `state_ttl` of idleness starts afresh exactly as if the batch had
        ended just before that event: the batch is split there and the days are advanced to that
        watermark first (which evicts the idle user), so results do not depend on batch sizes.
        """
        if len(events) == 0:
            return UserOutput()
        events = events.sort("seq")
        split = self._first_return_after_ttl(events) if "watermark_us" in events.columns else None
        if split is None:
            return self._ingest(events, emitted_at_us)
        seq, watermark = split
        out = self._ingest(events.filter(pl.col("seq") < seq), emitted_at_us)
        out.extend(self.advance(watermark, final=False, emitted_at_us=emitted_at_us, evaluate=False))
        out.extend(self.ingest(events.filter(pl.col("seq") >= seq), emitted_at_us=emitted_at_us))
        return out

    def _late_after_zone_change(self, events: pl.DataFrame) -> pl.Series | None:
        """Per event (in `seq` order, with `slot`): whether the user's series had already closed
        its day, in the zone the user had just before it, at the watermark when it arrived; None
        when no event needs the test.

        This is what cutting the batch right before the event would have closed, so the outcome
        does not depend on batch boundaries. Only an event that changes its user's zone needs it:
        in an unchanged zone it is admission's own-zone lateness test, already applied. A user
        seen for the first time has no series yet."""
        if "watermark_us" not in events.columns:
            return None
        slots = events["slot"].to_numpy()
        known = self.a.first_seen_us[slots] != 0
        if known.any():
            stored = pl.Series(self.zones, dtype=pl.String).gather(self.a.zone[slots])
            stored = stored.set(pl.Series(~known), None)  # type: ignore[arg-type]
        else:
            stored = pl.Series([None] * len(slots), dtype=pl.String)
        frame = events.select(
            "date",
            "timezone",
            "watermark_us",
            previous=pl.when(pl.col("slot").is_first_distinct())
            .then(pl.lit(stored))
            .otherwise(pl.col("timezone").shift(1).over("slot")),
        ).with_row_index("row")
        changed = frame.filter(
            pl.col("previous").is_not_null()
            & (pl.col("previous") != pl.col("timezone"))
            & pl.col("watermark_us").is_not_null()
        )
        if changed.is_empty():
            return None
        late = np.zeros(len(events), dtype=bool)
        # the days closed in zone Z at watermark W are those before the local date of the
        # closing instant
        for (zone,), group in changed.partition_by("previous", as_dict=True).items():
            closing = (
                pl.from_epoch(self._closing_instant(group["watermark_us"]), time_unit="us")
                .dt.replace_time_zone("UTC")
                .dt.convert_time_zone(str(zone))
                .dt.date()
            )
            late[group["row"].to_numpy()] = (group["date"] < closing).to_numpy()
        return pl.Series(late)

    def _first_return_after_ttl(self, events: pl.DataFrame) -> tuple[int, int] | None:
        """(seq, watermark) of the first event whose user was idle for state_ttl when it arrived."""
        marks = events["watermark_us"]
        top = marks.max()
        if top is None:
            return None
        threshold = int(top) - self.state_ttl_us  # type: ignore[arg-type]
        distinct = events["user_key"].unique()
        slot = self._slot_index.lookup(distinct)
        known = pl.DataFrame({"user_key": distinct, "slot": slot}).filter(pl.col("slot") >= 0)
        last = self.a.last_activity_us[known["slot"].to_numpy()]
        oldest = min(int(events["t_us"].min()), int(last.min()) if len(last) else 2**62)  # type: ignore[arg-type]
        if oldest >= threshold:
            return None  # nobody in this batch can have been idle that long
        state_last = known.with_columns(state_last=pl.Series(last)).drop("slot")
        frame = (
            events.select("seq", "user_key", "t_us", "watermark_us")
            .join(state_last, on="user_key", how="left", maintain_order="left")
            .with_columns(before=pl.col("t_us").cum_max().shift(1).over("user_key"))
            .with_columns(base=pl.max_horizontal("before", "state_last"))
            .filter(
                pl.col("watermark_us").is_not_null()
                & pl.col("base").is_not_null()
                & (pl.col("base") < pl.col("watermark_us") - self.state_ttl_us)
            )
        )
        if frame.is_empty():
            return None
        first = frame.row(0, named=True)
        return int(first["seq"]), int(first["watermark_us"])

    def _ingest(self, events: pl.DataFrame, emitted_at_us: int) -> UserOutput:
        out = UserOutput()
        if len(events) == 0:
            return out
        keyed = self._assign_slots(events["user_key"])
        events = events.join(keyed, on="user_key", how="left", maintain_order="left")
        a = self.a
        zone_change_late = self._late_after_zone_change(events)

        # per-user facts of this batch (the last zone and non-null cohort/org seen win)
        per_user = events.group_by("slot").agg(
            zone=pl.col("timezone").last(),
            cohort_id=pl.col("cohort_id").drop_nulls().last(),
            org_id=pl.col("org_id").drop_nulls().last(),
            t_min=pl.col("t_us").min(),
            t_max=pl.col("t_us").max(),
            first_date=pl.col("date").min().cast(pl.Int32),
            completions=pl.col("type").is_in(COMPLETION_TYPES).sum(),
        )
        slots = per_user["slot"].to_numpy()
        is_new = a.first_seen_us[slots] == 0
        zone_ids = self._zone_ids(per_user["zone"])
        a.zone[slots] = zone_ids
        # a new user's days start closing after the watermark's closed horizon (or its first day)
        new_slots = slots[is_new]
        if len(new_slots):
            first_day = per_user["first_date"].to_numpy()[is_new] - 1
            if self.watermark_us is not None:
                horizon = self._closed_horizon(zone_ids[is_new], self.watermark_us, final=False)
                first_day = np.minimum(first_day, horizon)
            a.last_closed[new_slots] = first_day
            a.first_seen_us[new_slots] = per_user["t_min"].to_numpy()[is_new]

        # events for a day this user has already closed (e.g. after a zone change) are late
        closed = pl.Series(a.last_closed[events["slot"].to_numpy()]).cast(pl.Int32)
        late_mask = events["date"].cast(pl.Int32) <= closed
        if zone_change_late is not None:
            late_mask = late_mask | zone_change_late
        if late_mask.any():
            out.late = events.filter(late_mask).select(_late_columns(events))
            events = events.filter(~late_mask)
            per_user = events.group_by("slot").agg(
                t_min=pl.col("t_us").min(),
                t_max=pl.col("t_us").max(),
                completions=pl.col("type").is_in(COMPLETION_TYPES).sum(),
                cohort_id=pl.col("cohort_id").drop_nulls().last(),
                org_id=pl.col("org_id").drop_nulls().last(),
            )
            slots = per_user["slot"].to_numpy()
        out.accepted = len(events)
        if len(events) == 0:
            return out

        a.first_seen_us[slots] = np.where(
            a.first_seen_us[slots] == 0,
            per_user["t_min"].to_numpy(),
            np.minimum(a.first_seen_us[slots], per_user["t_min"].to_numpy()),
        )
        a.last_activity_us[slots] = np.maximum(
            a.last_activity_us[slots], per_user["t_max"].to_numpy()
        )
        a.total_completions[slots] += per_user["completions"].to_numpy()
        a.dirty[slots] = True
        with_cohort = per_user.filter(pl.col("cohort_id").is_not_null())
        self.cohort_id = self.cohort_id.scatter(with_cohort["slot"], with_cohort["cohort_id"])
        with_org = per_user.filter(pl.col("org_id").is_not_null())
        self.org_id = self.org_id.scatter(with_org["slot"], with_org["org_id"])

        self._fold_open_days(events)

        dur = pl.col("duration_s").fill_null(0.0)
        completion = pl.col("type").is_in(COMPLETION_TYPES)
        self.recent = pl.concat(
            [
                self.recent,
                events.select(
                    "slot",
                    "t_us",
                    dur.alias("time_spent_s"),
                    completion.cast(pl.Int64).alias("completion"),
                ),
            ]
        )
        self.scored = pl.concat(
            [
                self.scored,
                events.filter(pl.col("score").is_not_null()).select(
                    "slot", "skill", "t_us", "score"
                ),
            ]
        )
        # (user, skill) pairs seen; de-duplicated lazily (when evaluated or grown 2x) so a batch
        # costs O(batch), not O(all pairs)
        fresh_pairs = events.filter(pl.col("skill").is_not_null()).select("slot", "skill").unique()
        self.skills = pl.concat([self.skills, fresh_pairs])
        if len(self.skills) > 2 * self._skills_deduped + 100_000:
            self._dedupe_skills()

        # the event rules look only at scored events and assessments; run them on those users'
        # rule state alone, so a batch costs O(batch) rather than O(all users)
        relevant = events.filter(
            pl.col("score").is_not_null() | pl.col("type").is_in(ASSESSMENT_TYPES)
        )
        if len(relevant):
            fired = fire_event_rules(a.rules(), relevant["slot"].to_numpy(), relevant)
            if len(fired):
                out.alerts = build_alerts(fired, emitted_at_us=emitted_at_us)
        return out

    def _fold_open_days(self, events: pl.DataFrame) -> None:
        dur = pl.col("duration_s").fill_null(0.0)
        score = pl.col("score")
        is_type = {name: (pl.col("type") == kind) for name, kind in _PER_TYPE.items()}
        day = events.group_by("slot", "date").agg(
            events=pl.len().cast(pl.Int64),
            completions=pl.col("type").is_in(COMPLETION_TYPES).sum().cast(pl.Int64),
            **{name: expr.sum().cast(pl.Int64) for name, expr in is_type.items()},
            sessions=(pl.col("type") == "session_started").sum().cast(pl.Int64),
            scored_events=score.is_not_null().sum().cast(pl.Int64),
            score_sum=score.sum(),
            min_score=score.min(),
            max_score=score.max(),
            excellent_scores=(score >= 80).sum().cast(pl.Int64),
            time_spent_s=dur.sum(),
            xp=pl.col("xp").fill_null(0).sum().cast(pl.Int64),
            cohort_id=pl.col("cohort_id").drop_nulls().last(),
            cohort_seq=pl.col("seq").filter(pl.col("cohort_id").is_not_null()).last(),
            org_id=pl.col("org_id").drop_nulls().last(),
            org_seq=pl.col("seq").filter(pl.col("org_id").is_not_null()).last(),
        )
        # score_sum of a day without scores must stay null-free for arithmetic
        typed = (
            day.select(list(_OPEN_DAY_SCHEMA))
            .cast(dict(_OPEN_DAY_SCHEMA))  # type: ignore[arg-type]
            .with_columns(pl.col("score_sum").fill_null(0.0))
        )
        skill = (
            events.filter(pl.col("skill").is_not_null())
            .group_by("slot", "date", "skill")
            .agg(
                completions=pl.col("type").is_in(COMPLETION_TYPES).sum().cast(pl.Int64),
                scored_events=score.is_not_null().sum().cast(pl.Int64),
                score_sum=score.fill_null(0.0).sum(),
                time_spent_s=dur.sum(),
            )
            .select(list(_OPEN_SKILL_SCHEMA))
        )
        # Appended as partial sums (O(batch)); merged per key when the frames have doubled
        # since the last merge (amortised O(1) per row) and, for the closing rows, at close.
        self.open_days = pl.concat([self.open_days, typed])
        self.open_skill_days = pl.concat([self.open_skill_days, skill])
        grown = len(self.open_days) + len(self.open_skill_days)
        if grown > 2 * self._open_merged + 20_000 or self.open_days.n_chunks() > 200:
            self._merge_open_days()

    def _merge_open_days(self) -> None:
        """One row per (user, day) and per (user, day, skill) in the open-day frames."""
        self.open_days = _merge_day_rows(self.open_days)
        self.open_skill_days = _merge_skill_rows(self.open_skill_days)
        self._open_merged = len(self.open_days) + len(self.open_skill_days)

    # ------------------------------------------------------------------ closing days
    def advance(
        self, watermark_us: int | None, *, final: bool, emitted_at_us: int, evaluate: bool = True
    ) -> UserOutput:
        """Close every day the watermark has passed and evaluate state as of the watermark.

        `final=True` is the end of a finite input: the watermark is the newest event time and every
        day up to and including its local day closes (SPEC §4). `evaluate=False` skips the
        `user_state` / `user_skill_state` evaluation (a finite run only needs the final one; the
        users whose state changed stay marked and are evaluated at the next evaluating call).
        """
        out = UserOutput()
        if watermark_us is None or self.size == 0:
            return out
        if self.watermark_us is not None and watermark_us < self.watermark_us:
            watermark_us = self.watermark_us  # never backwards
        self.watermark_us = watermark_us
        n = self.size
        a = self.a
        target = self._closed_horizon(a.zone[:n], watermark_us, final)
        if final and len(self.open_days):
            # the end of a finite input closes every open day, also one whose local date lies
            # past the horizon in the user's (last) zone, e.g. an earlier event in a zone ahead
            newest = self.open_days.group_by("slot").agg(pl.col("date").max().cast(pl.Int32))
            ahead = np.full(n, np.iinfo(np.int32).min, dtype=np.int64)
            ahead[newest["slot"].to_numpy()] = newest["date"].to_numpy()
            target = np.maximum(target, ahead).astype(np.int32)
        lagging = np.nonzero(a.last_closed[:n] < target)[0]
        fired = _Fired()
        if len(lagging):
            out.user_daily, out.user_skill_daily = self._close_days(target, fired, emitted_at_us)
            a.dirty[lagging] = True
        if fired.rules:
            out.alerts = self._day_alerts(fired.frame(), emitted_at_us)
        # users idle for state_ttl: write their final user_state row, then forget them
        idle = a.last_activity_us[:n] < watermark_us - self.state_ttl_us
        if evaluate or final:
            a.dirty[:n] |= idle
            out.user_state, out.user_skill_state = self._evaluate(
                watermark_us, final, emitted_at_us
            )
        elif idle.any():
            out.user_state, out.user_skill_state = self._evaluate(
                watermark_us, False, emitted_at_us, only=np.nonzero(idle)[0]
            )
        if idle.any():
            self.evicted += int(idle.sum())
            self._evict(idle)
        return out

    def _dedupe_skills(self) -> None:
        self.skills = self.skills.unique(maintain_order=True).rechunk()
        self._skills_deduped = len(self.skills)

    def _evict(self, gone: np.ndarray) -> None:
        """Drop the users marked in `gone` from every piece of state and renumber the slots."""
        n = self.size
        keep = ~gone
        mapping = np.cumsum(keep) - 1  # old slot -> new slot (where kept)
        remap = pl.Series(mapping.astype(np.int64))
        kept_slots = pl.Series(np.nonzero(keep)[0].astype(np.int64))

        def renumber(frame: pl.DataFrame) -> pl.DataFrame:
            alive = frame.filter(pl.col("slot").is_in(kept_slots.implode()))
            return alive.with_columns(slot=remap.gather(alive["slot"]))

        for name, values in self.a.data.items():
            survivors = values[:n][keep]
            values[: len(survivors)] = survivors
            self.a.data[name] = values
        self._slot_index.replace(self._slot_index.keys.filter(pl.Series(keep)))
        self.cohort_id = self.cohort_id.filter(pl.Series(keep))
        self.org_id = self.org_id.filter(pl.Series(keep))
        self.open_days = renumber(self.open_days)
        self.open_skill_days = renumber(self.open_skill_days)
        self.recent = renumber(self.recent)
        self.scored = renumber(self.scored)
        self.skills = renumber(self.skills)
        self.size = int(keep.sum())
        # reset the freed tail so a new user starts from clean state
        fresh = _Arrays(1)
        for name, values in self.a.data.items():
            values[self.size : n] = fresh.data[name][0]

    def _close_days(
        self, target: np.ndarray, fired: _Fired, emitted_at_us: int
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        a = self.a
        n = self.size
        target_of = pl.DataFrame({"slot": np.arange(n, dtype=np.int64), "target": target})
        days = self.open_days.join(target_of, on="slot", maintain_order="left").with_columns(
            closing=pl.col("date").cast(pl.Int32) <= pl.col("target")
        )
        closing = _merge_day_rows(days.filter("closing").drop("target", "closing")).sort("slot", "date")
        self.open_days = days.filter(~pl.col("closing")).drop("target", "closing")
        skill_days = self.open_skill_days.join(target_of, on="slot", maintain_order="left").with_columns(
            closing=pl.col("date").cast(pl.Int32) <= pl.col("target")
        )
        closing_skill = _merge_skill_rows(skill_days.filter("closing").drop("target", "closing"))
        self.open_skill_days = skill_days.filter(~pl.col("closing")).drop("target", "closing")

        c_slot = closing["slot"].to_numpy()
        c_day = closing["date"].cast(pl.Int32).to_numpy().astype(np.int64)
        keys = c_slot * (1 << 32) + c_day
        c_completions = closing["completions"].to_numpy().astype(np.float64)
        c_time = closing["time_spent_s"].to_numpy()
        c_scored = closing["scored_events"].to_numpy()
        c_mean = np.where(
            c_scored > 0, closing["score_sum"].to_numpy() / np.maximum(c_scored, 1), np.nan
        )
        c_streak = np.zeros(len(closing), dtype=np.int64)

        ages = np.arange(RING)
        while True:
            idx = np.nonzero(a.last_closed[:n] < target)[0]
            if len(idx) == 0:
                break
            d = a.last_closed[idx].astype(np.int64) + 1
            q = idx.astype(np.int64) * (1 << 32) + d
            pos = np.searchsorted(keys, q)
            found = pos < len(keys)
            found[found] = keys[pos[found]] == q[found]
            fpos = pos[found]
            comp = np.zeros(len(idx))
            comp[found] = c_completions[fpos]
            spent = np.zeros(len(idx))
            spent[found] = c_time[fpos]
            mean = np.full(len(idx), np.nan)
            mean[found] = c_mean[fpos]

            active = comp > 0
            newly = (a.first_active[idx] == _NO_DAY) & active
            a.first_active[idx[newly]] = d[newly]
            first = a.first_active[idx].astype(np.int64)
            in_series = (a.first_active[idx] != _NO_DAY) & (d >= first)
            prev_streak = a.streak[idx].copy()
            streak = np.where(active, prev_streak + 1, 0)
            a.streak[idx] = streak
            a.longest[idx] = np.maximum(a.longest[idx], streak)
            a.days_active[idx] += active
            a.last_active[idx] = np.where(active, d, a.last_active[idx])
            a.last_run[idx] = np.where(active, streak, a.last_run[idx])
            inactive = np.where(active, 0, np.where(in_series, a.inactive_run[idx] + 1, 0))
            a.inactive_run[idx] = inactive
            c_streak[fpos] = streak[found]

            broke = in_series & ~active & (prev_streak >= self.streak_alert_min)
            if broke.any():
                fired.add(
                    "streak_broken",
                    idx[broke],
                    d[broke],
                    streak=prev_streak[broke],
                    last_active_day=d[broke] - 1,
                )
            for rule, run in (("engagement_drop", 3), ("stagnation", 5)):
                hit = in_series & (inactive == run)
                if hit.any():
                    fired.add(
                        rule,
                        idx[hit],
                        d[hit],
                        inactive_days=inactive[hit],
                        last_active_day=a.last_active[idx[hit]],
                    )

            # anomalies over the previous <= 28 days of the series (inactive days count as zero)
            s = idx[in_series]
            ds = d[in_series]
            if len(s):
                hist = np.minimum(RING, ds - a.first_active[s].astype(np.int64))
                age = (ds[:, None] - 1 - ages[None, :]) % RING  # age of the value in ring slot p
                valid = age < hist[:, None]
                for ring, x, floor, rule, zname, flag, metric in (
                    (
                        a.ring_completions,
                        comp[in_series],
                        FLOOR_COMPLETIONS,
                        "anomaly_velocity",
                        "z_velocity",
                        "armed_off_vel",
                        "completions",
                    ),
                    (
                        a.ring_time,
                        spent[in_series],
                        FLOOR_TIME_S,
                        "anomaly_engagement",
                        "z_engagement",
                        "armed_off_eng",
                        "time_spent_s",
                    ),
                ):
                    z, m, sd = _zscores(ring[s], valid, hist, x, floor)
                    getattr(a, zname)[s] = z
                    self._edge(
                        fired,
                        rule,
                        s,
                        ds,
                        z,
                        np.abs(z) >= 3,
                        getattr(a, flag),
                        x,
                        m,
                        sd,
                        hist,
                        floor,
                        metric,
                    )
                    ring[s, ds % RING] = np.minimum(x, np.iinfo(np.int16).max) if ring.dtype == np.int16 else x
                # velocity and consistency over the trailing 7 closed days, this one included
                seven = (age_incl := (ds[:, None] - ages[None, :7]) % RING)
                span = np.minimum(7, ds - a.first_active[s].astype(np.int64) + 1)
                mask7 = np.arange(7)[None, :] < span[:, None]
                week = np.take_along_axis(a.ring_completions[s], seven, axis=1) * mask7
                del age_incl
                a.velocity_7d[s] = week.sum(axis=1) / 7.0
                consistency = (week > 0).sum(axis=1) / 7.0
                a.consistency_7d[s] = consistency
                cond = (a.first_active[s].astype(np.int64) <= ds - 6) & (consistency < 0.5)
                self._edge(
                    fired,
                    "low_consistency",
                    s,
                    ds,
                    np.where(np.isfinite(consistency), 0.0, np.nan),
                    cond,
                    a.armed_off_lc,
                    consistency,
                    None,
                    None,
                    None,
                    None,
                    None,
                )

                # performance: over scored days only
                scored = np.isfinite(mean[in_series])
                ps = s[scored]
                pds = ds[scored]
                if len(ps):
                    x = mean[in_series][scored]
                    count = a.scored_days[ps].astype(np.int64)
                    hist_p = np.minimum(RING, count)
                    valid_p = ages[None, :] < hist_p[:, None]
                    z, m, sd = _zscores(a.ring_score[ps], valid_p, hist_p, x, FLOOR_SCORE)
                    a.z_performance[ps] = z
                    a.last_scored_day[ps] = pds
                    self._edge(
                        fired,
                        "anomaly_performance",
                        ps,
                        pds,
                        z,
                        z <= -3,
                        a.armed_off_perf,
                        x,
                        m,
                        sd,
                        hist_p,
                        FLOOR_SCORE,
                        "avg_score",
                    )
                    a.ring_score[ps, count % RING] = x
                    a.scored_days[ps] += 1
            a.last_closed[idx] = d.astype(np.int32)

        user_daily = closing.with_columns(
            user_key=pl.Series(self._keys_of(c_slot)),
            streak=pl.Series(c_streak),
            avg_score=pl.when(pl.col("scored_events") > 0).then(
                pl.col("score_sum") / pl.col("scored_events")
            ),
            emitted_at=pl.lit(emitted_at_us).cast(pl.Datetime("us", "UTC")),
        )
        skill_daily = closing_skill.with_columns(
            user_key=pl.Series(self._keys_of(closing_skill["slot"].to_numpy())),
            avg_score=pl.when(pl.col("scored_events") > 0).then(
                pl.col("score_sum") / pl.col("scored_events")
            ),
            emitted_at=pl.lit(emitted_at_us).cast(pl.Datetime("us", "UTC")),
        )
        return USER_DAILY.conform(user_daily), USER_SKILL_DAILY.conform(skill_daily)

    def _keys_of(self, slots: np.ndarray) -> list[str]:
        return self._user_keys.gather(slots).to_list() if len(slots) else []

    def _edge(
        self,
        fired: _Fired,
        rule: str,
        slots: np.ndarray,
        days: np.ndarray,
        z: np.ndarray,
        cond: np.ndarray,
        off: np.ndarray,
        x: np.ndarray,
        mean: np.ndarray | None,
        sd: np.ndarray | None,
        hist: np.ndarray | None,
        floor: float | None,
        metric: str | None,
    ) -> None:
        """Edge-triggered firing: fire where cond holds and the last evaluation did not.

        `off[slot]` is True while the condition holds (the rule is disarmed); a null z (too little
        history) is no evaluation and leaves the flag alone.
        """
        evaluated = np.isfinite(z)
        cond = cond & evaluated
        fire = cond & ~off[slots]
        off[slots] = np.where(evaluated, cond, off[slots])
        if not fire.any():
            return
        if rule == "low_consistency":
            fired.add(
                rule,
                slots[fire],
                days[fire],
                consistency_7d=x[fire],
                active_days_7d=np.rint(x[fire] * 7).astype(np.int64),
                threshold=0.5,
            )
            return
        assert mean is not None and sd is not None and hist is not None
        fired.add(
            rule,
            slots[fire],
            days[fire],
            metric=metric,
            value=x[fire],
            mean=mean[fire],
            std=sd[fire],
            floor=floor,
            history_days=hist[fire],
            z=z[fire],
        )

    def _day_alerts(self, frame: pl.DataFrame, emitted_at_us: int) -> pl.DataFrame:
        slots = frame["slot"].to_numpy()
        zones = pl.Series(self.zones, dtype=pl.String).gather(self.a.zone[slots])
        frame = frame.with_columns(
            user_key=self._user_keys.gather(slots),
            cohort_id=self.cohort_id.gather(slots),
            org_id=self.org_id.gather(slots),
            trigger=pl.col("date").cast(pl.String),
            event_time=day_end_us(frame["date"], zones).cast(pl.Datetime("us", "UTC")),
        )
        return build_alerts(frame, emitted_at_us=emitted_at_us)

    # ------------------------------------------------------------------ state as of the watermark
    def _evaluate(
        self, as_of_us: int, final: bool, emitted_at_us: int, only: np.ndarray | None = None
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        a = self.a
        n = self.size
        if only is not None:
            chosen = only
        else:
            chosen = np.arange(n) if final else np.nonzero(a.dirty[:n])[0]
            a.dirty[:n] = False
        self._prune(as_of_us)
        if len(chosen) == 0:
            return USER_STATE.empty(), USER_SKILL_STATE.empty()
        today = self._closed_horizon(a.zone[:n], as_of_us, final=True)

        # only the chosen users' rows of the event-level state are read (O(chosen), not O(all))
        if len(chosen) < n:
            mark = np.zeros(n, dtype=np.bool_)
            mark[chosen] = True

            def mine(frame: pl.DataFrame) -> pl.DataFrame:
                return frame.filter(pl.Series(mark[frame["slot"].to_numpy()]))
        else:

            def mine(frame: pl.DataFrame) -> pl.DataFrame:
                return frame

        # open active days (live mode: today and yesterday) extend the closed streak
        latest = a.last_active[:n].astype(np.int64).copy()
        at_latest = a.last_run[:n].astype(np.int64).copy()
        longest = a.longest[:n].astype(np.int64).copy()
        days_active = a.days_active[:n].astype(np.int64).copy()
        open_active = mine(self.open_days).filter(pl.col("completions") > 0).select(
            "slot", pl.col("date").cast(pl.Int32).alias("d")
        )
        if len(open_active):
            # runs of consecutive open active days per user (open days are partial rows: one
            # (slot, day) may appear several times)
            key = np.unique(
                open_active["slot"].to_numpy().astype(np.int64) * (1 << 32)
                + (open_active["d"].to_numpy().astype(np.int64) + (1 << 31))
            )
            o_slot = key >> 32
            o_day = (key & 0xFFFFFFFF) - (1 << 31)
            first = np.ones(len(key), dtype=np.bool_)
            first[1:] = (o_slot[1:] != o_slot[:-1]) | (o_day[1:] != o_day[:-1] + 1)
            starts = np.flatnonzero(first)
            ends = np.append(starts[1:], len(key)) - 1
            r_slot = o_slot[starts]
            r_start = o_day[starts]
            r_end = o_day[ends]
            r_length = ends - starts + 1
            # a run that starts right after the last closed day continues the closed streak
            continues = r_start == a.last_closed[r_slot].astype(np.int64) + 1
            joined = r_length + np.where(continues, a.streak[r_slot], 0)
            np.maximum.at(longest, r_slot, joined)
            np.add.at(days_active, r_slot, r_length)
            # the newest run (runs are sorted by slot, then day) sets the latest active day
            newest = np.ones(len(r_slot), dtype=np.bool_)
            newest[:-1] = r_slot[1:] != r_slot[:-1]
            latest[r_slot[newest]] = r_end[newest]
            at_latest[r_slot[newest]] = joined[newest]
        ever = latest != _NO_DAY
        delta = np.where(ever, today - latest, 10**6)
        current = np.where(ever & (delta <= 1), at_latest, 0)
        momentum = np.select(
            [delta <= 0, delta == 1, delta <= 3], ["high", "medium", "low"], "stalled"
        )

        users = pl.DataFrame({"slot": chosen.astype(np.int64)})
        window = mine(self.recent).filter(
            pl.col("t_us") > as_of_us - 7 * US_PER_DAY, pl.col("t_us") <= as_of_us
        )
        engagement = window.group_by("slot").agg(
            spent=pl.col("time_spent_s").sum(), done=pl.col("completion").sum()
        )
        scored = mine(self.scored)
        trend = trend_stats(scored, as_of_us=as_of_us, window_us=self.trend_window_us, by=["slot"])
        profile = (
            skill_profile(
                scored.filter(pl.col("skill").is_not_null()).join(self.slots, on="slot", maintain_order="left"),
                as_of_us=as_of_us,
                window_us=30 * US_PER_DAY,
            )
            .join(self.slots, on="user_key")
            .drop("user_key")
        )
        keys = self._user_keys
        nan_to_null = {
            c: pl.col(c).fill_nan(None)
            for c in (
                "velocity_7d",
                "consistency_7d",
                "anomaly_velocity",
                "anomaly_engagement",
                "anomaly_performance",
            )
        }
        last_closed = a.last_closed[chosen]
        # like the other two scores, that of the last closed day: null unless that day was scored
        scored_last = (a.last_scored_day[chosen] != _NO_DAY) & (a.last_scored_day[chosen] == last_closed)
        z_perf = np.where(scored_last, a.z_performance[chosen], np.nan)
        in_series = a.first_active[chosen] != _NO_DAY
        frame = (
            users.with_columns(
                user_key=keys.gather(chosen),
                cohort_id=self.cohort_id.gather(chosen),
                org_id=self.org_id.gather(chosen),
                first_seen_at=pl.Series(a.first_seen_us[chosen]).cast(pl.Datetime("us", "UTC")),
                last_activity_at=pl.Series(a.last_activity_us[chosen]).cast(
                    pl.Datetime("us", "UTC")
                ),
                days_active=pl.Series(days_active[chosen]),
                current_streak=pl.Series(current[chosen]),
                longest_streak=pl.Series(longest[chosen]),
                momentum=pl.Series(momentum[chosen]),
                velocity_7d=pl.Series(np.where(in_series, a.velocity_7d[chosen], 0.0)),
                consistency_7d=pl.Series(np.where(in_series, a.consistency_7d[chosen], 0.0)),
                anomaly_velocity=pl.Series(
                    np.where(last_closed >= a.first_active[chosen], a.z_velocity[chosen], np.nan)
                ),
                anomaly_engagement=pl.Series(
                    np.where(last_closed >= a.first_active[chosen], a.z_engagement[chosen], np.nan)
                ),
                anomaly_performance=pl.Series(z_perf),
                total_completions=pl.Series(a.total_completions[chosen]),
                struggling=pl.Series(
                    struggling_at(a.rule_t[chosen], a.rule_score[chosen], as_of_us)
                ),
            )
            .with_columns(**nan_to_null)
            .join(engagement, on="slot", how="left")
            .join(trend, on="slot", how="left")
            .join(profile, on="slot", how="left")
            .with_columns(
                as_of=pl.lit(as_of_us).cast(pl.Datetime("us", "UTC")),
                engagement_7d=0.5
                * pl.min_horizontal(pl.col("spent").fill_null(0.0) / (7 * 1800), pl.lit(1.0))
                + 0.5
                * pl.min_horizontal(
                    pl.col("done").fill_null(0).cast(pl.Float64) / (7 * 3), pl.lit(1.0)
                ),
                trend_direction=pl.col("trend_direction").fill_null("insufficient_data"),
                trend_confidence=pl.col("trend_confidence").fill_null(0.0),
                strengths=pl.col("strengths").fill_null(pl.lit([], dtype=pl.List(pl.String))),
                weaknesses=pl.col("weaknesses").fill_null(pl.lit([], dtype=pl.List(pl.String))),
                emitted_at=pl.lit(emitted_at_us).cast(pl.Datetime("us", "UTC")),
            )
        )
        user_state = USER_STATE.conform(frame)

        self._dedupe_skills()
        pairs = self.skills.filter(pl.col("slot").is_in(chosen))
        skill_trend = trend_stats(
            scored.filter(pl.col("skill").is_not_null()),
            as_of_us=as_of_us,
            window_us=self.trend_window_us,
            by=["slot", "skill"],
        )
        skill_state = pairs.join(skill_trend, on=["slot", "skill"], how="left").with_columns(
            user_key=keys.gather(pairs["slot"]),
            as_of=pl.lit(as_of_us).cast(pl.Datetime("us", "UTC")),
            scored_events_30d=pl.col("scored_events").fill_null(0),
            avg_score_30d=pl.col("avg_score"),
            trend_direction=pl.col("trend_direction").fill_null("insufficient_data"),
            trend_confidence=pl.col("trend_confidence").fill_null(0.0),
            date=pl.lit(as_of_us).cast(pl.Datetime("us", "UTC")).dt.date(),
            emitted_at=pl.lit(emitted_at_us).cast(pl.Datetime("us", "UTC")),
        )
        return user_state, USER_SKILL_STATE.conform(skill_state)

    def _prune(self, as_of_us: int) -> None:
        """Drop events past the windows; one chunk each, so that float sums over them do not
        depend on how the batches happened to be cut (a resumed run holds the same rows in
        other chunks than an uninterrupted one)."""
        self.recent = self.recent.filter(pl.col("t_us") > as_of_us - 7 * US_PER_DAY).rechunk()
        keep = max(self.trend_window_us, 30 * US_PER_DAY)
        self.scored = self.scored.filter(pl.col("t_us") > as_of_us - keep).rechunk()

    # ------------------------------------------------------------------ recovery
    def snapshot(self) -> dict[str, Any]:
        """Plain picklable copy of the whole state."""
        state = {k: v for k, v in self.__dict__.items() if k != "a"}
        state["arrays"] = {k: v[: self.size].copy() for k, v in self.a.data.items()}
        return state

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> UserAnalytics:
        self = cls.__new__(cls)
        arrays = snap["arrays"]
        self.__dict__.update({k: v for k, v in snap.items() if k != "arrays"})
        self.a = _Arrays(max(1024, self.size))
        for k, v in arrays.items():
            self.a.data[k][: len(v)] = v
        return self


def _merge_day_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Partial open-day rows -> one row per (slot, date): sums add up, min/max combine, and the
    cohort/org of the row with the highest `seq` wins (the last non-null one seen)."""
    sums = [
        c
        for c in _OPEN_DAY_SCHEMA
        if c
        not in ("slot", "date", "min_score", "max_score", "cohort_id", "cohort_seq", "org_id", "org_seq")
    ]
    return (
        rows.group_by("slot", "date", maintain_order=True)
        .agg(
            *[pl.col(c).sum() for c in sums],
            min_score=pl.col("min_score").min(),
            max_score=pl.col("max_score").max(),
            cohort_id=pl.col("cohort_id").sort_by("cohort_seq", nulls_last=False).drop_nulls().last(),
            cohort_seq=pl.col("cohort_seq").max(),
            org_id=pl.col("org_id").sort_by("org_seq", nulls_last=False).drop_nulls().last(),
            org_seq=pl.col("org_seq").max(),
        )
        .select(list(_OPEN_DAY_SCHEMA))
    )


def _merge_skill_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """Partial open skill-day rows -> one row per (slot, date, skill)."""
    return rows.group_by("slot", "date", "skill", maintain_order=True).agg(
        pl.col("completions").sum(),
        pl.col("scored_events").sum(),
        pl.col("score_sum").sum(),
        pl.col("time_spent_s").sum(),
    )


class _Fired:
    """Alerts fired by the day rules during one `advance`, gathered as arrays per rule."""

    def __init__(self) -> None:
        self.rules: dict[str, list[dict[str, Any]]] = {}

    def add(self, rule: str, slots: np.ndarray, days: np.ndarray, **evidence: Any) -> None:
        n = len(slots)
        columns = {"slot": slots.astype(np.int64), "day": days.astype(np.int32)}
        for name, value in evidence.items():
            columns[name] = value if isinstance(value, np.ndarray) else np.full(n, value)
        self.rules.setdefault(rule, []).append(columns)

    def frame(self) -> pl.DataFrame:
        """rule, slot, date, evidence (a JSON object; NaN -> null; `*_day` fields as ISO dates)."""
        frames = []
        for rule, parts in self.rules.items():
            merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            table = pl.DataFrame(merged).with_columns(
                pl.col(pl.Float64).fill_nan(None),
                pl.col("^.*_day$").cast(pl.Int32).cast(pl.Date).cast(pl.String),
            )
            evidence = [c for c in table.columns if c not in ("slot", "day")]
            frames.append(
                table.select(
                    rule=pl.lit(rule),
                    slot="slot",
                    date=pl.col("day").cast(pl.Date),
                    evidence=pl.struct(evidence).struct.json_encode(),
                )
            )
        return pl.concat(frames)


def _zscores(
    ring: np.ndarray, valid: np.ndarray, hist: np.ndarray, x: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z = (x - mean) / max(sample std, floor) over the valid ring entries; NaN below 7 values."""
    h = hist.astype(np.float64)
    ring = ring.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (ring * valid).sum(axis=1) / h
        var = (((ring - mean[:, None]) ** 2) * valid).sum(axis=1) / (h - 1)
        sd = np.sqrt(var)
        z = (x - mean) / np.maximum(sd, floor)
    z = np.where(hist >= MIN_HISTORY, z, np.nan)
    return z, mean, sd


__all__ = ["UserAnalytics", "UserOutput"]
