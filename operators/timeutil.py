"""Local days (SPEC §4), vectorised per distinct time zone.

Days are represented as polars `Date` values or, inside numpy state, as int32 days since
1970-01-01 (`Date`'s physical value). All instants are int64 microseconds since the Unix epoch, UTC.
The functions loop over the *distinct* zones of their input (a handful), never over rows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000


def day_start_us(days: pl.Series, zones: pl.Series) -> pl.Series:
    """UTC µs of local midnight at the start of each `days[i]` in `zones[i]` (DST-correct).

    Where local midnight does not exist (a DST jump at midnight, e.g. America/Santiago), the day
    starts at the first local instant that exists (local 01:00). Computed once per distinct
    (day, zone) pair and joined back.
    """
    frame = pl.DataFrame({"d": days.cast(pl.Date), "z": zones.cast(pl.String)})
    pairs = frame.unique()
    starts = []
    for (zone,), part in pairs.group_by("z"):
        naive = part["d"].cast(pl.Datetime("us"))
        local = naive.dt.replace_time_zone(str(zone), ambiguous="earliest", non_existent="null")
        # midnight missing (clocks jump 00:00 -> 01:00): the day starts at local 01:00
        later = (naive + timedelta(hours=1)).dt.replace_time_zone(
            str(zone), ambiguous="earliest", non_existent="null"
        )
        start = local.dt.epoch("us").fill_null(later.dt.epoch("us"))
        starts.append(part.with_columns(start=start))
    if not starts:
        return pl.Series("day_start_us", [], dtype=pl.Int64)
    table = pl.concat(starts)
    return frame.join(table, on=["d", "z"], how="left", maintain_order="left")["start"].alias(
        "day_start_us"
    )


def day_end_us(days: pl.Series, zones: pl.Series) -> pl.Series:
    """UTC µs of the end (exclusive) of each local day: the start of the next local day."""
    return day_start_us(days.cast(pl.Date).dt.offset_by("1d"), zones).alias("day_end_us")


def local_day_of(t_us: int, zones: list[str]) -> dict[str, int]:
    """The local day (days since epoch) of one instant in each of `zones` (no polars: it is
    called for every micro-batch and must stay cheap)."""
    instant = datetime.fromtimestamp(t_us // 1_000_000, tz=UTC)
    return {zone: (instant.astimezone(_zone(zone)).date() - _EPOCH).days for zone in zones}


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_EPOCH = date(1970, 1, 1)


def local_days(t_us: pl.Series, zones: pl.Series) -> pl.Series:
    """The local calendar day of each instant in its zone, as `Date`."""
    frame = pl.DataFrame({"t": t_us.cast(pl.Int64), "z": zones.cast(pl.String)}).with_row_index("i")
    out = np.zeros(len(frame), dtype=np.int32)
    for (zone,), part in frame.group_by("z"):
        stamps = part["t"].cast(pl.Datetime("us", "UTC")).dt.convert_time_zone(str(zone))
        out[part["i"].to_numpy()] = stamps.dt.date().cast(pl.Int32).to_numpy()
    return pl.Series("date", out, dtype=pl.Int32).cast(pl.Date)
