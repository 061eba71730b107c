"""Process helpers for tests that drive the `reelsift` CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli_command(command: str, *args: str, config: Path | str = REPO / "configs/offline.yaml") -> list[str]:
    """`reelsift <command> --config <config> <args>` as a subprocess argv (offline.yaml unless
    `config` is given)."""
    return [sys.executable, "-m", "curation.cli", command, "--config", str(config), *args]


def run_command(inputs: Path, root: Path, sets: list[str]) -> list[str]:
    """`reelsift run` over `inputs` into `root` with the offline config and `--set` overrides."""
    cmd = cli_command("run", "--input", str(inputs), "--root", str(root))
    for s in sets:
        cmd += ["--set", s]
    return cmd


def pids_matching(*needles: bytes) -> list[int]:
    """Ids of processes whose command line holds every one of `needles`."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if all(n in cmd for n in needles):
            out.append(int(pid))
    return out


def run_and_kill(
    cmd: list[str], ready: Callable[[], bool], poll_s: float = 0.02, timeout_s: float = 300
) -> bool:
    """Start `cmd` (in the repo, its own process group) and SIGKILL the whole group as soon as
    `ready()`; True if it was killed, False if it ended (or timed out) first."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(poll_s)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
