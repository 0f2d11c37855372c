"""Alert rows (SPEC §6): ids, severities, texts and the `alerts` table schema."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import orjson
import polars as pl
import pytest

from operators.alerts import RULES, alert_id, build_alerts, severity
from operators.event_rules import apply_event_rules, empty_event_rule_state
from schemas.events import EVENT_BATCH_SCHEMA
from schemas.tables import ALERTS

EMITTED = 1_709_300_000 * 1_000_000
DAY = dt.date(2024, 3, 5)
END_OF_DAY = dt.datetime(2024, 3, 6, tzinfo=dt.UTC)

FIRED_SCHEMA = {
    "rule": pl.String,
    "user_key": pl.String,
    "cohort_id": pl.String,
    "org_id": pl.String,
    "trigger": pl.String,
    "date": pl.Date,
    "event_time": pl.Datetime("us", "UTC"),
    "evidence": pl.String,
}


def fired(*rows: dict[str, Any]) -> pl.DataFrame:
    records = []
    for r in rows:
        rec = {
            "user_key": "uk1",
            "cohort_id": "c1",
            "org_id": "o1",
            "trigger": DAY.isoformat(),
            "date": DAY,
            "event_time": END_OF_DAY,
        } | r
        rec["evidence"] = orjson.dumps(rec["evidence"]).decode()
        records.append(rec)
    return pl.DataFrame(records, schema=FIRED_SCHEMA)


def one(rule: str, evidence: dict[str, Any], **extra: Any) -> dict[str, Any]:
    out = build_alerts(fired({"rule": rule, "evidence": evidence} | extra), emitted_at_us=EMITTED)
    assert out.height == 1
    return out.row(0, named=True)


ANOMALY = {"metric": "completions", "value": 12, "mean": 3.14159, "std": 1.23456, "floor": 1}


def test_alert_id_is_sha256_prefix() -> None:
    expected = hashlib.sha256(b"struggling|uk1|evt-42").hexdigest()[:32]
    assert alert_id("struggling", "uk1", "evt-42") == expected
    assert len(expected) == 32
    # the id in the table uses user_key for user rules and cohort_id for cohort rules
    a = one("struggling", {"scores": [1, 2, 3], "count": 3, "below": 3}, trigger="evt-42")
    assert a["alert_id"] == expected
    c = one(
        "cohort_engagement_drop",
        {"active_users": 2, "mean": 20, "std": 3, "floor": 1, "history_days": 14, "z": -6},
        user_key=None,
    )
    assert c["alert_id"] == hashlib.sha256(b"cohort_engagement_drop|c1|2024-03-05").hexdigest()[:32]
    assert c["user_key"] is None and c["cohort_id"] == "c1"


@pytest.mark.parametrize(
    ("rule", "z", "expected"),
    [
        ("struggling", None, "high"),
        ("low_performance", None, "medium"),
        ("engagement_drop", None, "medium"),
        ("stagnation", None, "low"),
        ("low_consistency", None, "low"),
        ("streak_broken", None, "low"),
        ("anomaly_velocity", 3.0, "medium"),
        ("anomaly_velocity", 3.999, "medium"),
        ("anomaly_velocity", 4.0, "high"),
        ("anomaly_engagement", -4.0, "high"),
        ("anomaly_engagement", -3.5, "medium"),
        ("anomaly_performance", -3.0, "medium"),
        ("anomaly_performance", -4.2, "high"),
        ("cohort_engagement_drop", -3.9, "medium"),
        ("cohort_engagement_drop", -4.0, "high"),
    ],
)
def test_severity(rule: str, z: float | None, expected: str) -> None:
    evidence = {} if z is None else {"z": z}
    assert severity(rule, evidence) == expected


def test_unknown_rule_and_missing_subject_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown alert rule 'nope'"):
        severity("nope", {})
    with pytest.raises(ValueError, match="without a subject"):
        build_alerts(
            fired({"rule": "streak_broken", "evidence": {}, "user_key": None}),
            emitted_at_us=EMITTED,
        )


def test_struggling_message_from_a_real_firing() -> None:
    # three low scores within an hour: the rule fires on the third, and its alert says so
    t0 = 1_709_629_200 * 1_000_000  # 2024-03-05T09:00Z
    ev = pl.DataFrame(
        {
            "seq": [0, 1, 2],
            "event_id": ["a", "b", "c"],
            "user_key": ["uk1"] * 3,
            "type": ["quiz_completed"] * 3,
            "t_us": [t0, t0 + 60_000_000, t0 + 120_000_000],
            "date": [DAY] * 3,
            "score": [42.0, 55.5, 38.25],
        }
    ).select(
        pl.col(c).cast(t)
        if c in ("seq", "event_id", "user_key", "type", "t_us", "date", "score")
        else pl.lit(None, t).alias(c)
        for c, t in EVENT_BATCH_SCHEMA.items()
    )
    _, f = apply_event_rules(empty_event_rule_state(), ev)
    alerts = build_alerts(f, emitted_at_us=EMITTED)
    s = alerts.filter(pl.col("rule") == "struggling").row(0, named=True)
    assert s["severity"] == "high"
    assert s["message"] == "3 of the last 3 scores in 24 h were below 60: 42, 55.5, 38.2."
    assert s["event_time"] == dt.datetime(2024, 3, 5, 9, 2, tzinfo=dt.UTC)
    assert s["alert_id"] == alert_id("struggling", "uk1", "c")
    # evidence keeps full precision
    assert orjson.loads(s["evidence"])["scores"] == [42.0, 55.5, 38.25]
    lp = alerts.filter(pl.col("rule") == "low_performance")
    # b (55.5) after a (42): fires at b
    assert lp["message"].to_list() == ["The last 2 assessments scored 42 and 55.5, both below 60."]


def test_low_performance_names_the_skill() -> None:
    a = one(
        "low_performance",
        {"scores": [48.0, 51.333333], "threshold": 60, "skill": "fractions"},
        trigger="evt-9",
    )
    assert a["severity"] == "medium"
    assert a["message"] == "The last 2 assessments in fractions scored 48 and 51.3, both below 60."
    assert "fractions" in a["title"]
    assert any("fractions" in r for r in a["recommendations"])


@pytest.mark.parametrize(
    ("rule", "evidence", "parts"),
    [
        (
            "engagement_drop",
            {"inactive_days": 3, "last_active_day": "2024-03-02"},
            ["3 days", "2024-03-02"],
        ),
        (
            "stagnation",
            {"inactive_days": 5, "last_active_day": "2024-02-29"},
            ["5 days", "2024-02-29"],
        ),
        (
            "low_consistency",
            {"consistency_7d": 3 / 7, "active_days_7d": 3, "threshold": 0.5},
            ["3 of the last 7 days", "0.43", "0.5"],
        ),
        (
            "streak_broken",
            {"streak": 12, "last_active_day": "2024-03-04"},
            ["12-day", "2024-03-04"],
        ),
        (
            "anomaly_velocity",
            ANOMALY | {"history_days": 21, "z": 7.0713},
            ["Completions on 2024-03-05: 12,", "3.1", "std 1.2", "21 days", "z = +7.1"],
        ),
        (
            "anomaly_engagement",
            {
                "metric": "time_spent_s",
                "value": 7800.0,
                "mean": 1500.0,
                "std": 200.0,
                "floor": 300,
                "history_days": 10,
                "z": 21.0,
            },
            # 7800 s = 2 h 10 min; mean 1500 s = 25 min; std 200 s below the 300 s floor
            ["2 h 10 min", "25 min", "std 3 min", "floor 5 min", "z = +21.0"],
        ),
        (
            "anomaly_performance",
            {
                "metric": "avg_score",
                "value": 31.25,
                "mean": 82.4,
                "std": 4.1,
                "floor": 5,
                "history_days": 28,
                "z": -10.24,
            },
            ["Average score", "31.2", "82.4", "floor 5", "28 days", "z = -10.2"],
        ),
        (
            "cohort_engagement_drop",
            {
                "active_users": 4,
                "mean": 18.5,
                "std": 2.25,
                "floor": 1,
                "history_days": 14,
                "z": -6.44,
            },
            ["Cohort c1", "4 active learners", "18.5", "std 2.2", "14 days", "z = -6.4"],
        ),
    ],
)
def test_messages_carry_the_numbers(rule: str, evidence: dict[str, Any], parts: list[str]) -> None:
    a = one(rule, evidence)
    for part in parts:
        assert part in a["message"], (part, a["message"])
    assert a["title"] and a["recommendations"]
    assert all(isinstance(r, str) and r for r in a["recommendations"])
    assert orjson.loads(a["evidence"]) == evidence


def test_anomaly_direction_in_title() -> None:
    high = one("anomaly_velocity", ANOMALY | {"history_days": 7, "z": 3.2})
    low = one("anomaly_velocity", ANOMALY | {"value": 0, "history_days": 7, "z": -3.2})
    assert high["title"] == "Unusually high number of completions"
    assert low["title"] == "Unusually low number of completions"


def test_every_rule_has_texts_and_table_schema() -> None:
    rows = [
        {"rule": rule, "trigger": f"t-{rule}", "evidence": {"z": -5.0}} for rule in sorted(RULES)
    ]
    out = build_alerts(fired(*rows), emitted_at_us=EMITTED)
    assert out.schema == pl.Schema(ALERTS.schema)
    assert out.columns == ALERTS.columns
    assert out.height == len(RULES)
    assert out["emitted_at"].unique().to_list() == [
        dt.datetime.fromtimestamp(EMITTED / 1e6, tz=dt.UTC)
    ]
    assert out["alert_id"].n_unique() == len(RULES)
    assert out.select(pl.col("title", "message").is_null().any()).row(0) == (False, False)


def test_empty_and_duplicates() -> None:
    empty = build_alerts(pl.DataFrame(schema=FIRED_SCHEMA), emitted_at_us=EMITTED)
    assert empty.height == 0 and empty.schema == pl.Schema(ALERTS.schema)
    row = {"rule": "streak_broken", "evidence": {"streak": 4, "last_active_day": "2024-03-04"}}
    # the same firing replayed (e.g. after a restart) gives one row per alert_id
    assert build_alerts(fired(row, row), emitted_at_us=EMITTED).height == 1
