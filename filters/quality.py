"""Low-level quality scores (no weights): exposure, contrast, colour, sharpness.

All statistics are computed on the working-resolution frames the score stage decoded; luma is
BT.601 Y (OpenCV RGB2GRAY). A scorer measures; bounds (too dark, too blurry, ...) live in the
filter policy.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from filters.config import QualityConfig


class QualityScorer:
    """`QualityScorer(cfg)(frames) -> {quality_*: float}` for one clip.

    frames: (T, H, W, 3) uint8 RGB, T >= 1. Per-frame values are averaged over frames.
    """

    FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("quality_brightness", pa.float32()),  # mean luma, 0..1
        pa.field("quality_contrast", pa.float32()),  # per-frame luma std, 0..0.5
        pa.field("quality_saturation", pa.float32()),  # mean HSV saturation, 0..1
        pa.field("quality_colorfulness", pa.float32()),  # Hasler-Suesstrunk M, 0..~180
        pa.field("quality_sharpness", pa.float32()),  # variance of Laplacian of luma, >= 0
        pa.field("quality_dark_frac", pa.float32()),  # fraction of near-black frames, 0..1
        pa.field("quality_bright_frac", pa.float32()),  # fraction of near-white frames, 0..1
    ]

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg

    def __call__(self, frames: np.ndarray, **ctx: Any) -> dict[str, Any]:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"frames must be (T>=1, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        _, h, w, _ = frames.shape
        scale = min(1.0, self.cfg.stats_short_side / min(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        luma_mean, luma_std, sat, colorful, sharp = [], [], [], [], []
        for frame in frames:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)  # (H, W) uint8
            sharp.append(cv2.Laplacian(gray, cv2.CV_32F).var())
            small = frame if scale == 1.0 else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            small_gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
            mean, std = cv2.meanStdDev(small_gray)
            luma_mean.append(mean.item() / 255.0)
            luma_std.append(std.item() / 255.0)
            sat.append(cv2.cvtColor(small, cv2.COLOR_RGB2HSV)[..., 1].mean() / 255.0)
            colorful.append(_colorfulness(small))
        luma_mean = np.asarray(luma_mean)
        return {
            "quality_brightness": float(luma_mean.mean()),
            "quality_contrast": float(np.mean(luma_std)),
            "quality_saturation": float(np.mean(sat)),
            "quality_colorfulness": float(np.mean(colorful)),
            "quality_sharpness": float(np.mean(sharp)),
            "quality_dark_frac": float((luma_mean < self.cfg.dark_luma).mean()),
            "quality_bright_frac": float((luma_mean > self.cfg.bright_luma).mean()),
        }


def _colorfulness(frame: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M on 0..255 RGB: sigma_rgyb + 0.3 * mu_rgyb."""
    r, g, b = (frame[..., i].astype(np.float32) for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    sigma = np.sqrt(rg.var() + yb.var())
    mu = np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    return float(sigma + 0.3 * mu)
