"""GPU benchmark of linear attention: fused Triton vs PyTorch vs SDPA, against the memory floor.

Shapes: 20 heads x 112, batch 1, bf16, at 32,760 tokens (480p, 81 frames -> 21 x 30 x 52 latent
tokens) and 75,600 tokens (720p: 21 x 45 x 80). Block-causal uses blocks of 3 latent frames.
Also: the fused step with a state (the block sampler's call: batch 2, 15,600 tokens) against
PyTorch's ``naive.step``, and one LinearDiT block of the "2b" config against the same block with
softmax SDPA self-attention (RoPE on q and k).

The sweep (default) times tile variants per kernel at 720p on this card and keeps the fastest in
``models.ops.triton_common.TILES_BY_CARD[<card>]`` for the rest of the run; the JSON records them
(copy them into that table to make them the card's default).

    python bench/attention_gpu.py --out bench/results     # needs CUDA + Triton
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Result, card_name, gpu_bench_ms  # noqa: E402
from models.linear_dit import Block, Grid, get_config  # noqa: E402
from models.ops import chunked, naive  # noqa: E402
from models.ops import triton_common as C  # noqa: E402
from models.ops import triton_linear_attn as T  # noqa: E402
from models.rope import apply_rope, rope_3d  # noqa: E402

SHAPES = {"480p": (21, 30, 52), "720p": (21, 45, 80)}
HEADS, HEAD_DIM, BLOCK_FRAMES, TEXT_LEN = 20, 112, 3, 300
STEP_SHAPE = (2, 10, 30, 52)  # sampler: CFG batch 2, a block of 10 latent frames at 480p

V = lambda n, w, s: dict(BLOCK_N=n, num_warps=w, num_stages=s)  # noqa: E731
SWEEP = {  # tile variants per kernel, timed at 720p (full attention); the fastest is kept
    "state": [V(64, 4, 3), V(32, 4, 3), V(64, 8, 3)],
    "out": [V(64, 4, 3), V(64, 4, 2), V(128, 8, 3)],
    "bwd_q": [V(64, 4, 2), V(64, 8, 3), V(128, 8, 2)],
    "bwd_ds": [V(64, 4, 3), V(64, 8, 3), V(32, 4, 3)],
    "bwd_kv": [V(64, 4, 2), V(64, 4, 3), V(128, 8, 2)],
}
PROGRAMS = (528, 1056, 2112)


def bench(fn, rep_ms=200):
    return gpu_bench_ms(fn, rep_ms=rep_ms)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    x = torch.randn(512 * 1024 * 1024, device="cuda", dtype=torch.float32)  # 2 GiB
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / (bench(lambda: y.copy_(x)) * 1e-3)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def inputs(f, h, w, batch=1):
    n = f * h * w
    q, k, v = (torch.randn(batch, HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cos, sin = rope_3d(f, h, w, HEAD_DIM, device="cuda")
    return q, k, v, cos, sin


def fwd_bwd(fn, q, k, v):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    do = torch.randn_like(q)
    return lambda: torch.autograd.grad(fn(*leaves), leaves, do)


def sweep_tiles(card: str, log: list) -> dict:
    """Fastest tile config per kernel on this card (each timed with the others fixed)."""
    table = C.TILES_BY_CARD.setdefault(card, copy.deepcopy(C.TILES_BY_CARD["default"]))
    q, k, v, cos, sin = inputs(*SHAPES["720p"])
    fwd = lambda: T.linear_attention(q, k, v, cos, sin)  # noqa: E731
    both = fwd_bwd(lambda a, b, c: T.linear_attention(a, b, c, cos, sin), q, k, v)
    best = {}
    for kernel, variants in SWEEP.items():
        times = []
        for cfg in variants:
            table[kernel] = cfg
            try:
                times.append(bench(fwd if kernel in ("state", "out") else both))
            except Exception as e:  # a variant that does not compile (e.g. out of shared memory)
                log.append(f"{kernel} {cfg}: {type(e).__name__}: {str(e)[:160]}")
                times.append(math.inf)
        i = min(range(len(variants)), key=times.__getitem__)
        table[kernel] = variants[i]
        best[kernel] = dict(variants[i], ms_by_variant=[round(t, 4) for t in times])
        print(f"sweep {kernel}: {best[kernel]}", flush=True)
    times = {}
    for programs in PROGRAMS:
        C.MIN_PROGRAMS[card] = programs
        times[programs] = bench(both)
    C.MIN_PROGRAMS[card] = min(times, key=times.get)
    best["min_programs"] = dict(chosen=C.MIN_PROGRAMS[card], fwd_bwd_ms_by_value=times)
    print(f"sweep programs: {best['min_programs']}", flush=True)
    return best


def sdpa_rope(q, k, v, cos, sin):
    qr = apply_rope(q.float(), cos, sin).to(q.dtype)
    kr = apply_rope(k.float(), cos, sin).to(k.dtype)
    return F.scaled_dot_product_attention(qr, kr, v)


def sdpa_block_forward(block):
    """Replace the block's linear self-attention by softmax SDPA over the same projections."""
    attn = block.attn

    def forward(x, grid: Grid, state):
        b, f, s, c = x.shape
        qkv = attn.qkv(x).view(b, f * s, 3, attn.heads, attn.head_dim)  # (B, N, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, D)
        out = sdpa_rope(attn.q_norm(q), attn.k_norm(k), v, grid.cos, grid.sin)
        return attn.proj(out.transpose(1, 2).reshape(b, f, s, c)), None  # (B, F, S, C)

    attn.forward = forward
    return block


