"""compact: merge a table's parts into one and keep only the newest row per key where newest wins.

Steps for one table (`compact_table`), each safe to kill:
1. tidy what a killed compaction left (`compact-*` parts no manifest lists) and the files an
   earlier compaction replaced, once they are `KEEP_REPLACED_S` old;
2. take one snapshot of the table (compacted + fresh parts) and stream its rows (the newest row
   per key for newest-wins tables, every row otherwise) into a new `compact-*` part;
3. commit: atomically replace `_compacted.json` with {new part, the fresh parts it replaces};
4. the replaced parts and the previous compacted part stay, unread, for `KEEP_REPLACED_S`, so a
   reader that listed them just before the commit still finds them; a later compaction deletes them.
Readers follow the manifest (`Table.snapshot`), so before step 3 they read the old set, after it
the new one. Parts appended while compaction runs are not in the snapshot and stay visible.
Each table is compacted under its lease (manifests/lease.py), so neither a second compaction nor
a stage writing that table runs beside it. On S3 the manifest is replaced by one PUT, which S3
makes visible whole, and parts go through the commit protocol of manifests/commit.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from manifests import commit, fs, lease
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


KEEP_REPLACED_S = 900.0
"""How long the files a compaction replaced stay on disk: a reader that listed the parts just
before the commit (a stage's first query, a report) still finds them. The next compaction of the
table deletes them once they are this old."""


def tidy(table: Table, keep_s: float = KEEP_REPLACED_S) -> int:
    """Remove what a killed compaction left behind, and replaced files older than `keep_s`
    seconds; -> files removed."""
    if not table.dir.is_dir():
        return 0
    manifest = table.manifest()
    live = set(manifest.get("parts", []))
    retired = dict(manifest.get("retired", {}))  # file name -> when it stopped being read
    for name in manifest.get("replaced", []):  # a manifest written before `retired` existed
        retired.setdefault(name, 0.0)
    due = {name for name, at in retired.items() if at <= time.time() - keep_s}
    removed = 0
    for part in table.dir.glob("compact-*.parquet"):
        if part.name not in live and (part.name not in retired or part.name in due):
            commit.remove(part)  # a killed compaction's part, or a replaced one old enough
            removed += 1
    for name in sorted(due):
        if name.startswith("part-") and (table.dir / name).exists():
            commit.remove(table.dir / name)
            removed += 1
    if due:
        _commit(table, _manifest(manifest.get("generation", 0), sorted(live),
                                 {n: at for n, at in retired.items() if n not in due}))
    for tmp in table.dir.glob(".tmp-*"):  # only ours: the lease keeps writers of this table out
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _manifest(generation: int, parts: list[str], retired: dict[str, float]) -> dict:
    """Readers read `parts` plus every `part-*` file not in `replaced`; `retired` says since when
    each replaced file is unread (tidy deletes it later)."""
    replaced = sorted(n for n in retired if n.startswith("part-"))
    return dict(generation=generation, parts=parts, replaced=replaced, retired=retired)


def _commit(table: Table, manifest: dict) -> None:
    if fs.is_s3(table.dir):
        table.manifest_path.write_text(json.dumps(manifest, indent=1))  # one PUT: whole or absent
        return
    tmp = table.dir / f".tmp-{uuid.uuid4().hex}.json"
    tmp.write_text(json.dumps(manifest, indent=1))
    _fsync(tmp)
    os.replace(tmp, table.manifest_path)
    _fsync(table.dir)


def compact_table(root: str | Path, name: str, *, memory_limit: str = "512MB",
                  keep_s: float = KEEP_REPLACED_S) -> Compacted:
    table = Table(root, name)
    tidy(table, keep_s)
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
    retired = dict(table.manifest().get("retired", {}))
    retired.update({p.name: time.time() for p in parts})  # the commit below stops every read of these
    _commit(table, _manifest(gen, [final.name], retired))
    tidy(table, keep_s)  # with keep_s=0: delete them now
    return Compacted(name, len(parts), rows_before, rows_after)


def compact(root: str | Path, tables: list[str] | None = None, *, wait_s: float = 0.0,
            force: bool = False, keep_s: float = KEEP_REPLACED_S) -> list[Compacted]:
    """Compact every table of the run root (or `tables`), each under its lease: a table being
    written is waited for up to `wait_s` seconds, then LeaseHeld names its writer."""
    root = fs.upath(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root}: no such run root")
    done = []
    for name in tables or list(TABLES):
        with lease.hold(root, name, command="reelsift compact", wait_s=wait_s, force=force):
            done.append(compact_table(root, name, keep_s=keep_s))
    return done
