"""Decode and validate (SPEC §1, §2, §3): every record ends as one event or one dead letter.

Each hand-written record is decoded twice, through the Arrow fast path and the per-line orjson
slow path, and both results must be identical (`decode()` below checks that every time).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import operators.decode as decode_module
from learnstream.config import ConfigError, Settings
from operators.decode import DecodeResult, RawBatch, _decode, decode_batch, known_timezones
from operators.pseudonymize import Pseudonymizer
from schemas.events import EVENT_BATCH_SCHEMA, EVENT_TYPES, REJECTED_BATCH_SCHEMA
from sources.generator import BAD_KINDS, write_events

SECRET = b"decode-test-secret"
NOW = datetime(2026, 4, 1, tzinfo=UTC)
NOW_US = int(NOW.timestamp()) * 1_000_000
SETTINGS = Settings(
    max_event_bytes=65536, max_clock_skew=timedelta(minutes=5), default_timezone="UTC"
)
DROP = object()  # marks a field to leave out of `ev()`

Line = bytes | str | dict[str, Any]


def ev(**fields: Any) -> dict[str, Any]:
    """A valid event with `fields` changed; `field=DROP` leaves it out."""
    base: dict[str, Any] = {
        "event_id": "e1",
        "user_id": "u1",
        "type": "quiz_completed",
        "timestamp": "2026-03-10T12:00:00Z",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not DROP}


def dumps(value: Any) -> bytes:
    """Compact JSON; the standard library where orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def to_bytes(line: Line) -> bytes:
    if isinstance(line, dict):
        return dumps(line)
    if isinstance(line, str):
        return line.encode("utf-8")
    return line


def decode(
    lines: list[Line],
    *,
    config: Settings = SETTINGS,
    prefix: str = "file:/x/y.jsonl:",
    positions: list[int] | None = None,
    seq_start: int = 0,
    now_us: int = NOW_US,
) -> DecodeResult:
    """Decode through both paths, check they agree and the accounting, return the result."""
    raw = RawBatch(
        lines=[to_bytes(line) for line in lines],
        ref_prefix=prefix,
        positions=np.asarray(
            positions if positions is not None else range(1, len(lines) + 1), dtype=np.int64
        ),
        received_at_us=now_us,
    )
    fast = decode_batch(raw, config, Pseudonymizer(SECRET), now_us=now_us, seq_start=seq_start)
    slow = _decode(
        raw, config, Pseudonymizer(SECRET), now_us=now_us, seq_start=seq_start, fast=False
    )
    assert_frame_equal(fast.events, slow.events)
    assert_frame_equal(fast.rejected, slow.rejected)
    assert fast.events.schema == pl.Schema(EVENT_BATCH_SCHEMA)
    assert fast.rejected.schema == pl.Schema(REJECTED_BATCH_SCHEMA)
    seqs = fast.events["seq"].to_list() + fast.rejected["seq"].to_list()
    assert sorted(seqs) == list(range(seq_start, seq_start + len(lines)))
    return fast


def reason(line: Line, **kwargs: Any) -> str | None:
    """The rejection reason of one record, or None when accepted."""
    result = decode([line], **kwargs)
    if result.events.height:
        return None
    return str(result.rejected["reason"][0])


def detail(line: Line, **kwargs: Any) -> str:
    return str(decode([line], **kwargs).rejected["detail"][0])


def us(text: str) -> int:
    """Microseconds since the epoch of an ISO date-time, computed by the standard library."""
    moment = datetime.fromisoformat(text)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


# --------------------------------------------------------------------------------------------
# accepted events


def test_valid_event_all_fields() -> None:
    record = ev(
        event_id="evt-1",
        user_id="learner@example.org",
        type="exercise_completed",
        timestamp="2026-03-10T12:00:00.123456Z",
        cohort_id="c1",
        org_id="o1",
        skill="algebra",
        content_id="lesson-9",
        score=87.5,
        duration_s=300,
        xp=15,
        session_id="s1",
        timezone="Europe/Berlin",
    )
    result = decode([record], seq_start=41)
    assert result.rejected.height == 0
    row = result.events.row(0, named=True)
    assert row == {
        "seq": 41,
        "source_ref": "file:/x/y.jsonl:1",
        "event_id": "evt-1",
        "user_key": hmac.new(SECRET, b"learner@example.org", hashlib.sha256).hexdigest()[:32],
        "type": "exercise_completed",
        "t_us": us("2026-03-10T12:00:00.123456+00:00"),
        "timezone": "Europe/Berlin",
        "date": date(2026, 3, 10),
        "cohort_id": "c1",
        "org_id": "o1",
        "skill": "algebra",
        "content_id": "lesson-9",
        "score": 87.5,
        "duration_s": 300.0,
        "xp": 15,
        "session_id": "s1",
    }


