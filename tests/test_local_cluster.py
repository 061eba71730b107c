"""`reelsift cluster start|stop`: one local Ray that several CLI commands join through
RAY_ADDRESS=auto, started and stopped as a unit, without touching any other Ray on the machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.procs import REPO, cli_command, pids_matching


def _metrics(root: Path) -> dict:
    (path,) = (root / "_metrics").glob("ingest-*.json")
    return json.loads(path.read_text())


def test_commands_join_one_local_ray_that_stops_as_a_unit(tmp_path, demo_corpus, ray_local):
    # ray_local: the test session's own embedded Ray runs meanwhile and must survive the stop
    own_gcs = pids_matching(b"gcs_server")
    assert own_gcs
    tmp = Path("/tmp") / f"rsl{os.getpid()}"  # short: Ray's socket paths have a length limit
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TMPDIR=str(tmp), PYTHONPATH=str(REPO))
    videos = tmp_path / "in"
    videos.mkdir()
    shutil.copy(demo_corpus.root / "cuts_three_scenes.mp4", videos)
    sets = ["--set", "ray.num_cpus=2", "--set", "ray.object_store_mb=256"]

    def cli(*args, joined=True):
        e = {**env, "RAY_ADDRESS": "auto"} if joined else env
        return subprocess.run(args, env=e, capture_output=True, text=True, timeout=180)

    state = tmp / f"reelsift-ray-{os.getuid()}"
    try:
        up = cli(*cli_command("cluster", "start", *sets))
        assert up.returncode == 0, up.stderr
        owner = int((state / "head.pid").read_text())
        assert f"pid {owner}" in up.stdout and "RAY_ADDRESS=auto" in up.stdout
        ours = set(pids_matching(str(tmp).encode(), b"gcs_server"))
        assert len(ours) == 1, "one GCS under this test's temp dir"

        again = cli(*cli_command("cluster", "start", *sets))
        assert again.returncode == 2 and f"already runs (pid {owner})" in again.stderr

        nodes = []
        for i in range(2):
            root = tmp_path / f"root{i}"
            # inline_max_items=0: one video would otherwise run without Ray
            ingest = cli_command("ingest", "--input", str(videos), "--root", str(root), *sets)
            r = cli(*ingest, "--set", "ray.inline_max_items=0", joined=True)
            assert r.returncode == 0, r.stderr
            m = _metrics(root)
            assert m["inline"] is False and m["counts"] == {"ok": 1}
            nodes.append(set(m["nodes"]))
            assert set(pids_matching(str(tmp).encode(), b"gcs_server")) == ours, "joined, started none"
        assert nodes[0] == nodes[1] and len(nodes[0]) == 1, "both commands ran on the same node"
    finally:
        down = cli(*cli_command("cluster", "stop"))
    assert down.returncode == 0 and f"stopped the local Ray (pid {owner})" in down.stdout
    assert not pids_matching(str(tmp).encode()), "every process of that Ray is gone"
    assert not (state / "head.pid").exists()
    assert set(own_gcs) <= set(pids_matching(b"gcs_server")), "the session's own Ray still runs"
    again = cli(*cli_command("cluster", "stop"))
    assert again.returncode == 0 and "no local Ray" in again.stdout
    shutil.rmtree(tmp, ignore_errors=True)