def block_bench(f, h, w, attention):
    cfg = get_config("2b")
    torch.manual_seed(0)
    blk = Block(cfg).cuda().to(torch.bfloat16)
    if attention == "sdpa":
        sdpa_block_forward(blk)
    c = cfg.hidden
    x = torch.randn(1, f, h * w, c, device="cuda", dtype=torch.bfloat16)
    mod = torch.randn(1, f, 6, c, device="cuda", dtype=torch.bfloat16) * 0.1
    text = torch.randn(1, TEXT_LEN, c, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(1, TEXT_LEN, dtype=torch.bool, device="cuda")
    cos, sin = rope_3d(f, h, w, cfg.head_dim, device="cuda")
    grid = Grid(f, h, w, 0, None, cos, sin)
    with torch.no_grad():
        return bench(lambda: blk(x, mod, text, mask, grid, None), rep_ms=300)


def bench_step(bw) -> dict:
    """The block sampler's attention call: a block against a state, fused vs naive.step."""
    b, f, h, w = STEP_SHAPE
    q, k, v, cos, sin = inputs(f, h, w, batch=b)
    d = HEAD_DIM
    state = naive.AttnState(torch.rand(b, HEADS, d, d, device="cuda"),
                            torch.rand(b, HEADS, d, device="cuda") * 10)
    with torch.no_grad():
        out, new = T.step(state, q, k, v, cos, sin)
        ref, ref_new = naive.step(state, q, k, v, cos, sin)
        r = {"tokens": f * h * w, "batch": b, "rel_err_out": rel(out, ref),
             "rel_err_S": rel(new.S, ref_new.S),
             "fused_step_ms": bench(lambda: T.step(state, q, k, v, cos, sin)),
             "pytorch_step_ms": bench(lambda: naive.step(state, q, k, v, cos, sin))}
    r["floor_ms"] = 4 * b * f * h * w * HEADS * d * 2 / bw * 1e3
    r["pytorch_over_fused"] = r["pytorch_step_ms"] / r["fused_step_ms"]
    return r


def bench_shape(f, h, w, bw) -> dict:
    n = f * h * w
    q, k, v, cos, sin = inputs(f, h, w)
    bs = BLOCK_FRAMES * h * w
    r = {"tokens": n, "latent_grid": [f, h, w], "floor_ms": 4 * n * HEADS * HEAD_DIM * 2 / bw * 1e3}
    ref = chunked.linear_attention(q.float(), k.float(), v.float(), cos, sin)
    r["rel_err_full_vs_pytorch_fp32"] = rel(T.linear_attention(q, k, v, cos, sin), ref)
    ref = chunked.linear_attention(q.float(), k.float(), v.float(), cos, sin, block_size=bs)
    r["rel_err_block_causal_vs_pytorch_fp32"] = rel(T.linear_attention(q, k, v, cos, sin, block_size=bs), ref)
    del ref
    fused = lambda a, b, c, bs=None: T.linear_attention(a, b, c, cos, sin, block_size=bs)  # noqa: E731
    r["fused_fwd_ms"] = bench(lambda: fused(q, k, v))
    r["fused_fwd_bwd_ms"] = bench(fwd_bwd(fused, q, k, v))
    r["fused_block_causal_fwd_ms"] = bench(lambda: fused(q, k, v, bs))
    r["fused_block_causal_fwd_bwd_ms"] = bench(fwd_bwd(functools.partial(fused, bs=bs), q, k, v))
    torch_la = lambda a, b, c: chunked.linear_attention(a, b, c, cos, sin)  # noqa: E731
    r["pytorch_fwd_ms"] = bench(lambda: torch_la(q, k, v))
    r["pytorch_fwd_bwd_ms"] = bench(fwd_bwd(torch_la, q, k, v))
    r["sdpa_fwd_ms"] = bench(lambda: F.scaled_dot_product_attention(q, k, v), rep_ms=500)
    r["sdpa_fwd_bwd_ms"] = bench(fwd_bwd(F.scaled_dot_product_attention, q, k, v), rep_ms=1000)
    q = k = v = None
    torch.cuda.empty_cache()
    r["dit_block_linear_fwd_ms"] = block_bench(f, h, w, "linear")
    torch.cuda.empty_cache()
    r["dit_block_sdpa_fwd_ms"] = block_bench(f, h, w, "sdpa")
    torch.cuda.empty_cache()
    r["fused_fwd_over_floor"] = r["fused_fwd_ms"] / r["floor_ms"]
    r["block_causal_over_full_fwd"] = r["fused_block_causal_fwd_ms"] / r["fused_fwd_ms"]
    r["block_causal_over_full_fwd_bwd"] = r["fused_block_causal_fwd_bwd_ms"] / r["fused_fwd_bwd_ms"]
    r["dit_block_sdpa_over_linear"] = r["dit_block_sdpa_fwd_ms"] / r["dit_block_linear_fwd_ms"]
    return r


ROWS = [
    ("floor_ms", "memory floor"),
    ("fused_fwd_ms", "fused fwd (full)"),
    ("fused_block_causal_fwd_ms", "fused fwd (block-causal)"),
    ("fused_fwd_bwd_ms", "fused fwd+bwd (full)"),
    ("fused_block_causal_fwd_bwd_ms", "fused fwd+bwd (block-causal)"),
    ("pytorch_fwd_ms", "PyTorch fwd (full)"),
    ("pytorch_fwd_bwd_ms", "PyTorch fwd+bwd (full)"),
    ("sdpa_fwd_ms", "SDPA fwd"),
    ("sdpa_fwd_bwd_ms", "SDPA fwd+bwd"),
    ("dit_block_linear_fwd_ms", "2b block fwd, linear attn"),
    ("dit_block_sdpa_fwd_ms", "2b block fwd, SDPA"),
    ("fused_fwd_over_floor", "fused fwd / floor (x)"),
    ("block_causal_over_full_fwd", "block-causal / full fwd (x)"),
    ("block_causal_over_full_fwd_bwd", "block-causal / full fwd+bwd (x)"),
    ("dit_block_sdpa_over_linear", "block SDPA / linear (x)"),
    ("rel_err_full_vs_pytorch_fp32", "rel err full"),
    ("rel_err_block_causal_vs_pytorch_fp32", "rel err block-causal"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results", help="folder for attention_gpu_<card>.json")
    ap.add_argument("--no-sweep", action="store_true", help="use the committed tile table for this card")
    args = ap.parse_args()

    res = Result("attention_gpu", out=args.out)
    card = card_name()
    bw = res.add("copy_bandwidth_GBps", copy_bandwidth() / 1e9) * 1e9
    res.add("setup", {"heads": HEADS, "head_dim": HEAD_DIM, "dtype": "bfloat16", "batch": 1,
                      "block_frames": BLOCK_FRAMES, "triton": __import__("triton").__version__})
    log: list[str] = []
    if not args.no_sweep:
        res.add("sweep", sweep_tiles(card, log))
    res.add("tiles", C.card_table(torch.device("cuda"), C.TILES_BY_CARD))
    res.add("min_programs", C.card_table(torch.device("cuda"), C.MIN_PROGRAMS))
    shapes = {name: bench_shape(*grid, bw) for name, grid in SHAPES.items()}
    res.add("shapes", shapes)
    step = res.add("step_with_state", bench_step(bw))
    res.add("log", log)
    res.table(["ms unless noted", *(f"{n} ({r['tokens']:,} tok)" for n, r in shapes.items())],
              [(label, *(r[key] for r in shapes.values())) for key, label in ROWS],
              title=f"attention_gpu: copy {bw / 1e9:.0f} GB/s, bf16, B=1, H={HEADS}, D={HEAD_DIM}")
    res.table(["step with a state", "fused ms", "PyTorch ms", "floor ms", "rel err"],
              [(f"{step['batch']} x {step['tokens']:,} tok", step["fused_step_ms"], step["pytorch_step_ms"],
                step["floor_ms"], step["rel_err_out"])])
    for line in log:
        print("sweep:", line)
    res.write()


if __name__ == "__main__":
    main()
