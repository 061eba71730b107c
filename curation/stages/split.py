"""split: scene-detect each ok video and cut scenes into clips -> `clips` table.

Every processed video yields at least one row: its clips (`ok`), scenes too short to use
(`rejected`, reason `too_short=...`), or one `error` row when the video can't be decoded.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from curation.config import SplitConfig
from curation.errors import PERMANENT, error_fields, problem_fields
from curation.guard import GRACE_S, Guard, HardTimeout, WorkerDied
from filters.scenes import SceneTimeout, detect_scenes
from filters.video import VideoDecodeError, key_hash, source_changed
from manifests import fs
from manifests.schemas import CLIPS
from manifests.store import rows_to_table


def clip_id(video_id: str, start_frame: int, end_frame: int) -> str:
    return key_hash(video_id, start_frame, end_frame)


def plan_clips(ranges: list[tuple[int, int]], n_frames: int, fps: float, cfg: SplitConfig) -> list[dict]:
    """Scenes -> clip rows (without ids): trim at cuts, reject short, cut long into pieces."""
    rows = []
    max_len = max(1, int(math.floor(cfg.max_clip_s * fps)))
    for scene_index, (a, b) in enumerate(ranges):
        start = a + cfg.trim_frames if a > 0 else a
        end = b - cfg.trim_frames if b < n_frames else b
        length = end - start
        if length <= 0 or length / fps < cfg.min_clip_s:
            seconds = max(length, 0) / fps
            rows.append(
                dict(
                    scene_index=scene_index,
                    piece_index=0,
                    start_frame=a,
                    end_frame=b,
                    status="rejected",
                    reasons=[f"too_short={seconds:.2f}s<{cfg.min_clip_s:g}s"],
                )
            )
            continue
        pieces = max(1, -(-length // max_len))
        edges = [start + round(i * length / pieces) for i in range(pieces + 1)]
        for piece_index, (s, e) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            ok = (e - s) / fps >= cfg.min_clip_s
            rows.append(
                dict(
                    scene_index=scene_index,
                    piece_index=piece_index,
                    start_frame=s,
                    end_frame=e,
                    status="ok" if ok else "rejected",
                    reasons=[] if ok else [f"too_short={(e - s) / fps:.2f}s<{cfg.min_clip_s:g}s"],
                )
            )
    return rows


def _opt(row: dict, key: str):
    """A column that may be missing (a batch built by hand) or null."""
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


class SplitStage:
    """Batch of ok `videos` rows -> `clips` rows."""

    def __init__(self, cfg: SplitConfig):
        self.cfg = cfg
        self.guard = Guard()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = []
        for i in range(len(batch["video_id"])):
            rows.extend(self.one({k: v[i] for k, v in batch.items()}))
        return rows_to_table(rows, CLIPS)

    def one(self, video: dict) -> list[dict]:
        vid, path = str(video["video_id"]), str(video["path"])
        base = dict(
            video_id=vid, path=path, width=int(video["display_width"]), height=int(video["display_height"])
        )
        changed = source_changed(path, _opt(video, "size_bytes"), _opt(video, "ingested_at"))
        if changed:
            return [self._error(base, problem_fields(changed))]
        try:
            scenes = self.guard.call(
                detect_scenes, (path, self.cfg.scenes, self.cfg.timeout_s), self.cfg.timeout_s + GRACE_S
            )
        except (VideoDecodeError, SceneTimeout, HardTimeout, WorkerDied, fs.StorageError) as exc:
            return [self._error(base, error_fields(exc))]
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this video's error row
            return [self._error(base, error_fields(exc, f"scene detection failed: {type(exc).__name__}"))]
        if scenes.n_frames == 0:
            return [self._error(base, dict(status="error", error="no frame could be decoded",
                                           error_kind=PERMANENT))]
        fps = scenes.fps or float(video["fps"])
        rows = []
        for r in plan_clips(scenes.ranges, scenes.n_frames, fps, self.cfg):
            s, e = r["start_frame"], r["end_frame"]
            rows.append(
                {
                    **base,
                    **r,
                    "clip_id": clip_id(vid, s, e),
                    "fps": fps,
                    "start_s": s / fps,
                    "end_s": e / fps,
                    "duration_s": (e - s) / fps,
                }
            )
        return rows

    @staticmethod
    def _error(base: dict, fields: dict) -> dict:
        """The one row of a video that could not be split (errors.py: status, error, error_kind)."""
        return {**base, "clip_id": clip_id(base["video_id"], -1, -1), **fields}
