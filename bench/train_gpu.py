"""Training throughput and MFU of the real trainer on one GPU: 2b, depth 20, 480p-81f latents
(32,760 tokens per sample), bf16 autocast, AdamW + EMA, random latents and text features.

Each mode builds a ``training.trainer.Trainer`` (random-latent loader injected, checkpoint
writing off) and runs ``fit()``: the step time is the median gap between metrics rows
(log_every=1; the loss is read every step), after warm-up steps. Modes: gradient checkpointing
on every block, on the first 6 of 20 (the rest keep their activations) or off, each eager or with
the blocks compiled by torch.compile. A torch-profiler pass over two steps of the
fastest eager mode groups the GPU time by kind of kernel. MFU counts FLOPs as
``bench.train_common.flops_per_sample`` says (6 x params x tokens + attention, and an exact
count), over the H200's dense bf16 peak (989 TFLOP/s) and over a measured bf16 matmul rate.

    python bench/train_gpu.py --out bench/results                     # CUDA
    python bench/train_gpu.py --modes gc --steps 3 --warmup 1 --depth 2 --latent 16 3 16 16   # quick
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Result, gpu_bench_ms  # noqa: E402
from bench.train_common import (  # noqa: E402
    H200_BF16_PEAK,
    LATENT_480P_81F,
    RandomLatents,
    RandomText,
    flops_per_sample,
    median_step_s,
    timed_fit,
    train_config,
)
from training.checkpoint import unwrap  # noqa: E402
from training.trainer import Trainer  # noqa: E402

MODES = {  # name -> (gradient checkpointing, compiled blocks, checkpointed blocks: None = all)
    "gc": (True, False, None),
    "gc6": (True, False, 6),
    "no_gc": (False, False, None),
    "compiled_gc": (True, True, None),
    "compiled_gc6": (True, True, 6),
    "compiled_no_gc": (False, True, None),
}
KINDS = [  # (kind, regex over kernel names), first match wins
    ("linear attention (Triton)", r"_state_kernel|_out_kernel|_bwd_q_kernel|_bwd_kv_kernel"),
    ("matmul", r"gemm|matmul|cutlass|xmma|nvjet|wgmma|sm90_"),
    ("cross-attention (SDPA)", r"flash|fmha|efficient_attention|attention"),
    ("convolution", r"conv|depthwise|implicit_gemm"),
    ("norms", r"norm"),
    ("optimizer + EMA", r"adam|multi_tensor|foreach|lerp"),
    ("compiled (Triton, inductor)", r"^triton_"),
    ("copies / layout", r"copy|cat|transpose|permute|contiguous"),
    ("elementwise / reductions", r"elementwise|vectorized|reduce|unrolled"),
]


def matmul_tflops() -> float:
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * 8192**3 / (gpu_bench_ms(lambda: a @ b) * 1e-3) / 1e12


def run_mode(name: str, args, work: Path) -> tuple[dict, Trainer | None]:
    gc_on, compiled, ckpt_blocks = MODES[name]
    cfg = train_config(work / name, depth=args.depth, grad_checkpoint=gc_on, batch=args.batch,
                       steps=args.warmup + args.steps, latent=args.latent)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tr = Trainer(cfg, loader=RandomLatents(args.batch, args.latent), text_encoder=RandomText(),
                 compile_blocks=compiled, checkpoint_blocks=ckpt_blocks)
    tr.save = lambda: None  # 2b checkpoints are ~25 GB: not written here
    res, times = timed_fit(tr)
    wall = time.perf_counter() - t0
    dts = [b - a for a, b in zip(times, times[1:], strict=False)][args.warmup - 1:]
    step_s = median_step_s(times, args.warmup)
    rec = {"grad_checkpoint": gc_on, "checkpointed_blocks": (ckpt_blocks or args.depth) if gc_on else 0,
           "compiled_blocks": compiled, "steps": res.step,
           "step_s": step_s, "step_s_all": [round(x, 4) for x in dts],
           "first_steps_s": round(times[args.warmup - 1] - t0, 2) if times else None,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
           "loss_first": res.losses[0][1], "loss_last": res.losses[-1][1], "wall_s": round(wall, 1)}
    return rec, tr


def profile_steps(tr: Trainer, steps: int = 2) -> dict:
    """GPU time per kind of kernel over ``steps`` optimizer steps of the trainer's own loop."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        tr.fit(steps=tr.step + steps)
        torch.cuda.synchronize()
    events = [(e.key, e.device_time_total) for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(t for _, t in events)
    by_kind: dict[str, float] = {}
    for key, t in events:
        kind = next((k for k, rx in KINDS if re.search(rx, key, re.I)), "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + t
    top = sorted(events, key=lambda e: -e[1])[:25]
    return {"gpu_ms_per_step": total / 1e3 / steps,
            "by_kind_ms_per_step": {k: round(v / 1e3 / steps, 2)
                                    for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms_per_step": [(k[:90], round(t / 1e3 / steps, 3)) for k, t in top]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--latent", type=int, nargs=4, default=LATENT_480P_81F, metavar=("C", "F", "H", "W"))
    ap.add_argument("--steps", type=int, default=6, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["gc", "gc6", "compiled_gc", "compiled_no_gc"],
                    choices=list(MODES))
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-compiled", action="store_true",
                    help="also profile each compiled mode (where the compiled step's time goes)")
    args = ap.parse_args()
    args.latent = tuple(args.latent)

    res = Result("train_gpu", out=args.out)
    peak_meas = res.add("matmul_bf16_tflops_measured", matmul_tflops())
    work = Path(tempfile.mkdtemp(prefix="train_gpu_"))
    modes, rows, fl, best = {}, [], None, None
    for name in args.modes:
        print(f"--- {name}", flush=True)
        try:
            rec, tr = run_mode(name, args, work)
        except torch.OutOfMemoryError as exc:
            modes[name] = {"error": f"out of memory: {str(exc)[:200]}"}
            print(modes[name], flush=True)
            tr = None
            gc.collect()
            continue
        except Exception as exc:  # noqa: BLE001 - a mode that fails (e.g. compile) is recorded, not fatal
            modes[name] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            print(modes[name], flush=True)
            tr = None
            gc.collect()
            continue
        model = unwrap(tr.model)
        if fl is None:
            c, f, h, w = args.latent
            ps = model.cfg.patch_size
            fl = res.add("flops_per_sample", flops_per_sample(model, (f, h // ps[1], w // ps[2])))
        tokens = fl["tokens"] * args.batch
        rec.update(tokens_per_s=tokens / rec["step_s"],
                   mfu_issue=fl["issue"] * args.batch / rec["step_s"] / H200_BF16_PEAK,
                   mfu_exact=fl["exact"] * args.batch / rec["step_s"] / H200_BF16_PEAK,
                   mfu_issue_vs_measured_matmul=fl["issue"] * args.batch / rec["step_s"] / (peak_meas * 1e12))
        modes[name] = rec
        print({k: v for k, v in rec.items() if k != "step_s_all"}, flush=True)
        fastest_eager = not rec["compiled_blocks"] and (best is None or rec["step_s"] < modes[best]["step_s"])
        best = name if fastest_eager else best
        if not args.no_profile and (fastest_eager or (args.profile_compiled and rec["compiled_blocks"])):
            modes[name]["profile"] = profile_steps(tr)
            print(modes[name]["profile"], flush=True)
        rows.append((name, rec))
        res.add("modes", modes)
        res.write()  # after every mode: a later mode that hangs (compile) loses nothing
        del tr, model
        gc.collect()
        torch.cuda.empty_cache()
    res.add("config", {"model": "2b", "depth": args.depth, "batch": args.batch, "latent": args.latent,
                       "tokens_per_sample": fl["tokens"] if fl else None, "precision": "bf16 autocast",
                       "optimizer": "AdamW (fused) + EMA", "data": "random latents (no VAE, no loader)",
                       "peak_flops": H200_BF16_PEAK})
    res.add("modes", modes)
    res.table(["mode", "step s", "tokens/s", "peak GiB", "MFU (6PN+attn)", "MFU (exact)"],
              [(n, r["step_s"], r["tokens_per_s"], r["peak_gib"], r["mfu_issue"], r["mfu_exact"])
               for n, r in rows])
    res.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
