"""The fast whole-clip sampler (training.fast_sample): batched guidance equals two model calls,
the static-buffer path equals the plain one (exactly in fp32 on the CPU, within bf16 rounding
compiled and CUDA-graphed on a GPU), and generate_video's clip mode with phase timings."""

import json

import pytest
import torch

from models.linear_dit import build
from training.fast_sample import ClipDenoiser, guided_two_pass, sample_clip_fast
from training.sampler import Conditioning, SampleOptions, draw_noise, guided, sample_clip, solve, time_grid

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(**kw):
    torch.manual_seed(0)
    m = build("tiny", **kw)
    with torch.no_grad():  # make the zero-initialised temporal conv matter
        for blk in m.blocks:
            blk.ffn.t_weight.normal_(0, 0.3)
    return m.eval().requires_grad_(False)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _cond(cfg_scale, batch=1, text_dim=64, device="cpu", dtype=torch.float32):
    """Negative prompts of 2 tokens, prompts of 5: a padded batch, as `encode_prompts` makes it."""
    g = torch.Generator().manual_seed(1)
    groups = 1 if cfg_scale == 1.0 else 2
    text = torch.randn(groups * batch, 6, text_dim, generator=g)
    mask = torch.ones(groups * batch, 6, dtype=torch.bool)
    mask[:, 5] = False  # padding every prompt shares: trimmed
    if groups == 2:
        mask[:batch, 2:] = False
    return Conditioning(text.to(device, dtype), mask.to(device), cfg_scale)


@pytest.mark.parametrize("cfg_scale", [1.0, 6.0])
@torch.no_grad()
def test_batched_guidance_equals_two_passes(cfg_scale):
    model, cond = _model(), _cond(cfg_scale, batch=2)
    noise = torch.randn(2, 4, 3, 4, 6, generator=torch.Generator().manual_seed(2))
    times = time_grid(3, 3.0)
    call = lambda x, t: model(x, t, cond.text, cond.mask)  # noqa: E731
    fn_batched, fn_two = guided(call, cond, torch.float32), guided_two_pass(model, cond, torch.float32)
    # Not bitwise: one batch of 2B rows or two of B changes the BLAS blocking, and the batch pads
    # the short negative prompt with masked keys that the lone negative pass does not have; the
    # difference is float32 rounding (~1e-7 relative per call), guidance-amplified over the steps.
    assert _rel(fn_batched(noise, 0.7), fn_two(noise, 0.7)) < 1e-6
    batched, two = solve(fn_batched, noise, times), solve(fn_two, noise, times)
    assert _rel(batched, two) < 5e-6
    if cfg_scale != 1.0:  # guidance is really applied
        plain = solve(guided_two_pass(model, _cond(1.0, batch=2), torch.float32), noise, times)
        assert (plain - batched).abs().max() > 1e-2


@pytest.mark.parametrize("solver", ["euler", "heun"])
@torch.no_grad()
def test_static_path_equals_plain_path_exactly(solver):
    model, cond = _model(), _cond(6.0)
    opts = SampleOptions(steps=4, solver=solver, cfg_scale=6.0, shift=3.0)
    plain = sample_clip(model, cond, (4, 3, 4, 6), opts, torch.Generator().manual_seed(3), "cpu")
    den = ClipDenoiser(model, cond, opts, compile=False, graph=False)
    fast = den(draw_noise((1, 4, 3, 4, 6), torch.Generator().manual_seed(3), "cpu"))
    assert torch.equal(plain, fast)
    assert den.cond.text.shape[1] == 5 and not den.graphed  # shared padding trimmed once


@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp8", marks=pytest.mark.slow)])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@torch.no_grad()
def test_compiled_graphed_path_matches_plain_on_gpu(precision):
    """2b width at depth 2 on a 480p-like latent crop, bf16 (or fp8 linears): the compiled blocks
    and the CUDA-graph replay give the plain path's latents within bf16 rounding, i.e. no further
    from them than twice the plain bf16 path is from the same model in fp32."""
    torch.manual_seed(0)
    model = build("2b", depth=2, in_channels=16, text_dim=64).cuda().eval().requires_grad_(False)
    opts = SampleOptions(steps=6, cfg_scale=6.0, shift=3.0)
    shape = (16, 5, 30, 52)
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    exact = sample_clip(model, _cond(6.0, device="cuda"), shape, opts, gen(), "cuda")  # fp32 reference
    model = model.to(torch.bfloat16)
    if precision == "fp8":
        from models.fp8 import to_fp8

        to_fp8(model, "--dtype")
    cond = _cond(6.0, device="cuda", dtype=torch.bfloat16)
    plain = sample_clip(model, cond, shape, opts, gen(), "cuda")
    den = ClipDenoiser(model, cond, opts)
    fast = den(draw_noise((1, *shape), gen(), "cuda"))
    assert den.graphed, den.graph_error
    floor = _rel(plain, exact)  # bf16's own error (fp8's for the fp8 model)
    assert 0 < floor < 0.2 and _rel(fast, plain) < max(2 * floor, 1e-2), (_rel(fast, plain), floor)
    again = den(draw_noise((1, *shape), torch.Generator().manual_seed(4), "cuda"))
    assert _rel(again, fast) < 1e-6  # a second clip (new capture) repeats the first


