"""Fused Triton linear attention vs the float64 reference: outputs and gradients, full and
block-causal, float32 and bfloat16. Needs CUDA and Triton; skipped elsewhere."""

import pytest
import torch

from models import ops
from models.ops import naive
from models.rope import rope_3d

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # bf16: inputs rounded to 8 bits, fp16 RoPE tables


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _case(b, h, f, hh, ww, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    n = f * hh * ww
    q, k, v = (torch.randn(b, h, n, d, device="cuda", generator=g).to(dtype) for _ in range(3))
    cos, sin = rope_3d(f, hh, ww, d, frame_offset=2, device="cuda")
    return q, k, v, cos, sin


SHAPES = [
    (1, 2, 3, 8, 8, 32),
    (2, 3, 4, 5, 7, 112),
    (1, 4, 2, 16, 16, 64),
    (1, 1, 5, 3, 3, 128),
    (2, 2, 3, 4, 6, 22),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("frames_per_block", [None, 1, 2])
def test_triton_forward_and_grads_match_reference(dtype, shape, frames_per_block):
    b, h, f, hh, ww, d = shape
    bs = None if frames_per_block is None else frames_per_block * hh * ww
    q, k, v, cos, sin = _case(*shape, dtype, seed=hash((shape, frames_per_block)) % 1000)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = ops.linear_attention(*leaves, cos, sin, block_size=bs, backend="triton")
    assert out.dtype == dtype and out.shape == q.shape
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out.float() * w.float()).sum(), leaves)

    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    ref = naive.linear_attention(*ref_leaves, cos, sin, block_size=bs)
    ref_grads = torch.autograd.grad((ref * w.double()).sum(), ref_leaves)

    assert torch.isfinite(out).all()
    assert _rel(out, ref) < TOL[dtype]
    for name, g, r in zip("qkv", grads, ref_grads, strict=False):
        assert torch.isfinite(g).all(), name
        assert _rel(g, r) < TOL[dtype] * 2, name


def test_block_not_multiple_of_tile_and_partial_last_block():
    q, k, v, cos, sin = _case(1, 2, 7, 5, 13, 112, torch.float32, seed=1)  # N = 455
    for bs in (65, 130, 200, 455, 1000):
        ref = naive.linear_attention(q.double(), k.double(), v.double(), cos, sin, block_size=bs)
        assert _rel(ops.linear_attention(q, k, v, cos, sin, block_size=bs, backend="triton"), ref) < 1e-4, bs


def test_output_fully_written():
    """Poison the output buffer allocator's memory, then check every element is finite."""
    q, k, v, cos, sin = _case(1, 3, 3, 9, 11, 112, torch.bfloat16, seed=2)
    junk = torch.full((64 * 1024 * 1024,), float("nan"), device="cuda")
    del junk
    out = ops.linear_attention(q, k, v, cos, sin, block_size=99, backend="triton")
    assert torch.isfinite(out).all()


def test_dispatcher_picks_triton_on_cuda():
    q, k, v, cos, sin = _case(1, 1, 2, 4, 4, 32, torch.float32, seed=3)
    auto = ops.linear_attention(q, k, v, cos, sin)
    fused = ops.linear_attention(q, k, v, cos, sin, backend="triton")
    assert torch.equal(auto, fused)


def test_model_block_causal_on_gpu_matches_incremental():
    from models.linear_dit import build

    torch.manual_seed(0)
    m = build("tiny").cuda().eval()
    x = torch.randn(2, 4, 6, 8, 8, device="cuda")
    t = torch.rand(2, 6, device="cuda")
    text = torch.randn(2, 5, 64, device="cuda")
    with torch.no_grad():
        full = m(x, t, text, None, attention="block_causal", block_frames=2)
        state = m.init_state(2, 8, 8, device="cuda")
        outs = []
        for s in range(0, 6, 2):
            o, state = m.forward_block(x[:, :, s : s + 2], t[:, s : s + 2], text, None, state)
            outs.append(o)
    assert _rel(torch.cat(outs, 2), full) < 1e-3  # fused full pass vs fused step with a state (blocks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("d", [32, 112])
def test_fused_step_with_state_matches_reference_step(dtype, d):
    """Initial state in, final state out: the fused step equals naive.step (the reference), and
    chained over blocks equals one block-causal pass; the input state is not modified."""
    b, h, f, hh, ww = 2, 3, 4, 5, 6
    q, k, v, cos, sin = _case(b, h, f, hh, ww, d, dtype, seed=d)
    bs = hh * ww
    state = naive.AttnState(torch.zeros(b, h, d, d, device="cuda"), torch.zeros(b, h, d, device="cuda"))
    ref_state, outs = state, []
    with torch.no_grad():
        for s in range(0, q.shape[2], bs):
            sl = slice(s, s + bs)
            before = [t.clone() for t in state]
            blk = [t[:, :, sl] for t in (q, k, v)]
            out, new = ops.step(state, *blk, cos[sl], sin[sl], backend="triton")
            assert all(torch.equal(a, b) for a, b in zip(before, state, strict=True))
            args = [t[:, :, sl].double() for t in (q, k, v)]
            ref_out, ref_new = naive.step(naive.AttnState(*(t.double() for t in ref_state)), *args,
                                          cos[sl], sin[sl])
            assert out.dtype == dtype and new.S.dtype == torch.float32
            assert _rel(out, ref_out) < TOL[dtype]
            assert _rel(new.S, ref_new.S) < TOL[dtype] and _rel(new.z, ref_new.z) < TOL[dtype]
            outs.append(out)
            state, ref_state = new, ref_new
    full = naive.linear_attention(q.double(), k.double(), v.double(), cos, sin, block_size=bs)
    assert _rel(torch.cat(outs, dim=2), full) < TOL[dtype]


def test_fused_step_falls_back_to_reference_under_autograd():
    q, k, v, cos, sin = _case(1, 2, 2, 3, 3, 32, torch.float32, seed=5)
    state = naive.AttnState(torch.rand(1, 2, 32, 32, device="cuda"), torch.rand(1, 2, 32, device="cuda"))
    q = q.requires_grad_()
    out, _ = ops.step(state, q, k, v, cos, sin, backend="triton")
    out.sum().backward()
    ref, _ = naive.step(state, q.detach(), k, v, cos, sin)
    assert _rel(out, ref) < 1e-6 and q.grad is not None


def test_pair_views_of_a_fused_projection():
    """q, k, v as strided head views of one (B, N, 3, H, D) projection, as the model passes them."""
    b, h, n, d = 1, 4, 300, 112
    qkv = torch.randn(b, n, 3, h, d, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, D) views
    cos, sin = rope_3d(3, 10, 10, d, device="cuda")
    ref = naive.linear_attention(q.double(), k.double(), v.double(), cos, sin, block_size=100)
    out = ops.linear_attention(q, k, v, cos, sin, block_size=100, backend="triton")
    assert _rel(out, ref) < TOL[torch.bfloat16]
