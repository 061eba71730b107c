"""The Linear DiT's config: the dataclass every layer takes, and the named sizes
(``models.linear_dit`` builds the model from it)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LinearDiTConfig:
    in_channels: int = 16
    """latent channels of the VAE (Wan2.1: 16)"""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """patch (frames, height, width) in latent units; frames must be 1"""
    depth: int = 20
    """number of transformer blocks"""
    heads: int = 20
    """attention heads (self- and cross-attention)"""
    head_dim: int = 112
    """channels per head; even (RoPE pairs); hidden width = heads * head_dim"""
    text_dim: int = 2304
    """width of the text encoder's token features"""
    ffn_ratio: float = 2.5
    """Mix-FFN hidden width over model width (gated: the first 1x1 conv outputs twice this)"""
    freq_dim: int = 256
    """sinusoidal timestep features before the timestep MLP"""
    rope_theta: float = 10000.0
    """RoPE base"""
    attention: str = "full"
    """default self-attention mode: 'full' or 'block_causal'"""
    block_frames: int = 3
    """latent frames per block in block-causal mode (>= 1)"""
    attn_eps: float = 1e-6
    """added to the linear-attention denominator"""
    attn_backend: str = "auto"
    """linear-attention backend: auto (Triton on CUDA, else PyTorch), triton, chunked, naive"""

    def __post_init__(self):
        if self.patch_size[0] != 1:
            raise ValueError(f"model.patch_size: temporal patch must be 1, got {self.patch_size}")
        if self.head_dim % 2:
            raise ValueError(f"model.head_dim must be even (RoPE pairs), got {self.head_dim}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"model.attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.block_frames < 1:
            raise ValueError(f"model.block_frames must be >= 1, got {self.block_frames}")

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def ffn_hidden(self) -> int:
        return int(self.hidden * self.ffn_ratio)


ATTENTION_MODES = ("full", "block_causal")

CONFIGS: dict[str, LinearDiTConfig] = {
    # CPU tests: ~2.6M parameters.
    "tiny": LinearDiTConfig(in_channels=4, depth=4, heads=6, head_dim=32, text_dim=64),
    # SANA-600M-like width/depth: ~0.6B parameters.
    "600m": LinearDiTConfig(depth=28, heads=16, head_dim=72),
    # SANA-Video-like 2B: 20 blocks, width 2240, 20 heads of 112.
    "2b": LinearDiTConfig(depth=20, heads=20, head_dim=112),
}


def get_config(name: str, **overrides) -> LinearDiTConfig:
    """Named config (``CONFIGS``) with field overrides; unknown names raise naming the key."""
    if name not in CONFIGS:
        raise KeyError(f"model.name={name!r} is not one of {sorted(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)
