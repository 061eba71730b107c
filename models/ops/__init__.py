"""Linear-attention ops: one contract (see ``models.ops.naive``), several backends.

``linear_attention`` picks the fused Triton kernels for CUDA tensors when Triton imports, and the
chunked PyTorch form elsewhere; ``backend`` forces one ("naive", "chunked", "triton").
``step`` is the recurrent form used by block-by-block generation: the fused kernels with an
initial state on CUDA, ``naive.step`` (the reference) elsewhere.
"""

from __future__ import annotations

from models.ops import chunked, naive
from models.ops.naive import AttnState

BACKENDS = {"naive": naive.linear_attention, "chunked": chunked.linear_attention}


def triton_available() -> bool:
    """True when the fused kernels can run (Triton importable); CUDA is checked per call."""
    from models.ops import triton_linear_attn

    return triton_linear_attn.HAS_TRITON


def linear_attention(q, k, v, cos, sin, block_size=None, eps: float = 1e-6, backend: str = "auto"):
    """(B, H, N, D) q, k, v (pre-ReLU), (N, D/2) RoPE tables -> (B, H, N, D); see naive.py."""
    if backend == "auto":
        backend = "triton" if q.is_cuda and triton_available() else "chunked"
    if backend == "triton":
        from models.ops.triton_linear_attn import linear_attention as fused

        return fused(q, k, v, cos, sin, block_size=block_size, eps=eps)
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown linear-attention backend {backend!r}: use auto, triton, {', '.join(BACKENDS)}"
        )
    return BACKENDS[backend](q, k, v, cos, sin, block_size=block_size, eps=eps)


def step(state: AttnState, q, k, v, cos, sin, eps: float = 1e-6, backend: str = "auto"):
    """One block (B, H, n, D) against the running sums ``state``: ``(out, new_state)``; see
    ``naive.step``. ``backend``: auto (Triton on CUDA, else the reference), triton, naive."""
    if backend == "auto":
        backend = "triton" if q.is_cuda and triton_available() else "naive"
    if backend == "triton":
        from models.ops.triton_linear_attn import step as fused_step

        return fused_step(state, q, k, v, cos, sin, eps=eps)
    if backend not in ("naive", "chunked"):  # the chunked form has no separate step: it is naive's
        raise ValueError(f"unknown step backend {backend!r}: use auto, triton, naive")
    return naive.step(state, q, k, v, cos, sin, eps=eps)


__all__ = ["AttnState", "BACKENDS", "linear_attention", "step", "triton_available"]
