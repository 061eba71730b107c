"""Two decode lanes that share one queue: NVDEC sessions on the GPU and PyAV worker processes on
the CPU, so on a GPU node their rates add.

    lanes = LaneDecoder("auto", DecodeSpec(n_frames=8, short_side=360, timeout_s=300),
                        nvdec_sessions=4, cpu_workers=6)
    results = lanes.decode(runs)    # runs: lists of neighbouring clips of one video

Each run (clips one decode pass serves, `curation.stages.score.runs_of_one_video`) is one job.
Idle NVDEC threads and idle CPU workers take the next job from the same queue; NVDEC threads
skip jobs it refuses (`filters.nvdec.refusal`), and a job NVDEC fails on goes back to the queue
for the CPU lane only ("cpu-fallback"). Mode `cpu` uses the CPU lane alone, `nvdec` the NVDEC
lane alone (a refused or failed clip is then an error row that says so).

Both lanes yield the same frame indices (`sample_indices`) at the same working size; the NVDEC
lane keeps its frames on the GPU as well, for a GPU consumer (CLIP) to use without an upload.
`decode()` may be called from several threads at once (an actor that overlaps decode and model).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.errors import PERMANENT, TIMEOUT, error_fields
from filters.video import DecodeSpec, DecodeTimeout, VideoDecodeError, even_size

log = logging.getLogger("reelsift")

MODES = ("auto", "cpu", "nvdec")
GRACE_S = 30.0


@dataclass
class Decoded:
    """One clip's frames: `host` (T, h, w, 3) uint8 numpy, `device` the same frames as a CUDA
    tensor (NVDEC lane only, else None), `step` source frames per sample, `lane` that decoded it,
    or `error` (a message for the clip's error row) and its `kind` (curation.errors)."""

    host: np.ndarray | None = None
    device: Any = None
    step: float = 0.0
    lane: str = "cpu"
    error: str | None = None
    kind: str = PERMANENT


def _failed(exc: BaseException, what: str) -> Decoded:
    """A clip's error by the stages' one rule (message and typed kind)."""
    fields = error_fields(exc, what)
    return Decoded(error=fields["error"], kind=fields["error_kind"])


def _cpu_decode(clips: list[dict], spec: DecodeSpec) -> list[tuple[np.ndarray, float]]:
    from curation.stages.score import decode_run

    return decode_run(clips, spec)


def actor_resources(res: Any, mode: str, cpu_workers: int) -> Any:
    """A GPU actor's reservation (`res`, a Resources) plus the cores of its CPU decode workers
    (only with mode auto: `nvdec` runs none)."""
    import dataclasses

    return dataclasses.replace(res, num_cpus=res.num_cpus + (cpu_workers if mode == "auto" else 0))


class _Job:
    """One run of clips: decoded by whichever lane takes it first; `ready` is set when `out` is."""

    __slots__ = ("clips", "nvdec_failed", "out", "ready")

    def __init__(self, clips: list[dict], nvdec_failed: bool = False):
        self.clips, self.nvdec_failed = clips, nvdec_failed
        self.out: list[Decoded] | None = None
        self.ready = threading.Event()


class _Queues:
    """The jobs both lanes may take (`shared`) and those for the CPU lane only (refused by or
    failed on NVDEC), under one lock with a condition per lane: an idle thread sleeps until a
    job it may take arrives, with no polling. `take` -> a job, or None once closed."""

    def __init__(self, cpu_steals: bool):
        self.shared: deque[_Job] = deque()
        self.cpu_only: deque[_Job] = deque()
        self.cpu_steals, self.closed = cpu_steals, False
        lock = threading.Lock()
        self.nvdec_wait, self.cpu_wait = threading.Condition(lock), threading.Condition(lock)

    def put(self, job: _Job, cpu_only: bool = False) -> None:
        with self.cpu_wait:
            (self.cpu_only if cpu_only else self.shared).append(job)
            if not cpu_only:
                self.nvdec_wait.notify()
            if cpu_only or self.cpu_steals:
                self.cpu_wait.notify()

    def take(self, lane: str) -> _Job | None:
        wait = self.cpu_wait if lane == "cpu" else self.nvdec_wait
        with wait:
            while True:
                if lane == "cpu" and self.cpu_only:  # refusals and fallbacks first
                    return self.cpu_only.popleft()
                if self.shared and (lane != "cpu" or self.cpu_steals):
                    return self.shared.popleft()
                if self.closed:
                    return None
                wait.wait()

    def close(self) -> None:
        with self.cpu_wait:
            self.closed = True
            self.nvdec_wait.notify_all()
            self.cpu_wait.notify_all()


class LaneDecoder:
    """See the module docstring. `counts()` gives clips per lane and the NVDEC session counters."""

    def __init__(
        self,
        mode: str,
        spec: DecodeSpec,
        nvdec_sessions: int = 4,
        cpu_workers: int = 4,
        gpu_id: int = 0,
        sessions: list | None = None,
        cpu_takes_nvdec_jobs: bool = True,
    ):
        """`sessions`: the NVDEC decoders to use (objects with `frames(path, indices)` and
        `stream`); by default `nvdec_sessions` new `filters.nvdec.NvdecDecoder`s on `gpu_id`
        when NVDEC is usable here. `cpu_takes_nvdec_jobs`: idle CPU workers also decode files
        NVDEC could take, so the two lanes' rates add (False: only what NVDEC refuses or fails)."""
        from filters import nvdec

        if mode not in MODES:
            raise ValueError(f"decode mode must be one of {MODES}, got {mode!r}")
        self.mode, self.spec = mode, spec
        self.lanes: Counter[str] = Counter()
        self.fallback_reasons: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.sessions = None
        if mode == "cpu":
            why = "decode_lane: cpu"
        else:
            why = None if sessions is not None else nvdec.unavailable(gpu_id)
        if why and mode == "nvdec":
            raise RuntimeError(f"decode_lane: nvdec was asked for but {why}; use decode_lane: auto or cpu")
        self.nvdec_on = why is None
        if why and mode == "auto":
            log.info("decode: NVDEC not used (%s); CPU lane only", why)
        self.cpu_on = mode != "nvdec" or not self.nvdec_on
        self.cpu_steals = cpu_takes_nvdec_jobs and self.nvdec_on
        self.queues = _Queues(self.cpu_steals)
        self.pool: ProcessPoolExecutor | None = None
        self.cpu_workers = max(1, cpu_workers) if self.cpu_on else 0
        if self.cpu_on:
            self._new_pool()
            for i in range(self.cpu_workers):
                self._start(self._cpu_loop, f"cpu-lane-{i}")
        if self.nvdec_on:
            if sessions is None:
                sessions = [nvdec.NvdecDecoder(gpu_id) for _ in range(nvdec_sessions)]
            self.sessions = sessions
            for i, dec in enumerate(self.sessions):
                self._start(self._nvdec_loop, f"nvdec-lane-{i}", dec)

    def _start(self, fn, name: str, *args) -> None:
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def _new_pool(self) -> None:
        # forkserver: workers never inherit this process's CUDA context or threads. No preload of
        # __main__ (in a Ray actor that is Ray's worker script): the work function is importable.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([])
        self.pool = ProcessPoolExecutor(self.cpu_workers or 1, mp_context=ctx)

    # -- the public calls ------------------------------------------------------------------
    def submit(self, runs: list[list[dict]]) -> list[_Job]:
        """Queue every run for decoding and return at once; `result(job)` waits for one."""
        from filters import nvdec

        jobs = []
        for clips in runs:
            refused = nvdec.refusal(clips[0]) if self.nvdec_on else "NVDEC off"
            job = _Job(clips)
            jobs.append(job)
            if refused is None:
                self.queues.put(job)
            elif self.cpu_on:
                self.queues.put(job, cpu_only=True)
            else:  # nvdec strict: a refused clip is an error row
                msg = f"decode_lane nvdec refuses this clip ({refused}); use decode_lane: auto"
                self._done(job, [Decoded(error=msg) for _ in clips])
        return jobs

    @staticmethod
    def result(job: _Job) -> list[Decoded]:
        """One Decoded per clip of the job's run, in order (waits until it is decoded)."""
        job.ready.wait()
        return job.out

    def decode(self, runs: list[list[dict]]) -> list[list[Decoded]]:
        """Decode every run; -> per run, one Decoded per clip, in the run's order."""
        return [self.result(job) for job in self.submit(runs)]

    def counts(self) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {"clips_by_lane": dict(self.lanes)}
            if self.fallback_reasons:
                out["fallback_reasons"] = dict(self.fallback_reasons.most_common(5))
        if self.sessions:
            out["nvdec_sessions"] = {
                "sessions": len(self.sessions),
                **{
                    k: sum(getattr(d, k, 0) for d in self.sessions)
                    for k in ("created", "reconfigured", "frames_decoded")
                },
            }
        return out

    def close(self) -> None:
        self.queues.close()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    # -- lanes -----------------------------------------------------------------------------
    def _done(self, job: _Job, out: list[Decoded]) -> None:
        job.out = out
        with self.lock:
            for d in out:
                if d.error is None:
                    self.lanes[d.lane] += 1
        job.ready.set()

    def _nvdec_loop(self, dec) -> None:
        from filters.nvdec import NvdecError

        while (job := self.queues.take("nvdec")) is not None:
            try:
                self._done(job, self._nvdec_run(dec, job.clips))
            except NvdecError as exc:
                if not self.cpu_on:
                    self._done(job, [Decoded(error=f"decode failed (nvdec): {exc}") for _ in job.clips])
                    continue
                job.nvdec_failed = True
                with self.lock:
                    self.fallback_reasons[str(exc)[:120]] += 1
                self.queues.put(job, cpu_only=True)
            except Exception as exc:  # noqa: BLE001  (a thread must never die with jobs waiting)
                self._done(job, [_failed(exc, "decode failed") for _ in job.clips])

    def _nvdec_run(self, dec, clips: list[dict]) -> list[Decoded]:
        import torch

        from curation.stages.score import sample_indices
        from filters.nvdec import NvdecError, host_copy, resize_on_device

        idx_per_clip = [
            sample_indices(int(c["start_frame"]), int(c["end_frame"]), self.spec.n_frames) for c in clips
        ]
        wanted = sorted({i for idx in idx_per_clip for i in idx})
        first = clips[0]
        t0 = time.monotonic()
        frames = dec.frames(first["path"], wanted)  # (N, H, W, 3) CUDA, coded orientation
        if time.monotonic() - t0 > self.spec.timeout_s * len(clips):
            raise NvdecError("decoding took longer than the time limit")
        size = even_size(int(first["display_width"]), int(first["display_height"]), self.spec.short_side)
        # on the session's own stream: threads never meet on the default stream
        pos = {i: k for k, i in enumerate(wanted)}
        sels = [[pos[i] for i in idx] for idx in idx_per_clip]
        with torch.cuda.stream(dec.stream):
            frames = resize_on_device(frames, size, int(first.get("rotation") or 0))
            device = [frames[sel] for sel in sels]
            host = host_copy(frames)  # waits for this stream only (the slices above included)
        out = []
        for clip, idx, sel, dev in zip(clips, idx_per_clip, sels, device, strict=True):
            step = (int(clip["end_frame"]) - int(clip["start_frame"])) / len(idx)
            out.append(Decoded(host=host[sel], device=dev, step=step, lane="nvdec"))
        return out

    def _cpu_loop(self) -> None:
        while (job := self.queues.take("cpu")) is not None:
            self._done(job, self._cpu_run(job))

    def _cpu_run(self, job: _Job) -> list[Decoded]:
        lane = "cpu-fallback" if job.nvdec_failed else "cpu"
        clips, spec = job.clips, self.spec
        try:
            got = self.pool.submit(_cpu_decode, clips, spec).result(
                timeout=spec.timeout_s * len(clips) + GRACE_S
            )
            return [Decoded(host=f, step=s, lane=lane) for f, s in got]
        except FutureTimeout:
            self._restart_pool()
            msg = f"decode failed: took longer than {spec.timeout_s:g} s a clip"
            return [Decoded(error=msg, kind=TIMEOUT) for _ in clips]
        except (VideoDecodeError, DecodeTimeout) as exc:
            if len(clips) > 1:  # find out which clip fails: one by one
                return [self._cpu_run(_Job([c], job.nvdec_failed))[0] for c in clips]
            return [_failed(exc, "decode failed")]
        except BrokenProcessPool as exc:  # a worker process died (memory, a crash): rebuild
            self._restart_pool()
            return [_failed(exc, "decode failed") for _ in clips]
        except Exception as exc:  # noqa: BLE001  (storage errors come back retryable, others permanent)
            return [_failed(exc, "decode failed") for _ in clips]

    def _restart_pool(self) -> None:
        with self.lock:
            old = self.pool
            for p in list(getattr(old, "_processes", {}).values()):
                try:
                    os.kill(p.pid, 9)
                except OSError:
                    pass
            old.shutdown(wait=False, cancel_futures=True)
            self._new_pool()
