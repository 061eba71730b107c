"""A 2-node Ray cluster on loopback whose nodes share no path: each node has its own Ray temp dir
and its own TMPDIR. Used by tests/test_cluster_s3.py and bench/cluster_s3.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.procs import pids_matching

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodes:
    """`start()` -> RAY_ADDRESS; `stop()` kills only this cluster's processes (never `ray stop`,
    which would kill every Ray on the machine); `kill_worker_raylet()` SIGKILLs the second node."""

    def __init__(self, tag: str, env: dict[str, str]):
        # short paths: Ray's socket paths have a length limit
        self.head_dir, self.worker_dir = Path("/tmp") / f"rsh{tag}", Path("/tmp") / f"rsw{tag}"
        self.env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
        self.address = f"127.0.0.1:{free_port()}"

    def start(self) -> str:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                  "--object-store-memory=200000000"]
        head = [RAY, "start", "--head", f"--port={self.address.rsplit(':', 1)[1]}",
                "--include-dashboard=false", f"--temp-dir={self.head_dir}", *common]
        worker = [RAY, "start", f"--address={self.address}", '--resources={"reelsift_worker": 1}',
                  f"--temp-dir={self.worker_dir}", *common]
        for d in (self.head_dir, self.worker_dir):
            (d / "tmp").mkdir(parents=True, exist_ok=True)
        for cmd, d in ((head, self.head_dir), (worker, self.worker_dir)):
            out = subprocess.run(cmd, env={**self.env, "TMPDIR": str(d / "tmp")}, capture_output=True,
                                 text=True, timeout=180)
            if out.returncode != 0:
                raise RuntimeError(f"ray start failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        return self.address

    def kill_worker_raylet(self) -> int:
        """SIGKILL the raylet of the second node -> how many processes were killed."""
        pids = [p for p in pids_matching(b"raylet", str(self.worker_dir).encode())
                if b"ray start" not in Path(f"/proc/{p}/cmdline").read_bytes()]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        return len(pids)

    def stop(self) -> None:
        for d in (self.head_dir, self.worker_dir):
            for pid in pids_matching(str(d).encode()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
