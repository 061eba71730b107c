"""NVDEC decode throughput against the number of decoder sessions, at 720p and 1080p, and what
holds it: session set-up per file, the host, or the engines.

  full/new       a new SimpleDecoder per file, every frame decoded (how the ~1,000 fps plateau
                 was measured before this bench)
  full/reused    one session per thread for all its files (reconfigure_decoder)
  lane/nvdec     the pipeline's lane (curation.decode_lanes, mode nvdec) on score-bench clips:
                 8 sampled frames a clip, resized on the GPU, copied to the host
  lane/auto      the same with CPU (PyAV) workers taking jobs from the same queue
  pyav           every frame on CPU processes (one per core), for comparison

Each row: frames/s (source frames of the files or clips covered), decoder busy % and GPU busy %
(nvidia-smi), this process's CPU use (cores), session set-up ms. Writes
bench/results/nvdec_gpu_<card>.json (rewritten after every row).

  python bench/nvdec_gpu.py                 # on a GPU machine with pynvvideocodec
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_sampler import GpuSampler  # noqa: E402
from bench.harness import Result  # noqa: E402

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}


def make_file(args: tuple) -> dict:
    path, size, seconds, fps, seed, kind = args
    from curation.demo_frames import encode_video, render_frames

    n = int(seconds * fps)
    cuts = (n // 3, 2 * n // 3) if kind == "cuts" else ()
    encode_video(Path(path), render_frames(kind, n, size, seed=seed, cuts=cuts), fps, preset="veryfast")
    return {"path": str(path), "n_frames": n, "fps": float(fps), "size": size}


def make_files(workdir: Path, label: str, size, n: int, seconds: float, fps: int) -> list[dict]:
    jobs = [
        (workdir / f"{label}_{i}.mp4", size, seconds, fps, i, ("moving", "cuts")[i % 2]) for i in range(n)
    ]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(make_file, jobs))


def full_decode(dec) -> int:
    """Decode every remaining frame of the session's file; -> frames."""
    n = 0
    while True:
        frames = dec.get_batch_frames(32)
        if not frames:
            return n
        n += len(frames)


def run_sessions(files: list[dict], threads: int, reuse: bool) -> dict:
    import PyNvVideoCodec as nvc
    import torch

    setup_ms: list[float] = []
    lock = threading.Lock()
    work = list(files)

    def worker() -> int:
        stream = torch.cuda.Stream()
        dec, frames = None, 0
        while True:
            with lock:
                if not work:
                    return frames
                f = work.pop()
            t0 = time.perf_counter()
            if dec is not None and reuse:
                dec.reconfigure_decoder(f["path"])
            else:
                dec = nvc.SimpleDecoder(
                    f["path"],
                    gpu_id=0,
                    cuda_stream=stream.cuda_stream,
                    use_device_memory=True,
                    output_color_type=nvc.OutputColorType.RGB,
                    max_width=4096,
                    max_height=4096,
                )
            with lock:
                setup_ms.append((time.perf_counter() - t0) * 1e3)
            frames += full_decode(dec)

    return _timed_threads(worker, threads) | {"setup_ms_median": round(statistics.median(setup_ms), 2)}


def _timed_threads(fn, threads: int) -> dict:
    out: list[int] = []
    ts = [threading.Thread(target=lambda: out.append(fn())) for _ in range(threads)]
    cpu0, t0 = os.times(), time.perf_counter()
    with GpuSampler() as smi:
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    frames = sum(out)
    return {
        "frames": frames,
        "wall_s": round(wall, 3),
        "fps": round(frames / wall, 1),
        "process_cores": round(cpu / wall, 2),
        **smi.stats,
    }


def run_lane(clips: list[dict], mode: str, sessions: int, cpu_workers: int) -> dict:
    from curation.decode_lanes import LaneDecoder
    from filters.video import DecodeSpec

    lanes = LaneDecoder(mode, DecodeSpec(8, 360, 300.0), nvdec_sessions=sessions, cpu_workers=cpu_workers)
    try:
        lanes.decode([[c] for c in clips[: max(2, sessions)]])  # warm the sessions and workers
        lanes.lanes.clear()
        cpu0, t0 = os.times(), time.perf_counter()
        with GpuSampler() as smi:
            got = lanes.decode([[c] for c in clips])
        wall = time.perf_counter() - t0
        cpu1 = os.times()
    finally:
        counts = lanes.counts()
        lanes.close()
    errors = [d.error for run in got for d in run if d.error]
    frames = sum(int(c["end_frame"]) - int(c["start_frame"]) for c in clips)
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "clips": len(clips),
        "clips_per_s": round(len(clips) / wall, 1),
        "fps": round(frames / wall, 1),
        "wall_s": round(wall, 3),
        "process_cores": round(cpu / wall, 2),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        **counts,
        **smi.stats,
    }


