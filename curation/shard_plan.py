"""Shard planning: which kept clips still need cutting, grouped into writer tasks, in DuckDB.

The driver never holds the kept set as Python objects. One DuckDB query numbers the kept,
unsharded clips per tier and cuts them into groups of `shard.clips_per_task` (deterministic: by
tier and clip_id; a group's name is a hash of its clip ids). Consecutive groups form buckets of
about `BUCKET_ROWS` clips. Every row a writer needs (the cut columns, the caption and the manifest
rows that go into the sample's `.json`) is then gathered without sorting wide rows:
1. each table's rows of the planned clips stream out once, past a narrow hash table of
   (clip_id, bucket), into one Arrow IPC file per bucket (local temp files);
2. per bucket, DuckDB joins the keys and row numbers, the wide rows are taken by row number,
   and the bucket's rows, sorted by group, become one plan Parquet file in row groups.
Ray gets one tiny row per group (with its bucket's plan file); each writer reads its own
group's rows from that file (row-group statistics skip the rest).
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import pending
from curation.config import ShardConfig
from curation.errors import DiskFull, is_disk_full
from filters.config import FilterConfig
from manifests import fs, fs_read
from manifests.commit import atomic_write
from manifests.configtools import ConfigError
from manifests.db import bound, connect
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
        ("plan", pa.string()),  # the plan file of the group's bucket
    ]
)

def plan_dir(root: Path) -> Path:
    return root / "shards" / PLAN_DIR


def clean_plans(root: Path) -> None:
    fs.rmtree(plan_dir(root))


MEMORY_LIMITS = ("512MB", "1GB", "4GB")
"""DuckDB memory limits tried in turn: a hash table that cannot spill can overrun a limit."""


def plan_shards(root: str | Path, filt: FilterConfig, cfg: ShardConfig) -> pa.Table:
    """Write the plan files of the pending shard work -> one GROUPS row per writer task.

    DuckDB works within a memory limit and spills under `<root>/shards/.plan/spill` (a local temp
    folder when the root is on S3); where it cannot within 512 MB, the plan is made again with
    the next limit (logged)."""
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
    con = bound(connect(root), memory_limit)
    con.execute("SET preserve_insertion_order = false")
    # DuckDB spills to local disk: under the root, or a temp folder when the root is on S3
    if isinstance(root, Path):
        plan_dir(root).mkdir(parents=True, exist_ok=True)  # DuckDB creates the spill folder, not its parents
        spill = plan_dir(root) / "spill"
    else:
        spill = Path(tempfile.gettempdir()) / f"reelsift-plan-{uuid.uuid4().hex[:8]}"
    con.execute(f"SET temp_directory = {literal(str(spill))}")
    con.execute("SET threads = 1")  # two threads' hash tables of 10^7 keys overrun the limit here
    con.execute(f"""CREATE TEMP TABLE todo AS
        SELECT clip_id, tier, (row_number() OVER (PARTITION BY tier ORDER BY clip_id) - 1)
               // {int(cfg.clips_per_task)} AS chunk
        FROM ({pending.SHARD})""")
    bound(con, memory_limit)  # threads back to what the limit feeds, for the rest of the plan
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
    n_groups, n_rows = con.execute('SELECT count(*), sum(n_clips) FROM groups').fetchall()[0]
    per_bucket = _groups_per_bucket(n_groups, n_rows)
    con.execute(f"""CREATE TEMP TABLE keys AS
        SELECT g.group_index // {per_bucket} AS bucket, g.group_index, g."group", t.clip_id
        FROM todo t JOIN groups g ON g.tier = t.tier AND g.chunk = t.chunk""")
    con.execute("CREATE TEMP TABLE clip_bucket AS SELECT DISTINCT clip_id, bucket FROM keys")
    # The wide tables stream past narrow hash tables of keys (build side as written: DuckDB's
    # estimate of a view's rows can make it build on the wide side, which spills at 10M clips).
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    pieces = {
        "k": 'SELECT bucket, group_index, "group", clip_id FROM keys',
        "d": _newest_piece(con, "decisions"),
        "c": _newest_piece(con, "clips"),
        "v": "SELECT b.bucket, t.* FROM videos t JOIN video_bucket b ON b.video_id = t.video_id",
    }
    con.execute("""CREATE TEMP TABLE video_bucket AS SELECT DISTINCT t.video_id, n.bucket FROM clips_history t
                   JOIN newest_clips n ON n.clip_id = t.clip_id AND n.created_at = t.created_at""")
    has = {
        name: bool(con.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchall()) for name in ("scores", "captions")
    }
    by_clip = "JOIN clip_bucket b ON b.clip_id = t.clip_id"
    if has["scores"]:
        pieces["s"] = _newest_piece(con, "scores")
    if has["captions"]:
        pieces["cap"] = (f"SELECT b.bucket, t.clip_id, t.caption, t.created_at FROM captions_history t "
                         f"{by_clip} WHERE t.status = 'ok'")
    out = plan_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"plan-{uuid.uuid4().hex[:12]}"
    rows_per_group = max(1, 1024 // cfg.clips_per_task) * cfg.clips_per_task
    written: list = []
    nbytes = [0]  # bytes of plan rows bucketed so far
    try:
        with tempfile.TemporaryDirectory(prefix="buckets-", dir=_local_dir(root)) as tmp:
            files = {}
            for name, sql in pieces.items():
                passes = _passes(sql, n_rows) if name in ("d", "c", "s") else [sql]
                files[name] = _bucket(con, passes, Path(tmp) / name, nbytes)
            join = bound(duckdb.connect(":memory:"), "256MB")
            for b in sorted(files["k"][1]):
                plan = out / f"{stem}-{b:05d}.parquet"
                rows = _joined(join, {name: _read_bucket(schema, paths.get(b))
                                      for name, (schema, paths) in files.items()})
                # no dictionaries (ids and paths are unique), statistics only where writers filter
                with atomic_write(plan) as fh, pq.ParquetWriter(
                    fh, rows.schema, use_dictionary=False, write_statistics=["group_index"]
                ) as writer:
                    writer.write_table(rows, row_group_size=rows_per_group)
                written.append(plan)
    except OSError as exc:  # nothing of the plan stays visible
        for plan in written:
            fs.upath(plan).unlink(missing_ok=True)
        if not is_disk_full(exc):
            raise
        raise DiskFull(root, "the shard plan", exc.strerror, max(nbytes[0], 1)) from exc
    groups = con.sql(
        'SELECT "group", tier, short_side, fps, group_index, n_clips FROM groups ORDER BY group_index'
    )
    table = groups.to_arrow_table()
    bucket = pc.divide(table.column("group_index"), per_bucket).to_numpy()
    names = np.array([str(out / f"{stem}-{b:05d}.parquet") for b in range(int(bucket.max()) + 1)], object)
    table = table.append_column("plan", pa.array(names[bucket], pa.string()))
    return table.cast(GROUPS)


def _newest_piece(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """SQL of the newest rows of `table` (the view's rows) for the planned clips, with their bucket.

    The newest created_at of each planned clip comes first, from the history's two narrow
    columns; the wide rows then stream past that table. (The view would rank every key of the
    table with the wide rows in the join: at 10^7 clips those spill.) A planned clip is visible
    in `clips`, so no superseded error row is among its newest rows.

    The wide rows meet the newest table on (hash of the clip id, created_at): a hash table of
    integers, a third the size of one of string ids. A row of another clip whose id has the
    same hash and the same created_at may come along; `_joined` joins by clip id, so it is
    never planned."""
    con.execute(f"""CREATE TEMP TABLE newest_{table} AS
        SELECT clip_id, hash(clip_id) AS h, bucket, created_at FROM (
            SELECT t.clip_id, b.bucket, max(t.created_at) AS created_at
            FROM {table}_history t JOIN clip_bucket b ON b.clip_id = t.clip_id
            GROUP BY t.clip_id, b.bucket)""")
    return (f"SELECT n.bucket, t.* FROM {table}_history t JOIN newest_{table} n "
            "ON n.h = hash(t.clip_id) AND n.created_at = t.created_at")


PASS_ROWS = 8_000_000
"""Planned clips per pass of a wide table: each pass's hash table of keys (integers, 8 bytes a
key) stays in memory, so the wide rows stream past it and are never spilled. Each pass reads
the whole table again: at 10^7 clips (5M planned) one pass reads it once."""


def _passes(sql: str, n_rows: int) -> list[str]:
    """`sql` (rows of a piece, `t` the table, `n` its newest table) cut into passes by the hash
    of the clip id: both sides of the join are cut, so each pass builds a part of the keys."""
    n = max(1, -(-n_rows // PASS_ROWS))
    if n == 1:
        return [sql]
    return [f"{sql} WHERE n.h % {n} = {i} AND hash(t.clip_id) % {n} = {i}" for i in range(n)]


_NARROW = """k.group_index, k."group", d.clip_id, d.tier, c.path, c.start_frame, c.end_frame, c.fps,
    v.rotation, c.width AS display_width, c.height AS display_height"""


def _joined(join: duckdb.DuckDBPyConnection, pieces: dict[str, pa.Table]) -> pa.Table:
    """The plan rows of one bucket from its pieces (k: keys, d: decisions, c: clips, v: videos,
    and where the root has them s: scores, cap: ok captions), sorted by group.

    DuckDB joins only the keys and row numbers (and the narrow columns); the wide rows are
    taken by row number, as the structs `meta_clip`, `meta_video`, `meta_scores` and
    `meta_decision` (the manifest rows; the writer makes the JSON)."""
    for name, rows in pieces.items():
        join.register(name, rows.append_column("_i", pa.array(np.arange(rows.num_rows), pa.int64())))
    has_s, has_cap = "s" in pieces, "cap" in pieces
    joins = "LEFT JOIN s ON s.clip_id = d.clip_id" if has_s else ""
    if has_cap:
        joins += """ LEFT JOIN (SELECT clip_id, arg_max(_i, created_at) AS _i FROM cap GROUP BY clip_id) cap
                     ON cap.clip_id = d.clip_id"""
    idx = join.sql(f"""
        SELECT {_NARROW}, v.size_bytes, epoch(v.created_at) AS ingested_at,
               c._i AS c_i, v._i AS v_i, {"s._i" if has_s else "NULL::BIGINT"} AS s_i, d._i AS d_i,
               {"cap._i" if has_cap else "NULL::BIGINT"} AS cap_i
        FROM k JOIN d ON d.clip_id = k.clip_id
        JOIN c ON c.clip_id = k.clip_id
        JOIN v ON v.video_id = c.video_id
        {joins}
        ORDER BY k.group_index
    """).to_arrow_table()
    for name in pieces:
        join.unregister(name)
    n = idx.num_rows
    caption = (pieces["cap"].column("caption").take(idx.column("cap_i")) if has_cap
               else pa.nulls(n, pa.string()))
    out = idx.select(list(range(11))).append_column("caption", caption)
    out = out.append_column("size_bytes", idx.column("size_bytes"))
    out = out.append_column("ingested_at", idx.column("ingested_at"))
    for meta, name in (("meta_clip", "c"), ("meta_video", "v"), ("meta_scores", "s"), ("meta_decision", "d")):
        if name not in pieces:
            out = out.append_column(meta, pa.nulls(n))
            continue
        struct = pieces[name].to_struct_array()
        out = out.append_column(meta, struct.take(idx.column(f"{name}_i")))
    return out


BATCH_ROWS = 16_384
"""Rows DuckDB hands over at a time while a piece streams out."""

BUCKET_ROWS = 32_768
"""Plan rows per bucket (and per plan file), about: a bucket's pieces are joined in memory, and
a writer reads only its plan file's footer and one row group."""

