"""Linear DiT: a linear-attention video diffusion transformer after SANA-Video.

Input: VAE latents (B, C, F, H, W) with H, W divisible by the patch size (1, 2, 2), a flow-matching
time t in [0, 1] (1 = pure noise) of shape (B,) or per latent frame (B, F), and text tokens
(B, L, text_dim) with a padding mask (B, L) (True = real token). Output: the velocity, same shape
as the latents.

Each block: adaLN-single modulation (one shared timestep MLP, plus a learned per-block 6 x C
table) -> ReLU linear self-attention (RMSNorm on q/k, 3D RoPE on the numerator only) ->
softmax cross-attention to text -> Mix-FFN (1x1 conv, 3x3 depthwise conv, gated SiLU, a
zero-initialised temporal conv of kernel 3 over frames as a residual, 1x1 conv).

Attention over frames is "full" or "block_causal" (blocks of ``block_frames`` latent frames; full
inside a block, causal across blocks). Block-causal generation runs block by block through
``forward_block`` with a ``DiTState`` whose size does not depend on how many blocks came before:
per layer, the linear-attention sums S (H, D, D) and z (H, D) and the last latent frame of the
temporal conv's input.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from models.dit_config import ATTENTION_MODES, LinearDiTConfig, get_config
from models.dit_layers import (  # noqa: F401  (re-exported: the model's parts)
    Block,
    BlockState,
    CrossAttention,
    DiTState,
    FinalLayer,
    Grid,
    LinearSelfAttention,
    MixFFN,
    RMSNorm,
    TimestepEmbedder,
)
from models.ops.naive import AttnState
from models.rope import rope_3d


class LinearDiT(nn.Module):
    """Velocity model v(x_t, t, text) over VAE latents; see the module docstring for shapes."""

    def __init__(self, cfg: LinearDiTConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden
        self.patch = nn.Conv3d(cfg.in_channels, c, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.t_embed = TimestepEmbedder(cfg)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))  # adaLN-single: shared by all blocks
        self.text_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, c), nn.GELU(approximate="tanh"), nn.Linear(c, c)
        )
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)

    # ---- public API ----------------------------------------------------------------------------

    def forward(
        self, x, t, text, text_mask=None, attention: str | None = None, block_frames: int | None = None,
        text_trimmed: bool = False,
    ):
        """Whole sequence. x (B, C, F, H, W); t (B,) or (B, F) in [0, 1]; text (B, L, text_dim);
        text_mask (B, L) bool or None (all valid). ``attention`` ('full' | 'block_causal') and
        ``block_frames`` default to the config. ``text_trimmed``: text and mask already went
        through ``trim_text`` (a sampler does it once per clip), so the call skips it and its
        device-to-host copy (and can be captured in a CUDA graph). Returns the velocity
        (B, C, F, H, W)."""
        mode = attention or self.cfg.attention
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        blocks = (block_frames or self.cfg.block_frames) if mode == "block_causal" else None
        out, _ = self._run(x, t, text, text_mask, frame_offset=0, block_frames=blocks, state=None,
                           text_trimmed=text_trimmed)
        return out

    def init_state(self, batch: int, height: int, width: int, device=None) -> DiTState:
        """Empty state for block-wise generation of latents of spatial size (height, width)."""
        cfg = self.cfg
        s = (height // cfg.patch_size[1]) * (width // cfg.patch_size[2])
        layers = [
            BlockState(
                AttnState.zeros(batch, cfg.heads, cfg.head_dim, device),
                torch.zeros(batch, 1, s, cfg.ffn_hidden, device=device),
            )
            for _ in range(cfg.depth)
        ]
        return DiTState(layers, frame_offset=0)

    def forward_block(self, x, t, text, text_mask, state: DiTState):
        """One block of latent frames x (B, C, Fb, H, W) at absolute frames
        ``state.frame_offset ...``, attending to itself and to everything folded into ``state``.

        Returns ``(velocity, new_state)``; ``state`` is left untouched. A sampler denoises a block
        by calling this repeatedly with the same ``state`` (dropping ``new_state``), then calls it
        once on the clean block at t=0 and keeps that ``new_state`` ("commit"). The result equals
        ``forward(..., attention='block_causal', block_frames=Fb)`` over the whole sequence.
        """
        out, layers = self._run(x, t, text, text_mask, state.frame_offset, x.shape[2], state.layers)
        return out, DiTState(layers, state.frame_offset + x.shape[2])

    # ---- shared body ---------------------------------------------------------------------------

    def _run(self, x, t, text, text_mask, frame_offset: int, block_frames: int | None, state,
             text_trimmed: bool = False):
        cfg = self.cfg
        b, _, f, hh, ww = x.shape
        pt, ph, pw = cfg.patch_size
        if hh % ph or ww % pw:
            raise ValueError(f"latent size {hh}x{ww} is not divisible by model.patch_size {cfg.patch_size}")
        if t.ndim == 1:
            t = t[:, None].expand(b, f)  # (B, F)
        if t.shape != (b, f):
            raise ValueError(f"t must have shape (B,) or (B, F) = {(b, f)}, got {tuple(t.shape)}")
        if text_mask is None and not text_trimmed:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)

        h = self.patch(x)  # (B, C, F, Hp, Wp)
        hp, wp = h.shape[-2:]
        h = h.flatten(3).permute(0, 2, 3, 1)  # (B, F, S, C)
        cos, sin = rope_3d(f, hp, wp, cfg.head_dim, frame_offset, cfg.rope_theta, device=x.device)
        grid = Grid(f, hp, wp, frame_offset, block_frames, cos, sin)

        t_emb = self.t_embed(t)  # (B, F, C)
        mod = self.t_block(t_emb).unflatten(-1, (6, cfg.hidden))  # (B, F, 6, C)
        text, mask = (text, text_mask) if text_trimmed else trim_text(text, text_mask.bool())
        ctx = self.text_proj(text)  # (B, L', C)

        new_states = [] if state is not None else None
        for i, blk in enumerate(self.blocks):
            h, s = blk(h, mod, ctx, mask, grid, None if state is None else state[i])
            if state is not None:
                new_states.append(s)

        out = self.final(h, t_emb)  # (B, F, S, ph*pw*C)
        out = out.view(b, f, hp, wp, ph, pw, cfg.in_channels)  # (B, F, Hp, Wp, ph, pw, C)
        out = out.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, cfg.in_channels, f, hh, ww)  # (B, C, F, H, W)
        return out, new_states


def trim_text(text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop the text positions masked in every sample of the batch (padding), and the mask itself
    when what is left is all valid. Same attention output: masked keys get no weight. Saves the
    cross-attention's work on padding, and a mask-free call lets SDPA use its flash kernels (with a
    mask it falls back to kernels whose backward is several times slower on long video sequences).
    One small device-to-host copy per forward."""
    m = mask.cpu()
    used = m.any(0)  # (L,): positions some sample attends to
    if not used.any():  # no valid text at all: leave it to the attention as given
        return text, mask
    if not used.all():  # also drops masked positions inside the text, not only the tail
        idx = used.nonzero()[:, 0]
        m = m[:, idx]
        idx = idx.to(text.device)
        mask, text = mask.index_select(1, idx), text.index_select(1, idx)
    return text, (None if bool(m.all()) else mask)


def build(name_or_cfg: str | LinearDiTConfig, **overrides) -> LinearDiT:
    """Model from a config name in ``CONFIGS`` (with overrides) or a config object."""
    cfg = (
        get_config(name_or_cfg, **overrides)
        if isinstance(name_or_cfg, str)
        else replace(name_or_cfg, **overrides)
    )
    return LinearDiT(cfg)
