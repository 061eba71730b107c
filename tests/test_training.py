"""Training: config, loader over real WebDataset shards, latent cache, trainer pieces,
checkpoints, an overfit run through the CLI and resume == uninterrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from curation.demo_frames import render_frames
from filters.video import encode_mp4
from manifests.configtools import ConfigError
from training.config import load_train_config
from training.data import (
    ShardLoader,
    cover_size,
    make_caption,
    measure_throughput,
    nearest_bucket,
)
from training.latents import cache_latents

REPO = Path(__file__).resolve().parents[1]
OFFLINE = REPO / "configs" / "offline.yaml"

# (key, kind, width, height, n_frames, tar): the contract of `shards/<tier>/*.tar`
CLIPS = [
    ("c00", "moving", 456, 256, 24, 0),
    ("c01", "static", 456, 256, 24, 0),
    ("c02", "text", 456, 256, 24, 0),
    ("c03", "moving", 456, 256, 24, 1),
    ("c04", "cuts", 256, 456, 20, 1),  # portrait: its own aspect bucket
    ("c05", "moving", 456, 256, 6, 1),  # too short for 8 frames at stride 2
]


def _meta(key, w, h, n, motion):
    return {"clip": {"clip_id": key, "sidecar_caption": f"original caption of {key}"},
            "video": {"video_id": "v"}, "scores": {"motion_mean": motion},
            "decision": {"tier": "256p", "keep": True},
            "shard": {"tier": "256p", "width": w, "height": h, "fps": 24.0, "n_frames": n}}


@pytest.fixture(scope="session")
def run_root(tmp_path_factory) -> Path:
    """A run root with two real 256p tars (H.264 mp4 + txt + json) and one broken sample."""
    root = tmp_path_factory.mktemp("train_root")
    tier = root / "shards" / "256p"
    tier.mkdir(parents=True)
    writers = [wds.TarWriter(str(tier / f"g{i}-000.tar")) for i in range(2)]
    for i, (key, kind, w, h, n, tar) in enumerate(CLIPS):
        cuts = (n // 2,) if kind == "cuts" else ()
        mp4 = encode_mp4(list(render_frames(kind, n, (w, h), seed=i, cuts=cuts)), 24, crf=23)
        writers[tar].write({"__key__": key, "mp4": mp4, "txt": f"a {kind} scene",
                            "json": _meta(key, w, h, n, 1.6 * i)})
    writers[0].write({"__key__": "broken", "mp4": b"\x00not an mp4" * 50, "txt": "",
                      "json": _meta("broken", 456, 256, 24, None)})
    for w in writers:
        w.close()
    return root




def _cfg(root, *overrides):
    base = ["data.num_workers=0", "progress=false", "device=cpu"]
    return load_train_config(OFFLINE, [*base, *overrides], root=root)


# ---- config ---------------------------------------------------------------------------------


def test_config_loads_offline_and_names_bad_keys(tmp_path):
    cfg = load_train_config(OFFLINE, root=tmp_path)
    assert cfg.model.name == "tiny" and cfg.data.num_frames == 8
    assert cfg.data.bucket_sizes("256p") == ((64, 64),)
    assert cfg.checkpoint_dir == tmp_path / "checkpoints"
    with pytest.raises(ConfigError, match=r"train\.optim\.lr must be > 0"):
        load_train_config(OFFLINE, ["optim.lr=0"])
    with pytest.raises(ConfigError, match=r"train\.data: unknown key\(s\) \['batchsize'\]"):
        load_train_config(OFFLINE, ["train.data.batchsize=2"])
    from curation.config import load_config

    load_config(OFFLINE)  # the curation loader ignores the train section


# ---- data helpers ---------------------------------------------------------------------------


def test_buckets_and_captions():
    sizes = ((64, 64), (64, 112), (112, 64))
    assert nearest_bucket(456, 256, sizes) == (64, 112)
    assert nearest_bucket(256, 456, sizes) == (112, 64)
    assert nearest_bucket(300, 290, sizes) == (64, 64)
    assert cover_size(456, 256, (64, 64)) == (114, 64)
    cfg = load_train_config(None, ["data.motion_score=true"]).data
    rng = __import__("random").Random(0)
    assert make_caption(" a cat ", {"scores": {"motion_mean": 4.6}}, cfg, rng) == "a cat motion score: 5."
    assert make_caption("", {"scores": {"motion_mean": None}}, cfg, rng) == ""
    assert make_caption("", {"scores": {"motion_mean": 2.2}}, cfg, rng) == "motion score: 2."
    side = replace(cfg, motion_score=False, sidecar_caption_prob=1.0)
    assert make_caption("new", {"clip": {"sidecar_caption": "old"}}, side, rng) == "old"
    assert make_caption("new", {"clip": {}}, side, rng) == "new"


# ---- loader over real shards ----------------------------------------------------------------


def test_loader_buckets_skips_bad_samples_and_resumes(run_root):
    cfg = _cfg(run_root, "data.buckets.*=[[64,64],[64,112],[112,64]]", "data.drop_last=false",
               "data.batch_size=2")
    loader = ShardLoader(cfg)
    batches = list(loader.epoch(0))
    keys = sorted(k for b in batches for k in b.keys)
    assert keys == ["c00", "c01", "c02", "c03", "c04"]  # broken and too-short ones left out
    stats = {k: sum(b.stats[k] for b in batches) for k in ("failed", "too_short")}
    assert stats == {"failed": 1, "too_short": 1}
    for b in batches:
        if b.size:
            assert b.video.dtype == torch.uint8 and b.video.shape[:3] == (b.size, 3, 8)
            shape = {"c04": (112, 64)}.get(b.keys[0], (64, 112))
            assert tuple(b.video.shape[-2:]) == shape  # one aspect bucket per batch
            assert all(c.startswith("a ") and "motion score:" in c for c in b.captions)
    # deterministic per epoch; resuming skips exactly the consumed batches
    again = [b.keys for b in loader.epoch(0)]
    assert again == [b.keys for b in batches]
    assert [b.keys for b in loader.epoch(0, skip=2)] == again[2:]
    assert torch.equal(next(iter(loader.epoch(0))).video, batches[0].video)
    assert [b.keys for b in loader.epoch(1)] != again  # shard/sample order reshuffled per epoch


def test_loader_workers_split_shards(run_root):
    cfg = _cfg(run_root, "data.num_workers=2", "data.drop_last=false", "data.batch_size=1")
    keys = sorted(k for b in ShardLoader(cfg).epoch(0) for k in b.keys)
    assert keys == ["c00", "c01", "c02", "c03", "c04"]  # each sample once across workers
    tp = measure_throughput(replace(cfg, data=replace(cfg.data, num_workers=0)), max_batches=10)
    assert tp.samples == 5 and tp.frames == 40 and tp.samples_per_s > 0


def _uneven_workers(run_root, *overrides):
    """Two workers over shards [g0, g0, g1]: worker 0 reads g0 and g1 (7 batches), worker 1
    reads g0 (4), so worker 1 runs out and worker 0 then makes every batch alone."""
    tier = run_root / "shards" / "256p"
    urls = f"data.urls=[{tier / 'g0-000.tar'},{tier / 'g0-000.tar'},{tier / 'g1-000.tar'}]"
    return _cfg(run_root, urls, "data.shard_shuffle=false", "data.num_workers=2",
                "data.drop_last=false", "data.batch_size=1", *overrides)


@pytest.mark.parametrize("k", [3, 10])
def test_loader_resume_with_two_workers_is_exact(run_root, k):
    """Resuming after k batches gives exactly the rest of the uninterrupted epoch, in order,
    also after a worker ran out (k=10: the old count-based skip repeated a batch there)."""
    from training.data import Position

    loader = ShardLoader(_uneven_workers(run_root))
    full = [(b.worker, b.keys) for b in loader.epoch(0)]
    assert [w for w, _ in full] == [0, 1] * 4 + [0] * 3
    seen = [w for w, _ in full[:k]]
    pos = Position([seen.count(0), seen.count(1)], seen[-1])
    rest = [(b.worker, b.keys) for b in loader.epoch(0, skip=pos) if not b.filler]
    assert rest == full[k:]


def test_latent_cache_matches_online_vae(run_root, tmp_path):
    import shutil

    root = tmp_path / "r"
    shutil.copytree(run_root / "shards", root / "shards")
    cfg = _cfg(root, "data.temporal_crop=start", "data.drop_last=false", "data.shard_shuffle=false",
               "data.shuffle_buffer=0")
    stats = cache_latents(cfg)
    assert stats == {"tars": 2, "written": 6, "skipped_tars": 0, "failed": 1}
    assert cache_latents(cfg)["skipped_tars"] == 2  # resumable: done tars are kept
    from training.checkpoint import make_vae

    vae = make_vae(cfg.vae)
    video = {k: b.video[i] for b in ShardLoader(cfg).epoch(0) for i, k in enumerate(b.keys)}
    lat_cfg = replace(cfg, data=replace(cfg.data, source="latents"))
    lat = {k: b.latents[i] for b in ShardLoader(lat_cfg).epoch(0) for i, k in enumerate(b.keys)}
    assert sorted(lat) == sorted(video)
    for k, z in lat.items():
        ref = vae.encode(video[k][None].float() / 127.5 - 1)[0]
        assert z.shape == ref.shape == (16, 8, 16, 16)
        torch.testing.assert_close(z, ref, atol=2e-2, rtol=1e-2)  # float16 storage


# ---- trainer pieces -------------------------------------------------------------------------


def test_timesteps_noise_and_lr():
    from training.config import FlowConfig, OptimConfig
    from training.trainer import lr_at, noised, sample_timesteps

    g = torch.Generator().manual_seed(0)
    assert sample_timesteps(3, 5, FlowConfig(), 2, g, "cpu").shape == (3,)
    tf = sample_timesteps(3, 5, FlowConfig(timesteps="frame"), 2, g, "cpu")
    assert tf.shape == (3, 5) and 0 < tf.min() and tf.max() < 1
    tb = sample_timesteps(3, 5, FlowConfig(timesteps="block"), 2, g, "cpu")
    assert tb.shape == (3, 5) and torch.equal(tb[:, 0], tb[:, 1]) and torch.equal(tb[:, 2], tb[:, 3])
    shifted = sample_timesteps(4000, 1, FlowConfig(shift=3.0), 1, torch.Generator().manual_seed(0), "cpu")
    assert shifted.mean() > 0.65  # shift > 1 moves mass towards noise
    x0, noise = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    xt, v = noised(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1]) and torch.equal(v, noise - x0)
    xt, _ = noised(x0, noise, torch.tensor([[0.0, 0.5, 1.0]] * 2))
    torch.testing.assert_close(xt[:, :, 1], (x0[:, :, 1] + noise[:, :, 1]) / 2)
    o = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(s, o, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(9, o, 14) == pytest.approx(0.55) and lr_at(14, o, 14) == pytest.approx(0.1)


def test_checkpoint_roundtrip_uses_ema(tmp_path):
    from models.linear_dit import build
    from training.checkpoint import latest_checkpoint, load_for_inference, save_checkpoint

    cfg = load_train_config(OFFLINE, root=tmp_path)
    model = build("tiny", in_channels=16, text_dim=384)
    ema = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters())
    assert latest_checkpoint(tmp_path / "none") is None
    for step in (2, 10):
        save_checkpoint(tmp_path / f"step-{step:07d}.pt", model=model, ema=ema, optimizer=opt, step=step,
                        train_cfg=cfg, data_state={"epoch": 1})
    assert latest_checkpoint(tmp_path).name == "step-0000010.pt"
    assert not list(tmp_path.glob(".*tmp*"))
    inf = load_for_inference(tmp_path)
    assert inf.step == 10 and inf.cfg == cfg and not inf.model.training
    assert all(torch.all(p == 0.5) for p in inf.model.parameters())
    assert inf.model.cfg == model.cfg and inf.text_encoder.dim == 384
    z = inf.to_latents(torch.zeros(1, 3, 2, 64, 64))
    assert z.shape == (1, 16, 2, 16, 16) and inf.to_video(z).shape == (1, 3, 2, 64, 64)


# ---- end to end -----------------------------------------------------------------------------


def test_cli_train_overfits_real_shards(run_root, tmp_path):
    """`reelsift train` on the offline config: the loss falls >= 30% on a few clips."""
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "training.commands", "train", "--config", str(OFFLINE),
           "--root", str(run_root), "--steps", "40", "--out", str(out), "--no-progress",
           "--set", "train.data.num_workers=0", "--set", "log_every=1", "--set", "checkpoint.every=20",
           "--set", "device=cpu"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 40
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last <= 0.7 * first, (first, last, losses)
    assert rows[-1]["failed_samples"] >= 1  # the broken sample was counted, not fatal
    assert sorted(p.name for p in out.glob("step-*.pt")) == ["step-0000020.pt", "step-0000040.pt"]


def test_resume_continues_the_same_loss_curve(run_root, tmp_path, one_thread):
    from training.trainer import Trainer

    def cfg_for(out):
        return _cfg(run_root, f"checkpoint.dir={out}", "checkpoint.every=3", "steps=6",
                    "optim.grad_accum=2", "flow.text_dropout=0.5")

    full = Trainer(cfg_for(tmp_path / "a")).fit()
    Trainer(cfg_for(tmp_path / "b")).fit(steps=3)
    resumed = Trainer(cfg_for(tmp_path / "b"), resume=True)
    at3 = torch.load(tmp_path / "a" / "step-0000003.pt", weights_only=False)["data_state"]
    assert resumed.step == 3
    assert resumed.data_state.as_dict() == {k: at3[k] for k in resumed.data_state.as_dict()}
    rest = resumed.fit()
    assert [s for s, _ in rest.losses] == [4, 5, 6]
    np.testing.assert_allclose([v for _, v in rest.losses], [v for _, v in full.losses[3:]], rtol=1e-4)
    a = torch.load(tmp_path / "a" / "step-0000006.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "step-0000006.pt", weights_only=False)
    assert a["data_state"] == b["data_state"]
    for k in a["ema"]:
        torch.testing.assert_close(a["ema"][k], b["ema"][k], atol=1e-5, rtol=1e-4)


def test_resume_with_two_data_workers_continues_the_same_loss_curve(run_root, tmp_path, one_thread):
    from training.trainer import Trainer

    def cfg_for(out):
        return _uneven_workers(run_root, f"checkpoint.dir={out}", "checkpoint.every=3", "steps=6",
                               "optim.grad_accum=2")

    full = Trainer(cfg_for(tmp_path / "a")).fit()
    Trainer(cfg_for(tmp_path / "b")).fit(steps=3)
    resumed = Trainer(cfg_for(tmp_path / "b"), resume=True)
    assert resumed.data_state.per_worker and resumed.step == 3
    rest = resumed.fit()
    assert [s for s, _ in rest.losses] == [4, 5, 6]
    np.testing.assert_allclose([v for _, v in rest.losses], [v for _, v in full.losses[3:]], rtol=1e-4)


@pytest.mark.slow
def test_ddp_two_processes_gloo(run_root, tmp_path):
    """torchrun with 2 CPU processes (gloo): DDP trains, shards split by node, one checkpoint."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "training.commands", "train", "--config", str(OFFLINE), "--root", str(run_root),
           "--steps", "3", "--out", str(tmp_path / "ddp"), "--no-progress",
           "--set", "data.num_workers=0", "--set", "data.batch_size=1", "--set", "device=cpu"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    blob = torch.load(tmp_path / "ddp" / "step-0000003.pt", weights_only=False)
    assert len(blob["data_state"]["ranks"]) == 2 and blob["step"] == 3
