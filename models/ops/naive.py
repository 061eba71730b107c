"""Reference ReLU linear attention with RoPE on the numerator: the truth every fast op is tested
against. Written for clarity, not speed (the block-causal form builds an N x N mask).

Shared contract of every op in ``models/ops``:

* ``q, k, v``: (B, H, N, D), any float dtype; q and k are the (RMS-normalised) projections
  *before* the feature map: each op applies phi = ReLU itself.
* ``cos, sin``: (N, D // 2) float32 RoPE tables from ``models.rope.rope_3d`` (interleaved pairs).
* ``block_size``: None for full bidirectional attention, else tokens per block: token i attends
  to every token j with ``j // block_size <= i // block_size`` (full inside a block, causal
  across blocks). N need not be a multiple of it.
* Math, accumulated in float32 (float64 if the inputs are float64)::

      out_i = RoPE(phi(q_i)) . S / (phi(q_i) . z + eps)
      S = sum_j RoPE(phi(k_j))^T v_j      (H, D, D)
      z = sum_j phi(k_j)                  (H, D)

* Returns (B, H, N, D) in q's dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from models.rope import apply_rope


class AttnState(NamedTuple):
    """Running sums of one attention layer: S (B, H, D, D) and z (B, H, D), float32.

    Its size is fixed: it does not grow with the number of blocks seen.
    """

    S: torch.Tensor
    z: torch.Tensor

    @staticmethod
    def zeros(batch: int, heads: int, head_dim: int, device=None) -> AttnState:
        return AttnState(
            torch.zeros(batch, heads, head_dim, head_dim, device=device),
            torch.zeros(batch, heads, head_dim, device=device),
        )


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def features(q, k, cos, sin):
    """phi and RoPE(phi) of q and k in the accumulation dtype: (phi_q, rot_q, phi_k, rot_k)."""
    acc = _acc_dtype(q)
    phi_q, phi_k = q.to(acc).relu(), k.to(acc).relu()
    return phi_q, apply_rope(phi_q, cos, sin), phi_k, apply_rope(phi_k, cos, sin)


def linear_attention(q, k, v, cos, sin, block_size: int | None = None, eps: float = 1e-6):
    """Full or block-causal linear attention by the definition (O(N^2) when block-causal)."""
    phi_q, rot_q, phi_k, rot_k = features(q, k, cos, sin)
    vv = v.to(phi_q.dtype)
    if block_size is None:
        S = rot_k.transpose(-1, -2) @ vv  # (B, H, D, D)
        z = phi_k.sum(dim=-2)  # (B, H, D)
        num = rot_q @ S  # (B, H, N, D)
        den = (phi_q * z[..., None, :]).sum(-1, keepdim=True)  # (B, H, N, 1)
    else:
        n = q.shape[-2]
        blk = torch.arange(n, device=q.device) // block_size
        mask = (blk[None, :] <= blk[:, None]).to(phi_q.dtype)  # (N, N): row i sees column j
        num = ((rot_q @ rot_k.transpose(-1, -2)) * mask) @ vv  # (B, H, N, D)
        den = ((phi_q @ phi_k.transpose(-1, -2)) * mask).sum(-1, keepdim=True)  # (B, H, N, 1)
    return (num / (den + eps)).to(q.dtype)


def step(state: AttnState, q, k, v, cos, sin, eps: float = 1e-6):
    """Recurrent form: attend one block (B, H, n, D) given the sums of all earlier blocks.

    Returns ``(out, new_state)``: ``out`` is (B, H, n, D) in q's dtype, computed with the block's
    own keys included (full attention inside the block); ``new_state`` adds the block's keys and
    values to the sums. ``state`` is not modified, so a caller may attend the same block many
    times against one state and keep only the state it wants.
    """
    phi_q, rot_q, phi_k, rot_k = features(q, k, cos, sin)
    S = state.S.to(phi_q.dtype) + rot_k.transpose(-1, -2) @ v.to(phi_q.dtype)  # (B, H, D, D)
    z = state.z.to(phi_q.dtype) + phi_k.sum(dim=-2)  # (B, H, D)
    num = rot_q @ S  # (B, H, n, D)
    den = (phi_q * z[..., None, :]).sum(-1, keepdim=True)  # (B, H, n, 1)
    out = (num / (den + eps)).to(q.dtype)
    return out, AttnState(S.to(state.S.dtype), z.to(state.z.dtype))
