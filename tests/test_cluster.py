"""A real 2-node Ray cluster on loopback: `ray start --head` plus a second `ray start
--address=...` with its own resources and a custom label resource. The pipeline joins it through
RAY_ADDRESS, and the stage metrics show that work ran on both nodes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manifests.db import query
from tests.media import make_video

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_cluster(temp_dir: Path) -> None:
    """Stop only this test's Ray processes (never `ray stop`, which kills every Ray here)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(temp_dir).encode() in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def cluster(tmp_path):
    temp_dir = Path("/tmp") / f"rs{os.getpid()}"  # short: Ray's socket paths have a length limit
    port = _free_port()
    # Ray's token authentication, with a token of this test's own shared by every process
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    head = [
        RAY,
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        "--object-store-memory=200000000",
    ]
    worker = [
        RAY,
        "start",
        f"--address=127.0.0.1:{port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        '--resources={"reelsift_worker": 1}',
        "--disable-usage-stats",
        "--object-store-memory=200000000",
    ]
    try:
        for cmd in (head, worker):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        yield f"127.0.0.1:{port}", env
    finally:
        _kill_cluster(temp_dir)


def test_pipeline_runs_on_both_nodes_of_a_cluster(cluster, tmp_path):
    address, cluster_env = cluster
    inputs = tmp_path / "in"
    for i in range(4):
        make_video(inputs / f"v{i}.mp4", n_frames=96, size=(320, 256), kind="cuts", cuts=(48,), seed=i)
    root = tmp_path / "root"
    env = dict(cluster_env, RAY_ADDRESS=address)
    cmd = [
        sys.executable,
        "-m",
        "curation.cli",
        "run",
        "--config",
        "configs/offline.yaml",
        "--input",
        str(inputs),
        "--root",
        str(root),
        "--set",
        "split.resources.batch_size=1",
        "--set",
        "ingest.resources.batch_size=1",
        "--set",
        "score.cpu.batch_size=1",
        "--set",
        "ray.progress=false",
    ]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    nodes = set()
    for f in (root / "_metrics").glob("*.json"):
        nodes |= set(json.loads(f.read_text())["nodes"])
    assert len(nodes) == 2, (nodes, time.monotonic() - t0)
    n = query(root, "SELECT count(*) AS n FROM clips").column("n")[0].as_py()
    dup = query(root, "SELECT count(*) - count(DISTINCT clip_id) AS d FROM clips").column("d")[0].as_py()
    assert n >= 8 and dup == 0
