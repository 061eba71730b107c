"""Long video block by block, in memory that does not grow with its length.

Latent frames are generated in blocks of ``block_frames``. Each block starts from fresh noise and
is denoised in ``steps`` solver steps, every model call attending (through
``LinearDiT.forward_block``) to the block itself and to the running state of all committed
blocks: per layer the linear-attention sums S (H, D, D) and z (H, D) and the temporal-conv cache
(the last latent frame's FFN features). A finished block is committed by one more pass over its
clean latents at t = 0, whose returned state replaces the old one. The state is one running
sum, so block 1,000 costs what block 2 costs; RoPE time positions are absolute (no cap).

This is exactly the model's block-causal attention: denoising block k with the state equals a
full ``forward(attention='block_causal')`` over [clean blocks 0..k-1 at t = 0; the noisy block]
(tests/test_sampler.py checks it step by step).

Windowing (``window = W > 0``) keeps each committed block's contribution to S and z in a ring of
W entries and uses their sum, so a block attends to at most the W previous blocks. It costs W
extra copies of the sums, never more. The temporal-conv cache and the time positions are not
windowed.

Decoding is streamed: each finished block is decoded and its frames appended to an open mp4, so
a minute-long video never holds all its frames (or latents) in memory.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models.linear_dit import BlockState, DiTState
from models.ops import AttnState
from training.fast_sample import sample_clip_fast
from training.sampler import (
    Conditioning,
    Mp4Writer,
    SampleOptions,
    draw_noise,
    encode_prompts,
    guided,
    latent_frames_for,
    model_dtype,
    sample_clip,
    solve,
    time_grid,
    to_uint8_frames,
)

log = logging.getLogger("reelsift.sample")


def compact(state: DiTState) -> DiTState:
    """Copy each layer's temporal-conv cache out of the block's activations: the model returns a
    view of the last frame, which would otherwise keep a whole block of FFN features alive per
    layer (a constant, but large, cost)."""
    layers = [BlockState(s.attn, s.conv.clone()) for s in state.layers]
    return DiTState(layers, state.frame_offset)


class StateWindow:
    """Ring of the last ``blocks`` committed blocks' contributions to (S, z), per layer."""

    def __init__(self, blocks: int):
        if blocks < 1:
            raise ValueError(f"sample.window must be >= 1 to window, got {blocks}")
        self.ring: deque[list[AttnState]] = deque(maxlen=blocks)

    def push(self, old: DiTState, new: DiTState) -> DiTState:
        """``new`` = ``old`` plus one committed block. Returns the state whose sums cover only the
        last ``blocks`` blocks (re-summed from the ring, so rounding does not drift)."""
        pairs = zip(old.layers, new.layers, strict=True)
        self.ring.append([AttnState(n.attn.S - o.attn.S, n.attn.z - o.attn.z) for o, n in pairs])
        layers = []  # deque(maxlen) has dropped the oldest block
        for i, n in enumerate(new.layers):
            S, z = _total(d[i].S for d in self.ring), _total(d[i].z for d in self.ring)
            layers.append(BlockState(AttnState(S, z), n.conv))
        return DiTState(layers, new.frame_offset)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for entry in self.ring for a in entry for t in a)


def _total(tensors) -> torch.Tensor:
    it = iter(tensors)
    acc = next(it).clone()
    for t in it:
        acc += t
    return acc


class BlockSampler:
    """Generates latent blocks one after another from a running state (see module docstring).

    ``next_block()`` -> clean latents (B, C, block_frames, H, W) float32. Noise for block k is
    the k-th draw of shape (B, C, block_frames, H, W) from ``generator``. ``state`` may be given
    to start from another state (the softmax-twin benchmark passes a KV cache).
    """

    def __init__(self, model, cond: Conditioning, latent_hw: tuple[int, int], opts: SampleOptions,
                 generator: torch.Generator, device, state: DiTState | None = None):
        self.model, self.cond, self.opts, self.generator, self.device = model, cond, opts, generator, device
        self.height, self.width = latent_hw
        self.dtype = model_dtype(model)
        self.state = state if state is not None else model.init_state(
            cond.text.shape[0], self.height, self.width, device)
        self.window = StateWindow(opts.window) if opts.window else None
        self.times = time_grid(opts.steps, opts.shift)
        self.blocks_done = 0

    @torch.no_grad()
    def next_block(self) -> torch.Tensor:
        c, fb = self.model.cfg.in_channels, self.opts.block_frames
        noise = draw_noise((self.cond.batch, c, fb, self.height, self.width), self.generator, self.device)
        state, text, mask = self.state, self.cond.text, self.cond.mask
        call = lambda x, t: self.model.forward_block(x, t, text, mask, state)[0]  # noqa: E731
        x = solve(guided(call, self.cond, self.dtype), noise, self.times, self.opts.solver)
        self.commit(x)
        return x

    @torch.no_grad()
    def commit(self, x: torch.Tensor) -> None:
        """Fold the clean block x (B, C, Fb, H, W) into the state: one pass at t = 0, per branch."""
        g = self.cond.groups
        xin = (torch.cat([x] * g) if g > 1 else x).to(self.dtype)  # (G*B, C, Fb, H, W)
        t0 = torch.zeros(xin.shape[0], device=x.device)
        _, new = self.model.forward_block(xin, t0, self.cond.text, self.cond.mask, self.state)
        new = compact(new)
        self.state = self.window.push(self.state, new) if self.window else new
        self.blocks_done += 1

    def blocks(self, n: int) -> Iterator[torch.Tensor]:
        for _ in range(n):
            yield self.next_block()

    def state_nbytes(self) -> int:
        """Bytes of everything carried between blocks (state, plus the window ring if any)."""
        return self.state.nbytes() + (self.window.nbytes() if self.window else 0)


