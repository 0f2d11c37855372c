"""The learnstream dataflow: wiring only; the analytics live in `operators/`.

```
source ──(partition, RawBatch)──> ingest ──(shard, ShardInput)──> users ──(all, CohortInput)──> cohorts
 files|kafka                      decode, dedup,                  per-shard UserAnalytics         CohortAggregator
                                  watermark, late                 (days, streaks, alerts, state)
        every stage also emits ("table", name, frame) -> TablesSink (Parquet + DuckDB, one writer)
                               ("topic", name, messages) -> Kafka topics (live mode)
                               ("count", "run", counters) -> run accounting -> pipeline_runs
```

The watermark travels with the data: `ingest` sends every shard a sub-batch (possibly empty) with
the watermark after each micro-batch, so every shard closes days at the same watermark whatever the
number of workers, and `cohorts` finalises a date only once every shard has passed it.

Several source partitions (Kafka): each partition has its own watermark (its newest accepted
event time minus `max_out_of_orderness`, or, in live mode after `idle_timeout` without records,
wall-clock time minus it). A shard's watermark is the *minimum* over all source partitions, as in
Flink and Kafka Streams: a partition that lags behind (or has not been read yet) holds days open,
so that reading partitions at different speeds does not turn its events into late ones. An idle
partition stops holding them back after `idle_timeout` (SPEC §4), which is why every partition is
announced at start (`LiveSource`): an empty one still gets an ingest state and an idle timer.
A finite input (files, or Kafka with stop-at-end) is final once every partition has ended; the
final watermark is then the newest event time of all.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import structlog
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic, StatefulLogic
from bytewax.outputs import Sink

from learnstream.config import Settings
from operators.cohorts import CohortAggregator
from operators.decode import DecodeResult, RawBatch, decode_batch
from operators.ingest import Admission, EventIds
from operators.pseudonymize import Pseudonymizer
from operators.users import UserAnalytics, UserOutput
from schemas.events import EVENT_BATCH_SCHEMA, REJECTED_BATCH_SCHEMA
from schemas.tables import ALERTS, LATE_EVENTS, PIPELINE_RUNS, REJECTED_EVENTS
from sinks.bytewax_tables import TablesSink

log = structlog.get_logger("learnstream.flow")

Envelope = tuple[str, str, Any]  # (kind, route key, payload)
US_PER_HOUR = 3_600_000_000
EMPTY_EVENTS = pl.DataFrame(schema=EVENT_BATCH_SCHEMA)


def now_us() -> int:
    return time.time_ns() // 1000


def _us(delta: timedelta) -> int:
    return int(delta / timedelta(microseconds=1))


@dataclass
class ShardInput:
    """Accepted events of one shard from one micro-batch, and the watermark after it."""

    events: pl.DataFrame
    watermark_us: int | None
    final: bool
    source: str
    received_at_us: int


@dataclass
class PartitionEnd(RawBatch):
    """Marker from `LiveSource`: partition `ref_prefix` has no more records (finite input)."""


@dataclass
class DecodedBatch(RawBatch):
    """A batch the source already decoded (`decoded`, with `seq` counted from 0 in the batch):
    the file source decodes one batch ahead on its own thread (`decode_ahead`)."""

    decoded: DecodeResult | None = None


def decode_ahead(cfg: FlowConfig) -> Callable[[RawBatch], RawBatch]:
    """The file source's `prepare`: decode a batch as soon as it is read. A batch whose decoding
    raises is passed on raw, and `ingest` decodes it with its line-by-line safety net."""
    pseudonymizer = Pseudonymizer(cfg.secret)

    def prepare(batch: RawBatch) -> RawBatch:
        try:
            decoded = decode_batch(batch, cfg.settings, pseudonymizer, now_us=now_us(), seq_start=0)
        except Exception:  # noqa: BLE001 - ingest handles it (and logs it)
            return batch
        return DecodedBatch(batch.lines, batch.ref_prefix, batch.positions, batch.received_at_us, decoded)

    return prepare


@dataclass
class CohortInput:
    user_daily: pl.DataFrame
    alerts: pl.DataFrame
    shard: str
    watermark_us: int | None
    final: bool


@dataclass
class Publish:
    """Kafka topics to publish to (live mode); None of these in a file run."""

    alerts: str
    metrics: str
    dlq: str


@dataclass
class FlowConfig:
    settings: Settings
    out_dir: Path
    run_id: str
    secret: bytes
    publish: Publish | None = None
    started_at_us: int = field(default_factory=now_us)
    #: live mode: advance the watermark to wall-clock time after `idle_timeout` without events
    live: bool = False
    #: keys (as `partition_of` names them) of every source partition; shards hold their
    #: watermark until each of these has one. Empty: only the partitions seen so far count.
    sources: tuple[str, ...] = ()
    #: live mode: a shard evaluates `user_state` of its changed users at most this often (and
    #: when it stops), so a busy shard does not re-evaluate (and publish) every user it touched
    #: at every micro-batch. Changes within the interval are published as one message per user.
    state_interval: timedelta = timedelta(seconds=2)
    #: a recovery store is configured: the tables sink makes its output durable before every
    #: Bytewax snapshot. Without one, snapshots are never read and the sink need not wait.
    recovery: bool = True


def shard_of(user_keys: pl.Expr, shards: int) -> pl.Expr:
    """Stable shard of a user: the first 8 hex digits of user_key modulo the shard count."""
    return user_keys.str.slice(0, 8).str.to_integer(base=16) % shards


def _late_rows(late: pl.DataFrame, received_at_us: int, emitted_at_us: int) -> pl.DataFrame:
    """`late_events` rows; `received_at` from the rows' `received_at_us` column when they have
    one (events that went through `ingest`), else `received_at_us`."""
    received = pl.col("received_at_us") if "received_at_us" in late.columns else pl.lit(received_at_us)
    return LATE_EVENTS.conform(
        late.with_columns(
            received_at=received.cast(pl.Datetime("us", "UTC")),
            event_time=pl.col("t_us").cast(pl.Datetime("us", "UTC")),
            emitted_at=pl.lit(emitted_at_us).cast(pl.Datetime("us", "UTC")),
        )
    )


def _undecodable(line: bytes, prefix: str, position: int, seq: int, exc: Exception) -> pl.DataFrame:
    try:
        payload = line.decode("utf-8")
    except UnicodeDecodeError:
        payload = base64.b64encode(line).decode("ascii")
    return pl.DataFrame(
        {
            "seq": [seq],
            "source_ref": [f"{prefix}{position}"],
            "reason": ["malformed_json"],
            "detail": [f"could not be decoded ({type(exc).__name__}: {str(exc)[:80]})"],
            "payload": [payload],
        },
        schema=REJECTED_BATCH_SCHEMA,
    )


class IngestLogic(StatefulLogic[RawBatch, Envelope, dict[str, Any]]):
    """Decode, de-duplicate, watermark and lateness for one source partition."""

    def __init__(self, cfg: FlowConfig, resume: dict[str, Any] | None) -> None:
        self.cfg = cfg
        self.settings = cfg.settings
        self.pseudonymizer = Pseudonymizer(cfg.secret)
        # a finite input remembers every event_id: duplicates do not depend on batch boundaries
        self.admission = Admission(cfg.settings, forget_ids=cfg.live)
        self.seq = 0
        self.last_item_wall_us = now_us()
        self.idle_us = _us(cfg.settings.idle_timeout)
        self.ooo_us = _us(cfg.settings.max_out_of_orderness)
        self.idle_watermark_us: int | None = None
        #: this partition's finite input has ended (its final sub-batches are sent)
        self.ended = False
        if resume is not None:
            self.seq = resume["seq"]
            self.admission.restore(resume["admission"])
            self.idle_watermark_us = resume.get("idle_watermark_us")
            self.ended = resume.get("ended", False)

    def _watermark(self) -> int | None:
        marks = [m for m in (self.admission.watermark_us, self.idle_watermark_us) if m is not None]
        return max(marks) if marks else None

    def on_item(self, value: RawBatch) -> tuple[Iterable[Envelope], bool]:
        emitted = now_us()
        self.last_item_wall_us = emitted
        if isinstance(value, PartitionEnd):
            # this partition is done: it stops holding back the other partitions' watermark
            self.ended = True
            return self._to_shards(EMPTY_EVENTS, final=True, received_at_us=emitted), StatefulLogic.RETAIN
        if not value.lines:
            # the announcement of a partition: it now has state and an idle timer, and the run
            # accounting exists even when the input holds no record at all
            return [("count", "run", {"records_in": 0})], StatefulLogic.RETAIN
        decoded = self._decode(value, emitted)
        self.seq += len(value.lines)
        admitted = self.admission.admit(decoded.events)
        out: list[Envelope] = []
        accepted = admitted.accepted.with_columns(received_at_us=pl.lit(value.received_at_us, pl.Int64))
        out.extend(self._to_shards(accepted, final=False, received_at_us=value.received_at_us))
        if len(decoded.rejected):
            rows = REJECTED_EVENTS.conform(
                decoded.rejected.with_columns(
                    received_at=pl.lit(value.received_at_us).cast(pl.Datetime("us", "UTC")),
                    emitted_at=pl.lit(emitted).cast(pl.Datetime("us", "UTC")),
                ).with_columns(date=pl.col("received_at").dt.date())
            )
            out.append(("table", REJECTED_EVENTS.name, rows))
            if self.cfg.publish is not None:
                from schemas.messages import dead_letter_messages

                out.append(("topic", self.cfg.publish.dlq, dead_letter_messages(rows)))
        if len(admitted.late):
            out.append(("table", LATE_EVENTS.name, _late_rows(admitted.late, value.received_at_us, emitted)))
        out.append(
            (
                "count",
                "run",
                {
                    "records_in": len(value.lines),
                    "rejected": len(decoded.rejected),
                    "duplicates": admitted.duplicates,
                    "late": len(admitted.late),
                },
            )
        )
        return out, StatefulLogic.RETAIN

    def _decode(self, value: RawBatch, emitted: int) -> DecodeResult:
        """Decode a batch; bad input must never stop the flow, not even through a decoder bug.

        Should the batch decoder raise, the batch is decoded line by line and a line that still
        raises becomes a dead letter (`malformed_json`, the error in its detail) — logged loudly.
        A batch the source decoded ahead only gets its `seq` numbers.
        """
        if isinstance(value, DecodedBatch) and value.decoded is not None:
            seq = pl.col("seq") + self.seq
            return DecodeResult(
                value.decoded.events.with_columns(seq), value.decoded.rejected.with_columns(seq)
            )
        try:
            return decode_batch(
                value, self.settings, self.pseudonymizer, now_us=emitted, seq_start=self.seq
            )
        except Exception:  # noqa: BLE001 - the safety net for the never-stop promise
            log.exception("decode_batch failed; decoding this batch line by line")
        events, rejected = [], []
        for i, line in enumerate(value.lines):
            one = RawBatch([line], value.ref_prefix, value.positions[i : i + 1], value.received_at_us)
            try:
                result = decode_batch(
                    one, self.settings, self.pseudonymizer, now_us=emitted, seq_start=self.seq + i
                )
                events.append(result.events)
                rejected.append(result.rejected)
            except Exception as exc:  # noqa: BLE001
                log.exception("a record could not be decoded", source_ref=f"{value.ref_prefix}{value.positions[i]}")
                rejected.append(_undecodable(line, value.ref_prefix, int(value.positions[i]), self.seq + i, exc))
        return DecodeResult(
            pl.concat(events) if events else pl.DataFrame(schema=EVENT_BATCH_SCHEMA),
            pl.concat(rejected) if rejected else pl.DataFrame(schema=REJECTED_BATCH_SCHEMA),
        )

    def _to_shards(
        self, events: pl.DataFrame, *, final: bool, received_at_us: int
    ) -> list[Envelope]:
        shards = self.settings.shards
        watermark = self.admission.max_event_us if final else self._watermark()
        parts: dict[int, pl.DataFrame] = {}
        if len(events):
            keyed = events.with_columns(_shard=shard_of(pl.col("user_key"), shards))
            for (shard,), part in keyed.partition_by("_shard", as_dict=True).items():
                parts[int(shard)] = part.drop("_shard")  # type: ignore[arg-type]
        return [
            (
                "shard",
                str(k),
                ShardInput(parts.get(k, EMPTY_EVENTS), watermark, final, "", received_at_us),
            )
            for k in range(shards)
        ]

    def notify_at(self) -> datetime | None:
        """Live mode: wake `idle_timeout` after the last record (or the last idle advance)."""
        if not self.cfg.live:
            return None
        return datetime.fromtimestamp((self.last_item_wall_us + self.idle_us) / 1e6, tz=UTC)

    def on_notify(self) -> tuple[Iterable[Envelope], bool]:
        """Idle for `idle_timeout`: the watermark moves to wall-clock time minus out-of-orderness.

        Never backwards; repeated every `idle_timeout` while the partition stays idle, so days
        keep closing at local midnight (plus `allowed_lateness`). Sharp edge: replaying old
        event time in live mode (a backlog from March read in November) closes every day up to
        now as soon as a partition idles; events for those days that come later are late.
        """
        wall = now_us()
        self.last_item_wall_us = wall
        candidate = wall - self.ooo_us
        current = self._watermark()
        if current is not None and candidate <= current:
            return [], StatefulLogic.RETAIN
        self.idle_watermark_us = candidate
        return self._to_shards(EMPTY_EVENTS, final=False, received_at_us=wall), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Envelope], bool]:
        """End of a finite input: close every day. Not in live mode, not when the run was asked
        to stop (the input did not end), and not twice (a `PartitionEnd` already did)."""
        if self.cfg.live or self.ended or stop_requested():
            return [], StatefulLogic.RETAIN
        self.ended = True
        return self._to_shards(EMPTY_EVENTS, final=True, received_at_us=now_us()), StatefulLogic.RETAIN

    def snapshot(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "admission": self.admission.snapshot(),
            "idle_watermark_us": self.idle_watermark_us,
            "ended": self.ended,
        }


class UserLogic(StatefulBatchLogic[ShardInput, Envelope, dict[str, Any]]):
    """One shard's users: UserAnalytics fed with micro-batches and watermarks."""

    def __init__(self, shard: str, cfg: FlowConfig, resume: dict[str, Any] | None) -> None:
        self.shard = shard
        self.cfg = cfg
        self.users = (
            UserAnalytics.restore(resume["users"]) if resume is not None else UserAnalytics(cfg.settings)
        )
        #: several source partitions (Kafka): each partition's admission de-duplicates only its
        #: own records, so a record re-sent through another partition (under another key) is
        #: caught here, where all of a user's events meet (SPEC §2 knows no partitions)
        self.event_ids: EventIds | None = None
        if len(cfg.sources) > 1:
            self.event_ids = EventIds.of(cfg.settings, forget=cfg.live)
            if resume is not None and "event_ids" in resume:
                self.event_ids.restore(resume["event_ids"])
        #: per source partition: its watermark (None until it has one)
        self.watermarks: dict[str, int | None] = dict.fromkeys(cfg.sources)
        #: source partitions whose finite input has ended
        self.finals: set[str] = set()
        #: live mode: when user_state may next be evaluated; whether changes await it. The
        #: first time is random within one interval, so that the shards of a worker take turns
        #: (an evaluation costs one shard's users; all at once would stall the worker).
        self.interval_us = _us(cfg.state_interval)
        self.next_eval_us = now_us() + int.from_bytes(os.urandom(4), "big") % max(1, self.interval_us)
        self.pending = False
        if resume is not None:
            self.watermarks.update(resume["watermarks"])
            self.finals = set(resume.get("finals", ()))
            self.pending = bool(resume.get("pending", False))

    def _watermark(self) -> tuple[int | None, bool]:
        """(watermark, final): the minimum over the source partitions that have not ended (None
        while one of them has no watermark yet); once every partition has ended, the newest
        event time of all, final."""
        marks = self.watermarks
        if marks and len(self.finals) == len(marks):
            ends = [m for m in marks.values() if m is not None]
            return (max(ends) if ends else None), True
        running = [m for source, m in marks.items() if source not in self.finals]
        if not running or any(m is None for m in running):
            return None, False
        return min(m for m in running if m is not None), False

    def on_batch(self, values: list[ShardInput]) -> tuple[Iterable[Envelope], bool]:
        """The sub-batches Bytewax has for this shard, merged where they come from different
        source partitions: one ingest and one step per merged group instead of one per
        sub-batch, which halves the fixed cost per cycle of a worker reading two partitions.

        A user's events all come from one source partition, so merging keeps every user's
        arrival order, and a partition's events cannot fall on a day that the other's watermark
        alone would close first (they would have been late at admission). Two sub-batches of
        the *same* partition are never merged: a finite input is then cut exactly as read, so
        its results (float sums included) do not depend on how Bytewax groups items."""
        out: list[Envelope] = []
        group: list[ShardInput] = []
        for value in values:
            if any(v.source == value.source for v in group):
                out.extend(self._ingest(group))
                group = []
            group.append(value)
        if group:
            out.extend(self._ingest(group))
        return out, StatefulBatchLogic.RETAIN

    def _ingest(self, group: list[ShardInput]) -> list[Envelope]:
        emitted = now_us()
        frames = [v.events for v in group if len(v.events)]
        events = frames[0] if len(frames) == 1 else (pl.concat(frames) if frames else EMPTY_EVENTS)
        duplicates = 0
        if self.event_ids is not None and len(events):
            events, duplicates = self._drop_duplicates(events)
        got = self.users.ingest(events, emitted_at_us=emitted)
        for value in group:
            previous = self.watermarks.get(value.source)
            if value.watermark_us is None:
                self.watermarks.setdefault(value.source, None)
            else:
                self.watermarks[value.source] = (
                    value.watermark_us if previous is None else max(previous, value.watermark_us)
                )
            if value.final:
                self.finals.add(value.source)
        received_at_us = min(v.received_at_us for v in group)
        out = self._step(got, emitted, received_at_us, force=False)
        if duplicates:
            out.append(("count", "run", {"duplicates": duplicates}))
        return out

    def _drop_duplicates(self, events: pl.DataFrame) -> tuple[pl.DataFrame, int]:
        """Events (in `seq` order) without those whose `event_id` this shard already accepted
        within `dedup_horizon` (through another source partition); and how many were dropped."""
        assert self.event_ids is not None
        marked = self.event_ids.mark(events.sort("seq"))
        valid = marked.filter(~pl.col("duplicate"))
        self.event_ids.remember(valid)
        return valid.drop("duplicate", "_row"), len(marked) - len(valid)

    def on_item(self, value: ShardInput) -> tuple[Iterable[Envelope], bool]:
        """One sub-batch (`on_batch` of one)."""
        return self.on_batch([value])

    def notify_at(self) -> datetime | None:
        """Live mode with changes awaiting evaluation: wake when the state interval is over."""
        if not (self.cfg.live and self.pending):
            return None
        return datetime.fromtimestamp(self.next_eval_us / 1e6, tz=UTC)

    def on_notify(self) -> tuple[Iterable[Envelope], bool]:
        """The state interval is over: evaluate the changes awaiting it. Bytewax may deliver a
        notification scheduled before an item that already evaluated (a stale one): ignored,
        else every shard evaluated twice per interval."""
        emitted = now_us()
        if not (self.pending and emitted >= self.next_eval_us):
            return [], StatefulBatchLogic.RETAIN
        return self._step(UserOutput(), emitted, emitted, force=True), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Envelope], bool]:
        """A live run that stops publishes the state changes still awaiting evaluation."""
        if not (self.cfg.live and self.pending):
            return [], StatefulBatchLogic.RETAIN
        emitted = now_us()
        return self._step(UserOutput(), emitted, emitted, force=True), StatefulBatchLogic.RETAIN

    def _step(self, got: UserOutput, emitted: int, received_at_us: int, *, force: bool) -> list[Envelope]:
        """Close the days the watermark passed; evaluate state (live: at most every
        `state_interval`, or when forced); build every output of this shard."""
        out: list[Envelope] = []
        watermark, final = self._watermark()
        # a finite run only needs the final user_state; live runs publish every change
        evaluate = self.cfg.live and (force or emitted >= self.next_eval_us)
        closed = self.users.advance(
            watermark, final=final, emitted_at_us=emitted, evaluate=evaluate
        )
        if evaluate:
            self.next_eval_us = emitted + self.interval_us
        self.pending = self.cfg.live and not (evaluate or final)
        # `got` holds closed days too when a user returned after `state_ttl` within the batch
        # (the days were advanced to that event's watermark first)
        alerts = pl.concat([got.alerts, closed.alerts])
        user_daily = pl.concat([got.user_daily, closed.user_daily])
        late = got.late
        tables = {
            "user_daily": user_daily,
            "user_skill_daily": pl.concat([got.user_skill_daily, closed.user_skill_daily]),
            "user_state": pl.concat([got.user_state, closed.user_state]),
            "user_skill_state": pl.concat([got.user_skill_state, closed.user_skill_state]),
            "alerts": alerts,
        }
        for name, frame in tables.items():
            if len(frame):
                out.append(("table", name, frame))
        if len(late):
            out.append(("table", LATE_EVENTS.name, _late_rows(late, received_at_us, emitted)))
        publish = self.cfg.publish
        if publish is not None:
            from schemas.messages import alert_messages, metric_messages

            if len(alerts):
                out.append(("topic", publish.alerts, alert_messages(alerts)))
            if len(user_daily):
                out.append(("topic", publish.metrics, metric_messages("user_day", user_daily)))
            if len(tables["user_state"]):
                out.append(("topic", publish.metrics, metric_messages("user_state", tables["user_state"])))
        out.append(
            (
                "cohort",
                "all",
                CohortInput(user_daily, alerts, self.shard, watermark, final),
            )
        )
        out.append(
            ("count", "run", {"accepted": got.accepted, "late": len(late), "alerts": len(alerts), "watermark": watermark})
        )
        return out

    def snapshot(self) -> dict[str, Any]:
        ids = {} if self.event_ids is None else {"event_ids": self.event_ids.snapshot()}
        return {
            **ids,
            "users": self.users.snapshot(),
            "watermarks": dict(self.watermarks),
            "finals": sorted(self.finals),
            "pending": self.pending,
        }


