"""Latent caching: every clip of the video shards encoded once by the VAE into latent tars.

`cache_latents` writes `<root>/latents/<tier>/<name>.tar` holding `<key>.npy` (raw VAE latents
(C, F', h, w) float16 of the whole clip at the frame stride, centre-cropped to its bucket),
`<key>.txt` and `<key>.json` (the clip's json plus a `latent` record); with
`data.source: latents` the loader (training/data.py) reads those instead and crops latent frames.
"""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import torch

from manifests import fs, fs_read
from manifests.commit import atomic_write, committed_glob
from training.config import TrainConfig
from training.data import _count_tar_error, _tier_of, shard_urls
from training.decode import SampleError, cover_size, crop_offsets, decode_clip, nearest_bucket

log = logging.getLogger("reelsift")



def cache_latents(cfg: TrainConfig, device: str = "cpu", overwrite: bool = False) -> dict:
    """Encode every clip of the video shards once with the VAE into `<root>/latents/<tier>/`.

    One latent tar per video tar (same name), written to a temp name and renamed, so a killed
    run resumes where it stopped (existing tars are kept unless `overwrite`). Each clip is
    encoded whole at data.frame_stride, resized to cover its bucket and centre-cropped (random
    crops are fixed at caching time; random temporal windows are still drawn when training).
    Returns counts {tars, written, skipped_tars, failed}.
    """
    import webdataset as wds

    from training.checkpoint import make_vae

    data = cfg.data
    vae = make_vae(cfg.vae, device)
    root = fs.upath(data.root)
    wds.gopen_schemes["s3"] = fs_read.wds_open
    stats = {"tars": 0, "written": 0, "skipped_tars": 0, "failed": 0}
    for url in shard_urls(data, source="video"):
        src = fs.upath(url)
        out = root / "latents" / src.parent.name / src.name
        if committed_glob(out.parent, out.name) and not overwrite:
            stats["skipped_tars"] += 1
            continue
        with atomic_write(out) as fh:  # temp + rename locally; object + commit marker on S3
            writer = wds.TarWriter(fh)
            for sample in wds.DataPipeline(wds.SimpleShardList([url]),
                                           wds.tarfile_to_samples(handler=_count_tar_error(stats))):
                record = _encode_one(sample, cfg, vae, device, stats)
                if record is not None:
                    writer.write(record)
                    stats["written"] += 1
            writer.close()
        stats["tars"] += 1
    return stats


@torch.no_grad()
def _encode_one(sample: dict, cfg: TrainConfig, vae, device, stats: dict) -> dict | None:
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample["json"])
        shard = meta["shard"]
        tier = str(shard.get("tier") or _tier_of(sample))
        w, h, n = int(shard["width"]), int(shard["height"]), int(shard["n_frames"])
        bucket = nearest_bucket(w, h, cfg.data.bucket_sizes(tier))
        size = cover_size(w, h, bucket)
        indices = list(range(0, n, cfg.data.frame_stride))
        if vae.temporal > 1:  # causal VAEs code 1 + k * temporal frames
            indices = indices[: 1 + (len(indices) - 1) // vae.temporal * vae.temporal]
        frames = decode_clip(sample["mp4"], indices, size)
        y, x = crop_offsets(size, bucket, "center", random.Random(0))
        frames = frames[:, y:y + bucket[0], x:x + bucket[1]]  # (T, bh, bw, 3)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
        z = vae.encode(video.to(device).float() / 127.5 - 1.0)[0]  # (C, F', h, w)
    except (KeyError, ValueError, TypeError, SampleError) as exc:
        stats["failed"] += 1
        log.warning("cache-latents: skipping sample %s (%s: %s)", key, type(exc).__name__, exc)
        return None
    z = z.to(torch.float16).cpu().numpy()
    meta["latent"] = dict(shape=list(z.shape), bucket=list(bucket), frame_stride=cfg.data.frame_stride,
                          vae=dict(kind=cfg.vae.kind, channels=int(z.shape[0]), spatial=vae.spatial,
                                   temporal=vae.temporal))
    return {"__key__": key, "npy": z, "txt": sample.get("txt", b"").decode("utf-8", "replace"),
            "json": meta}
