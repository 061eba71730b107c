"""The polars view of a run root, for notebooks and scripts.

    from manifests.frames import Run
    run = Run("runs/demo")                   # or "s3://bucket/runs/demo"
    run.table("clips").collect()             # one pl.LazyFrame per table, newest-wins applied
    run.kept(tier="256p").collect()          # kept clips with scores, decision, caption, clip_score
    run.sql("SELECT tier, count(*) FROM decisions GROUP BY 1")   # a pl.DataFrame, through DuckDB

`table(name)` has the rows of the DuckDB view of that name (manifests/db.py): every row for
append-only tables, the newest row per key for newest-wins tables (`decisions`, `captions`,
`alignment`, `shards`, `duplicates`), built by the same rules over the same committed parts
(`Table.snapshot`): fresh rows carrying their key's newest `created_at`, plus compacted rows
whose key has no fresh row. `table(name + "_history")` has every stored row.

Polars scans the parts itself (local Parquet natively; S3 parts through the Arrow dataset of
manifests/fs.py, with its credentials, endpoint and retries), so a query reads only the columns
and row groups it needs; bench/export_scale.py measures it against the same rows through DuckDB.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from manifests import db, fs, fs_read
from manifests.schemas import SUPERSEDED_ERRORS, TABLES
from manifests.store import Table

HISTORY = "_history"


def _scan(table: Table, parts: list) -> pl.LazyFrame:
    """Lazy scan of `parts` with the table's schema; columns an older part lacks are null."""
    if not parts:
        return pl.from_arrow(table.schema.empty_table()).lazy()
    if fs.is_s3(parts[0]):
        return pl.scan_pyarrow_dataset(fs_read.parquet_dataset(parts, table.schema))
    schema = pl.from_arrow(table.schema.empty_table()).schema
    return pl.scan_parquet([str(p) for p in parts], schema=schema, missing_columns="insert",
                           extra_columns="ignore")


def newest(key: str, compacted: pl.LazyFrame | None, fresh: pl.LazyFrame | None) -> pl.LazyFrame:
    """The newest row per `key` (db.newest_sql in polars): fresh rows whose `created_at` is their
    key's newest, then compacted rows whose key has no fresh row (compaction keeps one per key)."""
    ranked = None
    if fresh is not None:
        ranked = fresh.filter(pl.col("created_at") == pl.col("created_at").max().over(key))
    if compacted is None:
        return ranked
    if fresh is None:
        return compacted
    older = compacted.join(fresh.select(key).unique(), on=key, how="anti")
    return pl.concat([ranked, older], how="vertical")


class Run:
    """Polars frames over one run root (local path or s3:// URL). Parts are listed when a frame
    is made, so a frame is a consistent snapshot of its table; make a new one to see new rows."""

    def __init__(self, root: str | Path | fs.S3Path):
        self.root = fs.upath(root)

    def tables(self) -> list[str]:
        """Names accepted by `table` (the `_history` forms included)."""
        names = list(TABLES)
        return names + [n + HISTORY for n in names if TABLES[n][2]]

    def table(self, name: str) -> pl.LazyFrame:
        """The rows of the DuckDB view `name` as a LazyFrame (see the module docstring)."""
        history = name.endswith(HISTORY) and name[: -len(HISTORY)] in TABLES
        base = name[: -len(HISTORY)] if history else name
        if base not in TABLES:
            raise KeyError(f"unknown table {name!r}; tables are: {', '.join(self.tables())}")
        table = Table(self.root, base)
        compacted, fresh = table.snapshot()
        if history or not table.newest_wins:
            return _scan(table, compacted + fresh)
        if not compacted and not fresh:
            return _scan(table, [])
        frame = newest(
            table.key,
            _scan(table, compacted) if compacted else None,
            _scan(table, fresh) if fresh else None,
        )
        group = SUPERSEDED_ERRORS.get(base)
        if group is None:
            return frame
        # as the DuckDB view: an error row goes once a newer row of its group is not an error
        later = (frame.filter(pl.col("status") != "error").group_by(group)
                 .agg(pl.col("created_at").max().alias("__ok_at")))
        ok_at = pl.col("__ok_at")
        keep = (pl.col("status") != "error") | ok_at.is_null() | (ok_at <= pl.col("created_at"))
        return frame.join(later, on=group, how="left").filter(keep).drop("__ok_at")

    def kept(self, tier: str | None = None) -> pl.LazyFrame:
        """One row per clip the newest decisions keep (at `tier`, or any): every `clips` column,
        the decision (`tier`, `filter_run`, `decided_at`), every score column of its ok `scores`
        row (the CLIP embedding left out: it is in `table("scores")`), and its newest ok caption
        (`caption`, `caption_model`) and `clip_score` (null where none yet)."""
        decisions = self.table("decisions").filter(pl.col("keep"))
        if tier is not None:
            decisions = decisions.filter(pl.col("tier") == tier)
        decided_at = pl.col("created_at").alias("decided_at")
        decisions = decisions.select("clip_id", "tier", "filter_run", decided_at)
        scores = (
            self.table("scores")
            .filter(pl.col("status") == "ok")
            .drop("status", "error", "created_at", "clip_embedding")
        )
        captions = (
            self.table("captions")
            .filter(pl.col("status") == "ok")
            .select("clip_id", "caption", pl.col("model").alias("caption_model"))
        )
        alignment = self.table("alignment").filter(pl.col("status") == "ok").select("clip_id", "clip_score")
        return (
            self.table("clips")
            .join(decisions, on="clip_id", how="inner")
            .join(scores, on="clip_id", how="left")
            .join(captions, on="clip_id", how="left")
            .join(alignment, on="clip_id", how="left")
        )

    def sql(self, query: str) -> pl.DataFrame:
        """A read-only DuckDB query over the run's views (as `reelsift sql`) -> a DataFrame."""
        return pl.from_arrow(db.query(self.root, query))

    def duckdb_table(self, name: str) -> pl.LazyFrame:
        """The same rows as `table(name)`, made by DuckDB's view and handed over as Arrow
        (eager: the rows are read when this is called). Kept for comparison and benchmarks."""
        con = db.connect(self.root)
        return pl.from_arrow(con.sql(f"SELECT * FROM {name}").to_arrow_table()).lazy()
