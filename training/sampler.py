"""Flow-matching sampler for the Linear DiT: time grid, solvers, classifier-free guidance,
whole-clip sampling and a streaming mp4 writer. Block-by-block long video is in
``training.long_video`` and uses the pieces here.

Convention (the trainer's): x_t = (1 - t) x_0 + t eps with t in [0, 1], 1 = pure noise; the model
predicts the velocity v = eps - x_0 = dx_t/dt. Sampling integrates dx/dt = v from t = 1 down to
t = 0 over ``steps`` intervals of a uniform grid passed through the time shift
t' = shift t / (1 + (shift - 1) t) (shift > 1 spends more of the steps near the noise end).

Guidance: v = v(negative) + cfg_scale (v(prompt) - v(negative)); the negative prompt defaults to
the empty prompt, which is what the trainer's text dropout teaches as "unconditional". Both
branches run as one batch of 2B, negatives first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
"""fn(x (B, C, F, H, W) float32, t) -> velocity of the same shape, float32."""


@dataclass(frozen=True)
class SampleOptions:
    steps: int = 20
    """Denoising steps per clip, or per block in block-wise generation (>= 1)."""
    solver: str = "euler"
    """'euler' (one model call per step) or 'heun' (second order, two calls per step)."""
    cfg_scale: float = 4.5
    """Classifier-free guidance scale (>= 0); 1 = no guidance, and the negative branch is skipped."""
    shift: float = 1.0
    """Time shift of the sampling grid (> 0); 1 = uniform steps."""
    block_frames: int = 10
    """Latent frames per block in block-wise generation (>= 1)."""
    window: int = 0
    """Attend to at most this many previous blocks (>= 0); 0 = all of them (one running sum)."""
    fast: bool = False
    """Whole-clip sampling through ``training.fast_sample``: text trimmed once, blocks compiled,
    the Euler step replayed as a CUDA graph. Same output within bf16 rounding; the first clip of
    a shape pays the compile (tens of seconds)."""

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"sample.steps must be >= 1, got {self.steps}")
        if self.solver not in SOLVERS:
            raise ValueError(f"sample.solver must be one of {sorted(SOLVERS)}, got {self.solver!r}")
        if self.cfg_scale < 0:
            raise ValueError(f"sample.cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.shift <= 0:
            raise ValueError(f"sample.shift must be > 0, got {self.shift}")
        if self.block_frames < 1:
            raise ValueError(f"sample.block_frames must be >= 1, got {self.block_frames}")
        if self.window < 0:
            raise ValueError(f"sample.window must be >= 0 (0 = no window), got {self.window}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0


# --------------------------------------------------------------------------------------------
# Time grid and solvers


def shift_time(t: float, shift: float) -> float:
    """t' = shift t / (1 + (shift - 1) t); maps [0, 1] onto itself, keeping both ends."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def time_grid(steps: int, shift: float) -> list[float]:
    """``steps + 1`` times from 1 down to 0 (inclusive), shifted."""
    return [shift_time(1.0 - i / steps, shift) for i in range(steps + 1)]


def euler_step(fn: Velocity, x, t: float, t_next: float):
    return x + (t_next - t) * fn(x, t)


def heun_step(fn: Velocity, x, t: float, t_next: float):
    """Trapezoid rule with an Euler predictor (second order; the model is defined at t = 0)."""
    dt = t_next - t
    v = fn(x, t)
    v_next = fn(x + dt * v, t_next)
    return x + dt * 0.5 * (v + v_next)


SOLVERS = {"euler": euler_step, "heun": heun_step}


def solve(fn: Velocity, x, times: list[float], solver: str = "euler"):
    """Integrate dx/dt = fn(x, t) along ``times`` (from noise at times[0] to times[-1])."""
    step = SOLVERS[solver]
    for t, t_next in zip(times[:-1], times[1:], strict=True):
        x = step(fn, x, t, t_next)
    return x


def draw_noise(shape, generator: torch.Generator, device) -> torch.Tensor:
    """Standard normal float32 noise drawn on the CPU generator (same numbers on any device)."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


# --------------------------------------------------------------------------------------------
# Conditioning and guidance


@dataclass
class Conditioning:
    """Encoded text for a batch of B prompts; with guidance the negatives come first."""

    text: torch.Tensor
    """(G * B, L, text_dim) in the model's dtype; G = 2 with guidance, else 1"""
    mask: torch.Tensor
    """(G * B, L) bool, True = real token"""
    cfg_scale: float

    @property
    def groups(self) -> int:
        return 1 if self.cfg_scale == 1.0 else 2

    @property
    def batch(self) -> int:
        return self.text.shape[0] // self.groups


