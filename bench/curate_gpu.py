"""GPU throughput of the curate pipeline's two neural stages, in one process, per card.

  clip     CLIP ViT-L-14 image embedding + LAION aesthetic head (filters.aesthetic), random
           weights of the real architecture, over 720p mp4 clips decoded by the score stage's
           own `decode_samples`: decode-only, model-only and end-to-end clips/s.
  caption  the `transformers` caption backend (models.captioner.TransformersCaptioner._generate)
           on a randomly initialised Qwen2.5-VL-7B-sized model, 8 frames per clip as video
           input: clips/s and generated tokens/s per batch size.

GPU utilisation (nvidia-smi, 200 ms) is sampled during every timed phase. Each phase has a wall
budget and the JSON is rewritten after each, so a killed run still leaves its finished phases.

What is synthetic: all weights are random (throughput only, outputs meaningless); the VLM's
tokenizer is a 512-token BPE trained on the prompt (ids mapped into the 152064-row embedding),
so the text part of the prompt is shorter than the real Qwen tokenizer would make it (its token
count is recorded); the video clips are rendered test scenes, x264 CRF 23.

  python bench/curate_gpu.py --out DIR            # on the GPU machine
  python bench/curate_gpu.py --smoke --out DIR    # CPU, tiny models, 2 clips: checks the code
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Published captioning throughput, 8 GPUs each (per GPU = total / 8).
PUBLISHED = {
    "open_sora_llava_captioning": {
        "clips_per_s_8gpu": [2.0, 3.0], "clips_per_s_per_gpu": [0.25, 0.375],
        "note": "Open-Sora (v1.x docs): LLaVA captioning of 720p videos, 2-3 videos/s on 8 GPUs"},
    "nemo_curator_nightly_caption_floor": {
        "clips_per_s_8gpu": [0.7, 0.85], "clips_per_s_per_gpu": [0.0875, 0.106],
        "note": "NeMo Curator nightly benchmark floor for the captioning pipeline, 8 GPUs"},
}


@dataclass(frozen=True)
class BenchConfig:
    smoke: bool = False
    """Tiny models on CPU, 2 clips: checks the code path, numbers meaningless."""
    n_files: int = 8
    """Distinct 720p test videos rendered and encoded (clips cycle over them)."""
    clip_seconds: float = 3.0
    """Length of each test video = one clip, seconds (24 fps)."""
    size: tuple[int, int] = (1280, 720)
    """Test video (width, height)."""
    clip_batches: tuple[int, ...] = (32, 64)
    """Clips per score_batch call (the ScoreNeural operator's batch)."""
    frame_batches: tuple[int, ...] = (64, 256)
    """Frames per CLIP forward pass (score.aesthetic.batch_size)."""
    decode_workers: tuple[int, ...] = (1, 8, 16)
    """Thread-pool sizes for the decode-only measurement."""
    e2e_workers: int = 16
    """Decode threads feeding the GPU in the end-to-end measurement."""
    n_clips: int = 128
    """Clips per decode / end-to-end measurement."""
    vlm_batches: tuple[int, ...] = (1, 4, 8, 16)
    """Clips per generate() call."""
    vlm_new_tokens: tuple[int, ...] = (128, 256)
    """Generated tokens per clip (forced with min_new_tokens)."""
    vlm_256_batches: tuple[int, ...] = (8, 16)
    """Batch sizes that also run the longer output length."""
    budget_s: dict = field(default_factory=lambda: {"clips": 60, "clip": 110, "caption": 200})
    """Wall budget per phase, seconds: remaining measurements of a phase are skipped past it."""


def smoke_config() -> BenchConfig:
    return BenchConfig(smoke=True, n_files=2, clip_seconds=1.0, size=(320, 180), clip_batches=(2,),
                       frame_batches=(8,), decode_workers=(1, 2), e2e_workers=2, n_clips=2,
                       vlm_batches=(1, 2), vlm_new_tokens=(4,), vlm_256_batches=())


# ---------------------------------------------------------------------------------------------
# GPU sampling, results file

class GpuSampler:
    """nvidia-smi utilization.gpu / memory.used every 200 ms while the `with` block runs."""

    def __init__(self, workdir: Path):
        self.path = workdir / f"smi_{time.monotonic_ns()}.csv"
        self.proc = None

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "200", "-i", "0"],
                stdout=self.path.open("w"), stderr=subprocess.DEVNULL)
        except FileNotFoundError:  # CPU smoke run
            self.proc = None
        return self

    def __exit__(self, *exc):
        self.stats = {}
        if self.proc is None:
            return
        self.proc.terminate()
        self.proc.wait()
        rows = []
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                rows.append((int(parts[0]), int(parts[1])))
        if rows:
            util, mem = np.array(rows).T
            self.stats = {"gpu_util_mean": round(float(util.mean()), 1), "gpu_util_max": int(util.max()),
                          "mem_used_mib_max": int(mem.max()), "n_samples": len(rows)}


