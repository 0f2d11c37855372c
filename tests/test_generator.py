"""The synthetic event generator: reproducible, correctly zoned, bounded disorder, every bad kind.

Bad records are checked with a small classifier written here from SPEC §1–§2 (not the product
decoder), so a generator bug and a decoder bug cannot hide each other.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sources.generator import BAD_KINDS, GenerateStats, write_events

SPEC_TYPES = {
    "lesson_completed",
    "exercise_completed",
    "quiz_completed",
    "assessment_completed",
    "material_completed",
    "session_started",
    "session_ended",
    "material_viewed",
    "xp_earned",
    "level_up",
    "achievement_unlocked",
    "milestone_reached",
}
COMPLETIONS = {
    "lesson_completed",
    "exercise_completed",
    "quiz_completed",
    "assessment_completed",
    "material_completed",
}
REQUIRED = ("event_id", "user_id", "type", "timestamp")
STRING_LIMITS = {
    "event_id": 128,
    "user_id": 256,
    "type": 10_000,
    "cohort_id": 128,
    "org_id": 128,
    "skill": 128,
    "content_id": 256,
    "session_id": 128,
    "timezone": 10_000,
}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")
NOW = datetime(2026, 11, 27, tzinfo=UTC)
FIVE_MINUTES = timedelta(minutes=5)


def classify(raw: bytes) -> str:
    """SPEC §2 rejection reason of one record, or "ok". Independent of learnstream's decoder."""
    if len(raw) > 65536:
        return "oversized"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        obj = json.loads(text)
    except ValueError:
        return "malformed_json"
    if not isinstance(obj, dict):
        return "not_an_object"
    for name in REQUIRED:
        if name not in obj or obj[name] is None:
            return f"missing_field:{name}"
    for name, limit in STRING_LIMITS.items():
        if name in obj and not (isinstance(obj[name], str) and 1 <= len(obj[name]) <= limit):
            return f"invalid_field:{name}"
    for name, high in (("score", 100), ("duration_s", 86400)):
        value = obj.get(name)
        if name in obj and (
            isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high
        ):
            return f"invalid_field:{name}"
    if "xp" in obj and (
        isinstance(obj["xp"], bool) or not isinstance(obj["xp"], int) or obj["xp"] < 0
    ):
        return "invalid_field:xp"
    if "timezone" in obj:
        try:
            ZoneInfo(obj["timezone"])
        except Exception:  # noqa: BLE001 - ZoneInfo raises several kinds
            return "invalid_field:timezone"
    if obj["type"] not in SPEC_TYPES:
        return "unknown_type"
    match = RFC3339.match(obj["timestamp"])
    if not match:
        return "invalid_field:timestamp"
    if match.group(2) is None:
        return "timestamp_missing_timezone"
    if datetime.fromisoformat(obj["timestamp"]) > NOW + FIVE_MINUTES:
        return "timestamp_in_future"
    return "ok"


def read_lines(stats: GenerateStats) -> list[bytes]:
    data = Path(stats.path).read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def good_events(lines: list[bytes]) -> list[dict]:
    return [json.loads(line) for line in lines if classify(line) == "ok"]


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    def run(name: str, seed: int) -> GenerateStats:
        return write_events(
            tmp_path / name, 40, 9, seed, bad_fraction=0.03, duplicate_fraction=0.02
        )

    a, b, c = run("a.jsonl", 3), run("b.jsonl", 3), run("c.jsonl", 4)
    assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    assert Path(a.path).read_bytes() != Path(c.path).read_bytes()
    assert (a.events, a.bad, a.duplicates) == (b.events, b.bad, b.duplicates)


