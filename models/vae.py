"""VAE adapters: video (B, 3, T, H, W) in [-1, 1] <-> latents (B, C, T', H', W').

Every adapter states its compression: ``temporal`` (T' = 1 + (T - 1) // temporal, so the first
frame is coded alone when temporal > 1), ``spatial`` (H' = H // spatial) and ``channels`` (C).

* ``WanVAE``: the Wan2.1 causal video VAE through diffusers (4x temporal, 8x spatial, 16 channels),
  from a hub id or local path; latents are normalised with the checkpoint's per-channel mean/std.
  diffusers is imported only when this adapter is built.
* ``PatchVAE``: built in, for offline/CPU runs and tests. NOT a learned VAE: a fixed deterministic
  linear codec that folds each (spatial x spatial) RGB patch into 3 * spatial^2 values and keeps
  a seeded random orthonormal projection to ``channels`` of them. Lossless when channels ==
  3 * spatial^2, otherwise a lossy projection; temporal factor 1. Good for plumbing, not for
  quality.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from models.clip import MissingWeights


class VAE(Protocol):
    temporal: int
    spatial: int
    channels: int

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, channels, 1 + (T-1)//temporal, H//spatial, W//spatial)."""
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Inverse shape of ``encode``; values roughly in [-1, 1]."""
        ...


class PatchVAE:
    """Deterministic linear patch codec (see module docstring); no weights, no training."""

    def __init__(self, channels: int = 16, spatial: int = 4, seed: int = 0):
        full = 3 * spatial * spatial
        if not 1 <= channels <= full:
            raise ValueError(f"vae.channels must be in [1, {full}] for spatial={spatial}, got {channels}")
        self.temporal, self.spatial, self.channels = 1, spatial, channels
        g = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(full, full, generator=g, dtype=torch.float64))
        self.basis = basis[:, :channels].float()  # (3 s^2, C), orthonormal columns

    def encode(self, video):
        b, c, t, h, w = video.shape
        if h % self.spatial or w % self.spatial:
            raise ValueError(f"video size {h}x{w} must be divisible by vae spatial factor {self.spatial}")
        x = video.transpose(1, 2).reshape(b * t, c, h, w)  # (BT, 3, H, W)
        x = F.pixel_unshuffle(x, self.spatial)  # (BT, 3 s^2, H', W')
        z = torch.einsum("nkhw,kc->nchw", x, self.basis.to(x))  # (BT, C, H', W')
        return z.reshape(b, t, self.channels, *z.shape[-2:]).transpose(1, 2)  # (B, C, T, H', W')

    def decode(self, latent):
        b, c, t, h, w = latent.shape
        z = latent.transpose(1, 2).reshape(b * t, c, h, w)  # (BT, C, H', W')
        x = torch.einsum("nchw,kc->nkhw", z, self.basis.to(z))  # (BT, 3 s^2, H', W')
        x = F.pixel_shuffle(x, self.spatial)  # (BT, 3, H, W)
        return x.reshape(b, t, 3, *x.shape[-2:]).transpose(1, 2)  # (B, 3, T, H, W)


class WanVAE:
    """Wan2.1 VAE (diffusers ``AutoencoderKLWan``): 4x temporal, 8x spatial, 16 channels.

    ``source`` is a hub id or local folder of a diffusers checkpoint (``subfolder`` "vae" for a
    full pipeline repo, "" for a bare VAE folder). Encoding uses the posterior mean.
    """

    temporal, spatial, channels = 4, 8, 16

    def __init__(
        self,
        source: str = "",
        subfolder: str = "vae",
        device="cpu",
        dtype=torch.float32,
        key: str = "train.vae.path",
        model=None,
    ):
        """Load from ``source``, or wrap an already built ``AutoencoderKLWan`` ``model`` (the
        sampling bench builds the Wan2.1 architecture with random weights this way)."""
        if model is None:
            model = _load_wan(source, subfolder, dtype, key)
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        cfg = self.model.config
        self.mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def encode(self, video):
        z = self.model.encode(video.to(self.model.dtype)).latent_dist.mean  # (B, 16, T', H/8, W/8)
        return (z - self.mean.to(z)) * self.inv_std.to(z)

    @torch.no_grad()
    def decode(self, latent):
        z = latent / self.inv_std.to(latent) + self.mean.to(latent)
        return self.model.decode(z.to(self.model.dtype)).sample.clamp(-1, 1)


def _load_wan(source: str, subfolder: str, dtype, key: str):
    if not source:
        raise MissingWeights(f"{key}: set a local path or hub id of a diffusers Wan2.1 VAE")
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as exc:
        raise MissingWeights(
            f"{key}: the Wan VAE needs the 'diffusers' package (pip install 'reelsift[wan]')"
        ) from exc
    try:
        return AutoencoderKLWan.from_pretrained(source, subfolder=subfolder or None, torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise MissingWeights(
            f"{key}: could not load a Wan VAE from {source!r} ({exc}); set a local path or hub id"
        ) from exc


VAES = {"patch": PatchVAE, "wan2.1": WanVAE}


def build_vae(kind: str, key: str = "train.vae.kind", **kwargs) -> VAE:
    """Adapter by name from ``VAES`` with its keyword arguments."""
    if kind not in VAES:
        raise ValueError(f"{key}={kind!r} is not one of {sorted(VAES)}")
    return VAES[kind](**kwargs)
