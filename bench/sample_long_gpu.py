"""GPU benchmark of block-by-block long-video sampling: memory and time per block stay flat.

Runs ``training.long_video.BlockSampler`` (the sampler's own code path) with the "2b" Linear DiT
at 480p Wan-VAE latent shapes (16 x 60 x 104 per latent frame, 10 latent frames per block = 15,600
tokens, batch 2 for classifier-free guidance) for up to 64 blocks, recording each block's time and
peak allocated memory. Beside it, a softmax twin: the same model with each layer's self-attention
replaced by SDPA over a growing per-layer KV cache of every earlier token (RoPE on q and k); it runs
until it runs out of memory or out of its time budget. Random weights and random text features:
speed and memory do not depend on them. No VAE decoding is timed.

    python bench/sample_long_gpu.py --out bench/results              # CUDA
    python bench/sample_long_gpu.py --config tiny --latent 4 8 8 --block-frames 2 --blocks 6 \\
        --device cpu --dtype fp32 --text-len 8 --out /tmp                # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Result  # noqa: E402
from models.linear_dit import BlockState, DiTState, build  # noqa: E402
from models.rope import apply_rope  # noqa: E402
from training.long_video import BlockSampler  # noqa: E402
from training.sampler import Conditioning, SampleOptions  # noqa: E402

MARKS = (1, 4, 16, 64)


class KVCache(NamedTuple):
    """Softmax twin's per-layer state: RoPE'd keys and values of every earlier token."""

    K: torch.Tensor  # (B, H, N, D)
    V: torch.Tensor  # (B, H, N, D)


def use_kv_attention(model) -> None:
    """Replace every block's linear self-attention by softmax SDPA over a growing KV cache."""
    for blk in model.blocks:
        attn = blk.attn

        def forward(x, grid, state, attn=attn):
            b, f, s, c = x.shape
            qkv = attn.qkv(x).view(b, f * s, 3, attn.heads, attn.head_dim)  # (B, N, 3, H, D)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, D)
            q = apply_rope(attn.q_norm(q).float(), grid.cos, grid.sin).to(x.dtype)
            k = apply_rope(attn.k_norm(k).float(), grid.cos, grid.sin).to(x.dtype)
            K, V = torch.cat([state.K, k], dim=2), torch.cat([state.V, v], dim=2)  # (B, H, N_all, D)
            out = F.scaled_dot_product_attention(q, K, V)  # (B, H, N, D)
            return attn.proj(out.transpose(1, 2).reshape(b, f, s, c)), KVCache(K, V)

        attn.forward = forward


def kv_init_state(model, batch, height, width, device, dtype) -> DiTState:
    cfg = model.cfg
    empty = torch.zeros(batch, cfg.heads, 0, cfg.head_dim, device=device, dtype=dtype)
    base = model.init_state(batch, height, width, device)
    return DiTState([BlockState(KVCache(empty, empty), s.conv) for s in base.layers], 0)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(sampler: BlockSampler, n: int, device: str, budget_s: float) -> dict:
    """Generate up to n blocks; per block: seconds, peak allocated bytes, state bytes."""
    rows, stop, started = [], "done", time.perf_counter()
    for k in range(n):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t0 = time.perf_counter()
        try:
            sampler.next_block()
            sync(device)
        except torch.OutOfMemoryError:
            stop = f"out of memory in block {k + 1}"
            break
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
        rows.append({"block": k + 1, "s": dt, "peak_bytes": peak, "state_bytes": sampler.state_nbytes()})
        spent = time.perf_counter() - started
        if k + 1 < n and spent + 1.5 * dt > budget_s:  # the next block is at least as slow
            stop = f"time budget ({budget_s:.0f} s) reached after block {k + 1}"
            break
    return {"blocks": rows, "stopped": stop}


