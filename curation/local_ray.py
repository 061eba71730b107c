"""One local Ray for many commands: `reelsift cluster start|stop` (`make ray-up` / `ray-down`).

A command that starts its own embedded Ray pays for GCS, raylet, agents and Ray Data's helper
actors every time (about 6.4 CPU-seconds on 2 cores, bench/e2e_cpu.py). Commands that join one
started here (RAY_ADDRESS=auto) pay for their driver and actors only (about 2.7).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from curation.config import RayConfig
from curation.runner import LOCAL_SYSTEM_CONFIG
from manifests.configtools import InputError


def default_state() -> Path:
    """Where the owner's pid and the head's log live: one folder per user under the temp dir."""
    return Path(tempfile.gettempdir()) / f"reelsift-ray-{os.getuid()}"


RAY_CLI = (sys.executable, "-m", "ray.scripts.scripts")  # the `ray` command of this environment
LOCAL_CLUSTER_READY = "Ray runtime started."  # what `ray start` prints once the head is up


def start_local_cluster(cfg: RayConfig, state: Path, timeout_s: float = 120.0) -> int:
    """Start a long-lived Ray head on this machine with the embedded instance's settings and
    return the pid of the `ray start --block` process that owns it.

    Each command that joins it (RAY_ADDRESS=auto) pays for its driver and its actors only, not
    for GCS, raylet and agents, and Ray Data's own actors start once, not once per command.
    The owner's pid goes to `state/head.pid`; `stop_local_cluster` signals that process, which
    stops exactly the processes it started (`ray stop` would stop every Ray on the machine).
    Its output goes to `state/head.log` (a pipe would be held open by the daemons).
    """
    pidfile, log_path = state / "head.pid", state / "head.log"
    pid = _live_pid(pidfile)
    if pid:
        raise InputError(f"a local Ray from `reelsift cluster start` already runs (pid {pid}); "
                         "stop it first with `reelsift cluster stop`")
    cmd = [
        *RAY_CLI,
        "start",
        "--head",
        "--block",
        "--include-dashboard=false",
        "--disable-usage-stats",
        # one machine, nothing to autoscale, and workers' logs stay in their files (commands
        # run with log_to_driver=False): two fewer Python daemons burning CPU while idle
        "--no-monitor",
        "--include-log-monitor=false",
        f"--object-store-memory={cfg.object_store_mb * 1024 * 1024}",
        f"--system-config={json.dumps(LOCAL_SYSTEM_CONFIG)}",
    ]
    if cfg.num_cpus:
        cmd.append(f"--num-cpus={cfg.num_cpus}")
    state.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in this terminal later must not stop it
            # no 30 s "drain" on stop: nothing here serves traffic, and a stage killed mid-run
            # loses nothing (its parts are redone by the next run)
            env={**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
        )
    deadline = time.monotonic() + timeout_s
    while LOCAL_CLUSTER_READY not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            lines = log_path.read_text(errors="replace").strip().splitlines() or ["(no output)"]
            last = lines[-1] if "Error" in lines[-1] else " | ".join(lines[-5:])  # a traceback's message
            raise InputError(f"`ray start` failed (exit {proc.returncode}): {last} (log: {log_path})")
        if time.monotonic() > deadline:
            proc.terminate()
            raise InputError(f"`ray start` not up after {timeout_s:.0f} s (log: {log_path})")
        time.sleep(0.2)
    pidfile.write_text(str(proc.pid))
    return proc.pid


def stop_local_cluster(state: Path, timeout_s: float = 60.0) -> int | None:
    """Stop the Ray that `start_local_cluster` started (its owner exits after stopping GCS,
    raylet and every worker). Returns the owner's pid, or None when none was running."""
    import signal

    pidfile = state / "head.pid"
    pid = _live_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise InputError(f"the local Ray (pid {pid}) did not stop within {timeout_s:.0f} s")
        time.sleep(0.2)
    pidfile.unlink(missing_ok=True)
    return pid


def _live_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    if not os.path.isdir("/proc"):  # not Linux: signal 0 tests that the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            pass
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:  # a zombie (exited, not yet reaped) is gone
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