def test_raw_user_id_never_in_events_and_unknown_fields_dropped() -> None:
    record = ev(user_id="secret-person-id", email="a@b.c", extra={"nested": [1, 2]}, tipo="x")
    events = decode([record]).events
    assert list(events.columns) == list(EVENT_BATCH_SCHEMA)
    for column in events.columns:
        for value in events[column].to_list():
            assert "secret-person-id" not in str(value)
            assert "a@b.c" not in str(value)


def test_every_event_type_accepted() -> None:
    result = decode([ev(event_id=f"e{i}", type=t) for i, t in enumerate(EVENT_TYPES)])
    assert result.events["type"].to_list() == list(EVENT_TYPES)


def test_seq_and_source_ref_with_kafka_offsets_and_rejects_interleaved() -> None:
    result = decode(
        [ev(event_id="a"), "not json", ev(event_id="c")],
        prefix="kafka:learning.events/3/",
        positions=[1000, 1001, 1005],
        seq_start=7,
    )
    assert result.events.select("seq", "source_ref").rows() == [
        (7, "kafka:learning.events/3/1000"),
        (9, "kafka:learning.events/3/1005"),
    ]
    assert result.rejected.select("seq", "source_ref", "reason").rows() == [
        (8, "kafka:learning.events/3/1001", "malformed_json"),
    ]


def test_source_ref_file_format() -> None:
    result = decode([ev(event_id="a"), ev(event_id="b"), ev(event_id="c")])
    assert result.events["source_ref"][2] == "file:/x/y.jsonl:3"


def test_empty_batch() -> None:
    result = decode([])
    assert result.events.height == 0 and result.rejected.height == 0


# --------------------------------------------------------------------------------------------
# time


def test_dst_local_dates_and_offsets() -> None:
    result = decode(
        [
            # 06:30Z on 2026-03-08 is 01:30 EST (UTC-5): DST starts at 02:00 local that day
            ev(event_id="ny1", timestamp="2026-03-08T06:30:00Z", timezone="America/New_York"),
            # 07:30Z is 03:30 EDT (UTC-4), same local day
            ev(event_id="ny2", timestamp="2026-03-08T07:30:00Z", timezone="America/New_York"),
            # 04:30Z on 2026-03-08 is 23:30 EST on 2026-03-07
            ev(event_id="ny0", timestamp="2026-03-08T04:30:00Z", timezone="America/New_York"),
            # 23:30Z on 2026-03-01 is 08:30 KST (UTC+9) on 2026-03-02
            ev(event_id="kr1", timestamp="2026-03-01T23:30:00Z", timezone="Asia/Seoul"),
            # 00:30+09:00 on 2026-03-02 is 2026-03-01T15:30Z; no timezone field -> UTC day 03-01
            ev(event_id="kr2", timestamp="2026-03-02T00:30:00+09:00"),
            ev(event_id="kr3", timestamp="2026-03-02T00:30:00+09:00", timezone="Asia/Seoul"),
        ]
    )
    rows = {r["event_id"]: r for r in result.events.iter_rows(named=True)}
    ny = ZoneInfo("America/New_York")
    t1 = datetime.fromtimestamp(rows["ny1"]["t_us"] / 1e6, ny)
    t2 = datetime.fromtimestamp(rows["ny2"]["t_us"] / 1e6, ny)
    assert (t1.hour, t1.minute, t1.utcoffset()) == (1, 30, timedelta(hours=-5))
    assert (t2.hour, t2.minute, t2.utcoffset()) == (3, 30, timedelta(hours=-4))
    assert rows["ny1"]["date"] == rows["ny2"]["date"] == date(2026, 3, 8)
    assert rows["ny0"]["date"] == date(2026, 3, 7)
    assert rows["kr1"]["date"] == date(2026, 3, 2)
    assert rows["kr2"]["t_us"] == us("2026-03-01T15:30:00+00:00")
    assert rows["kr2"]["timezone"] == "UTC" and rows["kr2"]["date"] == date(2026, 3, 1)
    assert rows["kr3"]["date"] == date(2026, 3, 2)


def test_unusable_default_timezone_is_a_config_error() -> None:
    # e.g. "localtime": ZoneInfo (so Settings) may accept it, polars cannot convert to it;
    # model_copy skips validation, so the guard is tested on every platform
    config = SETTINGS.model_copy(update={"default_timezone": "Mars/Base"})
    raw = RawBatch([to_bytes(ev())], "file:/f:", np.arange(1, 2), NOW_US)
    with pytest.raises(ConfigError, match="Mars/Base"):
        decode_batch(raw, config, Pseudonymizer(SECRET), now_us=NOW_US, seq_start=0)


