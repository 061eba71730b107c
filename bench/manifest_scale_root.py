"""The synthetic run root of bench/manifest_scale.py: N clips with the real schemas, in Arrow.

N/4 videos (1% error), 95% ok clips (3% rejected at split, 2% error), scores for ok clips (2%
error rows) with a 64-d unit CLIP embedding, dedup rows (3% near-duplicates), captions for ~70%
(model and prompt hash of configs/offline.yaml, 2% errors) and alignment for the ok captions;
parts of 50k rows; built 1M clips at a time so 10M fits in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "offline.yaml"
PART_ROWS = 50_000
EMBED = 64


def _ids(rng: np.random.Generator, n: int, salt: int) -> pa.Array:
    x = rng.permutation(n).astype(np.uint64) * np.uint64(0x9E3779B1) + np.uint64(salt)
    return pa.array(np.char.mod("%016x", x).astype(object), pa.string())


def write_table(root: Path, name: str, table: pa.Table) -> None:
    from manifests.store import Table

    t = Table(root, name)
    for i in range(0, table.num_rows, PART_ROWS):
        t.write(table.slice(i, PART_ROWS))


CHUNK = 1_000_000


def build_root(root: Path, n: int) -> dict:
    """A run root after score/dedup/caption/align of `n` clips (no decisions, no shards yet),
    built 1M clips at a time (ids stay unique: each chunk has its own high bits)."""
    total: dict[str, int] = {}
    for c, start in enumerate(range(0, n, CHUNK)):
        for k, v in _build_chunk(root, min(CHUNK, n - start), c).items():
            total[k] = total.get(k, 0) + v
    return total


def _build_chunk(root: Path, n: int, chunk: int) -> dict:
    from curation.config import load_config

    cfg = load_config(str(CONFIG), [])
    rng = np.random.default_rng(chunk)
    n_vid = max(1, n // 4)
    vid = _ids(rng, n_vid, 1 + (chunk << 52))
    sizes = np.array([(1920, 1080), (1280, 720), (854, 480), (640, 360)])
    vsize = sizes[rng.integers(0, 4, n_vid)]
    first = chunk * (CHUNK // 4)
    vpaths = pa.array(
        np.char.mod("/data/videos/%09d.mp4", np.arange(first, first + n_vid)).astype(object), pa.string()
    )
    vstatus = np.where(rng.random(n_vid) < 0.99, "ok", "error").astype(object)
    write_table(
        root,
        "videos",
        pa.table(
            {
                "video_id": vid,
                "path": vpaths,
                "status": vstatus,
                "error": np.where(vstatus == "error", "not a decodable video (invalid data)", None),
                "size_bytes": rng.integers(1 << 20, 1 << 28, n_vid),
                "duration_s": rng.uniform(10, 120, n_vid),
                "fps": np.full(n_vid, 24.0),
                "vfr": np.zeros(n_vid, bool),
                "n_frames": rng.integers(240, 2880, n_vid),
                "width": vsize[:, 0].astype(np.int32),
                "height": vsize[:, 1].astype(np.int32),
                "rotation": np.zeros(n_vid, np.int32),
                "display_width": vsize[:, 0].astype(np.int32),
                "display_height": vsize[:, 1].astype(np.int32),
                "codec": ["h264"] * n_vid,
                "pix_fmt": ["yuv420p"] * n_vid,
                "has_audio": rng.random(n_vid) < 0.5,
                "bitrate": rng.integers(500_000, 8_000_000, n_vid),
            }
        ),
    )
    cid = _ids(rng, n, 2 + (chunk << 52))
    v_of = np.arange(n) // 4 % n_vid
    start = rng.integers(0, 2000, n)
    length = rng.integers(36, 144, n)
    cstatus = rng.choice(np.array(["ok", "rejected", "error"], object), n, p=[0.95, 0.03, 0.02])
    cstatus = np.where(vstatus[v_of] == "ok", cstatus, "error")
    write_table(
        root,
        "clips",
        pa.table(
            {
                "clip_id": cid,
                "video_id": vid.take(pa.array(v_of)),
                "path": vpaths.take(pa.array(v_of)),
                "scene_index": (np.arange(n) % 4).astype(np.int32),
                "piece_index": np.zeros(n, np.int32),
                "start_frame": start,
                "end_frame": start + length,
                "start_s": start / 24.0,
                "end_s": (start + length) / 24.0,
                "duration_s": length / 24.0,
                "fps": np.full(n, 24.0),
                "width": vsize[v_of, 0].astype(np.int32),
                "height": vsize[v_of, 1].astype(np.int32),
                "status": cstatus,
                "error": np.where(cstatus == "error", "could not split: decode error", None),
                "reasons": pa.array(
                    [["too_short=1.2s<1.5s"] if s == "rejected" else [] for s in cstatus],
                    pa.list_(pa.string()),
                ),
            }
        ),
    )
    ok = np.flatnonzero(cstatus == "ok")
    m = len(ok)
    serr = rng.random(m) < 0.02
    f = lambda lo, hi: np.where(serr, np.nan, rng.uniform(lo, hi, m)).astype(np.float32)  # noqa: E731
    emb = rng.standard_normal((m, EMBED)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    embedding = pa.ListArray.from_arrays(
        pa.array(np.arange(m + 1, dtype=np.int32) * EMBED), pa.array(emb.ravel())
    )
    scid = cid.take(pa.array(ok))
    write_table(
        root,
        "scores",
        pa.table(
            {
                "clip_id": scid,
                "status": np.where(serr, "error", "ok").astype(object),
                "error": np.where(serr, "clip not decodable", None),
                "n_frames_scored": np.full(m, 8, np.int32),
                "frame_step": np.full(m, 8.0, np.float32),
                "work_width": np.full(m, 640, np.int32),
                "work_height": np.full(m, 360, np.int32),
                "motion_mean": f(0.0, 3.0),
                "motion_p90": f(0, 6),
                "motion_max": f(0, 12),
                "motion_static_frac": f(0, 0.6),
                "motion_pairs": np.full(m, 7, np.int32),
                "ocr_area": f(0, 0.06),
                "ocr_boxes": rng.integers(0, 5, m).astype(np.int32),
                "ocr_text": np.where(rng.random(m) < 0.2, "SALE 50% OFF", ""),
                "quality_brightness": f(0.1, 0.9),
                "quality_contrast": f(0.05, 0.4),
                "quality_saturation": f(0, 1),
                "quality_colorfulness": f(0, 150),
                "quality_sharpness": f(0, 500),
                "quality_dark_frac": f(0, 0.4),
                "quality_bright_frac": f(0, 0.4),
                "aesthetic_mean": f(3, 7),
                "aesthetic_min": f(2, 6),
                "aesthetic_untrained": np.ones(m, bool),
                "clip_model": [cfg.score.aesthetic.clip_model] * m,
                "clip_embedding": embedding,
                "nsfw_max": f(0, 0.55),
                "nsfw_mean": f(0, 0.3),
                "nsfw_breast": f(0, 0.2),
                "nsfw_genitalia": f(0, 0.2),
                "nsfw_buttocks": f(0, 0.2),
            }
        ),
    )
    dup = rng.random(m) < 0.03
    other = scid.take(pa.array(rng.integers(0, m, m)))
    write_table(
        root,
        "duplicates",
        pa.table(
            {
                "clip_id": scid,
                "group_id": pa.array(
                    np.where(dup, other.to_numpy(zero_copy_only=False), scid.to_numpy(zero_copy_only=False))
                ),
                "group_size": np.where(dup, 2, 1).astype(np.int32),
                "duplicate_of": pa.array(np.where(dup, other.to_numpy(zero_copy_only=False), None)),
                "similarity": np.where(dup, 0.97, np.nan).astype(np.float32),
                "clip_model": [cfg.score.aesthetic.clip_model] * m,
                "dedup_run": ["d1"] * m,
            }
        ),
    )
    cap = np.flatnonzero((rng.random(m) < 0.7) & ~serr)
    k = len(cap)
    words = np.array(
        "a the person dog car street city walks runs slowly under bright sky camera pans "
        "across green field water light night indoor kitchen table".split(),
        object,
    )
    text = [" ".join(ws) for ws in words[rng.integers(0, len(words), (k, 24))]]
    capid = scid.take(pa.array(cap))
    cstat = np.where(rng.random(k) < 0.98, "ok", "error").astype(object)
    write_table(
        root,
        "captions",
        pa.table(
            {
                "clip_id": capid,
                "caption": pa.array(np.where(cstat == "ok", np.array(text, object), None)),
                "backend": ["transformers"] * k,
                "model": [cfg.caption.model_name] * k,
                "prompt_hash": [cfg.caption.prompt_hash] * k,
                "n_tokens": np.full(k, 32, np.int32),
                "latency_s": rng.uniform(0.5, 3, k),
                "untrained": np.ones(k, bool),
                "status": cstat,
                "error": np.where(cstat == "error", "generation failed", None),
            }
        ),
    )
    okcap = np.flatnonzero(cstat == "ok")
    write_table(
        root,
        "alignment",
        pa.table(
            {
                "clip_id": capid.take(pa.array(okcap)),
                "caption_model": [cfg.caption.model_name] * len(okcap),
                "prompt_hash": [cfg.caption.prompt_hash] * len(okcap),
                "clip_score": rng.uniform(0.1, 0.4, len(okcap)).astype(np.float32),
                "clip_model": [cfg.score.aesthetic.clip_model] * len(okcap),
                "untrained": np.ones(len(okcap), bool),
                "status": ["ok"] * len(okcap),
            }
        ),
    )
    return dict(videos=n_vid, clips=n, ok_clips=m, captions=k)


def fake_shards(root: Path) -> int:
    """`shards` rows for every kept clip, as if `shard` had run (no tar is written)."""
    from manifests.db import connect
    from manifests.store import Table

    con = connect(root)
    reader = con.sql("""
        SELECT d.clip_id, 'shards/' || d.tier || '/' || substr(md5(d.clip_id), 1, 4) || '-000.tar' AS shard,
               d.clip_id AS key, d.tier, 'ok' AS status, 256 AS width, 256 AS height, 24.0 AS fps,
               48 AS n_frames, 200000 AS bytes, NULL AS caption
        FROM decisions d WHERE d.keep""").to_arrow_reader(PART_ROWS)
    n = 0
    for batch in reader:
        Table(root, "shards").write(pa.Table.from_batches([batch]))
        n += batch.num_rows
    return n
