"""Kafka output with checked delivery: `TopicWriter` and the Bytewax sink `KafkaTopicsSink`.

Why not Bytewax's own `KafkaSink`: it ignores delivery failures (its `flush()` result and the
delivery reports are never looked at) and drops the partition field. Here every message gets a
delivery callback that counts delivered and failed messages and keeps the last errors, and
`flush()` raises `DeliveryError` when anything failed or is still queued at the timeout: a
lost alert is never silent.

Guarantees: at-least-once. `KafkaTopicsSink` flushes (checked) at the end of every
`write_batch`, so when a Bytewax epoch closes everything it wrote is acknowledged by the broker;
after a crash Bytewax replays the epochs since the last snapshot, so consumers may see a message
twice and must de-duplicate by key (`alert_id`, `user_key` + date, `source_ref`).

Idempotence (`enable.idempotence=true`, the default here) keeps librdkafka's internal retries from
writing duplicates or reordering; Tansu accepts it (see `learnstream.broker`). Transactions are
not used: Tansu still hands records of aborted transactions to `read_committed` consumers, so
they cannot be tested to give exactly-once here. (On real Kafka, a `FixedPartitionedSink` that
commits a transaction per Bytewax snapshot would; that is left for later.)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer

__all__ = [
    "DeliveryError",
    "DeliveryStats",
    "KafkaTopicsSink",
    "TopicBatch",
    "TopicWriter",
]

#: One item of `KafkaTopicsSink`: a topic and its `(key, value)` messages.
TopicBatch = tuple[str, Sequence[tuple[bytes | None, bytes]]]

_KEPT_ERRORS = 10


class DeliveryError(RuntimeError):
    """Messages were not acknowledged by the broker: some failed or were still queued."""

    def __init__(
        self,
        message: str,
        *,
        delivered: int,
        failed: int,
        pending: int,
        first_error: str | None,
    ) -> None:
        super().__init__(message)
        self.delivered = delivered
        self.failed = failed
        self.pending = pending
        self.first_error = first_error


@dataclass(frozen=True)
class DeliveryStats:
    """Counters for the run summary (cumulative over the writer's life)."""

    produced: int
    delivered: int
    failed: int


class TopicWriter:
    """A confluent-kafka producer whose every delivery is counted and checked.

    `config` holds librdkafka settings passed through as they are (TLS, SASL, `linger.ms`,
    `compression.type`, `message.timeout.ms`...); they override the defaults
    `enable.idempotence=true`, `linger.ms=5` and `compression.type=lz4` (user_state metric
    messages are ~1 KB of JSON each and come ~4,000 at a time: lz4 cuts the bytes the broker
    takes per flush, which the flush at the end of a batch waits for).

    Failure semantics: `produce` only enqueues. A full local queue (BufferError) is handled by
    serving delivery reports and retrying for up to `max_block_s` seconds, then DeliveryError.
    Broker-side failures surface as failed delivery reports after librdkafka's own retries
    (bounded by `message.timeout.ms`, default 300 s); `flush` raises on them. Not thread-safe:
    one writer per worker.
    """

    def __init__(
        self,
        bootstrap: str,
        config: Mapping[str, Any] | None = None,
        *,
        max_block_s: float = 60.0,
    ) -> None:
        settings: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
        }
        settings.update(config or {})
        self.bootstrap = bootstrap
        self.max_block_s = max_block_s
        self._producer = Producer(settings)
        self.produced = 0
        self.delivered = 0
        self.failed = 0
        self.last_errors: deque[str] = deque(maxlen=_KEPT_ERRORS)
        # Failures not yet reported by a flush(); flush() raises on them once.
        self._unreported_failed = 0
        self._first_unreported: str | None = None
        self._closed = False

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        self._unreported_failed += 1
        text = f"{msg.topic()}[{msg.partition()}]: {err.str()} ({err.name()})"
        self.last_errors.append(text)
        if self._first_unreported is None:
            self._first_unreported = text

    def produce(self, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Enqueue `(key, value)` messages for `topic` (partition chosen by key hash)."""
        if self._closed:
            raise RuntimeError("TopicWriter is closed")
        producer = self._producer
        on_delivery = self._on_delivery
        for key, value in messages:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
            except BufferError:
                self._produce_when_room(topic, key, value)
            self.produced += 1
        producer.poll(0)

    def _produce_when_room(self, topic: str, key: bytes | None, value: bytes) -> None:
        deadline = time.monotonic() + self.max_block_s
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise self._error(
                        f"local producer queue still full after {self.max_block_s:.0f} s "
                        f"(is {self.bootstrap} reachable?)",
                        pending=len(self._producer),
                    ) from None

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks without waiting for the queue to drain."""
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait up to `timeout` seconds for every queued message to be acknowledged.

        Raises DeliveryError (with counts and the first error) when any message failed since
        the previous flush or some are still queued at the timeout. Each failure is reported
        by exactly one flush; the cumulative counters keep counting.
        """
        pending = self._producer.flush(timeout)
        if pending or self._unreported_failed:
            problem = []
            if self._unreported_failed:
                problem.append(f"{self._unreported_failed} message(s) failed")
            if pending:
                problem.append(f"{pending} still queued after {timeout:g} s")
            raise self._error(" and ".join(problem), pending=pending)

    def _error(self, what: str, *, pending: int) -> DeliveryError:
        first = self._first_unreported
        failed_now = self._unreported_failed
        self._unreported_failed = 0
        self._first_unreported = None
        detail = f"; first error: {first}" if first else ""
        return DeliveryError(
            f"Kafka delivery to {self.bootstrap} incomplete: {what} "
            f"(delivered {self.delivered}, failed {self.failed} in total){detail}",
            delivered=self.delivered,
            failed=failed_now,
            pending=pending,
            first_error=first,
        )

    def stats(self) -> DeliveryStats:
        return DeliveryStats(produced=self.produced, delivered=self.delivered, failed=self.failed)

    def close(self, timeout: float = 30.0) -> None:
        """Checked flush, then release the producer (also when the flush raises).

        Messages still queued after the flush are purged (and counted as failed) so that
        closing never blocks for `message.timeout.ms`.
        """
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            if len(self._producer):
                self._producer.purge(in_queue=True, in_flight=True, blocking=False)
                self._producer.poll(0)
            self._producer.close()


class _TopicsSinkPartition(StatelessSinkPartition[TopicBatch]):
    def __init__(self, writer: TopicWriter, flush_timeout: float) -> None:
        self._writer = writer
        self._flush_timeout = flush_timeout

    def write_batch(self, items: list[TopicBatch]) -> None:
        for topic, messages in items:
            self._writer.produce(topic, messages)
        self._writer.flush(self._flush_timeout)

    def close(self) -> None:
        self._writer.close(self._flush_timeout)


class KafkaTopicsSink(DynamicSink[TopicBatch]):
    """Bytewax sink whose items are `(topic, [(key, value), ...])`; one `TopicWriter` per worker.

    Every `write_batch` ends with a checked flush, so a delivery failure raises DeliveryError
    and stops the dataflow (Bytewax recovery then replays from the last snapshot) rather than
    losing output. `delivered` / `failed` add up the writers built in this process, for the
    run summary (each process of a multi-process run counts its own).
    """

    def __init__(
        self,
        bootstrap: str,
        config: Mapping[str, Any] | None = None,
        *,
        flush_timeout: float = 30.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.config = dict(config or {})
        self.flush_timeout = flush_timeout
        self._writers: list[TopicWriter] = []

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[TopicBatch]:
        writer = TopicWriter(self.bootstrap, self.config)
        self._writers.append(writer)
        return _TopicsSinkPartition(writer, self.flush_timeout)

    @property
    def delivered(self) -> int:
        return sum(w.delivered for w in self._writers)

    @property
    def failed(self) -> int:
        return sum(w.failed for w in self._writers)

    def stats(self) -> DeliveryStats:
        return DeliveryStats(
            produced=sum(w.produced for w in self._writers),
            delivered=self.delivered,
            failed=self.failed,
        )
