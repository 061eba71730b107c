"""WebDataset loader over a run root's shards: mp4 clips (or cached latents) -> bucketed batches.

Pipeline, per epoch (each stage is a webdataset pipeline stage; the expensive one is last):

    shard urls (shuffled per epoch) -> split_by_node -> split_by_worker -> tar samples
      -> sample shuffle buffer -> prepare (json, caption, bucket; cheap)
      -> bucket batcher (one tier and aspect bucket per batch) -> skip (resume)
      -> decode (PyAV from in-memory mp4 bytes, resize to cover the bucket, crop) -> Batch

Grouping happens before decoding, so resuming mid-epoch skips batches without decoding them.
Every random choice about a sample (temporal/spatial crop, which caption) is drawn from an RNG
seeded by (seed, epoch, key), so a resumed run sees exactly the batches an uninterrupted one
would. A sample that fails to parse or decode is counted in the batch's `stats` and left out;
a batch left empty still comes out (with `size` 0) so batch positions stay stable.

Per-sample decoding, bucketing and cropping live in training/decode.py; latent caching
(`cache_latents`, which the loader reads with `data.source: latents`) in training/latents.py.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from manifests import fs, fs_read
from manifests.commit import committed_glob
from manifests.configtools import ConfigError
from training.config import DataConfig, TrainConfig, VAEConfig
from training.decode import (  # noqa: F401  (re-exported: the loader's per-sample API)
    SampleError,
    cover_size,
    crop_offsets,
    decode_clip,
    make_caption,
    nearest_bucket,
    sample_rng,
    window_start,
)

log = logging.getLogger("reelsift")


# --------------------------------------------------------------------------------------------
# Shard discovery


def shard_urls(cfg: DataConfig, source: str | None = None) -> list[str]:
    """Sorted shard URLs: `data.urls` when given (local globs expanded), else every
    `<root>/<shards|latents>/<tier>/*.tar` of the selected tiers."""
    source = source or cfg.source
    if cfg.urls:
        out = []
        for url in cfg.urls:
            if url.startswith(("pipe:", "http://", "https://", "gs://", "s3://")) or "*" not in url:
                out.append(url)
            else:
                found = sorted(str(p) for p in Path("/").glob(url.lstrip("/"))) if url.startswith("/") \
                    else sorted(str(p) for p in Path().glob(url))
                out.extend(found)
        if not out:
            raise ConfigError(f"train.data.urls {list(cfg.urls)} matched no shard")
        return out
    if not cfg.root:
        raise ConfigError("train.data.root: set the run root (--root) or train.data.urls")
    base = fs.upath(cfg.root) / ("shards" if source == "video" else "latents")
    tiers = cfg.tiers or tuple(sorted(p.name for p in base.glob("*") if p.is_dir()))
    urls = [str(p) for tier in tiers for p in committed_glob(base / tier, "*.tar")]
    if not urls:
        hint = ("run `reelsift run`/`reelsift shard` first" if source == "video"
                else "run `reelsift cache-latents` first")
        raise ConfigError(f"train.data: no shards under {base} for tiers {list(tiers) or 'any'}; {hint}")
    return urls


# --------------------------------------------------------------------------------------------
# Pipeline stages


@dataclass
class Item:
    """A sample after `prepare`: still undecoded."""

    key: str
    tier: str
    bucket: tuple[int, ...]
    """(height, width) in pixels for video; the latent shape (C, h, w) for latents"""
    caption: str
    payload: bytes
    meta: dict
    rng: random.Random


@dataclass
class Batch:
    """One training batch; every sample has the same tier and bucket."""

    keys: list[str]
    captions: list[str]
    tier: str
    video: torch.Tensor | None = None
    """uint8 (B, 3, T, H, W) when reading mp4 shards"""
    latents: torch.Tensor | None = None
    """float (B, C, F, h, w) raw VAE latents when reading latent shards"""
    stats: dict = field(default_factory=dict)
    """counts since the previous batch of this worker: failed, too_short"""
    worker: int = 0
    """the DataLoader worker that made it (0 without workers)"""
    filler: bool = False
    """a resume's placeholder that puts the workers' turns back in order: not a batch, not counted"""

    @property
    def size(self) -> int:
        return len(self.keys)


class Prepare:
    """Tar sample {'__key__', 'mp4'|'npy', 'txt', 'json'} -> Item (or None, counted)."""

    def __init__(self, cfg: TrainConfig, epoch: int, counters: dict):
        self.cfg, self.data, self.epoch, self.counters = cfg, cfg.data, epoch, counters
        self.latents = cfg.data.source == "latents"

    def __call__(self, sample: dict) -> Item | None:
        key = sample.get("__key__", "?")
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
            txt = sample.get("txt", b"").decode("utf-8", "replace")
            rng = sample_rng(self.cfg.seed, self.epoch, key)
            caption = make_caption(txt, meta, self.data, rng)
            shard = meta.get("shard") or {}
            tier = str(shard.get("tier") or (meta.get("decision") or {}).get("tier") or _tier_of(sample))
            if self.latents:
                payload, bucket = sample["npy"], self._latent_bucket(meta, key)
            else:
                payload = sample["mp4"]
                sizes = self.data.bucket_sizes(tier)
                bucket = nearest_bucket(int(shard["width"]), int(shard["height"]), sizes)
        except (KeyError, ValueError, TypeError) as exc:
            if isinstance(exc, ConfigError):
                raise
            self.counters["failed"] += 1
            log.warning("skipping sample %s: bad sample (%s: %s)", key, type(exc).__name__, exc)
            return None
        return Item(key, tier, tuple(bucket), caption, payload, meta, rng)

    def _latent_bucket(self, meta: dict, key: str) -> tuple[int, int, int]:
        lat = meta["latent"]
        want, have = self.cfg.vae, lat.get("vae", {})
        if have.get("kind") != want.kind or int(have.get("channels", -1)) != _channels(want):
            raise ConfigError(
                f"train.vae: latent shard sample {key} was cached with vae {have}, config has "
                f"kind={want.kind} channels={_channels(want)}; re-run `reelsift cache-latents`")
        if int(lat.get("frame_stride", -1)) != self.data.frame_stride:
            raise ConfigError(
                f"train.data.frame_stride={self.data.frame_stride} but latents were cached with "
                f"stride {lat.get('frame_stride')}; re-run `reelsift cache-latents`")
        return tuple(int(v) for v in lat["shape"][:1] + lat["shape"][2:])  # (C, h, w)


def _channels(vae: VAEConfig) -> int:
    return vae.channels if vae.kind == "patch" else 16


def _tier_of(sample: dict) -> str:
    url = sample.get("__url__", "")
    return Path(url).parent.name if url else "default"


def bucket_batches(items: Iterator[Item], batch_size: int, drop_last: bool) -> Iterator[list[Item]]:
    """Group items by (tier, bucket); yield a group as soon as it holds batch_size items."""
    pending: dict[tuple, list[Item]] = {}
    for item in items:
        group = pending.setdefault((item.tier, item.bucket), [])
        group.append(item)
        if len(group) == batch_size:
            yield pending.pop((item.tier, item.bucket))
    if not drop_last:
        yield from (g for g in pending.values() if g)


@dataclass
class Position:
    """How far into an epoch a consumer got, per DataLoader worker: resuming from it gives the
    batches an uninterrupted run would have seen next, in the same order.

    DataLoader takes batches from its workers in turn (0, 1, ..., W-1, 0, ...), and a worker
    that has run out drops out of the turn. So the position is how many batches each worker
    made, plus which worker made the last one: on resume each worker skips its own count, and
    the workers whose turn already came in the current round first send one filler batch each,
    so that the next real batch comes from the worker after the last one."""

    per_worker: list[int] = field(default_factory=list)
    last_worker: int = -1

    @property
    def batches(self) -> int:
        return sum(self.per_worker)


def skip_batches(batches: Iterator[list[Item]], skip: int | Position) -> Iterator[list[Item]]:
    """Drop the batches of this worker that a consumer already had. `skip` is a Position (exact
    at any worker count), or a batch count (exact without workers; with workers it assumes
    that none has run out yet)."""
    info = torch.utils.data.get_worker_info()
    w, n = (info.id, info.num_workers) if info is not None else (0, 1)
    if isinstance(skip, Position):
        mine = skip.per_worker[w] if w < len(skip.per_worker) else 0
        if skip.batches and w < (skip.last_worker + 1) % n:
            yield []  # this worker's turn in the current round already came: a filler
    else:
        mine = len(range(w, skip, n))
    for i, batch in enumerate(batches):
        if i >= mine:
            yield batch


class Decode:
    """list[Item] -> Batch: decodes, crops and stacks; failures are counted and left out."""

    def __init__(self, cfg: TrainConfig, counters: dict):
        self.cfg, self.data, self.counters = cfg, cfg.data, counters
        self.span = (cfg.data.num_frames - 1) * cfg.data.frame_stride + 1

    def __call__(self, items: list[Item]) -> Batch:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if not items:
            return Batch(keys=[], captions=[], tier="", worker=worker, filler=True)
        latents = self.data.source == "latents"
        tensors, kept = [], []
        for item in items:
            try:
                tensors.append(self._latents(item) if latents else self._video(item))
                kept.append(item)
            except SampleError as exc:
                self.counters[exc.reason] += 1
                log.warning("skipping sample %s: %s", item.key, exc)
        stats = dict(self.counters)
        self.counters.update(failed=0, too_short=0)
        batch = Batch(keys=[i.key for i in kept], captions=[i.caption for i in kept],
                      tier=items[0].tier, stats=stats, worker=worker)
        if tensors:
            stacked = torch.from_numpy(np.stack(tensors))
            if latents:
                batch.latents = stacked.float()
            else:
                batch.video = stacked.permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, T, H, W)
        return batch

    def _video(self, item: Item) -> np.ndarray:
        shard = item.meta.get("shard") or {}
        n, w, h = int(shard.get("n_frames", 0)), int(shard["width"]), int(shard["height"])
        if n < self.span:
            raise SampleError(f"clip has {n} frames, the window needs {self.span} "
                              f"(num_frames={self.data.num_frames}, stride={self.data.frame_stride})",
                              reason="too_short")
        start = window_start(n, self.span, self.data.temporal_crop, item.rng)
        indices = list(range(start, start + self.span, self.data.frame_stride))
        size = cover_size(w, h, item.bucket)
        frames = decode_clip(item.payload, indices, size)  # (T, H', W', 3)
        y, x = crop_offsets(size, item.bucket, self.data.spatial_crop, item.rng)
        bh, bw = item.bucket
        return np.ascontiguousarray(frames[:, y:y + bh, x:x + bw])  # (T, bh, bw, 3)

    def _latents(self, item: Item) -> np.ndarray:
        try:
            z = np.load(io.BytesIO(item.payload), allow_pickle=False)  # (C, F', h, w)
        except (ValueError, OSError) as exc:
            raise SampleError(f"latent npy does not load: {exc}") from exc
        temporal = int(item.meta["latent"]["vae"].get("temporal", 1))
        need = 1 + (self.data.num_frames - 1) // temporal
        if z.shape[1] < need:
            raise SampleError(f"latent clip has {z.shape[1]} frames, the window needs {need}",
                              reason="too_short")
        start = window_start(z.shape[1], need, self.data.temporal_crop, item.rng)
        return np.ascontiguousarray(z[:, start:start + need])


def _counters() -> dict:
    return {"failed": 0, "too_short": 0}


def build_pipeline(cfg: TrainConfig, urls: list[str], epoch: int, skip: int | Position = 0, rank: int = 0):
    """The webdataset pipeline of one epoch, yielding Batch objects (see module docstring)."""
    import webdataset as wds

    wds.gopen_schemes["s3"] = fs_read.wds_open  # s3:// shards stream through manifests/fs.py
    data = cfg.data
    urls = list(urls)
    if data.shard_shuffle:
        random.Random(f"{cfg.seed}/{epoch}").shuffle(urls)
    counters = _counters()
    stages = [
        wds.SimpleShardList(urls),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=_count_tar_error(counters)),
    ]
    if data.shuffle_buffer > 0:
        rng = random.Random(f"{cfg.seed}/{epoch}/{rank}")
        stages.append(wds.shuffle(data.shuffle_buffer, initial=data.shuffle_buffer, rng=rng))
    stages += [
        wds.map(Prepare(cfg, epoch, counters)),
        functools.partial(bucket_batches, batch_size=data.batch_size, drop_last=data.drop_last),
        functools.partial(skip_batches, skip=skip),
        wds.map(Decode(cfg, counters)),
    ]
    return wds.DataPipeline(*stages)


def _count_tar_error(counters: dict):
    def handler(exn: Exception) -> bool:
        counters["failed"] += 1
        log.warning("skipping unreadable tar content: %s", exn)
        return True

    return handler


def _collate_identity(batch):
    return batch


class ShardLoader:
    """Epochs of Batches for one training process (rank of world)."""

    def __init__(self, cfg: TrainConfig, rank: int = 0):
        self.cfg, self.rank = cfg, rank
        self.urls = shard_urls(cfg.data)

    def epoch(self, epoch: int, skip: int | Position = 0) -> Iterator[Batch]:
        """Batches of `epoch`, leaving out those before `skip` (a Position, or a batch count)."""
        if isinstance(skip, Position) and len(skip.per_worker) > max(self.cfg.data.num_workers, 1):
            log.warning("resuming with train.data.num_workers=%d, saved with %d workers: the skipped "
                        "batches are counted, not matched", self.cfg.data.num_workers, len(skip.per_worker))
            skip = skip.batches
        pipe = build_pipeline(self.cfg, self.urls, epoch, skip, self.rank)
        if self.cfg.data.num_workers == 0:
            return iter(pipe)
        loader = torch.utils.data.DataLoader(
            pipe, batch_size=None, num_workers=self.cfg.data.num_workers,
            collate_fn=_collate_identity, persistent_workers=False,
            prefetch_factor=2)
        return iter(loader)


@dataclass
class Throughput:
    batches: int
    samples: int
    frames: int
    failed: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)

    @property
    def frames_per_s(self) -> float:
        return self.frames / max(self.seconds, 1e-9)

    def as_dict(self) -> dict:
        return dict(batches=self.batches, samples=self.samples, frames=self.frames, failed=self.failed,
                    seconds=round(self.seconds, 3), samples_per_s=round(self.samples_per_s, 2),
                    frames_per_s=round(self.frames_per_s, 1))


def measure_throughput(cfg: TrainConfig, max_batches: int = 50, epochs: int = 1) -> Throughput:
    """Run the loader alone (no model) and time it; frames = decoded pixel (or latent) frames."""
    loader = ShardLoader(cfg)
    batches = samples = frames = failed = 0
    t0 = time.perf_counter()
    for ep in range(epochs):
        for batch in loader.epoch(ep):
            batches += 1
            samples += batch.size
            failed += batch.stats.get("failed", 0) + batch.stats.get("too_short", 0)
            x = batch.video if batch.video is not None else batch.latents
            frames += 0 if x is None else x.shape[0] * x.shape[2]
            if batches >= max_batches:
                break
    return Throughput(batches, samples, frames, failed, time.perf_counter() - t0)
