"""VAE and text-encoder adapters: shapes, compression factors, offline loading, clear errors.
Nothing here downloads."""

import pytest
import torch

from models.clip import MissingWeights
from models.linear_dit import build
from models.text_encoder import HFTextEncoder, build_text_encoder, minilm_path
from models.vae import PatchVAE, WanVAE, build_vae


def test_patch_vae_shapes_and_lossless_roundtrip():
    video = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    full = PatchVAE(channels=48, spatial=4)
    z = full.encode(video)
    assert z.shape == (2, 48, 5, 4, 6)
    assert torch.allclose(full.decode(z), video, atol=1e-5)
    small = build_vae("patch", channels=4)
    z = small.encode(video)
    assert z.shape == (2, 4, 5 // small.temporal, 16 // small.spatial, 24 // small.spatial)
    assert small.decode(z).shape == video.shape
    assert torch.equal(PatchVAE(channels=4).encode(video), z)  # deterministic


def test_patch_vae_feeds_the_tiny_dit():
    vae = PatchVAE(channels=4)
    z = vae.encode(torch.rand(1, 3, 2, 32, 32) * 2 - 1)
    out = build("tiny")(z, torch.rand(1), torch.randn(1, 3, 64))
    assert out.shape == z.shape


def test_errors_name_the_config_key():
    with pytest.raises(ValueError, match="vae.channels"):
        PatchVAE(channels=100)
    with pytest.raises(MissingWeights, match="train.vae.path"):
        WanVAE("")
    with pytest.raises(MissingWeights, match="train.vae.path"):  # diffusers absent, or path absent
        WanVAE("/nonexistent/wan-vae")
    with pytest.raises(MissingWeights, match="train.text_encoder.path"):
        HFTextEncoder("")
    with pytest.raises(MissingWeights, match="my.key"):
        HFTextEncoder("/nonexistent/t5", key="my.key")


def test_hf_encoder_on_tiny_random_t5():
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=31000, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path())  # offline tokenizer; any vocab <= 31000 works
    enc = HFTextEncoder(model=T5EncoderModel(cfg), tokenizer=tok, max_length=16)
    feats, mask = enc(["a cat", "a dog running on a beach at sunset"])
    assert enc.dim == 32 and feats.shape[:2] == mask.shape and feats.shape[-1] == 32
    assert mask[0].sum() < mask[1].sum() and mask.dtype == torch.bool


def test_minilm_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = build_text_encoder("minilm", max_length=32)
    feats, mask = enc(["a red car", "two people walking a dog in the park"])
    assert enc.dim == 384 and feats.shape == (2, mask.shape[1], 384)
    assert torch.isfinite(feats).all() and mask[1].all() and not mask[0].all()
