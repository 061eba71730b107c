"""What the training benches share: a TrainConfig for the 2b model at 480p-81f latents, a loader
of random latents and a random text encoder (both deterministic), and the FLOP count for MFU.

The loader feeds ``training.trainer.Trainer`` through its ``loader=`` argument, so the benches
run the trainer's own code (micro-batches, ``train_step``, EMA, DDP/FSDP2 wrapping, checkpoints).
Process ``rank`` of ``world`` gets global batch ``i * world + rank`` as its i-th batch: one
process with gradient accumulation A x W sees, step by step, what W processes with A see.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.config import (
    CheckpointConfig,
    DataConfig,
    DistConfig,
    FlowConfig,
    ModelConfig,
    OptimConfig,
    TextEncoderConfig,
    TrainConfig,
    VAEConfig,
)

# Wan2.1 VAE latents of a 480x832, 81-frame clip: 16 x 21 x 60 x 104 -> 21 x 30 x 52 = 32,760 tokens
LATENT_480P_81F = (16, 21, 60, 104)
TEXT_LEN, TEXT_DIM = 300, 2304
H200_BF16_PEAK = 989.4e12  # dense bf16 FLOP/s of an H200 SXM (datasheet): the MFU denominator


def train_config(out: str | Path, *, depth: int = 20, grad_checkpoint: bool = True, batch: int = 1,
                 accum: int = 1, steps: int = 20, strategy: str = "ddp", every: int = 10**9,
                 latent=LATENT_480P_81F, seed: int = 0, device: str = "cuda",
                 model: str = "2b", precision: str = "bf16") -> TrainConfig:
    """2b at the given depth, bf16 autocast (or fp8 linears), EMA, AdamW, flow matching on random latents
    (``device='cpu', model='tiny'``: a CPU smoke test of the same code)."""
    return TrainConfig(
        steps=steps, seed=seed, device=device, log_every=1, progress=False,
        model=ModelConfig(name=model, depth=depth, grad_checkpoint=grad_checkpoint),
        vae=VAEConfig(kind="patch", channels=latent[0], spatial=8),
        text_encoder=TextEncoderConfig(path="random", max_length=TEXT_LEN),
        data=DataConfig(batch_size=batch, num_frames=latent[1], num_workers=0),
        flow=FlowConfig(text_dropout=0.1),
        optim=OptimConfig(lr=1e-4, grad_accum=accum, precision=precision, ema_decay=0.999),
        dist=DistConfig(strategy=strategy),
        checkpoint=CheckpointConfig(dir=str(out), every=every, keep=2),
    )


@dataclass
class LatentBatch:
    """The fields of training.data.Batch that the trainer reads."""

    keys: list[str]
    captions: list[str]
    latents: torch.Tensor
    tier: str = "480p"
    video: None = None
    stats: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.keys)


class RandomLatents:
    """``epoch(epoch, skip)`` -> endless LatentBatch of random latents (B, C, F, H, W), seeded by
    (epoch, global batch index)."""

    def __init__(self, batch: int, latent=LATENT_480P_81F, rank: int = 0, world: int = 1):
        self.batch, self.latent, self.rank, self.world = batch, tuple(latent), rank, world

    def epoch(self, epoch: int, skip: int = 0):
        i = skip
        while True:
            g = i * self.world + self.rank
            gen = torch.Generator().manual_seed(epoch * 1_000_003 + g)
            x = torch.randn(self.batch, *self.latent, generator=gen)
            keys = [f"e{epoch}-b{g}-{j}" for j in range(self.batch)]
            yield LatentBatch(keys, [f"random caption {g}-{j}" for j in range(self.batch)], x)
            i += 1


class RandomText:
    """Stand-in text encoder: fixed random features (L, dim) per caption, from its hash."""

    def __init__(self, dim: int = TEXT_DIM, length: int = TEXT_LEN):
        self.dim, self.length = dim, length

    def __call__(self, captions: list[str]):
        feats = torch.empty(len(captions), self.length, self.dim)
        for i, c in enumerate(captions):
            seed = int.from_bytes(hashlib.sha256(c.encode()).digest()[:8], "little")
            feats[i] = torch.randn(self.length, self.dim, generator=torch.Generator().manual_seed(seed))
        return feats, torch.ones(len(captions), self.length, dtype=torch.bool)


def flops_per_sample(model, tokens_hw: tuple[int, int, int], text_len: int = TEXT_LEN) -> dict:
    """Training FLOPs of one sample (forward + backward = 3 x forward), two ways.

    * ``issue``: 6 x parameters x video tokens, plus attention: self-attention 4 N H D^2 per layer
      (the D x D state and the output), cross-attention 4 N L H D per layer (scores and values),
      each x 3 for training.
    * ``exact``: every matrix product as applied: linear layers on video tokens x N, on text
      tokens x L (text projection, cross-attention keys/values), per frame (timestep MLPs), the
      patch embedding and the 3x3 depthwise convolution, plus the attention terms above.
    Gradient checkpointing's recomputed forward is not counted (MFU counts model work only).
    """
    cfg = model.cfg
    f, hp, wp = tokens_hw
    n, hidden, h, d = f * hp * wp, cfg.hidden, cfg.heads, cfg.head_dim
    params = sum(p.numel() for p in model.parameters())
    attn_fwd = cfg.depth * (4 * n * h * d * d + 4 * n * text_len * h * d)
    per_token = 0  # forward multiply-adds per video token
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            if name.startswith("text_proj") or name.endswith("cross.kv"):
                continue  # applied to text tokens
            if name.startswith(("t_embed", "t_block")):
                continue  # applied per frame
            per_token += mod.in_features * mod.out_features
    text_macs = sum(m.in_features * m.out_features for nm, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear)
                    and (nm.startswith("text_proj") or nm.endswith("cross.kv")))
    frame_macs = sum(m.in_features * m.out_features for nm, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and nm.startswith(("t_embed", "t_block")))
    conv_macs = n * (cfg.in_channels * 4 * hidden + cfg.depth * 9 * 2 * cfg.ffn_hidden)
    exact_fwd = 2 * (n * per_token + text_len * text_macs + f * frame_macs + conv_macs) + attn_fwd
    return {"params": params, "tokens": n, "issue": 6 * params * n + 3 * attn_fwd, "exact": 3 * exact_fwd,
            "attention_share": 3 * attn_fwd / (3 * exact_fwd)}


def timed_fit(tr, steps: int | None = None) -> tuple[object, list[float]]:
    """``tr.fit(steps)`` with a host timestamp after each optimizer step, once the GPU caught up
    (the sync costs nothing here: the trainer reads the loss every step anyway)."""
    import time

    times: list[float] = []
    orig = tr.optimizer.step

    def step(*a, **k):
        out = orig(*a, **k)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        return out

    tr.optimizer.step = step
    try:
        return tr.fit(steps), times
    finally:
        tr.optimizer.step = orig


def median_step_s(times: list[float], warmup: int) -> float:
    """Median gap between step ends, skipping the first ``warmup`` steps."""
    import statistics

    gaps = [b - a for a, b in zip(times, times[1:], strict=False)][max(0, warmup - 1):]
    return statistics.median(gaps) if gaps else float("nan")
