"""Reading a run's output in tests: the Parquet datasets and the DuckDB file, conformed to SPEC."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from schemas.tables import TABLES


def read_parquet_table(out: Path, name: str) -> pl.DataFrame:
    """`<out>/parquet/<name>` as DuckDB reads it (hive partitions), in the table's columns/types."""
    table = TABLES[name]
    if not list((out / "parquet" / name).glob("**/*.parquet")):
        return table.empty()
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        hive = "true" if table.partition else "false"
        glob = str(out / "parquet" / name / "**" / "*.parquet")
        frame = con.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning={hive})").pl()
    finally:
        con.close()
    return table.conform(frame)


def read_duckdb_table(out: Path, name: str) -> pl.DataFrame:
    """Table `name` of `<out>/learnstream.duckdb` (opened read-only), conformed."""
    con = duckdb.connect(str(out / "learnstream.duckdb"), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame = con.sql(f"SELECT * FROM {name}").pl()
    finally:
        con.close()
    return TABLES[name].conform(frame)
