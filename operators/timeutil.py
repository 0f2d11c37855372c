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
    (day, zone) pair (and cached across calls), then joined back.
    """
    frame = pl.DataFrame({"d": days.cast(pl.Date).cast(pl.Int32), "z": zones.cast(pl.String)})
    pairs = frame.unique()
    starts = [_start_of(int(d), str(z)) for d, z in pairs.iter_rows()]
    table = pairs.with_columns(start=pl.Series(starts, dtype=pl.Int64))
    return frame.join(table, on=["d", "z"], how="left", maintain_order="left")["start"].alias(
        "day_start_us"
    )


@lru_cache(maxsize=65536)
def _start_of(day: int, zone: str) -> int:
    """UTC µs of the first instant of local day `day` (days since epoch) in `zone`."""
    tz = _zone(zone)
    local = datetime.combine(_EPOCH + timedelta(days=day), datetime.min.time())
    for hour in range(0, 3):  # midnight, or the first hour that exists after a gap
        candidate = (local + timedelta(hours=hour)).replace(tzinfo=tz, fold=0)
        # a wall time inside a gap does not round-trip through UTC
        back = candidate.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
        if back == candidate.replace(tzinfo=None):
            return int(candidate.timestamp()) * 1_000_000
    raise ValueError(f"no start found for day {day} in {zone}")


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