def test_default_timezone_setting_decides_the_day() -> None:
    config = Settings(default_timezone="Asia/Seoul")
    result = decode([ev(timestamp="2026-03-01T23:30:00Z")], config=config)
    assert result.events.row(0, named=True)["timezone"] == "Asia/Seoul"
    assert result.events.row(0, named=True)["date"] == date(2026, 3, 2)


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2026-03-10T12:00:00Z", "2026-03-10T12:00:00+00:00"),
        ("2026-03-10t12:00:00z", "2026-03-10T12:00:00+00:00"),
        ("2026-03-10 12:00:00Z", "2026-03-10T12:00:00+00:00"),
        ("2026-03-10T12:00:00.5Z", "2026-03-10T12:00:00.500000+00:00"),
        ("2026-03-10T12:00:00.123Z", "2026-03-10T12:00:00.123000+00:00"),
        # beyond microseconds: truncated
        ("2026-03-10T12:00:00.1234567891Z", "2026-03-10T12:00:00.123456+00:00"),
        ("2026-03-10T12:00:00-05:30", "2026-03-10T17:30:00+00:00"),
        ("2026-03-10T12:00:00+14:00", "2026-03-09T22:00:00+00:00"),
        ("2026-03-10T12:00:00-00:00", "2026-03-10T12:00:00+00:00"),
        ("2024-02-29T23:59:59.999999+23:59", "2024-02-29T00:00:59.999999+00:00"),
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00+00:00"),
        ("1969-12-31T23:59:59.5Z", "1969-12-31T23:59:59.500000+00:00"),
        # the supported range: [0001-01-02, 9999-12-31) UTC, local dates stay valid dates
        ("0001-01-02T00:00:00Z", "0001-01-02T00:00:00+00:00"),
        ("9999-12-31T04:59:59.999999+05:00", "9999-12-30T23:59:59.999999+00:00"),
        ("2000-02-29T00:00:00Z", "2000-02-29T00:00:00+00:00"),
    ],
)
def test_timestamp_formats(text: str, iso: str) -> None:
    result = decode([ev(timestamp=text, timezone="Pacific/Kiritimati")], now_us=2**62)
    assert result.rejected.height == 0, result.rejected["detail"].to_list()
    assert result.events["t_us"][0] == us(iso)


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-29T00:00:00Z",  # not a leap year
        "1900-02-29T00:00:00Z",  # century, not a leap year
        "2026-02-30T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-03-00T00:00:00Z",
        "2026-03-10T25:00:00Z",
        "2026-03-10T24:00:00Z",
        "2026-03-10T12:60:00Z",
        "2026-03-10T23:59:60Z",  # leap second: not representable downstream
        "2026-03-10T12:00:00+25:00",
        "2026-03-10T12:00:00+05:60",
        "2026-03-10T12:00:00+0500",
        "2026-03-10T12:00:00+05",
        "2026-03-10T12:00:00 Z",
        "2026-03-10T12:00:00.Z",
        "2026-03-10T12:00Z",
        "2026-03-10",
        "0000-01-01T00:00:00Z",
        "0001-01-01T23:59:59.999999Z",  # before the supported range
        "0001-01-02T00:00:00+00:01",
        "9999-12-31T00:00:00Z",
        "26-03-10T12:00:00Z",
        "2026-3-10T12:00:00Z",
        "2026-03-10T12:00:00Z ",
        "2026-03-10T12:00:00Z\n",
        "yesterday",
        "",
        "２０２６-03-10T12:00:00Z",  # full-width digits
    ],
)
def test_invalid_timestamps(text: str) -> None:
    assert reason(ev(timestamp=text)) == "invalid_field:timestamp"


@pytest.mark.parametrize(
    "text", ["2026-03-10T12:00:00", "2026-03-10 12:00:00.250", "2026-03-10t12:00:00.1234567"]
)
def test_timestamp_missing_timezone(text: str) -> None:
    assert reason(ev(timestamp=text)) == "timestamp_missing_timezone"


def test_impossible_naive_timestamp_is_invalid_not_missing_timezone() -> None:
    assert reason(ev(timestamp="2026-02-30T10:00:00")) == "invalid_field:timestamp"


