"""A prefetching decode pool: clips decoded in worker processes, handed over in batches through
shared memory, so a GPU consumer never waits on one clip and no frame is pickled.

    pool = DecodePool(decode_samples_fn, workers=15, slot_mb=8)
    for batch in pool.batches(clip_rows, batch_size=64):    # list of Decoded, in input order
        handle = scorer.submit([d.frames for d in batch if d.error is None])
        ...                                                  # views stay valid until the next batch
    pool.close()

Each worker is pinned to one core (when there are enough), which also makes FFmpeg's automatic
thread count one per worker: N single-threaded decoders instead of N oversubscribed ones.
Runs without Ray; the pipeline's own decode (Ray actors) does not use it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

_STATE: dict[str, Any] = {}  # per worker process: the shared buffer and the decode function


@dataclass
class Decoded:
    """One input's result: frames (a view into shared memory, valid until the next batch is
    requested), whatever else fn returned, or an error message."""

    item: Any
    frames: np.ndarray | None
    extra: Any = None
    error: str | None = None


def _init(path: str, n_bytes: int, fn: Callable, counter, cores: list[int]) -> None:
    with counter.get_lock():
        rank = counter.value
        counter.value += 1
    if cores:
        os.sched_setaffinity(0, {cores[rank % len(cores)]})
    _STATE["buf"] = np.memmap(path, dtype=np.uint8, mode="r+", shape=(n_bytes,))
    _STATE["fn"] = fn


def _work(item: Any, offset: int, slot_bytes: int) -> tuple:
    try:
        out = _STATE["fn"](item)
    except Exception as exc:  # reported per item; the caller decides (a broken file is a row)
        return ("error", f"{type(exc).__name__}: {exc}")
    frames, extra = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
    frames = np.ascontiguousarray(frames)
    if frames.nbytes > slot_bytes:
        return ("inline", frames, extra)  # too big for a slot: pickled instead
    _STATE["buf"][offset : offset + frames.nbytes] = frames.reshape(-1).view(np.uint8)
    return ("slot", frames.shape, frames.dtype.str, extra)


class DecodePool:
    """`fn(item) -> frames` or `(frames, *extra)`, run in `workers` processes (spawned: fn must
    be importable). slot_mb: room for one result; larger results travel pickled (slower)."""

    def __init__(self, fn: Callable, workers: int, slot_mb: float = 8.0, pin_cores: bool = True):
        self.workers = workers
        self.slot_bytes = int(slot_mb * 2**20)
        self.fn = fn
        cores = sorted(os.sched_getaffinity(0))
        # leave the first core to the consumer when every worker can still have its own
        cores = cores[1:] if pin_cores and len(cores) > workers else (cores if pin_cores else [])
        self._cores = cores if pin_cores and len(cores) >= workers else []
        self._pool = None
        self._file = None

    def _start(self, n_slots: int) -> None:
        if self._pool is not None and self._n_slots >= n_slots:
            return
        self.close()
        self._n_slots = n_slots
        self._file = tempfile.NamedTemporaryFile(prefix="reelsift-decode-", suffix=".buf")
        self._file.truncate(n_slots * self.slot_bytes)
        self._buf = np.memmap(self._file.name, dtype=np.uint8, mode="r+", shape=(n_slots * self.slot_bytes,))
        ctx = mp.get_context("spawn")
        self._pool = ctx.Pool(
            self.workers,
            initializer=_init,
            initargs=(self._file.name, n_slots * self.slot_bytes, self.fn, ctx.Value("i", 0), self._cores),
        )

    def batches(self, items: Iterable[Any], batch_size: int, ahead: int = 2) -> Iterator[list[Decoded]]:
        """Results in input order, `batch_size` at a time, with up to `ahead` further batches
        decoding meanwhile. A batch's frame views are overwritten once the next is requested."""
        n_slots = batch_size * (ahead + 1)
        self._start(n_slots)
        free = deque(range(n_slots))
        pending: deque = deque()  # (item, slot, AsyncResult)
        it = iter(items)
        exhausted, held = False, []
        while True:
            free.extend(held)  # the consumer is done with the previous batch
            held = []
            while not exhausted and free:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                slot = free.popleft()
                res = self._pool.apply_async(_work, (item, slot * self.slot_bytes, self.slot_bytes))
                pending.append((item, slot, res))
            if not pending:
                return
            batch = []
            while pending and len(batch) < batch_size:
                item, slot, res = pending.popleft()
                batch.append(self._take(item, slot, res.get()))
                held.append(slot)
            yield batch

    def _take(self, item: Any, slot: int, out: tuple) -> Decoded:
        if out[0] == "error":
            return Decoded(item, None, error=out[1])
        if out[0] == "inline":
            return Decoded(item, out[1], out[2])
        _, shape, dtype, extra = out
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        start = slot * self.slot_bytes
        frames = self._buf[start : start + n].view(dtype).reshape(shape)
        return Decoded(item, np.asarray(frames), extra)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
