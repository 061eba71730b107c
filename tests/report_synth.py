"""A synthetic run root (tables only, no video files) for the report's workbench tests and bench:
any number of clips, with the edge cases the policy must agree on.

Scores are float32 as stored, some set exactly to a bound's float32 value (0.3 stored as float32
is 0.30000001, which fails `max: 0.3`), some NaN, some null (a failed score row) and some clips
have no score row at all; source short sides sit on and around the tiers' requirements; a few
clips are near-duplicates of another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from filters.config import Bound, FilterConfig, TierConfig
from manifests.schemas import CLIPS, DUPLICATES, SCORES
from manifests.store import Table

TIERS = {
    "720p": dict(min_source_short_side=720, short_side=720,
                 bounds={"motion_mean": {"min": 0.5, "max": 12.0}, "ocr_area": {"max": 0.02},
                         "motion_static_frac": {"max": 0.3}}),
    "480p": dict(min_source_short_side=480, short_side=480,
                 bounds={"motion_mean": {"min": 0.4, "max": 16.0}, "ocr_area": {"max": 0.03},
                         "quality_dark_frac": {"max": 0.3}}),
    "256p": dict(min_source_short_side=256, short_side=256,
                 bounds={"motion_mean": {"min": 0.3}, "ocr_area": {"max": 0.05}}),
}


def filter_config() -> FilterConfig:
    return FilterConfig(tiers={
        name: TierConfig(min_source_short_side=t["min_source_short_side"], short_side=t["short_side"],
                         bounds={c: Bound(**b) for c, b in t["bounds"].items()})
        for name, t in TIERS.items()})


def write_config(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"filter": {"tiers": TIERS}}, sort_keys=False))
    return path


def synth_root(root: Path, n: int, seed: int = 0, parts: int = 1) -> Path:
    """Write `clips`, `scores` and `duplicates` tables of `n` ok clips (+ a few rejected) under root."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"{i:016x}" for i in rng.permutation(n)])
    short = rng.choice([144, 255, 256, 360, 479, 480, 720, 1080], size=n).astype(np.int32)
    wide = (short * 16 // 9).astype(np.int32)
    portrait = rng.random(n) < 0.2
    width, height = np.where(portrait, short, wide), np.where(portrait, wide, short)
    duration = rng.uniform(1.5, 20.0, n)
    cols = {
        "motion_mean": rng.gamma(2.0, 1.0, n), "ocr_area": rng.beta(0.5, 12.0, n),
        "motion_static_frac": rng.random(n), "quality_dark_frac": rng.beta(0.7, 3.0, n),
        "quality_sharpness": rng.gamma(3.0, 40.0, n), "aesthetic_mean": rng.normal(5.0, 1.0, n),
    }
    edges = [0.5, 12.0, 0.02, 0.3, 0.4, 16.0, 0.03, 0.05]  # bounds, hit exactly (as float32)
    for c, v in cols.items():
        v = v.astype(np.float32)
        hit = rng.random(n) < 0.03
        v[hit] = rng.choice(np.array(edges, dtype=np.float32), size=hit.sum())
        v[rng.random(n) < 0.01] = np.nan
        cols[c] = v
    scored = rng.random(n) > 0.01  # a few clips were never scored
    status = np.where(rng.random(n) < 0.01, "error", "ok")  # a failed score row: every score null
    t_clips = pa.table({
        "clip_id": ids, "video_id": pa.array(np.char.add("v", (np.arange(n) // 7).astype(str))),
        "path": pa.array([f"/nonexistent/{i // 7}.mp4" for i in range(n)]),
        "start_frame": np.zeros(n, np.int64), "end_frame": np.full(n, 48, np.int64),
        "duration_s": duration, "fps": np.full(n, 24.0), "width": width, "height": height,
        "status": pa.array(["ok"] * n),
    })
    t_scores = pa.table({"clip_id": ids[scored], "status": status[scored],
                         **{c: pa.array(np.where(status == "error", np.nan, v)[scored], pa.float32(),
                                        mask=(status == "error")[scored]) for c, v in cols.items()}})
    dup = rng.random(n) < 0.05
    t_dup = pa.table({"clip_id": ids, "group_id": np.where(dup, ids[0], ids),
                      "group_size": np.where(dup, 2, 1).astype(np.int32),
                      "duplicate_of": pa.array(np.where(dup, ids[0], None).tolist(), pa.string()),
                      "dedup_run": pa.array(["r1"] * n)})
    tables = (("clips", t_clips, CLIPS), ("scores", t_scores, SCORES), ("duplicates", t_dup, DUPLICATES))
    for name, t, schema in tables:
        for k in range(parts):
            Table(root, name).write(_conform(t.slice(k * t.num_rows // parts, (k + 1) * t.num_rows // parts
                                                      - k * t.num_rows // parts), schema))
    return root


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """`t` with every column of `schema` (nulls where absent, created_at now)."""
    cols = {}
    for f in schema:
        if f.name in t.column_names:
            cols[f.name] = t.column(f.name).cast(f.type)
        elif f.name == "created_at":
            stamp = np.datetime64("2026-01-01T00:00:00", "us")
            cols[f.name] = pa.array(np.full(t.num_rows, stamp)).cast(f.type)
        else:
            cols[f.name] = pa.nulls(t.num_rows, f.type)
    return pa.table(cols, schema=schema)