def test_timestamp_in_future_boundary() -> None:
    # processing time 2026-04-01T00:00:00Z, max_clock_skew 5 min: 00:05:00Z is the last accepted
    assert reason(ev(timestamp="2026-04-01T00:05:00Z")) is None
    assert reason(ev(timestamp="2026-04-01T00:05:00.000001Z")) == "timestamp_in_future"
    assert reason(ev(timestamp="2026-04-01T09:05:00+09:00")) is None
    assert reason(ev(timestamp="2026-04-01T09:05:01+09:00")) == "timestamp_in_future"
    config = Settings(max_clock_skew="1h")
    assert reason(ev(timestamp="2026-04-01T00:59:00Z"), config=config) is None


# --------------------------------------------------------------------------------------------
# every rejection reason, by hand


def test_oversized_boundary_and_payload_kept() -> None:
    config = Settings(max_event_bytes=120)
    record = ev(pad="")
    size = len(orjson.dumps(record))
    exact = ev(pad="x" * (120 - size))
    assert len(orjson.dumps(exact)) == 120
    assert reason(exact, config=config) is None
    over = ev(pad="x" * (121 - size))
    result = decode([over], config=config)
    assert result.rejected.row(0, named=True) == {
        "seq": 0,
        "source_ref": "file:/x/y.jsonl:1",
        "reason": "oversized",
        "detail": "record is 121 bytes, over max_event_bytes=120",
        "payload": orjson.dumps(over).decode(),
    }


def test_invalid_utf8_payload_is_base64() -> None:
    raw = b'{"event_id": "\xff\xfe", "user_id": "u1"}'
    result = decode([raw, ev()])
    row = result.rejected.row(0, named=True)
    assert row["reason"] == "invalid_utf8"
    assert base64.b64decode(row["payload"], validate=True) == raw
    assert result.events.height == 1  # the rest of the batch is unaffected
    # an encoded surrogate (CESU-8) is not UTF-8 either
    assert reason(b'{"event_id": "\xed\xa0\x80"}') == "invalid_utf8"


@pytest.mark.parametrize(
    "line",
    [
        '{"event_id": "e1",}',
        '{"event_id": "e1"',
        "{event_id: 1}",
        "not json",
        '{"a": 1}{"b": 2}',
        '{"a": 1} x',
        '{"score": NaN}',
        '{"score": -Infinity}',
        '{"zz": Infinity}',
        '{"zz": [1, -NaN]}',
        '{"event_id": "\\ud800"}',
        '{"event_id": "tab\tinside"}',
        "{'event_id': 'e1'}",
        '{"a": 01}',
        '{"a": .5}',
        '{"a": 1} // comment',
        "\ufeff{}",
        "",
        "   ",
    ],
)
def test_malformed_json(line: str) -> None:
    assert reason(line) == "malformed_json"


def test_numbers_beyond_double_range_are_json_numbers() -> None:
    # RFC 8259 leaves number range open: such a number is not malformed; in a known field its
    # range check rejects it, in an unknown field it is dropped with the field (both paths)
    base = '{"event_id": "e1", "user_id": "u", "type": "lesson_completed", "timestamp": "2026-03-01T10:00:00Z"'
    assert reason(base + ', "score": 1e400}') == "invalid_field:score"
    assert reason(base + ', "xp": ' + "9" * 400 + "}") == "invalid_field:xp"
    assert reason(base + ', "zz": -1e400}') is None


def test_malformed_json_payload_and_detail() -> None:
    row = decode(['{"event_id": "e1",}']).rejected.row(0, named=True)
    assert row["payload"] == '{"event_id": "e1",}'
    assert row["detail"].startswith("not valid JSON: ")


@pytest.mark.parametrize(
    "line", ["[1, 2]", '"event"', "42", "true", "null", "[]", '[{"event_id": "e1"}]']
)
def test_not_an_object(line: str) -> None:
    assert reason(line) == "not_an_object"


