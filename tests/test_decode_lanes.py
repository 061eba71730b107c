"""Decode lanes (curation/decode_lanes.py): the CPU lane everywhere, the NVDEC lane on a GPU.

Frames carry their own index in two flat patches in the top-left corner (its two base-8 digits,
each as one of 8 well-separated grey levels), so a test reads back which source frame it got,
whatever compression, resize and colour conversion did to the pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curation.decode_lanes import LaneDecoder
from curation.demo_frames import encode_video, render_frames
from curation.stages.score import decode_run, runs_of_one_video, sample_indices
from filters.config import ScoreConfig
from filters.video import DecodeSpec, probe

SPEC = DecodeSpec(n_frames=8, short_side=180, timeout_s=60.0)


def indexed_frames(n: int, size: tuple[int, int], seed: int = 0):
    for i, frame in enumerate(render_frames("moving", n, size, seed=seed)):
        frame[:64, :64] = 16 + 28 * (i // 8)
        frame[:64, 64:128] = 16 + 28 * (i % 8)
        yield frame


def frame_index(frame: np.ndarray, scale: float) -> int:
    s = max(4, int(64 * scale))
    digit = lambda x0: int(
        round((float(frame[s // 4 : 3 * s // 4, x0 + s // 4 : x0 + 3 * s // 4].mean()) - 16) / 28)
    )  # noqa: E731
    return 8 * digit(0) + digit(s)


def clip_rows(path: Path, ranges: list[tuple[int, int]]) -> list[dict]:
    p = probe(path)
    w, h = p.display_size
    return [
        {
            "clip_id": f"{path.stem}-{a}",
            "path": str(path),
            "start_frame": a,
            "end_frame": b,
            "fps": p.fps,
            "display_width": w,
            "display_height": h,
            "rotation": p.rotation,
            "codec": p.codec,
            "pix_fmt": p.pix_fmt,
            "vfr": p.vfr,
        }
        for a, b in ranges
    ]


@pytest.fixture(scope="module")
def h264(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lanes") / "indexed.mp4"
    encode_video(path, indexed_frames(60, (320, 240)), 24)
    return path


def test_cpu_lane_gives_the_frames_of_the_stage_decoder(h264):
    clips = clip_rows(h264, [(0, 24), (24, 48), (50, 60)])
    runs = [[clips[k] for k in run] for run in runs_of_one_video(clips)]
    lanes = LaneDecoder("cpu", SPEC, cpu_workers=2)
    try:
        got = lanes.decode(runs)
    finally:
        lanes.close()
    want = decode_run(clips, SPEC)
    flat = [d for run in got for d in run]
    assert [d.lane for d in flat] == ["cpu"] * 3 and all(d.device is None for d in flat)
    for clip, d, (frames, step) in zip(clips, flat, want, strict=True):
        assert d.error is None
        np.testing.assert_array_equal(d.host, frames)
        assert d.step == step
        idx = sample_indices(clip["start_frame"], clip["end_frame"], SPEC.n_frames)
        assert [frame_index(f, 180 / 240) for f in d.host] == idx
    assert lanes.counts()["clips_by_lane"] == {"cpu": 3}


def test_an_untagged_stream_is_converted_as_bt709_like_nvdec(h264):
    """NVDEC converts a stream without a colour-matrix tag as BT.709; so does the CPU lane (swscale
    alone would take BT.601), or the lanes' colours differ by ~3.4 levels (measured on an H100)."""
    import av

    clip = clip_rows(h264, [(0, 24)])[0]
    frames, _ = decode_run([clip], SPEC)[0]
    idx = sample_indices(0, 24, SPEC.n_frames)
    h, w = frames.shape[1:3]
    with av.open(str(h264)) as c:
        decoded = [f for _, f in zip(range(24), c.decode(video=0), strict=False)]
    assert decoded[0].colorspace == 2  # the demo encoder tags nothing
    rgb = lambda cs: np.stack(  # noqa: E731
        [decoded[i].to_ndarray(format="rgb24", width=w, height=h, src_colorspace=cs) for i in idx]
    )
    np.testing.assert_array_equal(frames, rgb("ITU709"))
    assert np.abs(frames.astype(int) - rgb("ITU601").astype(int)).mean() > 1.0


