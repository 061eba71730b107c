"""Near-duplicate grouping (filters/dedup.py) and the dedup stage (curation/stages/dedup.py).

The real-frame test encodes real photographs (the sample images that ship inside scikit-learn)
as panning clips, makes re-encoded and cropped copies, decodes them the way the score stage does
and embeds them with the CLIP image encoder. Offline that encoder is the tiny RANDOM
"reelsift-tiny" model: its embeddings of any two images are close (cosine ~0.9+), so it can only
tell copies apart from clips with different content by low-level statistics, not semantics.
Measured over init seeds 0-2: copies stay within cosine 0.9968 of the original, the other
clips at most 0.977, hence threshold 0.99 here (real CLIP ViT-L-14: ~0.95 in default.yaml).
Synthetic 'moving' clips of one palette are NOT separable by the random model (cosine 0.9999
between two seeds vs 0.9992 to a crop), which is why the test uses photographs.
"""

from __future__ import annotations

import numpy as np
import pytest

from filters.config import DedupConfig
from filters.dedup import find_groups, pick_kept
from manifests.configtools import ConfigError, build
from manifests.schemas import CLIPS, SCORES
from manifests.store import Table, rows_to_table

W, H, FPS, N = 192, 128, 24, 24


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _stream(x: np.ndarray, rows: int = 300):
    return lambda: (x[i : i + rows] for i in range(0, len(x), rows))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("threshold", 0.0, "dedup.threshold must be in (0, 1]"),
        ("threshold", 1.5, "dedup.threshold must be in (0, 1]"),
        ("clips_per_cluster", 1, "dedup.clips_per_cluster must be >= 2"),
        ("n_probe", 0, "dedup.n_probe must be in [1, 8]"),
        ("score_column", "", "dedup.score_column"),
        ("batch_rows", 10, "dedup.batch_rows must be >= 256"),
    ],
)
def test_config_errors_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        build(DedupConfig, {key: value}, prefix="dedup")


def test_planted_groups_are_found_and_strangers_stay_apart():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(400, 64)))  # random directions: cosine ~0 between them
    groups = [base[i] + 0.02 * rng.normal(size=(4, 64)) for i in range(30)]  # 30 groups of 4, cos ~0.97
    x = _unit(np.concatenate([*groups, base[30:]]))  # 120 planted + 370 singletons
    perm = rng.permutation(len(x))
    cfg = DedupConfig(threshold=0.9, clips_per_cluster=20, n_probe=2, batch_rows=256)
    res = find_groups(_stream(x[perm]), np.zeros(len(x)), np.arange(len(x)).astype(str), cfg)
    group = np.empty_like(res.group)
    group[perm] = res.group  # back to planted order
    for g in range(30):
        assert len(set(group[4 * g : 4 * g + 4])) == 1, f"planted group {g} split"
    assert len(set(group[: 4 * 30])) == 30  # groups not merged together
    assert (res.group_size[np.argsort(perm)][120:] == 1).all()  # singletons stay alone
    assert res.n_clusters == 25 and res.pairs_compared < len(x) ** 2 / 4


def test_pick_kept_best_score_then_smallest_id_nan_last():
    group = np.array([0, 0, 0, 1, 1, 2])
    scores = np.array([1.0, 3.0, 3.0, np.nan, 0.5, np.nan])
    ids = np.array(["c", "b", "a", "x", "y", "z"])
    assert pick_kept(group, scores, ids).tolist() == [2, 2, 2, 4, 4, 5]


# --- real frames through the CLIP image encoder ---------------------------------------------


