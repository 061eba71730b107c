"""What the hard time limit costs at normal speed: score's sampled-frame decode of every clip of
the e2e corpus, in-process vs through curation/guard.py's child process (CPU of both processes).

    python bench/guard_cost.py     # needs the corpus and clips of a bench/e2e_cpu.py result
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import Result  # noqa: E402
from curation.config import load_config  # noqa: E402
from curation.guard import Guard  # noqa: E402
from curation.stages.score import decode_run, runs_of_one_video  # noqa: E402
from filters.video import DecodeSpec, probe  # noqa: E402


def cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    cfg = load_config(ROOT / "configs" / "offline.yaml").score
    result = json.loads((ROOT / "bench/results/e2e_cpu_before.json").read_text())
    corpus = Path("/tmp/reelsift_e2e_corpus")
    clips, facts = [], {}
    for c in result["outputs"]["clips"]:
        if c["status"] != "ok":
            continue
        path = str(corpus / c["file"])
        p = facts.setdefault(path, probe(path))
        w, h = p.display_size
        clips.append(
            dict(
                path=path,
                start_frame=c["start_frame"],
                end_frame=c["end_frame"],
                fps=p.fps,
                rotation=p.rotation,
                display_width=w,
                display_height=h,
            )
        )
    runs = [
        [clips[k] for k in run[i : i + 8]] for run in runs_of_one_video(clips) for i in range(0, len(run), 8)
    ]
    t = cpu()
    for run in runs:
        decode_run(run, DecodeSpec.of(cfg))
    direct = cpu() - t
    t, w = cpu(), time.monotonic()
    guard = Guard()
    for run in runs:
        guard.call(decode_run, (run, cfg), 600)
    guard.close()
    guarded = cpu() - t
    res = Result("guard_cost", suffix="cpu")
    res.add("clips", len(clips))
    res.add("calls", len(runs))
    res.add("direct_cpu_s", round(direct, 2))
    res.add("guarded_cpu_s", round(guarded, 2))
    res.add("overhead_cpu_s", round(guarded - direct, 2))
    res.table(
        ["clips", "calls", "in-process CPU s", "guarded CPU s (both processes)", "overhead CPU s"],
        [(len(clips), len(runs), direct, guarded, guarded - direct)],
    )
    res.write()


if __name__ == "__main__":
    main()
