"""Faults a long run meets: odd inputs in the listing, sources that change after ingest."""

from __future__ import annotations

import json
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
from tests.procs import cli_command

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
        cli_command("ingest", "--input", str(src), "--root", str(root)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
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


def test_an_error_row_hashes_readable_bytes_and_leaves_unreadable_ones_null(tmp_path):
    """video_id is the hash of the bytes even when they are not a video; a path whose bytes
    cannot be read gets NULL, never the empty string."""
    from curation.stages.ingest import IngestStage
    from filters.video import file_hash

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    os.symlink(tmp_path / "gone.mp4", tmp_path / "dangling.mp4")
    stage = IngestStage(CFG.ingest)
    bad = stage.one(str(junk))
    assert bad["status"] == "error" and bad["video_id"] == file_hash(junk)
    gone = stage.one(str(tmp_path / "dangling.mp4"))
    assert gone["status"] == "error" and gone["video_id"] is None


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


@pytest.fixture
def blocking_input(tmp_path):
    """hang.mp4: a concat playlist whose one entry is a FIFO that a helper process holds open
    for writing and never writes to, so FFmpeg blocks inside one read call, for good."""
    d = tmp_path / "hang"
    d.mkdir()
    os.mkfifo(d / "pipe.ts")
    (d / "hang.mp4").write_text("ffconcat version 1.0\nfile pipe.ts\n")
    writer = subprocess.Popen(
        [sys.executable, "-c", f"import time; f = open({str(d / 'pipe.ts')!r}, 'wb'); time.sleep(600)"]
    )
    yield d / "hang.mp4"
    writer.kill()
    writer.wait()


@pytest.mark.parametrize(
    "ray", [pytest.param(False, id="in-process"), pytest.param(True, id="ray", marks=pytest.mark.slow)]
)
def test_a_decoder_that_never_returns_is_cut_off_at_ingest(blocking_input, tmp_path, ray):
    good = make_video(tmp_path / "good.mp4", n_frames=12)
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{blocking_input}\n{good}\n")
    root = tmp_path / "root"
    cmd = cli_command("ingest", "--input", str(listing), "--root", str(root), "--set", "ingest.timeout_s=3")
    if ray:  # the guard's child under a Ray actor
        cmd += ["--set", "ray.inline_max_items=0"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = {Path(r["path"]).name: (r["status"], r["error"]) for r in rows(root, "SELECT * FROM videos")}
    assert got == {"hang.mp4": ("error", "timed out after 3 s"), "good.mp4": ("ok", None)}
    metrics = [json.loads(p.read_text()) for p in (root / "_metrics").glob("ingest-*.json")]
    assert [m["inline"] for m in metrics] == [not ray]


def test_split_and_score_cut_off_a_stuck_decoder_and_replace_it(blocking_input, tmp_path):
    import time
    from dataclasses import replace

    import pyarrow as pa

    from curation.guard import GRACE_S
    from curation.stages.score import DecodeAndScoreCpu
    from curation.stages.split import SplitStage

    good = make_video(tmp_path / "good.mp4", n_frames=48, size=(96, 64), kind="moving")
    split = SplitStage(replace(CFG.split, timeout_s=1.0))
    video = dict(video_id="v", fps=24.0, n_frames=48, display_width=96, display_height=64)
    t0 = time.monotonic()
    stuck = split.one({**video, "path": str(blocking_input)})
    assert time.monotonic() - t0 < 1.0 + GRACE_S + 5
    assert [(r["status"], r["error"]) for r in stuck] == [("error", f"timed out after {1.0 + GRACE_S:g} s")]
    assert {r["status"] for r in split.one({**video, "path": str(good)})} == {"ok"}  # a new child

    clip = dict(
        clip_id="a", start_frame=0, end_frame=48, fps=24.0, rotation=0, display_width=96, display_height=64
    )
    score = DecodeAndScoreCpu(replace(CFG.score, timeout_s=1.0))
    out = score(
        pa.Table.from_pylist([dict(clip, path=str(blocking_input)), dict(clip, clip_id="b", path=str(good))])
    )
    got = {
        r["clip_id"]: (r["status"], r["error"])
        for r in out.select(["clip_id", "status", "error"]).to_pylist()
    }
    assert got == {"a": ("error", f"timed out after {1.0 + GRACE_S:g} s"), "b": ("ok", None)}


def _die_like_the_oom_killer(marker: str) -> None:
    import signal

    with open(marker, "a") as fh:
        fh.write("x")
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_decoder_is_retried_a_bounded_number_of_times_then_out_of_memory(tmp_path):
    from curation.guard import Guard, WorkerDied

    guard = Guard(retries=2)
    marker = tmp_path / "tries"
    with pytest.raises(WorkerDied, match="^out of memory"):
        guard.call(_die_like_the_oom_killer, (str(marker),), timeout_s=60)
    assert marker.read_text() == "xxx"  # first try + 2 retries
    assert guard.call(os.getpid, (), timeout_s=60) != os.getpid()  # a fresh child works


def test_ingest_caps_the_frame_size():
    from curation.stages.ingest import IngestStage

    row = IngestStage(CFG.ingest).one(str(_eight_k(Path(os.environ.get("TMPDIR", "/tmp")))))
    assert row["status"] == "error" and row["error"].startswith(
        "frame size 7680x4320 is over ingest.max_pixels="
    )


def _eight_k(d: Path) -> Path:
    path = d / "reelsift_8k.mp4"
    if not path.exists():
        make_video(path, n_frames=2, size=(7680, 4320), kind="black")
    return path


CGROUP = Path("/sys/fs/cgroup/memory")


@pytest.mark.slow
def test_a_decoder_killed_by_the_oom_killer_costs_one_error_row(tmp_path):
    """A real kernel OOM kill: every decoding child is moved into a memory cgroup of 128 MiB,
    and the 8K input needs more. The run ends with `out of memory` for it and the rest ok."""
    import threading
    import time

    if os.getuid() != 0 or not os.access(CGROUP, os.W_OK):
        pytest.skip("needs root and a writable cgroup-v1 memory controller to make the kernel kill")
    group = CGROUP / f"reelsift_test_{os.getpid()}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(128 << 20))
    src = tmp_path / "in"
    huge = _eight_k(tmp_path)
    make_video(src / "good.mp4", n_frames=12)
    os.symlink(huge, src / "huge.mp4")
    stop = threading.Event()

    def jail():  # the guard's children, as they start
        from tests.procs import pids_matching

        while not stop.is_set():
            for pid in pids_matching(b"from curation.guard import serve"):
                try:
                    (group / "cgroup.procs").write_text(str(pid))
                except OSError:
                    pass
            stop.wait(0.01)

    watcher = threading.Thread(target=jail, daemon=True)
    watcher.start()
    try:
        out = subprocess.run(
            cli_command("ingest", "--input", str(src), "--root", str(tmp_path / "root"),
                        "--set", f"ingest.max_pixels={8000 * 4400}"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        failcnt = int((group / "memory.failcnt").read_text())
    finally:
        stop.set()
        watcher.join()
        for pid in (group / "cgroup.procs").read_text().split():
            os.kill(int(pid), 9)
        time.sleep(0.5)
        group.rmdir()
    assert out.returncode == 0, out.stderr[-2000:]
    got = {
        Path(r["path"]).name: (r["status"], r["error"])
        for r in rows(tmp_path / "root", "SELECT * FROM videos")
    }
    assert got["good.mp4"] == ("ok", None)
    assert got["huge.mp4"][0] == "error" and got["huge.mp4"][1].startswith("out of memory"), got
    assert failcnt > 0  # the cgroup's limit was hit


def _small_files(limit: int):
    def set_limit():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_a_full_disk_stops_the_stage_with_one_message_and_loses_nothing(tmp_path):
    """The file-size limit (RLIMIT_FSIZE) stands in for a full disk: the next part can't be
    written. The stage stops naming the run root and the bytes it needs; no part or temp file
    is left; the same command, once there is room, finishes with every video split once."""
    src = tmp_path / "in"
    for i in range(3):
        make_video(src / f"v{i}.mp4", n_frames=48, size=(96, 64), kind="cuts", cuts=(24,), seed=i)
    root = tmp_path / "root"
    pipeline.ingest(CFG, root, src)
    cmd = cli_command("split", "--root", str(root))
    full = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=_small_files(1024)
    )
    assert full.returncode == 2, full.stderr[-2000:]
    message = [line for line in full.stderr.splitlines() if line.startswith("error")]
    assert len(message) == 1 and f"run root {root}: cannot write the next clips part" in message[0]
    assert "needs about" in message[0] and "run the same command again" in message[0]
    assert not list((root / "clips").glob("*")), "a part or temp file was left behind"

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    got = rows(root, "SELECT video_id, count(*) AS n, count(DISTINCT clip_id) AS d FROM clips GROUP BY 1")
    assert len(got) == 3 and all(r["n"] == r["d"] == 2 for r in got)  # two scenes each, once


def _keep_all():
    """CFG with one bound-free tier (every ok clip is kept, no scores needed) and no dedup."""
    from dataclasses import replace

    from filters.config import FilterConfig, TierConfig

    return replace(CFG, filter=FilterConfig(tiers={"64p": TierConfig(short_side=64)}),
                   dedup=replace(CFG.dedup, enabled=False))


def _split_and_keep(tmp_path, n: int, size=(96, 64)):
    src = tmp_path / "in"
    for i in range(n):
        make_video(src / f"v{i}.mp4", n_frames=48, size=size, kind="moving", seed=i)
    root = tmp_path / "root"
    cfg = _keep_all()
    pipeline.ingest(cfg, root, src)
    pipeline.split(cfg, root)
    pipeline.filter_(cfg, root)
    return src, root


def test_shard_refuses_a_changed_source(tmp_path):
    """A source modified after ingest is not cut at shard: its clips get the error row, the
    others are sharded."""
    src, root = _split_and_keep(tmp_path, 2)
    v = src / "v1.mp4"
    os.utime(v, (os.stat(v).st_atime, os.stat(v).st_mtime + 3600))
    pipeline.shard(_keep_all(), root)
    got = rows(root, "SELECT regexp_extract(c.path, '[^/]+$') AS f, s.status, s.error "
                     "FROM shards s JOIN clips c USING (clip_id)")
    assert {(r["f"], r["status"]) for r in got} == {("v0.mp4", "ok"), ("v1.mp4", "error")}
    assert all(r["error"].startswith("source changed since ingest") for r in got if r["f"] == "v1.mp4")


@pytest.mark.parametrize("limit_kb,what", [(24, "clip(s) into shards files"), (8, "the shard plan")])
def test_a_full_disk_at_shard_stops_with_one_message_and_loses_nothing(tmp_path, limit_kb, what):
    """The file-size limit stands in for a full disk while shard writes: its tars (30-41 KB
    here, tar files come in 10 KB records) or, under a lower limit, its plan (about 18 KB).
    Shard stops naming the run root and the bytes needed, leaves no partial tar or plan, and the
    same command, with room again, shards every kept clip exactly once."""
    import tarfile

    _, root = _split_and_keep(tmp_path, 3, size=(256, 192))
    cmd = cli_command("shard", "--root", str(root), "--set", "dedup.enabled=false",
                      "--set", "shard.max_samples=1")
    tiers = ["--set", "filter.tiers={'64p': {'short_side': 192}}"]  # same tier name, large clips
    full = subprocess.run(cmd + tiers, cwd=REPO, capture_output=True, text=True, timeout=180,
                          preexec_fn=_small_files(limit_kb * 1024))
    assert full.returncode == 2, full.stderr[-3000:]
    message = [line for line in full.stderr.splitlines() if line.startswith("error")]
    assert len(message) == 1 and f"run root {root}: cannot write" in message[0], full.stderr[-3000:]
    assert what in message[0], message[0]
    assert "needs about" in message[0] and "run the same command again" in message[0]
    shards_dir = root / "shards"
    leftovers = [p for p in shards_dir.rglob("*") if p.is_file() and (p.name.startswith(".tmp")
                                                                     or ".plan" in p.parts)]
    assert not leftovers, leftovers
    assert all(tarfile.open(t).getnames() for t in shards_dir.glob("*/*.tar"))  # whole tars only

    again = subprocess.run(cmd + tiers, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    kept = {r["clip_id"] for r in rows(root, "SELECT clip_id FROM decisions WHERE keep")}
    members = []
    for t in shards_dir.glob("*/*.tar"):
        members += [n.split(".")[0] for n in tarfile.open(t).getnames() if n.endswith(".mp4")]
    assert sorted(members) == sorted(kept) and len(kept) >= 3
    assert rows(root, "SELECT count(*) AS n FROM shards WHERE status <> 'ok'")[0]["n"] == 0
