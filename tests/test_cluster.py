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
from tests.procs import pids_matching, run_command

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_cluster(temp_dir: Path) -> None:
    """Stop only this test's Ray processes (never `ray stop`, which kills every Ray here)."""
    for pid in pids_matching(str(temp_dir).encode()):
        try:
            os.kill(pid, signal.SIGKILL)
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
    sets = [
        "split.resources.batch_size=1",
        "ingest.resources.batch_size=1",
        "score.cpu.batch_size=1",
        "ray.progress=false",
    ]
    cmd = run_command(inputs, root, sets)
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


def _kill_worker_node() -> int:
    """SIGKILL the raylet of the node started with the `reelsift_worker` resource."""
    pids = [
        p
        for p in pids_matching(b"raylet", b"reelsift_worker")
        if b"ray start" not in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def test_a_node_dying_mid_stage_costs_retries_not_keys(cluster, tmp_path):
    """Kill the second node's raylet while split runs; the run (re-run if it must) ends with the
    keys of a local reference run, without duplicates."""
    address, cluster_env = cluster
    inputs = tmp_path / "in"
    for i in range(6):
        make_video(inputs / f"v{i}.mp4", n_frames=96, size=(320, 256), kind="cuts", cuts=(48,), seed=i)
    sets = ["split.resources.batch_size=1", "ray.flush_rows=1", "ray.progress=false"]
    local_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ref = subprocess.run(
        run_command(inputs, tmp_path / "ref", sets),
        cwd=REPO,
        env=local_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]

    root = tmp_path / "root"
    env = dict(cluster_env, RAY_ADDRESS=address)
    proc = subprocess.Popen(
        run_command(inputs, root, sets),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not list((root / "clips").glob("part-*")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before split wrote anything"
    assert _kill_worker_node() == 1
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    print(f"run after node death: exit code {proc.returncode}")
    if proc.returncode != 0:  # the stage may give up when its node vanished: re-run finishes it
        again = subprocess.run(
            run_command(inputs, root, sets),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert again.returncode == 0, again.stderr[-2000:]

    def keys(r, table, col):
        return query(r, f"SELECT {col} FROM {table} ORDER BY 1").column(col).to_pylist()

    for table, col in (
        ("videos", "path"),
        ("clips", "clip_id"),
        ("scores", "clip_id"),
        ("shards", "clip_id"),
    ):
        got, want = keys(root, table, col), keys(tmp_path / "ref", table, col)
        assert got == want, table  # same keys, and no duplicates (lists, not sets)
