"""Layers of the Linear DiT (``models.linear_dit``): the token grid and per-block state of a
forward call, and the modules a block is made of (see ``models.linear_dit`` for the model)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import ops
from models.dit_config import LinearDiTConfig
from models.ops.naive import AttnState

# --------------------------------------------------------------------------------------------
# Geometry and state


@dataclass
class Grid:
    """Token grid of one forward call: frames x height x width tokens, frame-major order."""

    frames: int
    height: int
    width: int
    frame_offset: int
    """absolute index of the first frame (RoPE time position, block alignment)"""
    block_frames: int | None
    """None: full attention; else frames per block (block-causal)"""
    cos: torch.Tensor = field(repr=False)
    sin: torch.Tensor = field(repr=False)

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width


@dataclass
class BlockState:
    """State one block carries from a committed latent block to the next."""

    attn: AttnState
    """linear-attention sums: S (B, H, D, D), z (B, H, D), float32"""
    conv: torch.Tensor
    """temporal-conv input at the previous block's last latent frame: (B, 1, S, ffn_hidden)"""


@dataclass
class DiTState:
    """Per-layer states plus the absolute frame index where the next block starts."""

    layers: list[BlockState]
    frame_offset: int = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.layers for t in (*s.attn, s.conv))


# --------------------------------------------------------------------------------------------
# Modules


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim, with a learned scale."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] of any shape -> (..., hidden) through sinusoids and a two-layer MLP."""

    def __init__(self, cfg: LinearDiTConfig):
        super().__init__()
        self.freq_dim = cfg.freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(cfg.freq_dim, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden)
        )

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        arg = (t.float() * 1000.0)[..., None] * freqs  # (..., half)
        emb = torch.cat([arg.cos(), arg.sin()], dim=-1)  # (..., freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LinearSelfAttention(nn.Module):
    """ReLU linear attention with q/k RMSNorm (per head) and RoPE on the numerator."""

    def __init__(self, cfg: LinearDiTConfig):
        super().__init__()
        self.heads, self.head_dim, self.eps, self.backend = (
            cfg.heads,
            cfg.head_dim,
            cfg.attn_eps,
            cfg.attn_backend,
        )
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.q_norm, self.k_norm = RMSNorm(cfg.head_dim), RMSNorm(cfg.head_dim)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x, grid: Grid, state: AttnState | None):
        """x (B, F, S, C) -> (out (B, F, S, C), new state or None when state is None)."""
        b, f, s, c = x.shape
        qkv = self.qkv(x).view(b, f * s, 3, self.heads, self.head_dim)  # (B, N, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, D)
        # back to v's dtype: CUDA autocast runs rms_norm in float32, and the fused kernels need
        # one dtype for q, k and v
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        if state is None:
            block = None if grid.block_frames is None else grid.block_frames * grid.tokens_per_frame
            out = ops.linear_attention(
                q, k, v, grid.cos, grid.sin, block_size=block, eps=self.eps, backend=self.backend
            )
            new_state = None
        else:
            out, new_state = ops.step(state, q, k, v, grid.cos, grid.sin, eps=self.eps, backend=self.backend)
        out = out.transpose(1, 2).reshape(b, f, s, c)  # (B, F, S, C)
        return self.proj(out), new_state


class CrossAttention(nn.Module):
    """Softmax attention from video tokens to text tokens; masked text tokens are ignored."""

    def __init__(self, cfg: LinearDiTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.q = nn.Linear(cfg.hidden, cfg.hidden)
        self.kv = nn.Linear(cfg.hidden, 2 * cfg.hidden)
        self.q_norm, self.k_norm = RMSNorm(cfg.head_dim), RMSNorm(cfg.head_dim)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x, text, text_mask):
        """x (B, F, S, C), text (B, L, C), text_mask (B, L) bool or None (all valid) -> (B, F, S, C)."""
        b, f, s, c = x.shape
        q = self.q_norm(self.q(x).view(b, f * s, self.heads, self.head_dim)).transpose(1, 2)  # (B, H, N, D)
        kv = self.kv(text).view(b, text.shape[1], 2, self.heads, self.head_dim)  # (B, L, 2, H, D)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, L, D)
        k = self.k_norm(k)
        mask = None if text_mask is None else text_mask[:, None, None, :]  # None: SDPA may take flash
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, D)
        return self.proj(out.transpose(1, 2).reshape(b, f, s, c))  # (B, F, S, C)