@pytest.mark.parametrize("name", ["event_id", "user_id", "type", "timestamp"])
def test_missing_field(name: str) -> None:
    assert reason(ev(**{name: DROP})) == f"missing_field:{name}"
    # JSON null counts as absent
    assert reason(ev(**{name: None})) == f"missing_field:{name}"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("event_id", 123),
        ("event_id", ""),
        ("event_id", "x" * 129),
        ("event_id", ["e1"]),
        ("user_id", 7),
        ("user_id", ""),
        ("user_id", "u" * 257),
        ("user_id", {"id": "u1"}),
        ("type", 3),
        ("type", True),
        ("timestamp", 1773144000),
        ("timestamp", "2026-03-10T12:00:00+25:00"),
        ("cohort_id", ""),
        ("cohort_id", 12),
        ("cohort_id", "c" * 129),
        ("org_id", False),
        ("org_id", "o" * 129),
        ("skill", ""),
        ("skill", ["algebra"]),
        ("content_id", "c" * 257),
        ("content_id", 5),
        ("score", 100.0001),
        ("score", -0.5),
        ("score", "87"),
        ("score", True),
        ("score", [50]),
        ("score", 18446744073709551616),
        ("duration_s", 86400.5),
        ("duration_s", -1),
        ("duration_s", "60"),
        ("xp", 7.5),
        ("xp", "7"),
        ("xp", True),
        ("xp", -1),
        ("xp", 2**53),
        ("xp", 2**63),
        ("xp", 1e300),
        ("session_id", ""),
        ("session_id", "s" * 129),
        ("session_id", 1),
        ("timezone", "Mars/Olympus_Mons"),
        ("timezone", "europe/berlin"),
        ("timezone", "localtime"),
        ("timezone", ""),
        ("timezone", 9),
    ],
)
def test_invalid_field(name: str, value: Any) -> None:
    assert reason(ev(**{name: value})) == f"invalid_field:{name}"


@pytest.mark.parametrize(
    ("name", "value", "stored"),
    [
        ("event_id", "x" * 128, "x" * 128),
        ("user_id", "u" * 256, None),
        ("cohort_id", "é" * 128, "é" * 128),  # characters, not bytes
        ("content_id", "c" * 256, "c" * 256),
        ("score", 0, 0.0),
        ("score", 100, 100.0),
        ("score", 99.95, 99.95),
        ("duration_s", 86400, 86400.0),
        ("duration_s", 0.25, 0.25),
        ("xp", 0, 0),
        ("xp", 7.0, 7),
        ("xp", 1e2, 100),
        ("xp", 2**53 - 1, 2**53 - 1),
        ("timezone", "Asia/Kolkata", "Asia/Kolkata"),
        ("timezone", "Etc/GMT+5", "Etc/GMT+5"),
    ],
)
def test_field_limits_accepted(name: str, value: Any, stored: Any) -> None:
    result = decode([ev(**{name: value})])
    assert result.rejected.height == 0, result.rejected["detail"].to_list()
    if stored is not None:
        assert result.events[name][0] == stored


@pytest.mark.parametrize("value", ["lesson_done", "", "Quiz_Completed", "quiz_completed "])
def test_unknown_type(value: str) -> None:
    assert reason(ev(type=value)) == "unknown_type"


def test_every_known_timezone_decodes() -> None:
    zones = sorted(known_timezones())
    assert "UTC" in zones and "Europe/Berlin" in zones and "localtime" not in zones
    result = decode([ev(event_id=f"e{i}", timezone=z) for i, z in enumerate(zones)])
    assert result.rejected.height == 0
    # independent local dates from zoneinfo
    moment = datetime(2026, 3, 10, 12, tzinfo=UTC)
    expected = [moment.astimezone(ZoneInfo(z)).date() for z in zones]
    assert result.events["date"].to_list() == expected


# --------------------------------------------------------------------------------------------
# null, alias, duplicates, nesting


def test_optional_nulls_are_absent() -> None:
    record = ev(
        cohort_id=None,
        org_id=None,
        skill=None,
        skill_area=None,
        content_id=None,
        score=None,
        duration_s=None,
        xp=None,
        session_id=None,
        timezone=None,
    )
    row = decode([record]).events.row(0, named=True)
    assert row["timezone"] == "UTC"
    for name in ("cohort_id", "org_id", "skill", "content_id", "score", "duration_s", "xp"):
        assert row[name] is None


def test_skill_area_alias() -> None:
    rows = decode(
        [
            ev(event_id="a", skill_area="geometry"),
            ev(event_id="b", skill="algebra", skill_area="geometry"),
            ev(event_id="c", skill=None, skill_area="geometry"),
            ev(event_id="d", skill="algebra", skill_area=17),  # alias ignored when skill is set
        ]
    ).events
    assert rows.select("event_id", "skill").rows() == [
        ("a", "geometry"),
        ("b", "algebra"),
        ("c", "geometry"),
        ("d", "algebra"),
    ]
    assert reason(ev(skill_area="")) == "invalid_field:skill"
    assert "skill_area" in detail(ev(skill_area=""))
    assert reason(ev(skill=5, skill_area="geometry")) == "invalid_field:skill"


def test_duplicate_keys_last_wins() -> None:
    row = decode(
        [
            '{"event_id":"e1","user_id":"u1","type":"quiz_completed","type":"level_up",'
            '"timestamp":"2026-03-10T12:00:00Z"}'
        ]
    ).events.row(0, named=True)
    assert row["type"] == "level_up"
    assert (
        reason(
            '{"event_id":"e1","user_id":"u1","type":"level_up","type":"nope",'
            '"timestamp":"2026-03-10T12:00:00Z"}'
        )
        == "unknown_type"
    )