def _pyav_full(path: str) -> int:
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        s.codec_context.thread_count = 1
        return sum(1 for _ in c.decode(s))


def run_pyav(files: list[dict], procs: int) -> dict:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(procs) as pool:
        frames = sum(pool.map(_pyav_full, [f["path"] for f in files]))
    wall = time.perf_counter() - t0
    return {"frames": frames, "wall_s": round(wall, 3), "fps": round(frames / wall, 1), "procs": procs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=48, help="4-s files per resolution")
    ap.add_argument("--clips", type=int, default=480, help="3-s 720p score-bench clips for the lane rows")
    ap.add_argument("--threads", default="1,2,4,7,14")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop adding rows after this long")
    args = ap.parse_args()

    res = Result("nvdec_gpu", out=args.out)
    rows = res.add("rows", [])
    t_start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="nvdec-bench-"))
    files = {k: make_files(work, k, size, args.files, 4.0, 30) for k, size in SIZES.items()}
    clip_files = make_files(work, "clip", SIZES["720p"], min(args.clips, 96), 3.0, 24)
    clips = [
        {
            "clip_id": f"c{i}",
            "path": f["path"],
            "start_frame": 0,
            "end_frame": f["n_frames"],
            "fps": f["fps"],
            "display_width": 1280,
            "display_height": 720,
            "rotation": 0,
            "codec": "h264",
            "pix_fmt": "yuv420p",
            "vfr": False,
        }
        for i, f in enumerate(clip_files * (args.clips // len(clip_files) + 1))
    ][: args.clips]
    res.add(
        "corpus",
        {
            "files_per_res": args.files,
            "file_s": 4.0,
            "file_fps": 30,
            "clips": len(clips),
            "clip_s": 3.0,
            "clip_fps": 24,
            "clip_size": "1280x720",
        },
    )

    def add(row: dict) -> None:
        rows.append(row)
        print(
            {
                k: row.get(k)
                for k in (
                    "what",
                    "res",
                    "threads",
                    "fps",
                    "clips_per_s",
                    "dec_busy_pct",
                    "gpu_busy_pct",
                    "process_cores",
                    "setup_ms_median",
                    "errors",
                )
            },
            flush=True,
        )
        res.write()

    # rows in order of what the target needs, so a short --budget-s still measures it: 1080p with
    # reused sessions at the widest settings, then the lane as the pipeline runs it, then the rest
    threads = sorted((int(t) for t in args.threads.split(",")), reverse=True)
    jobs: list[tuple] = [("pyav", "1080p", 0, 0)]
    jobs += [("full/reused", "1080p", n, 0) for n in threads[:2]]
    jobs += [("lane/nvdec", "720p clips", 7, 0), ("lane/auto", "720p clips", 7, 12)]
    jobs += [("full/new", "1080p", threads[1], 0)]
    jobs += [("full/reused", "1080p", n, 0) for n in threads[2:]]
    jobs += [("pyav", "720p", 0, 0)] + [("full/reused", "720p", n, 0) for n in threads]
    done_new = ("1080p", threads[1])
    jobs += [("full/new", label, n, 0) for label in SIZES for n in threads if (label, n) != done_new]
    jobs += [("lane/nvdec", "720p clips", 4, 0), ("lane/auto", "720p clips", 4, 8)]
    for what, label, n, workers in jobs:
        if time.monotonic() - t_start > args.budget_s:
            print(f"budget spent: {what} {label} {n} and the rest not run", flush=True)
            break
        try:
            if what == "pyav":
                r = run_pyav(files[label], os.cpu_count())
            elif what.startswith("full/"):
                r = run_sessions(files[label], n, what == "full/reused")
            else:
                r = run_lane(clips, what.split("/")[1], n, workers)
        except Exception as exc:  # noqa: BLE001  (a failed row is recorded, the bench goes on)
            r = {"error": f"{type(exc).__name__}: {exc}"}
        row = {"what": what, "res": label, **({"threads": n} if n else {}), **r}
        if workers:
            row["cpu_workers"] = workers
        add(row)
    rows.sort(key=lambda r: (r["what"], r["res"], r.get("threads", 0)))

    res.table(
        [
            "what",
            "res",
            "sessions",
            "fps",
            "clips/s",
            "NVDEC busy %",
            "GPU busy %",
            "host cores",
            "set-up ms",
        ],
        [
            (
                r["what"],
                r["res"],
                r.get("threads", r.get("procs", "-")),
                r.get("fps", r.get("error", "-")),
                r.get("clips_per_s", "-"),
                r.get("dec_busy_pct", "-"),
                r.get("gpu_busy_pct", "-"),
                r.get("process_cores", "-"),
                r.get("setup_ms_median", "-"),
            )
            for r in rows
        ],
        title="NVDEC lane (target: >= 3,000 fps of 1080p H.264 per GPU)",
    )
    res.write()


if __name__ == "__main__":
    main()
