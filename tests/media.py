"""Real media files for tests: small synthetic videos and a corpus of bad inputs.

`make_video` renders and encodes a short clip (see `curation.demo_data.render_frames` for the
kinds). `write_bad_corpus` writes the inputs a robust pipeline must survive, each with an
`Expect` saying what probing it should give.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np

from curation.demo_frames import encode_video, render_frames


def make_video(
    path: Path,
    n_frames: int = 24,
    size: tuple[int, int] = (64, 48),
    fps: int = 24,
    *,
    kind: str = "moving",
    cuts: Sequence[int] = (),
    seed: int = 0,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    timestamps: Sequence[float] | None = None,
    rotation: int = 0,
    faststart: bool = False,
) -> Path:
    """Write a synthetic clip of `n_frames` frames of size (w, h); returns `path`.

    kind: 'moving' | 'static' | 'text' | 'black' | 'cuts' (cuts = first frame of each new scene).
    timestamps: per-frame presentation times in seconds (variable frame rate); rotation: display
    rotation in degrees counter-clockwise. libx264 with yuv420p needs even sizes; use
    codec='mpeg4' for odd ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = render_frames(kind, n_frames, size, seed=seed, cuts=cuts)
    encode_video(
        path,
        frames,
        fps,
        codec=codec,
        pix_fmt=pix_fmt,
        timestamps=timestamps,
        rotation=rotation,
        faststart=faststart,
    )
    return path


def read_frames(path: Path) -> np.ndarray:
    """Decode every frame of the first video stream: (T, H, W, 3) uint8 RGB."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def write_audio_only(
    path: Path, seconds: float = 1.0, *, codec: str = "aac", sample_rate: int = 16000
) -> Path:
    """Write a mono 440 Hz tone with no video stream (aac in .mp4/.m4a, libmp3lame in .mp3)."""
    path = Path(path)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)[None]  # (1, samples)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=sample_rate)
        stream.layout = "mono"
        fmt = stream.codec_context.codec.audio_formats[0].name
        frame = av.AudioFrame.from_ndarray(
            tone, format="fltp" if fmt == "fltp" else "flt", layout="mono"
        )
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def mp4_boxes(data: bytes) -> list[tuple[str, int, int]]:
    """Top-level ISO-BMFF boxes as (type, offset, size)."""
    boxes, off = [], 0
    while off + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[off : off + 8])
        if size == 1:  # 64-bit size follows the type
            size = struct.unpack(">Q", data[off + 8 : off + 16])[0]
        elif size == 0:  # box runs to the end of the file
            size = len(data) - off
        if size < 8:
            break
        boxes.append((kind.decode("latin-1"), off, size))
        off += size
    return boxes


@dataclass(frozen=True)
class Expect:
    """What probing one bad-corpus entry should give."""

    probe: Literal["ok", "error", "skip"]
    """'ok': a probe accepts it; 'error': a probe returns status='error'; 'skip': not a file, a
    directory walker must pass over it (and terminate)."""
    error_match: str = ""
    """When probe == 'error': a case-insensitive substring of the probe's error message."""
    av_error: str = ""
    """Substring of the exception PyAV raises opening or fully decoding it; '' when PyAV decodes
    every frame without error (or, for probe == 'error', opens it but finds no video)."""
    width: int | None = None
    height: int | None = None
    n_frames: int | None = None
    """Frames a full decode yields (None: unknown or not applicable)."""
    rotation: int = 0
    """Display rotation PyAV reports (`VideoFrame.rotation`), degrees counter-clockwise."""
    pix_fmt: str | None = None
    frame_times: tuple[float, ...] | None = None
    """Presentation times in seconds when the frame rate is variable."""
    note: str = ""


SKIPPED_BAD_CASES = {
    "long_over_30min.mp4": "not generated: a >30 min video takes minutes to encode and hundreds "
    "of MB; duration limits are tested with short files and a lowered limit instead",
}
"""Bad-input cases that `write_bad_corpus` deliberately does not produce, with why."""

_VFR_TIMES = (0.0, 0.04, 0.08, 0.2, 0.22, 0.5, 0.54, 0.56, 0.9, 0.94, 1.0, 1.4)
_SMALL = (64, 48)
_INVALID = "Invalid data found"  # PyAV's InvalidDataError text for unreadable containers


