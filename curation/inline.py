"""Run a small stage inside the CLI process: the same stage classes and batches as under Ray
Data, on one thread per CPU, with no Ray processes to start.

Each thread builds its own instance of every operator of the chain (as an actor would) and takes
whole batches through the chain, each operator fed slices of its own batch size (as Ray Data
feeds it); an operator limited to one actor (`concurrency: 1`) has one
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

from curation.chain import Chain

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

    def __init__(self, chain: Chain, shared: dict[int, _Shared]):
        self.ops = [
            (shared[i] if i in shared else _build(op.cls, op.cfg), getattr(op.cls, "BATCH_FORMAT", "numpy"),
             op.resources.batch_size)
            for i, op in enumerate(chain.ops)
        ]

    def __call__(self, batch: pa.Table) -> pa.Table:
        for op, fmt, size in self.ops:  # each operator takes batches of its own size, as under Ray
            if batch.num_rows == 0:
                return batch
            outs = [op(as_format(batch.slice(i, size), fmt)) for i in range(0, batch.num_rows, size)]
            batch = pa.concat_tables([out if isinstance(out, pa.Table) else pa.table(out) for out in outs],
                                     promote_options="default")
        return batch


def run_inline(name: str, chain: Chain, items: pa.Table, sink, cpus: int) -> None:
    size = chain.ops[0].resources.batch_size
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
    shared = {i: _Shared(_build(op.cls, op.cfg))
              for i, op in enumerate(chain.ops) if op.resources.concurrency == 1}

    def work(batch: pa.Table) -> pa.Table:
        if not hasattr(local, "chain"):
            local.chain = _Chain(chain, shared)
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
