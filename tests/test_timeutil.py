"""Local-day boundaries (SPEC §4) against zoneinfo, including DST transitions."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl

from operators.timeutil import day_end_us, day_start_us, local_day_of, local_days


def utc_us(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp()) * 1_000_000


def test_day_boundaries_across_dst() -> None:
    days = pl.Series([date(2026, 3, 8), date(2026, 3, 7), date(2022, 9, 11), date(2026, 3, 1)])
    zones = pl.Series(["America/New_York", "America/New_York", "America/Santiago", "Asia/Seoul"])
    assert day_start_us(days, zones).to_list() == [
        utc_us("2026-03-08T05:00:00+00:00"),  # midnight EST
        utc_us("2026-03-07T05:00:00+00:00"),
        # Santiago skipped 2022-09-11 00:00 -> 01:00 (-04 -> -03): the day starts at 01:00 -03
        utc_us("2022-09-11T04:00:00+00:00"),
        utc_us("2026-02-28T15:00:00+00:00"),  # midnight KST
    ]
    # 2026-03-08 in New York is 23 hours long: it ends at midnight EDT = 04:00Z
    assert day_end_us(days[:1], zones[:1]).to_list() == [utc_us("2026-03-09T04:00:00+00:00")]


def test_local_day_of_and_local_days_agree() -> None:
    t = utc_us("2026-03-01T15:30:00+00:00")  # 2026-03-02 00:30 in Seoul, 10:30 in New York
    days = local_day_of(t, ["Asia/Seoul", "America/New_York"])
    assert days == {"Asia/Seoul": (date(2026, 3, 2) - date(1970, 1, 1)).days,
                    "America/New_York": (date(2026, 3, 1) - date(1970, 1, 1)).days}
    got = local_days(pl.Series([t, t]), pl.Series(["Asia/Seoul", "America/New_York"]))
    assert got.to_list() == [date(2026, 3, 2), date(2026, 3, 1)]