class CohortLogic(StatefulLogic[CohortInput, Envelope, dict[str, Any]]):
    """All cohorts and organisations; a date is final once every shard's watermark passed it."""

    def __init__(self, cfg: FlowConfig, resume: dict[str, Any] | None) -> None:
        self.cfg = cfg
        self.lateness_us = _us(cfg.settings.allowed_lateness)
        if resume is not None:
            self.agg = CohortAggregator.restore(resume["agg"])
            self.shard_marks: dict[str, int] = resume["shard_marks"]
            self.finals: set[str] = set(resume["finals"])
            self.max_date: date | None = resume["max_date"]
        else:
            self.agg = CohortAggregator()
            self.shard_marks = {}
            self.finals = set()
            self.max_date = None

    def on_item(self, value: CohortInput) -> tuple[Iterable[Envelope], bool]:
        self.agg.add(value.user_daily, value.alerts)
        if len(value.user_daily):
            top = value.user_daily["date"].max()
            if isinstance(top, date) and (self.max_date is None or top > self.max_date):
                self.max_date = top
        if value.watermark_us is not None:
            self.shard_marks[value.shard] = value.watermark_us
        if value.final:
            self.finals.add(value.shard)
        shards = self.cfg.settings.shards
        if len(self.finals) == shards:
            through = self.max_date
        elif len(self.shard_marks) == shards:
            # a date is closed in every zone (UTC-12 is the last) once the slowest shard's
            # watermark is past its end there plus the allowed lateness
            slowest = min(self.shard_marks.values()) - self.lateness_us - 12 * US_PER_HOUR
            through = datetime.fromtimestamp(slowest / 1e6, tz=UTC).date() - timedelta(days=1)
        else:
            through = None
        if through is None:
            return [], StatefulLogic.RETAIN
        emitted = now_us()
        result = self.agg.close_through(through, emitted_at_us=emitted)
        out: list[Envelope] = []
        if len(result.cohort_daily):
            out.append(("table", "cohort_daily", result.cohort_daily))
        if len(result.org_daily):
            out.append(("table", "org_daily", result.org_daily))
        if len(result.cohort_alerts):
            from operators.alerts import build_alerts

            alerts = build_alerts(result.cohort_alerts, emitted_at_us=emitted)
            out.append(("table", ALERTS.name, alerts))
            out.append(("count", "run", {"alerts": len(alerts)}))
            if self.cfg.publish is not None:
                from schemas.messages import alert_messages

                out.append(("topic", self.cfg.publish.alerts, alert_messages(alerts)))
        return out, StatefulLogic.RETAIN

    def snapshot(self) -> dict[str, Any]:
        return {
            "agg": self.agg.snapshot(),
            "shard_marks": dict(self.shard_marks),
            "finals": sorted(self.finals),
            "max_date": self.max_date,
        }


