"""The flow's stateful logics driven by hand (no engine): live-mode timing decisions."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

from flows.pipeline import FlowConfig, ShardInput, UserLogic, now_us
from learnstream.config import Settings
from tests.eventtable import events, to_us


def test_a_stale_state_notification_evaluates_nothing(tmp_path: Path) -> None:
    cfg = FlowConfig(Settings(), tmp_path, "run", b"k", live=True, sources=("p0",),
                     state_interval=timedelta(seconds=2))
    logic = UserLogic("0", cfg, None)
    batch = events(
        """
        | user | type             | timestamp            |
        | u1   | lesson_completed | 2026-03-01T10:00:00Z |
        """
    )
    mark = to_us("2026-03-01T10:00:00Z")
    logic.next_eval_us = 0  # due: this item evaluates and publishes u1's state
    out, _ = logic.on_item(ShardInput(batch, mark, False, "p0", now_us()))
    states = [p for kind, name, p in out if kind == "table" and name == "user_state"]
    assert [s["user_key"].to_list() for s in states] == [["u1"]]
    assert not logic.pending and logic.next_eval_us > now_us()
    # a notification Bytewax had scheduled before that item: nothing pending, nothing to do
    assert list(logic.on_notify()[0]) == []
    # a change arrives within the interval: it waits, and a notification before the interval
    # is over is stale too
    more = events("| user | type | timestamp |\n| u2 | lesson_completed | 2026-03-01T10:01:00Z |", seq_start=1)
    out, _ = logic.on_item(ShardInput(more, mark, False, "p0", now_us()))
    assert not [p for kind, name, p in out if kind == "table" and name == "user_state"]
    assert logic.pending
    assert list(logic.on_notify()[0]) == []
    # once the interval is over, the notification evaluates the waiting change (u2 only)
    logic.next_eval_us = now_us() - 1
    out, _ = logic.on_notify()
    states = [p for kind, name, p in out if kind == "table" and name == "user_state"]
    assert pl.concat(states)["user_key"].to_list() == ["u2"]
    assert not logic.pending
