"""Leases (manifests/lease.py) on local disk and on S3 (SeaweedFS): one holder at a time, the
second one told who holds it, a killed holder never blocks, --force-unlock breaks a lease."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from manifests import fs, lease
from tests.procs import cli_command
from tests.s3server import BUCKET

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["disk", "s3"])
def root(request, tmp_path):
    if request.param == "disk":
        return tmp_path / "root"
    request.getfixturevalue("s3_server")
    return fs.upath(f"s3://{BUCKET}/lease-{uuid.uuid4().hex[:8]}/root")


def test_a_second_writer_is_told_who_holds_the_table(root):
    with lease.hold(root, "clips", command="reelsift split") as mine:
        found = lease.holder(root, "clips")
        assert {k: found[k] for k in mine} == mine
        t0 = time.monotonic()
        with pytest.raises(lease.LeaseHeld) as held, lease.hold(root, "clips", wait_s=1.0):
            pass
        assert time.monotonic() - t0 >= 1.0  # it waited as long as it was told
        text = str(held.value)
        for part in (f"host {mine['host']}", f"pid {os.getpid()}", f"started {mine['started']}",
                     "reelsift split", "--force-unlock", "--lock-wait"):
            assert part in text
        with lease.hold(root, "videos"):  # another table is free
            pass
    assert lease.holder(root, "clips") is None
    with lease.hold(root, "clips"):  # released: free again
        pass


def test_a_waiting_writer_gets_the_lease_when_the_holder_is_done(root):
    got = []
    with lease.hold(root, "scores"):
        waiter = threading.Thread(target=lambda: got.append(_take(root, "scores", wait_s=30)))
        waiter.start()
        time.sleep(1.5)
        assert not got, "the waiter did not wait"
    waiter.join(60)
    assert got == ["held"]


def _take(root, table, wait_s):
    with lease.hold(root, table, wait_s=wait_s):
        return "held"


def _holder(root, table: str) -> subprocess.Popen:
    """A process that holds `table`'s lease until it is killed (its lease is held once this returns)."""
    code = ("import sys, time\nfrom manifests import lease\n"
            f"with lease.hold({str(root)!r}, {table!r}, command='holder'):\n"
            "    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_holder_does_not_block_and_force_unlock_breaks_a_live_lease(root):
    proc = _holder(root, "videos")
    try:
        assert lease.holder(root, "videos")["pid"] == proc.pid
        if fs.is_s3(root):
            # the process is alive: only --force-unlock takes its lease
            broken = lease.force_unlock(root, "videos")
            assert broken["pid"] == proc.pid
        else:
            proc.send_signal(signal.SIGKILL)  # the kernel drops its flock
            proc.wait(30)
        with lease.hold(root, "videos", wait_s=5):
            pass
    finally:
        proc.kill()
        proc.wait(30)


def test_an_expired_s3_claim_is_taken_over(s3_server):
    root = fs.upath(f"s3://{BUCKET}/lease-{uuid.uuid4().hex[:8]}/root")
    dead = dict(host="gone", pid=1, started="2026-01-01T00:00:00+00:00", command="reelsift score",
                expires=time.time() - 1)
    (root / lease.LEASES / "scores" / "0-dead.json").write_text(json.dumps(dead))
    live = dict(dead, expires=time.time() + 600)
    (root / lease.LEASES / "clips" / "0-live.json").write_text(json.dumps(live))
    with lease.hold(root, "scores"):  # the dead holder's claim expired: removed on the way
        pass
    assert not (root / lease.LEASES / "scores" / "0-dead.json").exists()
    with pytest.raises(lease.LeaseHeld, match="host gone, pid 1"):
        with lease.hold(root, "clips"):
            pass


def test_a_killed_holder_on_this_host_does_not_block_an_s3_rerun(s3_server):
    """A run SIGKILLed here and started again at once (the common case after a crash): its claim
    has not expired, but its pid is gone from this host, so the new run takes the lease now."""
    root = fs.upath(f"s3://{BUCKET}/lease-{uuid.uuid4().hex[:8]}/root")
    proc = _holder(root, "clips")
    try:
        assert lease.holder(root, "clips")["pid"] == proc.pid
        with pytest.raises(lease.LeaseHeld):  # alive: held
            with lease.hold(root, "clips"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        t0 = time.monotonic()
        with lease.hold(root, "clips"):  # dead on this host: no wait for the claim's expiry
            pass
        assert time.monotonic() - t0 < lease.TTL_S / 2
    finally:
        proc.kill()
        proc.wait(30)


def test_the_cli_exits_2_naming_the_holder_and_readers_never_wait(root, tmp_path):
    from tests.media import make_video

    src = tmp_path / "in"
    make_video(src / "a.mp4", n_frames=12)
    cmd = cli_command("ingest", "--input", str(src), "--root", str(root))
    proc = _holder(root, "videos")
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr[-2000:]
        assert f"pid {proc.pid}" in out.stderr and "`holder`" in out.stderr, out.stderr
        sql = subprocess.run([sys.executable, "-m", "curation.cli", "sql", "--root", str(root),
                              "SELECT count(*) AS n FROM videos"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        assert sql.returncode == 0, sql.stderr[-2000:]  # a reader does not wait
        forced = subprocess.run(cmd + ["--force-unlock"], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert forced.returncode == 0, forced.stderr[-2000:]
    finally:
        proc.kill()
        proc.wait(30)
