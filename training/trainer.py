"""Flow-matching trainer for the Linear DiT, reading curated shards through training.data.

    x_t = (1 - t) x0 + t noise,   target velocity = noise - x0,   loss = mse(model(x_t, t), target)

t is logit-normal (sigmoid of N(mean, std)) then shifted (t' = s t / (1 + (s - 1) t)); one t per
sample, per latent frame, or per block of model.block_frames frames (for block-causal training).
A fraction of captions is replaced by the empty prompt so the model also learns the
unconditional velocity (classifier-free guidance).

`Trainer(cfg).fit()` runs the loop; `training.step.train_step` is one optimizer step over a list
of micro-batches (gradient accumulation). Under torchrun the model is wrapped in DDP, or sharded
with FSDP2 (dist.strategy: fsdp; `training.distributed`). All randomness of a micro-batch (noise,
t, text dropout) is drawn from generators seeded by (seed, step, its index in the global batch),
and the loader's choices by (seed, epoch, key): a resumed run continues the uninterrupted run's
loss curve, and N processes with accumulation A draw what one process with accumulation N x A
draws.
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

from models.fp8 import to_fp8
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
from training.config import TrainConfig
from training.distributed import DistInfo, setup_distributed, wrap_model  # noqa: F401  (re-exported)
from training.step import (  # noqa: F401  (re-exported: the trainer's pieces)
    EMA,
    MicroBatch,
    enable_grad_checkpointing,
    flow_loss,
    lr_at,
    make_optimizer,
    noised,
    sample_timesteps,
    train_step,
)

log = logging.getLogger("reelsift")


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
# The trainer


@dataclass
class DataState:
    """Where this process's loader is: resumes skip `batches_in_epoch` batches of `epoch`, or,
    with DataLoader workers, each worker's own count (`per_worker`, `last_worker`: see
    training.data.Position)."""

    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    failed: int = 0
    per_worker: list[int] = field(default_factory=list)
    last_worker: int = -1

    def as_dict(self) -> dict:
        return dict(epoch=self.epoch, batches_in_epoch=self.batches_in_epoch,
                    samples_seen=self.samples_seen, failed=self.failed,
                    per_worker=list(self.per_worker), last_worker=self.last_worker)

    @classmethod
    def from_dict(cls, d: dict) -> DataState:
        ints = {k: int(d[k]) for k in ("epoch", "batches_in_epoch", "samples_seen", "failed", "last_worker")
                if k in d}
        return cls(**ints, per_worker=[int(n) for n in d.get("per_worker", [])])

    def consumed(self, batch) -> None:
        self.batches_in_epoch += 1
        worker = getattr(batch, "worker", None)  # loaders other than ShardLoader: counted only
        if worker is not None:
            self.per_worker += [0] * (worker + 1 - len(self.per_worker))
            self.per_worker[worker] += 1
            self.last_worker = worker

    def skip(self):
        """What the loader leaves out of `epoch`: a per-worker Position once batches told which
        worker made them, else the batch count (a loader without workers, a checkpoint from before)."""
        if not self.per_worker:
            return self.batches_in_epoch
        from training.data import Position

        return Position(list(self.per_worker), self.last_worker)


@dataclass
class FitResult:
    step: int
    losses: list[tuple[int, float]]
    """(step, loss) of every step run by this fit() call"""
    checkpoint: Path | None
    samples_per_s: float


class Trainer:
    """Builds VAE, text encoder, model, optimizer, EMA and loader from one TrainConfig.

    ``loader`` (anything with ``epoch(epoch, skip) -> Iterator[Batch]``) and ``text_encoder``
    replace the config's shard loader and encoder (benchmarks feed random latents this way);
    ``compile_blocks`` and ``checkpoint_blocks`` override ``train.model.compile`` and
    ``train.model.grad_checkpoint_blocks`` (benchmarks sweep them).
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, *, loader=None, text_encoder=None,
                 compile_blocks: bool | None = None, checkpoint_blocks: int | None = None):
        self.cfg, self.resume = cfg, resume
        self.info = setup_distributed(cfg)
        self.device = self.info.device
        self.out = cfg.checkpoint_dir
        torch.manual_seed(cfg.seed)  # same initial weights on every rank

        self.vae = make_vae(cfg.vae, self.device)
        encoder = text_encoder
        if encoder is None:
            encoder = make_text_encoder(cfg.text_encoder, self.device)
        self.text = TextCache(encoder, cfg.text_encoder.cache_size)
        mcfg = get_config(cfg.model.name, in_channels=self.vae.channels, text_dim=self.text.dim,
                          **cfg.model.overrides())
        with torch.device(self.device):  # initialised where it trains: a 2B model in seconds, not minutes
            model = LinearDiT(mcfg)
        if cfg.optim.precision == "fp8":  # before compile and checkpointing wrap the blocks
            to_fp8(model, key="train.optim.precision")
        if compile_blocks if compile_blocks is not None else cfg.model.compile:
            for blk in model.blocks:
                blk.compile()
        if cfg.model.grad_checkpoint:
            if checkpoint_blocks is None:
                checkpoint_blocks = cfg.model.grad_checkpoint_blocks
            enable_grad_checkpointing(model, checkpoint_blocks)
        self.model_config = mcfg
        self.step = 0
        self.data_state = DataState()

        blob = None
        if resume:
            found = latest_checkpoint(self.out)
            if found is not None:
                blob = load_checkpoint(found)
                model.load_state_dict(blob["model"])
                self.step = int(blob["step"])
                self.data_state = self._own_data_state(blob.get("data_state") or {})
                log.info("resuming from %s (step %d, %s)", found, self.step, self.data_state)
            else:
                log.info("--resume: no checkpoint in %s, starting fresh", self.out)
        self.model = wrap_model(model, cfg, self.info)
        # after wrapping: under FSDP2 the EMA holds this rank's shards, like the parameters
        self.ema = EMA(unwrap(self.model), cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        if self.ema is not None and blob is not None and blob.get("ema"):
            self.ema.load_state_dict(blob["ema"])
        o = cfg.optim
        self.optimizer = make_optimizer(self.model, o)
        if blob is not None and blob.get("optimizer"):
            self._load_optimizer(blob["optimizer"])
        if loader is None:
            from training.data import ShardLoader  # PyAV and webdataset: only for the real loader

            loader = ShardLoader(cfg, rank=self.info.rank)
        self.loader = loader
        use_bf16 = self.device.type == "cuda" and o.precision in ("bf16", "fp8")
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
        return DataState.from_dict(ranks[self.info.rank])

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
            for batch in self.loader.epoch(ds.epoch, skip=ds.skip()):
                if getattr(batch, "filler", False):
                    continue
                got += 1
                ds.consumed(batch)
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
            ds.batches_in_epoch, ds.per_worker, ds.last_worker = 0, [], -1

    @torch.no_grad()
    def micro_batch(self, batch, generator: torch.Generator) -> MicroBatch:
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

    def _generators(self, micro: int) -> tuple[torch.Generator, torch.Generator]:
        """(CPU, device) generators of micro-batch ``micro`` of this process at this step, seeded
        by its index in the global batch."""
        index = self.info.rank * self.cfg.optim.grad_accum + micro
        seed = (self.cfg.seed * 1_000_003 + index) * 1_000_033 + self.step
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
                gens = [self._generators(i) for i in range(cfg.optim.grad_accum)]
                t_data = time.perf_counter()
                micro = []
                for cpu_gen, _ in gens:
                    batch = next(batches)
                    micro.append(self.micro_batch(batch, cpu_gen))
                    window["samples"] += batch.size
                    window["frames"] += batch.size * cfg.data.num_frames
                window["data_s"] += time.perf_counter() - t_data
                out = train_step(self.model, self.optimizer, micro, cfg=cfg, step=self.step,
                                 generator=[dev for _, dev in gens], autocast=self.autocast)
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