def test_escaped_keys_and_values() -> None:
    line = (
        '{"event\\u005fid":"e\\u00e9","user_id":"u\\"1","type":"quiz_completed",'
        '"timestamp":"2026-03-10T12:00:00Z","skill":"\\ud83d\\ude00"}'
    )
    row = decode([line]).events.row(0, named=True)
    assert row["event_id"] == "eé" and row["skill"] == "😀"
    assert row["user_key"] == hmac.new(SECRET, b'u"1', hashlib.sha256).hexdigest()[:32]


def test_whitespace_and_multiline_kafka_message() -> None:
    pretty = json.dumps(ev(event_id="pretty"), indent=2)  # one Kafka message on several lines
    spaced = "  " + json.dumps(ev(event_id="spaced")) + "\t"
    crlf = json.dumps(ev(event_id="crlf")).replace(", ", ",\r\n")
    result = decode([pretty, spaced, crlf])
    assert result.events["event_id"].to_list() == ["pretty", "spaced", "crlf"]


def test_deep_nesting_never_crashes() -> None:
    shallow = orjson.dumps(ev())[:-1] + b', "zz": ' + b"[" * 200 + b"]" * 200 + b"}"
    deep = orjson.dumps(ev())[:-1] + b', "zz": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    nested_known = orjson.dumps(ev())[:-1] + b', "skill": ' + b"[" * 300 + b"]" * 300 + b"}"
    result = decode([shallow, deep, nested_known])
    assert result.events["seq"].to_list() == [0]
    assert result.rejected["reason"].to_list() == ["malformed_json", "invalid_field:skill"]


def test_big_integers_in_unknown_fields_are_fine() -> None:
    assert reason(ev(zz=2**64 + 1, yy=-(2**70), ww=1e-400)) is None


# --------------------------------------------------------------------------------------------
# precedence


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"\xff not json", "invalid_utf8"),
        ("[1, 2", "malformed_json"),
        (ev(event_id=DROP, score=500), "missing_field:event_id"),
        (ev(event_id=5, user_id=DROP), "invalid_field:event_id"),
        (ev(user_id="", type="nope"), "invalid_field:user_id"),
        (ev(type="nope", timestamp=DROP), "unknown_type"),
        (ev(type=DROP, timestamp="bad"), "missing_field:type"),
        (ev(timestamp="2026-03-10T12:00:00", cohort_id=""), "timestamp_missing_timezone"),
        (ev(timestamp="2026-03-10T25:00:00", cohort_id=""), "invalid_field:timestamp"),
        (ev(cohort_id="", org_id=""), "invalid_field:cohort_id"),
        (ev(org_id=1, skill=1), "invalid_field:org_id"),
        (ev(skill="", content_id=""), "invalid_field:skill"),
        (ev(content_id="", score=-1), "invalid_field:content_id"),
        (ev(score=101, duration_s=-1), "invalid_field:score"),
        (ev(duration_s=-1, xp=-1), "invalid_field:duration_s"),
        (ev(xp=-1, session_id=""), "invalid_field:xp"),
        (ev(session_id="", timezone="Nowhere"), "invalid_field:session_id"),
        (ev(timestamp="2030-01-01T00:00:00Z", timezone="Nowhere"), "invalid_field:timezone"),
        (ev(timestamp="2030-01-01T00:00:00Z", score=101), "invalid_field:score"),
        (ev(timestamp="2030-01-01T00:00:00Z"), "timestamp_in_future"),
    ],
)
def test_precedence(line: Line, expected: str) -> None:
    assert reason(line) == expected


def test_oversized_before_everything() -> None:
    config = Settings(max_event_bytes=60)
    assert reason(b'{"event_id": "' + b"\xff" * 80 + b'"}', config=config) == "oversized"
    assert reason(b"[" * 61, config=config) == "oversized"
    assert reason(b"\xff" * 60, config=config) == "invalid_utf8"


# --------------------------------------------------------------------------------------------
# details


