"""CPU tests of the Linear DiT: shapes, block-causal equivalence with the incremental API,
causality, constant state size, gradients and initialisation."""

import pytest
import torch

from models.dit_config import CONFIGS
from models.linear_dit import LinearDiT, build, get_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build("tiny")
    with torch.no_grad():  # make the zero-initialised temporal conv matter in these tests
        for blk in m.blocks:
            blk.ffn.t_weight.normal_(0, 0.3)
            blk.ffn.t_bias.normal_(0, 0.1)
    return m.eval()


def _inputs(b=2, f=6, h=8, w=12, c=4, text_dim=64, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, f, h, w, generator=g)
    text = torch.randn(b, length, text_dim, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[-1, 2:] = False  # padded caption
    return x, text, mask


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("attention", ["full", "block_causal"])
@pytest.mark.parametrize("per_frame_t", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (2, 6, 8, 12), (2, 5, 6, 2)])
def test_forward_shapes(model, attention, per_frame_t, shape):
    b, f, h, w = shape
    x, text, mask = _inputs(b, f, h, w)
    t = torch.rand(b, f) if per_frame_t else torch.rand(b)
    with torch.no_grad():
        out = model(x, t, text, mask, attention=attention, block_frames=2)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_bad_inputs_raise(model):
    x, text, mask = _inputs(f=2, h=7, w=8)
    with pytest.raises(ValueError, match="patch_size"):
        model(x, torch.rand(2), text, mask)
    x, text, mask = _inputs(f=2)
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, torch.rand(2, 3), text, mask)
    with pytest.raises(KeyError, match="model.name"):
        get_config("7b")


@pytest.mark.parametrize("block_frames,frames", [(1, 4), (2, 6), (3, 6)])
def test_block_causal_sequence_equals_incremental(model, block_frames, frames):
    """The property the sampler relies on: one block-causal pass over the whole sequence equals
    generating block by block with the carried state."""
    x, text, mask = _inputs(f=frames)
    t = torch.rand(2, frames)
    with torch.no_grad():
        full = model(x, t, text, mask, attention="block_causal", block_frames=block_frames)
        state = model.init_state(2, x.shape[3], x.shape[4])
        outs, sizes = [], []
        for s in range(0, frames, block_frames):
            sl = slice(s, s + block_frames)
            out, state = model.forward_block(x[:, :, sl], t[:, sl], text, mask, state)
            outs.append(out)
            sizes.append(state.nbytes())
    assert _rel(torch.cat(outs, dim=2), full) < 1e-5
    assert len(set(sizes)) == 1  # state size does not depend on the number of blocks
    assert state.frame_offset == frames


def test_denoise_then_commit_leaves_state_untouched(model):
    x, text, mask = _inputs(f=4)
    with torch.no_grad():
        state = model.init_state(2, 8, 12)
        _, state = model.forward_block(x[:, :, :2], torch.zeros(2), text, mask, state)
        snapshot = [t.clone() for layer in state.layers for t in (*layer.attn, layer.conv)]
        noisy = torch.randn_like(x[:, :, 2:])
        v1, _ = model.forward_block(noisy, torch.full((2,), 0.9), text, mask, state)
        model.forward_block(noisy * 0.5, torch.full((2,), 0.4), text, mask, state)
        v2, _ = model.forward_block(noisy, torch.full((2,), 0.9), text, mask, state)
    after = [t for layer in state.layers for t in (*layer.attn, layer.conv)]
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after, strict=False))
    assert torch.equal(v1, v2)


def test_block_causal_is_causal_and_full_is_not(model):
    x, text, mask = _inputs(f=6)
    t = torch.rand(2, 6)
    x2 = x.clone()
    x2[:, :, 4:] += 1.0  # change only the last block (frames 4, 5)
    with torch.no_grad():
        a = model(x, t, text, mask, attention="block_causal", block_frames=2)
        b = model(x2, t, text, mask, attention="block_causal", block_frames=2)
        fa = model(x, t, text, mask, attention="full")
        fb = model(x2, t, text, mask, attention="full")
    assert torch.allclose(a[:, :, :4], b[:, :, :4], atol=1e-6)
    assert not torch.allclose(a[:, :, 4:], b[:, :, 4:])
    assert not torch.allclose(fa[:, :, :4], fb[:, :, :4])


