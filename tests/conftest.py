"""Shared fixtures: one real Tansu broker per test session, unique topic names per test."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from learnstream.broker import LocalBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """A real Kafka-compatible broker (Tansu, in memory) on a free loopback port.

    Started on first use, stopped (and its process reaped) when the session ends. Tests share
    it, so they must use their own topics (`topic_names`) and must not stop it.
    """
    with LocalBroker() as local:
        yield local


@pytest.fixture
def topic_names(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """`topic_names("events")` -> a topic name unique to this test and call.

    Kafka topic names allow `[a-zA-Z0-9._-]` and at most 249 characters.
    """
    test = re.sub(r"[^a-zA-Z0-9._-]+", "-", request.node.name)[:120]

    def make(label: str = "t") -> str:
        return f"{test}.{label}.{uuid.uuid4().hex[:8]}"

    return make


ReadTopic = Callable[[str, str], list[tuple[int, int, bytes | None, bytes | None]]]


@pytest.fixture
def read_topic() -> ReadTopic:
    """`read_topic(bootstrap, topic)` -> every record as (partition, offset, key, value).

    Reads all partitions from the beginning until each reports its end (fetch EOF); fails the
    test after 20 s rather than hanging.
    """

    def read(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "test-reader",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            records: list[tuple[int, int, bytes | None, bytes | None]] = []
            at_end: set[int] = set()
            deadline = time.monotonic() + 20
            while len(at_end) < len(partitions):
                assert time.monotonic() < deadline, f"{topic} not read to its end in 20 s"
                for msg in consumer.consume(1000, 0.1):
                    err, partition, offset = msg.error(), msg.partition(), msg.offset()
                    assert partition is not None
                    if err is not None:
                        assert err.code() == KafkaError._PARTITION_EOF, err.str()
                        at_end.add(partition)
                    else:
                        assert offset is not None
                        records.append((partition, offset, msg.key(), msg.value()))
            return records
        finally:
            consumer.close()

    return read
