"""Several nodes, one bucket: `reelsift run` on a 2-node Ray cluster on loopback (separate Ray temp
dirs and TMPDIRs, nothing shared but S3) with the inputs and the run root in SeaweedFS, against a
one-node run of the same corpus on local disk; then the same run with the worker node's raylet
SIGKILLed in the middle of score.

    python bench/cluster_s3.py [--videos 6]

Reports wall time, the nodes in `_metrics`, `verify`, and whether each table's keys equal the
one-node run's (no duplicate). Needs the `weed` binary of the dev extra. Writes
bench/results/cluster_s3.json.
"""

from __future__ import annotations

import argparse
import json
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
from tests.raycluster import TwoNodes  # noqa: E402
from tests.s3server import BUCKET, S3Server  # noqa: E402

SETS = ["split.resources.batch_size=1", "ingest.resources.batch_size=1", "score.cpu.batch_size=1",
        "ray.flush_rows=1", "ray.progress=false"]


def command(inputs: str, root: str, verb: str = "run") -> list[str]:
    cmd = [sys.executable, "-m", "curation.cli", verb, "--root", root]
    if verb == "run":
        cmd += ["--config", str(REPO / "configs/offline.yaml"), "--input", inputs]
        for s in SETS:
            cmd += ["--set", s]
    return cmd


def keys(root) -> dict[str, list]:
    """As tests/test_cluster_s3.py: every table's keys, decisions those of the newest filter run."""
    from manifests.db import connect
    from manifests.store import Table

    read = lambda name, col: sorted(Table(root, name).read([col]).column(col).to_pylist())  # noqa: E731
    newest = sorted(r[0] for r in connect(root).sql("SELECT clip_id FROM decisions").fetchall())
    return {"videos": sorted(Path(p).name for p in read("videos", "path")),
            **{t: read(t, "clip_id") for t in ("clips", "scores", "shards")}, "decisions": newest}


def nodes(root) -> int:
    from manifests import fs

    found: set[str] = set()
    for f in fs.upath(f"{root}/_metrics").list_files():
        found |= set(json.loads(f.read_text())["nodes"])
    return len(found)


def cluster_run(inputs: str, root: str, env: dict, cluster: TwoNodes | None) -> dict:
    """One `reelsift run` on the cluster; with `cluster`, its worker raylet is killed once score
    has written a part, and the run is re-run if it gave up. `stages_replanned`: the stages that
    noticed the lost node and ran again on the head (curation/nodewatch.py)."""
    from manifests.store import Table

    t0 = time.monotonic()
    proc = subprocess.Popen(command(inputs, root), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    killed = 0
    if cluster is not None:
        while proc.poll() is None and not Table(root, "scores").parts():
            time.sleep(0.2)
        killed = cluster.kill_worker_raylet()
    _, err = proc.communicate()
    reruns = 0
    if proc.returncode != 0:
        reruns = 1
        subprocess.run(command(inputs, root), cwd=REPO, env=env, check=True, capture_output=True)
    wall = time.monotonic() - t0
    verify = subprocess.run(command(inputs, root, "verify"), cwd=REPO, env=env, capture_output=True)
    replanned = [line.split("reelsift: ", 1)[-1].split(":", 1)[0] for line in err.splitlines()
                 if "on the nodes left" in line]  # stages that ran again after the node loss
    return dict(wall_s=round(wall, 2), first_rc=proc.returncode, reruns=reruns, raylets_killed=killed,
                stages_replanned=replanned, nodes_in_metrics=nodes(root), verify_rc=verify.returncode)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = S3Server(tmp / "weed")
        server.start()
        cluster = None
        try:
            os.environ.update(server.env())
            os.environ["PYTHONPATH"] = str(REPO)
            server.create_bucket(BUCKET)
            from manifests import fs

            corpus = tmp / "videos"
            for i in range(args.videos):
                make_video(corpus / f"v{i}.mp4", n_frames=96, size=(320, 256), fps=24, kind="cuts",
                           cuts=(48,), seed=i)
            prefix = fs.upath(f"s3://{BUCKET}/bench-{uuid.uuid4().hex[:8]}")
            for f in sorted(corpus.iterdir()):
                (prefix / "in" / f.name).write_bytes(f.read_bytes())
            one_node = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
            t0 = time.monotonic()
            subprocess.run(command(str(corpus), str(tmp / "ref")), cwd=REPO, env=one_node, check=True,
                           capture_output=True)
            ref_wall, ref = time.monotonic() - t0, keys(tmp / "ref")
            print(f"one node: {ref_wall:.1f} s", file=sys.stderr, flush=True)
            cluster = TwoNodes(f"b{os.getpid()}", dict(os.environ))
            env = dict(cluster.env, RAY_ADDRESS=cluster.start())
            rows = [dict(run="one node, local disk", wall_s=round(ref_wall, 2), nodes_in_metrics=1,
                         same_keys_as_one_node=True)]
            runs = (("2 nodes, S3", None), ("2 nodes, S3, worker raylet SIGKILLed mid-score", cluster))
            for name, kill in runs:
                print(f"{name} ...", file=sys.stderr, flush=True)
                root = f"{prefix}/root-{len(rows)}"
                row = cluster_run(f"{prefix}/in/", root, env, kill)
                rows.append(dict(run=name, **row, same_keys_as_one_node=keys(fs.upath(root)) == ref))
        finally:
            if cluster is not None:
                cluster.stop()
            server.stop()
    res = Result("cluster_s3", out=args.out, suffix="")
    res.add("what", "reelsift run (offline.yaml): one node on local disk vs 2 Ray nodes (1 CPU each) "
                    "with inputs and run root on S3 (SeaweedFS on loopback)")
    res.add("corpus", dict(videos=args.videos, frames=96, size="320x256", clips=len(ref["clips"])))
    res.add("load_avg_1m", os.getloadavg()[0])
    res.add("rows", rows)
    cols = ["run", "wall_s", "first_rc", "reruns", "stages_replanned", "nodes_in_metrics", "verify_rc",
            "same_keys_as_one_node"]
    res.table(cols, ([r.get(c, "") for c in cols] for r in rows), title="multi-node S3 run")
    res.write()


if __name__ == "__main__":
    main()
