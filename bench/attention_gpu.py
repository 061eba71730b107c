"""GPU benchmark of linear attention: fused Triton vs PyTorch vs SDPA, against the memory floor.

Shapes: 20 heads x 112, batch 1, bf16, at 32,760 tokens (480p, 81 frames -> 21 x 30 x 52 latent
tokens) and 75,600 tokens (720p: 21 x 45 x 80). Block-causal uses blocks of 3 latent frames.
Also times one LinearDiT block of the "2b" config against the same block with softmax SDPA
self-attention (RoPE on q and k). Prints a table and writes JSON naming the card.

    python bench/attention_gpu.py --out bench/results     # needs CUDA + Triton
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.linear_dit import Block, Grid, get_config  # noqa: E402
from models.ops import chunked  # noqa: E402
from models.ops import triton_linear_attn as T  # noqa: E402
from models.rope import apply_rope, rope_3d  # noqa: E402

SHAPES = {"480p": (21, 30, 52), "720p": (21, 45, 80)}
HEADS, HEAD_DIM, BLOCK_FRAMES, TEXT_LEN = 20, 112, 3, 300

SWEEP = {  # forward/backward tile variants tried on the 720p full case; best kept
    "state": [
        dict(BLOCK_N=64, num_warps=8, num_stages=2),
        dict(BLOCK_N=128, num_warps=8, num_stages=2),
        dict(BLOCK_N=64, num_warps=4, num_stages=3),
    ],
    "out": [
        dict(BLOCK_N=64, num_warps=4, num_stages=2),
        dict(BLOCK_N=128, num_warps=8, num_stages=2),
        dict(BLOCK_N=64, num_warps=8, num_stages=2),
    ],
    "bwd_q": [
        dict(BLOCK_N=64, num_warps=8, num_stages=1),
        dict(BLOCK_N=32, num_warps=4, num_stages=1),
        dict(BLOCK_N=64, num_warps=4, num_stages=2),
    ],
    "bwd_kv": [
        dict(BLOCK_N=64, num_warps=8, num_stages=1),
        dict(BLOCK_N=128, num_warps=8, num_stages=1),
        dict(BLOCK_N=64, num_warps=4, num_stages=2),
    ],
}


def bench(fn, rep_ms=200):
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=rep_ms, return_mode="median")


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    x = torch.randn(512 * 1024 * 1024, device="cuda", dtype=torch.float32)  # 2 GiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def attention_inputs(f, h, w):
    n = f * h * w
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cos, sin = rope_3d(f, h, w, HEAD_DIM, device="cuda")
    return q, k, v, cos, sin


def fwd_bwd(fn, q, k, v):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    do = torch.randn_like(q)

    def run():
        out = fn(*leaves)
        torch.autograd.grad(out, leaves, do)

    return run


def sdpa_rope(q, k, v, cos, sin):
    qr = apply_rope(q.float(), cos, sin).to(q.dtype)
    kr = apply_rope(k.float(), cos, sin).to(k.dtype)
    return F.scaled_dot_product_attention(qr, kr, v)


def sweep_tiles(q, k, v, cos, sin, log):
    """Pick the fastest tile config per kernel (each kernel timed with the others fixed)."""
    best = {}
    for kernel, variants in SWEEP.items():
        times = []
        for cfg in variants:
            T.TILES[kernel] = cfg
            fn = (
                (lambda: T.linear_attention(q, k, v, cos, sin))
                if kernel in ("state", "out")
                else fwd_bwd(lambda a, b, c: T.linear_attention(a, b, c, cos, sin), q, k, v)
            )
            try:
                times.append(bench(fn))
            except Exception as e:  # a variant that does not compile (e.g. out of shared memory)
                log.append(f"{kernel} {cfg}: {type(e).__name__}: {str(e)[:120]}")
                times.append(math.inf)
        i = min(range(len(variants)), key=times.__getitem__)
        T.TILES[kernel] = variants[i]
        best[kernel] = dict(variants[i], ms_by_variant=times)
    # programs per launch (splits per block): longer loops vs more partial sums
    times = {}
    for programs in (264, 528, 1056):
        T.MIN_PROGRAMS = programs
        times[programs] = bench(lambda: T.linear_attention(q, k, v, cos, sin))
    T.MIN_PROGRAMS = min(times, key=times.get)
    best["min_programs"] = dict(chosen=T.MIN_PROGRAMS, fwd_ms_by_value=times)
    return best


OLD = dict(
    state=dict(BLOCK_N=128, num_warps=8, num_stages=2),  # committed default (one 8-warp program per SM)
    out=dict(BLOCK_N=64, num_warps=4, num_stages=2),
)
COMPARE = {  # forward variants timed side by side on one card (--compare); add any TILES config
    "v3_old": OLD,
    "v3_state_64_4_3": dict(OLD, state=dict(BLOCK_N=64, num_warps=4, num_stages=3)),
    "v3_state_64_4_3_out_64_4_3": dict(
        state=dict(BLOCK_N=64, num_warps=4, num_stages=3), out=dict(BLOCK_N=64, num_warps=4, num_stages=3)
    ),
}


def compare(bw, out_dir, card):
    """Time COMPARE's forward variants at 720p (full), twice in alternation; then the old config,
    the new default and the fastest at both shapes, full and block-causal. Writes JSON."""
    saved = {k: dict(v) for k, v in T.TILES.items()}

    def use(cfg):
        T.TILES.update({k: dict(v) for k, v in cfg.items()})

    res = {
        "card": torch.cuda.get_device_name(),
        "copy_bandwidth_GBps": bw / 1e9,
        "variants": {},
        "shapes": {},
    }
    q, k, v, cos, sin = attention_inputs(*SHAPES["720p"])
    ref = chunked.linear_attention(q.float(), k.float(), v.float(), cos, sin)
    times = {name: [] for name in COMPARE}
    for rnd in range(2):
        for name, cfg in COMPARE.items():
            use(cfg)
            try:
                if rnd == 0:
                    res["variants"][name] = dict(
                        cfg=cfg, rel_err=rel(T.linear_attention(q, k, v, cos, sin), ref)
                    )
                times[name].append(bench(lambda: T.linear_attention(q, k, v, cos, sin)))
            except Exception as e:
                res["variants"][name] = dict(cfg=cfg, error=f"{type(e).__name__}: {str(e)[:200]}")
                times[name].append(math.inf)
            print(f"round {rnd} {name:24s} {times[name][-1]:.4f} ms", flush=True)
    for name in COMPARE:
        res["variants"][name]["fwd_ms_720p"] = times[name]
    del ref
    best = min(COMPARE, key=lambda n: min(times[n]))
    res["best"] = best
    # per-kernel split of the old and best variants (one profiled call each)
    from torch.profiler import ProfilerActivity, profile

    for name in dict.fromkeys(["v3_old", best]):
        use(COMPARE[name])
        T.linear_attention(q, k, v, cos, sin)
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(5):
                T.linear_attention(q, k, v, cos, sin)
            torch.cuda.synchronize()
        res["variants"][name]["kernel_us_per_call"] = {
            e.key[:40]: e.device_time_total / 5 for e in p.key_averages() if e.device_time_total > 0
        }
        print(
            name, {k: round(x, 1) for k, x in res["variants"][name]["kernel_us_per_call"].items()}, flush=True
        )
    q = k = v = None
    for shape, (f, h, w) in SHAPES.items():
        q, k, v, cos, sin = attention_inputs(f, h, w)
        n, bs = f * h * w, BLOCK_FRAMES * h * w
        row = {"floor_ms": 4 * n * HEADS * HEAD_DIM * 2 / bw * 1e3}
        ref_bc = chunked.linear_attention(q.float(), k.float(), v.float(), cos, sin, block_size=bs)
        full = functools.partial(T.linear_attention, q, k, v, cos, sin)
        causal = functools.partial(T.linear_attention, q, k, v, cos, sin, block_size=bs)
        for rnd in range(2):
            for name in dict.fromkeys(["v3_old", best]):
                use(COMPARE[name])
                r = row.setdefault(name, {"fwd_ms": [], "block_causal_fwd_ms": []})
                if rnd == 0:
                    r["rel_err_block_causal"] = rel(causal(), ref_bc)
                r["fwd_ms"].append(bench(full))
                r["block_causal_fwd_ms"].append(bench(causal))
                r["fwd_over_floor"] = min(r["fwd_ms"]) / row["floor_ms"]
                print(
                    f"{shape} round {rnd} {name:24s} fwd {r['fwd_ms'][-1]:.4f}"
                    f" bc {r['block_causal_fwd_ms'][-1]:.4f}"
                    f" ({r['fwd_over_floor']:.3f}x floor)",
                    flush=True,
                )
        res["shapes"][shape] = row
        q = k = v = ref_bc = full = causal = None
        torch.cuda.empty_cache()
    T.TILES.update(saved)
    path = Path(out_dir) / f"attention_gpu_compare_{card}.json"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2, default=str))
    print(f"best {best}; wrote {path}")


def sdpa_block_forward(block, cfg):
    """Replace the block's linear self-attention by softmax SDPA over the same projections."""
    attn = block.attn

    def forward(x, grid: Grid, state):
        b, f, s, c = x.shape
        qkv = attn.qkv(x).view(b, f * s, 3, attn.heads, attn.head_dim)  # (B, N, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, D)
        q, k = attn.q_norm(q), attn.k_norm(k)
        out = sdpa_rope(q, k, v, grid.cos, grid.sin)
        return attn.proj(out.transpose(1, 2).reshape(b, f, s, c)), None  # (B, F, S, C)

    attn.forward = forward
    return block


