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

from curation.errors import error_fields, problem_fields
from curation.guard import GRACE_S, Guard, HardTimeout, WorkerDied
from filters.config import ScoreConfig
from filters.motion import MotionScorer
from filters.nsfw import NsfwScorer
from filters.ocr import OcrScorer
from filters.quality import QualityScorer
from filters.video import DecodeSpec, VideoDecodeError, even_size, iter_frames, source_changed
from manifests.schemas import SCORES

FRAME_FIELDS = [pa.field("frames", pa.binary()), pa.field("frames_shape", pa.list_(pa.int32()))]
CPU_SCHEMA = pa.schema(list(SCORES) + FRAME_FIELDS)


def sample_indices(start: int, end: int, n: int) -> list[int]:
    """n frame indices spread evenly over [start, end) (centres of n equal segments)."""
    length = end - start
    n = max(1, min(n, length))
    return sorted({start + int((i + 0.5) * length / n) for i in range(n)})


def decode_samples(clip: dict, spec: DecodeSpec) -> tuple[np.ndarray, float]:
    """-> (frames (T, H, W, 3) uint8 at the working resolution, source frames per sample)."""
    return decode_run([clip], spec)[0]


# Clips of one video closer than this many seconds are decoded in one pass: decoding through
# the gap costs less than seeking back to a keyframe again.
JOIN_GAP_S = 4.0


def decode_run(clips: list[dict], spec: DecodeSpec) -> list[tuple[np.ndarray, float]]:
    """Sampled frames of clips of ONE video, in order of start, in one forward decode pass.

    Same frames as one decode per clip (each would seek to the keyframe before its start and
    decode forward), without decoding the stretch between a keyframe and a clip's start again
    for every clip. Raises as decode_samples does; the caller retries clip by clip.
    """
    first = clips[0]
    wanted: dict[int, list[int]] = {}  # frame index -> positions in `clips` that sample it
    idx_per_clip = []
    for k, clip in enumerate(clips):
        idx = sample_indices(int(clip["start_frame"]), int(clip["end_frame"]), spec.n_frames)
        idx_per_clip.append(idx)
        for i in idx:
            wanted.setdefault(i, []).append(k)
    size = even_size(int(first["display_width"]), int(first["display_height"]), spec.short_side)
    deadline = time.monotonic() + spec.timeout_s * len(clips)
    got: dict[int, np.ndarray] = {}
    for i, frame in iter_frames(
        first["path"],
        min(int(c["start_frame"]) for c in clips),
        max(int(c["end_frame"]) for c in clips),
        float(first["fps"]),
        size=size,
        rotation=int(first["rotation"] or 0),
        indices=sorted(wanted),
        deadline=deadline,
    ):
        got[i] = frame
    out = []
    for clip, idx in zip(clips, idx_per_clip, strict=True):
        frames = [got[i] for i in idx if i in got]
        if len(frames) < 2:
            raise VideoDecodeError(clip["path"], f"only {len(frames)} of {len(idx)} sampled frames decoded")
        out.append((np.stack(frames), (int(clip["end_frame"]) - int(clip["start_frame"])) / len(idx)))
    return out


def runs_of_one_video(clips: list[dict]) -> list[list[int]]:
    """Positions of `clips` grouped into runs that one decode pass serves: same file, same
    size and rotation, each clip starting at most JOIN_GAP_S after the previous one ends."""
    order = sorted(range(len(clips)), key=lambda k: (clips[k]["path"], int(clips[k]["start_frame"])))
    runs: list[list[int]] = []
    for k in order:
        c = clips[k]
        if runs:
            p = clips[runs[-1][-1]]
            same = all(p[f] == c[f] for f in ("path", "display_width", "display_height", "rotation", "fps"))
            if same and int(c["start_frame"]) - int(p["end_frame"]) <= JOIN_GAP_S * float(c["fps"]):
                runs[-1].append(k)
                continue
        runs.append([k])
    return runs


