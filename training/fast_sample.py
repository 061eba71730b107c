"""Whole-clip sampling with the host out of the loop: the fast path of ``sampler.sample_clip``.

Same flow, same noise, same time grid and the same guidance formula as ``sample_clip``; what
changes is how the steps are issued:

* the text is trimmed once per clip (``trim_text``'s device-to-host copy leaves the loop), and
  the model is called with ``text_trimmed=True``;
* both guidance branches run as one batch of 2B (as in ``sampler.guided``);
* each transformer block is compiled (``torch.compile``, static shapes), as the trainer does;
* on CUDA, with the Euler solver, one whole step (both branches, guidance and the update
  ``x += dt v``) is captured once as a CUDA graph into static buffers and replayed for every
  later step: the host only writes t and dt into two device scalars per step.

Uncompiled and without a graph, the result equals ``sample_clip`` exactly (tests/test_sampler.py,
fp32 on the CPU); compiled, within bf16 rounding (tests/test_sampler_gpu.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from models.linear_dit import trim_text
from training.sampler import (
    Conditioning,
    SampleOptions,
    draw_noise,
    model_dtype,
    solve,
    time_grid,
)

log = logging.getLogger("reelsift.sample")


def trimmed(cond: Conditioning) -> Conditioning:
    """The conditioning with the padding every prompt shares dropped (``trim_text``), once."""
    text, mask = trim_text(cond.text, cond.mask.bool())
    return Conditioning(text, mask, cond.cfg_scale)


def compile_blocks(model) -> None:
    """torch.compile each transformer block in place (static shapes); a no-op when done."""
    for blk in model.blocks:
        if getattr(blk, "_compiled_call_impl", None) is None:
            blk.compile(dynamic=False)


def guided_two_pass(model, cond: Conditioning, dtype: torch.dtype) -> Callable:
    """Reference guidance: each branch in its own model call (B rows each), negatives first;
    ``sampler.guided`` batches them. Used to check that batching changes nothing."""
    b = cond.batch

    def fn(x, t):
        tt = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
        if cond.groups == 1:
            return model(x.to(dtype), tt, cond.text, cond.mask).float()
        v_neg = model(x.to(dtype), tt, cond.text[:b], cond.mask[:b]).float()
        v_pos = model(x.to(dtype), tt, cond.text[b:], cond.mask[b:]).float()
        return v_neg + cond.cfg_scale * (v_pos - v_neg)

    return fn


class ClipDenoiser:
    """Euler (or Heun) over a whole clip from static buffers; see the module docstring.

    ``graph``: capture the Euler step as a CUDA graph (CUDA only; ignored elsewhere and for Heun).
    After a call, ``graphed`` says whether the graph ran and ``graph_error`` why not.
    """

    def __init__(self, model, cond: Conditioning, opts: SampleOptions, *, compile: bool = True,
                 graph: bool = True):
        self.model, self.opts = model, opts
        self.cond = trimmed(cond)
        self.dtype = model_dtype(model)
        self.graph_wanted = graph
        self.graphed, self.graph_error = False, None
        if compile:
            compile_blocks(model)

    def _velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, ...) float32, t (G*B,) float32 -> guided velocity (B, ...) float32."""
        g, cond = self.cond.groups, self.cond
        xin = torch.cat([x] * g) if g > 1 else x  # (G*B, C, F, H, W)
        v = self.model(xin.to(self.dtype), t, cond.text, cond.mask, text_trimmed=True).float()
        if g == 1:
            return v
        v_neg, v_pos = v.chunk(2)
        return v_neg + cond.cfg_scale * (v_pos - v_neg)

    @torch.no_grad()
    def __call__(self, noise: torch.Tensor) -> torch.Tensor:
        """noise (B, C, F, H, W) float32 -> clean latents, same shape."""
        times = time_grid(self.opts.steps, self.opts.shift)
        rows = noise.shape[0] * self.cond.groups
        if self.opts.solver != "euler" or not (self.graph_wanted and self._can_capture(noise)):
            def fn(x, t):
                return self._velocity(x, torch.full((rows,), t, dtype=torch.float32, device=x.device))

            return solve(fn, noise, times, self.opts.solver)
        return self._graphed_euler(noise, times, rows)

    def _graphed_euler(self, noise: torch.Tensor, times: list[float], rows: int) -> torch.Tensor:
        x = noise.clone()  # static state: every step updates it in place
        t_buf = torch.empty(rows, dtype=torch.float32, device=x.device)
        dt_buf = torch.empty((), dtype=torch.float32, device=x.device)

        def step():
            x.add_(dt_buf * self._velocity(x, t_buf))

        pairs = list(zip(times[:-1], times[1:], strict=True))
        replay = None
        for i, (t, t_next) in enumerate(pairs):
            t_buf.fill_(t)
            dt_buf.fill_(t_next - t)
            if replay is not None:
                replay()
            elif i == 0:  # the first step runs as is: it compiles and warms up, then is recorded
                self._warm_step(step)
                if len(pairs) > 1:
                    replay = self._capture(step)
            else:
                step()  # capture failed: the remaining steps run one by one
        return x

    @staticmethod
    def _can_capture(noise: torch.Tensor) -> bool:
        return noise.is_cuda

    @staticmethod
    def _warm_step(step) -> None:
        """Run ``step`` on a side stream, as CUDA graph capture wants its warm-up."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self, step) -> Callable[[], None] | None:
        """Record ``step`` as a CUDA graph (recording runs nothing) and return its replay; None,
        with the reason kept, if it cannot be captured."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                step()
        except RuntimeError as exc:  # an op that cannot be captured: fall back to plain launches
            self.graph_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("CUDA graph capture failed, stepping without it: %s", self.graph_error)
            torch.cuda.synchronize()
            return None
        self.graphed = True
        return graph.replay


def sample_clip_fast(model, cond: Conditioning, latent_shape: tuple[int, int, int, int],
                     opts: SampleOptions, generator: torch.Generator, device, *, compile: bool = True,
                     graph: bool = True) -> torch.Tensor:
    """``sampler.sample_clip`` through ``ClipDenoiser``: same arguments, same noise draw. Blocks
    are compiled on CUDA only (on the CPU the compile would cost more than it saves)."""
    noise = draw_noise((cond.batch, *latent_shape), generator, device)
    on_cuda = str(device).startswith("cuda")
    return ClipDenoiser(model, cond, opts, compile=compile and on_cuda, graph=graph)(noise)
