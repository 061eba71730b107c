"""DuckDB views over a run root's tables, and the read-only `sql` entry point.

Views (one per table): `videos`, `clips`, `scores`, `decisions`, `shards`, ... For tables whose
keys are re-decided (decisions, captions) the view shows the newest row per key and
`<name>_history` shows every row. Tables with no parts yet are empty views with the schema, so
queries work at every point of a run.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from manifests.schemas import TABLES
from manifests.store import Table


class ReadOnlyError(PermissionError):
    """A statement other than a query was given to the read-only SQL entry point."""


_ALLOWED = {"SELECT", "EXPLAIN"}


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def connect(root: str | Path) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with a view per table of `root` (parts are read at query time)."""
    root = Path(root)
    con = duckdb.connect(":memory:")
    for name in TABLES:
        table = Table(root, name)
        if table.exists():
            files = ", ".join(_quote(p) for p in table.parts())
            source = f"read_parquet([{files}], union_by_name=true)"
        else:
            con.register(f"__empty_{name}", table.schema.empty_table())
            source = f"__empty_{name}"
        if table.newest_wins:
            con.execute(f"CREATE VIEW {name}_history AS SELECT * FROM {source}")
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM {name}_history "
                f"QUALIFY row_number() OVER (PARTITION BY {table.key} ORDER BY created_at DESC) = 1"
            )
        else:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {source}")
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but queries: writes, COPY ... TO, ATTACH, SET, INSTALL ..."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ValueError(f"SQL does not parse: {exc}") from exc
    if not statements:
        raise ValueError("no SQL statement given")
    for stmt in statements:
        kind = stmt.type.name
        if kind not in _ALLOWED:
            raise ReadOnlyError(
                f"refused: `reelsift sql` is read-only and allows only SELECT queries, "
                f"got a {kind} statement. Manifests change only through the stages."
            )


def query(root: str | Path, sql: str) -> pa.Table:
    """Run a read-only query over the run root's views and return an Arrow table."""
    con = connect(root)
    check_read_only(con, sql)
    statements = con.extract_statements(sql)
    for stmt in statements[:-1]:
        con.execute(stmt.query)
    return con.sql(statements[-1].query).to_arrow_table()