def _pan(img: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) frames of a window panning left to right over a photo."""
    import cv2

    h, w = img.shape[:2]
    ch, cw, y = int(h * 0.6), int(w * 0.6), int(h * 0.12)
    xs = np.linspace(0, w - cw, N).astype(int)
    return np.stack(
        [cv2.resize(img[y : y + ch, x : x + cw], (W, H), interpolation=cv2.INTER_AREA) for x in xs]
    )


def _crop10(frames: np.ndarray) -> np.ndarray:
    """Cut 10% off every border and resize back (a typical re-upload crop)."""
    import cv2

    dy, dx = H // 10, W // 10
    return np.stack(
        [cv2.resize(f[dy : H - dy, dx : W - dx], (W, H), interpolation=cv2.INTER_CUBIC) for f in frames]
    )


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """clip name -> unit-norm CLIP embedding of real encoded videos, decoded like `score`."""
    from sklearn.datasets import load_sample_image

    from curation.demo_frames import encode_video
    from curation.stages.score import decode_samples
    from filters.aesthetic import AestheticConfig, AestheticScorer
    from filters.config import ScoreConfig
    from filters.video import DecodeSpec
    from tests.media import make_video, read_frames

    d = tmp_path_factory.mktemp("dedup")
    encode_video(d / "china.mp4", _pan(load_sample_image("china.jpg")), FPS, crf=18)
    decoded = read_frames(d / "china.mp4")  # copies are made from the decoded video, as re-uploads are
    encode_video(d / "china_crf40.mp4", decoded, FPS, crf=40)
    encode_video(d / "china_crop.mp4", _crop10(decoded), FPS, crf=28)
    encode_video(d / "flower.mp4", _pan(load_sample_image("flower.jpg")), FPS, crf=18)
    make_video(d / "moving.mp4", N, (W, H), kind="moving", seed=3)
    cfg = ScoreConfig(n_frames=8, short_side=128)
    scorer = AestheticScorer(AestheticConfig(clip_model="reelsift-tiny", random_init=True, batch_size=16))
    names = ["china", "china_crf40", "china_crop", "flower", "moving"]
    frames = [
        decode_samples(
            dict(
                path=str(d / f"{n}.mp4"),
                start_frame=0,
                end_frame=N,
                fps=FPS,
                display_width=W,
                display_height=H,
                rotation=0,
            ),
            DecodeSpec.of(cfg),
        )[0]
        for n in names
    ]
    out = scorer.score_batch(frames)
    return {
        n: (np.asarray(o["clip_embedding"], np.float32), o["aesthetic_mean"])
        for n, o in zip(names, out, strict=True)
    }


def test_real_copies_group_and_a_different_clip_stays_apart(embedded):
    names = list(embedded)
    x = np.stack([embedded[n][0] for n in names])
    scores = np.array([embedded[n][1] for n in names])
    res = find_groups(
        _stream(x, 2), scores, np.array(names), DedupConfig(threshold=0.99, clips_per_cluster=2)
    )
    g = dict(zip(names, res.group.tolist(), strict=True))
    assert g["china"] == g["china_crf40"] == g["china_crop"]
    assert len({g["china"], g["flower"], g["moving"]}) == 3


def test_stage_writes_duplicates_and_reasons(embedded, tmp_path):
    from curation.stages.dedup import run_dedup
    from manifests.db import query

    def dropped_of(root) -> dict[str, str]:  # clip -> the clip the newest dedup run keeps instead
        sql = "SELECT clip_id, duplicate_of FROM duplicates WHERE duplicate_of IS NOT NULL"
        return {r["clip_id"]: r["duplicate_of"] for r in query(root, sql).to_pylist()}

    names = list(embedded)
    clips = [
        dict(clip_id=n, video_id=n, status="ok", start_frame=0, end_frame=N, width=W, height=H) for n in names
    ]
    scores = [
        dict(clip_id=n, status="ok", aesthetic_mean=s, clip_model="reelsift-tiny", clip_embedding=e.tolist())
        for n, (e, s) in embedded.items()
    ]
    scores.append(dict(clip_id="broken", status="error", error="decode failed"))
    Table(tmp_path, "clips").write(rows_to_table(clips, CLIPS))
    Table(tmp_path, "scores").write(rows_to_table(scores, SCORES))

    cfg = DedupConfig(threshold=0.99, clips_per_cluster=2)
    summary = run_dedup(tmp_path, cfg)
    assert (summary.clips, summary.groups, summary.duplicates) == (5, 1, 2)
    copies = ["china", "china_crf40", "china_crop"]
    best = max(copies, key=lambda n: (embedded[n][1], [-ord(c) for c in n]))
    dropped = sorted(set(copies) - {best})
    assert dropped_of(tmp_path) == {n: best for n in dropped}
    rows = {r["clip_id"]: r for r in query(tmp_path, "SELECT * FROM duplicates").to_pylist()}
    assert set(rows) == set(names)
    assert rows[best]["duplicate_of"] is None and rows[best]["group_size"] == 3
    assert all(rows[n]["similarity"] >= 0.99 and rows[n]["group_id"] == best for n in dropped)
    assert rows["flower"]["group_size"] == 1 and rows["flower"]["group_id"] == "flower"

    # a stricter re-run is the newest: nothing is a duplicate any more
    run_dedup(tmp_path, DedupConfig(threshold=1.0, clips_per_cluster=2))
    assert dropped_of(tmp_path) == {}
    assert query(tmp_path, "SELECT count(*) AS n FROM duplicates_history").column("n")[0].as_py() == 10


def test_disabled_writes_nothing(tmp_path):
    from curation.stages.dedup import run_dedup

    assert run_dedup(tmp_path, DedupConfig(enabled=False)).clips == 0
    assert not Table(tmp_path, "duplicates").exists()
