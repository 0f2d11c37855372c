"""Hostile input through the whole file flow (SPEC §2): `learnstream run` never stops, and every
record is accounted for.

Each hypothesis example writes one or two JSONL files that mix valid events with random bytes,
deeply nested JSON, NaN/Infinity, huge numbers, impossible dates and offsets, wrong JSON types,
over-long strings, invalid UTF-8, blank lines, duplicates and late events, runs the whole flow
in-process (`learnstream.cli.main`) with a small random batch size, and checks the outputs against
an oracle built here from how each line was made:

- the run ends with status 0 and one `pipeline_runs` row; records_in = non-blank lines =
  accepted + rejected + duplicates + late, and each term equals the oracle's count;
- `rejected_events` has exactly one row per rejected line, `source_ref = file:<path>:<line>`
  (lines counted from 1 in each file, blank lines included), the original bytes in `payload`
  (UTF-8 text, or base64 when not UTF-8) and, for every line made with a known fault, the reason
  SPEC §2 / `operators.decode` precedence gives it;
- `late_events` holds exactly the late lines; `user_daily.events` sums to `accepted`.

How the oracle knows each valid line's fate without re-implementing the pipeline:

- *window* events have event times in [2026-03-10 12:00Z, 13:00Z) and zones whose offsets keep
  that hour on local 2026-03-10 well before local midnight (UTC-10..UTC+10 in March). The watermark
  never passes 13:00Z - 5 min, and local 2026-03-10 ends (plus `allowed_lateness=1h`) at 15:00Z at
  the earliest (UTC+10), so a window event is never late, at admission or in its user's series.
- *late candidates* are at 2026-03-08 12:xxZ in UTC. Local 2026-03-08 closes at 03-09 01:00Z
  (with lateness), so a candidate is late exactly when a window event came before it in file order
  (watermark >= 03-10 11:55Z); before every window event it is accepted (and the watermark it sets,
  03-08 12:xx - 5 min, makes no later candidate late).
- *duplicates* repeat the event_id of an earlier window event (same or changed content, same event
  time): within `dedup_horizon`, so always a duplicate.
- random bytes get their reason from an independent classifier for the first four reasons
  (size, UTF-8, strict JSON with Python's `json`, object or not); a random JSON object only has to
  be rejected for one of its fields.
"""

from __future__ import annotations

import base64
import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from learnstream.cli import main
from schemas.events import EVENT_TYPES, INPUT_FIELDS
from tests.outputs import read_parquet_table as read_table

SECRET = "hostile-test-secret"
MAX_EVENT_BYTES = 65536
WINDOW_START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
WINDOW_US = 3_600_000_000
LATE_START = datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
#: offsets on 2026-03-10 between UTC-10 and UTC+10 (see the module docstring); None = field absent
ZONES = (
    None,
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Pacific/Honolulu",
    "Australia/Brisbane",
)
FIELD_REASON_PREFIXES = ("missing_field:", "invalid_field:")
FIELD_REASONS = ("unknown_type", "timestamp_missing_timezone", "timestamp_in_future")


# ---------------------------------------------------------------------------------------------
# the oracle's view of a line


@dataclass
class Line:
    raw: bytes
    #: "window", "late", "duplicate", "bad" (known reason), "random" (reason from the classifier),
    #: "blank" (not a record)
    kind: str
    reason: str | None = None


@dataclass
class Expected:
    records: int
    accepted: int
    duplicates: int
    late_refs: set[str]
    #: source_ref -> (reason or None when any field-level reason will do, raw bytes)
    rejected: dict[str, tuple[str | None, bytes]]


def is_blank(raw: bytes) -> bool:
    """What the file source skips (README: blank lines are not records)."""
    return raw in (b"", b"\r")


