"""Several nodes, one bucket: a real 2-node Ray cluster on loopback whose nodes share no path
(each its own Ray temp dir and TMPDIR), with the inputs and the run root on S3 (SeaweedFS).
`reelsift run` over them uses both nodes and `verify` passes; a SIGKILL of the worker node's
raylet in the middle of score ends, re-run if it must, with the keys of a one-node local run and
no duplicate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from manifests import fs
from manifests.db import connect
from manifests.store import Table
from tests.media import make_video
from tests.procs import run_command
from tests.raycluster import TwoNodes
from tests.s3server import BUCKET

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
SETS = ["split.resources.batch_size=1", "ingest.resources.batch_size=1", "score.cpu.batch_size=1",
        "ray.flush_rows=1", "ray.progress=false"]


@pytest.fixture
def s3_cluster(s3_server):
    """(address, env) of a head and a worker node with separate temp dirs; the AWS variables of
    the S3 server are in the environment of both, as a cloud cluster's instance role would be."""
    nodes = TwoNodes(str(os.getpid()), dict(os.environ))
    try:
        yield nodes.start(), nodes
    finally:
        nodes.stop()


def keys(root) -> dict[str, list]:
    """Each table's keys as a sorted list (a duplicate shows); videos by file name. Decisions
    are those of the newest filter run (the `decisions` view): every `run` decides all clips
    again, twice (before and after align), so a re-run adds whole runs to the table's history."""
    read = lambda name, col: sorted(Table(root, name).read([col]).column(col).to_pylist())  # noqa: E731
    newest = sorted(r[0] for r in connect(root).sql("SELECT clip_id FROM decisions").fetchall())
    return {"videos": sorted(Path(p).name for p in read("videos", "path")),
            **{t: read(t, "clip_id") for t in ("clips", "scores", "shards")}, "decisions": newest}


def nodes_in_metrics(root) -> set[str]:
    found: set[str] = set()
    for f in fs.upath(root / "_metrics").list_files():
        found |= set(json.loads(f.read_text())["nodes"])
    return found


def test_two_nodes_one_bucket_survive_a_node_death_mid_score(s3_cluster, tmp_path):
    address, nodes = s3_cluster
    cluster_env = nodes.env
    local = tmp_path / "in"
    for i in range(6):
        make_video(local / f"v{i}.mp4", n_frames=96, size=(320, 256), kind="cuts", cuts=(48,), seed=i)
    prefix = fs.upath(f"s3://{BUCKET}/cluster-{uuid.uuid4().hex[:8]}")
    for f in sorted(local.iterdir()):
        (prefix / "in" / f.name).write_bytes(f.read_bytes())
    one_node = {k: v for k, v in cluster_env.items() if not k.startswith("RAY_")}
    ref = subprocess.run(run_command(local, tmp_path / "ref", SETS), cwd=REPO, env=one_node,
                         capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]

    root = prefix / "root"
    env = dict(cluster_env, RAY_ADDRESS=address)
    cmd = run_command(f"{prefix}/in/", root, SETS)  # type: ignore[arg-type]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and not Table(root, "scores").parts():
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before score wrote anything: " + proc.stderr.read()[-2000:]
    ingest_split_nodes = nodes_in_metrics(root)
    assert nodes.kill_worker_raylet() == 1
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    replans = [line for line in proc.stderr.read().splitlines() if "on the nodes left" in line]
    print(f"run after node death: exit code {proc.returncode}; stages planned again: {replans}")
    if proc.returncode != 0:  # the stage may give up when its node vanished: re-run finishes it
        again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]

    assert len(ingest_split_nodes) == 2, ingest_split_nodes  # work ran on both nodes
    assert keys(root) == keys(tmp_path / "ref")  # same keys, none twice
    verify = subprocess.run([sys.executable, "-m", "curation.cli", "verify", "--root", str(root)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
