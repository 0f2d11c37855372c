"""De-duplication, the watermark and lateness (SPEC §2, §4) for one source partition.

`Admission` sits right after decode. For each micro-batch of decoded events, in arrival order:

1. **duplicate**: an earlier valid record of this partition had the same `event_id` and an event time
   within `dedup_horizon` of this one. Dropped and counted.
2. **late**: the event's local day (in its own zone) has already closed, i.e. the watermark *before*
   the event arrived is at or past that day's end plus `allowed_lateness`. Goes to `late_events`.
3. otherwise **accepted**.

The watermark is the newest accepted event time minus `max_out_of_orderness`; it never moves back.
It is computed per event inside a batch with a running maximum, so a batch gives exactly what
one-event-at-a-time processing would.

State and its horizon: the newest event time (one integer) and the `event_id`s of valid records whose
event time is within `dedup_horizon` + `allowed_lateness` + one day of the newest event time (older
ids are evicted: a re-sent record older than that is late anyway, and is counted as late, not as a
duplicate).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from learnstream.config import Settings
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


class Admission:
    """Stateful dedup + watermark + lateness for one source partition (pure: no I/O)."""

    def __init__(self, settings: Settings) -> None:
        self.ooo_us = _us(settings.max_out_of_orderness)
        self.lateness_us = _us(settings.allowed_lateness)
        self.horizon_us = _us(settings.dedup_horizon)
        self.max_event_us: int | None = None
        self.seen = pl.DataFrame(schema={"event_id": pl.String, "seen_t_us": pl.Int64})

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
        frame = events.join(self.seen, on="event_id", how="left", maintain_order="left").with_columns(
            first_in_batch=pl.col("event_id").is_first_distinct()
        )
        repeats = frame.filter(~pl.col("first_in_batch"))
        if len(repeats):
            firsts = frame.filter(pl.col("first_in_batch")).select("event_id", first_t="t_us")
            within = repeats.join(firsts, on="event_id").filter(
                (pl.col("t_us") - pl.col("first_t")).abs() <= self.horizon_us
            )
            frame = frame.with_columns(dup_batch=pl.col("seq").is_in(within["seq"].implode()))
        else:
            frame = frame.with_columns(dup_batch=pl.lit(False))
        dup_prev = pl.col("seen_t_us").is_not_null() & (
            (pl.col("t_us") - pl.col("seen_t_us")).abs() <= self.horizon_us
        )
        frame = frame.with_columns(duplicate=dup_prev | pl.col("dup_batch"))
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
            late=(pl.col("max_before") - self.ooo_us) >= (pl.col("day_end_us") + self.lateness_us)
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

        # -- remember ids of valid records (a re-used id outside the horizon replaces the old one);
        #    evict those past the horizon
        fresh = valid.select("event_id", pl.col("t_us").alias("seen_t_us")).unique(
            "event_id", keep="last", maintain_order=True
        )
        reused = valid.filter(pl.col("seen_t_us").is_not_null())["event_id"]
        keep_after = (self.max_event_us or 0) - self.horizon_us - self.lateness_us - US_PER_DAY
        seen = self.seen
        if len(reused):
            seen = seen.filter(~pl.col("event_id").is_in(reused.implode()))
        self.seen = pl.concat([seen, fresh]).filter(pl.col("seen_t_us") >= keep_after)
        return Admitted(accepted, late, duplicates, self.watermark_us)

    def snapshot(self) -> dict[str, object]:
        return {"max_event_us": self.max_event_us, "seen": self.seen.to_arrow()}

    def restore(self, snap: dict[str, object]) -> None:
        self.max_event_us = snap["max_event_us"]  # type: ignore[assignment]
        self.seen = pl.from_arrow(snap["seen"])  # type: ignore[assignment,arg-type]
