"""The curation pipeline: each stage reads the tables before it and appends its own.

Every built-in stage is declared here once, as a `registry.Stage`, in the order `run` takes them;
the CLI, `run`, `status` and the retries read them from the registry. Every stage works only on
the keys its `pending` query returns (missing from its output table, or retryable there), so a
killed run re-run with the same command finishes the work with no duplicates and no losses.

Each step imports its stage (and the scorers, models and Ray behind it) when it runs, so a
command such as `reelsift filter` never pays for torch or Ray.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from curation import pending
from curation.chain import Chain
from curation.config import CurateConfig
from curation.registry import Context, Stage, register, run_chain
from curation.registry import stages as registered
from filters.policy import pre_align_filter
from manifests.schemas import retryable_sql
from manifests.store import Table

if TYPE_CHECKING:
    from curation.runner import PartSink
    from curation.stages.filter import FilterSummary

log = logging.getLogger("reelsift")


def ingest(cfg: CurateConfig, root: Path, input_spec: str | Path, ray_address: str | None = None) -> PartSink:
    """Probe the listed files not ingested yet (or whose row is retryable, or that changed)."""
    from curation.runner import PartSink
    from curation.stages.ingest import DuplicateMarker, list_sources

    listed = list_sources(input_spec, cfg.ingest)
    table = Table(root, "videos")
    known = table.read(["video_id", "path", "status", "size_bytes", "created_at", "error", "error_kind"])
    plan = ingest_plan(listed, known)
    todo = plan.filter(pc.is_in(plan["action"], pa.array(["new", "changed"])))["path"].to_pylist()
    count = {c["values"]: c["counts"] for c in plan.column("action").value_counts().to_pylist()}
    log.info("ingest: %d input files, %d already ingested, %d to probe (%d new, %d changed since ingest)",
             listed.num_rows, listed.num_rows - len(todo), len(todo), count.get("new", 0),
             count.get("changed", 0))
    if count.get("missing"):
        log.warning("ingest: %d listed files ingested ok before are no longer there; their rows are kept "
                    "and they are not probed again", count["missing"])
    ok = known.filter(pc.equal(known.column("status"), "ok")) if todo else known.slice(0, 0)
    seen = dict(zip(ok.column("video_id").to_pylist(), ok.column("path").to_pylist(), strict=True))
    sink = PartSink(table, rows=INGEST.flush_rows(cfg), seconds=cfg.ray.flush_s,
                    transform=DuplicateMarker(seen))
    sink.expected = len(todo)
    items = pa.table({"path": pa.array(todo, pa.string())})
    return run_chain(INGEST, Context(cfg, root, ray_address), items, sink)


def ingest_plan(listed: pa.Table, known: pa.Table) -> pa.Table:
    """{path, action} for each listed file (curation/stages/ingest.py LISTING), by its newest
    `videos` row that is not retryable: 'new' (no such row: probe it), 'changed' (that row is ok
    and the file's size differs or it was modified after the row was written: probed again as a
    new video; the old video's clips become `source changed since ingest` error rows), 'missing'
    (that row is ok, the file is gone: left as it is) or 'done'. One join, no request per file."""
    import duckdb

    con = duckdb.connect(":memory:")
    con.register("listed", listed)
    con.register("known", known)
    return con.sql(
        f"""
        WITH newest AS (
            SELECT path, arg_max(status, created_at) AS status, arg_max(size_bytes, created_at) AS size_bytes,
                   max(created_at) AS created_at
            FROM known WHERE NOT {retryable_sql()} GROUP BY path)
        SELECT l.path, CASE
            WHEN n.path IS NULL THEN 'new'
            WHEN n.status <> 'ok' THEN 'done'
            WHEN l.size_bytes IS NULL THEN 'missing'
            WHEN NOT l.regular
                 OR (n.size_bytes >= 0 AND l.size_bytes <> n.size_bytes)
                 OR l.mtime > epoch_us(n.created_at) / 1e6 THEN 'changed'
            ELSE 'done' END AS action
        FROM listed l LEFT JOIN newest n USING (path)
        ORDER BY l.path
        """
    ).to_arrow_table()


def split(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    return run_chain(SPLIT, Context(cfg, root, ray_address))


def score(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    if cfg.score.aesthetic.random_init:
        log.warning(
            "score: aesthetic/CLIP scores come from UNTRAINED random weights "
            "(score.aesthetic.random_init=true); they carry no meaning"
        )
    return run_chain(SCORE, Context(cfg, root, ray_address))


def _ingest_ops(cfg: CurateConfig, root: Path) -> Chain:
    from curation.stages.ingest import IngestStage

    return Chain.of((IngestStage, cfg.ingest, cfg.ingest.resources))


def _split_ops(cfg: CurateConfig, root: Path) -> Chain:
    from curation.stages.split import SplitStage

    return Chain.of((SplitStage, cfg.split, cfg.split.resources))


def _score_ops(cfg: CurateConfig, root: Path) -> Chain:
    from curation.stages.score import DecodeAndScoreCpu, ScoreNeural
    from curation.stages.score_lanes import lane_ops, uses_lanes

    if uses_lanes(cfg.score):  # a GPU node: the GPU actor decodes (NVDEC + CPU lanes), CPU scorers follow
        log.info("score: decode %s on the GPU actor (NVDEC and CPU lanes)", cfg.score.decode_lane)
        return Chain.of(*lane_ops(cfg.score))
    return Chain.of((DecodeAndScoreCpu, cfg.score, cfg.score.cpu), (ScoreNeural, cfg.score, cfg.score.gpu))


def dedup(cfg: CurateConfig, root: Path):
    from curation.stages.dedup import run_dedup

    if not cfg.dedup.enabled:
        log.info("dedup: disabled (dedup.enabled=false)")
        return None
    summary = run_dedup(root, cfg.dedup)
    log.info(
        "dedup: %d clips, k-means clusters %s, %d groups, %d near-duplicates dropped",
        summary.clips, summary.clusters, summary.groups, summary.duplicates,
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
        summary.decided, summary.kept_per_tier, summary.rejected,
    )
    return summary


def _filter_args(p) -> None:
    p.add_argument("--dry-run", action="store_true", help="decide and print, write nothing")
    p.add_argument("--pre-align", action="store_true",
                   help="ignore bounds on clip_score (run before captions exist)")


def _show_filter(s: FilterSummary, ctx: Context) -> None:
    dry_run = ctx.options.get("dry_run", False)
    print(json.dumps(dict(decided=s.decided, kept_per_tier=s.kept_per_tier, rejected=s.rejected,
                          reasons=s.reasons, written=not dry_run), indent=2))
    if dry_run:  # stderr keeps stdout one JSON document
        from curation.stages.filter import funnel_diff

        print(funnel_diff(ctx.root, s), file=sys.stderr)


def shard(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    """Rewrite tars holding clips the newest decisions dropped, then cut the kept clips no tar
    holds yet (planned in DuckDB; Ray starts only when there is something to cut)."""
    import pyarrow.compute as pc

    from curation.reshard import reshard
    from curation.runner import PartSink
    from curation.shard_plan import clean_plans, plan_shards
    from curation.stages.shard import clean_orphans

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
    groups = plan_shards(root, cfg.filter, cfg.shard)  # the clips of pending.SHARD, in writer tasks
    n_clips = pc.sum(groups.column("n_clips")).as_py() or 0
    log.info("shard: %d clips to write in %d task(s)", n_clips, groups.num_rows)
    sink = PartSink(table, rows=SHARD.flush_rows(cfg))
    sink.expected = n_clips
    try:
        return run_chain(SHARD, Context(cfg, root, ray_address), groups.drop(["n_clips"]), sink)
    finally:
        clean_plans(root)


def _shard_ops(cfg: CurateConfig, root: Path) -> Chain:
    from curation.stages.shard import ShardJob, ShardWriter

    return Chain.of((ShardWriter, ShardJob(cfg=cfg.shard, root=str(root)), cfg.shard.resources))


def caption(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    from curation.stages.caption import caption as run

    return run(cfg, root, ray_address, chain=_caption_ops(cfg, root))


def _caption_ops(cfg: CurateConfig, root: Path) -> Chain:
    from curation.stages.caption import CaptionClips, DecodeForCaption
    from curation.stages.caption_lanes import lane_ops, uses_lanes

    c = cfg.caption
    if uses_lanes(c):  # a GPU node: the captioner's actor decodes on the NVDEC and CPU lanes
        return Chain.of(*lane_ops(c))
    return Chain.of((DecodeForCaption, c, c.decode), (CaptionClips, c, c.captioner))


def align(cfg: CurateConfig, root: Path, ray_address: str | None = None) -> PartSink:
    from curation.stages.align import align as run

    return run(cfg, root, ray_address)


def _ops(module: str, name: str) -> Callable[[CurateConfig, Path], Chain]:
    """`ops` of a stage whose module builds its chain (`<module>.<name>(cfg) -> Chain`)."""

    def ops(cfg: CurateConfig, root: Path) -> Chain:
        import importlib

        return getattr(importlib.import_module(module), name)(cfg)

    return ops


def _decode(section: str) -> Callable[[CurateConfig], Any]:
    def decode(cfg: CurateConfig) -> Any:
        from curation.decode_lanes import DecodeSpec

        return DecodeSpec.of(getattr(cfg, section))

    return decode


def _input_arg(p) -> None:
    p.add_argument("--input", "-i", required=True, help="folder, glob or list file of videos")


def _step(fn: Callable) -> Callable[[Stage, Context], Any]:
    return lambda stage, ctx: fn(ctx.cfg, ctx.root, ctx.ray_address)


INGEST = register(Stage(
    "ingest", "probe every listed video -> videos", table="videos", key="path", unit="videos",
    pending=None,  # the listing is the input: known only with --input
    ops=_ingest_ops,
    step=lambda stage, ctx: ingest(ctx.cfg, ctx.root, ctx.options["input"], ctx.ray_address),
    args=_input_arg, rejected="status = 'rejected'",
))
SPLIT = register(Stage(
    "split", "scene-detect each ok video and cut clips -> clips", table="clips", key="video_id",
    unit="videos", pending=pending.split, step=_step(split),
    ops=_split_ops,
))
SCORE = register(Stage(
    "score", "decode each clip once and run every scorer -> scores", table="scores", key="clip_id",
    unit="clips", pending=pending.score, ops=_score_ops, step=_step(score), decode=_decode("score"),
))
register(Stage(
    "dedup", "group near-duplicate clips by their CLIP embeddings -> duplicates", table="duplicates",
    key="clip_id", unit="clips", pending=pending.dedup, step=lambda stage, ctx: dedup(ctx.cfg, ctx.root),
    optional=True, done="true", rejected="duplicate_of IS NOT NULL", error="false",
))
register(Stage(
    "filter", "decide every clip's tier from the stored scores -> decisions", table="decisions",
    key="clip_id", unit="clips", pending=pending.filter_,
    step=lambda stage, ctx: filter_(ctx.cfg, ctx.root, dry_run=ctx.options.get("dry_run", False),
                                    pre_align=ctx.options.get("pre_align", False)),
    args=_filter_args, show=_show_filter, run_options={"pre_align": True},
    done="true", rejected="NOT keep", error="false",
))
register(Stage(
    "caption", "recaption kept clips with a VLM -> captions", table="captions", key="clip_id",
    unit="clips", pending=pending.caption, ops=_caption_ops,
    step=_step(caption), decode=_decode("caption"), optional=True,
))
register(Stage(
    "align", "CLIP similarity of each clip and its caption -> alignment", table="alignment",
    key="clip_id", unit="clips", pending=pending.align, ops=_ops("curation.stages.align", "align_ops"),
    step=_step(align), optional=True, refilter_after=True,
))
SHARD = register(Stage(
    "shard", "write kept clips into WebDataset tars -> shards", table="shards", key="clip_id",
    unit="clips", pending=pending.shard, ops=_shard_ops, step=_step(shard),
    flush_rows=lambda cfg: 1,  # index each finished tar at once
    rejected="status = 'removed'",  # a re-filter took it out of its tar
))


def all_stages() -> list[Stage]:
    """Every registered stage in run order, the built-in ones above included."""
    return registered()


def stages(
    cfg: CurateConfig, root: Path, input_spec: str | Path | None, ray_address: str | None
) -> list[tuple[str, Callable[[], object]]]:
    """The whole pipeline as a flat, ordered list of (name, step), from the registry."""
    out: list[tuple[str, Callable[[], object]]] = []
    for stage in registered():
        ctx = Context(cfg, root, ray_address, {"input": input_spec, **stage.run_options})
        out.append((stage.name, lambda stage=stage, ctx=ctx: stage.run(ctx)))
        if stage.refilter_after:  # its table holds scores the tiers bound: decide again
            out.append(("refilter", lambda: filter_(cfg, root)))
    return out


def run_all(cfg: CurateConfig, root: Path, input_spec: str | Path, ray_address: str | None = None) -> None:
    for _name, step in stages(cfg, root, input_spec, ray_address):
        step()