def encode_prompts(text_encoder, prompts: list[str], negative_prompt: str, cfg_scale: float,
                   dtype: torch.dtype, device) -> Conditioning:
    """Encode prompts (and, when guided, one negative prompt per prompt) in a single call."""
    batch = prompts if cfg_scale == 1.0 else [negative_prompt] * len(prompts) + list(prompts)
    feats, mask = text_encoder(batch)  # (G*B, L, dim), (G*B, L)
    return Conditioning(feats.to(device=device, dtype=dtype), mask.to(device), cfg_scale)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def guided(call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], cond: Conditioning,
           dtype: torch.dtype) -> Velocity:
    """Wrap ``call(x (G*B, ...) in dtype, t (G*B,) float32) -> v`` into a guided velocity of the
    B samples; the ODE state stays float32 whatever the model's dtype."""
    g = cond.groups

    def fn(x, t):
        xin = torch.cat([x] * g) if g > 1 else x  # (G*B, C, F, H, W)
        tt = torch.full((xin.shape[0],), t, dtype=torch.float32, device=x.device)
        v = call(xin.to(dtype), tt).float()
        if g == 1:
            return v
        v_neg, v_pos = v.chunk(2)
        return v_neg + cond.cfg_scale * (v_pos - v_neg)

    return fn


@torch.no_grad()
def sample_clip(model, cond: Conditioning, latent_shape: tuple[int, int, int, int],
                opts: SampleOptions, generator: torch.Generator, device) -> torch.Tensor:
    """A whole clip at once with the model's configured attention. latent_shape = (C, F, H, W);
    returns latents (B, C, F, H, W) float32. Memory grows with F: use ``long_video`` for long
    clips."""
    noise = draw_noise((cond.batch, *latent_shape), generator, device)
    call = lambda x, t: model(x, t, cond.text, cond.mask)  # noqa: E731
    return solve(guided(call, cond, model_dtype(model)), noise, time_grid(opts.steps, opts.shift),
                 opts.solver)


# --------------------------------------------------------------------------------------------
# Pixels and files


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """One video (3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8 RGB."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (3, T, H, W)
    return x.permute(1, 2, 3, 0).cpu().numpy()  # (T, H, W, 3)


class Mp4Writer:
    """Appends RGB frames to an H.264 (yuv420p) mp4 as they come, so a long video is never held
    in memory. Frame size is fixed by the first write and must be even."""

    def __init__(self, path: str | Path, fps: float, *, crf: int = 20, preset: str = "veryfast"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.crf, self.preset = fps, crf, preset
        self.frames = 0
        import av  # only the writer needs PyAV (the GPU benchmark imports this module without it)

        self._av = av
        self._out = av.open(str(self.path), mode="w", format="mp4")
        self._stream = None

    def write(self, frames: np.ndarray) -> None:
        """frames: (T, H, W, 3) uint8."""
        if self._stream is None:
            h, w = frames.shape[1:3]
            if h % 2 or w % 2:
                raise ValueError(f"mp4 (yuv420p) needs an even frame size, got {w}x{h}")
            self._stream = self._out.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.width, self._stream.height, self._stream.pix_fmt = w, h, "yuv420p"
            self._stream.options = {"crf": str(self.crf), "preset": self.preset}
        for arr in frames:
            frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in self._stream.encode(frame):
                self._out.mux(packet)
            self.frames += 1

    def close(self) -> None:
        """Flush the encoder and close the file; a second call does nothing."""
        if self._out is None:
            return
        if self._stream is not None:
            for packet in self._stream.encode():
                self._out.mux(packet)
        self._out.close()
        self._out = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def latent_frames_for(pixel_frames: int, temporal: int) -> int:
    """Latent frames that decode to at least ``pixel_frames`` frames (VAE rule
    T' = 1 + (T - 1) // temporal when temporal > 1, else T' = T)."""
    if temporal == 1:
        return pixel_frames
    return 1 + math.ceil((pixel_frames - 1) / temporal)
