"""Synthetic frames and their encoding, for the demo corpus, tests and benches.

`render_frames(kind, n, size)` draws deterministic RGB clips (hard cuts at known frames, smooth
textured motion, a static shot, big on-screen text, all black); `encode_video` writes frames
through PyAV (libx264/yuv420p by default). Nothing here knows about the corpus on disk: that is
`curation/demo_data.py`.

Frames are RGB `uint8` arrays of shape (H, W, 3). A "cut" is the index of the first frame of a new
scene, so a cut at frame c means frames c-1 and c belong to different scenes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

DEMO_TEXT = "REELSIFT DEMO 2026"
"""The text burnt into `text_overlay.mp4` (drawn as the lines of `DEMO_TEXT_LINES`)."""
DEMO_TEXT_LINES = ("REELSIFT", "DEMO 2026")

FRAME_KINDS = ("moving", "static", "text", "black", "cuts")
"""Content kinds `render_frames` can draw."""
# Codecs that take x264-style rate control options; others use their defaults.
_CRF_CODECS = {"libx264", "libx265", "libvpx-vp9"}
_PRESET_CODECS = {"libx264", "libx265"}
# Chroma-subsampled formats that x264/x265 only accept with even width and height.
_SUBSAMPLED = ("yuv420", "yuv422", "nv12", "nv16", "nv21", "yuvj420", "yuvj422")


# --------------------------------------------------------------------------------------------
# Encoding


def encode_video(
    path: Path,
    frames: Iterable[np.ndarray] | np.ndarray,
    fps: int | Fraction,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    crf: int | None = 23,
    preset: str = "veryfast",
    timestamps: Sequence[float] | None = None,
    rotation: int = 0,
    faststart: bool = False,
) -> int:
    """Encode RGB frames to a video file with PyAV; returns the number of frames written.

    frames: iterable of (H, W, 3) uint8 RGB arrays, or one (T, H, W, 3) array; all the same size.
    fps: nominal frame rate (frames/s). Frames are spaced 1/fps apart unless `timestamps` gives
        each frame's presentation time in seconds (increasing), which makes a variable-rate file.
    crf, preset: x264-style quality (0-51, lower is better) and speed; ignored by codecs without
        them (mpeg4, ffv1).
    rotation: display rotation in degrees counter-clockwise, stored as the container's display
        matrix; decoders report it as `VideoFrame.rotation`.
    faststart: for .mp4/.mov, put the index (moov atom) before the media data, as for streaming.
    The container is chosen from the file suffix (.mp4, .mkv, ...).
    """
    path = Path(path)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError(f"encode_video({path}): no frames to encode")
    height, width = _check_frame(first, None, path, 0)
    if (
        codec in {"libx264", "libx265"}
        and pix_fmt.startswith(_SUBSAMPLED)
        and (width % 2 or height % 2)
    ):
        raise ValueError(
            f"encode_video({path}): {codec} with {pix_fmt} needs even width and height, got "
            f"{width}x{height}; use codec='mpeg4' (.mp4) or 'ffv1' (.mkv) for odd sizes"
        )
    options: dict[str, str] = {}
    if crf is not None and codec in _CRF_CODECS:
        options["crf"] = str(crf)
        if codec == "libvpx-vp9":
            options["b"] = "0"  # constant-quality mode needs the bitrate target off
    if codec in _PRESET_CODECS:
        options["preset"] = preset
    if codec == "libx265":
        options["x265-params"] = "log-level=error"

    time_base = Fraction(1, 90000)  # the MPEG clock: fine enough for any realistic timestamp
    n = 0
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=container_options) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if rotation:
            stream.set_display_rotation(rotation)
        if timestamps is not None:
            stream.codec_context.time_base = time_base
        frame = first
        while frame is not None:
            _check_frame(frame, (height, width), path, n)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if timestamps is not None:
                if n >= len(timestamps):
                    raise ValueError(
                        f"encode_video({path}): more frames than timestamps ({len(timestamps)})"
                    )
                vf.pts, vf.time_base = round(timestamps[n] * time_base.denominator), time_base
            for packet in stream.encode(vf):
                container.mux(packet)
            n += 1
            frame = next(it, None)
        for packet in stream.encode():
            container.mux(packet)
    if timestamps is not None and n != len(timestamps):
        raise ValueError(f"encode_video({path}): {n} frames but {len(timestamps)} timestamps")
    return n


def _check_frame(
    frame: np.ndarray, size: tuple[int, int] | None, path: Path, i: int
) -> tuple[int, int]:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"encode_video({path}): frame {i} must be an (H, W, 3) uint8 RGB array, "
            f"got shape {frame.shape} dtype {frame.dtype}"
        )
    if size is not None and frame.shape[:2] != size:
        raise ValueError(
            f"encode_video({path}): frame {i} is {frame.shape[:2]}, earlier frames were {size}"
        )
    return frame.shape[0], frame.shape[1]


# --------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class SceneStyle:
    """Look and motion of one synthetic scene: a panning textured background and one object."""

    background_rgb: tuple[int, int, int]
    """Mean background colour, 0-255."""
    object_rgb: tuple[int, int, int]
    """Mean colour of the moving object's checker texture, 0-255."""
    shape: str
    """Object outline: 'disk', 'square' or 'diamond'."""
    pan: tuple[int, int]
    """Background motion in px/frame (dx, dy) at the rendered size; (0, 0) is a locked camera."""
    leftward: bool = False
    """Object travels right-to-left instead of left-to-right."""
    contrast: float = 0.35
    """Background texture amplitude as a fraction of the 0-255 range."""


