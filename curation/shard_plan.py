"""Shard planning: which kept clips still need cutting, grouped into writer tasks, in DuckDB.

The driver never holds the kept set as Python objects. One DuckDB query numbers the kept,
unsharded clips per tier, cuts them into groups of `shard.clips_per_task` (deterministic: by tier
and clip_id; a group's name is a hash of its clip ids) and streams every row a writer needs (the
cut columns, the caption and the manifest rows that go into the sample's `.json`) into one plan
Parquet file, sorted by group, in small row groups. Ray gets one tiny row per group; each writer
reads its own group's rows from the plan file (row-group statistics skip the rest).
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curation import pending
from curation.config import ShardConfig
from curation.errors import DiskFull, is_disk_full
from filters.config import FilterConfig
from manifests import fs, fs_read
from manifests.commit import atomic_write
from manifests.configtools import ConfigError
from manifests.db import connect
from manifests.sqltext import literal

log = logging.getLogger("reelsift")

PLAN_DIR = ".plan"  # under <root>/shards/

GROUPS = pa.schema(
    [
        ("group", pa.string()),
        ("tier", pa.string()),
        ("short_side", pa.int32()),
        ("fps", pa.float64()),  # NaN: keep the source rate
        ("group_index", pa.int64()),  # the group's rows in the plan file
        ("n_clips", pa.int64()),
        ("plan", pa.string()),  # plan file path
    ]
)

def plan_dir(root: Path) -> Path:
    return root / "shards" / PLAN_DIR


def clean_plans(root: Path) -> None:
    fs.rmtree(plan_dir(root))


MEMORY_LIMITS = ("400MB", "1GB", "4GB")
"""DuckDB memory limits tried in turn: a join whose build side is wide can fail to spill."""


def plan_shards(root: str | Path, filt: FilterConfig, cfg: ShardConfig) -> pa.Table:
    """Write the plan file of the pending shard work -> one GROUPS row per writer task.

    DuckDB works within a memory limit and spills the sort of the plan rows (the manifest rows
    of each clip, embedding included) under `<root>/shards/.plan/spill` (a local temp folder when
    the root is on S3); where it cannot within 400 MB, the plan is made again with the next
    limit (logged)."""
    for i, limit in enumerate(MEMORY_LIMITS):
        try:
            return _plan(fs.upath(root), filt, cfg, limit)
        except duckdb.OutOfMemoryException as exc:
            if i == len(MEMORY_LIMITS) - 1:
                raise
            log.warning(
                "shard planning: %s; planning again with a %s limit",
                str(exc).splitlines()[0],
                MEMORY_LIMITS[i + 1],
            )
    raise AssertionError("unreachable")


def _plan(root, filt: FilterConfig, cfg: ShardConfig, memory_limit: str) -> pa.Table:
    con = connect(root)
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET memory_limit = {literal(memory_limit)}")
    con.execute("SET threads = 1")  # per-thread sort buffers of wide rows overrun the limit otherwise
    # DuckDB spills to local disk: under the root, or a temp folder when the root is on S3
    if isinstance(root, Path):
        plan_dir(root).mkdir(parents=True, exist_ok=True)  # DuckDB creates the spill folder, not its parents
        spill = plan_dir(root) / "spill"
    else:
        spill = Path(tempfile.gettempdir()) / f"reelsift-plan-{uuid.uuid4().hex[:8]}"
    con.execute(f"SET temp_directory = {literal(str(spill))}")
    con.execute(f"""CREATE TEMP TABLE todo AS
        SELECT clip_id, tier, (row_number() OVER (PARTITION BY tier ORDER BY clip_id) - 1)
               // {int(cfg.clips_per_task)} AS chunk
        FROM ({pending.SHARD})""")
    tiers = [t for (t,) in con.execute("SELECT DISTINCT tier FROM todo").fetchall()]
    unknown = sorted(set(tiers) - set(filt.tiers))
    if unknown:
        raise ConfigError(
            f"decisions name tier(s) {unknown}, which filter.tiers no longer has; re-run filter"
        )
    empty = GROUPS.empty_table()
    if not tiers:
        return empty
    values = ", ".join(
        f"({literal(n)}, {t.short_side}, {'NULL' if t.fps is None else repr(float(t.fps))}::DOUBLE)"
        for n, t in filt.tiers.items()
    )
    con.execute(f"""CREATE TEMP TABLE groups AS
        SELECT substr(md5(string_agg(clip_id, ',' ORDER BY clip_id)), 1, 16) AS "group", g.tier,
               t.short_side::INT AS short_side, coalesce(t.fps::DOUBLE, 'NaN'::DOUBLE) AS fps,
               (row_number() OVER (ORDER BY g.tier, g.chunk) - 1)::BIGINT AS group_index,
               count(*)::BIGINT AS n_clips, g.chunk
        FROM todo g JOIN (VALUES {values}) t(tier, short_side, fps) ON t.tier = g.tier
        GROUP BY g.tier, g.chunk, t.short_side, t.fps""")
    has = {
        name: bool(con.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchall()) for name in ("scores", "captions")
    }
    scores = "s" if has["scores"] else "NULL"
    caption = "cap.caption" if has["captions"] else "NULL::VARCHAR"
    joins = "LEFT JOIN scores s ON s.clip_id = d.clip_id" if has["scores"] else ""
    if has["captions"]:
        joins += """ LEFT JOIN (SELECT clip_id, arg_max(caption, created_at) AS caption FROM captions_history
                     WHERE status = 'ok' GROUP BY clip_id) cap ON cap.clip_id = d.clip_id"""
    # The manifest rows travel as structs, not JSON text: DuckDB spills a sort of structs within
    # its memory limit (it could not with the JSON strings), and the writer makes the JSON.
    sql = f"""
        SELECT g.group_index, g."group", d.clip_id, d.tier, c.path, c.start_frame, c.end_frame, c.fps,
               v.rotation, c.width AS display_width, c.height AS display_height, {caption} AS caption,
               v.size_bytes, epoch(v.created_at) AS ingested_at,
               c AS meta_clip, v AS meta_video, {scores} AS meta_scores, d AS meta_decision
        FROM todo t JOIN groups g ON g.tier = t.tier AND g.chunk = t.chunk
        JOIN decisions d ON d.clip_id = t.clip_id
        JOIN clips c ON c.clip_id = t.clip_id
        JOIN videos v ON v.video_id = c.video_id
        {joins}
        ORDER BY g.group_index
    """
    out = plan_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    plan = out / f"plan-{uuid.uuid4().hex[:12]}.parquet"
    rows_per_group = max(1, 256 // cfg.clips_per_task) * cfg.clips_per_task
    reader = con.sql(sql).to_arrow_reader(rows_per_group * 16)
    written = 0
    try:
        with atomic_write(plan) as fh, pq.ParquetWriter(fh, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch, row_group_size=rows_per_group)
                written += batch.nbytes
    except OSError as exc:  # the temp file is gone: nothing of the plan is visible
        if not is_disk_full(exc):
            raise
        raise DiskFull(root, "the shard plan", exc.strerror, max(written, 1)) from exc
    groups = con.sql(
        'SELECT "group", tier, short_side, fps, group_index, n_clips FROM groups ORDER BY group_index'
    )
    table = groups.to_arrow_table()
    table = table.append_column("plan", pa.array([str(plan)] * table.num_rows, pa.string()))
    return table.cast(GROUPS)


def read_group(plan: str, group_index: int) -> list[dict]:
    """The plan rows of one writer task, in clip_id order (read by the writer, not the driver),
    each with `meta`: the clip's manifest rows {clip, video, scores, decision} as JSON values."""
    filesystem, path = fs_read.arrow_fs(plan)
    rows = pq.read_table(path, filters=[("group_index", "=", group_index)], filesystem=filesystem).to_pylist()
    for r in rows:
        meta = {name: r.pop(f"meta_{name}") for name in ("clip", "video", "scores", "decision")}
        r["meta"] = json.loads(json.dumps(meta, default=str))
    return sorted(rows, key=lambda r: r["clip_id"])
