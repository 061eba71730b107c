"""Scorers on synthetic frames (numpy/cv2 only, no files, no downloads)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from filters.aesthetic import AestheticConfig, AestheticScorer
from filters.config import MotionConfig, OcrConfig, QualityConfig
from filters.motion import MotionScorer
from filters.ocr import OcrScorer
from filters.quality import QualityScorer
from models.clip import MissingWeights


def texture(h: int, w: int, seed: int = 0, blur: float = 2.0) -> np.ndarray:
    """(h, w, 3) uint8 smooth random colour texture."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), blur)


def panning(speed: float, n: int = 8, h: int = 256, w: int = 448, scale: float = 1.0) -> np.ndarray:
    """(n, h*scale, w*scale, 3) frames of a texture panning `speed` px/frame at size (h, w)."""
    tex = texture(h + 16, w + int(speed * n) + 16)
    big = cv2.resize(tex, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    hh, ww = round(h * scale), round(w * scale)
    return np.stack([big[:hh, round(t * speed * scale) :][:, :ww] for t in range(n)])


# ---------------------------------------------------------------- motion


@pytest.fixture(scope="module")
def motion() -> MotionScorer:
    return MotionScorer(MotionConfig())


def test_motion_static_vs_moving(motion):
    static = motion(panning(0.0))
    moving = motion(panning(4.0))
    assert static["motion_mean"] < 0.05
    assert static["motion_static_frac"] == 1.0
    assert moving["motion_mean"] == pytest.approx(4.0, rel=0.15)
    assert moving["motion_static_frac"] == 0.0
    assert moving["motion_p90"] >= moving["motion_mean"] * 0.9
    assert moving["motion_max"] >= moving["motion_mean"]
    assert moving["motion_pairs"] == 7


@pytest.mark.parametrize("speed", [2.0, 6.0])
def test_motion_is_resolution_independent(motion, speed):
    base = motion(panning(speed, scale=1.0))["motion_mean"]
    double = motion(panning(speed, scale=2.0))["motion_mean"]
    odd = motion(panning(speed, scale=1.4))["motion_mean"]
    assert double == pytest.approx(base, rel=0.15)
    assert odd == pytest.approx(base, rel=0.15)


def test_motion_frame_step_gives_per_source_frame_unit(motion):
    frames = panning(6.0)
    assert motion(frames, frame_step=3)["motion_mean"] == pytest.approx(2.0, rel=0.15)


def test_motion_config_names_key():
    with pytest.raises(ValueError, match="score.motion.ref_short_side"):
        MotionConfig(ref_short_side=0)
    with pytest.raises(ValueError, match="score.motion.preset"):
        MotionConfig(preset="slowest")


# ---------------------------------------------------------------- ocr


def text_frame(text: str, h: int = 360, w: int = 640) -> np.ndarray:
    img = texture(h, w, seed=1, blur=8.0) // 2  # darkish smooth background
    cv2.putText(img, text, (30, 200), cv2.FONT_HERSHEY_SIMPLEX, 2.5, (255, 255, 255), 7, cv2.LINE_AA)
    return img


@pytest.fixture(scope="module")
def ocr() -> OcrScorer:
    return OcrScorer(OcrConfig())


def test_ocr_reads_large_text(ocr):
    frames = np.stack([text_frame("REELSIFT")] * 4)
    out = ocr(frames)
    assert "REELSIFT" in out["ocr_text"].replace(" ", "").upper()
    assert out["ocr_area"] > 0.02
    assert out["ocr_boxes"] >= 1


def test_ocr_no_text_on_texture(ocr):
    frames = np.stack([texture(360, 640, seed=s, blur=1.5) for s in range(4)])
    out = ocr(frames)
    assert out["ocr_area"] < 0.005
    assert out["ocr_text"] == ""


def test_ocr_detection_only_mode():
    scorer = OcrScorer(OcrConfig(recognize=False, n_frames=1))
    out = scorer(np.stack([text_frame("REELSIFT")] * 2))
    assert out["ocr_area"] > 0.02
    assert out["ocr_text"] == ""


def test_ocr_reads_lines_from_a_sharper_frame_than_it_detects_on():
    """Detection runs small (det_short_side); each line is cut from the frame at rec_short_side,
    with the detected box scaled up to it, and read there."""
    frames = np.stack([text_frame("KITCHEN 42")] * 2)
    heights = {}
    for rec in (128, 360):
        scorer = OcrScorer(OcrConfig(n_frames=1, det_short_side=128, rec_short_side=rec))
        seen = []
        real_rec = scorer._engine.text_rec

        def spy(crops, *args, real_rec=real_rec, seen=seen):
            seen.extend(c.shape[0] for c in crops)
            return real_rec(crops, *args)

        scorer._engine.text_rec = spy
        out = scorer(frames)
        assert "KITCHEN" in out["ocr_text"].replace(" ", "").upper()
        assert out["ocr_area"] > 0.02 and out["ocr_boxes"] >= 1
        heights[rec] = max(seen)
    assert heights[360] / heights[128] == pytest.approx(360 / 128, rel=0.1)


def test_ocr_frame_choice_is_even():
    scorer = OcrScorer.__new__(OcrScorer)
    scorer.cfg = OcrConfig(n_frames=2)
    assert scorer.frame_indices(8).tolist() == [2, 6]
    assert scorer.frame_indices(1).tolist() == [0]


# ---------------------------------------------------------------- quality


def test_quality_black_and_white_frames():
    q = QualityScorer(QualityConfig())
    black = q(np.zeros((4, 90, 160, 3), np.uint8))
    assert black["quality_dark_frac"] == 1.0
    assert black["quality_bright_frac"] == 0.0
    assert black["quality_brightness"] < 0.01
    assert black["quality_colorfulness"] == pytest.approx(0.0, abs=1e-6)
    white = q(np.full((4, 90, 160, 3), 255, np.uint8))
    assert white["quality_bright_frac"] == 1.0
    assert white["quality_brightness"] > 0.99


def test_quality_sharpness_and_colour():
    q = QualityScorer(QualityConfig())
    sharp = np.stack([texture(270, 480, seed=s, blur=1.0) for s in range(3)])
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 4.0) for f in sharp])
    s, b = q(sharp), q(blurred)
    assert b["quality_sharpness"] < 0.2 * s["quality_sharpness"]
    gray = np.repeat(sharp[..., :1], 3, axis=-1)
    g = q(gray)
    assert g["quality_saturation"] < 0.01 < s["quality_saturation"]
    assert g["quality_colorfulness"] < 1.0 < s["quality_colorfulness"]
    assert 0.0 < s["quality_contrast"] < 0.5


