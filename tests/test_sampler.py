"""Sampler: time grid and solvers, block-wise generation equal to the block-causal model step by
step, a state whose size does not grow, windowing, and the `sample` CLI end to end (tiny model,
CPU, random weights)."""

import argparse
import json

import pytest
import torch

from models.linear_dit import build
from training.long_video import BlockSampler
from training.sampler import (
    Conditioning,
    SampleOptions,
    draw_noise,
    guided,
    shift_time,
    solve,
    time_grid,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build("tiny", attention="block_causal")
    with torch.no_grad():  # the temporal conv is zero at init: make its block-boundary cache matter
        for blk in m.blocks:
            blk.ffn.t_weight.normal_(0, 0.3)
            blk.ffn.t_bias.normal_(0, 0.1)
    return m.eval()


def _cond(cfg_scale, batch=1, length=5, text_dim=64, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    groups = 1 if cfg_scale == 1.0 else 2
    text = torch.randn(groups * batch, length, text_dim, generator=g)
    mask = torch.ones(groups * batch, length, dtype=torch.bool)
    mask[0, 3:] = False  # a short (negative) prompt: padding must be ignored
    return Conditioning(text.to(device), mask.to(device), cfg_scale)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_time_grid_and_shift():
    assert time_grid(4, 1.0) == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = time_grid(4, 3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    assert all(a > b for a, b in zip(shifted, shifted[1:], strict=False))
    assert shift_time(0.5, 3.0) == pytest.approx(0.75)  # 3 * .5 / (1 + 2 * .5)
    assert all(s >= u for s, u in zip(shifted, time_grid(4, 1.0), strict=True))  # shift > 1 stays noisier


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_solvers_converge_at_their_order(solver, order):
    # dx/dt = x from t = 1 to 0: x(0) = x(1) / e. Doubling the steps divides the error by 2^order.
    x1 = torch.randn(3, 2, dtype=torch.float64)
    err = [_rel(solve(lambda x, t: x, x1, time_grid(n, 1.0), solver), x1 / torch.e) for n in (16, 32)]
    assert err[0] / err[1] == pytest.approx(2**order, rel=0.1)


def test_euler_on_straight_flow_lands_on_data():
    # The exact velocity for a single data point x0 is (x - x0) / t; flows are straight.
    x0, noise = torch.randn(4), torch.randn(4)
    out = solve(lambda x, t: (x - x0) / t, noise, time_grid(5, 3.0), "euler")
    assert torch.allclose(out, x0, atol=1e-6)


def _reference_blocks(model, cond, hw, opts, seed, n, device="cpu"):
    """Teacher-forced reference: every denoising call is one full block-causal forward over
    [committed clean blocks at t = 0 ; the current noisy block at t]; no state involved."""
    g, fb = torch.Generator().manual_seed(seed), opts.block_frames
    c = model.cfg.in_channels
    done = []
    for _ in range(n):
        noise = draw_noise((cond.batch, c, fb, *hw), g, device)
        ctx = torch.cat(done, dim=2) if done else None

        def call(x, t, ctx=ctx):  # x (G*B, C, Fb, H, W), t (G*B,)
            tt = t[:, None].expand(-1, fb)  # (G*B, Fb)
            if ctx is not None:
                prev = torch.cat([ctx] * cond.groups)  # (G*B, C, k*Fb, H, W)
                x = torch.cat([prev, x], dim=2)
                tt = torch.cat([torch.zeros(x.shape[0], prev.shape[2], device=device), tt], dim=1)
            v = model(x, tt, cond.text, cond.mask, attention="block_causal", block_frames=fb)
            return v[:, :, -fb:]

        done.append(solve(guided(call, cond, torch.float32), noise, time_grid(opts.steps, opts.shift),
                          opts.solver))
    return done


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                       reason="needs a CUDA GPU")]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver,cfg_scale", [("euler", 1.0), ("heun", 3.0)])
@torch.no_grad()
def test_blocks_equal_block_causal_forward(model, solver, cfg_scale, device):
    """On CUDA the blocks run the fused kernels with a state (ops.step) and the reference the
    fused full-sequence kernels: float32 throughout (TF32 convolutions off)."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    model = model.to(device)
    try:
        opts = SampleOptions(steps=2, solver=solver, cfg_scale=cfg_scale, shift=2.0, block_frames=2)
        cond, hw, seed, n = _cond(cfg_scale, device=device), (4, 6), 7, 3
        sampler = BlockSampler(model, cond, hw, opts, torch.Generator().manual_seed(seed), device)
        got = list(sampler.blocks(n))
        want = _reference_blocks(model, cond, hw, opts, seed, n, device)
        assert sampler.state.frame_offset == n * opts.block_frames
        tol = 1e-5 if device == "cpu" else 1e-4
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            assert a.shape == (1, model.cfg.in_channels, 2, *hw)
            assert _rel(a, b) < tol, f"block {k}: {_rel(a, b):.2e}"
        # and the blocks really depend on what came before (the state is used)
        fresh = BlockSampler(model, cond, hw, opts, torch.Generator().manual_seed(seed), device)
        fresh.next_block()
        fresh.state = model.init_state(cond.text.shape[0], *hw, device=device)
        fresh.state.frame_offset = opts.block_frames
        assert _rel(fresh.next_block(), got[1]) > 1e-3
    finally:
        model.to("cpu")
        torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.parametrize("window", [0, 4])
@torch.no_grad()
def test_state_size_is_constant(model, window):
    opts = SampleOptions(steps=1, cfg_scale=2.0, block_frames=1, window=window)
    sampler = BlockSampler(model, _cond(2.0), (4, 4), opts, torch.Generator().manual_seed(0), "cpu")
    sizes = [(sampler.next_block(), sampler.state_nbytes())[1] for _ in range(32)]
    settled = max(window, 1) - 1  # the window ring fills during the first W blocks
    assert sizes[settled] == sizes[-1] and len(set(sizes[settled:])) == 1
    assert sampler.state.frame_offset == 32  # absolute positions keep counting
    assert torch.isfinite(sampler.state.layers[0].attn.S).all()


@torch.no_grad()
def test_window_covering_every_block_changes_nothing(model):
    cond, hw, n = _cond(1.0), (4, 4), 4

    def run(window):
        opts = SampleOptions(steps=2, cfg_scale=1.0, block_frames=2, window=window)
        return torch.cat(list(BlockSampler(model, cond, hw, opts, torch.Generator().manual_seed(3), "cpu")
                              .blocks(n)), dim=2)

    full = run(0)
    assert _rel(run(n), full) < 1e-5
    assert _rel(run(1), full) > 1e-4  # a short window forgets


# --------------------------------------------------------------------------------------------
# CLI end to end


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from training.checkpoint import save_checkpoint
    from training.config import ModelConfig, TrainConfig, VAEConfig

    train_cfg = TrainConfig(model=ModelConfig(name="tiny", attention="block_causal", block_frames=2),
                            vae=VAEConfig(kind="patch", channels=16, spatial=4))
    torch.manual_seed(0)
    model = build("tiny", attention="block_causal", block_frames=2, in_channels=16, text_dim=384)
    path = tmp_path_factory.mktemp("ck") / "step-0000003.pt"
    return save_checkpoint(path, model=model, ema=None, optimizer=None, step=3, train_cfg=train_cfg,
                           data_state=None)


def test_sample_cli_writes_multi_block_mp4(checkpoint, tmp_path):
    av = pytest.importorskip("av")  # PyAV: not on every GPU image (the other tests here need none)
    from training.sample_cmd import SOLVER_NAMES, cmd_sample, register
    from training.sampler import SOLVERS

    assert set(SOLVER_NAMES) == set(SOLVERS)

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "clip.mp4"
    args = parser.parse_args([
        "sample", "--checkpoint", str(checkpoint.parent), "--prompt", "a red kite over a beach",
        "--seconds", "1.25", "--fps", "8", "--out", str(out), "--steps", "2", "--cfg-scale", "3",
        "--solver", "heun", "--height", "32", "--width", "48", "--seed", "5", "--device", "cpu",
    ])
    assert cmd_sample(args) == 0
    with av.open(str(out)) as f:
        stream = f.streams.video[0]
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(stream)]
    assert len(frames) == 10 and frames[0].shape == (32, 48, 3)  # 1.25 s x 8 fps
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["prompt"] == "a red kite over a beach" and side["seed"] == 5
    assert side["mode"] == "blocks" and side["video"]["blocks"] == 5  # 10 latent frames / 2
    assert side["options"]["solver"] == "heun" and side["checkpoint_step"] == 3
    assert side["checkpoint"].endswith("step-0000003.pt")
    assert side["train_config"]["model"]["attention"] == "block_causal"


def test_sample_cli_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    from training.sample_cmd import main

    code = main(["sample", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x", "--out",
                 str(tmp_path / "x.mp4")])
    assert code == 2 and "no such checkpoint" in capsys.readouterr().err
