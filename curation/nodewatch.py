"""A stage notices when its Ray cluster loses a node, and plans again on the nodes left.

A stage's actor pools are sized from the cluster's CPUs when it starts (runner.plan_concurrency).
When a node dies mid-stage, or died moments before the stage started and Ray has not marked it
dead yet, those pools ask for more CPUs than the cluster has. The actors that were on the lost
node wait for room that never comes, and an operator left with no actor stalls the whole stream:
the command hangs with nothing to say.

`NodeWatch` polls the alive nodes' CPUs while the stage streams. When they drop below what the
plan assumed, it raises `ClusterShrank` in the driver's loop; `run_stage` stores every row it has
received and passes it on, and `Stage.run` runs the stage again: its pending query leaves out what
was stored, and the new plan fits the nodes left. Rows that were in flight on the lost node are
simply done again; none is stored twice, because only rows the driver received are written.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("reelsift")

POLL_S = 2.0
ATTEMPTS = 3  # runs of one stage in one command before a shrinking cluster is an error


class ClusterShrank(RuntimeError):
    """The cluster lost CPUs while a stage ran; what it stored is kept, the rest is pending."""


def alive_cpus() -> float:
    """CPUs of the nodes Ray counts as alive now."""
    import ray

    return float(sum(n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")))


class NodeWatch:
    """Context manager around a stage's streaming loop, in the main thread: once `cpus()` falls
    below `planned`, ClusterShrank is raised in the loop wherever it waits (`fired` says so),
    never while `storing()` rows, so a part is never half-counted. Elsewhere it does nothing.

    The watch thread cannot raise into the main thread by itself: it sends the main thread a
    SIGINT, which wakes it from any blocking wait and which this watch's handler turns into
    ClusterShrank. A real Ctrl-C still reaches the handler that was there before."""

    def __init__(self, planned: float, cpus: Callable[[], float] | None = None, poll_s: float | None = None):
        self.planned, self.poll_s = planned, poll_s or POLL_S
        self.cpus = cpus or (lambda: alive_cpus())  # looked up per call: tests stand in for Ray
        self.fired = self.busy = self.deferred = False
        self.seen: float | None = None
        self._previous: Any = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="reelsift-nodewatch", daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                now = self.cpus()
            except Exception as exc:  # the GCS may be busy: ask again at the next poll
                log.debug("node watch: %s", exc)
                continue
            if now < self.planned - 1e-9:
                with self._lock:
                    if self._stop.is_set():
                        return
                    self.fired, self.seen = True, now
                    # A real signal, not _thread.interrupt_main: that only sets Python's flag,
                    # and a main thread blocked in a lock or a C wait would never look at it.
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                return

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if not self.fired:  # a real Ctrl-C: what the handler before would have done
            if callable(self._previous):
                self._previous(signum, frame)
            elif self._previous != signal.SIG_IGN:
                raise KeyboardInterrupt
            return
        if self.busy:  # rows are being stored: raised when they are (see `storing`)
            self.deferred = True
            return
        raise self.shrank()

    @contextlib.contextmanager
    def storing(self) -> Iterator[None]:
        """Rows being stored: the watch holds back until they are."""
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
        if self.deferred:
            raise self.shrank()

    def __enter__(self) -> NodeWatch:
        if threading.current_thread() is threading.main_thread():  # only it can be interrupted
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._stop.set()
        if self._thread.ident is not None:  # started (main thread only)
            self._thread.join()  # (a signal asked for before this point is handled in this call)
            signal.signal(signal.SIGINT, self._previous)

    def shrank(self) -> ClusterShrank:
        return ClusterShrank(
            f"the Ray cluster lost a node: {self.seen:g} CPUs alive, the stage was planned on "
            f"{self.planned:g}"
        )
