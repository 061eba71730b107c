"""A run killed with SIGKILL mid-split and mid-shard, re-run with the same command, ends with
the same keys as an uninterrupted run: no duplicates, no losses, no half-written part or tar."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from curation.verify import verify
from manifests.db import query
from manifests.store import Table
from tests import procs
from tests.media import make_video
from tests.procs import run_command

REPO = Path(__file__).resolve().parent.parent
# small parts and one clip per shard task, so a kill lands between many small commits
SETS = [
    "ray.flush_rows=1",
    "ray.flush_s=0.01",
    "split.resources.batch_size=1",
    "shard.clips_per_task=1",
    "score.cpu.batch_size=1",
    "ray.progress=false",
]


def command(inputs: Path, root: Path) -> list[str]:
    return run_command(inputs, root, SETS)


def run_to_end(inputs: Path, root: Path) -> None:
    out = subprocess.run(command(inputs, root), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def run_and_kill(inputs: Path, root: Path, ready) -> bool:
    """Start a run and SIGKILL its whole process group once `ready(root)`; True if killed."""
    return procs.run_and_kill(command(inputs, root), lambda: ready(root))


def keys(root: Path) -> dict[str, list]:
    return {
        "videos": sorted(Table(root, "videos").read(["path"]).column("path").to_pylist()),
        "clips": sorted(Table(root, "clips").read(["clip_id"]).column("clip_id").to_pylist()),
        "scores": sorted(Table(root, "scores").read(["clip_id"]).column("clip_id").to_pylist()),
        "shards": sorted(Table(root, "shards").read(["clip_id"]).column("clip_id").to_pylist()),
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("resume_inputs")
    for i in range(4):
        make_video(
            d / f"moving_{i}.mp4", n_frames=96, size=(320, 256), fps=24, kind="cuts", cuts=(48,), seed=i
        )
    return d


def test_sigkill_mid_split_and_mid_shard_then_rerun(inputs, tmp_path):
    reference = tmp_path / "reference"
    run_to_end(inputs, reference)
    expected = keys(reference)
    assert expected["shards"], "the reference run must shard something"

    root = tmp_path / "killed"
    mid_split = lambda r: len(Table(r, "clips").parts()) >= 1
    assert run_and_kill(inputs, root, mid_split), "the run ended before split started"
    assert 0 < len(set(keys(root)["clips"])) < len(set(expected["clips"])) or not keys(root)["shards"]

    mid_shard = lambda r: any((r / "shards").glob("*/*.tar"))
    assert run_and_kill(inputs, root, mid_shard), "the run ended before shard started"

    run_to_end(inputs, root)
    got = keys(root)
    for name, want in expected.items():
        assert got[name] == want, name  # sorted lists: equal keys and no duplicates
    assert not list(root.rglob(".tmp-*")), "temp files left behind"
    checked, problems = verify(root)
    assert problems == [] and checked == len(expected["shards"])
    dup = query(root, "SELECT clip_id, count(*) n FROM shards GROUP BY 1 HAVING n > 1").num_rows
    assert dup == 0


def all_parts_readable(root: Path) -> None:
    import pyarrow.parquet as pq

    for part in root.glob("*/part-*.parquet"):
        pq.read_metadata(part)  # raises on a partial file


@pytest.mark.slow
def test_random_sigkills_in_every_stage_then_rerun(inputs, tmp_path):
    """Kill the run at random moments, again and again (bounded in time), then finish it."""
    import random

    reference = tmp_path / "reference"
    t0 = time.monotonic()
    run_to_end(inputs, reference)
    full = time.monotonic() - t0
    expected = keys(reference)
    root = tmp_path / "killed"
    rng = random.Random(7)
    kills, deadline = 0, time.monotonic() + 8 * 60
    while time.monotonic() < deadline:
        delay = rng.uniform(2.0, full)
        start = time.monotonic()
        if not run_and_kill(inputs, root, lambda r, s=start, d=delay: time.monotonic() - s > d):
            break  # the run finished before the kill: done
        kills += 1
        all_parts_readable(root)
    run_to_end(inputs, root)
    assert kills >= 3
    assert keys(root) == expected
    all_parts_readable(root)
    checked, problems = verify(root)
    assert problems == [] and checked == len(expected["shards"])
