"""`learnstream run` end to end on files: generated data, the EdNet sample, CLI errors."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest

from learnstream.cli import main
from schemas.tables import TABLES
from tests.outputs import read_parquet_table as read_table
from tests.realdata import DATA_DIR, ednet_events, ednet_expected, write_jsonl

SECRET = "e2e-secret"


def key_of(user_id: str) -> str:
    return hmac.new(SECRET.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("gen")
    events = base / "events.jsonl"
    assert main(["generate", "--users", "150", "--days", "21", "--seed", "3", "--out", str(events),
                 "--bad-fraction", "0.02", "--duplicate-fraction", "0.01"]) == 0
    out = base / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
        mp.setenv("LEARNSTREAM_BATCH_SIZE", "2000")  # several micro-batches, days close mid-run
        assert main(["run", "--source", f"file:{events}", "--out", str(out)]) == 0
    return events, out


def test_accounting_invariant_and_one_row_per_key(generated_run: tuple[Path, Path]) -> None:
    events, out = generated_run
    lines = [ln for ln in events.read_bytes().split(b"\n") if ln not in (b"", b"\r")]
    runs = read_table(out, "pipeline_runs")
    assert len(runs) == 1
    run = runs.row(0, named=True)
    assert run["records_in"] == len(lines)
    assert run["records_in"] == run["accepted"] + run["rejected"] + run["duplicates"] + run["late"]
    assert run["duplicates"] > 0 and run["rejected"] > 0
    assert run["rejected"] == len(read_table(out, "rejected_events"))
    assert run["late"] == len(read_table(out, "late_events"))
    assert run["alerts"] == len(read_table(out, "alerts"))
    con = duckdb.connect(str(out / "learnstream.duckdb"), read_only=True)
    for name, table in TABLES.items():
        frame = read_table(out, name)
        assert frame.select(table.key).is_duplicated().sum() == 0, name
        db_rows = con.execute(f"SELECT count(*), count(DISTINCT ({', '.join(table.key)})) FROM {name}").fetchone()
        assert db_rows == (len(frame), len(frame)), name
    con.close()


def test_user_daily_matches_an_independent_count(generated_run: tuple[Path, Path]) -> None:
    events, out = generated_run
    run = read_table(out, "pipeline_runs").row(0, named=True)
    daily = read_table(out, "user_daily")
    # every accepted event lands in exactly one user-day
    assert int(daily["events"].sum()) == run["accepted"]
    # independent: parse the valid lines with polars, keep first event_id, local day per zone
    good = []
    for raw in events.read_bytes().split(b"\n"):
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("type") == "lesson_completed" and isinstance(rec.get("user_id"), str):
            good.append(rec)
    assert good
    lessons = int(daily["lessons_completed"].sum())
    # lessons in the output never exceed the raw lesson lines (duplicates/rejects removed)
    assert 0 < lessons <= len(good)


def test_no_raw_user_id_in_any_output(generated_run: tuple[Path, Path]) -> None:
    _, out = generated_run
    for name in TABLES:
        if name == "rejected_events":
            continue  # the restricted dead-letter payload is the one place raw input survives
        frame = read_table(out, name)
        for column, dtype in frame.schema.items():
            if dtype == pl.String:
                assert not frame[column].str.contains("user-").any(), (name, column)


def test_every_rejection_reason_has_its_stable_string(generated_run: tuple[Path, Path]) -> None:
    _, out = generated_run
    rejected = read_table(out, "rejected_events")
    reasons = set(rejected["reason"].str.replace(r":.*$", ""))
    assert reasons <= {"malformed_json", "not_an_object", "invalid_utf8", "oversized", "missing_field",
                       "invalid_field", "unknown_type", "timestamp_missing_timezone", "timestamp_in_future"}
    assert rejected["source_ref"].str.contains(r"^file:.*:\d+$").all()


def test_ednet_sample_streaks_and_daily_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = tmp_path / "ednet.jsonl"
    write_jsonl(ednet_events(DATA_DIR), events)
    monkeypatch.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
    out = tmp_path / "out"
    assert main(["run", "--source", f"file:{events}", "--out", str(out)]) == 0
    expected = ednet_expected(DATA_DIR)
    daily = read_table(out, "user_daily")
    state = read_table(out, "user_state")
    checked = 0
    for user in ("u1", "u4", "u7", "u9"):
        want = expected["user_daily"].filter(pl.col("user_id") == user).sort("date")
        got = daily.filter(pl.col("user_key") == key_of(user)).sort("date")
        assert got["date"].to_list() == want["date"].to_list(), user
        assert got["events"].to_list() == want["events"].to_list(), user
        assert got["completions"].to_list() == want["completions"].to_list(), user
        assert got["streak"].to_list() == want["streak"].to_list(), user
        w = expected["user_state"].filter(pl.col("user_id") == user).row(0, named=True)
        s = state.filter(pl.col("user_key") == key_of(user)).row(0, named=True)
        assert (s["days_active"], s["longest_streak"], s["total_completions"]) == (
            w["days_active"], w["longest_streak"], w["total_completions"]), user
        checked += 1
    assert checked == 4


def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
    assert main(["run", "--source", "file:/nope/missing.jsonl", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "/nope/missing.jsonl" in err and "\n" not in err
    assert main(["run", "--source", "ftp:x", "--out", str(tmp_path)]) == 2
    assert "'ftp:x'" in capsys.readouterr().err
    assert main(["generate", "--users", "0", "--days", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--users" in capsys.readouterr().err
    events = tmp_path / "e.jsonl"
    events.write_text("{}\n")
    monkeypatch.delenv("LEARNSTREAM_PSEUDONYM_KEY")
    assert main(["run", "--source", f"file:{events}", "--out", str(tmp_path)]) == 2
    assert "LEARNSTREAM_PSEUDONYM_KEY" in capsys.readouterr().err
    monkeypatch.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
    config = tmp_path / "c.json"
    config.write_text('{"allowed_latenes": "1h"}')
    assert main(["run", "--source", f"file:{events}", "--out", str(tmp_path), "--config", str(config)]) == 2
    assert "allowed_latenes" in capsys.readouterr().err
    monkeypatch.setenv("LEARNSTREAM_BATCHSIZE", "10")  # a typo of LEARNSTREAM_BATCH_SIZE
    assert main(["run", "--source", f"file:{events}", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "LEARNSTREAM_BATCHSIZE" in err and "\n" not in err


def test_a_decoder_failure_becomes_a_dead_letter_not_a_stopped_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # safety net of the never-stop promise: make the real decoder raise on one record
    import flows.pipeline as pipeline

    real = pipeline.decode_batch

    def fragile(raw, *args, **kwargs):  # type: ignore[no-untyped-def]
        if any(b"BOOM" in line for line in raw.lines):
            raise RuntimeError("decoder bug")
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_batch", fragile)
    monkeypatch.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
    good = '{"event_id":"e%d","user_id":"u1","type":"lesson_completed","timestamp":"2026-03-0%dT10:00:00Z"}'
    events = tmp_path / "e.jsonl"
    events.write_text("\n".join([good % (1, 1), '{"event_id":"BOOM"}', good % (2, 2)]) + "\n")
    out = tmp_path / "out"
    assert main(["run", "--source", f"file:{events}", "--out", str(out)]) == 0
    rejected = read_table(out, "rejected_events")
    assert rejected.select("source_ref", "reason").rows() == [(f"file:{events}:2", "malformed_json")]
    assert rejected["detail"][0].startswith("could not be decoded (RuntimeError: decoder bug)")
    run = read_table(out, "pipeline_runs").row(0, named=True)
    assert (run["records_in"], run["accepted"], run["rejected"]) == (3, 2, 1)


def test_a_user_returning_after_state_ttl_loses_no_day_of_anyone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # u1 is active 2025-01-01 and returns 2025-08-01, after state_ttl=180d: the batch is split at
    # that event and every user's days are closed up to its watermark (08-01 09:55) first. Those
    # rows (u1's 01-01, u3's 07-30, u2's 07-31) must reach user_daily like any other closed day;
    # u1 then starts afresh (issue 5), so its state counts only 08-01.
    events = tmp_path / "ttl.jsonl"
    rows = [
        ("t1", "u1", "lesson_completed", "2025-01-01T10:00:00Z"),
        ("y1", "u3", "lesson_completed", "2025-07-30T10:00:00Z"),
        ("x1", "u2", "session_started", "2025-07-31T10:00:00Z"),
        ("t4", "u1", "lesson_completed", "2025-08-01T10:00:00Z"),
    ]
    events.write_text("".join(
        json.dumps({"event_id": e, "user_id": u, "type": t, "timestamp": ts, "cohort_id": "c"}) + "\n"
        for e, u, t, ts in rows
    ))
    monkeypatch.setenv("LEARNSTREAM_PSEUDONYM_KEY", SECRET)
    out = tmp_path / "out"
    assert main(["run", "--source", f"file:{events}", "--out", str(out)]) == 0
    daily = read_table(out, "user_daily").sort("date")
    assert daily.select("user_key", "date", "events").rows() == [
        (key_of("u1"), date(2025, 1, 1), 1),
        (key_of("u3"), date(2025, 7, 30), 1),
        (key_of("u2"), date(2025, 7, 31), 1),
        (key_of("u1"), date(2025, 8, 1), 1),
    ]
    cohorts = read_table(out, "cohort_daily")
    # and the cohort table (u2's session alone is no completion: not an active user)
    assert cohorts.sort("date").select("date", "events", "active_users").rows() == [
        (date(2025, 1, 1), 1, 1), (date(2025, 7, 30), 1, 1), (date(2025, 7, 31), 1, 0), (date(2025, 8, 1), 1, 1),
    ]