def test_details_name_the_bad_value_and_are_short() -> None:
    assert detail(ev(score=150)) == "score must be a number in [0, 100], got 150.0"
    assert detail(ev(type="lesson_done")) == 'unknown event type "lesson_done"'
    assert detail(ev(user_id=DROP)) == "required field user_id is missing or null"
    assert detail(ev(xp="7")) == 'xp must be an integer in [0, 9007199254740991], got "7"'
    assert detail(ev(timezone="Mars/Base")) == (
        'timezone "Mars/Base" is not an IANA time zone name'
    )
    assert detail(ev(timestamp="2026-03-10T12:00:00")) == (
        'timestamp "2026-03-10T12:00:00" has no UTC offset; add Z or +HH:MM / -HH:MM'
    )
    assert detail(ev(timestamp="2026-04-01T01:00:00Z")) == (
        'timestamp "2026-04-01T01:00:00Z" is 3600.0 s after processing time (max_clock_skew=300 s)'
    )
    assert detail("[1]") == "the record is an array, not a JSON object"
    long_text = detail(ev(event_id="x" * 5000))
    assert long_text.startswith("event_id must be 1-128 characters, got 5000 characters")
    assert len(long_text) < 160
    assert len(detail(ev(event_id=["x" * 5000]))) < 160


# --------------------------------------------------------------------------------------------
# fast path: both paths agree on larger mixed batches, and the fast path is really used


BAD_LINES: list[Line] = [
    "not json",
    "[1]",
    b"\xff\xfe",
    ev(event_id=5),
    ev(xp=7.5),
    ev(xp=7.0),
    ev(score="1"),
    '{"score": NaN}',
    '{"a": 1}{"b": 2}',
    ev(timestamp="2026-02-30T00:00:00Z"),
    ev(type="nope"),
    '{"event_id":"d","event_id":"e"}',
    "   ",
]


def test_mixed_large_batch_both_paths_agree() -> None:
    rng = np.random.default_rng(3)
    lines: list[Line] = []
    bad = 0
    for i in range(3000):
        if rng.random() < 0.03:
            pick = int(rng.integers(len(BAD_LINES)))
            lines.append(BAD_LINES[pick])
            bad += BAD_LINES[pick] != ev(xp=7.0)  # the one accepted line among them
        else:
            lines.append(
                ev(
                    event_id=f"e{i}",
                    user_id=f"u{i % 37}",
                    score=float(rng.integers(0, 1001)) / 10,
                    xp=int(rng.integers(0, 50)),
                    timezone=["UTC", "Europe/Berlin", "Asia/Seoul"][i % 3],
                )
            )
    result = decode(lines)  # asserts fast == slow
    assert result.rejected.height == bad


def test_fast_path_chunking_and_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    # tiny chunks force several Arrow reads per batch; bad lines land in different chunks
    monkeypatch.setattr(decode_module, "_CHUNK_BYTES", 2000)
    lines: list[Line] = [ev(event_id=f"e{i}") for i in range(400)]
    for at in (0, 7, 150, 151, 399):
        lines[at] = BAD_LINES[at % len(BAD_LINES)]
    decode(lines)


def test_parallel_blocks_then_one_block_hints(monkeypatch: pytest.MonkeyPatch) -> None:
    # blocks of 256 bytes: the first read of each range runs on several Arrow blocks; a range
    # with a bad line fails there and is read again as one block for the row hint
    monkeypatch.setattr(decode_module, "_PARALLEL_BLOCK", 256)
    monkeypatch.setattr(
        decode_module, "_PARALLEL_READ", decode_module.pa_json.ReadOptions(block_size=256, use_threads=True)
    )
    clean: list[Line] = [ev(event_id=f"e{i}") for i in range(300)]
    assert decode(clean).events.height == 300
    lines = list(clean)
    for at, bad in ((3, "not json"), (120, ev(event_id=5)), (299, ev(score="1"))):
        lines[at] = bad
    result = decode(lines)  # asserts fast == slow
    assert result.rejected.height == 3
    assert sorted(result.rejected["source_ref"].str.extract(r":(\d+)$").cast(pl.Int64)) == [4, 121, 300]


def test_clean_batch_never_touches_the_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = decode_module._orjson_parse

    def spy(texts: list[str], idx: np.ndarray) -> pl.DataFrame:
        calls.append(len(texts))
        return original(texts, idx)

    monkeypatch.setattr(decode_module, "_orjson_parse", spy)
    raw = RawBatch(
        lines=[orjson.dumps(ev(event_id=f"e{i}")) for i in range(1000)],
        ref_prefix="file:/f:",
        positions=np.arange(1, 1001),
        received_at_us=NOW_US,
    )
    result = decode_batch(raw, SETTINGS, Pseudonymizer(SECRET), now_us=NOW_US, seq_start=0)
    assert result.events.height == 1000 and calls == []
    raw.lines[500] = b"oops"
    result = decode_batch(raw, SETTINGS, Pseudonymizer(SECRET), now_us=NOW_US, seq_start=0)
    assert result.events.height == 999 and calls == [1]  # only the bad line went slow


