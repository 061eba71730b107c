"""The curation pipeline: each stage reads the tables before it and appends its own.

Every stage works only on keys missing from its output table, so a killed run re-run with the
same command finishes the work with no duplicates and no losses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from curation.config import CurateConfig
from curation.errors import is_retryable
from filters.policy import pre_align_filter
from manifests.db import connect
from manifests.schemas import retryable_sql
from manifests.store import Table

if TYPE_CHECKING:
    from curation.runner import PartSink
    from curation.stages.filter import FilterSummary

log = logging.getLogger("reelsift")


# Each step imports its stage (and the scorers, models and Ray behind it) when it runs, so a
# command such as `reelsift filter` never pays for torch or Ray.


def ingest(cfg: CurateConfig, root: Path, input_spec: str | Path, ray_address: str | None = None) -> PartSink:
    from curation.runner import PartSink, run_stage
    from curation.stages.ingest import DuplicateMarker, IngestStage, list_inputs

    paths = list_inputs(input_spec, cfg.ingest)
    table = Table(root, "videos")
    table.clean_temp()
    known = table.read(["video_id", "path", "status", "size_bytes", "created_at", "error", "error_kind"])
    known = [r for r in known.to_pylist() if not is_retryable(r)]  # storage failed: take again
    done = {r["path"] for r in known}
    todo = [p for p in paths if p not in done] + changed_sources(known, done.intersection(paths))
    log.info(
        "ingest: %d input files, %d already ingested, %d to probe",
        len(paths),
        len(paths) - len(todo),
        len(todo),
    )
    seen = {r["video_id"]: r["path"] for r in known if r["status"] == "ok"}
    sink = PartSink(table, rows=cfg.ray.flush_rows, seconds=cfg.ray.flush_s, transform=DuplicateMarker(seen))
    sink.expected = len(todo)
    items = pa.table({"path": pa.array(todo, pa.string())})
    return run_stage(
        "ingest",
        IngestStage,
        cfg.ingest,
        cfg.ingest.resources,
        items,
        sink,
        ray_address=ray_address,
        ray_cfg=cfg.ray,
    )


def changed_sources(known: list[dict], paths: set[str]) -> list[str]:
    """Paths among `paths` whose file changed since its newest ok row: ingested again, as a
    new video (the old video's clips become `source changed since ingest` error rows)."""
    from filters.video import source_changed

    newest: dict[str, dict] = {}
    for r in known:
        if r["path"] in paths and (
            r["path"] not in newest or r["created_at"] > newest[r["path"]]["created_at"]
        ):
            newest[r["path"]] = r
    return sorted(
        p
        for p, r in newest.items()
        if r["status"] == "ok" and source_changed(p, r["size_bytes"], r["created_at"].timestamp())
    )


def split(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    from curation.runner import PartSink, run_stage
    from curation.stages.split import SplitStage

    clips = Table(root, "clips")
    clips.clean_temp()
    con = connect(root)
    items = con.sql(f"""
        SELECT video_id, path, fps, n_frames, display_width, display_height, size_bytes,
               epoch(created_at) AS ingested_at
        FROM videos
        WHERE status = 'ok' AND video_id NOT IN (SELECT video_id FROM clips WHERE NOT {retryable_sql()})
        QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY created_at DESC) = 1
        ORDER BY video_id
    """).to_arrow_table()
    log.info("split: %d videos to split", items.num_rows)
    sink = PartSink(clips, rows=cfg.ray.flush_rows, seconds=cfg.ray.flush_s)
    return run_stage(
        "split",
        SplitStage,
        cfg.split,
        cfg.split.resources,
        items,
        sink,
        ray_address=ray_address,
        ray_cfg=cfg.ray,
    )


def score(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    from curation.runner import PartSink, run_stage
    from curation.stages.score import DecodeAndScoreCpu, ScoreNeural
    from curation.stages.score_lanes import lane_ops, uses_lanes

    scores = Table(root, "scores")
    scores.clean_temp()
    con = connect(root)
    items = con.sql(f"""
        SELECT c.clip_id, c.path, c.start_frame, c.end_frame, c.fps, v.rotation,
               c.width AS display_width, c.height AS display_height, v.size_bytes,
               epoch(v.created_at) AS ingested_at, v.codec, v.pix_fmt, v.vfr
        FROM clips c JOIN (  -- a file ingested again unchanged has a second row: take the newest
            SELECT * FROM videos WHERE status = 'ok'
            QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY created_at DESC) = 1
        ) v ON v.video_id = c.video_id
        WHERE c.status = 'ok' AND c.clip_id NOT IN (SELECT clip_id FROM scores WHERE NOT {retryable_sql()})
        ORDER BY c.video_id, c.start_frame  -- a batch holds neighbouring clips: one decode pass
    """).to_arrow_table()
    if cfg.score.aesthetic.random_init:
        log.warning(
            "score: aesthetic/CLIP scores come from UNTRAINED random weights "
            "(score.aesthetic.random_init=true); they carry no meaning"
        )
    log.info("score: %d clips to score", items.num_rows)
    sink = PartSink(scores, rows=cfg.ray.flush_rows, seconds=cfg.ray.flush_s)
    sink.expected = items.num_rows
    if uses_lanes(cfg.score):  # a GPU node: the GPU actor decodes (NVDEC + CPU lanes), CPU scorers follow
        ops = lane_ops(cfg.score)
        log.info("score: decode %s on the GPU actor (NVDEC and CPU lanes)", cfg.score.decode_lane)
    else:
        ops = [(DecodeAndScoreCpu, cfg.score, cfg.score.cpu), (ScoreNeural, cfg.score, cfg.score.gpu)]
    return run_stage("score", ops, None, None, items, sink, ray_address=ray_address, ray_cfg=cfg.ray)


def dedup(cfg: CurateConfig, root: Path):
    from curation.stages.dedup import run_dedup

    if not cfg.dedup.enabled:
        log.info("dedup: disabled (dedup.enabled=false)")
        return None
    summary = run_dedup(root, cfg.dedup)
    log.info(
        "dedup: %d clips, k-means clusters %s, %d groups, %d near-duplicates dropped",
        summary.clips,
        summary.clusters,
        summary.groups,
        summary.duplicates,
    )
    return summary


def filter_(cfg: CurateConfig, root: Path, dry_run: bool = False, pre_align: bool = False) -> FilterSummary:
    """pre_align: ignore bounds on alignment columns (the pass that picks clips to caption)."""
    from curation.stages.filter import run_filter

    Table(root, "decisions").clean_temp()
    policy = pre_align_filter(cfg.filter) if pre_align else cfg.filter
    summary = run_filter(root, policy, dry_run=dry_run, dedup=cfg.dedup.enabled)
    log.info(
        "filter: %d clips decided, kept per tier %s, %d rejected",
        summary.decided,
        summary.kept_per_tier,
        summary.rejected,
    )
    return summary


def shard(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    """Rewrite tars holding clips the newest decisions dropped, then cut the kept clips no tar
    holds yet (planned in DuckDB; Ray starts only when there is something to cut)."""
    import pyarrow.compute as pc

    from curation.reshard import reshard
    from curation.runner import PartSink, run_stage
    from curation.shard_plan import clean_plans, plan_shards
    from curation.stages.shard import ShardJob, ShardWriter, clean_orphans

    table = Table(root, "shards")
    table.clean_temp()
    removed = clean_orphans(root)
    if removed:
        log.info("shard: removed %d unindexed tar(s) left by an interrupted run", removed)
    rs = reshard(root)
    if rs.tars_rewritten or rs.tars_removed:
        log.info(
            "shard: %d clip(s) no longer kept taken out of their tars (%d tar(s) rewritten with %d "
            "clip(s) copied, %d tar(s) removed)",
            rs.clips_removed, rs.tars_rewritten, rs.clips_copied, rs.tars_removed,
        )
    groups = plan_shards(root, cfg.filter, cfg.shard)
    n_clips = pc.sum(groups.column("n_clips")).as_py() or 0
    log.info("shard: %d clips to write in %d task(s)", n_clips, groups.num_rows)
    sink = PartSink(table, rows=1)  # index each finished tar at once
    sink.expected = n_clips
    job = ShardJob(cfg=cfg.shard, root=str(root))
    try:
        return run_stage(
            "shard",
            ShardWriter,
            job,
            cfg.shard.resources,
            groups.drop(["n_clips"]),
            sink,
            ray_address=ray_address,
            ray_cfg=cfg.ray,
        )
    finally:
        clean_plans(root)


def caption(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    from curation.stages.caption import caption as run
    from curation.stages.caption_lanes import lane_ops, uses_lanes

    # a GPU node: the captioner's actor decodes on the NVDEC and CPU lanes
    ops = lane_ops(cfg.caption) if uses_lanes(cfg.caption) else None
    return run(cfg, root, ray_address, ops=ops)


def align(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    from curation.stages.align import align as run

    return run(cfg, root, ray_address)


def stages(
    cfg: CurateConfig, root: Path, input_spec: str | Path | None, ray_address: str | None
) -> list[tuple[str, Callable[[], object]]]:
    """The whole pipeline as a flat, ordered list of (name, step)."""
    return [
        ("ingest", lambda: ingest(cfg, root, input_spec, ray_address)),
        ("split", lambda: split(cfg, root, ray_address)),
        ("score", lambda: score(cfg, root, ray_address)),
        ("dedup", lambda: dedup(cfg, root)),
        ("filter", lambda: filter_(cfg, root, pre_align=True)),
        ("caption", lambda: caption(cfg, root, ray_address)),
        ("align", lambda: align(cfg, root, ray_address)),
        ("refilter", lambda: filter_(cfg, root)),
        ("shard", lambda: shard(cfg, root, ray_address)),
    ]


def run_all(cfg: CurateConfig, root: Path, input_spec: str | Path, ray_address: str | None = None) -> None:
    for _name, step in stages(cfg, root, input_spec, ray_address):
        step()
