"""One training sample, before batching: its RNG, aspect bucket, crop, caption and decoded frames.

Every random choice about a sample is drawn from an RNG seeded by (seed, epoch, key), so a
resumed run sees exactly the samples an uninterrupted one would. Frames are decoded by PyAV
from the mp4 bytes held in memory, resized to cover their bucket.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
from collections.abc import Iterable

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from training.config import DataConfig


class SampleError(ValueError):
    """One sample can't be used (bad json, undecodable mp4, too few frames); it is skipped.
    `reason` is the counter it goes to: 'failed' or 'too_short'."""

    def __init__(self, message: str, reason: str = "failed"):
        super().__init__(message)
        self.reason = reason



def sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """RNG for one sample's random choices: same (seed, epoch, key) -> same choices."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def nearest_bucket(width: int, height: int, sizes: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The [height, width] bucket whose aspect ratio is nearest the clip's (in log ratio)."""
    ratio = math.log(height / width)
    return min(sizes, key=lambda hw: (abs(math.log(hw[0] / hw[1]) - ratio), -hw[0] * hw[1]))


def cover_size(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """(width, height) after scaling so the frame covers the bucket, aspect kept."""
    bh, bw = bucket
    scale = max(bh / height, bw / width)
    return max(bw, math.ceil(width * scale - 1e-6)), max(bh, math.ceil(height * scale - 1e-6))


def crop_offsets(size: tuple[int, int], bucket: tuple[int, int], mode: str, rng: random.Random):
    """Top-left (y, x) of the bucket crop inside a frame of size (width, height)."""
    (w, h), (bh, bw) = size, bucket
    if mode == "random":
        return rng.randint(0, h - bh), rng.randint(0, w - bw)
    return (h - bh) // 2, (w - bw) // 2


def window_start(n_frames: int, span: int, mode: str, rng: random.Random) -> int:
    """First frame of a window of `span` frames in a clip of `n_frames`."""
    if mode == "start":
        return 0
    if mode == "center":
        return (n_frames - span) // 2
    return rng.randint(0, n_frames - span)


def make_caption(txt: str, meta: dict, cfg: DataConfig, rng: random.Random) -> str:
    """The training caption: the txt (or, with probability sidecar_caption_prob, the original
    sidecar caption when the json has one), plus ' motion score: N.' when enabled and scored."""
    caption = txt.strip()
    sidecar = _sidecar(meta)
    if sidecar and cfg.sidecar_caption_prob > 0 and rng.random() < cfg.sidecar_caption_prob:
        caption = sidecar
    if cfg.motion_score:
        motion = (meta.get("scores") or {}).get("motion_mean")
        if motion is not None and math.isfinite(float(motion)):
            suffix = f"motion score: {round(float(motion))}."
            caption = f"{caption} {suffix}" if caption else suffix
    return caption


def _sidecar(meta: dict) -> str:
    for section in (meta, meta.get("clip") or {}, meta.get("video") or {}, meta.get("meta") or {}):
        text = section.get("sidecar_caption") if isinstance(section, dict) else None
        if isinstance(text, str) and text.strip():
            return text.strip()
    return ""


def decode_clip(mp4: bytes, indices: list[int], size: tuple[int, int]) -> np.ndarray:
    """Frames `indices` (sorted, 0-based decode order) of in-memory mp4 bytes, resized to
    size = (width, height) -> uint8 (T, H, W, 3). Raises SampleError."""
    wanted, last = set(indices), indices[-1]
    frames = []
    # Our own scaler, not PyAV's per-thread one: a DataLoader worker forked after the parent
    # scaled a frame inherits that one with a swscale thread pool whose threads did not survive
    # the fork, and reconfiguring it waits for them forever.
    scaler = VideoReformatter()
    try:
        with av.open(io.BytesIO(mp4), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    rgb = scaler.reformat(frame, width=size[0], height=size[1], format="rgb24")
                    frames.append(rgb.to_ndarray())
                if i >= last:
                    break
    except (av.error.FFmpegError, IndexError) as exc:
        raise SampleError(f"mp4 does not decode: {exc}") from exc
    if len(frames) < len(indices):
        raise SampleError(f"mp4 has {len(frames)} of the {len(indices)} frames needed")
    return np.stack(frames)
