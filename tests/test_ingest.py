"""Admission: duplicates, the watermark and late events (SPEC §2, §4)."""

from __future__ import annotations

from learnstream.config import Settings
from operators.ingest import Admission
from tests.eventtable import events, to_us


def test_duplicates_within_and_across_batches_and_horizon() -> None:
    admission = Admission(Settings())
    first = admission.admit(
        events(
            """
            | event_id | user | type             | timestamp            |
            | a        | u    | lesson_completed | 2026-03-01T10:00:00Z |
            | b        | u    | lesson_completed | 2026-03-01T10:01:00Z |
            | a        | u    | lesson_completed | 2026-03-01T10:00:00Z |
            """
        )
    )
    assert first.accepted["event_id"].to_list() == ["a", "b"]
    assert first.duplicates == 1
    second = admission.admit(
        events(
            """
            | event_id | user | type             | timestamp            |
            | b        | u    | lesson_completed | 2026-03-01T10:01:00Z |
            | a        | u    | lesson_completed | 2026-03-09T10:00:01Z |
            """,
            seq_start=3,
        )
    )
    # b is a re-send (same id, same time); a comes back 8 days later: outside the 7 d horizon -> new
    assert second.duplicates == 1
    assert second.accepted["event_id"].to_list() == ["a"]


def test_late_uses_the_watermark_before_each_event_inside_a_batch() -> None:
    admission = Admission(Settings())
    out = admission.admit(
        events(
            """
            | event_id | user | type             | timestamp            |
            | e1       | u    | lesson_completed | 2026-03-01T23:00:00Z |
            | e2       | u    | lesson_completed | 2026-03-02T01:10:00Z |
            | e3       | u    | lesson_completed | 2026-03-01T23:50:00Z |
            | e4       | u    | lesson_completed | 2026-03-02T01:00:00Z |
            """
        )
    )
    # day 03-01 (UTC) ends 03-02 00:00 and closes when the watermark reaches 01:00.
    # Before e3: newest 01:10 - 5 min = 01:05 >= 01:00 -> e3 (03-01) is late.
    # e2 and e4 belong to 03-02: accepted. e1 arrived while the watermark was unset: accepted.
    assert out.accepted["event_id"].to_list() == ["e1", "e2", "e4"]
    assert out.late["event_id"].to_list() == ["e3"]
    assert out.watermark_us == to_us("2026-03-02T01:05:00+00:00")


def test_late_day_in_the_events_own_zone() -> None:
    admission = Admission(Settings())
    admission.admit(events("| user | type | timestamp |\n| u | lesson_completed | 2026-03-02T02:00:00Z |"))
    # watermark 01:55Z. An event of local day 03-01 in New York (UTC-5) ends 03-02 05:00Z: open.
    # The same instant in UTC belongs to 03-01 UTC, which closed at 01:00Z: late.
    out = admission.admit(
        events(
            """
            | user | type             | timestamp            | zone             |
            | u    | lesson_completed | 2026-03-01T23:30:00Z | America/New_York |
            | u    | lesson_completed | 2026-03-01T23:30:00Z | UTC              |
            """,
            seq_start=1,
        )
    )
    assert out.accepted["timezone"].to_list() == ["America/New_York"]
    assert out.late["timezone"].to_list() == ["UTC"]
