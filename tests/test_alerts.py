"""Alert rows (SPEC §6): ids, severities, texts and the `alerts` table schema.

The columnar `build_alerts` is checked against `_reference_build_alerts` (the per-row
implementation it replaced, at the end of this module) on random and hypothesis-made rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars._typing import PolarsDataType
from polars.testing import assert_frame_equal

import operators.alerts as alerts_module
from operators.alerts import RULES, alert_id, build_alerts, severity
from operators.event_rules import apply_event_rules, empty_event_rule_state
from schemas.events import EVENT_BATCH_SCHEMA
from schemas.tables import ALERTS

EMITTED = 1_709_300_000 * 1_000_000
DAY = dt.date(2024, 3, 5)
END_OF_DAY = dt.datetime(2024, 3, 6, tzinfo=dt.UTC)

FIRED_SCHEMA: dict[str, PolarsDataType] = {
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
        ("cohort_engagement_drop", -6.4, "medium"),  # SPEC §6: medium, whatever the z
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
    assert a["message"] == "The last 2 assessments scored 48 and 51.3, both below 60; the latest was in fractions."
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


def test_rounding_is_format_rounding() -> None:
    # _num rounds the exact binary value, ties to even, like format():
    #   0.35 is 0.34999999999999997… -> "0.3"; 0.25 is exact, a tie -> even "0.2";
    #   0.125 (exact) at 2 digits -> even "0.12"; 0.375 (exact) -> "0.38";
    #   2.675 is 2.67499999999999982… -> "2.67"; 1.005 is 1.00499999999999989… -> "1"
    a = one("struggling", {"scores": [0.35, 0.25, 0.45, -0.05], "count": 4, "below": 4})
    # 0.45 is 0.45000000000000001… -> "0.5"; -0.05 is -0.05000000000000000277… -> "-0.1"
    assert a["message"].endswith(": 0.3, 0.2, 0.5, -0.1.")
    for c, text in [(0.125, "0.12"), (0.375, "0.38"), (2.675, "2.67"), (1.005, "1"), (-0.004, "0")]:
        b = one("low_consistency", {"consistency_7d": c, "active_days_7d": 1, "threshold": 0.5})
        assert f"(consistency {text}, below 0.5)" in b["message"], (c, b["message"])


def test_durations_and_signed_z() -> None:
    ev = {"metric": "time_spent_s", "history_days": 1, "floor": None}
    # 40.4 s -> "40 s" (the old per-row code stripped the zero: "4 s"); 150 s = 2.5 min -> even
    # 2 min; 210 s = 3.5 min -> 4 min; 3599 s = 59.98 min -> 60 min -> "1 h"; z -0.04 -> "-0.0"
    a = one("anomaly_engagement", ev | {"value": 40.4, "mean": 150, "std": 210, "z": -0.04})
    assert a["message"] == (
        "Time spent on 2024-03-05: 40 s, against a mean of 2 min (std 4 min) "
        "over the previous 1 day (z = -0.0)."
    )
    assert a["title"] == "Unusually low time spent"
    # 0.4 s -> "0 s"; 5430 s = 90.5 min -> even 90 min = "1 h 30 min"; 59.5 s stays seconds and
    # rounds to even "60 s"
    b = one("anomaly_engagement", ev | {"value": 0.4, "mean": 5430, "std": 59.5, "z": 0.0})
    assert "0 s, against a mean of 1 h 30 min (std 60 s)" in b["message"]
    assert b["message"].endswith("(z = +0.0).")
    # a negative zero keeps its sign, as format() does
    c = one("anomaly_velocity", ANOMALY | {"history_days": 7, "z": -0.0})
    assert c["message"].endswith("(z = -0.0).") and c["severity"] == "medium"


def _ref_frame(fired_rows: pl.DataFrame) -> pl.DataFrame:
    return _reference_build_alerts(fired_rows, emitted_at_us=EMITTED)


def test_columnar_equals_reference_on_random_rows() -> None:
    rows = random_fired(4000, seed=11, edge_cases=True)
    assert set(rows["rule"]) == RULES
    new = build_alerts(rows, emitted_at_us=EMITTED)
    assert_frame_equal(new, _ref_frame(rows))
    # the random rows do reach the per-row fallback (numbers ≥ 1e12, explicit null threshold)
    assert rows["evidence"].str.contains("e+20|1e12|1000000000000").any()
    assert rows["evidence"].str.contains('"threshold":null').any()
    assert new.height < rows.height  # replayed firings were dropped


def test_columnar_equals_reference_on_rule_like_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # evidence shaped as the rules write it is built columnar, none of it per row
    per_row: list[int] = []
    slow = alerts_module._Call.per_row

    def counted(call: Any, rows: Any) -> None:
        per_row.append(len(rows))
        slow(call, rows)

    monkeypatch.setattr(alerts_module._Call, "per_row", counted)
    rows = random_fired(2000, seed=5, edge_cases=False)
    assert_frame_equal(build_alerts(rows, emitted_at_us=EMITTED), _ref_frame(rows))
    assert sum(per_row) == 0
    # while the random edge cases do take the per-row path too
    edge = random_fired(500, seed=6, edge_cases=True)
    assert_frame_equal(build_alerts(edge, emitted_at_us=EMITTED), _ref_frame(edge))
    assert 0 < sum(per_row) < edge.height


finite = st.floats(allow_nan=False, allow_infinity=False)
#: halves, quarters, … near the rounding ties at 0, 1 and 2 digits
ties = st.integers(-(10**6), 10**6).map(lambda i: i / 200)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(finite, ties), min_size=1, max_size=40))
def test_number_formatting_equals_reference(values: list[float]) -> None:
    rows = []
    for i, x in enumerate(values):
        baseline = {"value": x, "mean": x, "std": x, "floor": x, "history_days": x, "z": x}
        rows += [
            {"rule": "anomaly_engagement", "trigger": f"e{i}", "evidence": baseline},
            {"rule": "anomaly_velocity", "trigger": f"v{i}", "evidence": baseline},
            {
                "rule": "low_consistency",
                "trigger": f"c{i}",
                "evidence": {"consistency_7d": x, "active_days_7d": x, "threshold": x},
            },
            {"rule": "struggling", "trigger": f"s{i}", "evidence": {"scores": [x, -x]}},
        ]
    f = fired(*rows)
    assert_frame_equal(build_alerts(f, emitted_at_us=EMITTED), _ref_frame(f))


def test_odd_evidence_goes_per_row_like_the_reference() -> None:
    # a number written as a string does not decode as a number: the group is built per row,
    # and float("3") reads it just as before
    f = fired(
        {"rule": "anomaly_velocity", "trigger": "a", "evidence": {"value": "3", "z": 5}},
        {"rule": "anomaly_velocity", "trigger": "b", "evidence": ANOMALY | {"z": -3}},
        {"rule": "streak_broken", "trigger": "c", "evidence": {"streak": 4}},
    )
    out = build_alerts(f, emitted_at_us=EMITTED)
    assert_frame_equal(out, _ref_frame(f))
    assert out["message"][0].startswith("Completions on 2024-03-05: 3, against a mean of n/a")
    # evidence that is not a JSON object, or not JSON, is an error (as before)
    for bad in ["[1, 2]", "null", "{nope"]:
        f = fired({"rule": "stagnation", "evidence": {}}).with_columns(evidence=pl.lit(bad))
        with pytest.raises(ValueError):
            _ref_frame(f)
        with pytest.raises(ValueError):
            build_alerts(f, emitted_at_us=EMITTED)
    # empty or null evidence is an empty object
    f = fired({"rule": "stagnation", "evidence": {}}, {"rule": "stagnation", "evidence": {}})
    f = f.with_columns(evidence=pl.Series(["", None]), trigger=pl.Series(["x", "y"]))
    assert_frame_equal(build_alerts(f, emitted_at_us=EMITTED), _ref_frame(f))


def test_unknown_rule_in_build_alerts() -> None:
    with pytest.raises(ValueError, match="unknown alert rule 'nope'"):
        build_alerts(fired({"rule": "nope", "evidence": {}}), emitted_at_us=EMITTED)


# ------------------------------------------------------------------------ random fired rows

#: numbers at or next to the rounding and unit boundaries of the texts
_AWKWARD = [
    0.05, 0.15, 0.25, 0.35, 0.45, 2.675, 1.005, 0.125, 0.375, -0.05, -0.0, 0.0, 0.04, -0.04,
    0.95, 9.95, 99.95, 1.0, 59.4, 59.5, 59.99, 60, 89.999, 90, 150, 210, 3569.9, 3570, 3599.99,
    3600, 5430, 7800, -90, -3630, 4.0, -4.0, 3.999, -3.95, 3.95, 1e11 + 0.05,
]  # fmt: skip
#: numbers the columnar path leaves to the per-row texts
_HUGE = [1e12, -1e12, 123456789012345.67, 1e20, -3e15, 2.0**53 + 2, 1e300]


def _number(rnd: random.Random, edge_cases: bool) -> float | int | None:
    r = rnd.random()
    if r < 0.25:
        return rnd.randint(0, 100)
    if r < 0.45:
        return round(rnd.uniform(-5, 100), rnd.choice([1, 2, 3, 6]))
    if r < 0.6:  # with edge cases, also beyond the tables of number texts (≥ 1000)
        return rnd.uniform(0, 10_000 if edge_cases else 999)
    if r < 0.72:
        return rnd.randint(-400, 400) / rnd.choice([2, 4, 8, 20, 40, 200, 400, 1000])
    if r < 0.85:
        return rnd.choice(_AWKWARD if edge_cases else [x for x in _AWKWARD if abs(x) < 1000])
    if edge_cases and r < 0.9:
        return None
    if edge_cases and r < 0.92:
        return rnd.choice(_HUGE)
    return rnd.expovariate(0.01)


def _evidence(rule: str, rnd: random.Random, edge_cases: bool) -> dict[str, Any]:
    def num() -> float | int | None:
        return _number(rnd, edge_cases)

    day = (dt.date(2024, 2, 20) + dt.timedelta(days=rnd.randint(0, 20))).isoformat()
    last = rnd.choice([day, day, day, None]) if edge_cases else day
    if rule == "struggling":
        n = rnd.randint(3, 5) if not edge_cases else rnd.randint(0, 6)
        ev: dict[str, Any] = {
            "scores": [num() for _ in range(n)],
            "count": n,
            "below": n,
            "window_hours": 24,
            "threshold": 60,
        }
    elif rule == "low_performance":
        skills = ["fractions", "algèbre linéaire", None] + (["", "a|b"] if edge_cases else [])
        ev = {
            "scores": [num() for _ in range(rnd.choice([2, 2, 2, 1, 0] if edge_cases else [2]))],
            "threshold": 60,
            "skill": rnd.choice(skills),
        }
    elif rule in ("engagement_drop", "stagnation"):
        ev = {"inactive_days": rnd.choice([3, 5, 1, num()]), "last_active_day": last}
    elif rule == "low_consistency":
        k = rnd.randint(0, 3)
        threshold = rnd.choice([0.5, num()]) if edge_cases else 0.5
        ev = {"consistency_7d": k / 7, "active_days_7d": k, "threshold": threshold}
    elif rule == "streak_broken":
        ev = {"streak": rnd.choice([3, 12, num()]), "last_active_day": last}
    else:
        ev = {
            "value": num(),
            "mean": num(),
            "std": num(),
            "floor": rnd.choice([1, 300, 5, 0.5, None, num()]),
            "history_days": rnd.choice([1, 7, 28, num()]),
            "z": rnd.choice([num(), rnd.uniform(-12, 12), -4.0, 4.0, 3.0, -3.0]),
        }
        if rule == "cohort_engagement_drop":
            ev["active_users"] = ev.pop("value")
        else:
            default = {
                "anomaly_velocity": "completions",
                "anomaly_engagement": "time_spent_s",
                "anomaly_performance": "avg_score",
            }[rule]
            metrics: list[str | None] = [default]
            if edge_cases:
                metrics += [None, "", "time_spent_s", "completions", "avg_score", "streak_days"]
            ev = {"metric": rnd.choice(metrics)} | ev
    if edge_cases:
        for key in list(ev):
            r = rnd.random()
            if r < 0.04:
                del ev[key]
            elif r < 0.08 and (rule, key) != ("struggling", "scores"):  # a TypeError, as ever
                ev[key] = None
        if rnd.random() < 0.05:
            ev["note"] = {"nested": [1, "two"]}
    return ev


def random_fired(n: int, *, seed: int, edge_cases: bool) -> pl.DataFrame:
    """`n` fired rows of every rule, in the fired schema (also used by benchmarks/bench_alerts).

    `edge_cases=False` gives evidence shaped as the rules write it; `True` adds nulls, missing
    keys, unknown metrics, numbers for the per-row fallback and replayed firings.
    """
    rnd = random.Random(seed)
    rules = sorted(RULES)
    t0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    users = [hashlib.sha256(str(u).encode()).hexdigest()[:32] for u in range(n // 4 + 1)]
    records = []
    for i in range(n):
        rule = rules[i % len(rules)]
        if rule != "cohort_engagement_drop":
            cohort = rnd.choice(["c1", "cohort-β", None])
        else:  # few cohorts with edge cases (replays), as many as users otherwise
            cohort = rnd.choice(["c1", "c2"] if edge_cases else users)
        user = None if rule == "cohort_engagement_drop" else rnd.choice(users)
        day = DAY + dt.timedelta(days=rnd.randint(-20, 0))
        if edge_cases and rnd.random() < 0.03:
            trigger = f"replay-{rnd.randint(0, 5)}"  # the same rule|subject|trigger again
            user = users[0] if user is not None else None
        elif rule in ("struggling", "low_performance"):
            trigger = f"ev-{uuid.UUID(int=rnd.getrandbits(128))}"
        else:
            trigger = day.isoformat()
        records.append(
            {
                "rule": rule,
                "user_key": user,
                "cohort_id": cohort,
                "org_id": rnd.choice(["o1", None]),
                "trigger": trigger,
                "date": None if edge_cases and rnd.random() < 0.02 else day,
                "event_time": t0 + dt.timedelta(seconds=rnd.randint(0, 30 * 86_400)),
                "evidence": orjson.dumps(_evidence(rule, rnd, edge_cases)).decode(),
            }
        )
    return pl.DataFrame(records, schema=FIRED_SCHEMA)


# ------------------------------------------------------------------------------- the oracle
# `_reference_build_alerts` is operators/alerts.py as it was before it went columnar (commit
# 7d98913), renamed, docstrings dropped, with one deliberate change marked CHANGED in `_ref_num`.
# The columnar `build_alerts` must give equal frames.


#: rules whose subject is a cohort rather than a user
_REF_COHORT_RULES = frozenset({"cohort_engagement_drop"})
#: SPEC §6 fixed severities
_REF_FIXED_SEVERITY = {
    "struggling": "high",
    "low_performance": "medium",
    "engagement_drop": "medium",
    "stagnation": "low",
    "low_consistency": "low",
    "streak_broken": "low",
    "cohort_engagement_drop": "medium",
}
#: SPEC §6: anomaly_* are medium, high at |z| ≥ this
_REF_HIGH_SEVERITY_ABS_Z = 4.0
_REF_Z_RULES = frozenset({"anomaly_velocity", "anomaly_engagement", "anomaly_performance"})
_REF_RULES = frozenset(_REF_FIXED_SEVERITY) | _REF_Z_RULES

_REF_FIRED_COLUMNS = (
    "rule",
    "user_key",
    "cohort_id",
    "org_id",
    "trigger",
    "date",
    "event_time",
    "evidence",
)

Evidence = dict[str, Any]
Text = tuple[str, str, list[str]]


def _ref_alert_id(rule: str, subject: str, trigger: str) -> str:
    return hashlib.sha256(f"{rule}|{subject}|{trigger}".encode()).hexdigest()[:32]


def _ref_severity(rule: str, evidence: Evidence) -> str:
    if rule in _REF_FIXED_SEVERITY:
        return _REF_FIXED_SEVERITY[rule]
    if rule in _REF_Z_RULES:
        z = evidence.get("z")
        return "high" if z is not None and abs(float(z)) >= _REF_HIGH_SEVERITY_ABS_Z else "medium"
    raise ValueError(f"unknown alert rule {rule!r}; known: {', '.join(sorted(_REF_RULES))}")


def _ref_num(x: Any, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    value = float(x)
    if value == round(value):
        return str(int(round(value)))
    # CHANGED from the original: strip trailing zeros only after a decimal point (it turned
    # _num(40.4, 0) into "4", so a 40.4 s duration read "4 s")
    text = f"{value:.{digits}f}"
    if digits > 0:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _ref_duration(seconds: Any) -> str:
    if seconds is None:
        return "n/a"
    s = float(seconds)
    if abs(s) < 60:
        return f"{_ref_num(s, 0)} s"
    minutes = int(round(s / 60))
    if abs(minutes) < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h" if rest == 0 else f"{hours} h {rest} min"


def _ref_days(n: Any) -> str:
    return f"{_ref_num(n)} day" if n is not None and float(n) == 1 else f"{_ref_num(n)} days"


def _ref_z(z: Any) -> str:
    return "n/a" if z is None else f"{float(z):+.1f}"


def _ref_struggling(ev: Evidence, row: dict[str, Any]) -> Text:
    scores = ", ".join(_ref_num(s) for s in ev.get("scores", []))
    threshold = _ref_num(ev.get("threshold", 60))
    message = (
        f"{_ref_num(ev.get('below'))} of the last {_ref_num(ev.get('count'))} scores in "
        f"{_ref_num(ev.get('window_hours', 24))} h were below {threshold}: {scores}."
    )
    return (
        "Learner is struggling: repeated low scores",
        message,
        [
            "Reach out to the learner today",
            "Review the material behind the recent low scores together",
            "Offer an easier practice set or a worked example before the next attempt",
        ],
    )


def _ref_low_performance(ev: Evidence, row: dict[str, Any]) -> Text:
    scores = ev.get("scores") or [None, None]
    prev, cur = (scores + [None, None])[:2]
    skill = ev.get("skill")
    threshold = _ref_num(ev.get("threshold", 60))
    where = f" in {skill}" if skill else ""
    latest = f"; the latest was in {skill}" if skill else ""
    message = (
        f"The last 2 assessments scored {_ref_num(prev)} and {_ref_num(cur)}, "
        f"both below {threshold}{latest}."
    )
    if skill:
        recs = [
            f"Review the fundamentals of {skill} with the learner",
            f"Assign targeted practice on {skill} before the next assessment",
            "Check whether the assessment level matches the learner's progress",
        ]
    else:
        recs = [
            "Review the topics of the last two assessments with the learner",
            "Assign targeted practice before the next assessment",
            "Check whether the assessment level matches the learner's progress",
        ]
    title = f"Low assessment performance{where}"
    return title, message, recs


def _ref_inactivity(label: str) -> Callable[[Evidence, dict[str, Any]], Text]:
    def text(ev: Evidence, row: dict[str, Any]) -> Text:
        days = ev.get("inactive_days")
        last = ev.get("last_active_day")
        message = f"No completions for {_ref_days(days)} since the last active day, {last}."
        return (
            f"{label}: {_ref_days(days)} without a completion",
            message,
            [
                "Send the learner a reminder with one short next activity",
                "Ask whether something is blocking progress",
                "Suggest a fixed daily study time",
            ],
        )

    return text


def _ref_low_consistency(ev: Evidence, row: dict[str, Any]) -> Text:
    k = ev.get("active_days_7d")
    c = ev.get("consistency_7d")
    threshold = ev.get("threshold", 0.5)
    message = (
        f"Active on {_ref_num(k)} of the last 7 days (consistency {_ref_num(c, 2)}, "
        f"below {_ref_num(threshold, 2)})."
    )
    return (
        "Irregular study rhythm",
        message,
        [
            "Suggest a short daily goal (e.g. one lesson a day)",
            "Turn on study reminders for the learner",
            "Break the next unit into smaller steps",
        ],
    )


def _ref_streak_broken(ev: Evidence, row: dict[str, Any]) -> Text:
    streak = ev.get("streak")
    last = ev.get("last_active_day")
    message = f"A {_ref_num(streak)}-day streak ended: no completion since {last}."
    return (
        f"{_ref_num(streak)}-day streak broken",
        message,
        [
            "Encourage the learner to restart the streak today",
            "Suggest a quick activity to get back on track",
        ],
    )


_REF_METRIC: dict[str, tuple[str, Callable[[Any], str]]] = {
    # metric: (label, formatter)
    "completions": ("Completions", _ref_num),
    "time_spent_s": ("Time spent", _ref_duration),
    "avg_score": ("Average score", _ref_num),
}
_REF_ANOMALY_TITLE = {
    "anomaly_velocity": "Unusual number of completions",
    "anomaly_engagement": "Unusual time spent",
    "anomaly_performance": "Unusual drop in scores",
}


def _ref_baseline(ev: Evidence, fmt: Callable[[Any], str]) -> str:
    std = ev.get("std")
    floor = ev.get("floor")
    spread = f"std {fmt(std)}"
    if floor is not None and (std is None or float(std) < float(floor)):
        spread += f", floor {fmt(floor)}"
    return f"a mean of {fmt(ev.get('mean'))} ({spread}) over the previous {_ref_days(ev.get('history_days'))}"


def _ref_anomaly(rule: str) -> Callable[[Evidence, dict[str, Any]], Text]:
    def text(ev: Evidence, row: dict[str, Any]) -> Text:
        metric = (
            ev.get("metric")
            or {
                "anomaly_velocity": "completions",
                "anomaly_engagement": "time_spent_s",
                "anomaly_performance": "avg_score",
            }[rule]
        )
        label, fmt = _REF_METRIC.get(metric, (metric, _ref_num))
        z = ev.get("z")
        high = z is not None and float(z) > 0
        message = (
            f"{label} on {row['date']}: {fmt(ev.get('value'))}, against "
            f"{_ref_baseline(ev, fmt)} (z = {_ref_z(z)})."
        )
        title = _REF_ANOMALY_TITLE[rule]
        if rule == "anomaly_performance":
            recs = [
                "Look at the day's low-scoring activities with the learner",
                "Check whether new material was harder than usual",
            ]
        elif high:
            title = title.replace("Unusual", "Unusually high")
            recs = [
                "Check that the activity is genuine (e.g. not rushing or skipping)",
                "Acknowledge the extra effort if it is genuine",
            ]
        else:
            title = title.replace("Unusual", "Unusually low")
            recs = [
                "Check in with the learner about the drop in activity",
                "Suggest a short activity to get back on track",
            ]
        return title, message, recs

    return text


def _ref_cohort_drop(ev: Evidence, row: dict[str, Any]) -> Text:
    cohort = row.get("cohort_id")
    message = (
        f"Cohort {cohort} had {_ref_num(ev.get('active_users'))} active learners on {row['date']}, "
        f"against {_ref_baseline(ev, _ref_num)} (z = {_ref_z(ev.get('z'))})."
    )
    return (
        "Cohort engagement drop",
        message,
        [
            "Check for a schedule change, holiday or technical problem on that day",
            "Send the cohort a reminder about upcoming activities",
            "Ask the instructor whether the cohort's workload changed",
        ],
    )


_REF_TEXTS: dict[str, Callable[[Evidence, dict[str, Any]], Text]] = {
    "struggling": _ref_struggling,
    "low_performance": _ref_low_performance,
    "engagement_drop": _ref_inactivity("Engagement drop"),
    "stagnation": _ref_inactivity("Stagnation"),
    "low_consistency": _ref_low_consistency,
    "streak_broken": _ref_streak_broken,
    "anomaly_velocity": _ref_anomaly("anomaly_velocity"),
    "anomaly_engagement": _ref_anomaly("anomaly_engagement"),
    "anomaly_performance": _ref_anomaly("anomaly_performance"),
    "cohort_engagement_drop": _ref_cohort_drop,
}


def _ref_alert_text(rule: str, evidence: Evidence, row: dict[str, Any]) -> Text:
    try:
        make = _REF_TEXTS[rule]
    except KeyError:
        raise ValueError(
            f"unknown alert rule {rule!r}; known: {', '.join(sorted(_REF_RULES))}"
        ) from None
    return make(evidence, row)


def _reference_build_alerts(fired: pl.DataFrame, *, emitted_at_us: int) -> pl.DataFrame:
    missing = [c for c in _REF_FIRED_COLUMNS if c not in fired.columns]
    if missing:
        raise ValueError(f"fired rows lack columns {missing}; expected {list(_REF_FIRED_COLUMNS)}")
    out: dict[str, list[Any]] = {c: [] for c in ALERTS.columns if c != "emitted_at"}
    for row in fired.select(_REF_FIRED_COLUMNS).iter_rows(named=True):
        rule = row["rule"]
        subject = row["cohort_id"] if rule in _REF_COHORT_RULES else row["user_key"]
        if subject is None:
            raise ValueError(f"{rule} alert without a subject (trigger {row['trigger']!r})")
        evidence = orjson.loads(row["evidence"]) if row["evidence"] else {}
        if not isinstance(evidence, dict):
            raise ValueError(f"{rule} evidence is not a JSON object: {row['evidence']!r}")
        title, message, recs = _ref_alert_text(rule, evidence, row)
        out["alert_id"].append(_ref_alert_id(rule, subject, str(row["trigger"])))
        out["rule"].append(rule)
        out["severity"].append(_ref_severity(rule, evidence))
        out["user_key"].append(row["user_key"])
        out["cohort_id"].append(row["cohort_id"])
        out["org_id"].append(row["org_id"])
        out["date"].append(row["date"])
        out["event_time"].append(row["event_time"])
        out["title"].append(title)
        out["message"].append(message)
        out["evidence"].append(row["evidence"])
        out["recommendations"].append(recs)
    schema = {c: t for c, t in ALERTS.schema.items() if c != "emitted_at"}
    frame = pl.DataFrame(out, schema=schema).with_columns(
        emitted_at=pl.lit(emitted_at_us, pl.Int64).cast(pl.Datetime("us", "UTC"))
    )
    return ALERTS.conform(frame.unique(subset="alert_id", keep="first", maintain_order=True))