def test_clip_mode_samples_exact_latent_frames_with_phase_timings(tmp_path):
    pytest.importorskip("av")
    from models.vae import PatchVAE
    from training.long_video import VideoSpec, generate_video

    model = _model(in_channels=16, text_dim=8)
    vae = PatchVAE(channels=16, spatial=4)
    calls = []

    def text_encoder(prompts):
        calls.append(list(prompts))
        return torch.randn(len(prompts), 3, 8), torch.ones(len(prompts), 3, dtype=torch.bool)

    def decode(x):
        calls.append(x.shape[2])
        return vae.decode(x)

    side = generate_video(model=model, vae=vae, decode=decode, text_encoder=text_encoder, prompt="kite",
                          out=tmp_path / "a.mp4", spec=VideoSpec(seconds=1.0, fps=7, height=32, width=48),
                          opts=SampleOptions(steps=2, cfg_scale=6.0, block_frames=3, fast=True),
                          seed=1, mode="clip")
    assert calls[0] == ["", "kite"] and calls[1:] == [3, 3, 1]  # 7 latent frames, not 9
    assert side["video"]["frames"] == 7 and (tmp_path / "a.mp4").stat().st_size > 0
    assert set(side["timings_s"]) == {"text", "denoise", "decode", "mp4"}
    assert sum(side["timings_s"].values()) <= side["elapsed_s"] + 1e-3


@torch.no_grad()
def test_fast_sampler_draws_the_same_noise():
    model, cond = _model(), _cond(1.0)
    opts = SampleOptions(steps=1, cfg_scale=1.0)
    a = sample_clip_fast(model, cond, (4, 2, 4, 4), opts, torch.Generator().manual_seed(9), "cpu")
    b = sample_clip(model, cond, (4, 2, 4, 4), opts, torch.Generator().manual_seed(9), "cpu")
    assert torch.equal(a, b)


def test_sample_cli_fp8_fast_clip(tmp_path):
    """`reelsift sample --dtype fp8 --fast --mode clip` end to end on the CPU (tiny checkpoint)."""
    av = pytest.importorskip("av")
    pytest.importorskip("torchao")
    from training.checkpoint import save_checkpoint
    from training.config import ModelConfig, TrainConfig, VAEConfig
    from training.sample_cmd import main

    torch.manual_seed(0)
    model = build("tiny", in_channels=16, text_dim=384)
    ckpt = save_checkpoint(tmp_path / "step-0000001.pt", model=model, ema=None, optimizer=None, step=1,
                           train_cfg=TrainConfig(model=ModelConfig(name="tiny"),
                                                 vae=VAEConfig(kind="patch", channels=16, spatial=4)),
                           data_state=None)
    out = tmp_path / "clip.mp4"
    assert main(["sample", "--checkpoint", str(ckpt), "--prompt", "a kite", "--seconds", "1", "--fps", "6",
                 "--out", str(out), "--steps", "2", "--cfg-scale", "6", "--height", "32", "--width", "32",
                 "--device", "cpu", "--dtype", "fp8", "--fast", "--mode", "clip"]) == 0
    with av.open(str(out)) as f:
        assert sum(1 for _ in f.decode(video=0)) == 6
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["options"]["fast"] and side["mode"] == "clip" and side["dtype"] == "bfloat16"


@torch.no_grad()
def test_graph_loop_equals_plain_path(monkeypatch):
    """The CUDA-graph loop's bookkeeping (static x, t and dt buffers; step 0 run, then recorded,
    then replayed) on the CPU: a "capture" whose replay runs the step again."""
    def capture(self, step):
        self.graphed = True
        return step

    monkeypatch.setattr(ClipDenoiser, "_can_capture", staticmethod(lambda noise: True))
    monkeypatch.setattr(ClipDenoiser, "_warm_step", staticmethod(lambda step: step()))
    monkeypatch.setattr(ClipDenoiser, "_capture", capture)
    model, cond = _model(), _cond(6.0)
    opts = SampleOptions(steps=5, cfg_scale=6.0, shift=3.0)
    plain = sample_clip(model, cond, (4, 3, 4, 6), opts, torch.Generator().manual_seed(5), "cpu")
    den = ClipDenoiser(model, cond, opts, compile=False)
    noise = draw_noise((1, 4, 3, 4, 6), torch.Generator().manual_seed(5), "cpu")
    kept = noise.clone()
    fast = den(noise)
    assert den.graphed and torch.equal(fast, plain)
    assert torch.equal(noise, kept)  # the loop steps its own buffer, not the caller's noise
