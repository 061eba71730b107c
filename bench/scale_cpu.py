"""Scale bench: N short generated videos through ingest -> split -> score -> filter -> shard.

Reports per-stage wall time and throughput, and the peak resident memory of the driver plus
every Ray process (sampled from /proc every 0.5 s), to show memory stays bounded: stages stream
batches and write parts as they go; no stage loads a whole table of frames.

    .venv/bin/python bench/scale_cpu.py --videos 2000            # ~ the issue's scale run
    .venv/bin/python bench/scale_cpu.py --videos 100 --out /tmp/s # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _rss_mb() -> float:
    """Summed RSS of this process and every Ray process on the machine, MiB."""
    total = 0
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if int(pid) != me and b"ray" not in cmd:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024


def _object_store() -> tuple[float, float]:
    """(plasma MiB in use now, MiB spilled so far) across the cluster, from Ray's memory summary."""
    import re

    import ray
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    used = re.search(r"Plasma memory usage (\d+) MiB", text)
    spilled = re.search(r"Spilled (\d+) MiB", text)
    return float(used.group(1)) if used else 0.0, float(spilled.group(1)) if spilled else 0.0


class PeakSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0.0
        self.plasma_peak = 0.0
        self.spilled = 0.0
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        tick = 0
        while not self._halt.wait(0.5):
            rss = _rss_mb()
            self.peak = max(self.peak, rss)
            tick += 1
            if tick % 4 == 0:
                try:
                    used, spilled = _object_store()
                except Exception:  # noqa: BLE001 - Ray not up yet, or between stages
                    continue
                self.plasma_peak = max(self.plasma_peak, used)
                self.spilled = max(self.spilled, spilled)
            self.samples.append((round(time.monotonic() - self.t0, 1), round(rss, 1)))

    def stop(self):
        self._halt.set()
        self.join()


def make_inputs(out: Path, n: int, seconds: float, size: tuple[int, int], fps: int) -> None:
    import numpy as np

    from curation.demo_frames import encode_video, render_frames

    out.mkdir(parents=True, exist_ok=True)
    existing = {p.name for p in out.glob("*.mp4")}
    for i in range(n):
        name = f"v{i:05d}.mp4"
        if name in existing:
            continue
        frames = np.stack(list(render_frames("moving", int(seconds * fps), size, seed=i)))
        encode_video(out / name, frames, fps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--size", default="320x256", help="WxH of the generated videos, e.g. 1280x720")
    ap.add_argument("--fps", type=int, default=12)
    ap.add_argument("--out", default="/tmp/reelsift-scale")
    ap.add_argument("--json", default=None, help="default: bench/results/scale_cpu_<size>.json")
    args = ap.parse_args()

    from curation import pipeline
    from curation.config import load_config
    from manifests.db import query

    work = Path(args.out)
    root = work / f"run-{int(time.time())}"
    t = time.monotonic()
    size = tuple(int(v) for v in args.size.split("x"))
    inputs = work / f"videos-{args.size}-{args.fps}"
    make_inputs(inputs, args.videos, args.seconds, size, args.fps)
    gen_s = time.monotonic() - t
    cfg = load_config(REPO / "configs/offline.yaml", ["ray.progress=false", "ray.flush_rows=256"])
    sampler = PeakSampler()
    sampler.start()
    timings = {}
    for name, step in pipeline.stages(cfg, root, inputs, None):
        t = time.monotonic()
        step()
        timings[name] = time.monotonic() - t
    sampler.stop()
    counts = {
        tbl: query(root, f"SELECT count(*) AS n FROM {tbl}").column("n")[0].as_py()
        for tbl in ("videos", "clips", "scores", "decisions", "shards")
    }
    video_s = query(root, "SELECT sum(duration_s) AS s FROM videos WHERE status='ok'").column("s")[0].as_py()
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "videos": args.videos,
        "seconds_each": args.seconds,
        "size": "320x256@12fps",
        "input_generation_s": round(gen_s, 1),
        "stage_wall_s": {k: round(v, 1) for k, v in timings.items()},
        "total_wall_s": round(sum(timings.values()), 1),
        "rows": counts,
        "videos_per_s": round(args.videos / sum(timings.values()), 2),
        "video_seconds_per_wall_s": round((video_s or 0) / sum(timings.values()), 2),
        "peak_rss_mb_driver_plus_ray": round(sampler.peak, 1),
        "object_store_peak_mb": sampler.plasma_peak,
        "object_store_capacity_mb": cfg.ray.object_store_mb,
        "spilled_mb": sampler.spilled,
        "rss_timeline_mb": sampler.samples[:: max(1, len(sampler.samples) // 60)],
    }
    print(f"{'stage':10s} {'wall s':>8s} {'items/s':>8s}")
    per = {
        "ingest": counts["videos"],
        "split": counts["videos"],
        "score": counts["scores"],
        "filter": counts["decisions"],
        "shard": counts["shards"],
    }
    for k, v in timings.items():
        print(f"{k:10s} {v:8.1f} {per.get(k, 0) / max(v, 1e-9):8.2f}")
    print(
        f"total {result['total_wall_s']} s, {result['videos_per_s']} videos/s, "
        f"peak RSS (driver + Ray) {result['peak_rss_mb_driver_plus_ray']} MiB, rows {counts}"
    )
    out = Path(args.json or REPO / f"bench/results/scale_cpu_{args.size}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
