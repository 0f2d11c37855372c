"""Shared fixtures: one real Tansu broker per test session, unique topic names per test."""

from __future__ import annotations

import re
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
