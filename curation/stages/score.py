"""score: decode each clip ONCE, run every scorer on those frames -> `scores` table.

Two Ray Data operators share the decoded frames through the object store:
  DecodeAndScoreCpu   decode n sampled frames at the working resolution; motion, OCR, quality,
                      NSFW
  ScoreNeural         CLIP embedding + aesthetic head (own resources: GPU actors on GPU nodes)
Frames travel as raw bytes plus a shape, and are dropped before rows reach the table.
Scores are stored raw; thresholds are applied later by `filter`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa

from filters.config import ScoreConfig
from filters.motion import MotionScorer
from filters.nsfw import NsfwScorer
from filters.ocr import OcrScorer
from filters.quality import QualityScorer
from filters.video import DecodeTimeout, VideoDecodeError, even_size, iter_frames, source_changed
from manifests.schemas import SCORES

FRAME_FIELDS = [pa.field("frames", pa.binary()), pa.field("frames_shape", pa.list_(pa.int32()))]
CPU_SCHEMA = pa.schema(list(SCORES) + FRAME_FIELDS)


def sample_indices(start: int, end: int, n: int) -> list[int]:
    """n frame indices spread evenly over [start, end) (centres of n equal segments)."""
    length = end - start
    n = max(1, min(n, length))
    return sorted({start + int((i + 0.5) * length / n) for i in range(n)})


def decode_samples(clip: dict, cfg: ScoreConfig) -> tuple[np.ndarray, float]:
    """-> (frames (T, H, W, 3) uint8 at the working resolution, source frames per sample)."""
    start, end = int(clip["start_frame"]), int(clip["end_frame"])
    idx = sample_indices(start, end, cfg.n_frames)
    size = even_size(int(clip["display_width"]), int(clip["display_height"]), cfg.short_side)
    deadline = time.monotonic() + cfg.timeout_s
    frames = [
        f
        for _, f in iter_frames(
            clip["path"],
            start,
            end,
            float(clip["fps"]),
            size=size,
            rotation=int(clip["rotation"] or 0),
            indices=idx,
            deadline=deadline,
        )
    ]
    if len(frames) < 2:
        raise VideoDecodeError(clip["path"], f"only {len(frames)} of {len(idx)} sampled frames decoded")
    return np.stack(frames), (end - start) / len(idx)


class DecodeAndScoreCpu:
    """Batch of clip rows -> score rows with the CPU scores and the decoded frames."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, cfg: ScoreConfig):
        import cv2

        cv2.setNumThreads(1)  # one actor per core; the scheduler gives the parallelism
        self.cfg = cfg
        self.scorers = [
            MotionScorer(cfg.motion),
            OcrScorer(cfg.ocr),
            QualityScorer(cfg.quality),
            NsfwScorer(cfg.nsfw),
        ]

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.one(c) for c in batch.to_pylist()], schema=CPU_SCHEMA)

    def one(self, clip: dict) -> dict[str, Any]:
        row: dict[str, Any] = {"clip_id": clip["clip_id"], "status": "error"}
        changed = source_changed(clip["path"], clip.get("size_bytes"), clip.get("ingested_at"))
        if changed:
            row["error"] = changed
            return row
        try:
            frames, step = decode_samples(clip, self.cfg)
        except (VideoDecodeError, DecodeTimeout) as exc:
            row["error"] = f"decode failed: {exc}"
            return row
        row.update(
            status="ok",
            n_frames_scored=len(frames),
            frame_step=step,
            work_width=frames.shape[2],
            work_height=frames.shape[1],
            frames=frames.tobytes(),
            frames_shape=list(frames.shape),
        )
        for scorer in self.scorers:
            row.update(scorer(frames, frame_step=step))
        return row


class ScoreNeural:
    """Adds CLIP embedding + aesthetic scores to ok rows; drops the frames."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, cfg: ScoreConfig):
        import torch

        from filters.aesthetic import AestheticScorer  # torch + open_clip: this actor only

        torch.set_num_threads(1)
        self.cfg = cfg
        self.scorer = AestheticScorer(cfg.aesthetic)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        ok = [r for r in rows if r["status"] == "ok"]
        clips = [np.frombuffer(r["frames"], np.uint8).reshape(r["frames_shape"]) for r in ok]
        if clips:
            for r, scores in zip(ok, self.scorer.score_batch(clips), strict=True):
                r.update(scores, clip_model=self.cfg.aesthetic.clip_model)
        for r in rows:
            r.pop("frames", None)
            r.pop("frames_shape", None)
        return pa.Table.from_pylist(rows, schema=SCORES)
