"""Kafka input: raw message batches from one topic, one Bytewax partition per Kafka partition.

`KafkaBatchSource` is a `FixedPartitionedSource` modelled on Bytewax's own `KafkaSource`
(`bytewax/connectors/kafka/__init__.py`): partitions are assigned manually (`Consumer.assign`, no
consumer group, no offset commits) and each partition's next offset is its snapshot state, kept
in Bytewax's recovery store. A resumed run continues exactly after the last snapshotted batch;
with Bytewax recovery being at-least-once, batches emitted after that snapshot are read again.

Differences from Bytewax's source, and why:

- It yields `RawBatch` items (the message values of one `consume()` call as `list[bytes]` plus
  their offsets as an int64 array), not one Python object per message, so that decoding
  downstream is columnar. The loop over messages here is the one unavoidable per-message step of
  confluent-kafka; it only copies the value and the offset.
- A message whose value is None (a tombstone) is a record like any other, with an empty value:
  it is counted (`records_in`, and `stats.null_values`) and becomes a `malformed_json` dead letter,
  so that nothing read is silently lost (SPEC §2).
- Consumer errors are counted and logged; only fatal or authorisation/authentication errors stop
  the flow (transport errors while a broker restarts are retried by librdkafka).
- When nothing arrived, `next_awake` puts the partition to sleep (2 ms for ten polls, then
  doubling up to `idle_backoff_s`) instead of polling in a busy loop.
- End of topic is the fetch end-of-partition event (`enable.partition.eof`), never
  `get_watermark_offsets`: Tansu answers ListOffsets with the last batch's base offset + 1.

Sharp edges:

- Bytewax 0.21.1 stalls a worker when Kafka partitions are spread unevenly over several workers
  (bytewax PR #556, open, not in 0.21.1: the worker with fewer partitions spends its time waiting
  for the other and lag grows). Use a partition count that is a multiple of the worker count.
- An offset that is no longer on the broker (retention, or a re-created topic) is reset by
  `auto.offset.reset`, `earliest` by default here: the gap is read from the oldest message kept.
- `stats` counts what partitions built in *this process* read; each process of a multi-process
  run has its own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import structlog
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from operators.decode import RawBatch

__all__ = ["KafkaBatchSource", "KafkaSourceStats", "RawBatch"]

_log = structlog.get_logger(__name__)


# Errors that retrying cannot fix: stop the flow with a message that names them.
_FATAL_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError._INVALID_ARG,
    }
)


@dataclass
class KafkaSourceStats:
    """What the partitions built in this process read (for the run summary)."""

    messages: int = 0
    """Messages emitted in batches (null values included, as empty records)."""
    null_values: int = 0
    """Messages whose value was None (emitted as empty records: dead letters downstream)."""
    errors: int = 0
    """Consumer error events (not counting end-of-partition)."""
    batches: int = 0
    last_errors: list[str] = field(default_factory=list)

    def _error(self, text: str) -> None:
        self.errors += 1
        self.last_errors.append(text)
        del self.last_errors[:-10]


class _KafkaBatchPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        *,
        batch_size: int,
        poll_timeout_s: float,
        idle_backoff_s: float,
        stop_at_end: bool,
        stats: KafkaSourceStats,
    ) -> None:
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._ref_prefix = f"kafka:{topic}/{partition}/"
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._idle_backoff_s = idle_backoff_s
        self._empty_polls = 0
        self._stop_at_end = stop_at_end
        self._at_end = False
        self._awake: datetime | None = None
        self._stats = stats

    def next_batch(self) -> list[RawBatch]:
        if self._at_end:
            raise StopIteration()
        msgs = self._consumer.consume(self._batch_size, self._poll_timeout_s)
        received_at_us = time.time_ns() // 1000
        if not msgs:
            # Poll every 2 ms for the first 10 empty polls (a fetch in flight takes up to
            # fetch.wait.max.ms), then back off 4, 8, 16... ms up to idle_backoff_s when the
            # partition is really idle. No busy loop.
            self._empty_polls += 1
            pause = min(self._idle_backoff_s, 0.002 * 2 ** max(0, min(self._empty_polls - 10, 20)))
            self._awake = datetime.now(UTC) + timedelta(seconds=pause)
            return []
        self._empty_polls = 0
        self._awake = None
        lines: list[bytes] = []
        offsets: list[int] = []
        nulls = 0
        last = -1
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if self._stop_at_end:
                        # Emit what came before the end; StopIteration on the next call.
                        self._at_end = True
                        break
                    continue
                self._on_error(err)
                continue
            offset = msg.offset()
            if offset is None:  # only error events lack one
                continue
            last = offset
            value = msg.value()
            if value is None:
                nulls += 1
                value = b""  # not JSON: a dead letter (malformed_json), counted in records_in
            lines.append(value)
            offsets.append(last)
        if last >= 0:
            self._offset = last + 1
        self._stats.null_values += nulls
        if not lines:
            return []
        self._stats.messages += len(lines)
        self._stats.batches += 1
        return [
            RawBatch(
                lines=lines,
                ref_prefix=self._ref_prefix,
                positions=np.asarray(offsets, dtype=np.int64),
                received_at_us=received_at_us,
            )
        ]

    def _on_error(self, err: KafkaError) -> None:
        text = f"kafka:{self._topic}/{self._partition}: {err.str()} ({err.name()})"
        self._stats._error(text)
        if err.fatal() or err.code() in _FATAL_CODES:
            raise RuntimeError(f"cannot consume {text}; check the topic and the Kafka settings")
        _log.warning("kafka_consume_error", error=text, retriable=err.retriable())

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[RawBatch, int]):
    """Read one topic as `RawBatch`es; each Kafka partition is one Bytewax partition.

    :arg bootstrap: `HOST:PORT[,HOST:PORT...]`.
    :arg topic: the topic to read; it must exist (`list_parts` raises naming it otherwise).
    :arg config: librdkafka consumer settings passed through (TLS, SASL, `isolation.level`,
        `fetch.max.bytes`...). `enable.partition.eof` is always set from `stop_at_end`.
    :arg stop_at_end: finish each partition when it reaches the end of what the topic holds
        (finite runs and tests); otherwise tail the topic forever.
    :arg batch_size: most messages per batch (one `consume()` call).
    :arg poll_timeout_s: how long one `consume()` waits for `batch_size` messages; it blocks
        the worker. Default 0: take what librdkafka has already fetched in the background (it
        prefetches continuously) and let `next_awake` pace the polls of an idle partition.
        (With 10 ms, every poll of a busy partition waited the full 10 ms for a `batch_size`
        that never came: 20 ms per cycle of a worker reading two partitions.)
    :arg idle_backoff_s: the longest a partition sleeps (via `next_awake`) after polls that
        returned nothing; the pause is 2 ms for ten empty polls, then doubles up to this.
    :arg starting_offset: where a partition without snapshot state starts (default: the
        beginning; `confluent_kafka.OFFSET_END` for only new messages).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        config: Mapping[str, Any] | None = None,
        *,
        stop_at_end: bool = False,
        batch_size: int = 10_000,
        poll_timeout_s: float = 0.0,
        idle_backoff_s: float = 0.1,
        starting_offset: int = OFFSET_BEGINNING,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.bootstrap = bootstrap
        self.topic = topic
        self.config = dict(config or {})
        self.stop_at_end = stop_at_end
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.idle_backoff_s = idle_backoff_s
        self.starting_offset = starting_offset
        self.metadata_timeout_s = metadata_timeout_s
        self.stats = KafkaSourceStats()

    def list_parts(self) -> list[str]:
        """`<topic>/<partition>` for every partition of the topic (all are listed everywhere)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, **self.config})
        try:
            # All topics, not list_topics(topic): asking for one name can auto-create it.
            metadata = admin.list_topics(timeout=self.metadata_timeout_s)
        except KafkaException as exc:
            raise RuntimeError(f"cannot read Kafka metadata from {self.bootstrap}: {exc}") from exc
        topic_md = metadata.topics.get(self.topic)
        if topic_md is None:
            raise RuntimeError(
                f"Kafka topic {self.topic!r} does not exist on {self.bootstrap}; create it first"
            )
        if topic_md.error is not None:
            raise RuntimeError(f"Kafka topic {self.topic!r}: {topic_md.error.str()}")
        return [f"{self.topic}/{p}" for p in sorted(topic_md.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _KafkaBatchPartition:
        topic, _, index = for_part.rpartition("/")
        if topic != self.topic:
            raise RuntimeError(
                f"recovery state is for Kafka topic {topic!r}, this run reads {self.topic!r}; "
                "use a fresh recovery directory"
            )
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            # Required by librdkafka but unused: partitions are assigned, offsets never committed.
            "group.id": "learnstream-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
        config.update(self.config)
        config["enable.partition.eof"] = self.stop_at_end
        offset = self.starting_offset if resume_state is None else resume_state
        return _KafkaBatchPartition(
            config,
            topic,
            int(index),
            offset,
            batch_size=self.batch_size,
            poll_timeout_s=self.poll_timeout_s,
            idle_backoff_s=self.idle_backoff_s,
            stop_at_end=self.stop_at_end,
            stats=self.stats,
        )
