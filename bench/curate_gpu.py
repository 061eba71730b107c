"""GPU throughput of the curate pipeline's two neural operators, driven directly (no Ray), per card.

  clip     the score stage's neural operator: filters.aesthetic.AestheticScorer (CLIP ViT-L-14 +
           LAION head, random weights of the real architecture) fed by filters.decode_pool with
           the score stage's own `decode_samples` over 720p mp4 clips. Decode, preprocess and
           model time apart, then end to end (decode included) with GPU busy %.
  caption  the `transformers` caption backend (TransformersCaptioner, fast decode path) on a
           randomly initialised Qwen2.5-VL-7B-sized model, 8 frames a clip as video input:
           processor, prefill and decode time apart, tokens/s per batch size against the
           weight-bandwidth bound, and one run through plain `generate` for comparison.

Every phase has a wall budget and the JSON is rewritten after each measurement, so a killed run
still leaves what it finished. Synthetic parts: see bench/curate_gpu_parts.py.

  python bench/curate_gpu.py                      # on the GPU machine -> bench/results/
  python bench/curate_gpu.py --smoke --out DIR    # CPU, tiny models: checks the code
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.curate_gpu_parts import (  # noqa: E402
    HBM_BYTES_PER_S,
    PUBLISHED,
    QWEN25_VL_7B,
    SMOKE_VLM,
    BenchConfig,
    build_vlm,
    cpu_topology,
    make_clips,
    over,
    rate,
    smoke_config,
    tables,
)
from bench.gpu_sampler import GpuSampler  # noqa: E402
from bench.harness import Result, timed  # noqa: E402


def bench_clip(cfg: BenchConfig, files: list[dict], res: Result, workdir: Path) -> None:
    import torch

    from curation.stages.score import decode_samples
    from filters.aesthetic import AestheticScorer
    from filters.config import AestheticConfig, ScoreConfig
    from filters.decode_pool import DecodePool
    from filters.video import DecodeSpec
    from models.clip_preprocess import cpu_preprocess

    t_phase, budget = time.monotonic(), cfg.budget_s["clip"]
    out = res.data["clip"] = {"decode": [], "model": [], "preprocess": {}, "end_to_end": []}
    acfg = AestheticConfig(
        clip_model="reelsift-tiny" if cfg.smoke else "ViT-L-14",
        random_init=True,
        device="cpu" if cfg.smoke else "cuda",
        precision="fp32" if cfg.smoke else "fp16",
        batch_size=cfg.frames_per_fwd,
        preprocess="device",
    )
    score_cfg = ScoreConfig(aesthetic=acfg)  # n_frames 8, short_side 360: the score stage's defaults
    decode = functools.partial(decode_samples, spec=DecodeSpec.of(score_cfg))
    with timed(sync_cuda=True) as t:
        scorer = AestheticScorer(acfg)
    enc = scorer.encoder
    out["setup"] = {
        "clip_model": acfg.clip_model,
        "precision": acfg.precision,
        "random_weights": True,
        "n_frames": score_cfg.n_frames,
        "short_side": score_cfg.short_side,
        "frames_per_fwd": cfg.frames_per_fwd,
        "image_size": list(enc.image_size),
        "source": f"{cfg.size[0]}x{cfg.size[1]} h264 CRF23 {cfg.clip_seconds}s@24fps",
        "model_init_s": round(t.seconds, 1),
    }
    clips = [files[i % len(files)] for i in range(cfg.n_clips)]

    # decode only: the pool's processes, one per core, frames handed over in shared memory
    kept: list[np.ndarray] = []
    for workers in cfg.decode_workers:
        if over(t_phase, budget, res, f"clip.decode workers={workers}"):
            continue
        with DecodePool(decode, workers) as pool:
            for _ in pool.batches(clips[: 2 * workers], batch_size=workers):  # spawn + imports
                pass
            with timed() as t:
                n = 0
                for batch in pool.batches(clips[: cfg.n_clips // 3], batch_size=64):
                    n += len(batch)
                    if len(kept) < cfg.n_model_clips:
                        kept += [d.frames.copy() for d in batch if d.error is None]
        out["decode"].append(
            {"workers": workers, "clips": n, "s": round(t.seconds, 2), "clips_per_s": rate(n, t.seconds)}
        )
        print(f"clip decode {workers} procs: {n / t.seconds:.1f} clips/s", flush=True)
        res.write()
    if not kept:
        kept = [decode(c)[0] for c in clips[: cfg.n_model_clips]]
    frames = kept[: cfg.n_model_clips]
    out["frame_shape"] = list(frames[0].shape)

    # preprocess alone: OpenCV on one core vs the device path (pinned upload + resize + normalise)
    flat = np.concatenate(frames[:8])  # 64 frames
    with timed() as t:
        cpu_preprocess(flat, enc.image_size, enc.resize_mode, enc.mean, enc.std)
    out["preprocess"]["cpu_opencv_1core_frames_per_s"] = rate(len(flat), t.seconds)
    many = frames[: max(1, cfg.frames_per_fwd // len(frames[0]))]
    for _ in range(2):
        with timed(sync_cuda=True) as t_up:
            groups = enc.tensor_preprocess.upload(many)
        with timed(sync_cuda=True) as t_pp:
            for _, x in groups:
                enc.tensor_preprocess(x)
    n_fr = sum(len(f) for f in many)
    out["preprocess"].update(
        device_upload_frames_per_s=rate(n_fr, t_up.seconds),
        device_resize_frames_per_s=rate(n_fr, t_pp.seconds),
        frames=n_fr,
    )
    print(f"clip preprocess {out['preprocess']}", flush=True)

    # model only: bare forward on a ready batch, then score_batch on decoded frames (both paths)
    x = enc.tensor_preprocess(groups[0][1]).to(enc.input_dtype)
    with torch.inference_mode():
        for _ in range(2):
            scorer.head(enc.model.encode_image(x, normalize=True).float())
        reps = 2 if cfg.smoke else 10
        with GpuSampler() as smi, timed(sync_cuda=True) as t:
            for _ in range(reps):
                scorer.head(enc.model.encode_image(x, normalize=True).float())
    per_s = len(x) * reps / t.seconds
    out["model"].append(
        {
            "what": "forward only (encode_image + head)",
            "frames_per_fwd": len(x),
            "frames_per_s": round(per_s, 1),
            "clips_per_s": round(per_s / score_cfg.n_frames, 1),
            **smi.stats,
        }
    )
    for path in ("device", "cpu"):
        enc.preprocess_on_device = path == "device"
        for cb in cfg.clips_per_call:
            if over(t_phase, budget, res, f"clip.model {path} cb={cb}"):
                continue
            scorer.score_batch(frames[:cb])  # warm-up (shapes, allocator)
            with GpuSampler() as smi, timed(sync_cuda=True) as t:
                for i in range(0, len(frames) - cb + 1, cb):
                    scorer.score_batch(frames[i : i + cb])
            n = (len(frames) // cb) * cb
            out["model"].append(
                {
                    "what": f"score_batch, preprocess on {path}",
                    "clips_per_call": cb,
                    "clips": n,
                    "clips_per_s": rate(n, t.seconds),
                    **smi.stats,
                }
            )
            print(f"clip model {path} cb={cb}: {n / t.seconds:.1f} clips/s {smi.stats}", flush=True)
            res.write()
    enc.preprocess_on_device = True

    # end to end: decode pool -> submit batch k+1 while the GPU runs batch k -> rows. decode_samples
    # skips unsampled non-reference pictures itself (filters/video.iter_frames), as the pipeline does
    runs = [("decode_samples", decode, cfg.clips_per_call)]
    for name, fn, cbs in runs:
        with DecodePool(fn, cfg.e2e_workers) as pool:
            for _ in pool.batches(clips[: 2 * cfg.e2e_workers], batch_size=cfg.e2e_workers):
                pass
            for cb in cbs:
                if over(t_phase, budget, res, f"clip.end_to_end {name} cb={cb}"):
                    continue
                n, errors, waiting = 0, 0, None
                with GpuSampler() as smi, timed(sync_cuda=True) as t:
                    for batch in pool.batches(clips, batch_size=cb):
                        ok = [d.frames for d in batch if d.error is None]
                        errors += len(batch) - len(ok)
                        handle = scorer.submit(ok)  # copies the frames: the pool may reuse them
                        if waiting is not None:
                            n += len(scorer.collect(waiting))
                        waiting = handle
                    n += len(scorer.collect(waiting))
                row = {
                    "decode": name,
                    "decode_workers": cfg.e2e_workers,
                    "clips_per_call": cb,
                    "clips": n,
                    "decode_errors": errors,
                    "s": round(t.seconds, 2),
                    "clips_per_s": rate(n, t.seconds),
                    **smi.stats,
                }
                out["end_to_end"].append(row)
                print(f"clip end-to-end {name} cb={cb}: {n / t.seconds:.1f} clips/s {smi.stats}", flush=True)
                res.write()
    out["phase_s"] = round(time.monotonic() - t_phase, 1)
    del scorer, enc, x
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_caption(cfg: BenchConfig, files: list[dict], res: Result, workdir: Path) -> None:
    import torch

    from curation.stages.score import decode_samples
    from filters.config import ScoreConfig
    from filters.video import DecodeSpec
    from models.captioner import (
        DEFAULT_PROMPT,
        CaptionInput,
        TransformersCaptioner,
        TransformersCaptionerConfig,
        render_prompt,
    )

    t_phase, budget = time.monotonic(), cfg.budget_s["caption"]
    out = res.data["caption"] = {"runs": []}
    device = "cpu" if cfg.smoke else "cuda"
    with timed(sync_cuda=True) as t:
        model, processor = build_vlm(
            SMOKE_VLM if cfg.smoke else QWEN25_VL_7B, device, torch.float32 if cfg.smoke else torch.bfloat16
        )
    text_bytes = sum(p.numel() * p.element_size() for p in model.model.language_model.parameters())
    text_bytes += model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    bound_ms = text_bytes / HBM_BYTES_PER_S * 1e3
    new = cfg.vlm_new_tokens
    model.generation_config.min_new_tokens = new  # every caption runs to the full length
    ccfg = TransformersCaptionerConfig(model="synthetic-qwen2.5-vl-7b", device=device, max_new_tokens=new)
    cap = TransformersCaptioner.from_model(ccfg, model, processor)
    cap.decoder.profile = True
    out["setup"] = {
        "model": "Qwen2.5-VL-7B-sized, RANDOM weights (from_config, created on the device)",
        "params_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
        "model_init_s": round(t.seconds, 1),
        "decode_path": cap.decode_path,
        "decoding": f"greedy, min_new_tokens = max_new_tokens = {new}",
        "text_weights_gb": round(text_bytes / 1e9, 2),
        "hbm_bytes_per_s": HBM_BYTES_PER_S,
        "bound_ms_per_step": round(bound_ms, 2),
        "tokenizer": "synthetic 512-token BPE trained on the prompt (ids < 152064)",
    }
    print(f"vlm: {out['setup']}", flush=True)
    res.write()

    dcfg = ScoreConfig(n_frames=8, short_side=cfg.caption_short_side)  # caption stage defaults
    batch_max = max(max(cfg.vlm_batches), cfg.generate_baseline[0])
    with ThreadPoolExecutor(16) as pool:
        decoded = list(pool.map(lambda c: decode_samples(c, DecodeSpec.of(dcfg)), files))
    items = [
        CaptionInput(c["clip_id"], c["path"], f, c["fps"] / s)
        for c, (f, s) in zip(files, decoded, strict=True)
    ]
    items = [items[i % len(items)] for i in range(batch_max)]
    prompts = [render_prompt(DEFAULT_PROMPT, dcfg.n_frames, files[0]["duration_s"])] * batch_max
    one = cap.inputs(items[:1], prompts[:1])
    n_video = int((one["input_ids"] == model.config.video_token_id).sum())
    out["prompt_tokens"] = {
        "total": int(one["input_ids"].shape[1]),
        "video": n_video,
        "frame_shape": list(items[0].frames.shape),
    }

    cap.decoder.generate(cap.inputs(items[:1], prompts[:1]), 4)  # warm-up: kernels, cuBLAS
    for bs in cfg.vlm_batches:
        if over(t_phase, budget, res, f"caption.fast bs={bs}"):
            continue
        try:
            with GpuSampler() as smi, timed(sync_cuda=True) as t_all:
                with timed(sync_cuda=True) as t_proc:
                    inputs = cap.inputs(items[:bs], prompts[:bs])
                ids = cap.decoder.generate(inputs, new)
        except torch.OutOfMemoryError as exc:
            out["runs"].append({"path": "fast", "batch": bs, "error": f"OOM: {exc}"[:300]})
            torch.cuda.empty_cache()
            continue
        tm = cap.decoder.timing
        steps = tm["steps"]
        step_ms = tm["decode_s"] / max(1, steps - 1) * 1e3
        total = t_all.seconds - tm["capture_s"]  # the graph is captured once per shape
        r = {
            "path": "fast",
            "batch": bs,
            "new_tokens": int(ids.shape[1]),
            "processor_s": round(t_proc.seconds, 3),
            "prefill_s": round(tm["prefill_s"], 3),
            "graph_capture_s": round(tm["capture_s"], 3),
            "decode_s": round(tm["decode_s"], 3),
            "ms_per_step": round(step_ms, 2),
            "bound_ms_per_step": round(bound_ms, 2),
            "decode_tokens_per_s": rate(bs * (steps - 1), tm["decode_s"]),
            "bound_tokens_per_s": rate(bs * 1e3, bound_ms),
            "tokens_per_s": rate(bs * steps, total),
            "clips_per_s": rate(bs, total),
            **smi.stats,
        }
        out["runs"].append(r)
        print(f"caption fast bs={bs}: {r}", flush=True)
        res.write()
        del inputs, ids
        cap.decoder.states.clear()  # this batch size's cache and graph
        if device == "cuda":
            torch.cuda.empty_cache()

    bs, n_new = cfg.generate_baseline
    if not over(t_phase, budget, res, f"caption.generate bs={bs}"):
        model.generation_config.min_new_tokens = n_new
        inputs = cap.inputs(items[:bs], prompts[:bs])
        with GpuSampler() as smi, timed(sync_cuda=True) as t, torch.inference_mode():
            ids = model.generate(**inputs, do_sample=False, max_new_tokens=n_new)
        n_tok = bs * (ids.shape[1] - inputs["input_ids"].shape[1])
        out["runs"].append(
            {
                "path": "generate",
                "batch": bs,
                "new_tokens": n_new,
                "s": round(t.seconds, 2),
                "tokens_per_s": rate(n_tok, t.seconds),
                **smi.stats,
            }
        )
        print(f"caption generate bs={bs}: {out['runs'][-1]}", flush=True)
    if device == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    out["phase_s"] = round(time.monotonic() - t_phase, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for the JSON")
    ap.add_argument("--smoke", action="store_true", help="tiny models on CPU, a few small clips")
    ap.add_argument("--phases", default="clip,caption", help="comma list of clip, caption")
    args = ap.parse_args()
    cfg = smoke_config() if args.smoke else BenchConfig()
    res = Result("curate_gpu", out=args.out, suffix="cpu_smoke" if cfg.smoke else None)
    res.data.update(published=PUBLISHED, skipped=[], random_weights=True)
    import transformers

    res.data["machine"].update(transformers=transformers.__version__, **cpu_topology())
    with tempfile.TemporaryDirectory(prefix="curate-gpu-") as tmp:
        workdir = Path(tmp)
        with timed() as t:
            files = make_clips(cfg, workdir)
        res.data["test_clips"] = {
            "n_files": len(files),
            "make_s": round(t.seconds, 1),
            "mean_bytes": int(np.mean([f["bytes"] for f in files])),
        }
        for phase, fn in [("clip", bench_clip), ("caption", bench_caption)]:
            if phase not in args.phases.split(","):
                continue
            try:
                fn(cfg, files, res, workdir)
            except Exception as exc:  # report the failure, keep the other phase's numbers
                traceback.print_exc()
                res.data.setdefault(phase, {})["error"] = f"{type(exc).__name__}: {exc}"[:500]
            res.write()
    tables(res)


if __name__ == "__main__":
    main()
