"""Faults a long run meets: odd inputs in the listing, sources that change after ingest."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from curation import pipeline
from curation.config import load_config
from manifests.db import query
from tests.media import make_video

REPO = Path(__file__).resolve().parent.parent
CFG = load_config(REPO / "configs" / "offline.yaml")


def rows(root: Path, sql: str) -> list[dict]:
    return query(root, sql).to_pylist()


def test_every_listed_input_gets_a_row_and_no_fifo_is_opened(tmp_path):
    """Through the CLI: a FIFO, a socket, a dangling symlink and a device get error rows; a
    FIFO nobody writes to would block any reader forever, so this test hangs if one is opened."""
    src = tmp_path / "in"
    make_video(src / "good.mp4", n_frames=12)
    os.symlink(src / "gone.mp4", src / "dangling.mp4")
    os.mkfifo(src / "pipe.mp4")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.mp4"))
    os.symlink("/dev/null", src / "device.mp4")
    root = tmp_path / "root"
    out = subprocess.run(
        [sys.executable, "-m", "curation.cli", "ingest", "--config", str(REPO / "configs/offline.yaml"),
         "--input", str(src), "--root", str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    sock.close()
    assert out.returncode == 0, out.stderr[-2000:]
    got = {Path(r["path"]).name: (r["status"], r["error"]) for r in rows(root, "SELECT * FROM videos")}
    assert got == {
        "good.mp4": ("ok", None),
        "dangling.mp4": ("error", f"broken symlink -> {src / 'gone.mp4'}"),
        "pipe.mp4": ("error", "not a regular file (fifo)"),
        "sock.mp4": ("error", "not a regular file (socket)"),
        "device.mp4": ("error", "not a regular file (character device)"),
    }


def _ingest_as_nobody(path: str, conn) -> None:
    os.setgid(65534)
    os.setuid(65534)
    from curation.stages.ingest import IngestStage

    conn.send(IngestStage(CFG.ingest).one(path)["error"])


def test_unreadable_file_is_permission_denied(tmp_path):
    import multiprocessing as mp

    path = make_video(tmp_path / "secret.mp4", n_frames=6)
    path.chmod(0)
    if os.getuid() != 0:
        from curation.stages.ingest import IngestStage

        assert IngestStage(CFG.ingest).one(str(path))["error"] == "permission denied"
        return
    # root reads everything: look at the file as an ordinary user, in a child process
    parent, child = mp.get_context("fork").Pipe()
    proc = mp.get_context("fork").Process(target=_ingest_as_nobody, args=(str(path), child))
    proc.start()
    proc.join(60)
    assert parent.recv() == "permission denied"


def test_a_source_changed_after_ingest_is_never_cut_or_scored_then_reingested_as_new(tmp_path):
    src = tmp_path / "in"
    a = make_video(src / "a.mp4", n_frames=72, size=(96, 64), kind="moving", seed=1)
    b = make_video(src / "b.mp4", n_frames=72, size=(96, 64), kind="moving", seed=2)
    c = make_video(src / "c.mp4", n_frames=72, size=(96, 64), kind="moving", seed=3)
    root = tmp_path / "root"
    pipeline.ingest(CFG, root, src)
    pipeline.split(CFG, root)
    old = {r["path"]: r["video_id"] for r in rows(root, "SELECT path, video_id FROM videos")}
    # a: new bytes of another size before split ever saw... score; c: same size, newer mtime
    make_video(a, n_frames=96, size=(96, 64), kind="moving", seed=4)
    st = os.stat(c)
    os.utime(c, (st.st_atime, st.st_mtime + 3600))
    pipeline.score(CFG, root)
    scored = rows(root, """SELECT regexp_extract(c.path, '[^/]+$') AS f, s.status, s.error
                           FROM scores s JOIN clips c USING (clip_id)""")
    by_file = {}
    for r in scored:
        by_file.setdefault(r["f"], set()).add((r["status"], (r["error"] or "").split(":")[0]))
    assert by_file["b.mp4"] == {("ok", "")}
    assert by_file["a.mp4"] == {("error", "source changed since ingest")}
    assert by_file["c.mp4"] == {("error", "source changed since ingest")}

    # ingest again: a and c come back as new videos (new ids for a; c's bytes are the same, so
    # its new row is the same video_id: a duplicate of nothing but itself, still one id)
    pipeline.ingest(CFG, root, src)
    new = rows(root, f"SELECT video_id, status FROM videos WHERE path = '{a}' ORDER BY created_at")
    assert [r["video_id"] for r in new][0] == old[str(a)] and len(new) == 2
    assert new[1]["video_id"] != old[str(a)] and new[1]["status"] == "ok"
    assert len(rows(root, f"SELECT * FROM videos WHERE path = '{b}'")) == 1
    pipeline.split(CFG, root)
    fresh = rows(root, f"SELECT status, end_frame FROM clips WHERE video_id = '{new[1]['video_id']}'")
    assert fresh and max(r["end_frame"] for r in fresh) > 72  # cut from the new, longer bytes


@pytest.mark.parametrize("size_change", [True, False])
def test_split_refuses_a_changed_source(tmp_path, size_change):
    src = tmp_path / "in"
    v = make_video(src / "v.mp4", n_frames=48, size=(96, 64), kind="moving")
    root = tmp_path / "root"
    pipeline.ingest(CFG, root, src)
    if size_change:
        with open(v, "ab") as fh:
            fh.write(b"\0" * 8)
    else:
        os.utime(v, (os.stat(v).st_atime, os.stat(v).st_mtime + 3600))
    pipeline.split(CFG, root)
    got = rows(root, "SELECT status, error FROM clips")
    assert len(got) == 1 and got[0]["status"] == "error"
    assert got[0]["error"].startswith("source changed since ingest")
