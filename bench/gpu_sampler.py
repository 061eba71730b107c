"""GPU busy %, NVDEC busy % and memory, sampled by nvidia-smi every 200 ms while a `with` block runs.

    with GpuSampler() as s:
        work()
    s.stats   # {"gpu_busy_pct", "dec_busy_pct", "dec_busy_pct_max", "mem_used_mib_max", "smi_samples"}

On a machine without nvidia-smi the stats stay empty (CPU smoke runs).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

FIELDS = "utilization.gpu,utilization.decoder,memory.used"


class GpuSampler:
    def __init__(self, gpu: int = 0, period_ms: int = 200):
        self.gpu, self.period_ms = gpu, period_ms
        self.proc, self.stats = None, {}
        self.path = Path(tempfile.mkstemp(prefix="smi-", suffix=".csv")[1])

    def __enter__(self) -> GpuSampler:
        try:
            self.proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    f"--query-gpu={FIELDS}",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    str(self.period_ms),
                    "-i",
                    str(self.gpu),
                ],
                stdout=self.path.open("w"),
                stderr=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            self.proc = None
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        self.proc.wait()
        rows = []
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                rows.append(tuple(int(p) for p in parts))
        self.path.unlink(missing_ok=True)
        if rows:
            util, dec, mem = np.array(rows).T
            self.stats = {
                "gpu_busy_pct": round(float(util.mean()), 1),
                "dec_busy_pct": round(float(dec.mean()), 1),
                "dec_busy_pct_max": int(dec.max()),
                "mem_used_mib_max": int(mem.max()),
                "smi_samples": len(rows),
            }
