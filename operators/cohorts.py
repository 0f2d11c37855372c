"""Cohort and organisation aggregation of SPEC §6–§7: `cohort_daily`, `org_daily` and the
`cohort_engagement_drop` rule, as a pure, columnar, stateful operator.

Upstream operators close user-days and feed their `user_daily` rows and every user alert to
`CohortAggregator.add`; the flow calls `close_through(D)` once every user's local day `D` is
closed (the most western time zone closes last), and gets one `cohort_daily` row per cohort and one
`org_daily` row per org for each date finalised, plus the cohort alerts that fired.

Definitions (SPEC §7, with the choices SPEC leaves open):

- A date's rows are the `user_daily` rows of that date, de-duplicated by `(user_key, date)`
  (the last one added wins, so a replayed row is not counted twice).
- `active_users` = rows with `completions >= 1`; `events`, `completions`, `scored_events`,
  `time_spent_s` = sums; `avg_score` = Σ avg_score·scored_events / Σ scored_events over rows with
  `scored_events > 0` and a non-null `avg_score` (null when there is none).
- `cohort_daily.org_id` = the most frequent non-null `org_id` among the cohort's rows that date,
  ties broken by the smallest id; null when every row's `org_id` is null.
- `org_daily.cohorts` = number of distinct non-null `cohort_id` among the org's rows that date.
- Rows with a null `cohort_id` are left out of `cohort_daily`; rows with a null `org_id` out of
  `org_daily`.
- `alerts` = alerts whose `date` is that date and whose `cohort_id` (`org_id`) is that cohort
  (org): user alerts given to `add` (de-duplicated by `alert_id`) plus the
  `cohort_engagement_drop` alerts fired when finalising that date. Alerts given to `add` whose
  `rule` is `cohort_engagement_drop` are ignored, since this operator counts its own.
- A cohort (org) date with alerts but without any `user_daily` row produces no row: the table
  aggregates user-days, and a row of zeros would claim activity data that does not exist.

`cohort_engagement_drop` (SPEC §6): every finalised calendar date `D` evaluates every cohort whose
series has started (first date with `active_users >= 1`), with `x = 0` on dates without rows, so
gaps count as zeros whether they fall inside one `close_through` call or between calls. History is
the previous ≤28 values; `z = (x − mean) / max(sample std, 1)` needs ≥7 of them. It fires when
`z <= −3` and the cohort is armed; a non-null `z > −3` re-arms it; a null `z` leaves it as is.
The alert's `org_id` is the cohort's `org_id` on `D`, or the last one seen when it has no rows.

Sharp edges:

- Rows or alerts for a date already finalised are dropped and counted in `late_user_daily_rows`
  / `late_alerts` (an emitted row is final: SPEC §7 allows one row per key).
- One instance must see every row of a cohort and of an org (key the flow by org, or run one
  instance): partial aggregates are not merged.
- State: buffered rows and alerts of dates not yet final, and per cohort ever seen a ring of the
  last 28 daily values, its last org and its armed flag. The number of cohorts is not bounded by
  this operator (it is expected to be small: classes, courses); nothing is forgotten, because SPEC
  defines the series from the first active day on.
- Every calendar date between the first finalised date and `through` is evaluated (a Python loop
  per date, vectorised over cohorts); a long idle gap costs one cheap step per day.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

import orjson
import polars as pl
from polars._typing import PolarsDataType

from schemas.tables import ALERTS, COHORT_DAILY, ORG_DAILY, USER_DAILY

RULE = "cohort_engagement_drop"
#: SPEC §6 anomaly rule applied to a cohort's daily active users
HISTORY_MAX = 28
HISTORY_MIN = 7
STD_FLOOR = 1.0
Z_THRESHOLD = -3.0

_ROW_COLUMNS = (
    "user_key",
    "date",
    "cohort_id",
    "org_id",
    "events",
    "completions",
    "scored_events",
    "avg_score",
    "time_spent_s",
)
_ROW_SCHEMA: dict[str, PolarsDataType] = {c: USER_DAILY.schema[c] for c in _ROW_COLUMNS}
_ALERT_SCHEMA: dict[str, PolarsDataType] = {
    c: ALERTS.schema[c] for c in ("alert_id", "date", "cohort_id", "org_id")
}
_SERIES_SCHEMA: dict[str, PolarsDataType] = {
    "cohort_id": pl.String(),
    # last non-null org_id seen for the cohort (the alert's org_id on a day without rows)
    "org_id": pl.String(),
    # the last ≤28 values of the series, oldest first, ending at the last finalised date
    "ring": pl.List(pl.Int64),
    # True after firing, until an evaluation finds the condition false (edge trigger)
    "firing": pl.Boolean(),
}
#: the `fired` frame given to `operators.alerts.build_alerts`
FIRED_SCHEMA: dict[str, PolarsDataType] = {
    "rule": pl.String(),
    "user_key": pl.String(),
    "cohort_id": pl.String(),
    "org_id": pl.String(),
    "trigger": pl.String(),
    "date": pl.Date(),
    "event_time": pl.Datetime("us", "UTC"),
    "evidence": pl.String(),
}
_SNAPSHOT_VERSION = 1


@dataclass
class CohortOutput:
    """What one `close_through` call emits (all frames empty when nothing was finalised)."""

    cohort_daily: pl.DataFrame = field(default_factory=COHORT_DAILY.empty)
    org_daily: pl.DataFrame = field(default_factory=ORG_DAILY.empty)
    cohort_alerts: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=FIRED_SCHEMA))


def _conform(frame: pl.DataFrame, schema: dict[str, PolarsDataType]) -> pl.DataFrame:
    return frame.select(
        [
            pl.col(n).cast(t) if n in frame.columns else pl.lit(None, dtype=t).alias(n)
            for n, t in schema.items()
        ]
    )


def _to_ipc(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_ipc(buf)
    return buf.getvalue()


def _from_ipc(data: bytes, schema: dict[str, PolarsDataType]) -> pl.DataFrame:
    return _conform(pl.read_ipc(io.BytesIO(data)), schema)


def _sums() -> list[pl.Expr]:
    """The aggregates shared by cohort_daily and org_daily (SPEC §7)."""
    weighted = (pl.col("scored_events") > 0) & pl.col("avg_score").is_not_null()
    weight = pl.when(weighted).then(pl.col("scored_events")).otherwise(0)
    return [
        (pl.col("completions") >= 1).sum().cast(pl.Int64).alias("active_users"),
        pl.col("events").sum().alias("events"),
        pl.col("completions").sum().alias("completions"),
        pl.col("scored_events").sum().alias("scored_events"),
        (pl.col("avg_score") * weight).filter(weighted).sum().alias("_score_sum"),
        weight.sum().alias("_score_n"),
        pl.col("time_spent_s").sum().alias("time_spent_s"),
    ]


def _weighted_avg() -> pl.Expr:
    return (
        pl.when(pl.col("_score_n") > 0)
        .then(pl.col("_score_sum") / pl.col("_score_n"))
        .otherwise(None)
        .alias("avg_score")
    )


class CohortAggregator:
    """State: user_daily rows of dates not yet final, alerts of dates not yet final (counted per
    (cohort, date) and (org, date) when the date is finalised), and per cohort a bounded ring of
    the last 28 final daily active-user counts (for the z-score) with its armed flag."""

    def __init__(self) -> None:
        self._rows: list[pl.DataFrame] = []
        self._alerts: list[pl.DataFrame] = []
        self._series: pl.DataFrame = pl.DataFrame(schema=_SERIES_SCHEMA)
        #: every date <= this is final (None before the first close_through)
        self.final_through: date | None = None
        self.late_user_daily_rows = 0
        self.late_alerts = 0

    # -- input ---------------------------------------------------------------------------------

    def add(self, user_daily: pl.DataFrame, alerts: pl.DataFrame) -> None:
        """Buffer closed user-days (columns of USER_DAILY) and user alerts (columns of ALERTS).

        Rows and alerts of dates already final are dropped and counted as late; rows without a
        date are ignored (USER_DAILY's key includes `date`, so they cannot be valid).
        """
        if user_daily.height:
            rows = _conform(user_daily, _ROW_SCHEMA).filter(pl.col("date").is_not_null())
            rows = self._drop_late(rows, "late_user_daily_rows")
            if rows.height:
                self._rows.append(rows)
        if alerts.height:
            keep = alerts
            if "rule" in alerts.columns:
                keep = alerts.filter(pl.col("rule").fill_null("") != RULE)
            found = _conform(keep, _ALERT_SCHEMA).filter(pl.col("date").is_not_null())
            found = self._drop_late(found, "late_alerts")
            if found.height:
                self._alerts.append(found)

    def _drop_late(self, frame: pl.DataFrame, counter: str) -> pl.DataFrame:
        if self.final_through is None:
            return frame
        late = pl.col("date") <= self.final_through
        n_late = int(frame.select(late.sum()).item())
        if n_late:
            setattr(self, counter, getattr(self, counter) + n_late)
            frame = frame.filter(~late)
        return frame

    # -- finalisation ----------------------------------------------------------------------------

    def close_through(self, through: date, *, emitted_at_us: int) -> CohortOutput:
        """Finalise every date <= `through` in date order and emit its rows and cohort alerts.

        Calling it again with the same or an earlier date emits nothing.
        """
        if self.final_through is not None and through <= self.final_through:
            return CohortOutput()
        rows = pl.concat(self._rows) if self._rows else pl.DataFrame(schema=_ROW_SCHEMA)
        alerts = pl.concat(self._alerts) if self._alerts else pl.DataFrame(schema=_ALERT_SCHEMA)
        if self.final_through is not None:
            start = self.final_through + timedelta(days=1)
        elif rows.height:
            first = rows.select(pl.col("date").min()).item()
            start = min(through, cast(date, first))
        else:
            start = through
        due = pl.col("date") <= through
        by_date_rows = rows.filter(due).partition_by("date", as_dict=True, include_key=False)
        by_date_alerts = alerts.filter(due).partition_by("date", as_dict=True, include_key=False)
        row_dates = sorted(k[0] for k in by_date_rows)
        emitted_at = pl.lit(emitted_at_us, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))

        cohort_parts: list[pl.DataFrame] = []
        org_parts: list[pl.DataFrame] = []
        fired_parts: list[pl.DataFrame] = []
        day = start
        while day <= through:
            if self._series.height == 0 and (day,) not in by_date_rows:
                # no series has started: dates without rows change nothing; jump ahead
                later = [d for d in row_dates if d > day]
                if not later:
                    break
                day = later[0]
            day_rows = by_date_rows.get((day,), pl.DataFrame(schema=_ROW_SCHEMA).drop("date"))
            day_alerts = by_date_alerts.get((day,), pl.DataFrame(schema=_ALERT_SCHEMA).drop("date"))
            cohort_day, org_day, fired = self._finalise(day, day_rows, day_alerts)
            cohort_parts.append(cohort_day)
            org_parts.append(org_day)
            fired_parts.append(fired)
            day += timedelta(days=1)

        self.final_through = through
        keep = pl.col("date") > through
        self._rows = [rows.filter(keep)] if rows.height else []
        self._alerts = [alerts.filter(keep)] if alerts.height else []
        self._rows = [f for f in self._rows if f.height]
        self._alerts = [f for f in self._alerts if f.height]

        if not cohort_parts:
            return CohortOutput()
        cohort_daily = pl.concat(cohort_parts).with_columns(emitted_at.alias("emitted_at"))
        org_daily = pl.concat(org_parts).with_columns(emitted_at.alias("emitted_at"))
        return CohortOutput(
            cohort_daily=COHORT_DAILY.conform(cohort_daily),
            org_daily=ORG_DAILY.conform(org_daily),
            cohort_alerts=_conform(pl.concat(fired_parts), FIRED_SCHEMA),
        )

    def _finalise(
        self, day: date, rows: pl.DataFrame, alerts: pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """One date: aggregate, evaluate the cohort rule, count alerts. Vectorised over keys."""
        # sorted: float sums must not depend on arrival order (which varies with worker counts)
        rows = rows.unique(subset=["user_key"], keep="last", maintain_order=True).sort("user_key")

        in_cohort = rows.filter(pl.col("cohort_id").is_not_null())
        cohort_org = (
            in_cohort.filter(pl.col("org_id").is_not_null())
            .group_by("cohort_id", "org_id")
            .len()
            .sort(["cohort_id", "len", "org_id"], descending=[False, True, False])
            .unique(subset=["cohort_id"], keep="first", maintain_order=True)
            .select("cohort_id", "org_id")
        )
        cohorts = (
            in_cohort.group_by("cohort_id")
            .agg(_sums())
            .join(cohort_org, on="cohort_id", how="left")
            .with_columns(_weighted_avg())
        )
        orgs = (
            rows.filter(pl.col("org_id").is_not_null())
            .group_by("org_id")
            .agg(*_sums(), pl.col("cohort_id").drop_nulls().n_unique().alias("cohorts"))
            .with_columns(_weighted_avg())
        )

        fired = self._evaluate(day, cohorts.select("cohort_id", "active_users", "org_id"))

        # alerts of this date: user alerts (one per alert_id) plus the cohort alerts just fired
        user_alerts = pl.concat(
            [
                alerts.filter(pl.col("alert_id").is_null()),
                alerts.filter(pl.col("alert_id").is_not_null()).unique(subset=["alert_id"]),
            ]
        ).select("cohort_id", "org_id")
        counted = pl.concat([user_alerts, fired.select("cohort_id", "org_id")])
        per_cohort = (
            counted.filter(pl.col("cohort_id").is_not_null())
            .group_by("cohort_id")
            .agg(pl.len().cast(pl.Int64).alias("alerts"))
        )
        per_org = (
            counted.filter(pl.col("org_id").is_not_null())
            .group_by("org_id")
            .agg(pl.len().cast(pl.Int64).alias("alerts"))
        )
        day_lit = pl.lit(day, dtype=pl.Date).alias("date")
        cohort_daily = (
            cohorts.join(per_cohort, on="cohort_id", how="left")
            .with_columns(pl.col("alerts").fill_null(0), day_lit)
            .sort("cohort_id")
        )
        org_daily = (
            orgs.join(per_org, on="org_id", how="left")
            .with_columns(pl.col("alerts").fill_null(0), day_lit)
            .sort("org_id")
        )
        return cohort_daily, org_daily, fired

    def _evaluate(self, day: date, today: pl.DataFrame) -> pl.DataFrame:
        """Step every started series by one date; return the `fired` frame of this date."""
        x = pl.col("x")
        ring = pl.col("ring")
        k = ring.list.len().fill_null(0).cast(pl.Int64)
        step = (
            self._series.join(
                today.rename({"active_users": "x", "org_id": "org_today"}),
                on="cohort_id",
                how="full",
                coalesce=True,
            )
            # a series exists, or starts today (first date with active_users >= 1)
            .filter(ring.is_not_null() | (x >= 1))
            .with_columns(
                x.fill_null(0),
                pl.coalesce("org_today", "org_id").alias("org_id"),
                k.alias("k"),
                ring.list.mean().alias("mean"),
                ring.list.std(ddof=1).alias("std"),
            )
            .with_columns(
                pl.when(pl.col("k") >= HISTORY_MIN)
                .then(
                    (x - pl.col("mean"))
                    / pl.max_horizontal(pl.col("std").fill_null(0.0), pl.lit(STD_FLOOR))
                )
                .otherwise(None)
                .alias("z")
            )
            .with_columns((pl.col("z") <= Z_THRESHOLD).alias("cond"))
            .with_columns(
                (pl.col("cond").fill_null(False) & ~pl.col("firing").fill_null(False)).alias(
                    "fire"
                ),
                pl.when(pl.col("z").is_null())
                .then(pl.col("firing").fill_null(False))
                .otherwise(pl.col("cond"))
                .alias("firing"),
                pl.when(ring.is_null())
                .then(pl.concat_list([x]))
                .otherwise(pl.concat_list([ring, x]))
                .list.tail(HISTORY_MAX)
                .alias("ring"),
            )
        )
        self._series = _conform(step.sort("cohort_id"), _SERIES_SCHEMA)

        hits = step.filter(pl.col("fire")).sort("cohort_id")
        evidence = [
            orjson.dumps(
                {
                    "active_users": r["x"],
                    "mean": r["mean"],
                    "std": r["std"],
                    "floor": int(STD_FLOOR),
                    "history_days": r["k"],
                    "z": r["z"],
                }
            ).decode()
            for r in hits.select("x", "mean", "std", "k", "z").iter_rows(named=True)
        ]
        end_of_day = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        fired = hits.select(
            pl.lit(RULE).alias("rule"),
            pl.lit(None, dtype=pl.String).alias("user_key"),
            "cohort_id",
            "org_id",
            pl.lit(day.isoformat()).alias("trigger"),
            pl.lit(day, dtype=pl.Date).alias("date"),
            pl.lit(end_of_day, dtype=pl.Datetime("us", "UTC")).alias("event_time"),
        ).with_columns(pl.Series("evidence", evidence, dtype=pl.String))
        return _conform(fired, FIRED_SCHEMA)

    # -- recovery --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain picklable state: Arrow IPC bytes of each frame plus scalars."""
        rows = pl.concat(self._rows) if self._rows else pl.DataFrame(schema=_ROW_SCHEMA)
        alerts = pl.concat(self._alerts) if self._alerts else pl.DataFrame(schema=_ALERT_SCHEMA)
        return {
            "version": _SNAPSHOT_VERSION,
            "rows": _to_ipc(rows),
            "alerts": _to_ipc(alerts),
            "series": _to_ipc(self._series),
            "final_through": self.final_through,
            "late_user_daily_rows": self.late_user_daily_rows,
            "late_alerts": self.late_alerts,
        }

    @classmethod
    def restore(cls, snap: object) -> CohortAggregator:
        """Rebuild from `snapshot()` output; raises ValueError on anything else."""
        if not isinstance(snap, dict) or snap.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(
                f"not a CohortAggregator snapshot of version {_SNAPSHOT_VERSION}: "
                f"{type(snap).__name__}"
            )
        agg = cls()
        rows = _from_ipc(snap["rows"], _ROW_SCHEMA)
        alerts = _from_ipc(snap["alerts"], _ALERT_SCHEMA)
        agg._rows = [rows] if rows.height else []
        agg._alerts = [alerts] if alerts.height else []
        agg._series = _from_ipc(snap["series"], _SERIES_SCHEMA)
        agg.final_through = snap["final_through"]
        agg.late_user_daily_rows = int(snap["late_user_daily_rows"])
        agg.late_alerts = int(snap["late_alerts"])
        return agg


__all__ = ["FIRED_SCHEMA", "RULE", "CohortAggregator", "CohortOutput"]