class Results:
    def __init__(self, out: Path, card: str):
        self.out, self.card = out, card
        self.data: dict = {"card": card, "published": PUBLISHED, "phases": {}, "skipped": []}

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"curate_gpu_{self.card}.json"
        path.write_text(json.dumps(self.data, indent=1))
        return path


def over(t0: float, budget: float) -> bool:
    return time.monotonic() - t0 > budget


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# test clips

def make_clips(cfg: BenchConfig, workdir: Path) -> list[dict]:
    """Render + encode n_files test videos; -> clip rows as decode_samples takes them."""
    from curation.demo_data import encode_video, render_frames

    fps = 24
    n = max(2, int(cfg.clip_seconds * fps))
    kinds = ["moving", "text", "cuts", "moving"]

    def one(i: int) -> dict:
        path = workdir / f"clip{i}.mp4"
        kind = kinds[i % len(kinds)]
        cuts = (n // 3, 2 * n // 3) if kind == "cuts" else ()
        encode_video(path, render_frames(kind, n, cfg.size, seed=i, cuts=cuts), fps)
        w, h = cfg.size
        return {"clip_id": f"c{i}", "path": str(path), "start_frame": 0, "end_frame": n, "fps": float(fps),
                "display_width": w, "display_height": h, "rotation": 0, "duration_s": n / fps,
                "bytes": path.stat().st_size}

    with ThreadPoolExecutor(min(cfg.n_files, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, range(cfg.n_files)))


def decode_all(clips: list[dict], score_cfg, workers: int) -> tuple[list[np.ndarray], float]:
    from curation.stages.score import decode_samples

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        frames = [f for f, _ in pool.map(lambda c: decode_samples(c, score_cfg), clips)]
    return frames, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# CLIP + aesthetic

def bench_clip(cfg: BenchConfig, files: list[dict], res: Results, workdir: Path) -> None:
    import cv2
    import torch

    from filters.aesthetic import AestheticConfig, AestheticScorer
    from filters.config import ScoreConfig

    cv2.setNumThreads(1)  # as DecodeAndScoreCpu: parallelism comes from the workers
    t_phase = time.monotonic()
    budget = cfg.budget_s["clip"]
    out = res.data["phases"].setdefault("clip", {"decode": [], "model": [], "end_to_end": []})
    device = "cpu" if cfg.smoke else "cuda"
    acfg = AestheticConfig(clip_model="reelsift-tiny" if cfg.smoke else "ViT-L-14", random_init=True,
                           device=device, precision="fp32" if cfg.smoke else "fp16",
                           batch_size=max(cfg.frame_batches))
    score_cfg = ScoreConfig(aesthetic=acfg)  # n_frames 8, short_side 360: the score stage's defaults
    clips = [files[i % len(files)] for i in range(cfg.n_clips)]
    t0 = time.perf_counter()
    scorer = AestheticScorer(acfg)
    sync()
    out["model_init_s"] = round(time.perf_counter() - t0, 2)
    out["setup"] = {"clip_model": acfg.clip_model, "precision": acfg.precision,
                    "n_frames": score_cfg.n_frames, "short_side": score_cfg.short_side,
                    "source": f"{cfg.size[0]}x{cfg.size[1]} h264 {cfg.clip_seconds}s@24fps",
                    "image_size": list(scorer.encoder.image_size), "random_weights": True}

    # decode-only (the CPU side of the score stage, without the CPU scorers)
    frames = None
    for workers in cfg.decode_workers:
        if over(t_phase, budget):
            res.data["skipped"].append(f"clip.decode workers={workers} (phase budget)")
            continue
        some = clips[: min(len(clips), 16 * workers)]  # one thread is slow: fewer clips
        got, dt = decode_all(some, score_cfg, workers)
        if len(got) == len(clips):
            frames = got
        out["decode"].append({"workers": workers, "clips": len(some), "s": round(dt, 3),
                              "clips_per_s": round(len(some) / dt, 2)})
        print(f"clip decode workers={workers}: {len(some) / dt:.1f} clips/s", flush=True)
        res.save()
    if frames is None:
        frames, _ = decode_all(clips, score_cfg, max(cfg.decode_workers))
    out["frame_shape"] = list(frames[0].shape)

    # model-only: score_batch on decoded frames (CPU preprocess + H2D + CLIP + head), and the
    # bare GPU forward on a ready tensor
    warm = replace(acfg, batch_size=min(cfg.frame_batches))
    scorer.cfg = warm
    scorer.score_batch(frames[: min(cfg.clip_batches)])
    sync()
    for fb in cfg.frame_batches:
        for cb in cfg.clip_batches:
            if over(t_phase, budget):
                res.data["skipped"].append(f"clip.model frames/fwd={fb} clips/call={cb} (phase budget)")
                continue
            scorer.cfg = replace(acfg, batch_size=fb)
            batches = [frames[i : i + cb] for i in range(0, len(frames) - cb + 1, cb)] or [frames]
            with GpuSampler(workdir) as smi:
                t0 = time.perf_counter()
                n = 0
                for b in batches:
                    scorer.score_batch(b)
                    n += len(b)
                sync()
                dt = time.perf_counter() - t0
            out["model"].append({"what": "score_batch (preprocess+H2D+CLIP+head)", "frames_per_fwd": fb,
                                 "clips_per_call": cb, "clips": n, "s": round(dt, 3),
                                 "clips_per_s": round(n / dt, 2), **smi.stats})
            print(f"clip model fb={fb} cb={cb}: {n / dt:.1f} clips/s {smi.stats}", flush=True)
            res.save()
    # bare forward: preprocess once, time only encode_image + head on the GPU
    enc = scorer.encoder
    fb = max(cfg.frame_batches)
    x = enc.preprocess(np.concatenate(frames)[:fb]).to(enc.device, enc.input_dtype)
    with torch.inference_mode():
        for _ in range(2):
            scorer.head(enc.model.encode_image(x, normalize=True).float())
        sync()
        reps = 3 if cfg.smoke else 10
        with GpuSampler(workdir) as smi:
            t0 = time.perf_counter()
            for _ in range(reps):
                scorer.head(enc.model.encode_image(x, normalize=True).float())
            sync()
            dt = (time.perf_counter() - t0) / reps
    fps_ = len(x) / dt
    out["model"].append({"what": "GPU forward only (encode_image+head)", "frames_per_fwd": len(x),
                         "ms_per_fwd": round(dt * 1e3, 2), "frames_per_s": round(fps_, 1),
                         "clips_per_s": round(fps_ / score_cfg.n_frames, 2), **smi.stats})
    t0 = time.perf_counter()
    for _ in range(3):
        enc.preprocess(np.concatenate(frames)[:fb])
    pp = (time.perf_counter() - t0) / 3
    out["preprocess_cpu_1thread_frames_per_s"] = round(fb / pp, 1)
    print(f"clip forward only: {fps_ / score_cfg.n_frames:.1f} clips/s; preprocess 1 thread "
          f"{fb / pp:.0f} frames/s", flush=True)
    res.save()

    # end-to-end: decode threads feed score_batch in clip batches (map keeps order, runs ahead)
    from curation.stages.score import decode_samples

    for cb in cfg.clip_batches:
        if over(t_phase, budget):
            res.data["skipped"].append(f"clip.end_to_end clips/call={cb} (phase budget)")
            continue
        scorer.cfg = replace(acfg, batch_size=max(cfg.frame_batches))
        with GpuSampler(workdir) as smi:
            t0 = time.perf_counter()
            n, pending = 0, []
            with ThreadPoolExecutor(cfg.e2e_workers) as pool:
                for f, _ in pool.map(lambda c: decode_samples(c, score_cfg), clips):
                    pending.append(f)
                    if len(pending) == cb:
                        scorer.score_batch(pending)
                        n, pending = n + len(pending), []
                if pending:
                    scorer.score_batch(pending)
                    n += len(pending)
            sync()
            dt = time.perf_counter() - t0
        out["end_to_end"].append({"decode_workers": cfg.e2e_workers, "clips_per_call": cb,
                                  "frames_per_fwd": scorer.cfg.batch_size, "clips": n, "s": round(dt, 3),
                                  "clips_per_s": round(n / dt, 2), **smi.stats})
        print(f"clip end-to-end cb={cb}: {n / dt:.1f} clips/s {smi.stats}", flush=True)
        res.save()
    out["phase_s"] = round(time.monotonic() - t_phase, 1)
    del scorer, enc, x
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# VLM captioner

QWEN25_VL_7B = dict(  # Qwen/Qwen2.5-VL-7B-Instruct config.json
    text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
              rms_norm_eps=1e-6, tie_word_embeddings=False,
              rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
)
SMOKE_VLM = dict(
    text=dict(vocab_size=152064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768,
              rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                fullatt_block_indexes=[1], window_size=56),
)


def build_vlm(sizes: dict, device: str, dtype):
    """Random Qwen2.5-VL of `sizes` created on `device`, + a processor whose small BPE tokenizer
    (as models.captioner.build_tiny_vlm) maps into the big vocabulary; default video processor."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from models.captioner import _TINY_TEMPLATE, synthetic_tokenizer

    tokenizer, ids = synthetic_tokenizer()
    # processors at their class defaults = Qwen2.5-VL's (video: 128..768 x 28x28 pixels a frame)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=_TINY_TEMPLATE)
    text = dict(sizes["text"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=sizes["vision"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    return model, processor


def bench_caption(cfg: BenchConfig, files: list[dict], res: Results, workdir: Path) -> None:
    import torch

    from curation.stages.score import decode_samples
    from filters.config import ScoreConfig
    from models.captioner import (
        DEFAULT_PROMPT,
        CaptionInput,
        TransformersCaptioner,
        TransformersCaptionerConfig,
        render_prompt,
    )

    t_phase = time.monotonic()
    budget = cfg.budget_s["caption"]
    out = res.data["phases"].setdefault("caption", {"runs": []})
    device = "cpu" if cfg.smoke else "cuda"
    dtype = torch.float32 if cfg.smoke else torch.bfloat16
    # caption.CaptionConfig's defaults (n_frames 8, short_side 448); that module imports duckdb,
    # which the GPU image lacks, and decode_samples reads only these keys
    ccfg = ScoreConfig(n_frames=8, short_side=448)
    t0 = time.perf_counter()
    model, processor = build_vlm(SMOKE_VLM if cfg.smoke else QWEN25_VL_7B, device, dtype)
    sync()
    n_params = sum(p.numel() for p in model.parameters())
    out["model_init_s"] = round(time.perf_counter() - t0, 1)
    out["setup"] = {
        "model": "Qwen2.5-VL-7B-sized, random weights (from_config, created on the device)",
        "params_b": round(n_params / 1e9, 3), "dtype": str(dtype), "attn": "sdpa",
        "n_frames": ccfg.n_frames, "short_side": ccfg.short_side, "video_input": True,
        "decoding": "greedy, min_new_tokens = max_new_tokens (EOS suppressed)",
        "tokenizer": "synthetic 512-token BPE trained on the prompt (ids < 152064)",
    }
    print(f"vlm built: {n_params / 1e9:.2f} B params in {out['model_init_s']} s", flush=True)
    res.save()

    # the backend's own generate path, without from_pretrained (nothing on disk to load)
    cap = TransformersCaptioner.__new__(TransformersCaptioner)
    cap.cfg = TransformersCaptionerConfig(model="synthetic-qwen2.5-vl-7b", device=device, batch_size=16)
    cap.device, cap.model, cap.processor = device, model, processor
    cap.tokenizer = processor.tokenizer
    cap.tokenizer.padding_side = "left"
    cap.video, cap.name, cap.untrained = True, "synthetic", True

    clips = [files[i % len(files)] for i in range(max(cfg.vlm_batches))]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        decoded = list(pool.map(lambda c: decode_samples(c, ccfg), clips))
    out["decode_448_clips_per_s_16threads"] = round(len(clips) / (time.perf_counter() - t0), 2)
    items = [CaptionInput(c["clip_id"], c["path"], f, c["fps"] / s)
             for c, (f, s) in zip(clips, decoded, strict=True)]
    prompts = [render_prompt(DEFAULT_PROMPT, ccfg.n_frames, c["duration_s"]) for c in clips]
    # prompt length as the model sees it (video tokens + text)
    one = processor(text=[processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompts[0]}]}],
        add_generation_prompt=True, tokenize=False)], videos=[list(items[0].frames.copy())],
        do_sample_frames=False, return_tensors="pt")
    n_video = int((one["input_ids"] == model.config.video_token_id).sum())
    out["prompt_tokens"] = {"total": int(one["input_ids"].shape[1]), "video": n_video,
                            "text": int(one["input_ids"].shape[1]) - n_video,
                            "frame_shape": list(items[0].frames.shape),
                            "prompt_words": len(prompts[0].split())}
    print(f"prompt tokens {out['prompt_tokens']}", flush=True)

    def run(bs: int, new: int) -> dict:
        model.generation_config.max_new_tokens = new
        model.generation_config.min_new_tokens = new
        cap.cfg = replace(cap.cfg, batch_size=bs, max_new_tokens=new)
        with GpuSampler(workdir) as smi:
            sync()
            t0 = time.perf_counter()
            raw = cap._generate(items[:bs], prompts[:bs])
            sync()
            dt = time.perf_counter() - t0
        errors = [r.error for r in raw if r.error]
        n_tok = sum(r.n_tokens or 0 for r in raw)
        return {"batch": bs, "new_tokens": new, "s": round(dt, 3),
                "generate_s": round(raw[0].latency_s, 3), "clips_per_s": round(bs / dt, 3),
                "gen_tokens": n_tok, "gen_tokens_per_s": round(n_tok / dt, 1),
                "errors": errors[:1], **smi.stats}

    # warm-up (kernels, cuBLAS handles) at a small size, then prefill-only per batch
    run(1, 2)
    plan = [(bs, new) for new in cfg.vlm_new_tokens for bs in cfg.vlm_batches
            if new == min(cfg.vlm_new_tokens) or bs in cfg.vlm_256_batches]
    for bs in cfg.vlm_batches:
        if over(t_phase, budget * 0.3):
            res.data["skipped"].append(f"caption.prefill batch={bs} (phase budget)")
            continue
        r = run(bs, 1)
        r["what"] = "prefill (vision encoder + prompt, 1 new token)"
        out["runs"].append(r)
        print(f"caption prefill bs={bs}: {r['s']} s {r.get('gpu_util_mean')}", flush=True)
        res.save()
    for bs, new in plan:
        if over(t_phase, budget):
            res.data["skipped"].append(f"caption.generate batch={bs} new={new} (phase budget)")
            continue
        try:
            r = run(bs, new)
        except torch.OutOfMemoryError as exc:
            r = {"batch": bs, "new_tokens": new, "error": f"OOM: {exc}"[:300]}
            torch.cuda.empty_cache()
        r["what"] = "caption: preprocess + generate"
        out["runs"].append(r)
        print(f"caption bs={bs} new={new}: {r.get('clips_per_s')} clips/s "
              f"{r.get('gen_tokens_per_s')} tok/s util {r.get('gpu_util_mean')}", flush=True)
        res.save()
    out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1) if device == "cuda" else None
    out["phase_s"] = round(time.monotonic() - t_phase, 1)


# ---------------------------------------------------------------------------------------------

def table(res: Results) -> str:
    d, lines = res.data, [f"== reelsift curate GPU bench: {res.data['card']} =="]
    clip = d["phases"].get("clip", {})
    for r in clip.get("decode", []):
        lines.append(f"CLIP decode only      {r['workers']:>2} threads          "
                     f"{r['clips_per_s']:>8.1f} clips/s")
    for r in clip.get("model", []):
        label = ("CLIP forward only" if "frames_per_s" in r else
                 f"CLIP score_batch fb={r['frames_per_fwd']} cb={r['clips_per_call']}")
        lines.append(f"{label:<40} {r['clips_per_s']:>8.1f} clips/s  util {r.get('gpu_util_mean', '-')}%")
    for r in clip.get("end_to_end", []):
        lines.append(f"CLIP end-to-end cb={r['clips_per_call']:<3} {r['decode_workers']} threads"
                     f"          {r['clips_per_s']:>8.1f} clips/s  util {r.get('gpu_util_mean', '-')}%")
    cap = d["phases"].get("caption", {})
    for r in cap.get("runs", []):
        if "error" in r:
            lines.append(f"VLM bs={r['batch']} new={r['new_tokens']}: {r['error'][:60]}")
            continue
        what = "prefill" if r["new_tokens"] == 1 else f"new={r['new_tokens']}"
        lines.append(f"VLM 7B bs={r['batch']:<2} {what:<8} {r['s']:>7.2f} s {r['clips_per_s']:>7.3f} "
                     f"clips/s {r['gen_tokens_per_s']:>8.1f} tok/s  util {r.get('gpu_util_mean', '-')}%")
    for name, p in PUBLISHED.items():
        lo, hi = p["clips_per_s_per_gpu"]
        lines.append(f"published {name}: {lo:.3f}-{hi:.3f} clips/s per GPU")
    if d["skipped"]:
        lines.append("skipped: " + "; ".join(d["skipped"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for curate_gpu_<card>.json")
    ap.add_argument("--smoke", action="store_true", help="tiny models on CPU, 2 clips")
    ap.add_argument("--phases", default="clip,caption", help="comma list of clip, caption")
    args = ap.parse_args()
    cfg = smoke_config() if args.smoke else BenchConfig()
    import torch

    card = "cpu-smoke"
    if torch.cuda.is_available() and not cfg.smoke:
        card = torch.cuda.get_device_name(0).lower().replace("nvidia ", "").split()[0]  # "h100"
    res = Results(args.out, card)
    import transformers

    res.data["env"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       "cpu_cores": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="curate-gpu-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        files = make_clips(cfg, workdir)
        res.data["test_clips"] = {"n_files": len(files), "make_s": round(time.perf_counter() - t0, 1),
                                  "mean_bytes": int(np.mean([f["bytes"] for f in files]))}
        print(f"test clips: {res.data['test_clips']}", flush=True)
        res.save()
        for phase, fn in [("clip", bench_clip), ("caption", bench_caption)]:
            if phase not in args.phases.split(","):
                continue
            try:
                fn(cfg, files, res, workdir)
            except Exception as exc:  # report the failure, keep the other phase's numbers
                import traceback

                traceback.print_exc()
                res.data["phases"].setdefault(phase, {})["error"] = f"{type(exc).__name__}: {exc}"[:500]
            res.save()
    path = res.save()
    print(table(res))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
