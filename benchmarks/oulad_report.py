"""Do learnstream's at-risk alerts find the learners who fail? A report on real OULAD data.

    .venv/bin/python benchmarks/oulad_report.py [--batch-size 10000] [--state-ttl 3650d]

Converts `../shared/data/oulad-j` to events with `tests.realdata.oulad_events` (every non-banked
assessment submission; CMA -> `quiz_completed`, else `assessment_completed`), runs
`learnstream run` in-process on a temporary directory, and compares the learners flagged by an
at-risk alert (`low_performance` or `struggling`) with `studentInfo.final_result`. Prints a small
table; `tests/test_oulad.py` runs the same functions and asserts on them.

Unit and matching. A *learner* is a registration: one (`id_student`, `cohort_id` =
`<code_module>-<code_presentation>`) row of studentInfo.csv (unique there). An alert is mapped
back to `id_student` through its `user_key` (HMAC of `str(id_student)` with the run's secret) and
to the registration through its own `cohort_id`, which for event rules is the triggering
assessment's cohort. Sharp edge: the rule state is per learner, not per registration, so for the
89 students with two registrations a pair of low scores can span both (the alert then counts for
the later one).

Populations. `seen`: registrations with at least one converted event in that cohort (the only
ones an alert can flag). `all`: every studentInfo registration, including 837 with no
non-banked submission (most of them failed), which no rule can flag.

Outcomes. `fail`: `final_result == "Fail"`; `not pass`: Fail or Withdrawn. This subset's
studentInfo holds no Withdrawn rows (only Pass, Distinction, Fail), so both variants agree here.
Precision is the failure rate among flagged learners (the same number, listed for readers who
look for it); recall is the share of failing learners that were flagged; lift is the failure
rate among flagged learners over the rate among all learners of the population.

Settings. By default the run uses 10,000-record micro-batches (so rule state is carried across
batches, as in a live run) and `state_ttl=3650d`. The default `state_ttl=180d` forgets learners
idle between the 2013J and 2014J presentations, and when that happens depends on where batch
boundaries fall (users are evicted when days close, once per batch); the long TTL makes the
rule's "last 2 assessments" the learner's last two ever, whatever the batch size.

Privacy: of studentInfo.csv only `id_student`, `code_module`, `code_presentation` and
`final_result` are read; no demographic column is read, copied or printed.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/oulad_report.py` puts only benchmarks/ there
    sys.path.insert(0, str(ROOT))

from learnstream.cli import main as learnstream_main  # noqa: E402
from schemas.tables import TABLES  # noqa: E402
from tests.realdata import DATA_DIR, oulad_events, write_jsonl  # noqa: E402

#: alert rules that flag a learner as at risk
AT_RISK_RULES = ("low_performance", "struggling")
#: final results counted as failing, in the strict and the broad variant
FAILING = ("Fail",)
NOT_PASSING = ("Fail", "Withdrawn")
#: run settings of the report and the test (see the module docstring)
BATCH_SIZE = 10_000
STATE_TTL = "3650d"
#: the converted events as a frame: `oulad_events` omits `score` when it is missing
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "user_id": pl.String(),
    "type": pl.String(),
    "timestamp": pl.String(),
    "timezone": pl.String(),
    "cohort_id": pl.String(),
    "org_id": pl.String(),
    "skill": pl.String(),
    "score": pl.Float64(),
}


def user_key(secret: str, user_id: str) -> str:
    """SPEC §3: first 32 hex of HMAC-SHA256(secret, user_id)."""
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


def events_frame(events: list[dict[str, Any]]) -> pl.DataFrame:
    """The converted events as a frame in file (= arrival) order, with that order as `line`."""
    return pl.DataFrame(events, schema=EVENT_SCHEMA).with_row_index("line")


def run_pipeline(
    events: list[dict[str, Any]],
    workdir: Path,
    secret: str,
    *,
    batch_size: int = BATCH_SIZE,
    state_ttl: str = STATE_TTL,
) -> Path:
    """Write `events` as JSONL under `workdir`, run `learnstream run` in-process; the out dir.

    Sets the LEARNSTREAM_* variables it needs for the run only and restores them afterwards.
    Raises RuntimeError when the run exits non-zero.
    """
    path = workdir / "oulad.jsonl"
    out = workdir / "out"
    write_jsonl(events, path)
    env = {
        "LEARNSTREAM_PSEUDONYM_KEY": secret,
        "LEARNSTREAM_BATCH_SIZE": str(batch_size),
        "LEARNSTREAM_STATE_TTL": state_ttl,
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        status = learnstream_main(["run", "--source", f"file:{path}", "--out", str(out)])
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if status != 0:
        raise RuntimeError(f"learnstream run exited with {status}")
    return out


def read_table(out: Path, name: str) -> pl.DataFrame:
    """A table as analysts read it: its Parquet dataset (hive partitions), timestamps in UTC."""
    table = TABLES[name]
    if not any((out / "parquet" / name).glob("**/*.parquet")):
        return table.empty()
    glob = str(out / "parquet" / name / "**" / "*.parquet")
    hive = "true" if table.partition else "false"
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning={hive})").pl()
    finally:
        con.close()


def registrations(data_dir: Path = DATA_DIR) -> pl.DataFrame:
    """studentInfo.csv reduced to `id_student`, `cohort_id`, `final_result` (one row per key).

    Reads only those columns: the demographic ones are never loaded.
    """
    root = data_dir / "oulad-j" if (data_dir / "oulad-j").is_dir() else data_dir
    info = pl.read_csv(
        root / "studentInfo.csv",
        columns=["code_module", "code_presentation", "id_student", "final_result"],
        schema_overrides={"id_student": pl.Int64},
    )
    frame = info.select(
        "id_student",
        cohort_id=pl.format("{}-{}", "code_module", "code_presentation"),
        final_result="final_result",
    )
    if frame.select(pl.struct("id_student", "cohort_id").is_duplicated().any()).item():
        raise ValueError("studentInfo.csv has two rows for one (id_student, presentation)")
    return frame


def key_map(students: Iterable[int], secret: str) -> pl.DataFrame:
    """`id_student` -> `user_key` for the given students (one HMAC per distinct student)."""
    ids = sorted(set(students))
    return pl.DataFrame(
        {"id_student": ids, "user_key": [user_key(secret, str(i)) for i in ids]},
        schema={"id_student": pl.Int64(), "user_key": pl.String()},
    )


def learner_outcomes(
    events: pl.DataFrame, alerts: pl.DataFrame, registered: pl.DataFrame, secret: str
) -> pl.DataFrame:
    """One row per registration: `id_student`, `cohort_id`, `final_result`, `seen`, `flagged`.

    `seen`: the registration has >= 1 converted event; `flagged`: >= 1 alert of an
    AT_RISK_RULES rule whose user_key maps to the student and whose cohort_id is the
    registration's. Alerts that map to no registration are dropped here (the test checks there
    are none).
    """
    keys = key_map(registered["id_student"], secret)
    seen = events.select(
        id_student=pl.col("user_id").cast(pl.Int64), cohort_id=pl.col("cohort_id")
    ).unique()
    flagged = (
        alerts.filter(pl.col("rule").is_in(AT_RISK_RULES))
        .join(keys, on="user_key", how="inner")
        .select("id_student", "cohort_id")
        .unique()
    )
    pair = ["id_student", "cohort_id"]
    return (
        registered.join(seen.with_columns(seen=pl.lit(True)), on=pair, how="left")
        .join(flagged.with_columns(flagged=pl.lit(True)), on=pair, how="left")
        .with_columns(pl.col("seen").fill_null(False), pl.col("flagged").fill_null(False))
        .sort(pair)
    )


def outcome_figures(
    outcomes: pl.DataFrame, *, population: str, failing: tuple[str, ...]
) -> dict[str, Any]:
    """Failure rates, lift, precision and recall of `flagged` against `final_result in failing`.

    `population` is `seen` (registrations with events) or `all`. Rates are None when their
    denominator is 0.
    """
    if population not in ("seen", "all"):
        raise ValueError(f"population must be 'seen' or 'all', got {population!r}")
    frame = outcomes.filter(pl.col("seen")) if population == "seen" else outcomes
    fails = frame["final_result"].is_in(failing)
    flagged = frame["flagged"]
    n, n_flagged, n_failing = frame.height, int(flagged.sum()), int(fails.sum())
    both = int((flagged & fails).sum())
    rate_all = n_failing / n if n else None
    rate_flagged = both / n_flagged if n_flagged else None
    lift = rate_flagged / rate_all if rate_flagged is not None and rate_all else None
    return {
        "population": population,
        "outcome": " or ".join(failing),
        "learners": n,
        "flagged": n_flagged,
        "failing": n_failing,
        "flagged_failing": both,
        "fail_rate_all": rate_all,
        "fail_rate_flagged": rate_flagged,
        "lift": lift,
        "precision": rate_flagged,
        "recall": both / n_failing if n_failing else None,
    }


def report_rows(outcomes: pl.DataFrame) -> list[dict[str, Any]]:
    """The four rows of the report: populations `seen`, `all` x outcomes Fail, Fail or Withdrawn."""
    return [
        outcome_figures(outcomes, population=population, failing=failing)
        for population in ("seen", "all")
        for failing in (FAILING, NOT_PASSING)
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of `report_rows`."""
    columns = [
        ("population", "population", "{}"),
        ("outcome", "failing =", "{}"),
        ("learners", "learners", "{:,}"),
        ("flagged", "flagged", "{:,}"),
        ("failing", "failing", "{:,}"),
        ("fail_rate_all", "fail% all", "{:.1%}"),
        ("fail_rate_flagged", "fail% flagged", "{:.1%}"),
        ("lift", "lift", "{:.2f}"),
        ("precision", "precision", "{:.1%}"),
        ("recall", "recall", "{:.1%}"),
    ]
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        cells.append(
            ["-" if row[name] is None else fmt.format(row[name]) for name, _, fmt in columns]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="shared/data directory")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--state-ttl", default=STATE_TTL)
    args = parser.parse_args(argv)
    secret = "oulad-report"
    events = oulad_events(args.data)
    with tempfile.TemporaryDirectory(prefix="oulad-report-") as tmp:
        out = run_pipeline(
            events, Path(tmp), secret, batch_size=args.batch_size, state_ttl=args.state_ttl
        )
        alerts = read_table(out, "alerts")
    at_risk = alerts.filter(pl.col("rule").is_in(AT_RISK_RULES))
    outcomes = learner_outcomes(events_frame(events), alerts, registrations(args.data), secret)
    print()
    print(
        f"OULAD J presentations: {len(events):,} events, {outcomes.height:,} registrations "
        f"({int(outcomes['seen'].sum()):,} with events); batch_size={args.batch_size}, "
        f"state_ttl={args.state_ttl}"
    )
    by_rule = {rule: int((at_risk["rule"] == rule).sum()) for rule in AT_RISK_RULES}
    print(
        "at-risk alerts: "
        + ", ".join(f"{rule}={count:,}" for rule, count in by_rule.items())
        + f"; flagged: {int(outcomes['flagged'].sum()):,} registrations of "
        + f"{outcomes.filter('flagged')['id_student'].n_unique():,} students"
    )
    print(format_table(report_rows(outcomes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
