"""PyTorch linear attention in chunked form: per-block key/value sums and a running (cumulative)
sum over blocks, so block-causal attention costs O(N D^2) like the full form.

Same contract as ``models.ops.naive`` (see its docstring); differentiable through autograd. This
is the path used on CPU and wherever Triton is unavailable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.ops.naive import AttnState, features, step  # noqa: F401  (step re-exported)


def linear_attention(q, k, v, cos, sin, block_size: int | None = None, eps: float = 1e-6):
    """Full (block_size=None) or block-causal ReLU linear attention, O(N D^2)."""
    phi_q, rot_q, phi_k, rot_k = features(q, k, cos, sin)
    vv = v.to(phi_q.dtype)
    if block_size is None or block_size >= q.shape[-2]:
        S = rot_k.transpose(-1, -2) @ vv  # (B, H, D, D)
        z = phi_k.sum(dim=-2)  # (B, H, D)
        num = rot_q @ S  # (B, H, N, D)
        den = (phi_q * z[..., None, :]).sum(-1, keepdim=True)  # (B, H, N, 1)
        return (num / (den + eps)).to(q.dtype)

    b, h, n, d = q.shape
    nb = -(-n // block_size)
    pad = nb * block_size - n  # zero-padded keys add nothing to the sums (phi(0) = 0, v = 0)

    def blocks(x):
        return F.pad(x, (0, 0, 0, pad)).view(b, h, nb, block_size, d)  # (B, H, nb, bs, D)

    rq, pq, rk, pk, vb = map(blocks, (rot_q, phi_q, rot_k, phi_k, vv))
    S = torch.cumsum(rk.transpose(-1, -2) @ vb, dim=2)  # (B, H, nb, D, D): sums over blocks <= b
    z = torch.cumsum(pk.sum(dim=-2), dim=2)  # (B, H, nb, D)
    num = rq @ S  # (B, H, nb, bs, D)
    den = (pq * z[..., None, :]).sum(-1, keepdim=True)  # (B, H, nb, bs, 1)
    out = (num / (den + eps)).reshape(b, h, nb * block_size, d)[:, :, :n]  # (B, H, N, D)
    return out.to(q.dtype)
