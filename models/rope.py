"""3D rotary position embedding for video tokens, computed on the fly.

Convention (shared by every attention op in ``models/ops``): the head dimension D is split into
three even parts (time, height, width) and each part into interleaved pairs ``(x[2i], x[2i+1])``;
pair i is rotated by the angle ``pos * freq_i``. Tables have shape (N, D // 2): one angle per
token and pair. Positions are absolute (a frame offset is an argument) and no length cap exists:
nothing is precomputed at init.
"""

from __future__ import annotations

import torch


def split_head_dim(head_dim: int) -> tuple[int, int, int]:
    """Split D into (time, height, width) dims, each even, height == width; sums to D."""
    if head_dim % 2:
        raise ValueError(f"model.head_dim must be even for RoPE, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _angles(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    """pos (N,) float64 -> angles (N, dim // 2) float64."""
    freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim)
    return pos[:, None] * freq[None, :]


def rope_3d(
    frames: int,
    height: int,
    width: int,
    head_dim: int,
    frame_offset: int = 0,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables for a (frames, height, width) token grid, frame-major token order.

    Returns two float32 tensors of shape (frames * height * width, head_dim // 2). Time positions
    are ``frame_offset + f``, so a block generated later gets the same angles as in a full pass.
    Angles are formed in float64 so large frame offsets keep their precision.
    """
    dt, dh, dw = split_head_dim(head_dim)
    t = torch.arange(frames, dtype=torch.float64, device=device) + frame_offset
    h = torch.arange(height, dtype=torch.float64, device=device)
    w = torch.arange(width, dtype=torch.float64, device=device)
    at = _angles(t, dt, theta)[:, None, None, :].expand(frames, height, width, dt // 2)
    ah = _angles(h, dh, theta)[None, :, None, :].expand(frames, height, width, dh // 2)
    aw = _angles(w, dw, theta)[None, None, :, :].expand(frames, height, width, dw // 2)
    ang = torch.cat([at, ah, aw], dim=-1).reshape(frames * height * width, head_dim // 2)  # (N, D/2)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (..., N, D) by tables (N, D // 2); computes in x's dtype
    (callers pass float32 or float64)."""
    x2 = x.unflatten(-1, (-1, 2))  # (..., N, D/2, 2)
    x0, x1 = x2[..., 0], x2[..., 1]
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    y = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)  # (..., N, D/2, 2)
    return y.flatten(-2)  # (..., N, D)
