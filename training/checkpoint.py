"""Checkpoints: one `step-NNNNNNN.pt` file per save, written atomically (temp file + rename).

A checkpoint is a dict:

    format        "reelsift-train/1"
    step          optimizer steps taken
    model         full (unsharded) state dict of the LinearDiT
    ema           EMA weights, same keys as model (or None)
    optimizer     AdamW state (keys are parameter names, so it survives DDP/FSDP wrapping; or None)
    model_config  dataclasses.asdict(LinearDiTConfig): rebuilds the model without any YAML
    train_config  the TrainConfig as a plain dict
    data_state    where the loader was: {"epoch", "batches_in_epoch", "samples_seen", ...}
    extra         trainer extras (RNG state, ...)

`load_for_inference` gives the sampler everything it needs: the model (EMA weights when
present, eval mode), the VAE and text encoder named by the stored config, and the step.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from manifests.configtools import to_dict
from models.linear_dit import LinearDiT, LinearDiTConfig
from models.text_encoder import TextEncoder, build_text_encoder
from models.vae import VAE, build_vae
from training.config import TextEncoderConfig, TrainConfig, VAEConfig, train_config_from_dict

FORMAT = "reelsift-train/1"
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}.pt"


def latest_checkpoint(directory: str | Path) -> Path | None:
    """Newest `step-*.pt` in `directory` by step number; None when there is none (or no folder)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """All `step-*.pt` files in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name)))
    return [p for _, p in found]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The LinearDiT inside a DDP wrapper (FSDP2 modules are the model itself)."""
    return model.module if hasattr(model, "module") else model


def _state(obj: Any) -> Any:
    if obj is None or isinstance(obj, Mapping):
        return obj
    return obj.state_dict()


def save_checkpoint(path: str | Path, *, model, ema, optimizer, step: int, train_cfg: TrainConfig,
                    data_state: Mapping | None, extra: Mapping | None = None) -> Path:
    """Write one checkpoint atomically; returns its path.

    model: the LinearDiT, a DDP-wrapped one, or an already gathered full state dict (FSDP: use
    `torch.distributed.checkpoint.state_dict.get_model_state_dict(..., full_state_dict=True)`
    and pass `model_config` in `extra`). ema / optimizer: objects with `state_dict()`, plain
    dicts, or None.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    if isinstance(model, Mapping):
        model_state = dict(model)
        model_cfg = extra.pop("model_config")
    else:
        inner = unwrap(model)
        model_state = inner.state_dict()
        model_cfg = inner.cfg
    if dataclasses.is_dataclass(model_cfg):
        model_cfg = dataclasses.asdict(model_cfg)
    blob = {
        "format": FORMAT,
        "step": int(step),
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "ema": _state(ema),
        "optimizer": _state(optimizer),
        "model_config": model_cfg,
        "train_config": to_dict(train_cfg),
        "data_state": dict(data_state or {}),
        "extra": extra,
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The raw checkpoint dict; `path` may be a folder (its newest checkpoint is read)."""
    path = resolve(path)
    blob = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a reelsift training checkpoint (format {FORMAT!r})")
    return blob


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a folder; a clear error when none."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"{path}: no step-*.pt checkpoint in this folder")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    return path


def model_config_of(blob: Mapping) -> LinearDiTConfig:
    data = dict(blob["model_config"])
    data["patch_size"] = tuple(data["patch_size"])
    return LinearDiTConfig(**data)


# --------------------------------------------------------------------------------------------
# Components named by the config (shared with the trainer)


def make_vae(cfg: VAEConfig, device="cpu", dtype=torch.float32) -> VAE:
    """The VAE adapter named by train.vae; ``dtype``: a learned VAE's weights (the patch codec has
    none)."""
    if cfg.kind == "patch":
        return build_vae("patch", channels=cfg.channels, spatial=cfg.spatial)
    return build_vae(cfg.kind, source=cfg.path, subfolder=cfg.subfolder, device=device, dtype=dtype)


def make_text_encoder(cfg: TextEncoderConfig, device="cpu") -> TextEncoder:
    """The frozen text encoder named by train.text_encoder."""
    return build_text_encoder(cfg.path, max_length=cfg.max_length, device=device)


@dataclass
class Inference:
    """What sampling needs, rebuilt from one checkpoint."""

    model: LinearDiT
    """EMA weights when the checkpoint has them, else the raw weights; eval mode, no grad."""
    vae: VAE
    text_encoder: TextEncoder
    cfg: TrainConfig
    step: int

    def to_latents(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> DiT latents (VAE encode, then shift/scale)."""
        v = self.cfg.vae
        return (self.vae.encode(video) - v.shift) * v.scale

    def to_video(self, latents: torch.Tensor) -> torch.Tensor:
        """DiT latents -> video (B, 3, T, H, W) roughly in [-1, 1] (undo scale/shift, decode)."""
        v = self.cfg.vae
        return self.vae.decode(latents.float() / v.scale + v.shift)


def load_for_inference(path: str | Path, device="cpu", vae_dtype=torch.float32) -> Inference:
    """Model (EMA weights if present, eval), VAE (weights in ``vae_dtype``) and text encoder from a
    checkpoint file or the newest checkpoint of a folder."""
    blob = load_checkpoint(path)
    cfg = train_config_from_dict(blob["train_config"])
    model = LinearDiT(model_config_of(blob))
    weights = blob["ema"] if blob.get("ema") else blob["model"]
    model.load_state_dict(weights)
    model.to(device).eval().requires_grad_(False)
    return Inference(
        model=model,
        vae=make_vae(cfg.vae, device, vae_dtype),
        text_encoder=make_text_encoder(cfg.text_encoder, device),
        cfg=cfg,
        step=int(blob["step"]),
    )