class RunLogic(StatefulLogic[dict[str, Any], Envelope, dict[str, Any]]):
    """Counts every record's fate; writes the `pipeline_runs` row (SPEC §2 accounting)."""

    FIELDS = ("records_in", "accepted", "rejected", "duplicates", "late", "alerts")

    def __init__(self, cfg: FlowConfig, resume: dict[str, Any] | None) -> None:
        self.cfg = cfg
        self.counts: dict[str, int] = dict.fromkeys(self.FIELDS, 0)
        self.watermark_us: int | None = None
        self.last_row_us = 0
        if resume is not None:
            self.counts.update(resume["counts"])
            self.watermark_us = resume["watermark_us"]

    def on_item(self, value: dict[str, Any]) -> tuple[Iterable[Envelope], bool]:
        for name in self.FIELDS:
            self.counts[name] += int(value.get(name, 0) or 0)
        mark = value.get("watermark")
        if mark is not None:
            self.watermark_us = mark if self.watermark_us is None else max(self.watermark_us, mark)
        if self.cfg.live and now_us() - self.last_row_us > 5_000_000:
            return [self.row()], StatefulLogic.RETAIN
        return [], StatefulLogic.RETAIN

    def row(self) -> Envelope:
        self.last_row_us = ended = now_us()
        frame = pl.DataFrame(
            {
                "run_id": [self.cfg.run_id],
                "started_at": [self.cfg.started_at_us],
                "ended_at": [ended],
                **{k: [v] for k, v in self.counts.items()},
                "watermark": [self.watermark_us],
                "emitted_at": [ended],
            },
            schema_overrides={"watermark": pl.Int64},
        ).with_columns(
            pl.col("started_at", "ended_at", "watermark", "emitted_at").cast(pl.Datetime("us", "UTC"))
        ).with_columns(date=pl.col("started_at").dt.date())
        return ("table", PIPELINE_RUNS.name, PIPELINE_RUNS.conform(frame))

    def on_eof(self) -> tuple[Iterable[Envelope], bool]:
        return [self.row()], StatefulLogic.RETAIN

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "watermark_us": self.watermark_us}


