"""Resume and faults with the run root on S3 (SeaweedFS on loopback):
- SIGKILL mid-split and mid-shard (Ray workers reading and writing S3), re-run: the keys of an
  uninterrupted run, no duplicate, and the orphans of the killed run are gone;
- a fault proxy fails and stalls requests: the client retries them; an input that cannot be read
  after the retries becomes an error row; a re-run takes it again and finishes with nothing lost
  and no duplicate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from curation.verify import verify
from manifests import commit, fs
from manifests.db import query
from manifests.store import Table
from tests.media import make_video
from tests.procs import run_and_kill
from tests.s3faults import FaultProxy
from tests.s3server import BUCKET
from tests.test_resume import SETS
from tests.test_s3_e2e import assert_no_secret, cli

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/offline.yaml")
TABLES = ("videos", "clips", "scores", "decisions", "shards")


def run_cmd(inputs: str, root: str, sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "curation.cli", "run", "--config", CONFIG, "--input", inputs, "--root", root]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def run_to_end(inputs: str, root: str, sets: list[str], env: dict | None = None) -> None:
    out = subprocess.run(run_cmd(inputs, root, sets), cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]


def ok_keys(root) -> dict[str, list]:
    """Sorted keys of the ok/rejected rows of each table (videos by file name)."""
    def read(name, col):
        t = Table(root, name).read([col, "status"]).to_pylist()
        return sorted(r[col] for r in t if r["status"] != "error")

    return {
        "videos": sorted(Path(p).name for p in read("videos", "path")),
        "clips": read("clips", "clip_id"),
        "scores": read("scores", "clip_id"),
        "shards": read("shards", "clip_id"),
    }


def no_duplicates(root) -> None:
    for table, key in (("clips", "clip_id"), ("scores", "clip_id"), ("shards", "clip_id")):
        dup = query(root, f"SELECT {key} FROM {table} WHERE status <> 'error' GROUP BY 1 HAVING count(*) > 1")
        assert dup.num_rows == 0, table
    twice = query(root, "SELECT path FROM videos WHERE status = 'ok' GROUP BY 1 HAVING count(*) > 1")
    assert twice.num_rows == 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, s3_server):
    local = tmp_path_factory.mktemp("s3_fault_corpus")
    for i in range(2):
        make_video(local / f"moving_{i}.mp4", n_frames=96, size=(320, 256), fps=24, kind="cuts",
                   cuts=(48,), seed=i)
    prefix = fs.upath(f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:8]}")
    for f in sorted(local.iterdir()):
        (prefix / "videos" / f.name).write_bytes(f.read_bytes())
    return local, prefix


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """Keys of an uninterrupted run of the same corpus on local disk (the keys are content hashes,
    so disk and S3 give the same ones: tests/test_s3_e2e.py checks that)."""
    local, _ = corpus
    root = tmp_path_factory.mktemp("s3_fault_ref") / "root"
    run_to_end(str(local), str(root), ["ray.progress=false"])
    keys = ok_keys(root)
    assert keys["shards"]
    return keys


@pytest.mark.slow
def test_sigkill_on_s3_mid_split_and_mid_shard_then_rerun(corpus, reference):
    _, prefix = corpus
    root = prefix / "runs" / "killed"
    sets = [*SETS, "ray.inline_max_items=0"]  # through Ray: the workers read and write S3
    cmd = run_cmd(f"{prefix}/videos/", str(root), sets)
    split_started = lambda: len(Table(root, "clips").parts()) >= 1  # noqa: E731
    assert run_and_kill(cmd, split_started, poll_s=0.05), "the run ended before split"
    shard_started = lambda: bool(commit.committed_glob(root / "shards", "*/*.tar"))  # noqa: E731
    assert run_and_kill(cmd, shard_started, poll_s=0.05), "the run ended before shard"
    # what a writer killed between its upload and its commit marker leaves: never read, removed
    orphan_part = root / "clips" / "part-00000000000000000001-0rphan00.parquet"
    orphan_tar = root / "shards" / "256p" / "0rphan0000000000-000.tar"
    orphan_part.write_bytes(b"PAR1 half a part")
    orphan_tar.write_bytes(b"half a tar")
    assert orphan_part not in Table(root, "clips").parts()

    run_to_end(f"{prefix}/videos/", str(root), sets)
    assert ok_keys(root) == reference
    no_duplicates(root)
    assert not orphan_part.exists() and not orphan_tar.exists()
    for name in TABLES:
        assert commit.remove_uncommitted(root / name, "part-*.parquet") == 0, name
    assert commit.remove_uncommitted(root / "shards", "*/*.tar") == 0
    checked, problems = verify(root)
    assert problems == [] and checked == len(reference["shards"])

    # report and latents on the S3 root too
    runs = [cli("report", "--config", CONFIG, "--root", str(root), "--max-thumbs", "2"),
            cli("cache-latents", "--config", CONFIG, "--root", str(root))]
    page = (root / "report" / "index.html").read_text()
    assert "reelsift report" in page and (root / "report" / "thumbs").list_files()
    assert json.loads(runs[-1].stdout.strip().splitlines()[-1])["written"] == len(reference["shards"])
    latents = commit.committed_glob(root / "latents", "*/*.tar")
    assert [t.name for t in latents] == [t.name for t in commit.committed_glob(root / "shards", "*/*.tar")]
    assert_no_secret(root, runs)


@pytest.mark.slow
def test_failing_and_stalling_server_then_rerun_loses_nothing(corpus, reference, s3_server):
    _, prefix = corpus
    root = prefix / "runs" / "faults"
    proxy = FaultProxy(s3_server.ports["s3"])
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "PYTHONPATH": str(REPO)}
    try:
        proxy.fail_every = 7  # 503 SlowDown on every 7th request: retried by the client
        proxy.fail_paths = ("/videos/moving_1.mp4",)  # this input can't be read at all
        proxy.stall_paths = ("/videos/moving_0.mp4",)  # held, then dropped: a timed-out request
        proxy.stall_once, proxy.stall_s = True, 2.0
        run_to_end(f"{prefix}/videos/", str(root), ["ray.progress=false"], env=env)
        assert proxy.counts["fail"] > 10 and proxy.counts["stall"] >= 1, proxy.counts
        videos = Table(root, "videos").read(["path", "status", "error"]).to_pylist()
        bad = [v for v in videos if v["status"] == "error"]
        assert [Path(v["path"]).name for v in bad] == ["moving_1.mp4"], videos
        assert fs.is_retryable(bad[0]["error"]) and f"{prefix}/videos/moving_1.mp4" in bad[0]["error"]
        assert "Hint:" in bad[0]["error"]
        got = ok_keys(root)
        assert got["videos"] == ["moving_0.mp4"]
        assert set(got["shards"]) < set(reference["shards"])

        proxy.heal()
        run_to_end(f"{prefix}/videos/", str(root), ["ray.progress=false"], env=env)
    finally:
        proxy.close()
    assert ok_keys(root) == reference  # nothing lost
    no_duplicates(root)
    checked, problems = verify(root)
    assert problems == [] and checked == len(reference["shards"])
