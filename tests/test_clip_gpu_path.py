"""CLIP preprocessing on the model's device (uint8 in, resize as matrix products) against the
OpenCV CPU path: same pixels within 1 uint8 level, same embeddings within bf16 tolerance.

The "device" path is plain torch, so CI runs it on CPU tensors; the `gpu` test runs it on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models.clip_preprocess as cp
from filters.aesthetic import AestheticScorer
from filters.config import AestheticConfig

MEAN = np.array([0.481, 0.458, 0.408], np.float32) * 255
STD = np.array([0.269, 0.261, 0.276], np.float32) * 255
TINY = dict(clip_model="reelsift-tiny", random_init=True, batch_size=4)


def smooth_frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """(n, h, w, 3) uint8: a random smooth colour field per seed plus grain, like a video frame."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.resize(
        rng.uniform(0, 255, (6, 8, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    noise = rng.normal(0, 12, (n, h, w, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(224, 224), (64, 64)])
@pytest.mark.parametrize(
    "hw, mode",
    [
        ((360, 640), "shortest"),
        ((720, 1280), "shortest"),
        ((50, 40), "shortest"),
        ((37, 500), "shortest"),
        ((300, 301), "shortest"),
        ((100, 300), "squash"),
    ],
)
def test_tensor_resize_matches_opencv(size, hw, mode):
    frames = smooth_frames(2, *hw, seed=hw[0])
    ref = cp.cpu_preprocess(frames, size, mode, MEAN, STD)
    pre = cp.TensorPreprocess(size, mode, MEAN, STD, "cpu")
    [(index, uploaded)] = pre.upload([frames])
    got = pre(uploaded)
    assert got.shape == ref.shape == (2, 3, *size)
    assert index.tolist() == [0, 1]
    levels = ((got - ref) * torch.from_numpy(STD).view(1, 3, 1, 1)).abs()
    assert float(levels.max()) <= 1.0 + 1e-3  # OpenCV's fixed-point rounding, at most one level
    assert float((levels > 0.5).float().mean()) < 0.01


def test_area_weights_average_the_covered_pixels():
    # 6 -> 4 pixels: each output covers 1.5 inputs (OpenCV: 2/3 of a full pixel + 1/3 of the next)
    m = cp.axis_weights(6, 4, 0, 4, True)
    assert np.allclose(m.sum(1), 1.0)
    assert np.allclose(m[0, :2], [2 / 3, 1 / 3]) and np.allclose(m[1, 1:3], [1 / 3, 2 / 3])


def score(cfg: AestheticConfig, clips: list[np.ndarray]) -> list[dict]:
    return AestheticScorer(cfg).score_batch(clips)


def assert_same_scores(a: list[dict], b: list[dict], atol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        ex, ey = np.array(x["clip_embedding"]), np.array(y["clip_embedding"])
        assert float(ex @ ey) > 1 - atol  # unit vectors
        assert np.abs(ex - ey).max() <= atol
        assert x["aesthetic_mean"] == pytest.approx(y["aesthetic_mean"], abs=atol)
        assert x["aesthetic_min"] == pytest.approx(y["aesthetic_min"], abs=atol)


BF16_TOL = 1e-2  # bf16 keeps 8 mantissa bits: ~4e-3 relative per value


def test_device_path_gives_cpu_embeddings_mixed_sizes(monkeypatch):
    # clips of two frame sizes, interleaved: the device path groups by size and must restore order
    clips = [smooth_frames(4, 144, 256, 0), smooth_frames(3, 90, 120, 1), smooth_frames(4, 144, 256, 2)]
    ref = score(AestheticConfig(**TINY, preprocess="cpu"), clips)
    scorer = AestheticScorer(AestheticConfig(**TINY, preprocess="device"))

    def no_opencv(*a, **k):
        raise AssertionError("the device path must not call the OpenCV preprocessing")

    monkeypatch.setattr("models.clip.cpu_preprocess", no_opencv)
    got = scorer.score_batch(clips)
    assert_same_scores(got, ref, BF16_TOL)
    alone = [scorer.score_batch([c])[0] for c in clips]
    assert_same_scores(alone, got, 1e-5)
    # the tolerance separates clips: different clips differ by far more than the two paths
    apart = np.abs(np.array(got[0]["clip_embedding"]) - np.array(got[1]["clip_embedding"])).max()
    assert apart > 5 * BF16_TOL


def test_preprocess_key_is_checked():
    with pytest.raises(ValueError, match="score.aesthetic.preprocess"):
        AestheticConfig(preprocess="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_device_path_matches_cpu(precision):
    clips = [smooth_frames(8, 360, 640, 0), smooth_frames(8, 360, 480, 1), smooth_frames(8, 360, 640, 2)]
    ref = score(AestheticConfig(**TINY, preprocess="cpu"), clips)
    got = score(AestheticConfig(**TINY, device="cuda", precision=precision, preprocess="auto"), clips)
    assert_same_scores(got, ref, 1e-4 if precision == "fp32" else 3 * BF16_TOL)
