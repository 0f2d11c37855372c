"""The flow's stateful logics driven by hand (no engine): live-mode timing decisions."""

from __future__ import annotations

from datetime import date, timedelta
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


def _tables(out: list, name: str) -> pl.DataFrame:
    frames = [p for kind, n, p in out if kind == "table" and n == name]
    return pl.concat(frames).drop("emitted_at").sort(pl.all()) if frames else pl.DataFrame()


def test_sub_batches_of_two_partitions_merge_into_the_same_result(tmp_path: Path) -> None:
    # u1 (partition p0) is active on 03-01 and 03-02, u2 (p1) on 03-01; both partitions'
    # watermarks then pass the end of 03-01 (+ 1 h lateness... the default) and the input ends.
    cfg = FlowConfig(Settings(), tmp_path, "run", b"k", sources=("p0", "p1"))
    p0 = events(
        """
        | user | type             | timestamp            |
        | u1   | lesson_completed | 2026-03-01T10:00:00Z |
        | u1   | lesson_completed | 2026-03-02T10:00:00Z |
        """
    )
    # seq counts per partition (both start at 0); event ids are distinct across partitions, else
    # the shard would drop the second as a re-send
    p1 = events(
        "| event_id | user | type | timestamp |\n| p1-0 | u2 | quiz_completed | 2026-03-01T11:00:00Z |",
        seq_start=0,
    )
    mark = to_us("2026-03-02T12:00:00Z")
    sequential = UserLogic("0", cfg, None)
    out_a = list(sequential.on_item(ShardInput(p0, mark, True, "p0", 0))[0])
    out_a += list(sequential.on_item(ShardInput(p1, mark, True, "p1", 0))[0])
    merged = UserLogic("0", cfg, None)
    out_b = list(merged.on_batch([ShardInput(p0, mark, True, "p0", 0), ShardInput(p1, mark, True, "p1", 0)])[0])
    # the same three closed user-days (u1: 03-01 streak 1, 03-02 streak 2; u2: 03-01)
    want = _tables(out_a, "user_daily")
    assert want.select("user_key", "date", "streak").rows() == [
        ("u1", date(2026, 3, 1), 1), ("u1", date(2026, 3, 2), 2), ("u2", date(2026, 3, 1), 1)
    ]
    assert _tables(out_b, "user_daily").equals(want)
    assert _tables(out_b, "user_state").drop("as_of").equals(_tables(out_a, "user_state").drop("as_of"))
