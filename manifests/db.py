"""DuckDB views over a run root's tables, and the read-only `sql` entry point.

Views (one per table): `videos`, `clips`, `scores`, `decisions`, `shards`, ... For tables whose
keys are re-decided or retried (clips, scores, decisions, captions, shards, ...) the view shows
the newest row per key and `<name>_history` shows every row still stored (`compact` keeps only
the newest); `clips` also hides a video's split error once a retry split it
(`schemas.SUPERSEDED_ERRORS`). Tables with no
parts yet are empty views with the schema, so queries work at every point of a run.

The newest-row view stays cheap on long histories: compacted parts already hold one row per
key, so only the parts appended since are ranked, and compacted rows whose key has a newer row
are dropped with an anti-join (a hash join, no sort of the whole history).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa

from manifests import fs, fs_read, reasons
from manifests.schemas import SUPERSEDED_ERRORS, TABLES
from manifests.sqltext import literal
from manifests.store import Table


class ReadOnlyError(PermissionError):
    """A statement other than a query was given to the read-only SQL entry point."""


_ALLOWED = {"SELECT", "EXPLAIN"}


def _read(parts: list, con: duckdb.DuckDBPyConnection | None = None, schema: pa.Schema | None = None) -> str:
    """SQL that reads `parts`: DuckDB's `read_parquet` for local parts; for parts on S3 an Arrow
    dataset registered with `con` (manifests/fs.py: no httpfs, nothing downloaded)."""
    if con is not None and any(fs.is_s3(p) for p in parts):
        return fs_read.parquet_relation(con, parts, schema)
    return f"read_parquet([{', '.join(literal(p) for p in parts)}], union_by_name=true)"


def newest_sql(
    key: str, compacted: list[Path], fresh: list[Path], con: duckdb.DuckDBPyConnection | None = None,
    schema: pa.Schema | None = None,
) -> str:
    """SELECT of the newest row per `key` over compacted parts (one row per key, older than
    every fresh row) and fresh parts (any number of rows per key). `con`/`schema`: see `_read`."""
    read = functools.partial(_read, con=con, schema=schema)
    # the newest created_at per key, then the rows that carry it: a narrow hash aggregate and a
    # streamed semi-join (no window over whole rows). Rows of one key share a created_at only
    # where one write made them together (a video's clips): they are kept together.
    ranked = (
        f"SELECT h.* FROM {read(fresh)} h SEMI JOIN (SELECT {key}, max(created_at) AS newest "
        f"FROM {read(fresh)} GROUP BY {key}) n ON h.{key} = n.{key} AND h.created_at = n.newest"
    )
    if not compacted:
        return ranked
    if not fresh:
        return f"SELECT * FROM {read(compacted)}"
    return (
        f"SELECT * FROM ({ranked}) UNION ALL BY NAME "
        f"SELECT * FROM {read(compacted)} c WHERE NOT EXISTS "
        f"(SELECT 1 FROM {read(fresh)} f WHERE f.{key} = c.{key})"
    )


def table_views(con: duckdb.DuckDBPyConnection, table: Table, name: str | None = None) -> None:
    """Create the view `name` (default: the table's name) and, for newest-wins tables, `name_history`."""
    name = name or table.name
    compacted, fresh = table.snapshot()
    if compacted or fresh:
        history = _read(compacted + fresh, con, table.schema)
    else:
        con.register(f"__empty_{name}", table.schema.empty_table())
        history = f"__empty_{name}"
    if not table.newest_wins:
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {history}")
        return
    con.execute(f"CREATE VIEW {name}_history AS SELECT * FROM {history}")
    current = (newest_sql(table.key, compacted, fresh, con, table.schema) if (compacted or fresh)
               else f"SELECT * FROM {history}")
    group = SUPERSEDED_ERRORS.get(table.name)
    if group and (compacted or fresh):
        con.execute(f"CREATE VIEW __{name}_newest AS {current}")
        current = (
            f"SELECT * FROM __{name}_newest t WHERE t.status <> 'error' OR NOT EXISTS ("
            f"SELECT 1 FROM __{name}_newest n WHERE n.status <> 'error' AND n.{group} = t.{group} "
            "AND n.created_at > t.created_at)"
        )
    con.execute(f"CREATE VIEW {name} AS {current}")


MEMORY_LIMIT = "512MB"
"""DuckDB's working memory per connection; joins, aggregates and sorts spill beyond it."""

MB_PER_THREAD = 128
"""DuckDB threads get at least this much of the memory limit each: every thread holds its own
hash-table and sort buffers, so on a many-core node an uncapped thread count fails with "Out of
Memory" under a small limit, or holds several times the limit in buffers outside it."""


def _megabytes(limit: str) -> float:
    num = limit.strip().upper().rstrip("B").rstrip("I")
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    if num and num[-1] in scale:
        return float(num[:-1]) * scale[num[-1]]
    return float(num) / (1024 * 1024)  # plain bytes


def cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def bound(con: duckdb.DuckDBPyConnection, memory_limit: str = MEMORY_LIMIT) -> duckdb.DuckDBPyConnection:
    """Hold `con` to `memory_limit`, with as many threads as the CPUs this process may use and the
    limit can feed (`MB_PER_THREAD` each, at least one)."""
    threads = max(1, min(cpus(), int(_megabytes(memory_limit) // MB_PER_THREAD)))
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET threads = {threads}")
    return con


def connect(root: str | Path, memory_limit: str = MEMORY_LIMIT) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with a view per table of `root` (parts are read at query time), and the
    macro `reason_head(r)` (manifests/reasons.py).

    Bounded: DuckDB works within `memory_limit` and spills to the system temp folder, so a query
    over 10^7 clips costs disk, not the driver's memory."""
    root = fs.upath(root)
    con = bound(duckdb.connect(":memory:"), memory_limit)
    spill = Path(tempfile.gettempdir()) / f"reelsift-duckdb-{os.getuid()}"
    con.execute(f"SET temp_directory = {literal(spill)}")
    for name in TABLES:
        table_views(con, Table(root, name))
    con.execute(reasons.MACRO)  # reason_head(r): the key a reason is counted under
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


def shared_views(sql: str) -> str:
    """A WITH clause for `sql`: a materialized CTE of the same name stands in for each newest-row
    view that `sql` reads more than once, so each table's rows are ranked once, not once per
    query that reads it (at 10M clips `clips` was ranked six times, with a spilling aggregate of
    10^7 ids each time). DuckDB keeps only the columns the queries read. Tables with float lists
    (embeddings) are left to their view: a copy would hold every clip's embedding."""
    shared = [
        name for name, (schema, _, newest) in TABLES.items()
        if newest and len(re.findall(rf"\b{name}\b", sql)) > 1
        and not any(pa.types.is_list(f.type) and pa.types.is_floating(f.type.value_type) for f in schema)
    ]
    if not shared:
        return ""
    return "WITH " + ", ".join(f"{v} AS MATERIALIZED (SELECT * FROM main.{v})" for v in shared) + " "
