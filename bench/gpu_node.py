"""The whole pipeline on one GPU node, through Ray, as a user runs it: `reelsift run` with
configs/default.yaml (ViT-L-14 + LAION head, a Qwen2.5-VL-7B-sized captioner) on an hour of video.

  python bench/gpu_node.py corpus --out runs/gpu_node/corpus        # ~1 h: 720p/1080p H.264,
                                                                    # some HEVC, a few AV1
  python bench/gpu_node.py run --corpus runs/gpu_node/corpus --decode cpu
  python bench/gpu_node.py run --corpus runs/gpu_node/corpus --decode auto

Models have RANDOM weights (no hub is reachable from the GPU machine): score.aesthetic.random_init
and caption.transformers.model=reelsift-random:qwen2.5-vl-7b, the same architectures and sizes.
The aesthetic and clip_score bounds are opened, since random scores would drop every clip and
leave caption nothing to do; every other setting is default.yaml's.

Per stage (from the `== stage` lines of `reelsift run`): wall s, items/s (the stage's _metrics),
GPU and NVDEC busy %, CPU-seconds of the whole process tree (Ray's processes included), peak RSS
of the tree, peak GPU memory, clips per decode lane. For the run: hours of input video per
node-hour, keep rate, and the stage that bounds it. Both decode modes go into one JSON,
bench/results/gpu_node_<card>.json, beside each other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import Result, format_table  # noqa: E402
from bench.proctree import descendants, run_measured  # noqa: E402

GPU_STAGES = {"score", "caption", "align"}
OPEN_BOUNDS = [
    f"filter.tiers.{tier}.bounds.{col}.min=-1000.0"
    for tier in ("720p", "480p", "256p")
    for col in ("aesthetic_mean", "clip_score")
]


# -- corpus ------------------------------------------------------------------------------------
def _one_file(job: tuple) -> dict:
    path, size, seconds, codec, seed = job
    from curation.demo_frames import encode_video, render_frames

    fps = 24
    n = int(seconds * fps)
    rng = np.random.default_rng(seed)
    cuts, at = [], 0
    while True:  # a new scene every 3-8 s: split has real cuts to find
        at += int(rng.integers(3 * fps, 8 * fps))
        if at >= n - fps:
            break
        cuts.append(at)
    encode_video(Path(path), render_frames("cuts", n, size, seed=seed, cuts=cuts), fps, codec=codec)
    return {"path": str(path), "seconds": seconds, "size": size, "codec": codec, "scenes": len(cuts) + 1}


def make_corpus(out: Path, hours: float) -> dict:
    """720p/1080p H.264, every 8th file HEVC, three short AV1 files; >= `hours` of video."""
    out.mkdir(parents=True, exist_ok=True)
    jobs, total, i = [], 0.0, 0
    for k in range(3):  # AV1: the CPU lane's files
        jobs.append((out / f"av1_{k}.mkv", (1280, 720), 20.0, "libsvtav1", 1000 + k))
        total += 20.0
    while total < hours * 3600:
        size = (1920, 1080) if i % 2 else (1280, 720)
        codec = "libx265" if i % 8 == 7 else "libx264"
        jobs.append((out / f"v{i:03d}_{size[1]}p_{codec}.mp4", size, 60.0, codec, i))
        total += 60.0
        i += 1
    t0 = time.monotonic()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        files = list(pool.map(_one_file, jobs))
    info = {
        "files": len(files),
        "hours": round(total / 3600, 3),
        "seconds_to_make": round(time.monotonic() - t0, 1),
        "by_codec": {c: sum(1 for f in files if f["codec"] == c) for c in {f["codec"] for f in files}},
        "scenes": sum(f["scenes"] for f in files),
    }
    (out / "corpus.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))
    return info


# -- measuring ---------------------------------------------------------------------------------
class Timeline:
    """nvidia-smi per GPU (busy %, NVDEC %, memory) and the process tree's RSS, stamped, every
    ~0.5 s, for the GPUs in `gpus`."""

    def __init__(self, gpus: list[int]):
        self.gpus = gpus
        self.gpu: list[tuple[float, int, int, int, int]] = []  # (t, index, busy %, NVDEC %, MiB)
        self.rss: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def __enter__(self) -> Timeline:
        query = "--query-gpu=index,utilization.gpu,utilization.decoder,memory.used"
        ids = ",".join(map(str, self.gpus))
        cmd = ["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "500", "-i", ids]
        try:
            self.smi = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except FileNotFoundError:  # a CPU check run
            self.smi = None
        self.threads = [threading.Thread(target=self._read_rss, daemon=True)]
        if self.smi is not None:
            self.threads.append(threading.Thread(target=self._read_smi, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def _read_smi(self) -> None:
        for line in self.smi.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 4 and all(p.isdigit() for p in parts):
                self.gpu.append((time.monotonic(), *map(int, parts)))

    def _read_rss(self) -> None:
        me = os.getpid()
        while not self.stop.wait(0.5):
            self.rss.append((time.monotonic(), sum(r for _, _, r, _ in descendants(me).values())))

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.smi is not None:
            self.smi.terminate()
        for t in self.threads:
            t.join(timeout=5)

    def window(self, t0: float, t1: float) -> dict:
        g = np.array([s[1:] for s in self.gpu if t0 <= s[0] <= t1]) if self.gpu else np.zeros((0, 4))
        r = [b for t, b in self.rss if t0 <= t <= t1]
        out = {"peak_rss_gib": round(max(r) / 2**30, 2) if r else None}
        if len(g):
            per = {int(i): g[g[:, 0] == i] for i in np.unique(g[:, 0])}
            out |= {
                "gpu_busy_pct": round(float(g[:, 1].mean()), 1),  # mean over GPUs and samples
                "dec_busy_pct": round(float(g[:, 2].mean()), 1),
                "gpu_mem_max_gib": round(float(g[:, 3].max()) / 1024, 1),
            }
            if len(per) > 1:
                out["gpu_busy_pct_per_gpu"] = [
                    round(float(v[:, 1].mean()), 1) for _, v in sorted(per.items())
                ]
        return out


def visible_gpus() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def stage_metrics(root: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for p in sorted((root / "_metrics").glob("*.json")):
        m = json.loads(p.read_text())
        out[m["stage"]] = m  # the last run of a stage wins
    return out


def run_facts(root: Path) -> dict:
    import duckdb

    from manifests.db import connect

    con: duckdb.DuckDBPyConnection = connect(root)
    hours = con.sql("SELECT sum(duration_s) / 3600 FROM videos WHERE status = 'ok'").fetchall()[0][0] or 0.0
    clips = con.sql("SELECT count(*) FROM clips WHERE status = 'ok'").fetchall()[0][0]
    kept = con.sql("SELECT count(*) FROM decisions WHERE keep").fetchall()[0][0]
    lanes = dict(con.sql("SELECT coalesce(decode_lane, '?'), count(*) FROM scores GROUP BY ALL").fetchall())
    return {
        "input_hours": round(float(hours), 3),
        "clips": clips,
        "kept": kept,
        "keep_rate": round(kept / max(clips, 1), 3),
        "scores_by_decode_lane": lanes,
    }


def run(
    corpus: Path,
    decode: str,
    workdir: Path,
    out: str,
    budget_s: float,
    config: Path,
    extra: list[str],
    gpus: int,
) -> dict:
    """One `reelsift run`; `gpus` > 0 limits Ray to the first `gpus` GPUs (CUDA_VISIBLE_DEVICES)."""
    label = decode if not gpus else f"{decode}-{gpus}gpu"
    root = workdir / f"root-{label}"
    shutil.rmtree(root, ignore_errors=True)
    sets = [
        "score.aesthetic.random_init=true",
        "caption.transformers.model=reelsift-random:qwen2.5-vl-7b",
        f"score.decode_lane={decode}",
        f"caption.decode_lane={decode}",
        *OPEN_BOUNDS,
        *extra,
    ]
    cmd = [
        sys.executable,
        "-m",
        "curation.cli",
        "run",
        "--config",
        str(config),
        "--input",
        str(corpus),
        "--root",
        str(root),
    ]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)  # embedded Ray: the node's GPUs and cores
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(gpus)))
    marks = lambda line: line[3:].strip() if line.startswith("== ") else None  # noqa: E731
    with Timeline(list(range(gpus or visible_gpus()))) as tl:
        t_start = time.monotonic()
        cmd = ["timeout", str(int(budget_s)), *cmd]
        u = run_measured(cmd, env=env, mark=marks, linger_s=20.0)
    (workdir / f"run-{label}.log").write_text(u.output)
    bounds = [*u.marks, ("end", u.wall_s, u.cpu_s)]
    metrics = stage_metrics(root)
    stages = []
    for (name, t0, c0), (_, t1, c1) in zip(bounds, bounds[1:], strict=False):
        m = metrics.get(name if name != "refilter" else "", {})
        row = {
            "stage": name,
            "wall_s": round(t1 - t0, 2),
            "cpu_s": round(c1 - c0, 1),
            "items": m.get("items"),
            "items_per_s": m.get("items_per_s"),
            "stage_s": m.get("seconds"),
            "decode_lanes": m.get("decode_lanes"),
            **tl.window(t_start + t0, t_start + t1),
        }
        stages.append(row)
    facts = run_facts(root) if u.returncode == 0 else {}
    bound = max(stages, key=lambda r: r["wall_s"]) if stages else None
    result = {
        "decode": decode,
        "gpus": gpus or visible_gpus(),
        "returncode": u.returncode,
        "wall_s": round(u.wall_s, 1),
        "cpu_s": round(u.cpu_s, 1),
        "peak_rss_gib": round(u.peak_rss_bytes / 2**30, 2),
        "sets": sets,
        "stages": stages,
        **facts,
        "hours_per_node_hour": round(facts["input_hours"] / (u.wall_s / 3600), 2) if facts else None,
        "bound_stage": bound["stage"] if bound else None,
        "bound_stage_is_gpu": bool(bound and bound["stage"] in GPU_STAGES),
    }
    if u.returncode != 0:
        result["output_tail"] = u.output[-4000:]
    res = Result("gpu_node", out=out)
    if res.path.exists():
        res.data["runs"] = json.loads(res.path.read_text()).get("runs", {})
    res.data.setdefault("runs", {})[label] = result
    corpus_info = corpus / "corpus.json"
    if corpus_info.exists():
        res.data["corpus"] = json.loads(corpus_info.read_text())
    res.write()
    print(
        format_table(
            ["stage", "wall s", "items/s", "GPU %", "NVDEC %", "CPU s", "peak RSS GiB", "GPU GiB", "lanes"],
            [
                (
                    r["stage"],
                    r["wall_s"],
                    r["items_per_s"],
                    r.get("gpu_busy_pct"),
                    r.get("dec_busy_pct"),
                    r["cpu_s"],
                    r.get("peak_rss_gib"),
                    r.get("gpu_mem_max_gib"),
                    r.get("decode_lanes") or "",
                )
                for r in stages
            ],
        )
    )
    print(
        f"decode={decode}: rc {u.returncode}, {result['wall_s']} s, "
        f"{result.get('hours_per_node_hour')} h of video per node-hour, "
        f"keep rate {facts.get('keep_rate')}, bound by {result['bound_stage']}"
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--out", type=Path, default=REPO / "runs/gpu_node/corpus")
    c.add_argument("--hours", type=float, default=1.0)
    r = sub.add_parser("run")
    r.add_argument("--corpus", type=Path, default=REPO / "runs/gpu_node/corpus")
    r.add_argument("--decode", choices=["cpu", "auto", "nvdec"], required=True)
    r.add_argument("--work", type=Path, default=REPO / "runs/gpu_node")
    r.add_argument("--out", default="bench/results")
    r.add_argument("--budget-s", type=float, default=540.0)
    r.add_argument("--config", type=Path, default=REPO / "configs/default.yaml")
    r.add_argument("--gpus", type=int, default=0, help="use the first N GPUs (0: all); for scaling runs")
    r.add_argument("--set", dest="extra", action="append", default=[], help="more overrides (CPU check runs)")
    args = ap.parse_args()
    if args.cmd == "corpus":
        make_corpus(args.out, args.hours)
    else:
        run(args.corpus, args.decode, args.work, args.out, args.budget_s, args.config, args.extra, args.gpus)


if __name__ == "__main__":
    main()