def block_bench(f, h, w, attention, profile=False):
    cfg = get_config("2b")
    torch.manual_seed(0)
    blk = Block(cfg).cuda().to(torch.bfloat16)
    if attention == "sdpa":
        sdpa_block_forward(blk, cfg)
    c = cfg.hidden
    x = torch.randn(1, f, h * w, c, device="cuda", dtype=torch.bfloat16)
    mod = torch.randn(1, f, 6, c, device="cuda", dtype=torch.bfloat16) * 0.1
    text = torch.randn(1, TEXT_LEN, c, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(1, TEXT_LEN, dtype=torch.bool, device="cuda")
    cos, sin = rope_3d(f, h, w, cfg.head_dim, device="cuda")
    grid = Grid(f, h, w, 0, None, cos, sin)
    with torch.no_grad():
        ms = bench(lambda: blk(x, mod, text, mask, grid, None), rep_ms=300)
        if profile:  # where a block's time goes, kernel by kernel
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as prof

            with prof(activities=[ProfilerActivity.CUDA]) as p:
                blk(x, mod, text, mask, grid, None)
                torch.cuda.synchronize()
            print(f"--- 2b block, {attention} attention, {f}x{h}x{w} tokens ---")
            print(p.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))
        return ms


def bench_shape(name, f, h, w, bw, profile):
    """All timings of one token grid; returns the JSON row."""
    n = f * h * w
    q, k, v, cos, sin = attention_inputs(f, h, w)
    bs = BLOCK_FRAMES * h * w
    r = {"tokens": n, "latent_grid": [f, h, w]}
    r["floor_ms"] = 4 * n * HEADS * HEAD_DIM * 2 / bw * 1e3
    # correctness at the benchmark size (vs the PyTorch form in float32 on the same inputs)
    ref = chunked.linear_attention(q.float(), k.float(), v.float(), cos, sin)
    r["rel_err_full_vs_pytorch_fp32"] = rel(T.linear_attention(q, k, v, cos, sin), ref)
    ref_bc = chunked.linear_attention(q.float(), k.float(), v.float(), cos, sin, block_size=bs)
    r["rel_err_block_causal_vs_pytorch_fp32"] = rel(
        T.linear_attention(q, k, v, cos, sin, block_size=bs), ref_bc
    )
    del ref, ref_bc

    fused = lambda a, b, c, bs=None: T.linear_attention(a, b, c, cos, sin, block_size=bs)  # noqa: E731
    if profile and name == "720p":
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        step = fwd_bwd(lambda a, b, c: fused(a, b, c, bs), q, k, v)
        step()
        with prof(activities=[ProfilerActivity.CUDA]) as p:
            step()
            torch.cuda.synchronize()
        print(f"--- fused block-causal fwd+bwd, {n} tokens ---")
        print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
    r["fused_fwd_ms"] = bench(lambda: fused(q, k, v))
    r["fused_fwd_bwd_ms"] = bench(fwd_bwd(fused, q, k, v))
    r["fused_block_causal_fwd_ms"] = bench(lambda: fused(q, k, v, bs))
    r["fused_block_causal_fwd_bwd_ms"] = bench(fwd_bwd(lambda a, b, c: fused(a, b, c, bs), q, k, v))
    torch_la = lambda a, b, c: chunked.linear_attention(a, b, c, cos, sin)  # noqa: E731
    r["pytorch_fwd_ms"] = bench(lambda: torch_la(q, k, v))
    r["pytorch_fwd_bwd_ms"] = bench(fwd_bwd(torch_la, q, k, v))
    r["pytorch_block_causal_fwd_ms"] = bench(
        lambda: chunked.linear_attention(q, k, v, cos, sin, block_size=bs)
    )
    r["sdpa_fwd_ms"] = bench(lambda: F.scaled_dot_product_attention(q, k, v), rep_ms=500)
    r["sdpa_fwd_bwd_ms"] = bench(fwd_bwd(F.scaled_dot_product_attention, q, k, v), rep_ms=1000)
    q = k = v = None  # free the inputs before the DiT-block runs
    torch.cuda.empty_cache()
    prof = profile and name == "720p"
    r["dit_block_linear_fwd_ms"] = block_bench(f, h, w, "linear", prof)
    torch.cuda.empty_cache()
    r["dit_block_sdpa_fwd_ms"] = block_bench(f, h, w, "sdpa", prof)
    torch.cuda.empty_cache()
    r["fused_fwd_over_floor"] = r["fused_fwd_ms"] / r["floor_ms"]
    r["block_causal_over_full_fwd"] = r["fused_block_causal_fwd_ms"] / r["fused_fwd_ms"]
    r["block_causal_over_full_fwd_bwd"] = r["fused_block_causal_fwd_bwd_ms"] / r["fused_fwd_bwd_ms"]
    r["dit_block_sdpa_over_linear"] = r["dit_block_sdpa_fwd_ms"] / r["dit_block_linear_fwd_ms"]
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results", help="folder for attention_gpu_<card>.json")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument(
        "--compare", action="store_true", help="only time COMPARE's forward variants side by side"
    )
    ap.add_argument("--profile", action="store_true", help="print per-kernel times of the 720p DiT blocks")
    args = ap.parse_args()

    props = torch.cuda.get_device_properties(0)
    card = re.sub(r"[^a-z0-9]+", "_", props.name.lower()).strip("_")
    bw = copy_bandwidth()
    if args.compare:
        return compare(bw, args.out, card)
    log: list[str] = []
    result = {
        "card": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "python": platform.python_version(),
        "copy_bandwidth_GBps": bw / 1e9,
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "dtype": "bfloat16",
        "batch": 1,
        "block_frames": BLOCK_FRAMES,
        "shapes": {},
    }

    q, k, v, cos, sin = attention_inputs(*SHAPES["720p"])
    if not args.no_sweep:
        result["tiles"] = sweep_tiles(q, k, v, cos, sin, log)
    else:
        result["tiles"] = dict(T.TILES)
    q = k = v = None  # free the inputs before the DiT-block runs

    rows = []
    for name, (f, h, w) in SHAPES.items():
        r = bench_shape(name, f, h, w, bw, args.profile)
        result["shapes"][name] = r
        rows.append((name, r))

    result["log"] = log
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"attention_gpu_{card}.json"
    path.write_text(json.dumps(result, indent=2))

    print(f"\ncard: {props.name}   copy bandwidth {bw / 1e9:.0f} GB/s   bf16, B=1, H={HEADS}, D={HEAD_DIM}")
    keys = [
        ("floor_ms", "memory floor"),
        ("fused_fwd_ms", "fused fwd (full)"),
        ("fused_block_causal_fwd_ms", "fused fwd (block-causal)"),
        ("fused_fwd_bwd_ms", "fused fwd+bwd (full)"),
        ("fused_block_causal_fwd_bwd_ms", "fused fwd+bwd (block-causal)"),
        ("pytorch_fwd_ms", "PyTorch fwd (full)"),
        ("pytorch_block_causal_fwd_ms", "PyTorch fwd (block-causal)"),
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
    print(f"| {'ms unless noted':34s} | " + " | ".join(f"{n} ({r['tokens']:,} tok)" for n, r in rows) + " |")
    print("|" + "-" * 36 + "|" + "|".join("-" * 22 for _ in rows) + "|")
    for key, label in keys:
        print(f"| {label:34s} | " + " | ".join(f"{r[key]:20.4g}" for _, r in rows) + " |")
    for line in log:
        print("sweep:", line)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