def test_quality_config_names_key():
    with pytest.raises(ValueError, match="score.quality.dark_luma"):
        QualityConfig(dark_luma=0.99)


# ---------------------------------------------------------------- aesthetic / clip

TINY = dict(clip_model="reelsift-tiny", random_init=True, batch_size=4)


@pytest.fixture(scope="module")
def tiny() -> AestheticScorer:
    return AestheticScorer(AestheticConfig(**TINY))


def test_aesthetic_tiny_outputs(tiny):
    frames = np.stack([texture(144, 256, seed=s) for s in range(6)])
    out = tiny(frames)
    assert np.isfinite(out["aesthetic_mean"]) and np.isfinite(out["aesthetic_min"])
    assert out["aesthetic_min"] <= out["aesthetic_mean"] + 1e-6
    assert out["aesthetic_untrained"] is True
    emb = np.asarray(out["clip_embedding"], np.float32)
    assert emb.shape == (tiny.embed_dim,) == (32,)
    assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
    text = tiny.encoder.encode_text(["a cat", "a panning texture"])
    assert text.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)


def test_aesthetic_deterministic_and_batched(tiny):
    clips = [np.stack([texture(144, 256, seed=10 * c + s) for s in range(3)]) for c in range(2)]
    again = AestheticScorer(AestheticConfig(**TINY))(clips[0])
    batched = tiny.score_batch(clips)
    assert again["aesthetic_mean"] == pytest.approx(batched[0]["aesthetic_mean"], abs=1e-5)
    np.testing.assert_allclose(again["clip_embedding"], batched[0]["clip_embedding"], atol=1e-5)
    other = AestheticScorer(AestheticConfig(**TINY, seed=1))(clips[0])
    assert not np.allclose(other["clip_embedding"], again["clip_embedding"], atol=1e-3)


def test_aesthetic_loads_saved_weights(tiny, tmp_path):
    """The real loading path (local CLIP checkpoint + head file), without any network."""
    torch.save(tiny.encoder.model.state_dict(), tmp_path / "clip.pt")
    torch.save(tiny.head.state_dict(), tmp_path / "head.pth")
    cfg = AestheticConfig(
        clip_model="reelsift-tiny",
        clip_pretrained=str(tmp_path / "clip.pt"),
        head_weights=str(tmp_path / "head.pth"),
    )
    loaded = AestheticScorer(cfg)
    frames = np.stack([texture(144, 256, seed=s) for s in range(3)])
    out, ref = loaded(frames), tiny(frames)
    assert out["aesthetic_untrained"] is False
    assert out["aesthetic_mean"] == pytest.approx(ref["aesthetic_mean"], abs=1e-5)


def test_aesthetic_missing_weights_name_the_key(tmp_path):
    with pytest.raises(MissingWeights, match="score.aesthetic.head_weights"):
        AestheticScorer(AestheticConfig(clip_model="reelsift-tiny", head_weights=str(tmp_path / "nope.pth")))
    with pytest.raises(MissingWeights, match="score.aesthetic.head_weights"):
        AestheticScorer(AestheticConfig(clip_model="reelsift-tiny", head_weights=""))
    torch.save({}, tmp_path / "head.pth")
    with pytest.raises(MissingWeights, match="score.aesthetic.clip_pretrained"):
        AestheticScorer(
            AestheticConfig(
                clip_model="reelsift-tiny",
                clip_pretrained=str(tmp_path / "nope.pt"),
                head_weights=str(tmp_path / "head.pth"),
            )
        )


def test_aesthetic_head_dim_mismatch_names_the_key(tmp_path):
    from models.clip import AestheticHead

    torch.save(AestheticHead(768).state_dict(), tmp_path / "l14_head.pth")
    torch.save(AestheticScorer(AestheticConfig(**TINY)).encoder.model.state_dict(), tmp_path / "clip.pt")
    cfg = AestheticConfig(
        clip_model="reelsift-tiny",
        clip_pretrained=str(tmp_path / "clip.pt"),
        head_weights=str(tmp_path / "l14_head.pth"),
    )
    with pytest.raises(ValueError, match="score.aesthetic.head_weights"):
        AestheticScorer(cfg)


def test_fields_match_outputs(motion, ocr, tiny):
    frames = panning(2.0, n=4, h=128, w=224)
    for scorer in (motion, ocr, QualityScorer(QualityConfig()), tiny):
        out = scorer(frames)
        assert [f.name for f in scorer.FIELDS] == list(out)