def cpu_scorers(cfg: ScoreConfig) -> list:
    """The scorers that run on the CPU over each clip's decoded frames, in column order."""
    return [MotionScorer(cfg.motion), OcrScorer(cfg.ocr), QualityScorer(cfg.quality), NsfwScorer(cfg.nsfw)]


class DecodeAndScoreCpu:
    """Batch of clip rows -> score rows with the CPU scores and the decoded frames."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, cfg: ScoreConfig):
        import cv2

        cv2.setNumThreads(1)  # one actor per core; the scheduler gives the parallelism
        self.cfg = cfg
        self.spec = DecodeSpec.of(cfg)
        self.guard = Guard()
        self.scorers = cpu_scorers(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        clips = batch.to_pylist()
        rows: list[dict[str, Any] | None] = [None] * len(clips)
        for run in runs_of_one_video(clips):
            todo = [k for k in run if not self._changed(clips[k], rows, k)]
            decoded = None
            if len(todo) > 1:
                try:
                    decoded = self._decode([clips[k] for k in todo])
                except Exception:  # noqa: BLE001 - find out which clip fails: one by one below
                    decoded = None
            for j, k in enumerate(todo):
                rows[k] = self.one(clips[k], None if decoded is None else decoded[j])
        return pa.Table.from_pylist(rows, schema=CPU_SCHEMA)

    def _decode(self, clips: list[dict]) -> list[tuple[np.ndarray, float]]:
        """decode_run in the guard's child process, with a hard limit of timeout_s per clip."""
        return self.guard.call(decode_run, (clips, self.spec), self.spec.timeout_s * len(clips) + GRACE_S)

    @staticmethod
    def _changed(clip: dict, rows: list, k: int) -> bool:
        changed = source_changed(clip["path"], clip.get("size_bytes"), clip.get("ingested_at"))
        if changed:
            rows[k] = {"clip_id": clip["clip_id"], **problem_fields(changed)}
        return bool(changed)

    def one(self, clip: dict, decoded: tuple[np.ndarray, float] | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {"clip_id": clip["clip_id"], "status": "error"}
        if decoded is None:
            changed = source_changed(clip["path"], clip.get("size_bytes"), clip.get("ingested_at"))
            if changed:
                return {**row, **problem_fields(changed)}
            try:
                decoded = self._decode([clip])[0]
            except (HardTimeout, WorkerDied) as exc:
                return {**row, **error_fields(exc)}
            except Exception as exc:  # noqa: BLE001 - this clip's error row (errors.py)
                return {**row, **error_fields(exc, "decode failed")}
        frames, step = decoded
        row.update(
            status="ok",
            n_frames_scored=len(frames),
            frame_step=step,
            work_width=frames.shape[2],
            work_height=frames.shape[1],
            decode_lane="cpu",
            frames=frames.tobytes(),
            frames_shape=list(frames.shape),
        )
        for scorer in self.scorers:
            try:
                row.update(scorer(frames, frame_step=step))
            except Exception as exc:  # noqa: BLE001 - this clip's error row (errors.py)
                return {"clip_id": clip["clip_id"], **error_fields(exc, f"{type(scorer).__name__} failed")}
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
        try:
            scored = self.scorer.score_batch(clips) if clips else []
        except Exception:  # noqa: BLE001 - find the clip that fails: one by one below
            scored = [self._one(c) for c in clips]
        for r, scores in zip(ok, scored, strict=True):
            if "error_kind" in scores:  # this clip failed alone: an error row, its CPU scores dropped
                clip_id = r["clip_id"]
                r.clear()
                r.update(clip_id=clip_id, **scores)
            else:
                r.update(scores, clip_model=self.cfg.aesthetic.clip_model)
        for r in rows:
            r.pop("frames", None)
            r.pop("frames_shape", None)
        return pa.Table.from_pylist(rows, schema=SCORES)

    def _one(self, frames: np.ndarray) -> dict:
        try:
            return self.scorer.score_batch([frames])[0]
        except Exception as exc:  # noqa: BLE001 - this clip's error row (errors.py)
            return error_fields(exc, "CLIP/aesthetic scoring failed")
