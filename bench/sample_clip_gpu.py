"""Whole-clip latency of `reelsift sample` on one GPU, prompt to mp4, against SANA-Video's
published 480p figures (480x832, 81 frames, 50 steps, CFG: SANA-Video 2B 60 s, Wan2.1-1.3B 103 s,
Wan2.1-14B 484 s; reported on one H100 in bf16).

Each case runs ``training.long_video.generate_video`` in clip mode, which is what
`reelsift sample --mode clip --fast` runs once the checkpoint is loaded, with the parts the 2b
config names, all with random weights (speed does not depend on them):
  * the "2b" Linear DiT at depth 20, bf16, or fp8 (``models.fp8.to_fp8``: the blocks' linears in
    float8 through torchao, as `--dtype fp8`);
  * a Gemma-2-2B-architecture text encoder through ``models.text_encoder.HFTextEncoder`` (a small
    word-level tokenizer that prepends <bos> like Gemma's);
  * the Wan2.1 VAE architecture (diffusers ``AutoencoderKLWan``'s default config) through
    ``models.vae.WanVAE`` in bf16, decoded by ``Inference.to_video``.
81 frames (21 latent frames), 50 Euler steps, CFG 6 (both branches in one batch), shift 3.

Per case: a warm-up at the case's shape (compile, CUDA-graph capture, a 2-latent-frame VAE
decode), then the timed clip: text encoding, denoising, VAE decode and mp4 encoding each end
with a synchronize (``PhaseClock``); total = prompt to closed mp4. Before anything is compiled,
``plain_s_per_step`` times the plain path (``sampler.sample_clip``) over a few steps. fp8 cases
add the PSNR of their decoded frames against the bf16 case of the same size and seed, and the
relative difference of the latents. The JSON is rewritten after every measurement; a case that
would overrun ``--budget-s`` is skipped and recorded as such.

    python bench/sample_clip_gpu.py --out bench/results --fp8            # CUDA: 480p, 720p, bf16 + fp8
    python bench/sample_clip_gpu.py --smoke --fp8 --out /tmp/bench       # CPU, tiny sizes, minutes
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Result  # noqa: E402
from models.linear_dit import build  # noqa: E402
from models.text_encoder import HFTextEncoder  # noqa: E402
from models.vae import WanVAE  # noqa: E402
from training.checkpoint import Inference  # noqa: E402
from training.config import TrainConfig, VAEConfig  # noqa: E402
from training.fast_sample import ClipDenoiser  # noqa: E402
from training.long_video import VideoSpec, generate_video  # noqa: E402
from training.sampler import SampleOptions, draw_noise, encode_prompts, latent_frames_for, sample_clip  # noqa: E402

SIZES = {"480p": (480, 832), "720p": (720, 1280), "smoke": (64, 96)}
SANA_VIDEO_480P_S = {"SANA-Video 2B": 60, "Wan2.1-1.3B": 103, "Wan2.1-14B": 484}
PROMPT = ("A red kite with a long ribbon tail climbs over a windy beach at golden hour, waves rolling "
          "in below, a child running along the wet sand holding the string, gulls wheeling past, "
          "the camera slowly tracking left with a shallow depth of field and warm light")
GEMMA2_2B = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=256, vocab_size=256000)
GEMMA2_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=32, vocab_size=512)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemma_like_tokenizer():
    """Word-level tokenizer over the prompt's words; '<bos> $A' like Gemma's (the empty negative
    prompt is one token, never an all-padding row)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(PROMPT.lower().replace(",", " ").split()))
    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   unk_token="<unk>")


def build_parts(args, device: str, dtype: torch.dtype):
    """(DiT, text encoder, Inference for decoding): random weights, built on the device."""
    from diffusers import AutoencoderKLWan
    from transformers import Gemma2Config, Gemma2Model

    smoke = args.smoke
    gemma = Gemma2Config(**(GEMMA2_TINY if smoke else GEMMA2_2B))
    torch.manual_seed(1)
    with torch.device(device):
        text_model = Gemma2Model(gemma).to(dtype)
        vae_model = AutoencoderKLWan(**({"base_dim": 8, "num_res_blocks": 1} if smoke else {}))
    text = HFTextEncoder(model=text_model, tokenizer=gemma_like_tokenizer(), max_length=300, device=device)
    vae = WanVAE(model=vae_model, device=device, dtype=dtype)
    return Inference(model=build_dit(args, device, dtype, "bf16", gemma.hidden_size), vae=vae,
                     text_encoder=text, cfg=TrainConfig(vae=VAEConfig(kind="wan2.1")), step=0)


