"""Config of the score stage: how clips are sampled once, and each scorer's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from curation.configtools import Resources, check
from filters.aesthetic import AestheticConfig
from filters.motion import MotionConfig
from filters.nsfw import NsfwConfig
from filters.ocr import OcrConfig
from filters.quality import QualityConfig


@dataclass(frozen=True)
class ScoreConfig:
    n_frames: int = 8
    """Frames sampled evenly over each clip, decoded once and shared by every scorer (>= 2)."""
    short_side: int = 360
    """Working resolution: sampled frames are resized so their short side is this (>= 32).
    360 keeps subtitles in 720p sources legible for OCR."""
    timeout_s: float = 300.0
    """Per-clip decode time limit, seconds; over it the clip is an error row."""
    motion: MotionConfig = field(default_factory=MotionConfig)
    """Optical-flow motion scorer (filters/motion.py)."""
    ocr: OcrConfig = field(default_factory=OcrConfig)
    """On-screen text scorer (filters/ocr.py)."""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """Low-level quality scorer (filters/quality.py)."""
    nsfw: NsfwConfig = field(default_factory=NsfwConfig)
    """NudeNet NSFW detector (filters/nsfw.py)."""
    aesthetic: AestheticConfig = field(default_factory=AestheticConfig)
    """CLIP embedding + LAION aesthetic head (filters/aesthetic.py)."""
    cpu: Resources = field(default_factory=lambda: Resources(batch_size=4))
    """Scheduling of the decode + CPU-scorer operator (motion, OCR, quality)."""
    gpu: Resources = field(default_factory=lambda: Resources(batch_size=16, concurrency=1))
    """Scheduling of the neural-scorer operator (aesthetic/CLIP); set num_gpus on GPU nodes."""

    def __post_init__(self):
        check(self.n_frames >= 2, "score.n_frames", "must be >= 2")
        check(self.short_side >= 32, "score.short_side", "must be >= 32")
        check(self.timeout_s > 0, "score.timeout_s", "must be > 0")
