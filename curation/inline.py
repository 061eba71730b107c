"""Run a small stage inside the CLI process: the same stage classes and batches as under Ray
Data, on one thread per CPU, with no Ray processes to start.

Each thread builds its own instance of every operator of the chain (as an actor would) and takes
whole batches through the chain; an operator limited to one actor (`concurrency: 1`) has one
instance that the threads take turns on. The work is decoding (PyAV), OpenCV and ONNX Runtime, which run
outside the GIL, so two threads use two cores. Results reach the sink on the calling thread.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import pyarrow as pa

from manifests.configtools import Resources

log = logging.getLogger("reelsift")


def as_format(batch: pa.Table, fmt: str) -> Any:
    """A pyarrow batch in the form an operator declared (Ray Data's 'numpy' or 'pyarrow')."""
    if fmt == "pyarrow":
        return batch
    return {
        name: np.asarray(col.to_numpy(zero_copy_only=False))
        for name, col in zip(batch.column_names, batch.columns, strict=True)
    }


_BUILD = threading.Lock()


class _Shared:
    """An operator configured with `concurrency: 1` (one model, one server connection): a
    single instance that the threads take turns on, as they would queue for its one actor."""

    def __init__(self, op: Any):
        self.op = op
        self.lock = threading.Lock()

    def __call__(self, batch: Any) -> Any:
        with self.lock:
            return self.op(batch)


def _build(cls: type, cfg: Any) -> Any:
    # One at a time: a model built from a seeded random init draws from torch's global RNG,
    # and two threads drawing at once would each get different weights than an actor does.
    with _BUILD:
        return cls(cfg)


class _Chain:
    """One thread's operator instances (shared ones excepted)."""

    def __init__(self, ops: list[tuple[type, Any, Resources]], shared: dict[int, _Shared]):
        self.ops = [
            (shared[i] if i in shared else _build(cls, cfg), getattr(cls, "BATCH_FORMAT", "numpy"))
            for i, (cls, cfg, _) in enumerate(ops)
        ]

    def __call__(self, batch: pa.Table) -> pa.Table:
        for op, fmt in self.ops:
            out = op(as_format(batch, fmt))
            batch = out if isinstance(out, pa.Table) else pa.table(out)
        return batch


def run_inline(name: str, ops: list[tuple[type, Any, Resources]], items: pa.Table, sink, cpus: int) -> None:
    size = ops[0][2].batch_size
    batches = [items.slice(i, size) for i in range(0, items.num_rows, size)]
    threads = max(1, min(int(cpus), len(batches)))
    log.info(
        "%s: %d items in %d batches on %d thread(s) in this process (no Ray)",
        name,
        items.num_rows,
        len(batches),
        threads,
    )
    local = threading.local()
    shared = {i: _Shared(_build(cls, cfg)) for i, (cls, cfg, res) in enumerate(ops) if res.concurrency == 1}

    def work(batch: pa.Table) -> pa.Table:
        if not hasattr(local, "chain"):
            local.chain = _Chain(ops, shared)
        return local.chain(batch)

    with ThreadPoolExecutor(threads, thread_name_prefix=f"reelsift-{name}") as pool:
        todo = iter(batches)
        running = {pool.submit(work, b) for b in _take(todo, 2 * threads)}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                sink.add(fut.result())
            running |= {pool.submit(work, b) for b in _take(todo, len(done))}


def _take(it, n: int) -> list:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out
