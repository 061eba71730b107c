"""GPU smoke test of the trainer and sampler: the code paths CPU tests never reach.

In one process, on real H.264 clips written into small WebDataset tars:

  1. data      tars of rendered clips (curation.demo_data + filters.video.encode_mp4) and a tiny
               random BERT text encoder written to a local folder (the packaged MiniLM weights are
               90 MB: too big to carry to the device; a fixed random encoder trains the same code)
  2. tiny      Trainer on the offline config (tiny model, bf16 autocast, EMA), 40 steps, with the
               linear attention's Triton forward/backward counted (and the PyTorch fallbacks, which
               must stay at 0 on CUDA)
  3. resume    a second trainer resumes from the tiny run's step-20 checkpoint and runs to 40: the
               loss curve must continue the uninterrupted one (loose tolerance: bf16 on GPU)
  4. mid       "2b" width at depth 2, block-causal attention, flow.timesteps=block, bf16, with and
               without gradient checkpointing (which must double the attention forwards)
  5. sample    `reelsift sample` (training.sample_cmd) on CUDA: a 3-block long video from the
               tiny checkpoint, decoded back from the mp4 and checked; plus whole-clip mode through
               training.long_video.generate_video

    python bench/train_gpu_smoke.py --out bench/results      # on a CUDA machine
    python bench/train_gpu_smoke.py --cpu-smoke --out /tmp   # tiny shapes, 3 steps, on CPU

Prints a table and writes train_gpu_smoke_<card>.json to --out. Every phase runs even when an
earlier one failed (where it can); the exit code is 1 when any failed. Importing duckdb or ray
anywhere is refused (the device image has neither), so the run also proves the training and
sampling import chains do not need them.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OFFLINE = REPO / "configs" / "offline.yaml"
BLOCKED = ("duckdb", "ray")
blocked_attempts: list[str] = []


class _Block(importlib.abc.MetaPathFinder):
    """Refuses duckdb and ray: the device has neither, and training must not need them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            blocked_attempts.append(name)
            raise ImportError(f"{name} is blocked by bench/train_gpu_smoke.py (not on the device)")
        return None


sys.meta_path.insert(0, _Block())

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.harness import Result  # noqa: E402
from bench.smoke_parts import (  # noqa: E402
    RESULTS,
    free,
    instrument_backends,
    metrics_rows,
    param_count,
    peak_gib,
    phase,
    print_table,
    reset_peak,
    step_stats,
    sync,
    take_counts,
    video_checks,
    write_shards,
    write_tiny_bert,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes, 3 steps, on CPU")
    ap.add_argument("--out", default="bench/results", help="folder for the JSON (and the sample mp4)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--tiny-steps", type=int, default=40)
    ap.add_argument("--mid-steps", type=int, default=8)
    args = ap.parse_args()

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: use --cpu-smoke", file=sys.stderr)
        return 2
    device = "cpu" if smoke else "cuda"
    tiny_steps = 3 if smoke else args.tiny_steps
    half = max(1, tiny_steps // 2)
    mid_steps = 2 if smoke else args.mid_steps
    if smoke:
        torch.set_num_threads(2)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="train_gpu_smoke_"))
    work.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    result = Result("train_gpu_smoke", out=out_dir)
    return run(smoke, device, result, work, out_dir, tiny_steps, half, mid_steps)


