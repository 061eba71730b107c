"""Fused Triton ReLU linear attention with RoPE on the numerator (CUDA only): the entry points.

Same contract as ``models.ops.naive`` (shapes, block_size, eps, float32 accumulation).
``linear_attention`` is differentiable (``torch.autograd.Function`` over ``triton_fwd`` and
``triton_bwd``); ``step`` is the recurrent form with a state, for block-by-block sampling.
Imports cleanly where Triton is missing: ``HAS_TRITON`` is then False and the ops raise.

Each input is read once per pass and each output written once, so the forward moves the memory
floor of 4 N H D elements plus the (N, D) RoPE table (read from L2 by every head).
"""

from __future__ import annotations

import torch

from models.ops import naive
from models.ops.triton_common import HAS_TRITON, MIN_PROGRAMS, TILES_BY_CARD, TILES_FP32_WIDE  # noqa: F401
from models.ops.triton_fwd import forward


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cos, sin, block_size, eps):
        o, S, z, bs, nblk, _, cs = forward(q, k, v, cos, sin, block_size, eps)
        ctx.save_for_backward(q, k, v, cs, S, z)
        ctx.bs, ctx.nblk, ctx.eps = bs, nblk, eps
        return o

    @staticmethod
    def backward(ctx, do):
        from models.ops.triton_bwd import backward

        q, k, v, cs, S, z = ctx.saved_tensors
        dq, dk, dv = backward(do, q, k, v, cs, S, z, ctx.bs, ctx.nblk, ctx.eps)
        return dq, dk, dv, None, None, None, None


def _check(q, k, v, block_size=None):
    if not HAS_TRITON:
        raise RuntimeError(
            "linear attention backend 'triton' needs the triton package; use backend='chunked'")
    if not q.is_cuda:
        raise RuntimeError(
            "linear attention backend 'triton' needs CUDA tensors; use backend='chunked' on CPU")
    if not (q.dtype == k.dtype == v.dtype) or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must share shape and dtype, got {q.shape}/{q.dtype}, {k.shape}/{k.dtype}, "
            f"{v.shape}/{v.dtype}"
        )
    d = q.shape[-1]
    if d % 2 or d > 128:
        raise ValueError(f"head dim must be even and <= 128 for the fused kernels, got {d}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1 or None, got {block_size}")


# torch.compile'd callers (training's compiled blocks) run the kernels as they are: opaque to
# Dynamo, which would otherwise trace the launch code and the host-side tile lookups.
@torch.compiler.disable
def linear_attention(q, k, v, cos, sin, block_size: int | None = None, eps: float = 1e-6):
    """Fused full / block-causal linear attention; contract of ``models.ops.naive``.

    Needs CUDA tensors and Triton. q, k, v: (B, H, N, D) of one float dtype (float32, bfloat16
    or float16), any strides over (B, H, N) (e.g. head-split views of a fused projection),
    D <= 128 and even; cos, sin: (N, D // 2). Returns (B, H, N, D) in q's dtype, stored as
    (B, N, H, D) memory so ``out.transpose(1, 2).reshape(B, N, H * D)`` is free.
    """
    _check(q, k, v, block_size)
    return _LinearAttention.apply(q, k, v, cos, sin, block_size, float(eps))


@torch.compiler.disable
def step(state: naive.AttnState, q, k, v, cos, sin, eps: float = 1e-6):
    """``naive.step`` on the fused kernels: attend one block (B, H, n, D) (full attention inside
    it) given the float32 sums ``state`` of all earlier blocks; returns ``(out, new_state)``.

    ``state`` is not modified. No autograd: where gradients are wanted (grad mode on and an input
    that requires grad) this runs ``naive.step``.
    """
    _check(q, k, v)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *state)):
        return naive.step(state, q, k, v, cos, sin, eps=eps)
    b, h, _, d = q.shape
    o, S, z, *_ = forward(q, k, v, cos, sin, None, float(eps), state=state)
    S_new = S[:, -1, :d, :d].reshape(b, h, d, d).to(state.S.dtype)  # (B, H, D, D)
    z_new = z[:, -1, :d].reshape(b, h, d).to(state.z.dtype)  # (B, H, D)
    return o, naive.AttnState(S_new, z_new)
