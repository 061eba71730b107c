"""Cross-attention of the 2b model at 480p-81f on one GPU: 32,760 video tokens to 300 text tokens,
20 heads x 112, bf16, forward and forward + backward, SDPA with an all-true mask (what the model
passed before `models.linear_dit.trim_text`) against no mask (what it passes now when every text
position is valid). With a mask SDPA cannot use its flash kernels.

    python bench/xattn_gpu.py --out bench/results        # CUDA; writes xattn_gpu_<card>.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Result, gpu_bench_ms  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tokens", type=int, default=32760)
    ap.add_argument("--text", type=int, default=300)
    args = ap.parse_args()
    torch.manual_seed(0)
    shape = dict(dtype=torch.bfloat16, device="cuda")
    q = torch.randn(1, 20, args.tokens, 112, **shape, requires_grad=True)
    k = torch.randn(1, 20, args.text, 112, **shape, requires_grad=True)
    v = torch.randn(1, 20, args.text, 112, **shape, requires_grad=True)
    grad = torch.randn(1, 20, args.tokens, 112, **shape)
    all_true = torch.ones(1, 1, 1, args.text, dtype=torch.bool, device="cuda")
    res = Result("xattn_gpu", out=args.out)
    res.add("shape", f"q 1x20x{args.tokens}x112, kv 1x20x{args.text}x112, bf16")
    rows = []
    for name, mask in (("mask_all_true", all_true), ("no_mask", None)):
        def fwd(mask=mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        def fwd_bwd(mask=mask):
            fwd(mask).backward(grad)

        rec = res.add(name, {"fwd_ms": gpu_bench_ms(fwd), "fwd_bwd_ms": gpu_bench_ms(fwd_bwd)})
        rows.append((name, rec["fwd_ms"], rec["fwd_bwd_ms"]))
    res.table(["SDPA call", "fwd ms", "fwd+bwd ms"], rows)
    res.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
