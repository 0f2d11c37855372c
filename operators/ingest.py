"""De-duplication, the watermark and lateness (SPEC §2, §4) for one source partition.

`Admission` sits right after decode. For each micro-batch of decoded events, in arrival order:

1. **duplicate**: an earlier valid record of this partition had the same `event_id` and an event time
   within `dedup_horizon` of this one (`EventIds`; with several source partitions the user shards
   apply the same test across partitions). Dropped and counted.
2. **late**: the event's local day (in its own zone) has already closed, i.e. the watermark *before*
   the event arrived is past that day's end plus `allowed_lateness` (SPEC: "passes"). Goes to `late_events`.
3. otherwise **accepted**.

The watermark is the newest accepted event time minus `max_out_of_orderness`; it never moves back.
It is computed per event inside a batch with a running maximum, so a batch gives exactly what
one-event-at-a-time processing would.

State: the newest event time (one integer) and the `event_id`s of valid records. A finite input
(files) keeps every id, so that a record re-sent much later is a duplicate whichever batch or file
it is read in. A live input (`forget_ids=True`) keeps, for bounded memory, the ids whose event time
is within `dedup_horizon` + `allowed_lateness` + one day of the newest event time: an older re-sent
record would be late anyway, and then counts as late, not as a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from learnstream.config import Settings
from operators.keyindex import KeyIndex
from operators.timeutil import US_PER_DAY, day_end_us
from schemas.events import EVENT_BATCH_SCHEMA


def _us(delta: object) -> int:
    from datetime import timedelta

    assert isinstance(delta, timedelta)
    return int(delta / timedelta(microseconds=1))


@dataclass
class Admitted:
    """One batch sorted into its three fates (rejections are decode's)."""

    accepted: pl.DataFrame  # EVENT_BATCH_SCHEMA + watermark_us (the watermark at arrival)
    late: pl.DataFrame  # EVENT_BATCH_SCHEMA
    duplicates: int
    #: the watermark after this batch (None until the first accepted event)
    watermark_us: int | None


class EventIds:
    """The `event_id`s of valid records, each with the event time it was last accepted with, and
    which records of a batch are duplicates (SPEC §2: the same `event_id` within `dedup_horizon`
    of event time, earlier in this batch or in an earlier one; the first occurrence wins).

    With `forget`, ids whose event time is more than `horizon_us + margin_us` before the newest
    event time remembered count as not seen, and are dropped once the rows have doubled (bounded
    memory for live runs); without, every id is kept.
    """

    def __init__(self, horizon_us: int, *, margin_us: int, forget: bool) -> None:
        self.horizon_us = horizon_us
        self.margin_us = margin_us
        self.forget = forget
        #: event_id -> row; `seen_t[row]` the event time it was last accepted with
        self.ids = KeyIndex()
        self.seen_t = np.zeros(0, dtype=np.int64)
        self.keep_after = -(2**62)
        self._compacted = 0

    @classmethod
    def of(cls, settings: Settings, *, forget: bool) -> EventIds:
        """Ids within `dedup_horizon`; forgotten (with `forget`) `allowed_lateness` + 1 day
        later, when a re-send would be late anyway."""
        return cls(
            _us(settings.dedup_horizon),
            margin_us=_us(settings.allowed_lateness) + US_PER_DAY,
            forget=forget,
        )

    def mark(self, events: pl.DataFrame) -> pl.DataFrame:
        """`events` (in arrival order; `event_id`, `t_us`) with `duplicate` (bool) and `_row`
        (the id's row in the index, -1 for an id not in it) added; pass the rows kept to
        `remember`."""
        ids = events["event_id"]
        row = self.ids.lookup(ids)
        seen_t = self.seen_t[np.maximum(row, 0)] if len(self.seen_t) else np.zeros(len(row), np.int64)
        known = (row >= 0) & (seen_t >= self.keep_after)
        if not known.any() and ids.n_unique() == len(ids):  # the usual batch: nothing seen before
            return events.with_columns(duplicate=pl.lit(False), _row=pl.Series(row, dtype=pl.Int64))
        frame = events.with_columns(
            _seen_t=pl.Series(seen_t, dtype=pl.Int64).set(pl.Series(~known), None),  # type: ignore[arg-type]
            _row=pl.Series(row, dtype=pl.Int64),
            _first=pl.col("event_id").is_first_distinct(),
            _i=pl.int_range(pl.len(), dtype=pl.Int64),
        )
        repeats = frame.filter(~pl.col("_first"))
        if len(repeats):
            firsts = frame.filter(pl.col("_first")).select("event_id", _first_t="t_us")
            within = repeats.join(firsts, on="event_id").filter(
                (pl.col("t_us") - pl.col("_first_t")).abs() <= self.horizon_us
            )
            in_batch = pl.col("_i").is_in(within["_i"].implode())
        else:
            in_batch = pl.lit(False)
        earlier = pl.col("_seen_t").is_not_null() & ((pl.col("t_us") - pl.col("_seen_t")).abs() <= self.horizon_us)
        return frame.with_columns(duplicate=earlier | in_batch).drop("_seen_t", "_first", "_i")

    def remember(self, valid: pl.DataFrame) -> None:
        """Record the ids of `valid` (rows of `mark` that are not duplicates); a re-used id
        outside the horizon replaces the old one. With `forget`, then forgets the ids past the
        horizon and margin of the newest event time."""
        if valid.is_empty():
            return
        rows = valid["_row"].to_numpy()
        if (rows < 0).all() and valid["event_id"].n_unique() == len(valid):  # all new, distinct
            self.ids.append(valid["event_id"])
            self.seen_t = np.concatenate([self.seen_t, valid["t_us"].to_numpy()])
        else:
            fresh = valid.select("event_id", "t_us", "_row").unique("event_id", keep="last", maintain_order=True)
            old = fresh.filter(pl.col("_row") >= 0)
            new = fresh.filter(pl.col("_row") < 0)
            self.seen_t[old["_row"].to_numpy()] = old["t_us"].to_numpy()
            self.ids.append(new["event_id"])
            self.seen_t = np.concatenate([self.seen_t, new["t_us"].to_numpy()])
        if self.forget:
            newest = int(valid["t_us"].max())  # type: ignore[arg-type]
            self._forget_before(newest - self.horizon_us - self.margin_us)

    def _forget_before(self, keep_after_us: int) -> None:
        """Ids of event times before `keep_after_us` count as not seen from now on (compacted
        when the rows have doubled)."""
        self.keep_after = max(self.keep_after, keep_after_us)
        if len(self.seen_t) > 2 * self._compacted + 100_000:
            alive = self.seen_t >= self.keep_after
            if not alive.all():  # else nothing to drop: the index stays as it is
                self.ids.replace(self.ids.keys.filter(pl.Series(alive)))
                self.seen_t = self.seen_t[alive]
            self._compacted = len(self.seen_t)

    @property
    def seen(self) -> pl.DataFrame:
        """The ids that count as seen: event_id, seen_t_us (the event time last accepted)."""
        alive = self.seen_t >= self.keep_after
        return pl.DataFrame(
            {"event_id": self.ids.keys.filter(pl.Series(alive)), "seen_t_us": self.seen_t[alive]}
        )

    def snapshot(self) -> dict[str, object]:
        return {"seen": self.seen.to_arrow(), "keep_after": self.keep_after}

    def restore(self, snap: dict[str, object]) -> None:
        seen: pl.DataFrame = pl.from_arrow(snap["seen"])  # type: ignore[assignment]
        self.ids = KeyIndex(seen["event_id"])
        self.seen_t = seen["seen_t_us"].to_numpy().copy()
        self.keep_after = snap.get("keep_after", -(2**62))  # type: ignore[assignment]
        self._compacted = len(self.seen_t)


class Admission:
    """Stateful dedup + watermark + lateness for one source partition (pure: no I/O)."""

    def __init__(self, settings: Settings, *, forget_ids: bool = True) -> None:
        self.ooo_us = _us(settings.max_out_of_orderness)
        self.lateness_us = _us(settings.allowed_lateness)
        self.max_event_us: int | None = None
        self.event_ids = EventIds.of(settings, forget=forget_ids)

    @property
    def watermark_us(self) -> int | None:
        return None if self.max_event_us is None else self.max_event_us - self.ooo_us

    def admit(self, events: pl.DataFrame) -> Admitted:
        """Sort decoded events (EVENT_BATCH_SCHEMA, any order) into accepted, late and duplicates."""
        events = events.sort("seq")
        n = len(events)
        if n == 0:
            return Admitted(events, events, 0, self.watermark_us)

        # -- duplicates: against earlier batches, then within this batch (first occurrence wins)
        frame = self.event_ids.mark(events)
        duplicates = int(frame["duplicate"].sum())
        valid = frame.filter(~pl.col("duplicate"))

        # -- lateness: watermark before each event = running max of earlier event times - ooo
        carry = self.max_event_us if self.max_event_us is not None else -(2**62)
        valid = valid.with_columns(
            day_end_us=day_end_us(valid["date"], valid["timezone"]),
            max_before=pl.col("t_us").cum_max().shift(1, fill_value=carry).clip(lower_bound=carry),
        )
        # A late event has t < its day's end <= watermark, so it never raises the maximum: the
        # running maximum over all valid events equals the one over accepted events.
        valid = valid.with_columns(
            late=(pl.col("max_before") - self.ooo_us) > (pl.col("day_end_us") + self.lateness_us)
        )
        cols = list(EVENT_BATCH_SCHEMA)
        # accepted events also carry the watermark at their arrival (`watermark_us`, null before
        # the first event), which lets downstream state decisions be made per event
        accepted = valid.filter(~pl.col("late")).select(
            *cols,
            watermark_us=pl.when(pl.col("max_before") > -(2**62))
            .then(pl.col("max_before") - self.ooo_us)
            .otherwise(None),
        )
        late = valid.filter(pl.col("late")).select(cols)

        batch_max = valid["t_us"].max()
        if batch_max is not None:
            top = int(batch_max)  # type: ignore[arg-type]
            self.max_event_us = top if self.max_event_us is None else max(self.max_event_us, top)

        # -- remember ids of valid records; in live runs, ids past the horizon count as not seen
        #    from now on (a re-send that old would be late anyway)
        self.event_ids.remember(valid)
        return Admitted(accepted, late, duplicates, self.watermark_us)

    def snapshot(self) -> dict[str, object]:
        return {"max_event_us": self.max_event_us, **self.event_ids.snapshot()}

    def restore(self, snap: dict[str, object]) -> None:
        self.max_event_us = snap["max_event_us"]  # type: ignore[assignment]
        self.event_ids.restore(snap)
