"""caption: recaption kept clips with a VLM -> `captions` table.

Two Ray Data operators, like score:
  DecodeForCaption  decode n sampled frames per clip at the caption resolution (CPU)
  CaptionClips      run the configured backend (models/captioner.py), post-process, one row per clip
The work is every clip of the latest filter run with keep=true that has no row yet for
(clip_id, model, prompt_hash): a changed prompt or model captions again and keeps the old rows
(`captions_history`); the `captions` view shows the newest row per clip.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation import pending
from curation.chain import Chain
from curation.config import CaptionConfig, RayConfig
from curation.errors import PERMANENT, error_fields
from curation.stages.score import decode_samples
from filters.video import DecodeSpec
from manifests import fs
from manifests.db import connect
from manifests.schemas import CAPTIONS
from manifests.store import Table
from models.captioner import (
    BACKENDS,
    CaptionInput,
    clean_caption,
    is_untrained,
    render_prompt,
)

if TYPE_CHECKING:
    from curation.runner import PartSink


log = logging.getLogger("reelsift")


FRAME_FIELDS = [
    pa.field("frames", pa.binary()),
    pa.field("frames_shape", pa.list_(pa.int32())),
    pa.field("sampled_fps", pa.float64()),
]
DECODED = pa.schema(
    [
        pa.field("clip_id", pa.string()),
        pa.field("path", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),
        *FRAME_FIELDS,
    ]
)


class DecodeForCaption:
    """Clip rows -> the same clips with their sampled frames (status error if undecodable)."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, cfg: CaptionConfig):
        import cv2

        cv2.setNumThreads(1)
        self.cfg = cfg
        self.spec = DecodeSpec.of(cfg)
        self.needs_frames = BACKENDS[cfg.backend].needs_frames

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.one(c) for c in batch.to_pylist()], schema=DECODED)

    def one(self, clip: dict) -> dict[str, Any]:
        row = {
            "clip_id": clip["clip_id"],
            "path": clip["path"],
            "duration_s": clip["duration_s"],
            "status": "ok",
        }
        if not self.needs_frames:
            return row
        try:
            frames, step = decode_samples(clip, self.spec)
        except Exception as exc:  # noqa: BLE001 - this clip's error row (curation/errors.py)
            return {**row, **error_fields(exc, "decode failed")}
        return {
            **row,
            "frames": frames.tobytes(),
            "frames_shape": list(frames.shape),
            "sampled_fps": float(clip["fps"]) / step,
        }


class CaptionClips:
    """Decoded clips -> `captions` rows, one per clip (errors carry a reason, never a caption)."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, cfg: CaptionConfig):
        self.cfg = cfg
        self.backend = BACKENDS[cfg.backend](getattr(cfg, cfg.backend))
        self.common = dict(
            backend=cfg.backend,
            model=cfg.model_name,
            prompt_hash=cfg.prompt_hash,
            untrained=self.backend.untrained,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = {
            r["clip_id"]: dict(clip_id=r["clip_id"], status="error", error=r["error"],
                               error_kind=r["error_kind"], **self.common)
            for r in rows
            if r["status"] != "ok"
        }
        todo = [r for r in rows if r["status"] == "ok"]
        items = [CaptionInput(r["clip_id"], r["path"], _frames(r), r["sampled_fps"] or 0.0) for r in todo]
        prompts = [render_prompt(self.cfg.prompt, self.cfg.n_frames, r["duration_s"] or 0.0) for r in todo]
        for r, raw in zip(todo, self.backend.caption(items, prompts) if items else [], strict=True):
            row = dict(clip_id=r["clip_id"], n_tokens=raw.n_tokens, latency_s=raw.latency_s, **self.common)
            if raw.error is not None:
                row.update(status="error", error=raw.error, error_kind=PERMANENT)
            else:
                text, reason = clean_caption(raw.text, self.cfg.min_words, self.cfg.max_words)
                if reason is None:
                    row.update(status="ok", caption=text)
                else:
                    row.update(status="error", error=reason, error_kind=PERMANENT)
            out[r["clip_id"]] = row
        return pa.Table.from_pylist([out[r["clip_id"]] for r in rows], schema=CAPTIONS)


def _frames(row: dict) -> np.ndarray | None:
    if row.get("frames") is None:
        return None
    return np.frombuffer(row["frames"], np.uint8).reshape(row["frames_shape"])


def pending_clips(root: Path, cfg: CaptionConfig) -> pa.Table:
    """Kept clips (latest filter run) with no row yet for (clip_id, model, prompt_hash): the
    stage's `pending` query (curation/pending.py)."""
    return connect(root).sql(pending.caption_sql(cfg)).to_arrow_table()


def run_caption(
    root: str | Path, cfg: CaptionConfig, *, ray_address: str | None = None, ray_cfg: Any = None,
    chain: Chain | None = None,
) -> PartSink:
    """Caption the pending clips with the operator `chain` (default: a CPU decode operator, then
    the captioner; on a GPU node `pipeline.caption` passes the lanes' chain)."""
    from curation.runner import PartSink, run_stage

    root = fs.upath(root)
    table = Table(root, "captions")
    table.clean_temp()
    items = pending_clips(root, cfg)
    if cfg.backend == "transformers" and is_untrained(cfg.transformers.model):
        log.warning(
            "caption: %s has RANDOM weights; captions are meaningless and rows are flagged "
            "untrained (set caption.transformers.model to a real VLM)",
            cfg.transformers.model,
        )
    log.info(
        "caption: %d kept clips to caption with %s (%s, prompt %s)",
        items.num_rows,
        cfg.model_name,
        cfg.backend,
        cfg.prompt_hash,
    )
    t0 = time.monotonic()
    ray_cfg = ray_cfg or RayConfig()
    sink = PartSink(table, rows=ray_cfg.flush_rows, seconds=ray_cfg.flush_s)
    sink.expected = items.num_rows
    chain = chain or Chain.of((DecodeForCaption, cfg, cfg.decode), (CaptionClips, cfg, cfg.captioner))
    run_stage("caption", chain, items, sink, ray_address=ray_address, ray_cfg=ray_cfg)
    if sink.counts.get("error"):
        log.warning(
            "caption: %d of %d clips got no caption (see captions.error) in %.0fs",
            sink.counts["error"],
            sink.written,
            time.monotonic() - t0,
        )
    return sink


def caption(cfg: Any, root: Path, ray_address: str | None = None, chain: Chain | None = None) -> PartSink:
    """Pipeline step: `cfg` is the CurateConfig (uses cfg.caption and cfg.ray)."""
    return run_caption(root, cfg.caption, ray_address=ray_address, ray_cfg=cfg.ray, chain=chain)