def test_generator_output_with_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    stats = write_events(path, users=20, days=5, seed=11, bad_fraction=0.1)
    lines = [line for line in path.read_bytes().split(b"\n") if line]
    # far enough in the future that no good event is in the future
    result = decode(lines, now_us=int(datetime(2027, 1, 1, tzinfo=UTC).timestamp()) * 10**6)
    assert len(lines) == stats.events
    assert result.rejected.height == stats.bad
    assert set(result.rejected["reason"]) <= {kind for kind, _ in BAD_KINDS}


# --------------------------------------------------------------------------------------------
# property: random input never raises, is fully accounted for, valid events are accepted

FIELD_NAMES = [
    "event_id",
    "user_id",
    "type",
    "timestamp",
    "cohort_id",
    "org_id",
    "skill",
    "skill_area",
    "content_id",
    "score",
    "duration_s",
    "xp",
    "session_id",
    "timezone",
    "other",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(list(EVENT_TYPES) + ["2026-03-10T12:00:00Z", "Europe/Berlin", ""]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
ZONES = ["UTC", "America/New_York", "Asia/Seoul", "Asia/Kolkata", "Australia/Sydney"]
ident = st.text(min_size=1, max_size=40)


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], int]:
    """A valid event as the producer would write it, and its expected t_us."""
    moment = draw(
        st.datetimes(
            min_value=datetime(1990, 1, 1), max_value=datetime(2026, 3, 31), timezones=st.just(UTC)
        )
    )
    offset_min = draw(st.integers(-23 * 60 - 59, 23 * 60 + 59))
    local = moment.astimezone(ZoneInfo("UTC")) + timedelta(minutes=offset_min)
    sign = "-" if offset_min < 0 else "+"
    suffix = draw(
        st.sampled_from(["Z", f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"])
    )
    if suffix in ("Z", "z"):
        local = moment
    frac = draw(st.sampled_from(["", "micro", "milli"]))
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    t_us = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    if frac == "micro":
        text += f".{local.microsecond:06d}"
    elif frac == "milli":
        text += f".{local.microsecond // 1000:03d}"
        t_us -= local.microsecond % 1000
    else:
        t_us -= local.microsecond
    record: dict[str, Any] = {
        "event_id": draw(ident),
        "user_id": draw(ident),
        "type": draw(st.sampled_from(EVENT_TYPES)),
        "timestamp": text + suffix,
    }
    optional = {
        "cohort_id": ident,
        "org_id": ident,
        "skill": ident,
        "content_id": ident,
        "score": st.floats(0, 100) | st.integers(0, 100),
        "duration_s": st.floats(0, 86400),
        "xp": st.integers(0, 10**9),
        "session_id": ident,
        "timezone": st.sampled_from(ZONES),
        "unknown": json_values,
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            record[name] = draw(strategy)
    return record, t_us


noise = st.one_of(
    st.binary(max_size=60),
    json_values.map(dumps),
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=8).map(dumps),
    st.text(max_size=40).map(lambda s: s.encode("utf-8")),
)


@hyp_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(valid_events().map(lambda e: ("valid", e)), noise.map(lambda b: ("noise", b))),
        max_size=12,
    ),
    st.integers(0, 10**6),
)
def test_property_random_input(items: list[tuple[str, Any]], seq_start: int) -> None:
    lines: list[Line] = []
    expected: dict[int, tuple[dict[str, Any], int]] = {}
    for i, (kind, item) in enumerate(items):
        if kind == "valid":
            record, t_us = item
            lines.append(dumps(record))
            expected[seq_start + i] = (record, t_us)
        else:
            lines.append(item)
    result = decode(lines, seq_start=seq_start)  # never raises; both paths agree; all accounted
    assert result.events.height + result.rejected.height == len(lines)
    accepted = {row["seq"]: row for row in result.events.iter_rows(named=True)}
    for seq, (record, t_us) in expected.items():
        assert seq in accepted, result.rejected.filter(pl.col("seq") == seq).rows()
        row = accepted[seq]
        assert row["event_id"] == record["event_id"]
        assert row["t_us"] == t_us
        assert (
            row["user_key"]
            == hmac.new(SECRET, record["user_id"].encode(), hashlib.sha256).hexdigest()[:32]
        )
        zone = record.get("timezone", "UTC")
        assert row["timezone"] == zone
        instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t_us)
        assert row["date"] == instant.astimezone(ZoneInfo(zone)).date()
        if "score" in record:
            assert row["score"] == float(record["score"])
        if "xp" in record:
            assert row["xp"] == record["xp"]
