"""NSFW scorer (filters/nsfw.py): NudeNet's ONNX detector, shipped in the nudenet wheel.

No test image with nudity is used: the tests check the detector runs on real frames and real
photographs and gives low confidences there, that our preprocessing is NudeNet's (up to the
channel order, see the module docstring), that FIELDS match the outputs and config errors name
their keys.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from filters.config import NsfwConfig
from filters.nsfw import NsfwScorer
from manifests.configtools import ConfigError, build
from models.clip import MissingWeights

pytest.importorskip("nudenet")


@pytest.fixture(scope="module")
def scorer() -> NsfwScorer:
    return NsfwScorer(NsfwConfig(n_frames=3))


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """The two photographs that ship in scikit-learn (a temple, a flower), (2, 427, 640, 3) RGB."""
    from sklearn.datasets import load_sample_image

    return np.stack([load_sample_image("china.jpg"), load_sample_image("flower.jpg")])


def test_low_scores_on_real_video_frames_and_photos(scorer, photos, tmp_path):
    from tests.media import make_video, read_frames

    video = make_video(tmp_path / "moving.mp4", 12, (320, 180), kind="moving", seed=1)
    textured = read_frames(video)  # decoded real video frames
    text = read_frames(make_video(tmp_path / "text.mp4", 6, (320, 180), kind="text"))
    for frames in (textured, text, photos):
        row = scorer(frames)
        assert 0.0 <= row["nsfw_max"] < 0.1, row  # NudeNet reports boxes from 0.2 up
        assert row["nsfw_mean"] <= row["nsfw_max"]
        assert max(row["nsfw_breast"], row["nsfw_genitalia"], row["nsfw_buttocks"]) <= row["nsfw_max"] + 1e-6


def test_fields_match_outputs(scorer, photos):
    row = scorer(photos)
    assert list(row) == [f.name for f in NsfwScorer.FIELDS]
    table = pa.Table.from_pylist([row], schema=pa.schema(NsfwScorer.FIELDS))  # types cast cleanly
    assert table.num_rows == 1


def test_preprocessing_is_nudenets_with_rgb_input(scorer, photos):
    from nudenet.nudenet import _read_image

    # nudenet swaps R and B twice (notAI-tech/NudeNet#203), so an RGB array goes in as RGB
    theirs = _read_image(np.ascontiguousarray(photos[0]), 320)[0]  # (1, 3, 320, 320)
    ours = scorer._blob(photos[:1])
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_labels_come_from_the_model(scorer):
    assert len(scorer.labels) == 18 and "FEMALE_BREAST_EXPOSED" in scorer.labels


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("input_size", 300, r"score.nsfw.input_size must be a multiple of 32"),
        ("n_frames", 0, r"score.nsfw.n_frames must be in \[1, 64\]"),
        ("intra_op_threads", -1, r"score.nsfw.intra_op_threads must be >= 0"),
    ],
)
def test_config_errors_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build(NsfwConfig, {key: value}, prefix="score.nsfw")


def test_missing_weights_name_the_key(tmp_path):
    with pytest.raises(MissingWeights, match="score.nsfw.weights"):
        NsfwScorer(NsfwConfig(weights=str(tmp_path / "nope.onnx")))


def test_bad_frames_rejected(scorer):
    with pytest.raises(ValueError, match="uint8"):
        scorer(np.zeros((2, 8, 8, 3), np.float32))