MAX_BUCKETS = 512  # open files per piece at once


def _groups_per_bucket(n_groups: int, n_rows: int) -> int:
    """Consecutive groups per bucket: about BUCKET_ROWS rows each, at most MAX_BUCKETS buckets."""
    rows_per_group = max(1.0, n_rows / max(1, n_groups))
    per = max(1, int(BUCKET_ROWS / rows_per_group))
    return max(per, -(-n_groups // MAX_BUCKETS))


def _local_dir(root) -> Path:
    """Where the buckets go: the plan folder of a local root, the temp folder for a root on S3."""
    return plan_dir(root) if isinstance(root, Path) else Path(tempfile.gettempdir())


def _bucket(con: duckdb.DuckDBPyConnection, passes: list[str], folder: Path,
            nbytes: list[int]) -> tuple[pa.Schema, dict[int, Path]]:
    """Stream a piece's rows (the queries `passes`, one after the other) into one Arrow IPC file
    per value of its `bucket` column (dropped) -> (schema, {bucket: file}). Memory: one batch.
    `nbytes[0]` counts the bytes bucketed."""
    folder.mkdir()
    first = con.sql(passes[0]).to_arrow_reader(BATCH_ROWS)
    schema = first.schema.remove(first.schema.get_field_index("bucket"))
    readers = itertools.chain([first], (con.sql(q).to_arrow_reader(BATCH_ROWS) for q in passes[1:]))
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    try:
        for batch in (b for reader in readers for b in reader):
            nbytes[0] += batch.nbytes
            bucket = batch.column("bucket")
            order = pc.sort_indices(bucket)
            batch, bucket = batch.drop_columns(["bucket"]).take(order), bucket.take(order).to_numpy()
            cuts = np.flatnonzero(np.diff(bucket)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(bucket)], strict=True):
                b = int(bucket[lo])
                if b not in writers:
                    writers[b] = pa.ipc.new_stream(str(folder / f"{b:05d}.arrow"), schema)
                writers[b].write_batch(batch.slice(lo, hi - lo))
    finally:
        for w in writers.values():
            w.close()
    return schema, {b: folder / f"{b:05d}.arrow" for b in writers}


def _read_bucket(schema: pa.Schema, path: Path | None) -> pa.Table:
    """One piece's rows of one bucket (none: an empty table), its file removed once read."""
    if path is None:
        return schema.empty_table()
    with pa.memory_map(str(path)) as src:
        rows = pa.ipc.open_stream(src).read_all().combine_chunks()  # one chunk: fast takes
    path.unlink()
    return rows


def read_group(plan: str, group_index: int) -> list[dict]:
    """The plan rows of one writer task, in clip_id order (read by the writer, not the driver),
    each with `meta`: the clip's manifest rows {clip, video, scores, decision} as JSON values."""
    filesystem, path = fs_read.arrow_fs(plan)
    rows = pq.read_table(path, filters=[("group_index", "=", group_index)], filesystem=filesystem).to_pylist()
    for r in rows:
        meta = {name: r.pop(f"meta_{name}") for name in ("clip", "video", "scores", "decision")}
        r["meta"] = json.loads(json.dumps(meta, default=str))
    return sorted(rows, key=lambda r: r["clip_id"])
