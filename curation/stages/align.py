"""align: CLIP text-image similarity of each clip's newest ok caption -> `alignment` table.

The clip side is the unit-norm `clip_embedding` that score already stored (no decoding); the
caption is encoded by the same CLIP (`score.aesthetic` config: same architecture, weights and
seed), so the two live in one embedding space. `clip_score` is their cosine (-1..1); the filter
applies per-tier bounds on it (e.g. `filter.tiers.480p.bounds.clip_score.min`) after align, and
`filters.policy.pre_align_filter` gives the config of the filter pass that runs before captions exist.
Work = clips whose newest ok caption has no alignment row yet for (caption model, prompt, CLIP).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation import pending
from curation.chain import Chain
from curation.config import AlignConfig, RayConfig
from curation.errors import PERMANENT
from filters.aesthetic import AestheticConfig
from manifests import fs
from manifests.db import connect
from manifests.schemas import ALIGNMENT
from manifests.store import Table
from models.clip import ClipEncoder

if TYPE_CHECKING:
    from curation.runner import PartSink


log = logging.getLogger("reelsift")


@dataclass(frozen=True)
class AlignJob:
    """What an align actor needs: its own config and the CLIP config that made the embeddings."""

    align: AlignConfig
    clip: AestheticConfig


class AlignCaptions:
    """Rows {clip_id, caption, caption_model, prompt_hash, clip_model, clip_embedding} -> alignment rows."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, job: AlignJob):
        import torch

        torch.set_num_threads(1)
        clip = job.clip
        self.job = job
        self.encoder = ClipEncoder(
            clip.clip_model,
            None if clip.random_init else clip.clip_pretrained,
            device=job.align.device or clip.device,
            precision=clip.precision,
            seed=clip.seed,
            key="score.aesthetic",
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        clip = self.job.clip
        rows = []
        for r in batch.to_pylist():
            row = dict(
                clip_id=r["clip_id"],
                caption_model=r["caption_model"],
                prompt_hash=r["prompt_hash"],
                clip_model=clip.clip_model,
                untrained=clip.random_init,
                status="ok",
            )
            if not r["clip_embedding"]:
                row.update(
                    status="error", error="clip has no clip_embedding in scores (not scored, or score error)",
                    error_kind=PERMANENT,
                )
            elif r["clip_model"] != clip.clip_model:
                row.update(
                    status="error",
                    error=f"clip_embedding was made by {r['clip_model']!r} but "
                    f"score.aesthetic.clip_model is {clip.clip_model!r}; set it back to compare",
                    error_kind=PERMANENT,
                )
            rows.append(row)
        ok = [(row, r) for row, r in zip(rows, batch.to_pylist(), strict=True) if row["status"] == "ok"]
        if ok:
            captions = [r["caption"] for _, r in ok]
            text = self.encoder.encode_text(captions, self.job.align.batch_size)  # (N, D)
            image = np.asarray([r["clip_embedding"] for _, r in ok], np.float32)  # (N, D)
            image /= np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
            for (row, _), score in zip(ok, (text * image).sum(axis=1), strict=True):
                row["clip_score"] = float(score)
        return pa.Table.from_pylist(rows, schema=ALIGNMENT)


def pending_alignments(root: Path, clip_model: str) -> pa.Table:
    """Each clip's newest ok caption, with its stored CLIP embedding, not yet aligned by
    `clip_model`: the stage's `pending` query (curation/pending.py)."""
    return connect(root).sql(pending.align_sql(clip_model)).to_arrow_table()


def align_ops(cfg: Any) -> Chain:
    """The stage's chain; `cfg` is the CurateConfig (align, and the CLIP that made the embeddings)."""
    return align_chain(cfg.align, cfg.score.aesthetic)


def align_chain(cfg: AlignConfig, clip: AestheticConfig) -> Chain:
    return Chain.of((AlignCaptions, AlignJob(cfg, clip), cfg.resources))


def run_align(
    root: str | Path,
    cfg: AlignConfig,
    clip: AestheticConfig,
    *,
    ray_address: str | None = None,
    ray_cfg: Any = None,
) -> PartSink:
    from curation.runner import PartSink, run_stage

    root = fs.upath(root)
    table = Table(root, "alignment")
    table.clean_temp()
    items = pending_alignments(root, clip.clip_model)
    if clip.random_init:
        log.warning(
            "align: clip_score comes from an UNTRAINED random CLIP "
            "(score.aesthetic.random_init=true); it carries no meaning"
        )
    log.info("align: %d captions to score with %s", items.num_rows, clip.clip_model)
    ray_cfg = ray_cfg or RayConfig()
    sink = PartSink(table, rows=ray_cfg.flush_rows, seconds=ray_cfg.flush_s)
    sink.expected = items.num_rows
    return run_stage("align", align_chain(cfg, clip), items, sink, ray_address=ray_address, ray_cfg=ray_cfg)


def align(cfg: Any, root: Path, ray_address: str | None = None) -> PartSink:
    """Pipeline step: `cfg` is the CurateConfig (uses cfg.align, cfg.score.aesthetic, cfg.ray)."""
    return run_align(root, cfg.align, cfg.score.aesthetic, ray_address=ray_address, ray_cfg=cfg.ray)
