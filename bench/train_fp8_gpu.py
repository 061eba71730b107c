"""FP8 against bf16 training on one GPU: step time and the loss curve, same data, same seed.

Each precision builds a ``training.trainer.Trainer`` from ``bench.train_common.train_config``
(2b, depth 20, 480p-81f random latents = 32,760 tokens a sample, AdamW + EMA, seed 0) with
``train.optim.precision`` = bf16 or fp8 (the blocks' linear layers in float8 through torchao,
``models.fp8``), the blocks compiled, gradient checkpointing on the first ``--checkpoint-blocks``
blocks, and trains in chunks of ``--chunk`` steps until ``--steps`` or until the precision's
``--budget-s`` is spent (the JSON is rewritten after every chunk, so a cut run keeps its curve).
Both runs see the same initial weights, batches and noise, so their loss curves differ only by
the precision. Reported per precision: median step time after ``--warmup`` steps, the first
steps' time (compile), peak memory, the loss at every step; then the speed-up and the relative
loss difference at the last step both reached (and over its last 10 steps, smoothed).

    python bench/train_fp8_gpu.py --out bench/results                   # CUDA: 200 steps each
    python bench/train_fp8_gpu.py --smoke --out /tmp/bench              # CPU: tiny model, 4 steps
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Result  # noqa: E402
from bench.train_common import LATENT_480P_81F, RandomLatents, RandomText, timed_fit, train_config  # noqa: E402
from models.fp8 import fp8_layers  # noqa: E402
from training.checkpoint import unwrap  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def run(precision: str, args, work: Path, res: Result, record: dict) -> None:
    """Train one precision in chunks, filling ``record`` (and rewriting the JSON) as it goes."""
    cuda = torch.cuda.is_available() and not args.smoke
    cfg = train_config(work / precision, depth=args.depth, grad_checkpoint=args.checkpoint_blocks > 0,
                       batch=1, steps=args.steps, latent=args.latent, device="cuda" if cuda else "cpu",
                       model="tiny" if args.smoke else "2b", precision=precision)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tr = Trainer(cfg, loader=RandomLatents(1, args.latent), text_encoder=RandomText(*args.text),
                 compile_blocks=cuda and not args.no_compile,
                 checkpoint_blocks=args.checkpoint_blocks or None)
    tr.save = lambda: None  # 2b checkpoints are ~25 GB: not written here
    record.update(fp8_layers=fp8_layers(unwrap(tr.model)), losses=[], step_s_all=[])
    times: list[float] = []
    while tr.step < args.steps:
        chunk_end = min(args.steps, tr.step + args.chunk)
        fit, chunk_times = timed_fit(tr, chunk_end)
        times += chunk_times
        record["losses"] += [round(loss, 6) for _, loss in fit.losses]
        if times:
            record.setdefault("first_step_s", round(times[0] - t0, 2))  # build + compile + step 1
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        record["step_s_all"] = [round(g, 4) for g in gaps]
        timed = gaps[max(0, args.warmup - 1):]
        record.update(steps=tr.step, step_s=statistics.median(timed) if timed else None,
                      peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                      wall_s=round(time.perf_counter() - t0, 1))
        res.write()
        print(f"{precision}: step {tr.step}, loss {record['losses'][-1]:.4f}, "
              f"step {record['step_s']} s", flush=True)
        if time.perf_counter() - t0 > args.budget_s and tr.step < args.steps:
            record["stopped"] = f"budget {args.budget_s:.0f} s reached at step {tr.step}"
            break
    del tr
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def compare(runs: dict) -> dict:
    a, b = runs.get("bf16", {}), runs.get("fp8", {})
    la, lb = a.get("losses") or [], b.get("losses") or []
    n = min(len(la), len(lb))
    if not n:
        return {}
    k = min(10, n)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {"common_steps": n, "loss_bf16": la[n - 1], "loss_fp8": lb[n - 1],
           "loss_rel_diff_last": abs(lb[n - 1] - la[n - 1]) / abs(la[n - 1]),
           f"loss_rel_diff_mean_last{k}": abs(mean(lb[n - k:n]) - mean(la[n - k:n])) / abs(mean(la[n - k:n]))}
    if a.get("step_s") and b.get("step_s"):
        out["speedup_fp8_over_bf16"] = a["step_s"] / b["step_s"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp8"], choices=["bf16", "fp8"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=10, help="steps between JSON rewrites")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the median step time")
    ap.add_argument("--budget-s", type=float, default=1e9, help="per precision: stop after this")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--latent", type=int, nargs=4, default=LATENT_480P_81F, metavar=("C", "F", "H", "W"))
    ap.add_argument("--checkpoint-blocks", type=int, default=14,
                    help="recompute the first N blocks in backward (0 = none; 14 of 20 leaves an H100 "
                         "80GB a margin: ~60 GiB estimated from train_gpu's 38 GiB all / 110 GiB none)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--merge-from", default=None,
                    help="folder holding an earlier result of this bench on this card: its runs of the "
                         "other precisions are kept (one precision per device call)")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU: tiny model, depth 1, 16x3x16x16 latents, 4 steps")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        ap.error("no CUDA device: this bench times a GPU (use --smoke for a CPU check)")
    args.text = (2304, 300)
    if args.smoke:
        args.depth, args.latent, args.text = 1, (16, 3, 16, 16), (64, 8)
        args.steps, args.chunk, args.warmup = 4, 2, 1
        args.checkpoint_blocks = min(args.checkpoint_blocks, 1)
    args.latent = tuple(args.latent)

    res = Result("train_fp8_smoke" if args.smoke else "train_fp8_gpu", out=args.out)
    res.add("config", {"model": "tiny" if args.smoke else "2b", "depth": args.depth, "latent": args.latent,
                       "batch": 1, "steps": args.steps, "checkpointed_blocks": args.checkpoint_blocks,
                       "compiled_blocks": not args.no_compile, "seed": 0,
                       "fp8": "torchao float8, dynamic tensorwise scaling, blocks' linears (models/fp8.py)",
                       "data": "random latents and text features (bench/train_common.py)"})
    runs: dict = {}
    earlier = Path(args.merge_from) / res.path.name if args.merge_from else None
    if earlier is not None and earlier.is_file():
        kept = json.loads(earlier.read_text()).get("runs", {})
        runs.update({p: r for p, r in kept.items() if p not in args.precisions})
        res.add("merged_from", {"file": str(earlier), "precisions": sorted(runs)})
    res.add("runs", runs)
    work = Path(tempfile.mkdtemp(prefix="train_fp8_"))
    failed = False
    for precision in args.precisions:
        runs[precision] = {}
        try:
            run(precision, args, work, res, runs[precision])
        except Exception as exc:  # noqa: BLE001 - a failed precision is recorded; the next one runs
            runs[precision]["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            print(precision, runs[precision]["error"], flush=True)
            failed = True
            gc.collect()
        res.add("comparison", compare(runs))
        res.write()
    res.table(["precision", "steps", "step s", "first step s", "peak GiB", "loss first", "loss last"],
              [(p, r.get("steps"), r.get("step_s") or "-", r.get("first_step_s", "-"),
                r.get("peak_gib") or "-", r["losses"][0], r["losses"][-1])
               for p, r in runs.items() if r.get("losses")])
    print("comparison:", res.data["comparison"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