class MixFFN(nn.Module):
    """1x1 conv -> 3x3 depthwise conv -> gated SiLU -> (+ temporal conv k=3) -> 1x1 conv.

    The temporal conv is depthwise over frames, zero-initialised, added as a residual, so a fresh
    model acts per frame. In block-causal mode a frame sees the previous frame (also across a
    block boundary) and the next frame only inside its own block; the previous block's last
    frame is what ``BlockState.conv`` carries.
    """

    def __init__(self, cfg: LinearDiTConfig):
        super().__init__()
        h = cfg.ffn_hidden
        self.inp = nn.Linear(cfg.hidden, 2 * h)
        self.dw = nn.Conv2d(2 * h, 2 * h, kernel_size=3, padding=1, groups=2 * h)
        self.t_weight = nn.Parameter(torch.zeros(3, h))  # taps for frames f-1, f, f+1
        self.t_bias = nn.Parameter(torch.zeros(h))
        self.out = nn.Linear(h, cfg.hidden)

    def forward(self, x, grid: Grid, prev: torch.Tensor | None):
        """x (B, F, S, C); prev (B, 1, S, h) or None (zeros) -> (out (B, F, S, C), last frame)."""
        b, f, s, c = x.shape
        y = self.inp(x).view(b * f, grid.height, grid.width, -1).permute(0, 3, 1, 2)  # (BF, 2h, Hp, Wp)
        y = self.dw(y).permute(0, 2, 3, 1).reshape(b, f, s, -1)  # (B, F, S, 2h)
        a, gate = y.chunk(2, dim=-1)
        y = a * F.silu(gate)  # (B, F, S, h)
        w = self.t_weight.to(y.dtype)
        out = torch.addcmul(self.t_bias.to(y.dtype), y, 1 + w[1])  # (B, F, S, h): bias + centre tap
        out[:, 1:].addcmul_(y[:, :-1], w[0])  # frame f-1
        if prev is not None:
            out[:, :1].addcmul_(prev.to(y.dtype), w[0])  # previous block's last frame
        w_next = w[2].expand(f - 1, 1, -1)  # (F-1, 1, h)
        if grid.block_frames is not None:
            absf = torch.arange(f - 1, device=x.device) + grid.frame_offset
            same_block = ((absf + 1) % grid.block_frames != 0).to(y.dtype)  # frame f+1 inside f's block
            w_next = w_next * same_block[:, None, None]
        out[:, :-1].addcmul_(y[:, 1:], w_next)  # frame f+1
        return self.out(out), y[:, -1:].clone()  # a copy: a view would pin all of y (B, F, S, h)


class Block(nn.Module):
    """One Linear DiT block; modulation = shared timestep MLP output + this block's table."""

    def __init__(self, cfg: LinearDiTConfig):
        super().__init__()
        c = cfg.hidden
        self.norm1 = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.attn = LinearSelfAttention(cfg)
        self.norm_x = nn.LayerNorm(c, elementwise_affine=True, eps=1e-6)
        self.cross = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.ffn = MixFFN(cfg)
        self.scale_shift_table = nn.Parameter(torch.randn(6, c) / c**0.5)

    def forward(self, x, mod, text, text_mask, grid: Grid, state: BlockState | None):
        """x (B, F, S, C), mod (B, F, 6, C) -> (x, new BlockState or None)."""
        m = (mod + self.scale_shift_table.to(mod.dtype))[:, :, :, None, :]  # (B, F, 6, 1, C)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = m.unbind(2)  # 6 x (B, F, 1, C)
        # addcmul: one pass for "shift + norm * (1 + scale)" and "x + gate * branch" (eager)
        a, attn_state = self.attn(
            torch.addcmul(shift_a, self.norm1(x), 1 + scale_a), grid, None if state is None else state.attn
        )
        x = torch.addcmul(x, gate_a, a)
        x = x + self.cross(self.norm_x(x), text, text_mask)
        f, last = self.ffn(
            torch.addcmul(shift_f, self.norm2(x), 1 + scale_f), grid, None if state is None else state.conv
        )
        x = torch.addcmul(x, gate_f, f)
        return x, (None if state is None else BlockState(attn_state, last))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) from the timestep embedding, then a linear map to latent patches."""

    def __init__(self, cfg: LinearDiTConfig):
        super().__init__()
        c = cfg.hidden
        self.norm = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, c) / c**0.5)
        self.linear = nn.Linear(c, math.prod(cfg.patch_size) * cfg.in_channels)

    def forward(self, x, t_emb):
        """x (B, F, S, C), t_emb (B, F, C) -> (B, F, S, p*p*C_latent)."""
        table = self.scale_shift_table.to(t_emb.dtype)[:, None, None, None, :]  # (2, 1, 1, 1, C)
        shift, scale = (t_emb[None, :, :, None, :] + table).unbind(0)  # 2 x (B, F, 1, C)
        return self.linear(self.norm(x) * (1 + scale) + shift)
