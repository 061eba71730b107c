"""The whole pipeline with its inputs and run root on a real S3 server (SeaweedFS on loopback):
ingest -> ... -> shard -> verify -> sql/status/compact -> a training step reading the shards by
URL; no credential in anything written. tests/test_s3_faults.py (slow) checks that S3 runs give
the keys of the same corpus on local disk, after SIGKILLs and server faults, plus report and
cache-latents on S3."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from manifests import commit, fs
from manifests.store import Table
from tests.media import make_video
from tests.s3server import ACCESS_KEY, BUCKET, SECRET_KEY

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs/offline.yaml")


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "curation.cli", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-3000:])
    return out


def keys(root) -> dict[str, list]:
    """Sorted keys of each table; videos by file name (the path differs between disk and S3)."""
    read = lambda name, col: sorted(Table(root, name).read([col]).column(col).to_pylist())  # noqa: E731
    return {
        "videos": sorted(Path(p).name for p in read("videos", "path")),
        "clips": read("clips", "clip_id"),
        "scores": read("scores", "clip_id"),
        "shards": read("shards", "clip_id"),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, s3_server):
    """Two short videos with one cut each, on disk and uploaded under an S3 prefix."""
    local = tmp_path_factory.mktemp("s3_corpus")
    for i in range(2):
        make_video(local / f"moving_{i}.mp4", n_frames=96, size=(320, 256), fps=24, kind="cuts",
                   cuts=(48,), seed=i)
    prefix = fs.upath(f"s3://{BUCKET}/e2e-{uuid.uuid4().hex[:8]}")
    for f in sorted(local.iterdir()):
        (prefix / "videos" / f.name).write_bytes(f.read_bytes())
    return local, prefix


def test_pipeline_on_s3_then_training_reads_shards_by_url(corpus, tmp_path):
    _, prefix = corpus
    root = prefix / "runs" / "fast"
    runs = [cli("run", "--config", CONFIG, "--input", f"{prefix}/videos/", "--root", str(root))]
    got = keys(root)
    assert got["videos"] == ["moving_0.mp4", "moving_1.mp4"] and got["shards"], got
    assert got["shards"] == got["scores"] == got["clips"]  # every clip of this corpus is kept
    paths = Table(root, "videos").read(["path"])["path"].to_pylist()
    assert all(p.startswith(f"{prefix}/videos/") for p in paths), paths

    runs.append(cli("verify", "--root", str(root)))
    assert f"verified {len(got['shards'])} samples: OK" in runs[-1].stdout
    runs.append(cli("sql", "--root", str(root), "--format", "json",
                    "SELECT count(*) AS n FROM shards WHERE status = 'ok'"))
    assert json.loads(runs[-1].stdout) == [{"n": len(got["shards"])}]
    runs.append(cli("status", "--root", str(root)))
    assert "shard" in runs[-1].stdout
    runs.append(cli("compact", "--root", str(root)))  # the manifest commit is one PUT on S3
    assert keys(root) == got and len(Table(root, "clips").parts()) == 1

    # every visible object was committed; nothing half-written or orphaned is left
    for name in ("videos", "clips", "scores", "decisions", "shards"):
        assert commit.remove_uncommitted(root / name, "part-*.parquet") == 0
    tars = commit.committed_glob(root / "shards", "*/*.tar")
    assert tars and commit.remove_uncommitted(root / "shards", "*/*.tar") == 0
    assert not (REPO / "s3:").exists(), "an s3:// URL was taken for a local path"

    # a few training steps reading the shards by URL (checkpoints stay local)
    runs.append(cli("train", "--config", CONFIG, "--root", str(root), "--steps", "1",
                    "--out", str(tmp_path / "ckpt"), "--no-progress", timeout=600))
    result = json.loads(runs[-1].stdout.strip().splitlines()[-1])
    assert result["step"] == 1 and result["first_loss"] is not None
    assert_no_secret(root, runs, tmp_path)


def assert_no_secret(root, runs: list[subprocess.CompletedProcess], local: Path | None = None) -> None:
    """The planted secret is in no object under the run root, no output, no local file."""
    leaks = [str(o) for o in root.list_files() if SECRET_KEY.encode() in o.read_bytes()]
    leaks += [" ".join(r.args[3:5]) for r in runs if SECRET_KEY in r.stdout + r.stderr]
    files = local.rglob("*") if local else []
    leaks += [str(p) for p in files if p.is_file() and SECRET_KEY.encode() in p.read_bytes()]
    assert leaks == []
    assert not any(ACCESS_KEY.encode() in o.read_bytes() for o in (root / "_metrics").list_files())


def test_bad_bucket_and_credentials_fail_early_with_what_to_fix(s3_server, tmp_path):
    import os

    out = subprocess.run([sys.executable, "-m", "curation.cli", "status", "--root", "s3://no-such-bucket/r"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "bucket 'no-such-bucket' does not exist" in out.stderr
    planted = "planted-wrong-" + uuid.uuid4().hex
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": planted}
    cmd = [sys.executable, "-m", "curation.cli", "sql", "--root", f"s3://{BUCKET}/r", "SELECT 1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert "error (storage)" in out.stderr and "AWS_SECRET_ACCESS_KEY" in out.stderr
    assert planted not in out.stderr + out.stdout
