"""Motion score: dense optical flow (OpenCV DIS) between consecutive sampled frames.

Unit of every motion_* magnitude: pixels per source frame at a reference short side of 256 px
("px/frame@256"). Flow is measured on frames downscaled to `flow_short_side`, rescaled by
`ref_short_side / flow_short_side` and divided by `frame_step` (source frames between two
samples), so one number means the same motion whatever the working resolution or sampling stride.
A scorer measures; thresholds (motion bands per tier) live in the filter policy.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from filters.config import MotionConfig

_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class MotionScorer:
    """`MotionScorer(cfg)(frames, frame_step=1) -> {motion_*: float}` for one clip.

    frames: (T, H, W, 3) uint8 RGB, T >= 2, consecutive samples `frame_step` source frames apart.
    Unsampled motion between samples is not seen: with a large `frame_step` fast motion aliases
    and is under-reported, so sample densely enough (a few source frames apart) for motion.
    """

    FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("motion_mean", pa.float32()),  # mean over pairs of the mean flow magnitude
        pa.field("motion_p90", pa.float32()),  # 90th percentile of per-pixel magnitude, all pairs
        pa.field("motion_max", pa.float32()),  # max over pairs of the mean flow magnitude
        pa.field("motion_static_frac", pa.float32()),  # fraction of pairs with mean < static_eps
        pa.field("motion_pairs", pa.int32()),  # number of frame pairs measured
    ]

    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg
        self._dis = cv2.DISOpticalFlow_create(_PRESETS[cfg.preset])

    def _gray(self, frames: np.ndarray) -> tuple[list[np.ndarray], float]:
        """Grayscale frames at flow size, and the factor from flow px to working-frame px."""
        _, h, w, _ = frames.shape
        scale = min(1.0, self.cfg.flow_short_side / min(h, w))
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        out = []
        for frame in frames:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            if scale < 1.0:
                gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
            out.append(gray)
        return out, min(h, w) / min(size[1], size[0])

    def __call__(self, frames: np.ndarray, frame_step: float = 1.0, **ctx: Any) -> dict[str, Any]:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        if len(frames) < 2:
            raise ValueError(f"motion needs at least 2 frames, got {len(frames)}")
        if frame_step <= 0:
            raise ValueError(f"frame_step must be > 0, got {frame_step}")
        grays, to_working = self._gray(frames)
        working_short = min(frames.shape[1:3])
        # flow px -> working px -> reference px, per source frame
        unit = to_working * (self.cfg.ref_short_side / working_short) / frame_step
        pair_means, mags = [], []
        for prev, nxt in zip(grays[:-1], grays[1:], strict=True):
            flow = self._dis.calc(prev, nxt, None)  # (h, w, 2) float32, px at flow size
            mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2) * unit  # (h, w)
            pair_means.append(float(mag.mean()))
            mags.append(mag.ravel())
        pair_means = np.asarray(pair_means)
        return {
            "motion_mean": float(pair_means.mean()),
            "motion_p90": float(np.percentile(np.concatenate(mags), 90)),
            "motion_max": float(pair_means.max()),
            "motion_static_frac": float((pair_means < self.cfg.static_eps).mean()),
            "motion_pairs": len(pair_means),
        }