def build_dit(args, device: str, dtype: torch.dtype, precision: str, text_dim: int):
    """The DiT with the same random weights every time (seed 0); fp8: its block linears converted."""
    torch.manual_seed(0)
    with torch.device(device):
        model = build("tiny" if args.smoke else "2b", depth=args.depth, in_channels=16, text_dim=text_dim)
    model = model.to(dtype).eval().requires_grad_(False)
    if precision == "fp8":
        from models.fp8 import to_fp8

        to_fp8(model, key="--fp8")
    return model


def plain_s_per_step(inf, size, args, device, dtype) -> float:
    """Seconds per step of sampler.sample_clip (uncompiled, text trimmed every call)."""
    cond = encode_prompts(inf.text_encoder, [PROMPT], "", args.cfg_scale, dtype, device)
    h, w = SIZES[size]
    shape = (16, latent_frames_for(args.frames, 4), h // 8, w // 8)
    opts = SampleOptions(steps=1, cfg_scale=args.cfg_scale, shift=3.0)
    sample_clip(inf.model, cond, shape, opts, torch.Generator().manual_seed(0), device)  # warm-up
    opts = SampleOptions(steps=args.plain_steps, cfg_scale=args.cfg_scale, shift=3.0)
    sync(device)
    t0 = time.perf_counter()
    sample_clip(inf.model, cond, shape, opts, torch.Generator().manual_seed(0), device)
    sync(device)
    return (time.perf_counter() - t0) / args.plain_steps


def warm_up(inf, size, args, device, dtype) -> dict:
    """Compile and capture at this shape (a 2-step denoise), and warm the VAE's convolutions."""
    h, w = SIZES[size]
    t0 = time.perf_counter()
    cond = encode_prompts(inf.text_encoder, [PROMPT], "", args.cfg_scale, dtype, device)
    opts = SampleOptions(steps=2, cfg_scale=args.cfg_scale, shift=3.0, fast=True)
    den = ClipDenoiser(inf.model, cond, opts, compile=device.startswith("cuda") and not args.plain,
                       graph=not args.plain)
    den(draw_noise((1, 16, latent_frames_for(args.frames, 4), h // 8, w // 8), torch.Generator(), device))
    sync(device)
    denoise_s = time.perf_counter() - t0
    inf.to_video(torch.zeros(1, 16, 2, h // 8, w // 8, device=device))
    sync(device)
    return {"warmup_s": round(time.perf_counter() - t0, 2), "warmup_denoise_s": round(denoise_s, 2),
            "cuda_graph": den.graphed, "cuda_graph_error": den.graph_error}


def run_case(inf, size, precision, args, device, dtype, work: Path) -> tuple:
    """One timed clip; returns (record, decoded video (3, T, H, W), latents)."""
    h, w = SIZES[size]
    rec = warm_up(inf, size, args, device, dtype)
    videos, latents = [], []

    def decode(x):
        latents.append(x)
        v = inf.to_video(x)
        videos.append(v[0])
        return v

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    opts = SampleOptions(steps=args.steps, solver="euler", cfg_scale=args.cfg_scale, shift=3.0,
                         fast=not args.plain)
    out = work / f"{size}_{precision}.mp4"
    t0 = time.perf_counter()
    side = generate_video(model=inf.model, vae=inf.vae, decode=decode, text_encoder=inf.text_encoder,
                          prompt=PROMPT, out=out, spec=VideoSpec(args.frames / args.fps, args.fps, h, w),
                          opts=opts, seed=0, mode="clip", device=device)
    total = time.perf_counter() - t0
    tm = side["timings_s"]
    rec.update(
        total_s=round(total, 3), text_s=tm["text"], denoise_s=tm["denoise"], decode_s=tm["decode"],
        mp4_s=tm["mp4"], s_per_step=tm["denoise"] / args.steps, frames=side["video"]["frames"],
        latent_frames=side["video"]["latent_frames"], tokens_per_sample=side["video"]["latent_frames"]
        * (h // 16) * (w // 16), mp4_bytes=out.stat().st_size,
        peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30 if device.startswith("cuda") else None,
    )
    out.unlink()
    return rec, videos[0], latents[0]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (peak-to-peak 2), over every pixel."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--sizes", nargs="+", default=["480p", "720p"], choices=["480p", "720p"])
    ap.add_argument("--fp8", action="store_true", help="also run fp8 cases (needs torchao)")
    ap.add_argument("--fp8-sizes", nargs="+", default=None, choices=["480p", "720p"],
                    help="sizes for fp8 (default: --sizes)")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--fps", type=float, default=16.0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg-scale", type=float, default=6.0)
    ap.add_argument("--plain-steps", type=int, default=3, help="steps timed on the plain path (0 = skip)")
    ap.add_argument("--plain", action="store_true", help="time the plain path instead of the fast one")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip cases that would end past this")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, tiny model/VAE/encoder, 64x96, 9 frames, 3 steps")
    args = ap.parse_args()
    started = time.perf_counter()
    if not args.smoke and not torch.cuda.is_available():
        ap.error("no CUDA device: this bench times a GPU (use --smoke for a CPU check)")

    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    if args.smoke:
        args.sizes, args.fp8_sizes, args.frames, args.steps, args.depth = ["smoke"], ["smoke"], 9, 3, 2
        args.plain_steps = min(args.plain_steps, 1)
    fp8_sizes = (args.fp8_sizes or args.sizes) if args.fp8 else []
    res = Result("sample_clip_smoke" if args.smoke else "sample_clip_gpu", out=args.out)
    res.add("reference_480p_s", {"figures": SANA_VIDEO_480P_S, "card": "H100 (reported), bf16",
                                 "source": "NVlabs/Sana SANA-Video page"})
    res.add("config", {"model": "tiny" if args.smoke else "2b", "depth": args.depth, "frames": args.frames,
                       "steps": args.steps, "solver": "euler", "cfg_scale": args.cfg_scale, "shift": 3.0,
                       "text_encoder": "Gemma-2 architecture" + (" (tiny)" if args.smoke else " 2B"),
                       "vae": "Wan2.1 (diffusers AutoencoderKLWan)" + (" tiny" if args.smoke else ""),
                       "weights": "random", "path": "plain" if args.plain else "fast"})
    cases, plain = {}, {}
    res.add("cases", cases)
    res.add("plain_s_per_step", plain)
    t0 = time.perf_counter()
    inf = build_parts(args, device, dtype)
    res.add("build_s", round(time.perf_counter() - t0, 1))
    if args.plain_steps:
        for size in args.sizes:
            plain[size] = plain_s_per_step(inf, size, args, device, dtype)
            print(f"plain path {size}: {plain[size]:.3f} s/step", flush=True)
            res.write()
    work = Path(tempfile.mkdtemp(prefix="sample_clip_"))
    ref, last_cost = {}, None
    # each size's fp8 case right after its bf16 one: a budget cut drops the largest size first
    todo = [(s, p) for s in args.sizes for p in ("bf16", "fp8") if p == "bf16" or s in fp8_sizes]
    todo += [(s, "fp8") for s in fp8_sizes if s not in args.sizes]
    current = "bf16"
    for size, precision in todo:
        name = f"{size}_{precision}"
        spent = time.perf_counter() - started
        if last_cost is not None and spent + last_cost > args.budget_s:
            cases[name] = {"skipped": f"budget: {spent:.0f} s spent, the last case took {last_cost:.0f} s"}
            res.write()
            continue
        case_t0 = time.perf_counter()
        try:
            if precision != current:  # a fresh DiT, same weights (the old one is dropped first)
                inf.model = None
                gc.collect()
                inf.model = build_dit(args, device, dtype, precision, inf.text_encoder.dim)
                current = precision
            rec, video, lat = run_case(inf, size, precision, args, device, dtype, work)
        except Exception as exc:  # noqa: BLE001 - one failed case is recorded; the next one runs
            cases[name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            print(name, cases[name], flush=True)
            res.write()
            gc.collect()
            continue
        if precision == "bf16":
            ref[size] = (video, lat)
        elif size in ref:
            rec["psnr_vs_bf16_db"] = psnr(video, ref[size][0])
            rec["latent_rel_diff_vs_bf16"] = ((lat - ref[size][1]).norm() / ref[size][1].norm()).item()
        rec["speedup_vs_plain"] = plain[size] / rec["s_per_step"] if size in plain else None
        cases[name] = rec
        last_cost = time.perf_counter() - case_t0
        print(name, rec, flush=True)
        res.write()
    rows = [(n, r["total_s"], r["text_s"], r["denoise_s"], r["s_per_step"], r["decode_s"], r["mp4_s"],
             r["peak_allocated_gib"] or 0.0, r.get("psnr_vs_bf16_db", "-"), r["warmup_s"])
            for n, r in cases.items() if "total_s" in r]
    res.table(["case", "total s", "text s", "denoise s", "s/step", "decode s", "mp4 s", "peak GiB",
               "PSNR vs bf16 dB", "warm-up s"], rows,
              title=f"sample_clip_gpu: {res.data['config']['model']} depth {args.depth}, "
                    f"{args.frames} frames, "
                    f"{args.steps} steps, CFG {args.cfg_scale} (SANA-Video 2B 480p: 60 s on an H100)")
    res.add("wall_s", round(time.perf_counter() - started, 1))
    res.write()
    return 0 if all("total_s" in r or "skipped" in r for r in cases.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
