"""Data-parallel training through the real trainer: DDP and FSDP2 against one GPU.

One process (``--reference``) trains with gradient accumulation W (the global batch of W
processes), then ``torchrun --nproc_per_node=W`` runs, in one process group:

  ddp      the same steps with DDP (one micro-batch per process)
  fsdp     the same steps with FSDP2 (train.dist.strategy=fsdp)
  resume   FSDP2 at reduced size: 6 steps with a checkpoint at step 3, then a new Trainer
           resumes from it and runs to 6; its losses must repeat the uninterrupted run's

The trainer seeds each micro-batch by its index in the global batch and the random-latent loader
gives process r of W global batch i*W + r, so the reference and the W-process runs see the same
numbers; their loss curves differ only by reduction order and bf16 rounding. Scaling =
reference step time / W-process step time (both process the same global batch per step).

    CUDA_VISIBLE_DEVICES=0 python bench/train_gpu_multi.py --reference --world 2 --out bench/results
    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node=2 bench/train_gpu_multi.py --out bench/results
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Result  # noqa: E402
from bench.train_common import (  # noqa: E402
    LATENT_480P_81F,
    RandomLatents,
    RandomText,
    median_step_s,
    timed_fit,
    train_config,
)
from training.trainer import Trainer  # noqa: E402

SMALL_LATENT = (16, 6, 32, 32)  # resume phase: 6 x 16 x 16 tokens


def rel_diffs(a: list[float], b: list[float]) -> list[float]:
    return [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True)]


def train(cfg, rank, world, latent, resume=False, steps=None, save=True, text_dim=None):
    text = RandomText() if text_dim is None else RandomText(dim=text_dim, length=8)
    tr = Trainer(cfg, resume=resume, loader=RandomLatents(cfg.data.batch_size, latent, rank, world),
                 text_encoder=text)
    if not save:
        tr.save = lambda: None
    res, times = timed_fit(tr, steps)
    cuda = torch.cuda.is_available()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    del tr
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return res, times, peak


def run_reference(args) -> None:
    cfg = train_config(Path(args.work) / "ref", depth=args.depth, accum=args.world, steps=args.steps,
                       latent=args.latent, **args.where)
    res, times, peak = train(cfg, 0, 1, args.latent, save=False, text_dim=args.text_dim)
    rec = {"world": 1, "grad_accum": args.world, "losses": [v for _, v in res.losses],
           "step_s": median_step_s(times, 2), "peak_gib": peak}
    Path(args.ref).write_text(json.dumps(rec))
    print("reference", rec, flush=True)


def run_distributed(args) -> None:
    cuda = args.where["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    work = Path(args.work)
    out: dict = {"world": world}
    ref = json.loads(Path(args.ref).read_text()) if Path(args.ref).exists() else None
    for strategy in ("ddp", "fsdp"):
        cfg = train_config(work / strategy, depth=args.depth, steps=args.steps, strategy=strategy,
                           latent=args.latent, **args.where)
        res, times, peak = train(cfg, rank, world, args.latent, save=False, text_dim=args.text_dim)
        rec = {"losses": [v for _, v in res.losses], "step_s": median_step_s(times, 2), "peak_gib_rank": peak}
        if ref is not None:
            d = rel_diffs(rec["losses"], ref["losses"])
            rec.update(max_rel_diff_vs_1gpu=max(d), mean_rel_diff_vs_1gpu=sum(d) / len(d),
                       scaling_vs_1gpu=ref["step_s"] / rec["step_s"])
        out[strategy] = rec
        if rank == 0:
            print(strategy, {k: v for k, v in rec.items() if k != "losses"}, flush=True)
    # FSDP2 checkpoint + resume (reduced size: a 2b-width checkpoint with AdamW + EMA is ~25 GB)
    latent = SMALL_LATENT if cuda else args.latent
    small = dict(depth=2, steps=6, strategy="fsdp", every=3, latent=latent, **args.where)
    full, _, _ = train(train_config(work / "resume_a", **small), rank, world, latent, text_dim=args.text_dim)
    if rank == 0:
        (work / "resume_b").mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "resume_a" / "step-0000003.pt", work / "resume_b" / "step-0000003.pt")
    dist.barrier()
    part, _, _ = train(train_config(work / "resume_b", **small), rank, world, latent, resume=True,
                       text_dim=args.text_dim)
    d = rel_diffs([v for _, v in part.losses], [v for _, v in full.losses[3:]])
    out["fsdp_resume"] = {"steps": [s for s, _ in part.losses], "losses_resumed": [v for _, v in part.losses],
                          "losses_uninterrupted": [v for _, v in full.losses[3:]], "max_rel_diff": max(d)}
    if rank == 0:
        print("fsdp_resume", out["fsdp_resume"], flush=True)
        res = Result("train_gpu_multi", out=args.out)
        res.add("config", {"model": "2b", "depth": args.depth, "latent": args.latent, "global_batch": world,
                           "steps": args.steps, "grad_checkpoint": True, "nccl_nvls": "off"})
        res.add("reference_1gpu", ref)
        res.add("runs", out)
        rows = [(s, out[s]["step_s"], out[s].get("scaling_vs_1gpu"), out[s].get("max_rel_diff_vs_1gpu"),
                 out[s]["peak_gib_rank"]) for s in ("ddp", "fsdp")]
        if ref is not None:
            rows.insert(0, ("1 GPU, accum 2", ref["step_s"], 1.0, 0.0, ref["peak_gib"]))
        res.table(["run", "step s", "scaling", "max loss rel diff", "peak GiB/GPU"], rows)
        res.write()
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "train_gpu_multi"))
    ap.add_argument("--ref", default=None, help="reference JSON (default: <work>/reference.json)")
    ap.add_argument("--reference", action="store_true", help="run the one-GPU reference")
    ap.add_argument("--world", type=int, default=2, help="--reference: processes it stands for")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--latent", type=int, nargs=4, default=LATENT_480P_81F)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model, gloo, CPU: the same code paths")
    args = ap.parse_args()
    args.latent = tuple(args.latent)
    args.where, args.text_dim = {"device": "cuda"}, None
    if args.cpu_smoke:
        args.where, args.text_dim = {"device": "cpu", "model": "tiny"}, 64
        args.latent, args.depth, args.steps = (4, 4, 8, 8), 2, 4
    Path(args.work).mkdir(parents=True, exist_ok=True)
    args.ref = args.ref or str(Path(args.work) / "reference.json")
    run_reference(args) if args.reference else run_distributed(args)


if __name__ == "__main__":
    main()
