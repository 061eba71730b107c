"""caption on a GPU node: the captioner's GPU actor decodes its own frames on the decode lanes
(NVDEC for H.264/HEVC, PyAV workers for the rest, `curation.decode_lanes`) instead of a separate
CPU decode operator. Same sampled frames at the same size as `caption.DecodeForCaption`.
Chosen by `caption.decode_lane` (auto on a GPU node, or nvdec).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from curation.config import CaptionConfig
from curation.decode_lanes import LaneDecoder, actor_resources
from curation.stages.caption import DECODED, CaptionClips
from filters.video import DecodeSpec
from manifests.configtools import Resources


class CaptionOnLanes(CaptionClips):
    """Clip rows -> `captions` rows; frames decoded on the lanes inside this actor."""

    def __init__(self, cfg: CaptionConfig):
        import torch

        super().__init__(cfg)
        gpu_id = torch.cuda.current_device() if torch.cuda.is_available() else 0
        lanes = cfg.lanes
        self.lanes = LaneDecoder(
            cfg.decode_lane, DecodeSpec.of(cfg), lanes.nvdec_sessions, lanes.cpu_workers, gpu_id=gpu_id
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        clips = batch.to_pylist()
        rows: list[dict[str, Any]] = []
        for clip, (d,) in zip(clips, self.lanes.decode([[c] for c in clips]), strict=True):
            row = {k: clip[k] for k in ("clip_id", "path", "duration_s")}
            if d.error is not None:
                rows.append({**row, "status": "error", "error": d.error, "error_kind": d.kind})
            else:
                rows.append(
                    {
                        **row,
                        "status": "ok",
                        "frames": d.host.tobytes(),
                        "frames_shape": list(d.host.shape),
                        "sampled_fps": float(clip["fps"]) / d.step,
                    }
                )
        return super().__call__(pa.Table.from_pylist(rows, schema=DECODED))

    def __del__(self):
        lanes = getattr(self, "lanes", None)
        if lanes is not None:
            lanes.close()


def uses_lanes(cfg: CaptionConfig) -> bool:
    """The in-process VLM on a GPU actor, with decode_lane not cpu."""
    return (
        cfg.decode_lane != "cpu"
        and cfg.backend == "transformers"
        and cfg.captioner.num_gpus > 0
        and str(cfg.transformers.device).startswith("cuda")
    )


def lane_ops(cfg: CaptionConfig) -> list[tuple[type, Any, Resources]]:
    return [(CaptionOnLanes, cfg, actor_resources(cfg.captioner, cfg.decode_lane, cfg.lanes.cpu_workers))]
