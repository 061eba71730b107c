"""One optimizer step of flow matching, and the pure pieces it is made of (tested alone).

    x_t = (1 - t) x0 + t noise,   target velocity = noise - x0,   loss = mse(model(x_t, t), target)

t is logit-normal (sigmoid of N(mean, std)) then shifted (t' = s t / (1 + (s - 1) t)); one t per
sample, per latent frame, or per block of model.block_frames frames (for block-causal training).
``train_step`` runs the forward/backward of each micro-batch (gradient accumulation), clips and
steps the optimizer; it is the whole GPU work of a training step, so bench/train_gpu.py times it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models.linear_dit import LinearDiT
from training.checkpoint import unwrap
from training.config import FlowConfig, OptimConfig, TrainConfig


def sample_timesteps(batch: int, frames: int, flow: FlowConfig, block_frames: int,
                     generator: torch.Generator, device) -> torch.Tensor:
    """Flow times in (0, 1): shape (B,) for 'sample', (B, F) for 'frame' and 'block'."""
    n = {"sample": 1, "frame": frames, "block": math.ceil(frames / block_frames)}[flow.timesteps]
    u = torch.randn(batch, n, generator=generator, device=device) * flow.logit_std + flow.logit_mean
    t = torch.sigmoid(u)
    t = flow.shift * t / (1 + (flow.shift - 1) * t)  # (B, n)
    if flow.timesteps == "sample":
        return t[:, 0]
    if flow.timesteps == "block":
        t = t.repeat_interleave(block_frames, dim=1)[:, :frames]  # (B, F)
    return t


def noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target) for latents x0 (B, C, F, H, W) and t (B,) or (B, F)."""
    tt = t.view(t.shape[0], 1, -1, 1, 1) if t.ndim == 2 else t.view(-1, 1, 1, 1, 1)
    return (1 - tt) * x0 + tt * noise, noise - x0


def lr_at(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then constant/cosine."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    span = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    floor = optim.lr * optim.min_lr_ratio
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of the trainable parameters (fp32, same device/sharding)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm-up: early weights fade quickly
        params = [_local(p.detach()).float() for p in model.parameters() if p.requires_grad]
        torch._foreach_lerp_([_local(t) for t in self.shadow], params, 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (gathered) tensors on CPU, keyed like the model's state dict."""
        return {n: _full(t).cpu() for n, t in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, name in enumerate(self.names):
            self.shadow[i].copy_(_like(state[name], self.shadow[i]))

    def weights(self, model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full model state dict with EMA values for the parameters (buffers as they are)."""
        return {**model_state, **self.state_dict()}


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # FSDP2 DTensor -> this rank's shard (a view)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 DTensor -> whole tensor


def _like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if hasattr(target, "device_mesh"):  # FSDP2 DTensor: take this rank's shard
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(target.dtype), target.device_mesh, target.placements)
    return full.to(target)


def enable_grad_checkpointing(model: LinearDiT, blocks: int | None = None) -> None:
    """Recompute blocks in backward: every block, or the first ``blocks`` (the others keep their
    activations: less recompute where memory allows). Parameter names and state dicts stay."""
    for blk in list(model.blocks)[:blocks]:
        blk.forward = partial(checkpoint, blk.forward, use_reentrant=False)


def make_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the (wrapped) model's parameters; the fused CUDA kernel where every parameter
    is a plain CUDA tensor (one launch per step instead of a dozen per parameter group)."""
    params = list(model.parameters())
    fused = all(p.is_cuda and type(p.data) is torch.Tensor for p in params)  # FSDP2: DTensors -> foreach
    return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                             weight_decay=optim.weight_decay, fused=fused or None)


@dataclass
class MicroBatch:
    x0: torch.Tensor
    """clean latents, scaled (B, C, F, H, W)"""
    text: torch.Tensor
    """(B, L, text_dim)"""
    mask: torch.Tensor
    """(B, L) bool"""


def flow_loss(model, mb: MicroBatch, t: torch.Tensor, noise: torch.Tensor, attention: str | None = None,
              autocast=nullcontext) -> torch.Tensor:
    """Mean squared velocity error of one micro-batch (fp32 loss)."""
    x_t, target = noised(mb.x0, noise, t)
    with autocast():
        pred = model(x_t, t, mb.text, mb.mask, attention=attention)
    return F.mse_loss(pred.float(), target.float())


def train_step(model, optimizer, micro: list[MicroBatch], *, cfg: TrainConfig, step: int,
               generator: torch.Generator | list[torch.Generator], autocast=nullcontext) -> dict:
    """One optimizer step over `micro` (gradient accumulation): forward/backward each
    micro-batch, clip, AdamW update at lr_at(step). Returns {loss, grad_norm, lr}; under a
    process group the loss is the mean over all processes' micro-batches (the global batch).

    ``generator``: one for all micro-batches, or one per micro-batch (the trainer seeds each by
    its index in the global batch, so the split over processes does not change the numbers)."""
    gens = generator if isinstance(generator, list) else [generator] * len(micro)
    inner = unwrap(model)
    lr = lr_at(step, cfg.optim, cfg.steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    total = torch.zeros((), device=micro[0].x0.device)
    for i, (mb, gen) in enumerate(zip(micro, gens, strict=True)):
        b, _, f = mb.x0.shape[:3]
        t = sample_timesteps(b, f, cfg.flow, inner.cfg.block_frames, gen, mb.x0.device)
        noise = torch.randn(mb.x0.shape, generator=gen, device=mb.x0.device)
        last = i == len(micro) - 1
        sync = model.no_sync if (hasattr(model, "no_sync") and not last) else nullcontext
        with sync():
            loss = flow_loss(model, mb, t, noise, autocast=autocast)
            (loss / len(micro)).backward()
        total += loss.detach()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total, op=dist.ReduceOp.AVG if dist.get_backend() == "nccl" else dist.ReduceOp.SUM)
        if dist.get_backend() != "nccl":  # gloo has no AVG
            total /= dist.get_world_size()
    if cfg.optim.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    else:
        norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in model.parameters() if p.grad is not None))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total.item() / len(micro), "grad_norm": float(_full(norm)), "lr": lr}
