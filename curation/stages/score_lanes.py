"""score on a GPU node: the GPU actor decodes (NVDEC and CPU lanes, `curation.decode_lanes`) and
runs CLIP/aesthetic on the frames; the CPU scorers follow on the node's other cores.

  DecodeOnLanesNeural  clip rows -> working-resolution frames from both decode lanes, CLIP
                       embedding + aesthetic (frames NVDEC decoded never leave the GPU for it)
  CpuScorers           motion, OCR, quality, NSFW on those frames; drops the frames

Same rows as the CPU chain (`score.DecodeAndScoreCpu` -> `score.ScoreNeural`): the same sampled
frame indices at the same working size, and `decode_lane` says which lane decoded each clip.
Chosen by `score.decode_lane` (auto on a GPU node, or nvdec); `cpu` keeps the CPU chain.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa

from curation.decode_lanes import LaneDecoder, actor_resources
from curation.errors import problem_fields
from curation.stages.score import CPU_SCHEMA, cpu_scorers, runs_of_one_video
from filters.config import ScoreConfig
from filters.video import DecodeSpec, source_changed
from manifests.configtools import Resources
from manifests.schemas import SCORES

# CLIP runs on chunks of this many runs while the lanes decode the rest of the batch.
CHUNK_RUNS = 8


def lanes_resources(cfg: ScoreConfig) -> Resources:
    """The GPU actor's reservation: score.gpu plus the cores of its CPU decode workers."""
    return actor_resources(cfg.gpu, cfg.decode_lane, cfg.lanes.cpu_workers)


class DecodeOnLanesNeural:
    """Clip rows -> score rows with decode facts, CLIP/aesthetic scores and the frames."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, cfg: ScoreConfig):
        import torch

        from filters.aesthetic import AestheticScorer

        torch.set_num_threads(1)
        self.cfg = cfg
        gpu_id = torch.cuda.current_device() if torch.cuda.is_available() else 0
        self.lanes = LaneDecoder(
            cfg.decode_lane,
            DecodeSpec.of(cfg),
            nvdec_sessions=cfg.lanes.nvdec_sessions,
            cpu_workers=cfg.lanes.cpu_workers,
            gpu_id=gpu_id,
        )
        self.scorer = AestheticScorer(cfg.aesthetic)
        self.model_lock = threading.Lock()

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        clips = batch.to_pylist()
        rows: list[dict[str, Any] | None] = [None] * len(clips)
        todo = []
        for k, clip in enumerate(clips):
            changed = source_changed(clip["path"], clip.get("size_bytes"), clip.get("ingested_at"))
            if changed:
                rows[k] = {"clip_id": clip["clip_id"], **problem_fields(changed)}
            else:
                todo.append(k)
        runs = [[todo[j] for j in run] for run in runs_of_one_video([clips[k] for k in todo])]
        jobs = self.lanes.submit([[clips[k] for k in run] for run in runs])
        # CLIP on the first runs while the lanes decode the later ones
        for start in range(0, len(runs), CHUNK_RUNS):
            chunk = []
            for run, job in zip(
                runs[start : start + CHUNK_RUNS], jobs[start : start + CHUNK_RUNS], strict=True
            ):
                for k, d in zip(run, self.lanes.result(job), strict=True):
                    rows[k] = self._row(clips[k], d)
                    if d.error is None:
                        chunk.append((k, d))
            if chunk:
                for _, d in chunk:
                    if d.device is not None:  # made on a decode session's stream, read on this one
                        d.device.record_stream(torch.cuda.current_stream(d.device.device))
                with self.model_lock:
                    on_device = self.scorer.encoder.preprocess_on_device
                    scores = self.scorer.score_batch(
                        [d.device if on_device and d.device is not None else d.host for _, d in chunk]
                    )
                for (k, _), s in zip(chunk, scores, strict=True):
                    rows[k].update(s, clip_model=self.cfg.aesthetic.clip_model)
        return pa.Table.from_pylist(rows, schema=CPU_SCHEMA)

    @staticmethod
    def _row(clip: dict, d) -> dict[str, Any]:
        if d.error is not None:
            return {"clip_id": clip["clip_id"], "status": "error", "error": d.error, "error_kind": d.kind}
        frames = d.host
        return {
            "clip_id": clip["clip_id"],
            "status": "ok",
            "n_frames_scored": len(frames),
            "frame_step": d.step,
            "work_width": frames.shape[2],
            "work_height": frames.shape[1],
            "decode_lane": d.lane,
            "frames": frames.tobytes(),
            "frames_shape": list(frames.shape),
        }

    def __del__(self):
        lanes = getattr(self, "lanes", None)
        if lanes is not None:
            lanes.close()


class CpuScorers:
    """Score rows with frames -> the same rows with motion, OCR, quality and NSFW; frames dropped."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, cfg: ScoreConfig):
        import cv2

        cv2.setNumThreads(1)  # one actor per core; the scheduler gives the parallelism
        self.scorers = cpu_scorers(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for r in rows:
            shape, data = r.pop("frames_shape", None), r.pop("frames", None)
            if r["status"] != "ok":
                continue
            frames = np.frombuffer(data, np.uint8).reshape(shape)
            for scorer in self.scorers:
                r.update(scorer(frames, frame_step=r["frame_step"]))
        return pa.Table.from_pylist(rows, schema=SCORES)


def lane_ops(cfg: ScoreConfig) -> list[tuple[type, Any, Resources]]:
    """The GPU-node chain for run_stage."""
    return [(DecodeOnLanesNeural, cfg, lanes_resources(cfg)), (CpuScorers, cfg, cfg.cpu)]


def uses_lanes(cfg: ScoreConfig) -> bool:
    """Whether score runs the GPU-node chain: decode is not `cpu` and CLIP runs on a GPU actor."""
    return cfg.decode_lane != "cpu" and cfg.gpu.num_gpus > 0 and str(cfg.aesthetic.device).startswith("cuda")
