"""Process helpers for tests that drive the `reelsift` CLI as a subprocess."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_command(inputs: Path, root: Path, sets: list[str]) -> list[str]:
    """`reelsift run` over `inputs` into `root` with the offline config and `--set` overrides."""
    cmd = [
        sys.executable,
        "-m",
        "curation.cli",
        "run",
        "--config",
        str(REPO / "configs/offline.yaml"),
        "--input",
        str(inputs),
        "--root",
        str(root),
    ]
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
