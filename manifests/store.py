"""Append-only Parquet tables under a run root.

A table is a folder of `part-*.parquet` files. A part is written to a hidden temp file and
renamed into place, so a reader (or a re-run after SIGKILL) never sees half a part. Parts are
never rewritten; re-deciding a key appends a newer row (see `schemas.TABLES`).

`compact` (manifests/compact.py) bounds that history: it writes `compact-*.parquet` parts and
then commits them in one atomic step, by replacing `_compacted.json`, which lists the compacted
parts and the `part-*` files they replace. A reader takes the committed compacted parts plus
every `part-*` file the manifest does not list as replaced, so it sees the set before a
compaction or the set after it, never a mix, and files of a killed compaction are never read.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from manifests import commit, fs, fs_read
from manifests.schemas import TABLES


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class Table:
    """One manifest table: `Table(root, 'clips')`."""

    def __init__(self, root: str | Path, name: str):
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}")
        self.root = fs.upath(root)  # a local Path, or an S3Path for s3:// (manifests/fs.py)
        self.name = name
        self.schema, self.key, self.newest_wins = TABLES[name]
        self.dir = self.root / name

    @property
    def manifest_path(self) -> fs.AnyPath:
        return self.dir / MANIFEST

    def manifest(self) -> dict:
        """The committed compaction manifest: {generation, parts, replaced} (empty before any)."""
        text = _read_text(self.manifest_path)
        return json.loads(text) if text else dict(generation=0, parts=[], replaced=[])

    def snapshot(self) -> tuple[list[Path], list[Path]]:
        """(compacted parts, fresh parts) of one committed state of the table.

        Compacted parts hold at most one row per key for newest-wins tables; fresh parts are the
        appends since (any number of rows per key, newer than every compacted row).
        """
        if isinstance(self.dir, Path) and not self.dir.is_dir():
            return [], []
        for _ in range(100):  # a compaction committing while we list: list again
            before = _read_text(self.manifest_path)
            files = commit.committed_glob(self.dir, "part-*.parquet")
            if _read_text(self.manifest_path) == before:
                break
        manifest = json.loads(before) if before else {}
        replaced = set(manifest.get("replaced", []))
        compacted = [self.dir / name for name in manifest.get("parts", [])]
        return compacted, [p for p in files if p.name not in replaced]

    def parts(self) -> list[Path]:
        """Every part a reader reads now (compacted first, then fresh in write order)."""
        compacted, fresh = self.snapshot()
        return compacted + fresh

    def exists(self) -> bool:
        return bool(self.parts())

    def _new_part_path(self) -> Path:
        return self.dir / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"

    def write(self, table: pa.Table) -> Path | None:
        """Atomically add `table` as one new part (cast to the schema). Empty -> no part."""
        if table.num_rows == 0:
            return None
        table = conform(table, self.schema)
        final = self._new_part_path()

        def once():  # a failed attempt leaves nothing visible, so it can simply be made again
            with commit.atomic_write(final) as fh:
                pq.write_table(table, fh)

        fs.retrying(once) if fs.is_s3(final) else once()
        return final

    def write_stream(self, batches: Iterable[pa.Table]) -> Path | None:
        """Write many batches as ONE part, atomically (e.g. a whole filter run)."""
        final = self._new_part_path()
        rows = 0
        try:
            with commit.atomic_write(final) as fh, pq.ParquetWriter(fh, self.schema) as writer:
                for batch in batches:
                    if batch.num_rows:
                        writer.write_table(conform(batch, self.schema))
                        rows += batch.num_rows
                if rows == 0:
                    raise _NoRows
        except _NoRows:
            return None
        return final

    def dataset(self):
        """A pyarrow Dataset over the current parts, or None (fs imports pyarrow.dataset only
        here: it pulls in pandas, 0.3 s that `reelsift sql`/`status` do not need)."""
        parts = self.parts()
        if not parts:
            return None
        return fs_read.parquet_dataset(parts, self.schema)

    def read(self, columns: list[str] | None = None, filter=None) -> pa.Table:
        """All rows (every version of a key), or an empty table with the schema."""
        dset = self.dataset()
        if dset is None:
            empty = self.schema.empty_table()
            return empty.select(columns) if columns else empty
        return dset.to_table(columns=columns, filter=filter)

    def keys(self, column: str | None = None) -> set[str]:
        """Distinct values of the key column (read alone, so memory is one column)."""
        column = column or self.key
        return {v for v in self.read([column]).column(column).to_pylist() if v is not None}

    def clean_temp(self) -> int:
        """Remove what a killed writer left (temp files; unmarked parts on S3) -> how many."""
        return commit.remove_uncommitted(self.dir, "part-*.parquet")


class _NoRows(Exception):
    """write_stream got only empty batches: abort the part."""


MANIFEST = "_compacted.json"


def _read_text(path: fs.AnyPath) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Reorder/cast `table` to `schema`; missing nullable columns become nulls."""
    cols = []
    for field in schema:
        if field.name == "created_at" and field.name in table.column_names:
            col = table.column(field.name).cast(field.type)
            if col.null_count:
                col = pc.fill_null(col, pa.scalar(now_utc(), type=field.type))
            cols.append(col)
        elif field.name in table.column_names:
            cols.append(table.column(field.name).cast(field.type))
        elif field.name == "created_at":
            cols.append(pa.array([now_utc()] * table.num_rows, type=field.type))
        elif field.nullable:
            cols.append(pa.nulls(table.num_rows, type=field.type))
        else:
            raise ValueError(f"column {field.name!r} is required by the schema but missing")
    return pa.Table.from_arrays(cols, schema=schema)


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """List of row dicts -> table with `schema` (absent keys are null)."""
    data = {f.name: [r.get(f.name) for r in rows] for f in schema}
    if "created_at" in data:
        stamp = now_utc()
        data["created_at"] = [v or stamp for v in data["created_at"]]
    return pa.Table.from_pydict(data, schema=schema)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
