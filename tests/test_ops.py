"""CPU tests of the linear-attention ops against the masked O(N^2) reference."""

import pytest
import torch

from models import ops
from models.ops import chunked, naive
from models.rope import apply_rope, rope_3d


def _inputs(b, h, f, hh, ww, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = f * hh * ww
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3))
    cos, sin = rope_3d(f, hh, ww, d, frame_offset=3)
    return q, k, v, cos, sin


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("shape", [(1, 1, 4, 2, 3, 8), (2, 3, 5, 3, 2, 16), (1, 2, 7, 1, 1, 32)])
@pytest.mark.parametrize("frames_per_block", [None, 1, 2, 3])
def test_chunked_matches_masked_reference(shape, frames_per_block):
    b, h, f, hh, ww, d = shape
    q, k, v, cos, sin = _inputs(*shape)
    bs = None if frames_per_block is None else frames_per_block * hh * ww
    ref = naive.linear_attention(q, k, v, cos, sin, block_size=bs)
    out = chunked.linear_attention(q.float(), k.float(), v.float(), cos, sin, block_size=bs)
    assert out.dtype == torch.float32
    assert _rel(out, ref) < 1e-5
    out64 = chunked.linear_attention(q, k, v, cos, sin, block_size=bs)
    assert _rel(out64, ref) < 1e-12


def test_block_size_not_dividing_n():
    q, k, v, cos, sin = _inputs(1, 2, 5, 2, 3, 8)  # N = 30
    ref = naive.linear_attention(q, k, v, cos, sin, block_size=7)
    assert _rel(chunked.linear_attention(q, k, v, cos, sin, block_size=7), ref) < 1e-12


def test_full_equals_one_block():
    q, k, v, cos, sin = _inputs(1, 2, 3, 2, 2, 8)
    full = naive.linear_attention(q, k, v, cos, sin)
    assert _rel(naive.linear_attention(q, k, v, cos, sin, block_size=q.shape[2]), full) < 1e-12


@pytest.mark.parametrize("frames_per_block", [1, 2])
def test_recurrent_step_matches_masked_reference(frames_per_block):
    b, h, f, hh, ww, d = 2, 3, 6, 2, 3, 16
    q, k, v, cos, sin = _inputs(b, h, f, hh, ww, d)
    bs = frames_per_block * hh * ww
    ref = naive.linear_attention(q, k, v, cos, sin, block_size=bs)
    state = naive.AttnState(torch.zeros(b, h, d, d), torch.zeros(b, h, d))
    outs, sizes = [], []
    for s in range(0, q.shape[2], bs):
        sl = slice(s, s + bs)
        out, state = naive.step(
            state, q[:, :, sl].float(), k[:, :, sl].float(), v[:, :, sl].float(), cos[sl], sin[sl]
        )
        outs.append(out)
        sizes.append(sum(t.numel() for t in state))
    assert _rel(torch.cat(outs, dim=2), ref) < 1e-5
    assert len(set(sizes)) == 1 and sizes[0] == b * h * (d * d + d)  # state does not grow


def test_step_does_not_mutate_state():
    q, k, v, cos, sin = _inputs(1, 2, 1, 2, 2, 8, dtype=torch.float32)
    state = naive.AttnState.zeros(1, 2, 8)
    state = naive.step(state, q, k, v, cos, sin)[1]
    before = [t.clone() for t in state]
    out1, _ = naive.step(state, q * 2, k, v, cos, sin)
    out2, _ = naive.step(state, q * 2, k, v, cos, sin)
    assert all(torch.equal(a, b) for a, b in zip(before, state, strict=False))
    assert torch.equal(out1, out2)


@pytest.mark.parametrize("bs", [None, 6])
def test_chunked_gradients_match_reference(bs):
    q, k, v, cos, sin = _inputs(1, 2, 4, 2, 3, 8)
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    args_ref = [t.clone().requires_grad_() for t in (q, k, v)]
    w = torch.randn_like(q)
    (chunked.linear_attention(*args, cos, sin, block_size=bs) * w).sum().backward()
    (naive.linear_attention(*args_ref, cos, sin, block_size=bs) * w).sum().backward()
    for a, r in zip(args, args_ref, strict=False):
        assert a.grad is not None and a.grad.abs().sum() > 0
        assert _rel(a.grad, r.grad) < 1e-10