def write_bad_corpus(root: Path) -> dict[str, Expect]:
    """Write bad and awkward inputs under `root`; returns {path relative to root: Expect}.

    Videos are tiny (64x48 unless the case is about size) so the whole corpus takes well under a
    second. Includes a symlink loop (`tree/loop -> .`) and a dangling symlink, so walkers over
    `root` are exercised too. See SKIPPED_BAD_CASES for what is left out.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    out: dict[str, Expect] = {}

    def ok_video(
        name: str,
        n: int = 12,
        size: tuple[int, int] = _SMALL,
        fps: int = 24,
        *,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        rotation: int = 0,
    ) -> None:
        make_video(
            root / name,
            n,
            size,
            fps,
            seed=len(out),
            codec=codec,
            pix_fmt=pix_fmt,
            rotation=rotation,
        )
        out[name] = Expect(
            "ok", width=size[0], height=size[1], n_frames=n, pix_fmt=pix_fmt, rotation=rotation
        )

    (root / "zero_bytes.mp4").write_bytes(b"")
    out["zero_bytes.mp4"] = Expect("error", _INVALID, _INVALID, note="empty file")

    # Default mp4 muxing puts moov after mdat: cutting before it loses all metadata.
    whole = make_video(root / "_whole.tmp.mp4", 24, _SMALL, kind="moving").read_bytes()
    (root / "_whole.tmp.mp4").unlink()
    moov = next(off for kind, off, _ in mp4_boxes(whole) if kind == "moov")
    (root / "truncated_no_moov.mp4").write_bytes(whole[:moov])
    out["truncated_no_moov.mp4"] = Expect(
        "error",
        _INVALID,
        _INVALID,
        note="moov atom not found: file cut before its moov (index) atom",
    )

    # With moov first (faststart layout), a short mdat still opens but decoding runs out of data.
    faststart = make_video(root / "_faststart.tmp.mp4", 48, _SMALL, faststart=True).read_bytes()
    (root / "_faststart.tmp.mp4").unlink()
    mdat_off, mdat_size = next(
        (off, size) for kind, off, size in mp4_boxes(faststart) if kind == "mdat"
    )
    (root / "truncated_mdat.mp4").write_bytes(faststart[: mdat_off + mdat_size // 2])
    out["truncated_mdat.mp4"] = Expect(
        "ok",
        av_error=_INVALID,
        width=_SMALL[0],
        height=_SMALL[1],
        note="header intact (48 frames announced) but mdat cut in half: a header probe passes; "
        "a full decode yields the first ~16 frames, then PyAV raises InvalidDataError",
    )

    (root / "random_bytes.mp4").write_bytes(rng.integers(0, 256, 8192, dtype=np.uint8).tobytes())
    out["random_bytes.mp4"] = Expect("error", _INVALID, _INVALID)

    image = next(render_frames("static", 1, _SMALL, seed=1))
    (root / "png_image.mp4").write_bytes(cv2.imencode(".png", image[..., ::-1])[1].tobytes())
    out["png_image.mp4"] = Expect(
        "error",
        "not a video",
        note="PyAV opens it through the png_pipe demuxer as one 64x48 frame; a probe must reject "
        "image formats rather than ingest a still image",
    )

    write_audio_only(root / "audio_only.mp4", 1.0)
    out["audio_only.mp4"] = Expect(
        "error", "no video stream", note="aac in mp4, PyAV opens it with 0 video streams"
    )

    # libx264 refuses odd sizes for 4:2:0 (and 1x1 outright), so 1x1 uses MPEG-4 Part 2.
    ok_video("tiny_1x1.mp4", size=(1, 1), codec="mpeg4")
    ok_video("tiny_2x2.mp4", size=(2, 2))
    ok_video("single_frame.mp4", n=1)
    ok_video("short_0.3s.mp4", n=9, fps=30)
    ok_video("rotated_90.mp4", rotation=90)
    ok_video("yuv420p10le.mp4", pix_fmt="yuv420p10le")
    ok_video("yuv444p.mp4", pix_fmt="yuv444p")
    ok_video("a b $(echo x);'q'.mp4")
    ok_video("vidéo_日本.mp4")

    make_video(root / "vfr.mp4", len(_VFR_TIMES), _SMALL, 24, timestamps=_VFR_TIMES)
    out["vfr.mp4"] = Expect(
        "ok",
        width=_SMALL[0],
        height=_SMALL[1],
        n_frames=len(_VFR_TIMES),
        pix_fmt="yuv420p",
        frame_times=_VFR_TIMES,
        note="irregular frame gaps (20 ms to 400 ms); nominal rate 24 fps",
    )

    tree = root / "tree"
    tree.mkdir(exist_ok=True)
    make_video(tree / "inside.mp4", 12, _SMALL)
    out["tree/inside.mp4"] = Expect(
        "ok",
        width=_SMALL[0],
        height=_SMALL[1],
        n_frames=12,
        pix_fmt="yuv420p",
        note="must be found exactly once despite tree/loop",
    )
    _symlink(tree / "loop", ".")
    out["tree/loop"] = Expect(
        "skip", note="symlink to its own directory: a walker following links never ends"
    )
    _symlink(root / "dangling.mp4", "does_not_exist.mp4")
    out["dangling.mp4"] = Expect(
        "error", "No such file", "No such file", note="symlink to a missing file"
    )
    return out


def _symlink(link: Path, target: str) -> None:
    if link.is_symlink():
        link.unlink()
    os.symlink(target, link)