_SCENES = (
    SceneStyle((40, 70, 150), (235, 200, 60), "disk", pan=(2, 0)),
    SceneStyle((205, 150, 70), (40, 60, 170), "square", pan=(-1, 1), leftward=True),
    SceneStyle((60, 165, 85), (230, 70, 160), "diamond", pan=(1, -1)),
)
_TEXT_BACKGROUND = SceneStyle((25, 28, 40), (0, 0, 0), "disk", pan=(1, 0), contrast=0.12)


def _mask_disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r, -r:r] + 0.5
    return xx**2 + yy**2 <= r * r


def _mask_square(r: int) -> np.ndarray:
    return np.ones((2 * r, 2 * r), dtype=bool)


def _mask_diamond(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r:r, -r:r] + 0.5
    return np.abs(xx) + np.abs(yy) <= r


_MASKS = {"disk": _mask_disk, "square": _mask_square, "diamond": _mask_diamond}


def _noise(rng: np.random.Generator, h: int, w: int, grain: int) -> np.ndarray:
    """Smooth value noise in [0, 1], (h, w) float32, with features about `grain` px wide."""
    small = rng.random((max(2, h // grain + 2), max(2, w // grain + 2)), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def _texture(
    rng: np.random.Generator, h: int, w: int, rgb: tuple[int, int, int], contrast: float
) -> np.ndarray:
    """Two octaves of luminance noise around `rgb`: (h, w, 3) uint8."""
    grain = max(2, min(h, w) // 10)
    lum = 0.65 * _noise(rng, h, w, grain) + 0.35 * _noise(rng, h, w, max(2, grain // 4)) - 0.5
    out = np.asarray(rgb, np.float32) + (contrast * 255.0) * lum[..., None]  # (h, w, 3)
    return out.clip(0, 255).astype(np.uint8)


def _object_patch(rng: np.random.Generator, r: int, rgb: tuple[int, int, int]) -> np.ndarray:
    """A (2r, 2r, 3) checkerboard modulated by noise: strong corners for optical flow."""
    cell = max(1, r // 3)
    yy, xx = np.mgrid[0 : 2 * r, 0 : 2 * r]
    checker = (((yy // cell) + (xx // cell)) % 2).astype(np.float32) - 0.5  # (2r, 2r)
    lum = 110.0 * checker + 60.0 * (_noise(rng, 2 * r, 2 * r, max(2, r // 4)) - 0.5)
    return (np.asarray(rgb, np.float32) + lum[..., None]).clip(0, 255).astype(np.uint8)


def _object_path(n: int, w: int, h: int, r: int, leftward: bool) -> list[tuple[int, int]]:
    """Top-left corners of the object: a smooth left-right sweep with one vertical wave."""
    x0, x1 = 0, max(0, w - 2 * r)
    if leftward:
        x0, x1 = x1, x0
    amp = max(0, (h - 2 * r) // 4)
    path = []
    for t in range(n):
        u = t / max(1, n - 1)
        x = round(x0 + (x1 - x0) * u)
        y = round((h - 2 * r) / 2 + amp * math.sin(2 * math.pi * u))
        path.append((x, y))
    return path


def _scene_frames(
    rng: np.random.Generator, n: int, w: int, h: int, style: SceneStyle, *, moving: bool = True
) -> Iterator[np.ndarray]:
    """n frames of one scene; with moving=False the camera and the object stay put."""
    dx, dy = style.pan if moving else (0, 0)
    span_x, span_y = abs(dx) * (n - 1), abs(dy) * (n - 1)
    background = _texture(rng, h + span_y, w + span_x, style.background_rgb, style.contrast)
    r = max(1, min(w, h) // 5)
    patch = _object_patch(rng, r, style.object_rgb)
    mask = _MASKS[style.shape](r)[..., None]  # (2r, 2r, 1)
    path = (
        _object_path(n, w, h, r, style.leftward)
        if moving
        else [_object_path(3, w, h, r, False)[1]] * n
    )
    for t in range(n):
        ox = dx * t if dx >= 0 else span_x + dx * t
        oy = dy * t if dy >= 0 else span_y + dy * t
        frame = background[oy : oy + h, ox : ox + w].copy()  # (h, w, 3)
        x, y = path[t]
        ph, pw = min(2 * r, h - y), min(2 * r, w - x)
        region = frame[y : y + ph, x : x + pw]
        region[...] = np.where(mask[:ph, :pw], patch[:ph, :pw], region)
        yield frame


def _text_layout(w: int, h: int, lines: Sequence[str]) -> tuple[float, int, list[tuple[int, int]]]:
    """Font scale, thickness and baseline origins that make `lines` fill most of the frame."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (w1, h1), _ = cv2.getTextSize(max(lines, key=len), font, 1.0, 2)
    scale = 0.88 * w / max(1, w1)
    line_h = 1.6 * h1 * scale
    if line_h * len(lines) > 0.85 * h:
        scale *= 0.85 * h / (line_h * len(lines))
        line_h = 1.6 * h1 * scale
    thickness = max(1, round(2.2 * scale))
    top = (h - line_h * len(lines)) / 2
    origins = []
    for i, line in enumerate(lines):
        (lw, lh), _ = cv2.getTextSize(line, font, scale, thickness)
        origins.append((round((w - lw) / 2), round(top + line_h * i + (line_h + lh) / 2)))
    return scale, thickness, origins


def _text_frames(
    rng: np.random.Generator, n: int, w: int, h: int, lines: Sequence[str]
) -> Iterator[np.ndarray]:
    scale, thickness, origins = _text_layout(w, h, lines)
    overlay = np.zeros((h, w), np.uint8)
    for line, org in zip(lines, origins, strict=True):
        cv2.putText(
            overlay, line, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA
        )
    alpha = (overlay.astype(np.float32) / 255.0)[..., None]  # (h, w, 1)
    for frame in _scene_frames(rng, n, w, h, _TEXT_BACKGROUND):
        yield (frame * (1.0 - alpha) + 255.0 * alpha).astype(np.uint8)


def render_frames(
    kind: str,
    n_frames: int,
    size: tuple[int, int],
    *,
    seed: int = 0,
    cuts: Sequence[int] = (),
    text: Sequence[str] = DEMO_TEXT_LINES,
) -> Iterator[np.ndarray]:
    """Yield `n_frames` RGB frames of (size[1], size[0], 3) uint8, deterministic in `seed`.

    kind: 'moving' (panning textured background + textured object crossing the frame),
        'static' (one textured image repeated), 'text' (white lines of `text` over a dark panning
        background), 'black' (all zeros), 'cuts' (a new scene at every index in `cuts`; the
        scenes cycle through three distinct colour/shape styles).
    """
    w, h = size
    if kind not in FRAME_KINDS:
        raise ValueError(f"render_frames: kind must be one of {FRAME_KINDS}, got {kind!r}")
    if n_frames < 1 or w < 1 or h < 1:
        raise ValueError(
            f"render_frames: need n_frames >= 1 and a positive size, got {n_frames}, {size}"
        )
    if cuts and kind != "cuts":
        raise ValueError(
            f"render_frames: cuts are only meaningful for kind='cuts', got kind={kind!r}"
        )
    if list(cuts) != sorted(set(cuts)) or any(not 0 < c < n_frames for c in cuts):
        raise ValueError(
            f"render_frames: cuts must be increasing frame indices in (0, {n_frames}), got {cuts}"
        )
    rng = np.random.default_rng(seed)
    if kind == "black":
        black = np.zeros((h, w, 3), np.uint8)
        return (black.copy() for _ in range(n_frames))
    if kind == "text":
        return _text_frames(rng, n_frames, w, h, text)
    if kind == "static":
        return _scene_frames(rng, n_frames, w, h, _SCENES[0], moving=False)
    bounds = [0, *cuts, n_frames]
    return (
        frame
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
        for frame in _scene_frames(rng, b - a, w, h, _SCENES[i % len(_SCENES)])
    )