def run(smoke, device, result: Result, work, out_dir, tiny_steps, half, mid_steps) -> int:
    import torch.nn.functional as F

    R = RESULTS
    R.update(device=device, cpu_smoke=smoke, work=str(work), torch=torch.__version__)
    try:
        import triton

        R["triton"] = triton.__version__
    except ImportError:
        R["triton"] = None
    root = work / "root"
    text_path = str(work / "tiny_bert")
    cuda = device == "cuda"

    with phase("imports") as rec:
        from models import ops
        from training import long_video, sample_cmd, sampler  # noqa: F401
        from training.checkpoint import checkpoint_name, unwrap
        from training.config import load_train_config
        from training.trainer import Trainer

        instrument_backends()
        rec["triton_available"] = ops.triton_available()
        rec["blocked_import_attempts"] = sorted(set(blocked_attempts))
        if cuda:
            assert ops.triton_available(), "Triton is not importable on the CUDA machine"

    with phase("probe") as rec:
        # models.ops dispatch with backend='auto' picks Triton on CUDA
        take_counts()
        n, d = 64, 32
        q = torch.randn(1, 2, n, d, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
        cos, sin = torch.ones(n, d // 2, device=device), torch.zeros(n, d // 2, device=device)
        ops.linear_attention(q, q, q, cos, sin)
        c = take_counts()
        rec["auto_dispatch"] = "triton" if c["triton_fwd"] else "pytorch"
        if cuda:
            assert c["triton_fwd"] == 1 and c["fallback_fwd"] == 0, c
        # why models/linear_dit.py (LinearSelfAttention.forward) casts q, k to v's dtype: where CUDA
        # autocast runs rms_norm in float32 (torch 2.14's autocast lists it; the device's 2.11 kept
        # bf16), q, k came out float32 beside a bfloat16 v, which the fused kernel refuses
        lin = torch.nn.Linear(d, d).to(device)
        with torch.autocast(device, dtype=torch.bfloat16):
            y = lin(q.float())
            normed = F.rms_norm(y, (d,), torch.ones(d, device=device, dtype=y.dtype))
        rec["autocast_linear_dtype"] = str(y.dtype)
        rec["autocast_rms_norm_dtype"] = str(normed.dtype)
        if cuda:
            try:
                ops.linear_attention(normed, normed, y, cos, sin)
                rec["mixed_dtype_fused_call"] = "accepted"
            except ValueError as exc:
                rec["mixed_dtype_fused_call"] = f"ValueError: {exc}"
        take_counts()

    with phase("data") as rec:
        rec.update(write_shards(root))
        write_tiny_bert(Path(text_path))
        rec["text_encoder"] = "random 1-layer BERT, dim 64 (fixed seed)"

    def cfg_for(ckdir, *extra):
        base = [f"device={device}", "progress=false", "data.num_workers=0", "log_every=1",
                f"text_encoder.path={text_path}", f"checkpoint.dir={ckdir}"]
        return load_train_config(OFFLINE, [*base, *extra], root=root)

    tiny_losses: dict[int, float] = {}
    with phase("tiny") as rec:
        cfg = cfg_for(work / "tiny", f"steps={tiny_steps}", f"checkpoint.every={half}", "checkpoint.keep=50")
        take_counts()
        reset_peak(device)
        tr = Trainer(cfg)
        m = unwrap(tr.model)
        rec.update(model=cfg.model.name, params=param_count(m), depth=m.cfg.depth, width=m.cfg.hidden,
                   attention=m.cfg.attention, precision=cfg.optim.precision,
                   ema_decay=cfg.optim.ema_decay, batch=cfg.data.batch_size,
                   pixels=list(cfg.data.bucket_sizes("256p")[0]), frames=cfg.data.num_frames)
        bf16 = getattr(tr.autocast, "keywords", {}).get("dtype") == torch.bfloat16
        rec["autocast"] = "bf16" if bf16 else "none"
        t_start = time.time()
        res = tr.fit()
        sync(device)
        rec["fit_s"] = round(time.time() - t_start, 2)
        c = take_counts()
        rows = metrics_rows(work / "tiny")
        losses = [r["loss"] for r in rows]
        tiny_losses.update({r["step"]: r["loss"] for r in rows})
        k = min(5, len(losses))
        rec.update(steps=res.step, loss_first=losses[0], loss_last=losses[-1],
                   loss_first5_mean=round(float(np.mean(losses[:k])), 5),
                   loss_last5_mean=round(float(np.mean(losses[-k:])), 5),
                   **step_stats(rows, skip=3, t_start=t_start), peak_gib=peak_gib(device), counts=c,
                   triton_fwd_per_step=c["triton_fwd"] / res.step,
                   checkpoints=sorted(p.name for p in (work / "tiny").glob("step-*.pt")))
        ema, model_sd = tr.ema.state_dict(), m.state_dict()
        diffs = [(ema[n] - model_sd[n].float().cpu()).abs().max() for n in ema]
        rec["ema_vs_model_max_abs_diff"] = float(max(diffs))
        rec["ema_finite"] = bool(all(torch.isfinite(v).all() for v in ema.values()))
        assert all(math.isfinite(v) for v in losses), losses
        assert rec["ema_finite"] and rec["ema_vs_model_max_abs_diff"] > 0
        if cuda:
            assert rec["autocast"] == "bf16"
            assert c["triton_fwd"] > 0 and c["triton_bwd"] > 0 and c["fallback_fwd"] == 0, c
            assert c["triton_dtypes"] == ["bfloat16"], c
        del tr, m, ema, model_sd
        free(device)

    with phase("resume") as rec:
        src = work / "tiny" / checkpoint_name(half)
        dst = work / "tiny_resume"
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst / src.name)
        cfg = cfg_for(dst, f"steps={tiny_steps}", f"checkpoint.every={half}")
        take_counts()
        tr = Trainer(cfg, resume=True)
        rec["resumed_at"] = tr.step
        assert tr.step == half, tr.step
        res = tr.fit()
        c = take_counts()
        pairs = [(s, v, tiny_losses[s]) for s, v in res.losses]
        rel = [abs(v - ref) / max(abs(ref), 1e-8) for _, v, ref in pairs]
        rec.update(steps=[pairs[0][0], pairs[-1][0]], first_step_rel_diff=round(rel[0], 6),
                   max_rel_diff=round(max(rel), 6), mean_rel_diff=round(float(np.mean(rel)), 6), counts=c)
        a = torch.load(work / "tiny" / checkpoint_name(tiny_steps), weights_only=False)
        b = torch.load(dst / checkpoint_name(tiny_steps), weights_only=False)
        rec["data_state_equal"] = a["data_state"] == b["data_state"]
        rec["final_ema_max_abs_diff"] = float(max((a["ema"][n] - b["ema"][n]).abs().max() for n in a["ema"]))
        assert res.step == tiny_steps and rec["data_state_equal"]
        assert rel[0] < 2e-2, f"first resumed step's loss differs by {rel[0]:.3g} (relative)"
        if cuda:
            assert c["triton_fwd"] > 0 and c["fallback_fwd"] == 0, c
        del tr, a, b
        free(device)

    mid = ["model.name=2b", "model.depth=2", "model.attention=block_causal", "model.block_frames=2",
           "flow.timesteps=block", "optim.precision=bf16", "checkpoint.every=1000"]
    mid += (["model.heads=2", "model.head_dim=32", "data.buckets.*=[[64,64]]"] if smoke
            else ["data.buckets.*=[[256,256]]"])
    for name, gc_on in (("mid_gradckpt", True), ("mid_no_gradckpt", False)):
        with phase(name) as rec:
            steps = mid_steps if gc_on else max(2, mid_steps // 2)
            cfg = cfg_for(work / name, *mid, f"steps={steps}", f"model.grad_checkpoint={str(gc_on).lower()}")
            take_counts()
            reset_peak(device)
            tr = Trainer(cfg)
            tr.save = lambda: None  # 2b-width checkpoints (weights + EMA + AdamW) are GBs: not written
            m = unwrap(tr.model)
            ph, pw = cfg.data.bucket_sizes("256p")[0]
            sp = cfg.vae.spatial * m.cfg.patch_size[1]
            tokens = cfg.data.batch_size * cfg.data.num_frames * (ph // sp) * (pw // sp)
            rec.update(model=f"{cfg.model.name} depth {m.cfg.depth}", params=param_count(m),
                       width=m.cfg.hidden, heads=m.cfg.heads, head_dim=m.cfg.head_dim,
                       attention=m.cfg.attention, block_frames=m.cfg.block_frames,
                       timesteps=cfg.flow.timesteps, grad_checkpoint=gc_on, batch=cfg.data.batch_size,
                       pixels=[ph, pw], tokens_per_step=tokens)
            t_start = time.time()
            res = tr.fit()
            sync(device)
            rec["fit_s"] = round(time.time() - t_start, 2)
            c = take_counts()
            rows = metrics_rows(work / name)
            losses = [r["loss"] for r in rows]
            rec.update(steps=res.step, loss_first=losses[0], loss_last=losses[-1],
                       **step_stats(rows, skip=2, t_start=t_start), peak_gib=peak_gib(device), counts=c,
                       attn_fwd_per_step=(c["triton_fwd"] + c["fallback_fwd"]) / res.step,
                       triton_bwd_per_step=c["triton_bwd"] / res.step)
            assert all(math.isfinite(v) for v in losses), losses
            want = m.cfg.depth * (2 if gc_on else 1)  # checkpointing recomputes each block's forward
            assert rec["attn_fwd_per_step"] == want, (rec["attn_fwd_per_step"], want)
            if cuda:
                assert c["fallback_fwd"] == 0 and c["triton_bwd"] == m.cfg.depth * res.step, c
                assert c["triton_dtypes"] == ["bfloat16"], c
            del tr, m
            free(device)

    fps = 12.0  # 24 / the offline config's frame_stride 2
    with phase("sample_cli") as rec:
        mp4 = work / "sample" / "long.mp4"
        take_counts()
        reset_peak(device)
        rc = sample_cmd.main(["sample", "--checkpoint", str(work / "tiny"), "--prompt", "a moving scene",
                              "--seconds", "1", "--out", str(mp4), "--steps", "8", "--block-frames", "4",
                              "--mode", "blocks", "--device", device, "--seed", "0"])
        assert rc == 0, rc
        side = json.loads(mp4.with_suffix(".json").read_text())
        rec.update(mode=side["mode"], blocks=side["video"]["blocks"], dtype=side["dtype"],
                   elapsed_s=side["elapsed_s"], state_bytes=side["state_bytes"], peak_gib=peak_gib(device),
                   counts=take_counts())
        rec.update(video_checks(mp4, side["video"]["frames"], (64, 64)))
        assert side["video"]["blocks"] == 3 and side["video"]["frames"] == 12, side["video"]
        if cuda:
            assert side["dtype"] == "bfloat16" and side["device"].startswith("cuda")
        shutil.copy(mp4, out_dir / f"train_gpu_smoke_sample_{result.suffix}.mp4")

    with phase("sample_clip") as rec:
        from training.checkpoint import load_for_inference
        from training.long_video import VideoSpec, generate_video
        from training.sampler import SampleOptions

        inf = load_for_inference(work / "tiny", device=device)
        model = inf.model.to(torch.bfloat16 if cuda else torch.float32)
        mp4 = work / "sample" / "clip.mp4"
        take_counts()
        side = generate_video(model=model, vae=inf.vae, decode=inf.to_video, text_encoder=inf.text_encoder,
                              prompt="a moving scene", out=mp4, spec=VideoSpec(1.0, fps, 64, 64),
                              opts=SampleOptions(steps=8, block_frames=4), seed=0, mode="clip", device=device)
        c = take_counts()
        rec.update(mode=side["mode"], dtype=side["dtype"], elapsed_s=side["elapsed_s"], counts=c)
        rec.update(video_checks(mp4, 12, (64, 64)))
        if cuda:
            assert c["triton_fwd"] == 8 * model.cfg.depth and c["fallback_fwd"] == 0, c
            assert c["triton_dtypes"] == ["bfloat16"], c

    R["blocked_import_attempts"] = sorted(set(blocked_attempts))
    R["all_ok"] = all(p.get("ok") for p in R["phases"].values())
    R["card"] = result.data["card"]
    print_table(R)
    result.data.update(R)
    result.write()
    return 0 if R["all_ok"] else 1




if __name__ == "__main__":
    raise SystemExit(main())
