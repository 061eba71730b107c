"""Commands started together on one run root, on local disk and on S3 (SeaweedFS): each table
has one writer at a time (manifests/lease.py), so every key ends up exactly once. Before leases,
two `ingest` over the demo corpus wrote 20 `videos` rows for 10 paths and two `split` 32 `clips`
rows for 16 clip ids."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from manifests import fs, lease
from manifests.store import Table
from tests.media import make_video
from tests.procs import cli_command
from tests.s3server import BUCKET

REPO = Path(__file__).resolve().parent.parent
WAIT = ["--lock-wait", "300"]


def start(command: str, root, *args: str) -> subprocess.Popen:
    return subprocess.Popen(cli_command(command, "--root", str(root), *args, *WAIT), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*procs: subprocess.Popen) -> None:
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, (p.args, out[-2000:], err[-3000:])


def together(command: str, root, *args: str) -> None:
    """The same command twice, started at once."""
    finish(start(command, root, *args), start(command, root, *args))


def once_each(root, table: str, column: str) -> list:
    """The table's `column` values, asserting each appears exactly once."""
    values = Table(root, table).read([column]).column(column).to_pylist()
    twice = [v for v, n in Counter(values).items() if n > 1]
    assert not twice, f"{table}: {len(twice)} {column}(s) written more than once"
    return values


@pytest.fixture(params=["disk", pytest.param("s3", marks=pytest.mark.slow)])  # S3: 20-40 s each
def where(request, tmp_path):
    """(folder of input folders, run root) on local disk or on S3."""
    local = tmp_path / "in"
    for folder, n in (("a", 3), ("b", 2), ("c", 2)):
        for i in range(n):
            make_video(local / folder / f"{folder}{i}.mp4", n_frames=48, size=(96, 64), fps=24,
                       kind="moving", seed=hash((folder, i)) % 1000)
    if request.param == "disk":
        return local, tmp_path / "root"
    request.getfixturevalue("s3_server")
    prefix = fs.upath(f"s3://{BUCKET}/concurrent-{uuid.uuid4().hex[:8]}")
    for f in sorted(local.rglob("*.mp4")):
        (prefix / "in" / f.parent.name / f.name).write_bytes(f.read_bytes())
    return prefix / "in", prefix / "root"


def test_two_of_each_writer_at_once_leave_every_key_once(where):
    inputs, root = where
    together("ingest", root, "--input", f"{inputs}/a")
    assert len(once_each(root, "videos", "path")) == 3

    finish(start("ingest", root, "--input", f"{inputs}/b"), start("ingest", root, "--input", f"{inputs}/c"))
    assert len(once_each(root, "videos", "path")) == 7

    together("split", root)
    clips = once_each(root, "clips", "clip_id")
    assert len(clips) >= 7

    together("score", root)
    assert sorted(once_each(root, "scores", "clip_id")) == sorted(clips)
    assert lease.holder(root, "scores") is None  # released by both


def test_compact_during_score_waits_and_loses_no_row(where):
    inputs, root = where
    finish(start("ingest", root, "--input", f"{inputs}/a"))
    finish(start("ingest", root, "--input", str(inputs)))  # a second videos part to compact
    finish(start("split", root))
    clips = once_each(root, "clips", "clip_id")
    score = start("score", root)
    deadline = time.monotonic() + 300
    while lease.holder(root, "scores") is None and score.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    compact = subprocess.Popen([sys.executable, "-m", "curation.cli", "compact", "--root", str(root), *WAIT],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = compact.communicate(timeout=600)
    assert compact.returncode == 0, err[-3000:]
    finish(score)
    assert sorted(once_each(root, "scores", "clip_id")) == sorted(clips)
    assert len(once_each(root, "videos", "path")) == 7
    compacted, fresh = Table(root, "videos").snapshot()
    assert len(compacted) == 1 and not fresh, out  # compact did run, beside the score
    assert any(line.startswith("scores") for line in out.splitlines()), out