def _strict_json(text: str) -> Any:
    """Parse like `operators.decode` reads a record: RFC 8259, no NaN/Infinity literals, no lone
    surrogate escapes (\\ud800 is not Unicode text; orjson refuses it). A number beyond the
    double range (1e400, 400 digits) is still a number (decode's reading of RFC 8259 §6: range is
    left to the implementation; the field's range check or the unknown-field rule decides).
    """

    def no_constant(name: str) -> Any:
        raise ValueError(f"non-standard literal {name}")

    def check_strings(value: Any) -> None:
        if isinstance(value, str):
            value.encode("utf-8")  # lone surrogates raise
        elif isinstance(value, list):
            for item in value:
                check_strings(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                check_strings(key)
                check_strings(item)

    parsed = json.loads(text, parse_constant=no_constant)
    check_strings(parsed)
    return parsed


def classify_random(raw: bytes) -> str | None:
    """Reason for an arbitrary byte string; None when it is a JSON object (a field is at fault)."""
    if len(raw) > MAX_EVENT_BYTES:
        return "oversized"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        value = _strict_json(text)
    except (ValueError, RecursionError):
        return "malformed_json"
    if not isinstance(value, dict):
        return "not_an_object"
    return None


def expected_fates(files: list[tuple[Path, list[Line]]]) -> Expected:
    """Walk every line in source order (files in the order given) and decide its fate."""
    records = accepted = duplicates = 0
    late_refs: set[str] = set()
    rejected: dict[str, tuple[str | None, bytes]] = {}
    window_seen = False
    for path, lines in files:
        for number, line in enumerate(lines, start=1):
            if is_blank(line.raw):
                continue
            records += 1
            ref = f"file:{path}:{number}"
            if line.kind == "window":
                accepted += 1
                window_seen = True
            elif line.kind == "late":
                if window_seen:
                    late_refs.add(ref)
                else:
                    accepted += 1
            elif line.kind == "duplicate":
                duplicates += 1
            elif line.kind == "bad":
                rejected[ref] = (line.reason, line.raw)
            else:
                assert line.kind == "random", line.kind
                rejected[ref] = (classify_random(line.raw), line.raw)
    return Expected(records, accepted, duplicates, late_refs, rejected)


# ---------------------------------------------------------------------------------------------
# building lines


def format_timestamp(instant: datetime, offset_min: int, precision: int, extra: int, style: int) -> str:
    """RFC 3339 text of `instant` written in another offset, with 0/3/6/9 fraction digits.

    Nine digits append `extra` nanoseconds, which decode truncates (the instant is unchanged).
    `style` picks the separator and the UTC designator (`T`/`t`/space, `Z`/`z`/`+00:00`).
    """
    local = instant + timedelta(minutes=offset_min)
    sep = "Tt "[style % 3]
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    micro = instant.microsecond
    if precision == 3:
        text += f".{micro // 1000:03d}"
    elif precision == 6:
        text += f".{micro:06d}"
    elif precision == 9:
        text += f".{micro:06d}{extra:03d}"
    if offset_min == 0 and style % 2 == 0:
        return text + ("Z" if style < 3 else "z")
    sign = "+" if offset_min >= 0 else "-"
    hours, minutes = divmod(abs(offset_min), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def _truncate(instant: datetime, precision: int) -> datetime:
    micro = instant.microsecond
    keep = {0: 0, 3: micro // 1000 * 1000}.get(precision, micro)
    return instant.replace(microsecond=keep)


user_ids = st.sampled_from(["u1", "u2", "ü-3", "用户4", 'quote"5', "tab\t6", "x" * 256])
short_text = st.text(min_size=1, max_size=12)


@st.composite
def timestamps(draw: st.DrawFn, start: datetime) -> str:
    instant = start + timedelta(microseconds=draw(st.integers(0, WINDOW_US - 1)))
    precision = draw(st.sampled_from([0, 3, 6, 9]))
    instant = _truncate(instant, precision)
    offset = draw(st.one_of(st.just(0), st.integers(-(23 * 60 + 59), 23 * 60 + 59)))
    return format_timestamp(
        instant, offset, precision, draw(st.integers(0, 999)), draw(st.integers(0, 5))
    )


def nested(depth: int) -> Any:
    value: Any = {"leaf": [1, "two", None, True]}
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@st.composite
def valid_events(draw: st.DrawFn, event_id: str) -> dict[str, Any]:
    """A valid SPEC §1 event in the window; optional fields present, null or absent."""
    event: dict[str, Any] = {
        "event_id": event_id,
        "user_id": draw(user_ids),
        "type": draw(st.sampled_from(EVENT_TYPES)),
        "timestamp": draw(timestamps(WINDOW_START)),
    }
    optional: dict[str, st.SearchStrategy[Any]] = {
        "cohort_id": st.text(min_size=1, max_size=128),
        "org_id": short_text,
        "skill": short_text,
        "content_id": st.text(min_size=1, max_size=256),
        "score": st.one_of(st.integers(0, 100), st.floats(0, 100, allow_nan=False)),
        "duration_s": st.one_of(st.integers(0, 86400), st.floats(0, 86400, allow_nan=False)),
        "xp": st.one_of(st.integers(0, 2**53 - 1), st.sampled_from([0.0, 7.0, 1e15])),
        "session_id": short_text,
        "timezone": st.sampled_from(ZONES),
    }
    for name, values in optional.items():
        choice = draw(st.sampled_from(["absent", "null", "value", "value"]))
        if choice == "null":
            event[name] = None
        elif choice == "value":
            event[name] = draw(values)
    if event.get("timezone") is None:
        event.pop("timezone", None)
    if "skill" in event and draw(st.booleans()):
        event["skill_area"] = event.pop("skill")  # the alias
    # unknown fields are dropped: nesting within orjson's depth limit, huge doubles, unicode
    extras = draw(st.sampled_from(["none", "nested", "numbers", "text"]))
    if extras == "nested":
        event["extra"] = nested(draw(st.integers(1, 200)))
    elif extras == "numbers":
        event["big"] = [1e308, -1e308, 2**63, -(2**63), 5e-324, 18446744073709551616]
    elif extras == "text":
        event["note"] = draw(st.text(max_size=50))
    keys = list(event)
    draw(st.randoms(use_true_random=False)).shuffle(keys)
    return {k: event[k] for k in keys}


def dumps(event: dict[str, Any], *, ascii_only: bool = True) -> bytes:
    return json.dumps(event, ensure_ascii=ascii_only, separators=(",", ":")).encode("utf-8")


def _set(name: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda e: {**e, name: value}


def _drop(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda e: {k: v for k, v in e.items() if k != name}


def _raw(name: str, literal: bytes) -> Callable[[dict[str, Any]], bytes]:
    """Serialise with `name` set to a raw JSON text (NaN, 1e400, ...)."""
    marker = "\u0001RAW\u0001"

    def make(e: dict[str, Any]) -> bytes:
        return dumps({**e, name: marker}).replace(
            json.dumps(marker).encode(), literal
        )

    return make


def _huge_first(huge: bytes, name: str, literal: bytes) -> Callable[[dict[str, Any]], bytes]:
    """A first (unknown) field holding a number beyond the double range, then `name` set to a
    raw JSON text: the parser meets the huge number before the fault in `literal`."""

    def make(e: dict[str, Any]) -> bytes:
        return _raw(name, literal)({"big": 1, **e}).replace(b'"big":1', b'"big":' + huge, 1)

    return make


Mutation = tuple[str, Callable[[dict[str, Any]], Any], str]

#: (name, mutation of a valid event -> dict or raw bytes, expected reason)
MUTATIONS: list[Mutation] = [
    *[(f"drop {f}", _drop(f), f"missing_field:{f}") for f in ("event_id", "user_id", "type", "timestamp")],
    *[(f"null {f}", _set(f, None), f"missing_field:{f}") for f in ("event_id", "user_id", "type", "timestamp")],
    ("event_id 129 chars", _set("event_id", "e" * 129), "invalid_field:event_id"),
    ("event_id empty", _set("event_id", ""), "invalid_field:event_id"),
    ("event_id number", _set("event_id", 12345), "invalid_field:event_id"),
    ("user_id 257 chars", _set("user_id", "u" * 257), "invalid_field:user_id"),
    ("user_id list", _set("user_id", ["u1"]), "invalid_field:user_id"),
    ("user_id object", _set("user_id", {"id": "u1"}), "invalid_field:user_id"),
    ("type unknown", _set("type", "video_watched"), "unknown_type"),
    ("type number", _set("type", 3), "invalid_field:type"),
    ("type bool", _set("type", False), "invalid_field:type"),
    ("timestamp Feb 30", _set("timestamp", "2026-02-30T12:00:00Z"), "invalid_field:timestamp"),
    ("timestamp hour 24", _set("timestamp", "2026-03-10T24:00:00Z"), "invalid_field:timestamp"),
    ("timestamp minute 60", _set("timestamp", "2026-03-10T12:60:00Z"), "invalid_field:timestamp"),
    ("timestamp leap second", _set("timestamp", "2026-03-10T23:59:60Z"), "invalid_field:timestamp"),
    ("timestamp month 13", _set("timestamp", "2026-13-10T12:00:00Z"), "invalid_field:timestamp"),
    ("timestamp year 0", _set("timestamp", "0000-03-10T12:00:00Z"), "invalid_field:timestamp"),
    ("offset +24:00", _set("timestamp", "2026-03-10T12:00:00+24:00"), "invalid_field:timestamp"),
    ("offset -12:60", _set("timestamp", "2026-03-10T12:00:00-12:60"), "invalid_field:timestamp"),
    ("offset +5", _set("timestamp", "2026-03-10T12:00:00+5"), "invalid_field:timestamp"),
    ("offset +0530", _set("timestamp", "2026-03-10T12:00:00+0530"), "invalid_field:timestamp"),
    ("date only", _set("timestamp", "2026-03-10"), "invalid_field:timestamp"),
    ("epoch number", _set("timestamp", 1773144000), "invalid_field:timestamp"),
    ("timestamp empty", _set("timestamp", ""), "invalid_field:timestamp"),
    ("no offset", _set("timestamp", "2026-03-10T12:00:00"), "timestamp_missing_timezone"),
    ("no offset, fraction", _set("timestamp", "2026-03-10T12:00:00.123456"), "timestamp_missing_timezone"),
    ("year 2999", _set("timestamp", "2999-03-10T12:00:00Z"), "timestamp_in_future"),
    ("year 9998", _set("timestamp", "9998-12-30T23:00:00-05:00"), "timestamp_in_future"),
    ("cohort_id empty", _set("cohort_id", ""), "invalid_field:cohort_id"),
    ("cohort_id 129", _set("cohort_id", "c" * 129), "invalid_field:cohort_id"),
    ("org_id number", _set("org_id", 7), "invalid_field:org_id"),
    ("skill 129", _set("skill", "s" * 129), "invalid_field:skill"),
    ("content_id 257", _set("content_id", "c" * 257), "invalid_field:content_id"),
    ("score 100.5", _set("score", 100.5), "invalid_field:score"),
    ("score -1", _set("score", -1), "invalid_field:score"),
    ("score string", _set("score", "90"), "invalid_field:score"),
    ("score bool", _set("score", True), "invalid_field:score"),
    ("score 1e308", _set("score", 1e308), "invalid_field:score"),
    ("duration 86401", _set("duration_s", 86401), "invalid_field:duration_s"),
    ("duration -0.5", _set("duration_s", -0.5), "invalid_field:duration_s"),
    ("xp 1.5", _set("xp", 1.5), "invalid_field:xp"),
    ("xp -1", _set("xp", -1), "invalid_field:xp"),
    ("xp 2^53", _set("xp", 2**53), "invalid_field:xp"),
    ("xp 2^64", _set("xp", 2**64), "invalid_field:xp"),
    ("session_id 129", _set("session_id", "s" * 129), "invalid_field:session_id"),
    ("timezone Mars", _set("timezone", "Mars/Olympus"), "invalid_field:timezone"),
    ("timezone empty", _set("timezone", ""), "invalid_field:timezone"),
    ("timezone number", _set("timezone", 1), "invalid_field:timezone"),
    # numbers beyond the double range are numbers: out of the field's range
    ("score 1e400", _raw("score", b"1e400"), "invalid_field:score"),
    ("duration_s -1e999", _raw("duration_s", b"-1e999"), "invalid_field:duration_s"),
    ("xp 400 digits", _raw("xp", b"9" * 400), "invalid_field:xp"),
    # not JSON: these literals; a lone surrogate escape (also next to a huge number, which
    # makes decode re-read the line with another parser)
    ("score NaN", _raw("score", b"NaN"), "malformed_json"),
    ("score Infinity", _raw("score", b"Infinity"), "malformed_json"),
    ("score -Infinity", _raw("score", b"-Infinity"), "malformed_json"),
    ("lone surrogate", _raw("event_id", b'"\\ud800"'), "malformed_json"),
    ("lone surrogate, unknown field", _raw("zzz", b'"a\\udc00"'), "malformed_json"),
    ("huge number + lone surrogate", _huge_first(b"1e400", "event_id", b'"\\ud800"'), "malformed_json"),
    ("huge number + lone surrogate, unknown", _huge_first(b"9" * 400, "zzz", b'"\\udfff"'), "malformed_json"),
    ("nested 1100 deep", _raw("extra", b"[" * 1100 + b"]" * 1100), "malformed_json"),
    ("truncated", lambda e: dumps(e)[: max(1, len(dumps(e)) // 2)], "malformed_json"),
    ("two objects", lambda e: dumps(e) + dumps(e), "malformed_json"),
    ("trailing garbage", lambda e: dumps(e) + b" ,", "malformed_json"),
    ("single quotes", lambda e: dumps(e).replace(b'"', b"'"), "malformed_json"),
    ("byte order mark", lambda e: b"\xef\xbb\xbf" + dumps(e), "malformed_json"),
    ("in an array", lambda e: b"[" + dumps(e) + b"]", "not_an_object"),
    ("as a string", lambda e: json.dumps(dumps(e).decode()).encode(), "not_an_object"),
    ("invalid UTF-8 in a value", _raw("cohort_id", b'"\xc3\x28"'), "invalid_utf8"),
    ("UTF-8 surrogate bytes", _raw("user_id", b'"\xed\xa0\x80"'), "invalid_utf8"),
    ("oversized", _set("pad", "p" * (MAX_EVENT_BYTES + 1)), "oversized"),
    # precedence (decode docstring / README): first fault in this order wins
    ("oversized + NaN", lambda e: _raw("score", b"NaN")({**e, "pad": "p" * MAX_EVENT_BYTES}), "oversized"),
    ("invalid UTF-8 + NaN", lambda e: _raw("score", b"NaN")({**e, "pad": "\udcff"}).replace(b'"\\udcff"', b'"\xff"'), "invalid_utf8"),
    ("missing event_id + bad score", lambda e: {**_drop("event_id")(e), "score": "x"}, "missing_field:event_id"),
    ("bad user_id + unknown type", lambda e: {**e, "user_id": "", "type": "nope"}, "invalid_field:user_id"),
    ("unknown type + no offset", lambda e: {**e, "type": "nope", "timestamp": "2026-03-10T12:00:00"}, "unknown_type"),
    ("no offset + bad score", lambda e: {**e, "timestamp": "2026-03-10T12:00:00", "score": 101}, "timestamp_missing_timezone"),
    ("future + bad timezone", lambda e: {**e, "timestamp": "2999-01-01T00:00:00Z", "timezone": "Nowhere"}, "invalid_field:timezone"),
]


def bad_line(event: dict[str, Any], mutation: Mutation) -> Line:
    _, mutate, reason = mutation
    made = mutate(event)
    raw = made if isinstance(made, bytes) else dumps(made)
    assert b"\n" not in raw
    return Line(raw, "bad", reason)


random_bytes = st.binary(max_size=120).map(lambda b: b.replace(b"\n", b""))
json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
).map(lambda v: json.dumps(v).encode())


@st.composite
def hostile_inputs(draw: st.DrawFn) -> tuple[list[list[Line]], bool, int]:
    """Lines (split over one or two files), whether the files end with a newline, batch size."""
    n = draw(st.integers(1, 14))
    lines: list[Line] = []
    window_raw: list[tuple[str, bytes]] = []
    for i in range(n):
        kind = draw(
            st.sampled_from(["window", "window", "late", "duplicate", "bad", "bad", "bad", "random", "junk", "blank"])
        )
        if kind == "window":
            event_id = f"w{i}-" + draw(st.text(max_size=6))
            event = draw(valid_events(event_id))
            raw = dumps(event, ascii_only=draw(st.booleans()))
            if draw(st.integers(0, 5)) == 0:  # an unknown field beyond the double range: dropped
                huge = draw(st.sampled_from([b"1e400", b"-1e999", b"9" * 400, b"-" + b"7" * 320]))
                raw = _raw("huge_unknown", huge)(event)
            if draw(st.booleans()):
                raw += b"\r"  # a CRLF file
            window_raw.append((event_id, raw))
            lines.append(Line(raw, "window"))
        elif kind == "late":
            event = {
                "event_id": f"late{i}",
                "user_id": draw(user_ids),
                "type": "lesson_completed",
                "timestamp": draw(timestamps(LATE_START)),
            }
            if draw(st.booleans()):
                event["timezone"] = "UTC"
            lines.append(Line(dumps(event), "late"))
        elif kind == "duplicate" and window_raw:
            event_id, raw = draw(st.sampled_from(window_raw))
            if draw(st.booleans()):  # same id and time, other content: still a duplicate
                changed = json.loads(raw)
                changed.pop("huge_unknown", None)  # Python reads 1e400 as inf, writes Infinity
                changed["score"] = 1
                changed["user_id"] = "someone-else"
                raw = dumps(changed)
            lines.append(Line(raw, "duplicate"))
        elif kind == "bad":
            event = draw(valid_events(f"b{i}"))
            lines.append(bad_line(event, draw(st.sampled_from(MUTATIONS))))
        elif kind == "random":
            lines.append(Line(draw(random_bytes), "random"))
        elif kind == "junk":
            lines.append(Line(draw(json_junk), "random"))
        else:
            lines.append(Line(draw(st.sampled_from([b"", b"\r"])), "blank"))
    if all(is_blank(line.raw) for line in lines):
        lines.append(Line(b"{}", "random"))
    split = draw(st.integers(0, len(lines))) if draw(st.booleans()) else len(lines)
    files = [lines[:split], lines[split:]] if 0 < split < len(lines) else [lines]
    return files, draw(st.booleans()), draw(st.integers(1, 6))


# ---------------------------------------------------------------------------------------------
# running and reading


def write_files(base: Path, files: list[list[Line]], trailing_newline: bool) -> list[tuple[Path, list[Line]]]:
    written = []
    for i, lines in enumerate(files):
        path = base / f"input-{i}.jsonl"
        data = b"\n".join(line.raw for line in lines)
        if trailing_newline:
            data += b"\n"
        path.write_bytes(data)
        written.append((path, lines))
    return written


def run_cli(paths: list[Path], out: Path, batch_size: int) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
        mp.setenv("LEARNSTREAM_BATCH_SIZE", str(batch_size))
        return main(["run", "--source", "file:" + ",".join(map(str, paths)), "--out", str(out)])


def duckdb_count(out: Path, name: str) -> int:
    con = duckdb.connect(str(out / "learnstream.duckdb"), read_only=True)
    try:
        row = con.execute(f"SELECT count(*) FROM {name}").fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0])


def payload_bytes(payload: str, raw: bytes) -> bytes:
    """The original bytes a dead letter keeps: its text, or base64 when the line is not UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64decode(payload)
    return payload.encode("utf-8")


def check_run(files: list[tuple[Path, list[Line]]], out: Path) -> dict[str, Any]:
    """Every assertion of the module docstring; returns the pipeline_runs row."""
    expected = expected_fates(files)
    runs = read_table(out, "pipeline_runs")
    assert len(runs) == 1, runs
    run = runs.row(0, named=True)
    assert run["records_in"] == expected.records
    assert run["records_in"] == run["accepted"] + run["rejected"] + run["duplicates"] + run["late"]
    rejected = read_table(out, "rejected_events")
    assert rejected["source_ref"].n_unique() == len(rejected)
    missing = {ref: expected.rejected[ref] for ref in set(expected.rejected) - set(rejected["source_ref"])}
    assert not missing, f"lines that should have been rejected were not: {missing}"
    assert set(rejected["source_ref"]) == set(expected.rejected)
    assert duckdb_count(out, "rejected_events") == len(rejected)
    for row in rejected.iter_rows(named=True):
        reason, raw = expected.rejected[row["source_ref"]]
        if reason is None:
            assert row["reason"].startswith(FIELD_REASON_PREFIXES) or row["reason"] in FIELD_REASONS, row
        else:
            assert row["reason"] == reason, (row["reason"], reason, raw[:200])
        assert payload_bytes(row["payload"], raw) == raw, row["source_ref"]
        assert row["detail"], row

    late = read_table(out, "late_events")
    assert set(late["source_ref"]) == expected.late_refs
    assert len(late) == len(expected.late_refs)

    counts = (run["accepted"], run["rejected"], run["duplicates"], run["late"])
    assert counts == (
        expected.accepted,
        len(expected.rejected),
        expected.duplicates,
        len(expected.late_refs),
    )
    daily = read_table(out, "user_daily")
    assert int(daily["events"].sum()) == expected.accepted
    return run


# ---------------------------------------------------------------------------------------------
# properties


def describe(files: list[list[Line]]) -> str:
    return "\n".join(
        f"file {i} line {n}: {line.kind} {line.reason or ''} {line.raw[:160]!r}"
        for i, lines in enumerate(files)
        for n, line in enumerate(lines, start=1)
    )


# No shrinking: every example is a whole flow run, and shrinking a failure would take minutes.
# A failure names every line of the example instead (`describe`).
@settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(hostile_inputs())
def test_every_record_is_accounted_for_with_the_right_reason(
    case: tuple[list[list[Line]], bool, int],
) -> None:
    files, trailing_newline, batch_size = case
    with tempfile.TemporaryDirectory(prefix="hostile-") as name:
        base = Path(name)
        written = write_files(base, files, trailing_newline)
        try:
            assert run_cli([p for p, _ in written], base / "out", batch_size) == 0
            check_run(written, base / "out")
        except BaseException as exc:
            raise AssertionError(f"{exc}\nbatch size {batch_size}; input:\n{describe(files)}") from exc


def test_every_mutation_once_in_one_run(tmp_path: Path) -> None:
    """Each known fault at least once (hypothesis samples only some per run), in batches of 7."""
    rng = random.Random(11)
    lines: list[Line] = []
    for i, mutation in enumerate(MUTATIONS):
        event = {
            "event_id": f"m{i}",
            "user_id": "u1",
            "type": "quiz_completed",
            "timestamp": format_timestamp(WINDOW_START + timedelta(seconds=i), 0, 0, 0, 0),
            "score": 50,
            "cohort_id": "c1",
            "org_id": "o1",
            "skill": "algebra",
            "content_id": "q1",
            "session_id": "s1",
            "xp": 5,
            "duration_s": 30,
            "timezone": "UTC",
        }
        lines.append(bad_line(event, mutation))
        if rng.random() < 0.3:
            lines.append(Line(dumps({**event, "event_id": f"ok{i}"}), "window"))
    assert {m[2] for m in MUTATIONS} >= {
        "oversized", "invalid_utf8", "malformed_json", "not_an_object", "unknown_type",
        "timestamp_missing_timezone", "timestamp_in_future",
        *(f"missing_field:{f}" for f in ("event_id", "user_id", "type", "timestamp")),
        *(f"invalid_field:{f}" for f in INPUT_FIELDS),
    }
    written = write_files(tmp_path, [lines], trailing_newline=True)
    assert run_cli([written[0][0]], tmp_path / "out", 7) == 0
    run = check_run(written, tmp_path / "out")
    assert run["rejected"] == len(MUTATIONS)


def test_big_mixed_file_with_huge_lines_and_garbage(tmp_path: Path) -> None:
    """Generated events (bad records and duplicates included) interleaved with hostile lines: a
    17 MB line (longer than the file reader's 16 MiB chunk), random binary, deep nesting, blank
    and CR-only lines; several files; batches of 997 records."""
    from sources.generator import write_events

    generated = tmp_path / "generated.jsonl"
    write_events(generated, users=40, days=4, seed=13, bad_fraction=0.03, duplicate_fraction=0.03)
    rng = random.Random(5)
    huge = (b'{"pad":"' + b"x" * (17 * 2**20) + b'"}', "oversized")
    hostile: list[tuple[bytes, str | None]] = [
        (b"\xff" * 70_000, "oversized"),
        (b"[" * 100_000 + b"]" * 100_000, "oversized"),
        (b"[" * 30_000 + b"]" * 30_000, "malformed_json"),
        (b'{"a":' * 2000 + b"1" + b"}" * 2000, "malformed_json"),
        (b"NaN", "malformed_json"),
        (b"\x00\x01\x02", "malformed_json"),
        (b"\xc0\xaf", "invalid_utf8"),
        (b"123456789012345678901234567890", "not_an_object"),
        (b"{}", "missing_field:event_id"),
        (b"\r\r", "malformed_json"),
    ]
    lines: list[Line] = []
    generated_lines = generated.read_bytes().split(b"\n")
    if generated_lines[-1] == b"":
        generated_lines.pop()
    for raw in generated_lines:
        if rng.random() < 0.01:
            raw_bad, reason = rng.choice(hostile)
            lines.append(Line(raw_bad, "bad", reason))
        if rng.random() < 0.005:
            lines.append(Line(rng.choice([b"", b"\r"]), "blank"))
        if rng.random() < 0.005:
            lines.append(Line(rng.randbytes(rng.randint(1, 300)).replace(b"\n", b""), "random"))
        lines.append(Line(raw, "generated"))
    for raw_bad, reason in [huge, *hostile]:  # every one at least once
        lines.append(Line(raw_bad, "bad", reason))
    third = len(lines) // 3
    files = [lines[:third], lines[third : 2 * third], lines[2 * third :]]
    written = write_files(tmp_path, files, trailing_newline=False)
    assert run_cli([p for p, _ in written], tmp_path / "out", 997) == 0

    # generated lines have fates this oracle does not model: check totals and the hostile lines
    records = [
        (f"file:{path}:{n}", line)
        for path, file_lines in written
        for n, line in enumerate(file_lines, start=1)
        if not is_blank(line.raw)
    ]
    runs = read_table(tmp_path / "out", "pipeline_runs")
    assert len(runs) == 1
    run = runs.row(0, named=True)
    assert run["records_in"] == len(records)
    assert run["records_in"] == run["accepted"] + run["rejected"] + run["duplicates"] + run["late"]
    assert run["duplicates"] > 0 and run["accepted"] > 0
    rejected = read_table(tmp_path / "out", "rejected_events")
    assert len(rejected) == run["rejected"] == rejected["source_ref"].n_unique()
    by_ref = {row["source_ref"]: row for row in rejected.iter_rows(named=True)}
    for ref, line in records:
        if line.kind == "bad":
            assert by_ref[ref]["reason"] == line.reason, (ref, line.raw[:100])
            assert payload_bytes(by_ref[ref]["payload"], line.raw) == line.raw
        elif line.kind == "random":
            reason = classify_random(line.raw)
            assert ref in by_ref
            if reason is not None:
                assert by_ref[ref]["reason"] == reason
    assert set(by_ref) <= {ref for ref, _ in records}
    assert int(read_table(tmp_path / "out", "user_daily")["events"].sum()) == run["accepted"]


def test_only_garbage_runs_to_the_end(tmp_path: Path) -> None:
    """1 MB of random bytes: every non-blank line rejected, nothing accepted, no watermark."""
    rng = random.Random(99)
    data = rng.randbytes(1_000_000)
    path = tmp_path / "garbage.bin"
    path.write_bytes(data)
    lines = [Line(raw, "random") for raw in data.split(b"\n")]
    assert run_cli([path], tmp_path / "out", 500) == 0
    run = check_run([(path, lines)], tmp_path / "out")
    assert run["accepted"] == 0 and run["watermark"] is None
    assert run["rejected"] == sum(1 for line in lines if not is_blank(line.raw)) > 3000


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n\n\r\n"], ids=["empty", "newline", "blank-lines"])
def test_input_without_records_still_reports_its_run(tmp_path: Path, content: bytes) -> None:
    """SPEC §2: the accounting is reported per run, also for a run that read no record."""
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    assert run_cli([path], tmp_path / "out", 10) == 0
    runs = read_table(tmp_path / "out", "pipeline_runs")
    assert len(runs) == 1
    run = runs.row(0, named=True)
    assert (run["records_in"], run["accepted"], run["rejected"], run["duplicates"], run["late"]) == (0, 0, 0, 0, 0)


def test_classifier_agrees_with_hand_made_cases() -> None:
    """The oracle itself, on cases worked out by hand from RFC 8259 and SPEC §2."""
    assert classify_random(b"\xff") == "invalid_utf8"
    assert classify_random(b"x" * (MAX_EVENT_BYTES + 1)) == "oversized"
    assert classify_random(b"\xff" * (MAX_EVENT_BYTES + 1)) == "oversized"
    assert classify_random(b"NaN") == "malformed_json"
    assert classify_random(b'{"a":1e400}') is None
    assert classify_random(b'{"a":1,"b":"\\udfff"}') == "malformed_json"
    assert classify_random(b'["\\ud800"]') == "malformed_json"
    assert classify_random(b"  ") == "malformed_json"
    assert classify_random(b"[1]") == "not_an_object"
    assert classify_random(b"null") == "not_an_object"
    assert classify_random(b'{"a":18446744073709551616}') is None
    assert classify_random(b"{}\r") is None
    assert is_blank(b"\r") and is_blank(b"") and not is_blank(b" ")
    # timestamps written in another offset denote the same instant
    instant = datetime(2026, 3, 10, 12, 30, 15, 250000, tzinfo=UTC)
    text = format_timestamp(instant, -(9 * 60 + 30), 6, 0, 1)
    assert text == "2026-03-10t03:00:15.250000-09:30"
    assert datetime.fromisoformat(text.replace("t", "T")) == instant
