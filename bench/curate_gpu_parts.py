"""Pieces of bench/curate_gpu.py: its settings, test clips, the GPU sampler, the synthetic VLM.

What is synthetic: all weights are random (throughput only, outputs meaningless); the VLM's
tokenizer is a 512-token BPE trained on the prompt (ids mapped into the 152064-row embedding),
so the text part of the prompt is shorter than the real Qwen tokenizer would make it (its token
count is recorded); the video clips are rendered test scenes, x264 CRF 23.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from models.captioner.common import RANDOM_SIZES

# Published captioning throughput, 8 GPUs each (per GPU = total / 8).
PUBLISHED = {
    "open_sora_llava_captioning": {
        "clips_per_s_per_gpu": [0.25, 0.375],
        "note": "Open-Sora (v1.x docs): LLaVA captioning of 720p videos, 2-3 videos/s on 8 GPUs",
    },
    "nemo_curator_nightly_caption_floor": {
        "clips_per_s_per_gpu": [0.0875, 0.106],
        "note": "NeMo Curator nightly benchmark floor for the captioning pipeline, 8 GPUs",
    },
}
HBM_BYTES_PER_S = 4.3e12  # H200 device-to-device copy, read + write (device/KINDS.md)


@dataclass(frozen=True)
class BenchConfig:
    smoke: bool = False
    """Tiny models on CPU, a few small clips: checks the code path, numbers meaningless."""
    n_files: int = 16
    """Distinct test videos rendered and encoded (clips cycle over them)."""
    clip_seconds: float = 3.0
    """Length of each test video = one clip, seconds (24 fps)."""
    size: tuple[int, int] = (1280, 720)
    """Test video (width, height)."""
    decode_workers: tuple[int, ...] = (8, 15)
    """DecodePool sizes for the decode-only measurement (one process per core)."""
    e2e_workers: int = 15
    """Decode processes feeding the GPU end to end (the 16th core runs the GPU loop)."""
    clips_per_call: tuple[int, ...] = (64, 128)
    """Clips per AestheticScorer.submit (the ScoreNeural operator's batch)."""
    frames_per_fwd: int = 256
    """Frames per CLIP forward pass (score.aesthetic.batch_size)."""
    n_clips: int = 1536
    """Clips per decode / end-to-end measurement."""
    n_model_clips: int = 256
    """Decoded clips kept in memory for the model-only measurements."""
    vlm_batches: tuple[int, ...] = (16, 32, 64, 128)
    """Clips per captioner call on the fast decode path."""
    vlm_new_tokens: int = 256
    """Generated tokens per clip (forced with min_new_tokens)."""
    generate_baseline: tuple[int, int] = (16, 64)
    """(batch, new tokens) of one run through plain `generate`, for comparison."""
    caption_short_side: int = 448
    """Frames for the captioner: caption.short_side's default."""
    budget_s: dict = field(default_factory=lambda: {"clip": 150, "caption": 260})
    """Wall budget per phase, seconds: its remaining measurements are skipped past it."""


def smoke_config() -> BenchConfig:
    return BenchConfig(
        smoke=True,
        n_files=2,
        clip_seconds=1.0,
        size=(320, 180),
        decode_workers=(2,),
        e2e_workers=2,
        clips_per_call=(2,),
        frames_per_fwd=8,
        n_clips=6,
        n_model_clips=4,
        vlm_batches=(1, 2),
        vlm_new_tokens=6,
        generate_baseline=(2, 4),
        caption_short_side=112,
    )


def over(t0: float, budget: float, res, what: str) -> bool:
    if time.monotonic() - t0 <= budget:
        return False
    res.data["skipped"].append(f"{what} (phase budget)")
    return True


def rate(n: float, s: float) -> float:
    return round(n / s, 2) if s > 0 else float("nan")


def cpu_topology() -> dict:
    """Logical CPUs and physical cores (from /proc/cpuinfo), to read decode rates against."""
    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")
    except OSError:
        return {}
    cores = {
        tuple(
            line.split(":")[1].strip()
            for line in block.splitlines()
            if line.startswith(("physical id", "core id"))
        )
        for block in info
        if block.strip()
    }
    return {"logical_cpus": os.cpu_count(), "physical_cores": len(cores)}


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_clips(cfg: BenchConfig, workdir: Path) -> list[dict]:
    """Render + encode n_files test videos -> clip rows as the score stage's decode takes them."""
    from curation.demo_frames import encode_video, render_frames

    fps = 24
    n = max(2, int(cfg.clip_seconds * fps))
    kinds = ["moving", "text", "cuts", "moving"]

    def one(i: int) -> dict:
        path = workdir / f"clip{i}.mp4"
        kind = kinds[i % len(kinds)]
        cuts = (n // 3, 2 * n // 3) if kind == "cuts" else ()
        encode_video(path, render_frames(kind, n, cfg.size, seed=i, cuts=cuts), fps)
        w, h = cfg.size
        return {
            "clip_id": f"c{i}",
            "path": str(path),
            "start_frame": 0,
            "end_frame": n,
            "fps": float(fps),
            "display_width": w,
            "display_height": h,
            "rotation": 0,
            "duration_s": n / fps,
            "bytes": path.stat().st_size,
        }

    with ThreadPoolExecutor(min(cfg.n_files, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, range(cfg.n_files)))


QWEN25_VL_7B = RANDOM_SIZES["qwen2.5-vl-7b"]  # Qwen/Qwen2.5-VL-7B-Instruct config.json sizes
SMOKE_VLM = RANDOM_SIZES["qwen2.5-vl-smoke"]  # 7B vocabulary, tiny layers: CPU smoke runs


def build_vlm(sizes: dict, device: str, dtype):
    """Random Qwen2.5-VL of `sizes` created on `device`, + the processor of
    models.captioner.build_tiny_vlm (its small BPE tokenizer maps into the big vocabulary) with
    default image/video processors (video: 128..768 x 28x28 pixels a frame, as Qwen2.5-VL's)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from models.captioner.common import vlm_parts

    processor, config = vlm_parts(sizes["text"], sizes["vision"])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    return model, processor


def tables(res) -> None:
    clip = res.data.get("clip", {})
    rows = [(f"decode, {r['workers']} procs", r["clips_per_s"], "-") for r in clip.get("decode", [])]
    rows += [
        (
            r["what"] + (f", {r['clips_per_call']} clips/call" if "clips_per_call" in r else ""),
            r["clips_per_s"],
            r.get("gpu_busy_pct", "-"),
        )
        for r in clip.get("model", [])
    ]
    rows += [
        (
            f"end to end ({r['decode']}), {r['decode_workers']} procs, {r['clips_per_call']} clips/call",
            r["clips_per_s"],
            r.get("gpu_busy_pct", "-"),
        )
        for r in clip.get("end_to_end", [])
    ]
    res.table(
        ["CLIP / aesthetic operator", "clips/s", "GPU busy %"], rows, title="clip (target >= 150 clips/s)"
    )
    runs = res.data.get("caption", {}).get("runs", [])
    res.table(
        [
            "path",
            "batch",
            "tokens/s",
            "decode tok/s",
            "bound tok/s",
            "ms/step",
            "processor s",
            "prefill s",
            "clips/s",
            "GPU busy %",
        ],
        [
            (
                r["path"],
                r["batch"],
                r.get("tokens_per_s", r.get("error", "")),
                r.get("decode_tokens_per_s", "-"),
                r.get("bound_tokens_per_s", "-"),
                r.get("ms_per_step", "-"),
                r.get("processor_s", "-"),
                r.get("prefill_s", "-"),
                r.get("clips_per_s", "-"),
                r.get("gpu_busy_pct", "-"),
            )
            for r in runs
        ],
        title="caption, 7B-sized VLM, 256 new tokens (target >= 1500 tokens/s)",
    )
