"""fast_decode (static KV cache, CUDA-graph decode steps, batched vision window attention) gives
the tokens of transformers' `generate` for greedy decoding, on the tiny random Qwen2.5-VL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.captioner import TINY_VLM, CaptionInput, TransformersCaptioner, TransformersCaptionerConfig
from models.captioner import fast_decode as fd

PROMPTS = ["Describe the clip.", "Describe the clip in one dense paragraph, subject first.", "A clip."]


def clips(n: int, size: tuple[int, int] = (56, 84)) -> list[CaptionInput]:
    rng = np.random.default_rng(0)
    return [
        CaptionInput(f"c{i}", "", rng.integers(0, 256, (4, *size, 3), dtype=np.uint8), 2.0) for i in range(n)
    ]


@pytest.fixture(scope="module")
def cap() -> TransformersCaptioner:
    return TransformersCaptioner(TransformersCaptionerConfig(model=TINY_VLM, device="cpu", max_new_tokens=40))


def reference(cap: TransformersCaptioner, inputs: dict, new: int, scores: list | None = None) -> torch.Tensor:
    with torch.inference_mode():
        out = cap.model.generate(
            **inputs, do_sample=False, max_new_tokens=new, output_scores=True, return_dict_in_generate=True
        )
    if scores is not None:
        scores.extend(out.scores)
    return out.sequences[:, inputs["input_ids"].shape[1] :].cpu()


@pytest.mark.parametrize("min_new, penalty", [(0, 1.0), (40, 1.0), (0, 1.3)])
def test_static_decode_equals_generate(cap, min_new, penalty):
    assert cap.decoder is not None and cap.decode_path == "static-cache"
    items = clips(3)
    inputs = cap.inputs(items, PROMPTS)  # three prompt lengths: left padding differs per row
    assert (inputs["attention_mask"] == 0).any()
    gc = cap.model.generation_config
    gc.min_new_tokens, gc.repetition_penalty = (min_new or None), penalty
    try:
        want_scores, got_scores = [], []
        want = reference(cap, inputs, 40, want_scores)
        got = cap.decoder.generate(inputs, 40, record=got_scores)
    finally:
        gc.min_new_tokens, gc.repetition_penalty = None, 1.0
    assert got.shape == want.shape
    assert torch.equal(got, want)
    # the scores too (tokens alone could agree by chance on a tiny random model)
    assert len(got_scores) >= len(want_scores)
    for g, w in zip(got_scores, want_scores, strict=False):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    if min_new:
        assert got.shape[1] == 40  # EOS was held back to the minimum length


def test_varlen_vision_attention_matches_per_window_attention():
    # windows of several lengths (frames of two sizes), against the per-chunk SDPA of transformers
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 50, 8) for _ in range(3))
    cu = torch.tensor([0, 16, 32, 40, 48, 50])
    got, _ = fd.varlen_sdpa(None, q, k, v, scaling=0.3, cu_seq_lens_q=cu)
    parts = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        o = torch.nn.functional.scaled_dot_product_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3
        )
        parts.append(o.transpose(1, 2))
    torch.testing.assert_close(got, torch.cat(parts, dim=1))


def test_captions_through_the_backend_equal_generate_path():
    cfg = TransformersCaptionerConfig(model=TINY_VLM, device="cpu", max_new_tokens=16, batch_size=2)
    fast = TransformersCaptioner(cfg)
    slow = TransformersCaptioner(TransformersCaptionerConfig(**{**cfg.__dict__, "fast_decode": False}))
    assert slow.decoder is None
    fd.use_varlen_vision_attention(slow.model)  # same vision kernels: compare the decode paths
    items = clips(3)
    a, b = fast.caption(items, PROMPTS), slow.caption(items, PROMPTS)
    assert [r.text for r in a] == [r.text for r in b] and all(r.error is None for r in a)
    assert [r.n_tokens for r in a] == [r.n_tokens for r in b]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_decode_equals_generate():
    cfg = TransformersCaptionerConfig(model=TINY_VLM, device="cuda", dtype="float32", max_new_tokens=32)
    cap = TransformersCaptioner(cfg)
    assert "CUDA graphs" in cap.decode_path
    for n in (3, 2, 3):  # a second batch of the same shape replays the captured graph
        inputs = cap.inputs(clips(n), PROMPTS[:n])
        assert torch.equal(cap.decoder.generate(inputs, 32), reference(cap, inputs, 32))


def test_out_of_memory_halves_the_batch_and_retries(cap, monkeypatch):
    sizes = []
    real = cap._generate

    def small_device(items, prompts):
        sizes.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(items, prompts)

    monkeypatch.setattr(cap, "_generate", small_device)
    monkeypatch.setattr(cap, "max_batch", 8)
    monkeypatch.setattr(
        cap, "cfg", TransformersCaptionerConfig(model=TINY_VLM, batch_size=8, max_new_tokens=8)
    )
    out = cap.caption(clips(5), (PROMPTS * 2)[:5])
    assert sizes == [5, 2, 2, 1] and cap.max_batch == 2
    assert all(r.error is None and r.text is not None for r in out) and len(out) == 5
