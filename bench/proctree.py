"""CPU seconds and peak RSS of a command's whole process tree, Ray's daemons included.

The measuring process makes itself a child subreaper (Linux prctl), so every process the
command starts, including daemons that detach from it (Ray's GCS, raylet, workers, agents),
stays in its tree: orphans are re-parented to it instead of to init.

Every `interval` seconds it reads /proc/<pid>/stat of each descendant. A process's CPU is the
last value seen for its own utime+stime (keyed by pid and start time), summed over every process
ever seen. getrusage(RUSAGE_CHILDREN) can't be used: Ray's daemons ignore SIGCHLD, so their
workers are reaped by the kernel and their CPU time is added to no one. What sampling misses is
the last < `interval` of each process's life, and processes that live less than `interval`.

Peak RSS is the largest sum, over one sample, of the live descendants' RSS (shared pages, e.g.
Ray's object store, are counted once per process that maps them).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_PR_SET_CHILD_SUBREAPER = 36
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _stat(pid: int) -> tuple[int, float, int, int, str] | None:
    """(ppid, own CPU s, start time, rss bytes, comm) of a live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    f = raw[raw.rindex(")") + 2 :].split()
    # fields after comm: state(0) ppid(1) ... utime(11) stime(12) ... starttime(19) rss(21)
    return int(f[1]), (int(f[11]) + int(f[12])) / _TICK, int(f[19]), int(f[21]) * _PAGE, comm


def descendants(root: int) -> dict[int, tuple[float, int, int, str]]:
    """pid -> (own CPU s, start time, rss bytes, comm) for every live descendant of `root`."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(int(name))
            if s is not None:
                stats[int(name)] = s
    children: dict[int, list[int]] = {}
    for pid, s in stats.items():
        children.setdefault(s[0], []).append(pid)
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        _, cpu, start, rss, comm = stats[pid]
        out[pid] = (cpu, start, rss, comm)
        todo.extend(children.get(pid, []))
    return out


@dataclass
class TreeUsage:
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss_bytes: int = 0
    max_procs: int = 0
    procs_seen: int = 0
    returncode: int | None = None
    marks: list[tuple[str, float, float]] = field(default_factory=list)
    """(label, wall s, tree CPU s) at each line the command printed that `mark` matched."""
    names: dict[str, int] = field(default_factory=dict)
    """process name -> how many processes of that name were seen."""
    cpu_by_name: dict[str, float] = field(default_factory=dict)
    """process name -> CPU seconds of the processes of that name."""
    output: str = ""


def snapshot() -> dict[tuple[int, int], tuple[float, str]]:
    """(pid, start) -> (CPU s so far, comm) of every live process in this process's tree: pass it
    as `run_measured(baseline=...)` when a long-lived service (a local Ray) already runs here."""
    return {(pid, start): (cpu, comm) for pid, (cpu, start, _, comm) in descendants(os.getpid()).items()}


def cpu_since(baseline: dict[tuple[int, int], tuple[float, str]], now: dict) -> dict:
    """(pid, start) -> (CPU s used since `baseline`, comm) for each process of `now` (new ones
    count whole); both are `snapshot()`-shaped."""
    return {k: (c - baseline.get(k, (0.0,))[0], comm) for k, (c, comm) in now.items()}


def run_measured(
    cmd: list[str],
    env: dict[str, str] | None = None,
    *,
    interval: float = 0.1,
    mark: Callable[[str], str | None] | None = None,
    linger_s: float = 30.0,
    baseline: dict[tuple[int, int], tuple[float, str]] | None = None,
    leave_running_after_s: float | None = None,
) -> TreeUsage:
    """Run `cmd` and measure its whole process tree until every process in it has exited.

    `mark(line)` may return a label for a line of the command's stdout; the tree's CPU at that
    moment is recorded (used to split `reelsift run` into its stages). Processes still alive
    `linger_s` after the command exits are counted, then terminated.

    With `leave_running_after_s`, measuring stops that long after the command exits and what
    still runs is left running: a service the command started (`reelsift cluster start`), or
    one it joined and its workers. `baseline` (see `snapshot`) holds the processes already
    running before the command; they count only the CPU they use from now on.
    """
    become_subreaper()
    me = os.getpid()
    out = TreeUsage()
    lock = threading.Lock()
    base = dict(baseline or {})
    seen: dict[tuple[int, int], tuple[float, str]] = dict(base)  # (pid, start) -> (last CPU s, comm)

    def tree_cpu() -> tuple[float, dict]:
        live = descendants(me)
        for pid, (cpu, start, _, comm) in live.items():
            seen[(pid, start)] = (cpu, comm)
        return sum(c for c, _ in cpu_since(base, seen).values()), live

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def reader():
        for line in proc.stdout:
            lines.append(line)
            label = mark(line) if mark else None
            if label:
                with lock:
                    cpu, _ = tree_cpu()
                    out.marks.append((label, time.monotonic() - t0, cpu))

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    exited_at = None
    while True:
        with lock:
            cpu, live = tree_cpu()
        out.max_procs = max(out.max_procs, len(live))
        out.peak_rss_bytes = max(out.peak_rss_bytes, sum(r for _, _, r, _ in live.values()))
        if out.returncode is None and proc.poll() is not None:
            out.returncode = proc.returncode
            out.wall_s = time.monotonic() - t0
            exited_at = time.monotonic()
        # reap orphans re-parented to us (zombies), other than the command itself
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
            if pid == proc.pid:  # the command itself: keep its real exit status
                proc.returncode = os.waitstatus_to_exitcode(status)
        if exited_at is not None and not live:
            break
        if exited_at is not None and leave_running_after_s is not None:
            if time.monotonic() - exited_at >= leave_running_after_s:
                break
        if exited_at is not None and time.monotonic() - exited_at > linger_s:
            for pid in live:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            exited_at = time.monotonic() - linger_s + 5  # give them 5 s more
        time.sleep(interval)
    th.join(timeout=5)
    used = cpu_since(base, seen)
    out.cpu_s = sum(c for c, _ in used.values())
    out.procs_seen = len(seen)
    for cpu, comm in used.values():
        out.names[comm] = out.names.get(comm, 0) + 1
        out.cpu_by_name[comm] = round(out.cpu_by_name.get(comm, 0.0) + cpu, 2)
    out.output = "".join(lines)
    return out