# --------------------------------------------------------------------------------------------
# End to end: prompt -> mp4 + sidecar JSON


class PhaseClock:
    """Wall seconds per phase of one video (text, denoise, decode, mp4), summed over blocks. On
    CUDA each phase ends with a synchronize, so queued GPU work is charged to its own phase."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


@dataclass(frozen=True)
class VideoSpec:
    seconds: float
    """Length of the video (> 0)."""
    fps: float
    """Frames per second of the written mp4 (> 0)."""
    height: int
    """Pixel height; divisible by the VAE's spatial factor x the model's patch size."""
    width: int
    """Pixel width; same rule as height."""

    def __post_init__(self):
        if self.seconds <= 0 or self.fps <= 0:
            raise ValueError(f"--seconds and --fps must be > 0, got {self.seconds}, {self.fps}")


@torch.no_grad()
def generate_video(*, model, vae, decode: Callable[[torch.Tensor], torch.Tensor], text_encoder,
                   prompt: str, out: str | Path, spec: VideoSpec, opts: SampleOptions, seed: int,
                   negative_prompt: str = "", mode: str = "auto", device="cpu",
                   meta: dict | None = None) -> dict:
    """Write ``out`` (mp4) and ``out`` with suffix .json (sidecar); returns the sidecar dict.

    ``decode``: DiT latents (B, C, F, h, w) -> video (B, 3, T, H, W) in [-1, 1] (e.g.
    ``Inference.to_video``); ``vae`` gives the spatial/temporal factors. ``mode``: 'blocks'
    (block-causal, constant memory), 'clip' (the whole clip at once with the model's attention),
    or 'auto' (blocks when the model was configured block-causal, else clip).
    """
    cfg = model.cfg
    step_px = vae.spatial * cfg.patch_size[1]
    if spec.height % step_px or spec.width % step_px:
        raise ValueError(f"--height/--width must be divisible by {step_px} (VAE x patch), "
                         f"got {spec.height}x{spec.width}")
    if mode == "auto":
        mode = "blocks" if cfg.attention == "block_causal" else "clip"
    if mode not in ("blocks", "clip"):
        raise ValueError(f"mode must be auto, blocks or clip, got {mode!r}")
    if vae.temporal > 1 and mode == "blocks":
        log.warning("VAE has temporal factor %d: each block is decoded on its own, so the VAE's causal "
                    "cache restarts at block boundaries", vae.temporal)

    frames = max(1, round(spec.seconds * spec.fps))
    latent_frames = latent_frames_for(frames, vae.temporal)
    blocks = math.ceil(latent_frames / opts.block_frames)
    hw = (spec.height // vae.spatial, spec.width // vae.spatial)
    dtype = model_dtype(model)
    clock = PhaseClock(device)
    with clock("text"):
        cond = encode_prompts(text_encoder, [prompt], negative_prompt, opts.cfg_scale, dtype, device)
    generator = torch.Generator().manual_seed(seed)
    out = Path(out)

    written, sampler = 0, None
    with Mp4Writer(out, spec.fps) as writer:
        if mode == "blocks":
            sampler = BlockSampler(model, cond, hw, opts, generator, device)
            chunks = sampler.blocks(blocks)
        else:  # one clip of exactly the latent frames needed
            with clock("denoise"):
                lat = (sample_clip_fast if opts.fast else sample_clip)(
                    model, cond, (cfg.in_channels, latent_frames, *hw), opts, generator, device)
            # a temporal VAE decodes the clip in one call (its causal cache runs across it); a
            # per-frame codec decodes it in blocks of frames, the same result in less memory
            chunks = iter([lat] if vae.temporal > 1 else lat.split(opts.block_frames, dim=2))
        for k in range(blocks):
            with clock("denoise"):
                x = next(chunks, None)
            if x is None:
                break
            with clock("decode"):
                video = to_uint8_frames(decode(x)[0])  # (T, H, W, 3)
            video = video[: frames - written]  # the last block may run past the requested length
            with clock("mp4"):
                writer.write(video)
            written += len(video)
            log.info("block %d/%d: %d frames written", k + 1, blocks, written)
        with clock("mp4"):
            writer.close()

    sidecar = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "mode": mode,
        "options": asdict(opts),
        "video": {**asdict(spec), "frames": written, "latent_frames": latent_frames, "blocks": blocks,
                  "latent_hw": list(hw)},
        "state_bytes": sampler.state_nbytes() if sampler else None,
        "elapsed_s": round(time.perf_counter() - clock.started, 3),
        "timings_s": clock.rounded(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "model_config": asdict(cfg),
        **(meta or {}),
    }
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, default=str))
    return sidecar
