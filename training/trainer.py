"""Flow-matching trainer for the Linear DiT, reading curated shards through training.data.

    x_t = (1 - t) x0 + t noise,   target velocity = noise - x0,   loss = mse(model(x_t, t), target)

t is logit-normal (sigmoid of N(mean, std)) then shifted (t' = s t / (1 + (s - 1) t)); one t per
sample, per latent frame, or per block of model.block_frames frames (for block-causal training).
A fraction of captions is replaced by the empty prompt so the model also learns the
unconditional velocity (classifier-free guidance).

`Trainer(cfg).fit()` runs the loop; `train_step` is one optimizer step over a list of
micro-batches (gradient accumulation). Under torchrun the model is wrapped in DDP, or sharded
with FSDP2 (dist.strategy: fsdp). All randomness of a step (noise, t, text dropout) is drawn
from generators seeded by (seed, rank, step), and the loader's choices by (seed, epoch, key), so
a resumed run continues the uninterrupted run's loss curve.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from models.linear_dit import LinearDiT, get_config
from training.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    make_text_encoder,
    make_vae,
    save_checkpoint,
    unwrap,
)
from training.config import FlowConfig, OptimConfig, TrainConfig
from training.data import Batch, ShardLoader

log = logging.getLogger("reelsift")


# --------------------------------------------------------------------------------------------
# Pieces (pure functions, tested alone)


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
        params = [p.detach().float() for p in model.parameters() if p.requires_grad]
        torch._foreach_lerp_(self.shadow, params, 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full (gathered) tensors on CPU, keyed like the model's state dict."""
        return {n: _full(t).cpu() for n, t in zip(self.names, self.shadow, strict=True)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for i, name in enumerate(self.names):
            self.shadow[i].copy_(_like(state[name], self.shadow[i]))

    def weights(self, model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full model state dict with EMA values for the parameters (buffers as they are)."""
        return {**model_state, **self.state_dict()}


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 DTensor -> whole tensor


def _like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if hasattr(target, "device_mesh"):  # FSDP2 DTensor: take this rank's shard
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(target.dtype), target.device_mesh, target.placements)
    return full.to(target)


def enable_grad_checkpointing(model: LinearDiT) -> None:
    """Recompute each block in backward; parameter names and state dicts stay unchanged."""
    for blk in model.blocks:
        blk.forward = partial(checkpoint, blk.forward, use_reentrant=False)


class TextCache:
    """Caption -> (features (L, D), kept on CPU); pads a batch to (B, L, D) + mask (B, L)."""

    def __init__(self, encoder, size: int):
        self.encoder, self.size, self.store = encoder, size, {}

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def __call__(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        missing = sorted({c for c in captions if c not in self.store})
        if missing:
            feats, mask = self.encoder(missing)  # (M, L, D), (M, L)
            if len(self.store) + len(missing) > self.size:
                self.store.clear()  # simple bound; captions are cheap to re-encode
            new = {c: feats[i, mask[i]].cpu() for i, c in enumerate(missing)}
            if self.size:
                self.store.update(new)
        else:
            new = {}
        rows = [self.store.get(c, new.get(c)) for c in captions]
        length = max(r.shape[0] for r in rows)
        text = torch.zeros(len(rows), length, rows[0].shape[1])
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            text[i, : r.shape[0]], mask[i, : r.shape[0]] = r, True
        return text.to(device), mask.to(device)


# --------------------------------------------------------------------------------------------
# One optimizer step


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
               generator: torch.Generator, autocast=nullcontext) -> dict:
    """One optimizer step over `micro` (gradient accumulation): forward/backward each
    micro-batch, clip, AdamW update at lr_at(step). Returns {loss, grad_norm, lr}."""
    inner = unwrap(model)
    lr = lr_at(step, cfg.optim, cfg.steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    total = 0.0
    for i, mb in enumerate(micro):
        b, _, f = mb.x0.shape[:3]
        t = sample_timesteps(b, f, cfg.flow, inner.cfg.block_frames, generator, mb.x0.device)
        noise = torch.randn(mb.x0.shape, generator=generator, device=mb.x0.device)
        last = i == len(micro) - 1
        sync = model.no_sync if (hasattr(model, "no_sync") and not last) else nullcontext
        with sync():
            loss = flow_loss(model, mb, t, noise, autocast=autocast)
            (loss / len(micro)).backward()
        total += loss.item()
    if cfg.optim.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    else:
        norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in model.parameters() if p.grad is not None))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total / len(micro), "grad_norm": float(_full(norm)), "lr": lr}


# --------------------------------------------------------------------------------------------
# Distributed setup


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; pick the device."""
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if not dist.is_torchelastic_launched():
        return DistInfo(device=torch.device(cfg.device if cfg.device != "auto" else
                                            ("cuda" if want_cuda else "cpu")))
    backend = cfg.dist.backend if cfg.dist.backend != "auto" else ("nccl" if want_cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if want_cuda:
        local = rank % torch.cuda.device_count()
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistInfo(rank, world, device)


def wrap_model(model: LinearDiT, cfg: TrainConfig, info: DistInfo) -> torch.nn.Module:
    if info.world == 1:
        return model
    if cfg.dist.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = None
        if info.device.type == "cuda" and cfg.optim.precision == "bf16":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kwargs = {"mp_policy": mp} if mp is not None else {}
        for blk in model.blocks:
            fully_shard(blk, **kwargs)
        fully_shard(model, **kwargs)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


# --------------------------------------------------------------------------------------------
# The trainer


@dataclass
class DataState:
    """Where this process's loader is: resumes skip `batches_in_epoch` batches of `epoch`."""

    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    failed: int = 0

    def as_dict(self) -> dict:
        return dict(epoch=self.epoch, batches_in_epoch=self.batches_in_epoch,
                    samples_seen=self.samples_seen, failed=self.failed)


@dataclass
class FitResult:
    step: int
    losses: list[tuple[int, float]]
    """(step, loss) of every step run by this fit() call"""
    checkpoint: Path | None
    samples_per_s: float


class Trainer:
    """Builds VAE, text encoder, model, optimizer, EMA and loader from one TrainConfig."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.cfg, self.resume = cfg, resume
        self.info = setup_distributed(cfg)
        self.device = self.info.device
        self.out = cfg.checkpoint_dir
        torch.manual_seed(cfg.seed)  # same initial weights on every rank

        self.vae = make_vae(cfg.vae, self.device)
        self.text = TextCache(make_text_encoder(cfg.text_encoder, self.device), cfg.text_encoder.cache_size)
        mcfg = get_config(cfg.model.name, in_channels=self.vae.channels, text_dim=self.text.dim,
                          **cfg.model.overrides())
        model = LinearDiT(mcfg).to(self.device)
        if cfg.model.grad_checkpoint:
            enable_grad_checkpointing(model)
        self.ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.model_config = mcfg
        self.step = 0
        self.data_state = DataState()

        blob = None
        if resume:
            found = latest_checkpoint(self.out)
            if found is not None:
                blob = load_checkpoint(found)
                model.load_state_dict(blob["model"])
                if self.ema is not None and blob.get("ema"):
                    self.ema.load_state_dict(blob["ema"])
                self.step = int(blob["step"])
                self.data_state = self._own_data_state(blob.get("data_state") or {})
                log.info("resuming from %s (step %d, %s)", found, self.step, self.data_state)
            else:
                log.info("--resume: no checkpoint in %s, starting fresh", self.out)
        self.model = wrap_model(model, cfg, self.info)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                           weight_decay=o.weight_decay)
        if blob is not None and blob.get("optimizer"):
            self._load_optimizer(blob["optimizer"])
        self.loader = ShardLoader(cfg, rank=self.info.rank)
        use_bf16 = self.device.type == "cuda" and o.precision == "bf16"
        self.autocast = (partial(torch.autocast, "cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext)

    # ---- checkpoint state -------------------------------------------------------------------

    def _fsdp(self) -> bool:
        return self.info.world > 1 and self.cfg.dist.strategy == "fsdp"

    def _own_data_state(self, stored: dict) -> DataState:
        ranks = stored.get("ranks") or [stored]
        if len(ranks) != self.info.world:
            log.warning("checkpoint was written by %d processes, now %d: restarting epoch %s",
                        len(ranks), self.info.world, ranks[0].get("epoch", 0))
            return DataState(epoch=int(ranks[0].get("epoch", 0)) + 1,
                             samples_seen=int(ranks[0].get("samples_seen", 0)))
        mine = ranks[self.info.rank]
        return DataState(**{k: int(mine.get(k, 0)) for k in DataState().as_dict()})

    def _load_optimizer(self, state: dict) -> None:
        if self._fsdp():
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, state,
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state)

    def save(self) -> Path | None:
        """Checkpoint now (every rank must call; rank 0 writes); returns the path on rank 0."""
        states = [self.data_state.as_dict()]
        if self.info.world > 1:
            states = [None] * self.info.world
            dist.all_gather_object(states, self.data_state.as_dict())
        extra = {}
        if self._fsdp():
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model = get_model_state_dict(self.model, options=opts)
            optim = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
            extra["model_config"] = self.model_config
        else:
            model, optim = self.model, self.optimizer.state_dict()
        ema = self.ema.state_dict() if self.ema is not None else None
        if not self.info.main:
            return None
        path = save_checkpoint(
            self.out / checkpoint_name(self.step), model=model, ema=ema, optimizer=optim, step=self.step,
            train_cfg=self.cfg, data_state={"ranks": states, **states[0]}, extra=extra)
        for old in list_checkpoints(self.out)[: -self.cfg.checkpoint.keep]:
            old.unlink(missing_ok=True)
        return path

    # ---- data -------------------------------------------------------------------------------

    def _batches(self):
        """Endless Batches, rolling over epochs; updates self.data_state as they are consumed."""
        ds = self.data_state
        while True:
            got = 0
            for batch in self.loader.epoch(ds.epoch, skip=ds.batches_in_epoch):
                got += 1
                ds.batches_in_epoch += 1
                ds.failed += sum(batch.stats.values())
                if batch.size:
                    ds.samples_seen += batch.size
                    yield batch
            if got == 0 and ds.batches_in_epoch == 0:
                raise RuntimeError(
                    f"rank {self.info.rank}: the loader produced no batch in epoch {ds.epoch}: fewer "
                    f"usable samples than train.data.batch_size={self.cfg.data.batch_size} (per bucket), "
                    "or fewer shards than processes x data.num_workers")
            ds.epoch += 1
            ds.batches_in_epoch = 0

    @torch.no_grad()
    def micro_batch(self, batch: Batch, generator: torch.Generator) -> MicroBatch:
        """Batch -> scaled latents + text features (with text dropout)."""
        if batch.latents is not None:
            z = batch.latents.to(self.device)
        else:
            video = batch.video.to(self.device).float() / 127.5 - 1.0  # (B, 3, T, H, W)
            z = self.vae.encode(video)
        z = (z.float() - self.cfg.vae.shift) * self.cfg.vae.scale
        drop = torch.rand(len(batch.captions), generator=generator) < self.cfg.flow.text_dropout
        captions = ["" if d else c for c, d in zip(batch.captions, drop.tolist(), strict=True)]
        text, mask = self.text(captions, self.device)
        return MicroBatch(z, text, mask)

    def _generators(self) -> tuple[torch.Generator, torch.Generator]:
        seed = (self.cfg.seed * 1_000_003 + self.info.rank) * 1_000_033 + self.step
        cpu = torch.Generator().manual_seed(seed)
        dev = torch.Generator(device=self.device).manual_seed(seed + 1)
        return cpu, dev

    # ---- loop -------------------------------------------------------------------------------

    def fit(self, steps: int | None = None) -> FitResult:
        """Train until `steps` (default train.steps) optimizer steps in total; checkpoint every
        checkpoint.every steps and at the end. Metrics go to <checkpoint dir>/metrics.jsonl."""
        cfg, info = self.cfg, self.info
        end = cfg.steps if steps is None else steps
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = (self.out / "metrics.jsonl").open("a") if info.main else None
        bar = None
        if info.main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=end, initial=self.step, desc="train", dynamic_ncols=True)
        batches = self._batches()
        losses, last_path = [], None
        window = {"samples": 0, "frames": 0, "data_s": 0.0, "t0": time.perf_counter()}
        total_samples, t_start = 0, time.perf_counter()
        try:
            while self.step < end:
                cpu_gen, dev_gen = self._generators()
                t_data = time.perf_counter()
                micro = []
                for _ in range(cfg.optim.grad_accum):
                    batch = next(batches)
                    micro.append(self.micro_batch(batch, cpu_gen))
                    window["samples"] += batch.size
                    window["frames"] += batch.size * cfg.data.num_frames
                window["data_s"] += time.perf_counter() - t_data
                out = train_step(self.model, self.optimizer, micro, cfg=cfg, step=self.step,
                                 generator=dev_gen, autocast=self.autocast)
                self.step += 1
                if self.ema is not None:
                    self.ema.update(unwrap(self.model), self.step)
                losses.append((self.step, out["loss"]))
                if not math.isfinite(out["loss"]):
                    raise FloatingPointError(
                        f"loss is {out['loss']} at step {self.step}; lower train.optim.lr")
                if self.step % cfg.log_every == 0 or self.step == end:
                    dt = time.perf_counter() - window["t0"]
                    sps = window["samples"] * info.world / max(dt, 1e-9)
                    total_samples += window["samples"]
                    row = dict(step=self.step, loss=round(out["loss"], 6), lr=out["lr"],
                               grad_norm=round(out["grad_norm"], 4), samples_per_s=round(sps, 2),
                               frames_per_s=round(window["frames"] * info.world / max(dt, 1e-9), 1),
                               data_wait_frac=round(window["data_s"] / max(dt, 1e-9), 3),
                               epoch=self.data_state.epoch, samples_seen=self.data_state.samples_seen,
                               failed_samples=self.data_state.failed, time=round(time.time(), 3))
                    if metrics is not None:
                        metrics.write(json.dumps(row) + "\n")
                        metrics.flush()
                    if bar is not None:
                        bar.set_postfix(loss=f"{out['loss']:.4f}", lr=f"{out['lr']:.2e}", sps=f"{sps:.1f}")
                    window = {"samples": 0, "frames": 0, "data_s": 0.0, "t0": time.perf_counter()}
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.checkpoint.every == 0 or self.step == end:
                    last_path = self.save() or last_path
        finally:
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        elapsed = time.perf_counter() - t_start
        return FitResult(self.step, losses, last_path, total_samples * info.world / max(elapsed, 1e-9))
