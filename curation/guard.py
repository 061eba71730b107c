"""A hard time limit for work that may never return: decoding runs in a child process.

A decoder blocked inside one FFmpeg call (a stalled network mount, a FIFO behind a concat
playlist) can't be interrupted from its own thread, so `Guard.call(fn, args, timeout_s)` sends
the call to a long-lived child process and waits at most `timeout_s`. Past it, the child is
killed and the next call starts a fresh one (the worker is replaced); the caller gets
`HardTimeout` and writes its `timed out after N s` error row. A child that dies on its own
(the kernel's OOM killer, Ray's memory monitor) is restarted and the call retried up to
`retries` times, then `WorkerDied` says how it died (`out of memory` for SIGKILL).

Cost at normal speed: one extra process per stage worker (started on first use: Python plus
the decode imports, about 0.5 CPU-second) and the results' bytes through a pipe (a few MB of
sampled frames per clip, ~1 ms). A Ray task cancelled with force would cost a task round trip
per item and a new worker process per cancel; bench/e2e_cpu.py measures the guard's share.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_LEN = struct.Struct("<Q")
GRACE_S = 2.0
"""Added to a stage's own time limit, which is checked between frames and fires first unless
the decoder is stuck inside one call."""
_REPO = str(Path(__file__).resolve().parents[1])


class HardTimeout(TimeoutError):
    """The guarded call did not return within its limit; its process was killed."""

    def __init__(self, seconds: float):
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds = seconds

    def __reduce__(self):
        return (type(self), (self.seconds,))


class WorkerDied(RuntimeError):
    """The guarded call's process died (killed) on every try."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.reason,))


def _died(code: int | None) -> str:
    if code == -signal.SIGKILL:
        return "out of memory (the decoding process was killed or ran out of memory on every try)"
    if code is not None and code < 0:
        return f"decoding process killed by signal {signal.Signals(-code).name}"
    return f"decoding process exited with status {code}"


class Guard:
    """Runs picklable calls in a child process with a hard time limit (see module doc)."""

    def __init__(self, retries: int = 2, memory_mb: int = 0):
        self.retries = retries
        self.memory_mb = memory_mb
        self._proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = _REPO + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-c", f"from curation.guard import serve; serve({self.memory_mb})"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        return self._proc

    def close(self) -> None:
        """Kill the child (if any); the next call starts a new one."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
            for f in (proc.stdin, proc.stdout):
                f.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the child exits on EOF anyway
            pass

    def call(self, fn: Callable, args: tuple, timeout_s: float) -> Any:
        last = None
        for _ in range(self.retries + 1):
            proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
            try:
                return self._once(proc, fn, args, timeout_s)
            except _ChildGone as gone:
                code = gone.code if gone.code is not None else proc.wait()
                self.close()
                last = _died(code)
        raise WorkerDied(last or "decoding process died")

    def _once(self, proc: subprocess.Popen, fn: Callable, args: tuple, timeout_s: float) -> Any:
        data = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            proc.stdin.write(_LEN.pack(len(data)) + data)
            proc.stdin.flush()
        except BrokenPipeError as exc:
            raise _ChildGone from exc
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            self.close()  # the call never returned: replace the process
            raise HardTimeout(timeout_s)
        head = proc.stdout.read(_LEN.size)
        if len(head) < _LEN.size:
            raise _ChildGone
        body = proc.stdout.read(_LEN.unpack(head)[0])
        ok, value = pickle.loads(body)
        if ok:
            return value
        if isinstance(value, MemoryError):  # an allocation failed: retry in a fresh process
            self.close()
            raise _ChildGone(-signal.SIGKILL)
        raise value


def _die_with_parent() -> None:
    """A child stuck in a read must not outlive a parent that was killed (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


class _ChildGone(Exception):
    def __init__(self, code: int | None = None):
        super().__init__(code)
        self.code = code


def serve(memory_mb: int = 0) -> None:
    """The child's loop: read a call, run it, write (ok, result or exception)."""
    _die_with_parent()
    if memory_mb:
        import resource

        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the result stream
    while True:
        head = stdin.read(_LEN.size)
        if len(head) < _LEN.size:
            return
        fn, args = pickle.loads(stdin.read(_LEN.unpack(head)[0]))
        try:
            out = (True, fn(*args))
        except MemoryError:
            out = (False, MemoryError())
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001 - an exception that can't travel becomes a plain one
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            out = (False, exc)
        data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_LEN.pack(len(data)) + data)
        stdout.flush()