def test_auto_on_a_machine_without_nvdec_is_the_cpu_lane(h264, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(h264.read_bytes()[:2000])
    clips = clip_rows(h264, [(0, 30)]) + [dict(clip_rows(h264, [(0, 30)])[0], clip_id="bad", path=str(bad))]
    lanes = LaneDecoder("auto", SPEC, nvdec_sessions=2, cpu_workers=1)
    try:
        got = lanes.decode([[c] for c in clips])
    finally:
        lanes.close()
    if lanes.nvdec_on:
        pytest.skip("this machine has NVDEC: the GPU tests cover auto here")
    assert got[0][0].error is None and got[0][0].lane == "cpu"
    assert got[1][0].error.startswith("decode failed")  # an error row, and the lane goes on
    assert got[1][0].kind == "permanent"


def test_nvdec_without_a_gpu_is_a_config_error():
    from manifests.configtools import ConfigError

    with pytest.raises(ConfigError, match="score.decode_lane"):
        ScoreConfig(decode_lane="nvdec")
    with pytest.raises(ConfigError, match="score.decode_lane"):
        ScoreConfig(decode_lane="gpu")


def test_the_gpu_chain_is_chosen_only_for_a_gpu_actor():
    from curation.config import load_config
    from curation.stages.score_lanes import uses_lanes

    repo = Path(__file__).resolve().parent.parent
    assert not uses_lanes(load_config(repo / "configs/offline.yaml").score)
    default = load_config(repo / "configs/default.yaml")
    assert uses_lanes(default.score)
    cpu = load_config(repo / "configs/default.yaml", ["score.decode_lane=cpu"])
    assert not uses_lanes(cpu.score)
    no_gpu = load_config(
        repo / "configs/default.yaml", ["score.gpu.num_gpus=0", "score.aesthetic.device=cpu"]
    )
    assert not uses_lanes(no_gpu.score)


# -- on a GPU with NVDEC -----------------------------------------------------------------------


def _nvdec_or_skip():
    from filters.nvdec import unavailable

    why = unavailable()
    if why:
        pytest.skip(why)


@pytest.mark.gpu
def test_nvdec_lane_same_indices_and_pixels_as_cpu(tmp_path):
    _nvdec_or_skip()
    paths = []
    for name, size, rotation in (("wide", (1280, 720), 0), ("rotated", (640, 360), 90)):
        path = tmp_path / f"{name}.mp4"
        encode_video(path, indexed_frames(72, size), 24, rotation=rotation)
        paths.append(path)
    hevc = tmp_path / "hevc.mp4"
    encode_video(hevc, indexed_frames(48, (640, 360)), 24, codec="libx265")
    paths.append(hevc)
    spec = DecodeSpec(8, 360, 60.0)
    for path in paths:
        clips = clip_rows(path, [(0, 24), (30, 48)])
        cpu = decode_run(clips, spec)
        lanes = LaneDecoder("nvdec", spec, nvdec_sessions=2)
        try:
            got = lanes.decode([clips])[0]
        finally:
            lanes.close()
        for clip, d, (frames, step) in zip(clips, got, cpu, strict=True):
            assert d.error is None, d.error
            assert d.lane == "nvdec" and d.device is not None and d.device.is_cuda
            assert d.host.shape == frames.shape and d.step == step
            np.testing.assert_array_equal(d.device.cpu().numpy(), d.host)
            scale = min(frames.shape[1:3]) / min(clip["display_width"], clip["display_height"])
            idx = sample_indices(clip["start_frame"], clip["end_frame"], 8)
            k = clip["rotation"] // 90  # the patches are top-left as coded: turn frames back
            assert [frame_index(np.rot90(f, k=k), scale) for f in d.host] == idx, path.name
            assert [frame_index(np.rot90(f, k=k), scale) for f in frames] == idx, path.name
            diff = np.abs(d.host.astype(np.int16) - frames.astype(np.int16))
            # stated tolerance: NVDEC's colour conversion and the area resize against swscale
            assert diff.mean() < 3.0, (path.name, float(diff.mean()))
            assert np.percentile(diff, 99) <= 24, (path.name, float(np.percentile(diff, 99)))


@pytest.mark.gpu
def test_auto_sends_av1_to_cpu_and_falls_back_when_nvdec_fails(tmp_path):
    _nvdec_or_skip()
    import av

    h264 = tmp_path / "a.mp4"
    encode_video(h264, indexed_frames(48, (640, 360)), 24)
    av1 = tmp_path / "b.mkv"
    codec = next((c for c in ("libsvtav1", "libaom-av1", "libdav1d") if c in av.codecs_available), None)
    if codec is None:
        pytest.skip("this PyAV has no AV1 encoder")
    encode_video(av1, indexed_frames(48, (640, 360)), 24, codec=codec, crf=40)
    clips = clip_rows(h264, [(0, 24)]) + clip_rows(av1, [(0, 24)])
    lying = dict(clips[1], clip_id="lying", codec="h264")  # NVDEC is handed AV1 it cannot decode
    # CPU workers that never take NVDEC's jobs: which lane serves each run is then fixed
    lanes = LaneDecoder(
        "auto", DecodeSpec(8, 180, 60.0), nvdec_sessions=2, cpu_workers=1, cpu_takes_nvdec_jobs=False
    )
    try:
        got = lanes.decode([[clips[0]], [clips[1]], [lying]])
    finally:
        lanes.close()
    assert [run[0].lane for run in got] == ["nvdec", "cpu", "cpu-fallback"]
    assert all(run[0].error is None for run in got)
    np.testing.assert_array_equal(got[1][0].host, got[2][0].host)
    counts = lanes.counts()
    assert counts["clips_by_lane"] == {"nvdec": 1, "cpu": 1, "cpu-fallback": 1}
    assert counts["fallback_reasons"]


@pytest.mark.gpu
def test_clip_scores_agree_between_lanes(tmp_path):
    _nvdec_or_skip()
    pytest.importorskip("open_clip", reason="the CLIP scorer needs open_clip_torch")
    import torch

    from filters.aesthetic import AestheticScorer
    from filters.config import AestheticConfig

    path = tmp_path / "c.mp4"
    encode_video(path, render_frames("moving", 96, (1280, 720), seed=3), 24)
    clips = clip_rows(path, [(0, 32), (32, 64), (64, 96)])
    spec = DecodeSpec(8, 360, 60.0)
    cpu = [f for f, _ in decode_run(clips, spec)]
    lanes = LaneDecoder("nvdec", spec, nvdec_sessions=1)
    try:
        gpu = [d.device for d in lanes.decode([clips])[0]]
    finally:
        lanes.close()
    scorer = AestheticScorer(AestheticConfig(clip_model="ViT-B-32", random_init=True, device="cuda"))
    a, b = scorer.score_batch(cpu), scorer.score_batch(gpu)
    for x, y in zip(a, b, strict=True):
        cos = float(np.dot(x["clip_embedding"], y["clip_embedding"]))
        assert cos > 0.99, cos
        assert abs(x["aesthetic_mean"] - y["aesthetic_mean"]) < 0.05 * max(1.0, abs(x["aesthetic_mean"]))
    assert torch.cuda.is_available()


def test_caption_lane_chain_only_for_a_gpu_captioner():
    from curation.config import load_config
    from curation.stages.caption_lanes import uses_lanes

    repo = Path(__file__).resolve().parent.parent
    assert not uses_lanes(load_config(repo / "configs/offline.yaml").caption)
    assert uses_lanes(load_config(repo / "configs/default.yaml").caption)
    assert not uses_lanes(load_config(repo / "configs/default.yaml", ["caption.decode_lane=cpu"]).caption)


def test_caption_on_lanes_matches_the_cpu_decode_operator(h264, monkeypatch):
    """The captioner actor's own decode (here on the CPU lane) hands the backend the frames the
    separate decode operator would."""
    import pyarrow as pa

    from curation.config import CaptionConfig
    from curation.stages import caption as cap
    from curation.stages.caption_lanes import CaptionOnLanes
    from models.captioner.config import TransformersCaptionerConfig

    cfg = CaptionConfig(
        n_frames=4,
        short_side=56,
        min_words=1,
        decode_lane="cpu",
        transformers=TransformersCaptionerConfig(model="reelsift-tiny", device="cpu", max_new_tokens=4),
    )
    clips = [dict(c, duration_s=1.0) for c in clip_rows(h264, [(0, 24), (24, 48)])]
    seen: list = []
    real = cap.CaptionClips.__call__
    monkeypatch.setattr(cap.CaptionClips, "__call__", lambda self, b: seen.append(b) or real(self, b))
    op = CaptionOnLanes(cfg)
    try:
        out = op(pa.Table.from_pylist(clips))
    finally:
        op.lanes.close()
    assert out.num_rows == 2 and out.column("untrained").to_pylist() == [True, True]
    want = cap.DecodeForCaption(cfg)(pa.Table.from_pylist(clips))
    got = seen[0]
    for name in ("clip_id", "status", "frames", "frames_shape", "sampled_fps"):
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


# -- the NVDEC lane's scheduling, resize and fallback, on the CPU ------------------------------
# `PyAvSession` stands in for the hardware decoder only: it returns the frames at the indices it
# is asked for, as a tensor in coded orientation, as an NVDEC session does. Everything after it
# (the queue shared with CPU workers, index mapping, the on-device resize and rotation, the copy
# to the host, the fallback of failed files, the counts) is the lane's real code.


class PyAvSession:
    stream = None  # torch.cuda.stream(None) is a no-op on the CPU

    def __init__(self, fail_on: str = "\0"):
        self.fail_on, self.frames_decoded, self.created, self.reconfigured = fail_on, 0, 1, 0

    def frames(self, path: str, indices: list[int]):
        import torch

        from filters.nvdec import NvdecError
        from filters.video import iter_frames

        if self.fail_on in path:
            raise NvdecError("NVDEC: stand-in session refuses this file")
        p = probe(path)
        got = dict(iter_frames(path, min(indices), max(indices) + 1, p.fps, indices=indices))
        self.frames_decoded += len(indices)
        return torch.from_numpy(np.stack([got[i] for i in indices]))


def test_nvdec_lane_logic_with_a_stand_in_session(h264, tmp_path):
    rotated = tmp_path / "rotated.mp4"
    encode_video(rotated, indexed_frames(48, (320, 240)), 24, rotation=90)
    broken_for_nvdec = tmp_path / "bad.mp4"
    broken_for_nvdec.write_bytes(h264.read_bytes())
    av1_like = dict(clip_rows(h264, [(0, 24)])[0], clip_id="vp9", codec="vp9")
    clips = clip_rows(h264, [(0, 24), (24, 48)]) + clip_rows(rotated, [(0, 48)])
    clips += clip_rows(broken_for_nvdec, [(0, 24)]) + [av1_like]
    runs = [[clips[0], clips[1]], [clips[2]], [clips[3]], [clips[4]]]
    # CPU workers only take what NVDEC refuses or fails on: every lane below is deterministic
    session = PyAvSession(fail_on="bad.mp4")
    lanes = LaneDecoder("auto", SPEC, cpu_workers=1, sessions=[session], cpu_takes_nvdec_jobs=False)
    try:
        got = lanes.decode(runs)
    finally:
        lanes.close()
    flat = [d for run in got for d in run]
    assert [d.lane for d in flat] == ["nvdec", "nvdec", "nvdec", "cpu-fallback", "cpu"]
    want = [f for run in runs for f, _ in decode_run(run, SPEC)]
    for clip, d, frames in zip(clips, flat, want, strict=True):
        assert d.error is None and d.host.shape == frames.shape
        k = clip["rotation"] // 90
        scale = min(frames.shape[1:3]) / min(clip["display_width"], clip["display_height"])
        idx = sample_indices(clip["start_frame"], clip["end_frame"], SPEC.n_frames)
        assert [frame_index(np.rot90(f, k=k), scale) for f in d.host] == idx
        diff = np.abs(d.host.astype(np.int16) - frames.astype(np.int16))
        assert diff.mean() < 3.0, float(diff.mean())  # the GPU path's area resize vs swscale
    counts = lanes.counts()
    assert counts["clips_by_lane"] == {"nvdec": 3, "cpu-fallback": 1, "cpu": 1}
    assert counts["nvdec_sessions"]["frames_decoded"] == 8 + 8 + 8  # one pass for the run of two
    assert list(counts["fallback_reasons"]) == ["NVDEC: stand-in session refuses this file"]


def test_nvdec_strict_turns_refusals_and_failures_into_errors(h264, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(h264.read_bytes())
    clips = [dict(clip_rows(h264, [(0, 24)])[0], codec="av1"), clip_rows(bad, [(0, 24)])[0]]
    lanes = LaneDecoder("nvdec", SPEC, sessions=[PyAvSession(fail_on="bad.mp4")])
    try:
        (refused,), (failed,) = lanes.decode([[c] for c in clips])
    finally:
        lanes.close()
    assert "nvdec refuses this clip (codec av1" in refused.error and "decode_lane: auto" in refused.error
    assert failed.error.startswith("decode failed (nvdec)")


def test_gpu_node_chain_gives_the_rows_of_the_cpu_chain(h264):
    """DecodeOnLanesNeural -> CpuScorers against DecodeAndScoreCpu -> ScoreNeural on the same
    clips: the same score columns (here both decode on the CPU lane, CLIP on the CPU)."""
    import pyarrow as pa

    from curation.stages.score import DecodeAndScoreCpu, ScoreNeural
    from curation.stages.score_lanes import CpuScorers, DecodeOnLanesNeural
    from filters.config import AestheticConfig, DecodeLanesConfig

    cfg = ScoreConfig(
        short_side=120,
        aesthetic=AestheticConfig(clip_model="reelsift-tiny", random_init=True, device="cpu"),
        lanes=DecodeLanesConfig(nvdec_sessions=1, cpu_workers=1),
    )
    clips = [dict(c, size_bytes=None, ingested_at=None) for c in clip_rows(h264, [(0, 24), (24, 60)])]
    batch = pa.Table.from_pylist(clips)
    gpu_op = DecodeOnLanesNeural(cfg)
    try:
        lanes_rows = CpuScorers(cfg)(gpu_op(batch)).to_pylist()
    finally:
        gpu_op.lanes.close()
    cpu_rows = ScoreNeural(cfg)(DecodeAndScoreCpu(cfg)(batch)).to_pylist()
    assert [r["status"] for r in lanes_rows] == ["ok", "ok"]
    for a, b in zip(lanes_rows, cpu_rows, strict=True):
        for key in a:
            if isinstance(a[key], float) or isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-5), key
            elif key != "created_at":
                assert a[key] == b[key], key


def test_in_auto_idle_cpu_workers_take_nvdec_jobs_too(h264):
    """Both lanes drain one queue: with a slow NVDEC stand-in, the CPU workers decode some of the
    files NVDEC could take, so the rates add."""
    import time

    class Slow(PyAvSession):
        def frames(self, path, indices):
            time.sleep(0.3)
            return super().frames(path, indices)

    clips = clip_rows(h264, [(i, i + 6) for i in range(0, 48, 6)])
    lanes = LaneDecoder("auto", SPEC, cpu_workers=2, sessions=[Slow()])
    try:
        got = lanes.decode([[c] for c in clips])
    finally:
        lanes.close()
    by_lane = lanes.counts()["clips_by_lane"]
    assert all(run[0].error is None for run in got)
    assert by_lane.get("nvdec", 0) >= 1 and by_lane.get("cpu", 0) >= 1, by_lane
    assert sum(by_lane.values()) == len(clips)


@pytest.mark.parametrize("codec,preset", [("libx264", "medium"), ("libx265", "fast")])
def test_sampled_decode_skips_unreferenced_pictures_and_stays_frame_exact(tmp_path, codec, preset):
    """iter_frames with `indices` skips pictures nothing references (B-frames here): the frames
    it yields are the ones a full decode gives at those indices."""
    from filters.video import iter_frames

    path = tmp_path / "b.mp4"
    encode_video(path, indexed_frames(60, (320, 240)), 24, codec=codec, preset=preset)
    full = dict(iter_frames(path, 0, 60, 24.0))
    for a, b, n in ((0, 60, 8), (7, 41, 5), (30, 60, 3)):
        idx = sample_indices(a, b, n)
        got = dict(iter_frames(path, a, b, 24.0, indices=idx))
        assert sorted(got) == idx
        for i in idx:
            np.testing.assert_array_equal(got[i], full[i])
            assert frame_index(got[i], 1.0) == i