def summary(res: dict) -> dict:
    """Per mark n: time of block n (median of blocks n-2..n), its peak memory and state bytes."""
    rows, out = res["blocks"], {}
    for n in MARKS:
        if n <= len(rows):
            near = [r["s"] for r in rows[max(0, n - 3):n]]
            r = rows[n - 1]
            out[n] = {"s_per_block": statistics.median(near), "peak_gib": r["peak_bytes"] / 2**30,
                      "state_mib": r["state_bytes"] / 2**20}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--config", default="2b")
    ap.add_argument("--depth", type=int, default=None, help="override the config's depth")
    ap.add_argument("--latent", type=int, nargs=3, default=(16, 60, 104), metavar=("C", "H", "W"))
    ap.add_argument("--block-frames", type=int, default=10)
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--solver", default="euler")
    ap.add_argument("--cfg-scale", type=float, default=4.5)
    ap.add_argument("--text-len", type=int, default=300)
    ap.add_argument("--twin-budget-s", type=float, default=150.0, help="time budget of the softmax twin")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = ap.parse_args()

    device, dtype = args.device, {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    c, h, w = args.latent
    overrides = {"in_channels": c, "attention": "block_causal", "block_frames": args.block_frames}
    if args.depth:
        overrides["depth"] = args.depth
    torch.manual_seed(0)
    with torch.device(device):
        model = build(args.config, **overrides)
    model = model.to(dtype).eval().requires_grad_(False)
    cfg = model.cfg
    opts = SampleOptions(steps=args.steps, solver=args.solver, cfg_scale=args.cfg_scale, shift=3.0,
                         block_frames=args.block_frames)
    groups = 1 if args.cfg_scale == 1.0 else 2
    text = torch.randn(groups, args.text_len, cfg.text_dim, device=device, dtype=dtype)
    cond = Conditioning(text, torch.ones(groups, args.text_len, dtype=torch.bool, device=device),
                        args.cfg_scale)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    BlockSampler(model, cond, (h, w), opts, gen(), device).next_block()  # warm-up (handles, kernels)
    linear = run(BlockSampler(model, cond, (h, w), opts, gen(), device), args.blocks, device, 1e9)

    use_kv_attention(model)
    state = kv_init_state(model, groups, h, w, device, dtype)
    twin = run(BlockSampler(model, cond, (h, w), opts, gen(), device, state=state), args.blocks, device,
               args.twin_budget_s)

    lin_rows = linear["blocks"]
    flat = {}
    if len(lin_rows) >= 64:
        t4 = statistics.median(r["s"] for r in lin_rows[2:5])
        t64 = statistics.median(r["s"] for r in lin_rows[59:64])
        flat = {"time_64_over_4": t64 / t4,
                "peak_64_over_4": lin_rows[63]["peak_bytes"] / max(lin_rows[3]["peak_bytes"], 1)}
    res = Result("sample_long_gpu", out=args.out)
    result = {
        "model": {"config": args.config, "depth": cfg.depth, "hidden": cfg.hidden, "heads": cfg.heads,
                  "head_dim": cfg.head_dim, "reduced_depth": args.depth is not None,
                  "weights": "random init", "dtype": args.dtype},
        "latent_per_frame": [c, h, w],
        "block_frames": args.block_frames,
        "tokens_per_block": args.block_frames * (h // 2) * (w // 2),
        "batch": groups,
        "text_len": args.text_len,
        "options": {"steps": args.steps, "solver": args.solver, "cfg_scale": args.cfg_scale},
        "model_calls_per_block": args.steps * (2 if args.solver == "heun" else 1) + 1,
        "notes": [
            "one run of N blocks; the row for n is block n (time: median of blocks n-2..n; peak: "
            "torch.cuda.max_memory_allocated during block n, reset before each block)",
            "linear path: forward_block -> models.ops.step: on CUDA the fused Triton kernels with "
            "an initial state (float32 sums), elsewhere the PyTorch reference step",
            "softmax twin: same weights and layers, SDPA over a per-layer KV cache of all earlier "
            "tokens (torch.cat per call); stops at OOM or its time budget",
            "no VAE decode timed (no Wan VAE weights on the device)",
        ],
        "linear": {**linear, "summary": summary(linear), "flatness": flat},
        "softmax_kv": {**twin, "summary": summary(twin)},
    }
    res.data.update(result)

    ls, ts = result["linear"]["summary"], result["softmax_kv"]["summary"]
    cell = lambda r, k: r[k] if r else "-"  # noqa: E731
    res.table(["blocks", "linear s/block", "linear peak GiB", "linear state MiB", "softmax-KV s/block",
               "softmax-KV peak GiB", "softmax-KV state MiB"],
              [(n, cell(ls.get(n), "s_per_block"), cell(ls.get(n), "peak_gib"), cell(ls.get(n), "state_mib"),
                cell(ts.get(n), "s_per_block"), cell(ts.get(n), "peak_gib"), cell(ts.get(n), "state_mib"))
               for n in MARKS],
              title=f"sample_long_gpu: {args.config} depth {cfg.depth}, {args.dtype}, "
                    f"{result['tokens_per_block']:,} tokens/block x batch {groups}, "
                    f"{result['model_calls_per_block']} model calls/block")
    print(f"linear: {linear['stopped']}; flatness {flat}")
    print(f"softmax-KV: {twin['stopped']}")
    res.write()


if __name__ == "__main__":
    main()