_STOP = threading.Event()


def request_stop() -> None:
    """Ask every `LiveSource` in this process to end its partitions (e.g. from a signal handler).

    The flow then finishes the way a finite input does, minus closing the open days: operators
    flush, the run row is written, Kafka messages are flushed (checked) and the tables committed.
    Safe to call from a signal handler (it only sets a flag; sources poll it at least every
    `idle_backoff_s`).
    """
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def reset_stop() -> None:
    """Clear a previous `request_stop()` (before starting another run in the same process)."""
    _STOP.clear()


class _LivePartition(StatefulSourcePartition[RawBatch, Any]):
    def __init__(self, inner: StatefulSourcePartition[RawBatch, Any], key: str) -> None:
        self._inner = inner
        self._key = key
        self._announced = False
        self._ended = False

    def _marker(self, kind: type[RawBatch]) -> list[RawBatch]:
        empty = np.zeros(0, dtype=np.int64)
        return [kind(lines=[], ref_prefix=self._key, positions=empty, received_at_us=now_us())]

    def next_batch(self) -> Iterable[RawBatch]:
        if _STOP.is_set() or self._ended:
            raise StopIteration()
        if not self._announced:
            self._announced = True
            return self._marker(RawBatch)
        try:
            return self._inner.next_batch()
        except StopIteration:
            self._ended = True
            return self._marker(PartitionEnd)

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake() if self._announced and not self._ended else None

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class LiveSource(FixedPartitionedSource[RawBatch, Any]):
    """Wraps a partitioned source of `RawBatch`es for live runs.

    - Every partition first yields an empty batch whose `ref_prefix` is `key_of(partition)` (this
      must be the key `partition_of` gives the partition's batches): a partition that has no
      records yet still gets ingest state, an idle timer and a place in the watermark.
    - When an inner partition ends (a finite input, e.g. Kafka with stop-at-end), it yields a
      `PartitionEnd` first: that partition no longer holds back the watermark of the others (an
      empty or short partition does not keep days open until the whole input ends); once every
      partition has ended, all days close.
    - After `request_stop()` every partition ends (StopIteration) on its next poll, so the
      dataflow completes normally and every sink is flushed and closed. Snapshot state is the
      inner partition's, so a resumed run continues where the stopped one ended.
    """

    def __init__(self, inner: FixedPartitionedSource[RawBatch, Any], key_of: Callable[[str], str]) -> None:
        self.inner = inner
        self.key_of = key_of

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any | None) -> _LivePartition:
        return _LivePartition(self.inner.build_part(step_id, for_part, resume_state), self.key_of(for_part))


