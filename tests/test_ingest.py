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


def test_a_day_closes_only_once_the_watermark_passes_its_end_plus_lateness() -> None:
    # SPEC §4 "passes": at a watermark of exactly 03-02 01:00 (end of 03-01 + 1 h) 03-01 is still
    # open; one microsecond later it is closed.
    admission = Admission(Settings())
    out = admission.admit(
        events(
            """
            | event_id | user | type             | timestamp                   |
            | b1       | u    | lesson_completed | 2026-03-02T01:05:00Z        |
            | b2       | u    | lesson_completed | 2026-03-01T23:00:00Z        |
            | b3       | u    | lesson_completed | 2026-03-02T01:05:00.000001Z |
            | b4       | u    | lesson_completed | 2026-03-01T23:30:00Z        |
            """
        )
    )
    assert out.accepted["event_id"].to_list() == ["b1", "b2", "b3"]
    assert out.late["event_id"].to_list() == ["b4"]


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


RESEND = """
| event_id | user | type             | timestamp            |
| d1       | u    | lesson_completed | 2026-03-01T10:00:00Z |
| d2       | u    | lesson_completed | 2026-03-12T10:00:00Z |
| d1       | u    | lesson_completed | 2026-03-01T10:00:00Z |
"""


def _fates(admission: Admission, cuts: list[int]) -> tuple[int, int, int]:
    """(accepted, duplicates, late) of RESEND admitted in batches cut after the given rows."""
    batch = events(RESEND)
    accepted = duplicates = late = 0
    for lo, hi in zip([0, *cuts], [*cuts, len(batch)], strict=True):
        out = admission.admit(batch.slice(lo, hi - lo))
        accepted, duplicates, late = accepted + len(out.accepted), duplicates + out.duplicates, late + len(out.late)
    return accepted, duplicates, late


def test_a_late_resend_is_a_duplicate_whatever_the_batches_of_a_finite_input() -> None:
    # d1 is re-sent after d2 moved the newest event time 11 days on: same id, same event time,
    # so a duplicate (SPEC §2), in one batch or in two (e.g. two files)
    for cuts in ([], [2], [1, 2]):
        assert _fates(Admission(Settings(), forget_ids=False), cuts) == (2, 1, 0), cuts


def test_live_admission_forgets_ids_past_the_horizon_and_counts_the_resend_late() -> None:
    # live: after the batch with d2, ids older than 03-12 10:00 - 7 d - 1 h - 1 d are forgotten;
    # the re-send of d1 (03-01) is then late (its day closed long ago), not a duplicate
    assert _fates(Admission(Settings(), forget_ids=True), [2]) == (2, 0, 1)