def test_bf16_inputs_accumulate_in_fp32():
    q, k, v, cos, sin = _inputs(1, 2, 4, 4, 4, 16, dtype=torch.float32)
    ref = naive.linear_attention(q.double(), k.double(), v.double(), cos, sin, block_size=16)
    out = chunked.linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), cos, sin, block_size=16)
    assert out.dtype == torch.bfloat16
    assert _rel(out, ref) < 2e-2


def test_rope_numerator_only_and_denominator_positive():
    """With RoPE off (angle 0), the numerator equals the plain ReLU linear attention."""
    q, k, v, cos, sin = _inputs(1, 1, 2, 2, 2, 8)
    ones, zeros = torch.ones_like(cos), torch.zeros_like(sin)
    out = naive.linear_attention(q, k, v, ones, zeros)
    pq, pk = q.relu(), k.relu()
    plain = (pq @ (pk.transpose(-1, -2) @ v)) / ((pq * pk.sum(-2, keepdim=True)).sum(-1, keepdim=True) + 1e-6)
    assert _rel(out, plain) < 1e-12


def test_rope_is_absolute_and_unbounded():
    cos_a, sin_a = rope_3d(10, 2, 3, 32)
    cos_b, sin_b = rope_3d(4, 2, 3, 32, frame_offset=6)
    assert torch.allclose(cos_a[36:], cos_b) and torch.allclose(sin_a[36:], sin_b)
    cos_far, _ = rope_3d(1, 1, 1, 32, frame_offset=1_000_000)  # no table cap
    assert torch.isfinite(cos_far).all()
    x = torch.randn(5, 32, dtype=torch.float64)
    y = apply_rope(x, *rope_3d(5, 1, 1, 32))
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))  # a rotation


def test_dispatcher_uses_pytorch_on_cpu_and_rejects_unknown():
    q, k, v, cos, sin = _inputs(1, 1, 2, 2, 2, 8, dtype=torch.float32)
    assert torch.equal(ops.linear_attention(q, k, v, cos, sin), chunked.linear_attention(q, k, v, cos, sin))
    with pytest.raises(ValueError, match="backend"):
        ops.linear_attention(q, k, v, cos, sin, backend="cuda-magic")


def test_triton_module_imports_on_cpu():
    from models.ops import triton_linear_attn  # must not fail without a GPU

    assert isinstance(triton_linear_attn.HAS_TRITON, bool)


def test_step_dispatcher_uses_reference_on_cpu():
    q, k, v, cos, sin = _inputs(1, 2, 2, 2, 2, 8, dtype=torch.float32)
    state = naive.AttnState(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8))
    out, new = ops.step(state, q, k, v, cos, sin)
    ref, ref_new = naive.step(state, q, k, v, cos, sin)
    assert torch.equal(out, ref) and torch.equal(new.S, ref_new.S)
    with pytest.raises(ValueError, match="backend"):
        ops.step(state, q, k, v, cos, sin, backend="cuda-magic")


def test_fused_rope_table_interleaves_cos_and_sin():
    """The fused kernels' (N, D) table: cos, sin of pair i at columns 2i, 2i+1 (fp16 for 16-bit inputs)."""
    from models.ops.triton_common import rope_table

    cos, sin = rope_3d(2, 3, 4, 22)
    t = rope_table(cos, sin, torch.bfloat16)
    assert t.shape == (24, 22) and t.dtype == torch.float16
    assert torch.equal(t[:, 0::2], cos.half()) and torch.equal(t[:, 1::2], sin.half())
    t32 = rope_table(cos, sin, torch.float32)
    assert t32.dtype == torch.float32 and torch.equal(t32[:, 1::2], sin)