def test_counts_scale_and_habits(tmp_path: Path) -> None:
    users, days = 300, 30
    stats = write_events(tmp_path / "e.jsonl", users=users, days=days, seed=11)
    lines = read_lines(stats)
    assert stats.events == len(lines) and stats.bad == 0 and stats.duplicates == 0
    events = good_events(lines)
    assert len(events) == len(lines)  # no bad records asked, none produced
    # documented scale: about 3.3 events per user-day (300 * 30 * 3.3 = 29,700)
    assert 0.85 * 3.3 <= len(events) / (users * days) <= 1.15 * 3.3
    assert {e["user_id"] for e in events} == {f"user-{i:05d}" for i in range(users)}
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["type"] for e in events} == SPEC_TYPES

    # sessions are bracketed: one start and one end per session_id
    brackets: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        brackets[e["session_id"]][e["type"]] += 1
    assert all(c["session_started"] == 1 and c["session_ended"] == 1 for c in brackets.values())

    # field shapes of SPEC §1
    for e in events:
        assert ("score" in e) == (
            e["type"] in {"exercise_completed", "quiz_completed", "assessment_completed"}
        )
        assert ("xp" in e) == (e["type"] == "xp_earned")
        assert ("cohort_id" in e) == ("org_id" in e)
    assert 0 < sum("cohort_id" not in e for e in events) < 0.1 * len(events)

    # the habits show in the data (users are local-day series in their own zone)
    per_user: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        per_user[e["user_id"]].append(e)
    start = date(2026, 3, 1)

    def local_day(e: dict) -> date:
        zone = ZoneInfo(e.get("timezone", "UTC"))
        return datetime.fromisoformat(e["timestamp"]).astimezone(zone).date()

    weekend_only = dropped = bursty = low = rising = falling = 0
    for evs in per_user.values():
        days_seen = {local_day(e) for e in evs if e["type"] in COMPLETIONS}
        per_day = Counter(local_day(e) for e in evs)
        if len(days_seen) >= 3 and all(d.weekday() >= 5 for d in days_seen):
            weekend_only += 1
        if days_seen and len(days_seen) >= 2 and max(days_seen) <= start + timedelta(days=18):
            dropped += 1
        if max(per_day.values()) >= 15:
            bursty += 1
        scored = [((local_day(e) - start).days, e["score"]) for e in evs if "score" in e]
        if len(scored) >= 8:
            mean = sum(s for _, s in scored) / len(scored)
            low += mean < 60
            xs = [x for x, _ in scored]
            mx = sum(xs) / len(xs)
            sxx = sum((x - mx) ** 2 for x in xs)
            if sxx > 0:
                slope = sum((x - mx) * (s - mean) for x, s in scored) / sxx
                rising += slope > 0.7
                falling += slope < -0.7
    # each habit is ~10% of 300 users; demand a clear presence, not an exact count
    assert weekend_only >= 10
    assert dropped >= 10
    assert bursty >= 10
    assert low >= 15
    assert rising >= 15
    assert falling >= 15


def test_bad_records_cover_every_rejection_reason(tmp_path: Path) -> None:
    stats = write_events(tmp_path / "bad.jsonl", users=60, days=10, seed=5, bad_fraction=0.05)
    lines = read_lines(stats)
    assert len(lines) == stats.events
    reasons = Counter(classify(line) for line in lines)
    assert stats.bad == round(0.05 * stats.events)
    assert sum(n for r, n in reasons.items() if r != "ok") == stats.bad
    expected = {
        "malformed_json",
        "not_an_object",
        "invalid_utf8",
        "oversized",
        "missing_field:event_id",
        "missing_field:user_id",
        "missing_field:type",
        "missing_field:timestamp",
        "invalid_field:score",
        "invalid_field:duration_s",
        "invalid_field:xp",
        "invalid_field:timezone",
        "invalid_field:cohort_id",
        "invalid_field:event_id",
        "invalid_field:timestamp",
        "unknown_type",
        "timestamp_missing_timezone",
        "timestamp_in_future",
    }
    assert set(reasons) - {"ok"} == expected
    assert {reason for reason, _ in BAD_KINDS} == expected
    # the three not_an_object shapes the brief names
    assert {b"[1,2]", b'"x"', b"42"} <= set(lines)
    # oversized records are otherwise valid JSON objects (only their size is wrong)
    big = [line for line in lines if len(line) > 65536]
    assert big and all(isinstance(json.loads(line), dict) for line in big)


def test_duplicates_resend_identical_lines_and_counts_add_up(tmp_path: Path) -> None:
    stats = write_events(
        tmp_path / "dup.jsonl", users=50, days=8, seed=9, bad_fraction=0.02, duplicate_fraction=0.03
    )
    lines = read_lines(stats)
    seen: dict[bytes, int] = {}
    resent = 0
    for i, line in enumerate(lines):
        if line in seen and classify(line) == "ok":
            resent += 1
        seen.setdefault(line, i)
    assert stats.duplicates > 0 and resent == stats.duplicates
    ok_ids = [json.loads(line)["event_id"] for line in lines if classify(line) == "ok"]
    # in = accepted + rejected + duplicate (+ late = 0): the generator's exact bookkeeping
    assert len(set(ok_ids)) == stats.events - stats.bad - stats.duplicates
    assert len(ok_ids) - len(set(ok_ids)) == stats.duplicates
    # event ids are unique per producer: e-<seed>-<n>
    assert all(re.fullmatch(r"e-9-\d+", eid) for eid in ok_ids)


