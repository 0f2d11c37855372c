"""TopicWriter and KafkaTopicsSink against a real broker: every message counted and checked."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from learnstream.broker import LocalBroker, free_port
from sinks.kafka import DeliveryError, DeliveryStats, KafkaTopicsSink, TopicBatch, TopicWriter


def test_writer_delivers_every_message_with_its_key_value_and_partition(
    broker: LocalBroker, topic_names: Callable[[str], str], read_topic: Callable
) -> None:
    topic = topic_names("out")
    broker.create_topics([topic], partitions=3)
    # 300 messages over 40 keys, in two produce calls; value i is unique.
    messages = [(f"user-{i % 40:02d}".encode(), f'{{"i":{i}}}'.encode()) for i in range(300)]
    writer = TopicWriter(broker.bootstrap)
    writer.produce(topic, messages[:150])
    writer.produce(topic, messages[150:])
    writer.flush(20)
    assert writer.stats() == DeliveryStats(produced=300, delivered=300, failed=0)
    writer.close()

    records = read_topic(broker.bootstrap, topic)
    assert sorted((k, v) for _, _, k, v in records) == sorted(messages)
    # librdkafka's default partitioner (consistent_random) puts a keyed message on
    # crc32(key) % partitions: worked out independently here.
    for partition, _, key, _ in records:
        assert key is not None and partition == zlib.crc32(key) % 3
    # Within a partition the broker keeps production order (idempotent producer).
    for p in range(3):
        in_partition = sorted((off, v) for part, off, _, v in records if part == p)
        produced_order = [v for k, v in messages if zlib.crc32(k) % 3 == p]
        assert [v for _, v in in_partition] == produced_order


def test_full_local_queue_is_waited_out_not_lost(
    broker: LocalBroker, topic_names: Callable[[str], str], read_topic: Callable
) -> None:
    topic = topic_names("small-queue")
    broker.create_topics([topic])
    # Room for 5 queued messages: 50 messages must raise BufferError inside and be retried.
    writer = TopicWriter(broker.bootstrap, {"queue.buffering.max.messages": 5})
    writer.produce(topic, [(None, b"%d" % i) for i in range(50)])
    writer.close()
    assert writer.stats() == DeliveryStats(produced=50, delivered=50, failed=0)
    assert sorted(int(v) for _, _, _, v in read_topic(broker.bootstrap, topic) if v) == list(
        range(50)
    )


def test_stopped_broker_makes_flush_raise_with_counts() -> None:
    with LocalBroker() as own:
        own.create_topics(["out"])
        writer = TopicWriter(own.bootstrap, {"message.timeout.ms": 1500})
        writer.produce("out", [(b"k", b"%d" % i) for i in range(5)])
        writer.flush(10)
        own.stop(grace=1)
        writer.produce("out", [(b"k", b"%d" % i) for i in range(5, 12)])
        # The 7 messages time out after 1.5 s; flush waits for their reports and raises.
        with pytest.raises(DeliveryError, match="7 message") as info:
            writer.flush(10)
    assert (info.value.failed, info.value.pending, info.value.delivered) == (7, 0, 5)
    assert info.value.first_error is not None and "timed out" in info.value.first_error
    assert writer.stats() == DeliveryStats(produced=12, delivered=5, failed=7)
    assert len(writer.last_errors) == 7
    writer.flush(1)  # each failure is reported once; nothing new since
    writer.close()


def test_messages_still_queued_at_the_timeout_raise_and_close_never_hangs() -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    writer = TopicWriter(nobody, {"message.timeout.ms": 60_000})
    writer.produce("out", [(b"k", b"v")] * 3)
    with pytest.raises(DeliveryError, match="3 still queued") as info:
        writer.flush(0.3)
    assert (info.value.failed, info.value.pending) == (0, 3)
    # close() flushes (checked) again, then purges what is left and counts it as failed.
    with pytest.raises(DeliveryError):
        writer.close(0.1)
    assert writer.stats() == DeliveryStats(produced=3, delivered=0, failed=3)
    with pytest.raises(RuntimeError, match="closed"):
        writer.produce("out", [(b"k", b"v")])


def test_bytewax_sink_writes_each_topic_and_counts(
    broker: LocalBroker, topic_names: Callable[[str], str], read_topic: Callable
) -> None:
    alerts, metrics = topic_names("alerts"), topic_names("metrics")
    broker.create_topics([alerts, metrics], partitions=2)
    items: list[TopicBatch] = [
        (alerts, [(b"a1", b"alert-1"), (b"a2", b"alert-2")]),
        (metrics, [(b"u1", b"m-1")]),
        (alerts, [(b"a3", b"alert-3")]),
        (metrics, []),
    ]
    sink = KafkaTopicsSink(broker.bootstrap)
    flow = Dataflow("kafka-sink")
    op.output("out", op.input("in", flow, TestingSource(items)), sink)
    run_main(flow)

    # 2 + 1 + 1 + 0 = 4 messages.
    assert (sink.delivered, sink.failed) == (4, 0)
    assert sink.stats() == DeliveryStats(produced=4, delivered=4, failed=0)
    assert sorted((k, v) for _, _, k, v in read_topic(broker.bootstrap, alerts)) == [
        (b"a1", b"alert-1"),
        (b"a2", b"alert-2"),
        (b"a3", b"alert-3"),
    ]
    assert [(k, v) for _, _, k, v in read_topic(broker.bootstrap, metrics)] == [(b"u1", b"m-1")]


def test_bytewax_sink_stops_the_flow_when_delivery_fails() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    sink = KafkaTopicsSink(nobody, {"message.timeout.ms": 500}, flush_timeout=10)
    flow = Dataflow("kafka-sink-fails")
    op.output("out", op.input("in", flow, TestingSource([("out", [(b"k", b"v")])])), sink)
    with pytest.raises(Exception, match="error writing output batch") as info:
        run_main(flow)
    # Bytewax wraps the sink's exception; the DeliveryError is in the chain.
    chain: list[BaseException] = []
    error: BaseException | None = info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    delivery = [e for e in chain if isinstance(e, DeliveryError)]
    assert delivery and delivery[0].failed == 1, chain
    assert (sink.delivered, sink.failed) == (0, 1)
