"""`reelsift sample`: prompt -> mp4 (+ sidecar JSON) from a training checkpoint.

    reelsift sample --checkpoint runs/demo/checkpoints --prompt "a red kite over a beach" \\
        --seconds 60 --out samples/kite.mp4 [--negative-prompt ..] [--seed 0] [--steps 20] \\
        [--cfg-scale 4.5] [--solver euler|heun] [--block-frames 10] [--window W] \\
        [--dtype auto|bf16|fp32|fp8] [--fast]

Block-causal checkpoints generate block by block in constant memory (see training.long_video);
full-attention checkpoints generate the clip at once (``--mode`` overrides).
"""

from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_BLOCK_FRAMES = 10
SOLVER_NAMES = ("euler", "heun")  # = training.sampler.SOLVERS; spelled out so `--help` needs no torch


def register(subparsers) -> None:
    """Add the `sample` command to an argparse subparsers object."""
    p = subparsers.add_parser("sample", help="generate a video from a training checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a folder (its newest step-*.pt)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="", help="guidance's negative prompt (default: empty)")
    p.add_argument("--seconds", type=float, default=5.0, help="video length in seconds")
    p.add_argument("--out", required=True, help="output .mp4; the sidecar is written beside it as .json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="denoising steps per block (or per clip)")
    p.add_argument("--cfg-scale", type=float, default=4.5, help="classifier-free guidance; 1 = none")
    p.add_argument("--solver", choices=SOLVER_NAMES, default="euler")
    p.add_argument("--shift", type=float, default=None, help="time shift (default: train.flow.shift)")
    p.add_argument("--block-frames", type=int, default=None,
                   help="latent frames per block (default: the model's when trained block-causal, else 10)")
    p.add_argument("--window", type=int, default=0, help="attend to the last W blocks only (0 = all)")
    p.add_argument("--mode", choices=("auto", "blocks", "clip"), default="auto",
                   help="blocks: block-causal, constant memory; clip: all at once; auto: by the model")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the first training bucket)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the first training bucket)")
    p.add_argument("--fps", type=float, default=None, help="default: 24 / train.data.frame_stride")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda[:N]")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32", "fp8"), default="auto",
                   help="model weights' dtype; auto = bf16 on CUDA, fp32 on CPU; fp8 = bf16 weights with "
                        "the blocks' linear layers in float8 (torchao; H100/H200)")
    p.add_argument("--fast", action="store_true",
                   help="whole-clip mode: compiled blocks and a CUDA-graph step (the first clip compiles)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log each block (-v)")


def cmd_sample(args) -> int:
    import torch

    from manifests.configtools import to_dict
    from training.checkpoint import load_for_inference, resolve
    from training.long_video import VideoSpec, generate_video
    from training.sampler import SampleOptions

    if args.verbose:
        logging.getLogger("reelsift.sample").setLevel(logging.INFO)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype_name = args.dtype if args.dtype != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    try:
        path = resolve(args.checkpoint)
    except FileNotFoundError as exc:
        print(f"error: --checkpoint: {exc}", file=sys.stderr)
        return 2
    dtype = torch.float32 if dtype_name == "fp32" else torch.bfloat16
    inf = load_for_inference(path, device=device, vae_dtype=dtype)
    model = inf.model.to(dtype)
    if dtype_name == "fp8":
        from models.fp8 import MissingPackage, to_fp8

        try:
            to_fp8(model, key="--dtype")
        except MissingPackage as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    cfg = inf.cfg
    block_frames = args.block_frames or (
        model.cfg.block_frames if model.cfg.attention == "block_causal" else DEFAULT_BLOCK_FRAMES)
    bucket_h, bucket_w = next(iter(cfg.data.buckets.values()))[0]
    try:
        opts = SampleOptions(
            steps=args.steps, solver=args.solver, cfg_scale=args.cfg_scale,
            shift=cfg.flow.shift if args.shift is None else args.shift,
            block_frames=block_frames, window=args.window, fast=args.fast,
        )
        spec = VideoSpec(seconds=args.seconds, fps=args.fps or 24.0 / cfg.data.frame_stride,
                         height=args.height or bucket_h, width=args.width or bucket_w)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = {"checkpoint": str(path), "checkpoint_step": inf.step, "train_config": to_dict(cfg)}
    side = generate_video(
        model=model, vae=inf.vae, decode=inf.to_video, text_encoder=inf.text_encoder,
        prompt=args.prompt, negative_prompt=args.negative_prompt, out=args.out, spec=spec, opts=opts,
        seed=args.seed, mode=args.mode, device=device, meta=meta,
    )
    v = side["video"]
    print(f"wrote {args.out}: {v['frames']} frames ({v['blocks']} blocks of {opts.block_frames} latent "
          f"frames, {side['mode']}) in {side['elapsed_s']:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m training.sample_cmd sample ...`) until the CLI wires it."""
    parser = argparse.ArgumentParser(prog="reelsift")
    register(parser.add_subparsers(dest="command", required=True))
    return cmd_sample(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