def test_out_of_order_is_bounded_by_five_minutes(tmp_path: Path) -> None:
    stats = write_events(
        tmp_path / "ooo.jsonl", users=200, days=10, seed=2, duplicate_fraction=0.02
    )
    newest = datetime.min.replace(tzinfo=UTC)
    behind = []
    for e in good_events(read_lines(stats)):
        t = datetime.fromisoformat(e["timestamp"])
        behind.append(newest - t)
        newest = max(newest, t)
    worst = max(behind)
    late_ish = sum(b > timedelta(0) for b in behind)
    assert timedelta(0) < worst < FIVE_MINUTES  # some disorder, never beyond the watermark
    assert late_ish < 0.05 * len(behind)  # "a small fraction"


def test_offsets_are_right_for_the_zone_and_instant_across_dst(tmp_path: Path) -> None:
    # 40 days from 2026-03-01 cover New York (03-08), Berlin/London (03-29), Sydney (04-05)
    stats = write_events(tmp_path / "tz.jsonl", users=300, days=40, seed=1)
    offsets: dict[str, set[str]] = defaultdict(set)
    z_stamps = local_other_utc_date = 0
    for e in good_events(read_lines(stats)):
        ts = e["timestamp"]
        t = datetime.fromisoformat(ts)
        zone = ZoneInfo(e.get("timezone", "UTC"))
        local = t.astimezone(zone)
        if local.date() != t.astimezone(UTC).date():
            local_other_utc_date += 1
        if ts.endswith("Z"):
            z_stamps += 1
            continue
        # the written offset is the zone's offset at that instant (zoneinfo decides)
        assert t.utcoffset() == local.utcoffset(), (ts, e.get("timezone"))
        offsets[e.get("timezone", "UTC")].add(ts[-6:])
    assert offsets["America/New_York"] == {"-05:00", "-04:00"}
    assert offsets["America/Los_Angeles"] == {"-08:00", "-07:00"}
    assert offsets["Europe/Berlin"] == {"+01:00", "+02:00"}
    assert offsets["Europe/London"] == {"+00:00", "+01:00"}
    assert offsets["Australia/Sydney"] == {"+11:00", "+10:00"}
    assert offsets["Asia/Seoul"] == {"+09:00"}
    assert offsets["Asia/Kolkata"] == {"+05:30"}
    assert z_stamps > 0
    assert local_other_utc_date > 0


def test_first_events_start_on_the_first_local_day(tmp_path: Path) -> None:
    stats = write_events(tmp_path / "s.jsonl", users=80, days=5, seed=8, start=date(2026, 6, 1))
    days = set()
    for e in good_events(read_lines(stats)):
        local = datetime.fromisoformat(e["timestamp"]).astimezone(
            ZoneInfo(e.get("timezone", "UTC"))
        )
        days.add(local.date())
    # night owls may spill past midnight of the last day; nothing before the first day
    assert min(days) == date(2026, 6, 1)
    assert max(days) <= date(2026, 6, 6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"users": 0},
        {"days": 0},
        {"seed": -1},
        {"bad_fraction": 1.0},
        {"duplicate_fraction": -0.1},
    ],
)
def test_bad_arguments_name_the_value(tmp_path: Path, kwargs: dict) -> None:
    args = {"users": 2, "days": 2, "seed": 0, **kwargs}
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        write_events(tmp_path / "x.jsonl", **args)


def test_future_timestamps_stay_valid_dates_on_29_february(tmp_path: Path) -> None:
    # the in-future record moves the event's own time to year 2999, which has no 29 February
    stats = write_events(
        tmp_path / "leap.jsonl", users=40, days=1, seed=0, start=date(2028, 2, 29), bad_fraction=0.5
    )
    lines = read_lines(stats)
    future = [line for line in lines if b'"2999-' in line]
    assert future and all(classify(line) == "timestamp_in_future" for line in future)
