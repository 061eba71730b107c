"""Loader throughput on CPU: decode + bucket + crop only (no model), per tier and worker count.

    .venv/bin/python -m bench.loader_cpu --root R [--config configs/offline.yaml] [--batches 200]

Prints a table and writes bench/results/loader_cpu.json. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from bench.harness import Result
from training.config import load_train_config
from training.data import measure_throughput


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--config", default="configs/offline.yaml")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--workers", default="0,2")
    args = ap.parse_args()
    base = load_train_config(args.config, ["data.drop_last=false", "data.batch_size=1"], root=args.root)
    tiers = sorted(p.name for p in (Path(args.root) / "shards").iterdir() if p.is_dir())
    rows = []
    for tier in tiers:
        for workers in (int(w) for w in args.workers.split(",")):
            cfg = replace(base, data=replace(base.data, tiers=(tier,), num_workers=workers))
            tp = measure_throughput(cfg, max_batches=args.batches, epochs=args.epochs)
            rows.append(dict(tier=tier, workers=workers, num_frames=cfg.data.num_frames,
                             crop=list(cfg.data.bucket_sizes(tier)[0]), **tp.as_dict()))
    res = Result("loader_cpu", out=Path(__file__).parent / "results", suffix="")
    res.add("rows", rows)
    cols = ["tier", "workers", "samples", "samples_per_s", "frames_per_s", "failed"]
    res.table(cols, ([r[c] for c in cols] for r in rows))
    res.write()


if __name__ == "__main__":
    main()
