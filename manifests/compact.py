"""compact: merge a table's parts into one and keep only the newest row per key where newest wins.

Steps for one table (`compact_table`), each safe to kill:
1. tidy what a killed compaction left: `compact-*` parts no manifest lists, and `part-*` files the
   committed manifest already replaces;
2. take one snapshot of the table (compacted + fresh parts) and stream its rows (the newest row
   per key for newest-wins tables, every row otherwise) into a new `compact-*` part;
3. commit: atomically replace `_compacted.json` with {new part, the fresh parts it replaces};
4. delete the replaced parts and the previous compacted part.
Readers follow the manifest (`Table.snapshot`), so before step 3 they read the old set, after it
the new one. Parts appended while compaction runs are not in the snapshot and stay visible.
One compaction at a time per run root (a lock file refuses a second one; on S3 there is no
lock, so run one compaction at a time yourself). On S3 the manifest is replaced by one PUT, which
S3 makes visible whole, and parts go through the commit protocol of manifests/commit.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from manifests import commit, fs
from manifests.db import _read, bound, newest_sql
from manifests.schemas import TABLES
from manifests.store import Table, _fsync, conform


@dataclass
class Compacted:
    table: str
    parts_before: int
    rows_before: int
    rows_after: int
    skipped: bool = False


class CompactionRunning(RuntimeError):
    """Another `reelsift compact` holds the run root's lock."""


@contextmanager
def _lock(root: Path):
    if fs.is_s3(root):  # object stores have no advisory lock
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".compact.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CompactionRunning(
                f"another compaction of {root} is running; wait for it to finish, then run compact again"
            ) from exc
        yield


def tidy(table: Table) -> int:
    """Remove what a killed compaction left behind; -> files removed."""
    if not table.dir.is_dir():
        return 0
    manifest = table.manifest()
    live = set(manifest.get("parts", []))
    removed = 0
    for part in table.dir.glob("compact-*.parquet"):
        if part.name not in live:
            commit.remove(part)
            removed += 1
    replaced = manifest.get("replaced", [])
    for name in replaced:
        if (table.dir / name).exists():
            commit.remove(table.dir / name)
            removed += 1
    if replaced:
        _commit(table, {**manifest, "replaced": []})
    for tmp in table.dir.glob(".tmp-*"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _commit(table: Table, manifest: dict) -> None:
    if fs.is_s3(table.dir):
        table.manifest_path.write_text(json.dumps(manifest, indent=1))  # one PUT: whole or absent
        return
    tmp = table.dir / f".tmp-{uuid.uuid4().hex}.json"
    tmp.write_text(json.dumps(manifest, indent=1))
    _fsync(tmp)
    os.replace(tmp, table.manifest_path)
    _fsync(table.dir)


def compact_table(root: str | Path, name: str, *, memory_limit: str = "512MB") -> Compacted:
    table = Table(root, name)
    tidy(table)
    compacted, fresh = table.snapshot()
    parts = compacted + fresh
    if len(parts) <= 1 and not (table.newest_wins and fresh):
        return Compacted(name, len(parts), -1, -1, skipped=True)
    con = bound(duckdb.connect(":memory:"), memory_limit)
    spill = Path(tempfile.gettempdir()) / f"reelsift-compact-{os.getpid()}"
    con.execute(f"SET temp_directory = '{spill}'")
    con.execute("SET preserve_insertion_order = false")
    rows_before = con.sql(f"SELECT count(*) FROM {_read(parts, con, table.schema)}").fetchall()[0][0]
    source = (newest_sql(table.key, compacted, fresh, con, table.schema) if table.newest_wins
              else f"SELECT * FROM {_read(parts, con, table.schema)}")
    gen = int(table.manifest().get("generation", 0)) + 1
    final = table.dir / f"compact-{gen:06d}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    rows_after = 0
    with commit.atomic_write(final) as fh, pq.ParquetWriter(fh, table.schema, compression="zstd") as writer:
        for batch in con.sql(source).to_arrow_reader(65536):
            if batch.num_rows:
                rows = conform(pa.Table.from_batches([batch]), table.schema)
                writer.write_table(rows, row_group_size=65536)
                rows_after += batch.num_rows
    con.close()
    shutil.rmtree(spill, ignore_errors=True)
    _commit(table, dict(generation=gen, parts=[final.name], replaced=sorted(p.name for p in fresh)))
    for part in parts:  # the committed manifest no longer reads these
        commit.remove(part)
    _commit(table, dict(generation=gen, parts=[final.name], replaced=[]))
    return Compacted(name, len(parts), rows_before, rows_after)


def compact(root: str | Path, tables: list[str] | None = None) -> list[Compacted]:
    """Compact every table of the run root (or `tables`)."""
    root = fs.upath(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root}: no such run root")
    with _lock(root):
        return [compact_table(root, name) for name in (tables or list(TABLES))]
