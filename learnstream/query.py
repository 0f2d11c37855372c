"""`learnstream query`: SQL over an output directory with DuckDB.

Every table is a view over its Parquet dataset (`<out>/parquet/<table>/**/*.parquet`, hive
partitioned), so queries never lock the database file a running pipeline writes to. The DuckDB
database itself is attached read-only as `db` when present (e.g. `SELECT * FROM db.user_state`).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from schemas.tables import TABLES
from sinks.tables import duckdb_type


def connect(out_dir: Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table over the Parquet output."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    parquet = Path(out_dir) / "parquet"
    for name, table in TABLES.items():
        if not any((parquet / name).glob("**/*.parquet")):
            # no output (yet): an empty view with the table's columns
            columns = ", ".join(f"CAST(NULL AS {duckdb_type(t)}) AS {c}" for c, t in table.schema.items())
            con.execute(f"CREATE VIEW {name} AS SELECT {columns} WHERE false")
            continue
        glob = str(parquet / name / "**" / "*.parquet").replace("'", "''")
        hive = "true" if table.partition else "false"
        con.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{glob}', hive_partitioning={hive})"
        )
    database = Path(out_dir) / "learnstream.duckdb"
    if database.exists():
        path = str(database).replace("'", "''")
        try:
            con.execute(f"ATTACH '{path}' AS db (READ_ONLY)")
        except duckdb.Error:
            pass  # a writer holds it this instant; the Parquet views are enough
    return con


def run_query(out_dir: Path, sql: str, max_rows: int = 200) -> str:
    """The result of `sql` rendered as a text table."""
    con = connect(out_dir)
    try:
        relation = con.sql(sql)
        if relation is None:
            return "ok"
        return str(relation.limit(max_rows))
    finally:
        con.close()