def _kind(stream: op.Stream[Envelope], kind: str) -> op.KeyedStream[Any]:
    step = f"{kind}_items"
    picked = op.filter(step, stream, lambda e: e[0] == kind)
    return op.map(f"{kind}_key", picked, lambda e: (e[1], e[2]))


def build_flow(
    source: Source[RawBatch],
    cfg: FlowConfig,
    *,
    partition_of: Callable[[RawBatch], str] = lambda batch: "files",
    topics_sink: Sink[Any] | None = None,
    partition_key: Callable[[str], str] | None = None,
) -> Dataflow:
    """The whole pipeline as a Bytewax Dataflow from a source of `RawBatch`es.

    `partition_of` names the source partition of a batch: dedup and the watermark are kept per
    source partition (one for all files of a run; one per Kafka partition).

    `partition_key` (partitioned sources, e.g. Kafka) maps a name from `source.list_parts()` to
    the key `partition_of` gives that partition's batches. With it, the source is wrapped in a
    `LiveSource` (partitions announced at start, stop on `request_stop()`) and `cfg.sources`
    is set to every partition's key, so shards wait for all of them (calls `list_parts()` once).
    """
    if partition_key is not None:
        if not isinstance(source, FixedPartitionedSource):
            raise TypeError(f"partition_key needs a FixedPartitionedSource, got {type(source).__name__}")
        cfg.sources = tuple(partition_key(part) for part in source.list_parts())
        source = LiveSource(source, partition_key)
    flow = Dataflow("learnstream")
    raw = op.key_on("partition", op.input("read", flow, source), partition_of)
    ingested = op.stateful("ingest", raw, lambda resume: IngestLogic(cfg, resume))
    ingest_out = op.key_rm("ingest_out", op.map("ingest_tag", ingested, _tag_source))

    users = op.stateful_batch(
        "users",
        _kind(ingest_out, "shard"),
        lambda resume: UserLogic("?", cfg, resume),
    )
    users_out = op.key_rm("users_out", op.map("users_tag", users, _tag_shard))

    cohorts = op.stateful(
        "cohorts", _kind(users_out, "cohort"), lambda resume: CohortLogic(cfg, resume)
    )
    cohorts_out = op.key_rm("cohorts_out", cohorts)

    everything = op.merge("all_out", ingest_out, users_out, cohorts_out)
    runs = op.stateful("runs", _kind(everything, "count"), lambda resume: RunLogic(cfg, resume))
    final = op.merge("with_runs", everything, op.key_rm("runs_out", runs))

    tables = _kind(final, "table")
    op.output(
        "tables",
        tables,
        TablesSink(
            cfg.out_dir,
            commit_interval=cfg.settings.commit_interval,
            drain_on_snapshot=cfg.recovery,
            # a finite run has cores to spare at its end; a live worker needs them for latency
            concurrent_duckdb=not cfg.live,
        ),
    )
    if topics_sink is not None:
        op.output("topics", _kind(final, "topic"), topics_sink)
    return flow


def _tag_source(item: tuple[str, Envelope]) -> tuple[str, Envelope]:
    """Stamp shard inputs with the source partition they came from (the ingest key)."""
    partition, envelope = item
    if isinstance(envelope[2], ShardInput):
        envelope[2].source = partition
    return partition, envelope


def _tag_shard(item: tuple[str, Envelope]) -> tuple[str, Envelope]:
    shard, envelope = item
    kind, key, payload = envelope
    if isinstance(payload, CohortInput):
        payload.shard = shard
    return shard, (kind, key, payload)