def test_per_frame_timesteps_act_per_frame(model):
    x, text, mask = _inputs(f=4)
    t = torch.full((2, 4), 0.5)
    t2 = t.clone()
    t2[:, 3] = 0.9
    with torch.no_grad():
        a = model(x, t, text, mask, attention="block_causal", block_frames=1)
        b = model(x, t2, text, mask, attention="block_causal", block_frames=1)
        c = model(x, torch.full((2,), 0.5), text, mask, attention="block_causal", block_frames=1)
    assert torch.allclose(a[:, :, :3], b[:, :, :3], atol=1e-6) and not torch.allclose(a[:, :, 3], b[:, :, 3])
    assert torch.allclose(a, c, atol=1e-6)  # (B,) equals the same value per frame


def test_text_padding_is_ignored(model):
    x, text, mask = _inputs(f=2)
    text2 = text.clone()
    text2[-1, 2:] = torch.randn_like(text2[-1, 2:])  # change only masked tokens
    with torch.no_grad():
        t = torch.full((2,), 0.3)
        a, b = model(x, t, text, mask), model(x, t, text2, mask)
    assert torch.allclose(a, b, atol=1e-6)


def test_padding_shared_by_the_batch_is_cut_before_attention(model, monkeypatch):
    """Positions masked in every sample are dropped and an all-valid mask becomes None (SDPA's
    flash path); the output equals attention over the full, masked text."""
    import torch.nn.functional as F

    from models.linear_dit import trim_text

    x, text, _ = _inputs(f=2, length=7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 5:] = False  # padding of both captions
    mask[:, 1] = False  # a position masked in both, inside the text
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((k.shape[-2], attn_mask is None))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    t = torch.full((2,), 0.3)
    with torch.no_grad():
        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
        trimmed = model(x, t, text, mask)
        monkeypatch.setattr(F, "scaled_dot_product_attention", real)
        kept = [0, 2, 3, 4]
        reference = model(x, t, text[:, kept], None)
    assert seen and all(s == (4, True) for s in seen)  # 4 text positions left, no mask
    assert torch.allclose(trimmed, reference, atol=1e-6)

    # a mask that differs between samples stays, on the positions some sample uses
    mask[1, 3:] = False
    out_text, out_mask = trim_text(text, mask)
    assert out_text.shape[1] == 4 and out_mask.tolist() == [[True] * 4, [True, True, False, False]]
    # no valid text anywhere: left as given
    none = torch.zeros(2, 7, dtype=torch.bool)
    assert trim_text(text, none)[1] is none


def test_gradients_flow_to_every_parameter():
    torch.manual_seed(0)
    m = build("tiny")
    x, text, mask = _inputs(f=4, h=4, w=4)
    out = m(x, torch.rand(2, 4), text, mask, attention="block_causal", block_frames=2)
    out.square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in m.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


def test_temporal_conv_is_zero_initialised():
    m = build("tiny")
    for blk in m.blocks:
        assert torch.count_nonzero(blk.ffn.t_weight) == 0 and torch.count_nonzero(blk.ffn.t_bias) == 0


def test_named_configs():
    assert set(CONFIGS) >= {"tiny", "600m", "2b"}
    big = get_config("2b")
    assert (big.depth, big.hidden, big.heads, big.head_dim) == (20, 2240, 20, 112)
    with torch.device("meta"):
        sizes = {name: sum(p.numel() for p in LinearDiT(cfg).parameters()) for name, cfg in CONFIGS.items()}
    assert 1e6 < sizes["tiny"] < 1e7
    assert 4e8 < sizes["600m"] < 8e8
    assert sizes["2b"] > 1.4e9
    with pytest.raises(ValueError, match="model.attention"):
        get_config("tiny", attention="sliding")
