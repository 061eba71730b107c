"""The small harness every bench shares: which machine ran it, timing, the table and the JSON.

    from bench.harness import Result, card_name, timed
    res = Result("attention_gpu", out="bench/results")    # names the card or CPU in the JSON
    with timed() as t:
        work()
    res.add("fwd_ms", t.ms)
    res.table([("480p", {...}), ("720p", {...})])           # prints a Markdown table
    res.write()                                             # bench/results/attention_gpu_<card>.json

A bench is run as `python bench/<name>.py` or `python -m bench.<name>`; both find this module.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def card_name() -> str:
    """The accelerator that runs this bench ("NVIDIA H200"), or the CPU model on a CPU-only host."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} x{os.cpu_count()}"


def slug(name: str) -> str:
    """A file-name-safe form of a card name: "NVIDIA H200" -> "nvidia_h200"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def machine() -> dict[str, Any]:
    """What a result file records about where it ran."""
    info: dict[str, Any] = {
        "card": card_name(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "argv": sys.argv,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["sms"] = props.multi_processor_count
            info["gpus"] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


@dataclass
class Timer:
    seconds: float = 0.0

    @property
    def ms(self) -> float:
        return self.seconds * 1e3


@contextmanager
def timed(sync_cuda: bool = False):
    """Wall time of the block; with sync_cuda, the GPU's queued work is included."""
    t = Timer()
    if sync_cuda:
        _cuda_sync()
    t0 = time.perf_counter()
    try:
        yield t
    finally:
        if sync_cuda:
            _cuda_sync()
        t.seconds = time.perf_counter() - t0


def _cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_bench_ms(fn, warmup: int = 25, rep_ms: int = 200) -> float:
    """Median milliseconds of fn() on the GPU (triton's do_bench: flushes L2 between runs)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep_ms, return_mode="median")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; floats get 4 significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


class Result:
    """One bench's JSON: the machine it ran on plus whatever the bench adds."""

    def __init__(self, name: str, out: str | Path = "bench/results", suffix: str | None = None):
        self.name = name
        self.out = Path(out)
        self.data: dict[str, Any] = {"bench": name, "machine": machine()}
        # The card leads the JSON so a reader never has to guess which machine produced it.
        self.data["card"] = self.data["machine"]["card"]
        if suffix is None:
            suffix = "cpu" if self.data["card"].startswith("cpu:") else slug(self.data["card"])
        self.suffix = suffix

    def add(self, key: str, value: Any) -> Any:
        self.data[key] = value
        return value

    @property
    def path(self) -> Path:
        return self.out / (f"{self.name}_{self.suffix}.json" if self.suffix else f"{self.name}.json")

    def write(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)
        print(f"wrote {self.path}")
        return self.path

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
        text = format_table(headers, list(rows))
        print(f"\n{title or self.name}  ({self.data['card']})\n{text}")
        return text
