"""The vectorised filter (DuckDB SQL) against the Python reference `filters.policy.decide`.

A few thousand varied rows: null/NaN/inf scores, values exactly on every bound, unknown source
sizes, score rows with status error, alignment rows (newest wins, error rows ignored), dedup
duplicates, rejected/error clips, and a bounded column that no stored part has.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.candidates import candidates_sql
from curation.stages.filter import FilterSummary, run_filter
from filters.config import Bound, FilterConfig, TierConfig
from filters.policy import Decision, decide
from manifests.db import connect, query
from manifests.schemas import ALIGNMENT, CLIPS, DUPLICATES, SCORES
from manifests.store import Table, rows_to_table

N = 3000

CFG = FilterConfig(
    tiers={
        "720p": TierConfig(
            min_source_short_side=720,
            short_side=720,
            bounds={
                "motion_mean": Bound(min=0.5, max=10.0),
                "ocr_area": Bound(max=0.02),
                "aesthetic_mean": Bound(min=4.5),
                "clip_score": Bound(min=0.2),
            },
        ),
        "480p": TierConfig(
            min_source_short_side=480,
            short_side=480,
            bounds={
                "motion_mean": Bound(min=0.3, max=12.0),
                "ocr_area": Bound(max=0.05),
                "quality_sharpness": Bound(min=1e-5),
            },
        ),
        "256p": TierConfig(
            min_source_short_side=256,
            short_side=256,
            bounds={"motion_mean": Bound(min=0.1), "nsfw_max": Bound(max=0.5)},
        ),
    }
)

EDGES = [
    None,
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    0.1,
    0.3,
    0.5,
    10.0,
    12.0,
    0.02,
    0.05,
    4.5,
    0.2,
    1e-5,
    123456.7,
    2.5e-7,
]


def _value(rng: np.random.Generator, scale: float):
    u = rng.random()
    if u < 0.35:
        return EDGES[rng.integers(len(EDGES))]
    return float(rng.standard_normal() * scale + scale)


def make_root(root, *, drop_nsfw: bool = False):
    rng = np.random.default_rng(7)
    ids = [f"c{i:05d}" for i in range(N)]
    sides = [None, 0, 255, 256, 479, 480, 719, 720, 1080]
    clips, scores, align, dups = [], [], [], []
    for cid in ids:
        w, h = sides[rng.integers(len(sides))], sides[rng.integers(len(sides))]
        status = ["ok"] * 8 + ["rejected", "error"]
        clips.append(dict(clip_id=cid, video_id="v", status=status[rng.integers(10)], width=w, height=h))
        if rng.random() < 0.05:
            continue  # never scored
        if rng.random() < 0.05:
            scores.append(dict(clip_id=cid, status="error", error="could not decode"))
            continue
        scores.append(
            dict(
                clip_id=cid,
                status="ok",
                motion_mean=_value(rng, 2.0),
                ocr_area=_value(rng, 0.03),
                aesthetic_mean=_value(rng, 4.5),
                quality_sharpness=_value(rng, 1e-5),
                nsfw_max=_value(rng, 0.4),
            )
        )
        if rng.random() < 0.6:
            align.append(
                dict(
                    clip_id=cid,
                    caption_model="m",
                    prompt_hash="p",
                    clip_model="c",
                    status="ok",
                    clip_score=_value(rng, 0.2),
                )
            )
        if rng.random() < 0.1:
            align.append(
                dict(
                    clip_id=cid,
                    caption_model="m",
                    prompt_hash="p",
                    clip_model="c",
                    status="error",
                    error="no caption",
                )
            )
        if rng.random() < 0.1:
            dups.append(
                dict(
                    clip_id=cid,
                    group_id=ids[0],
                    group_size=2,
                    duplicate_of=ids[0],
                    similarity=0.99,
                    dedup_run="r",
                )
            )
    Table(root, "clips").write(rows_to_table(clips, CLIPS))
    half = len(scores) // 2
    scores_t = rows_to_table(scores, SCORES)
    if drop_nsfw:  # an old part written before nsfw columns existed: no stored part has them
        (root / "scores").mkdir(parents=True)
        keep = [n for n in SCORES.names if not n.startswith("nsfw")]
        pq.write_table(scores_t.select(keep), root / "scores" / "part-00000000000000000001-old.parquet")
    else:
        Table(root, "scores").write(scores_t.slice(0, half))
        Table(root, "scores").write(scores_t.slice(half))
    Table(root, "alignment").write(rows_to_table(align[: len(align) // 2], ALIGNMENT))
    # a newer alignment run re-scores some clips: the newest row must win
    newer = [dict(a, clip_score=_value(rng, 0.2)) for a in align[: len(align) // 4]]
    Table(root, "alignment").write(rows_to_table(newer + align[len(align) // 2 :], ALIGNMENT))
    Table(root, "duplicates").write(rows_to_table(dups, DUPLICATES))
    return root


def reference(root, cfg, dedup=True) -> dict[str, Decision]:
    con = connect(root)
    out = {}
    for rec in con.sql(candidates_sql(con, cfg, dedup=dedup)).to_arrow_table().to_pylist():
        dup_of = rec.pop("duplicate_of")
        d = decide(int(rec.pop("short_side") or 0), rec, cfg)
        if dup_of is not None:
            d = Decision(tier=None, keep=False, reasons=[f"duplicate_of={dup_of}", *d.reasons])
        out[rec["clip_id"]] = d
    return out


def reference_summary(decisions: dict[str, Decision]) -> FilterSummary:
    s = FilterSummary(run="ref")
    for d in decisions.values():
        s.decided += 1
        if d.keep:
            s.kept_per_tier[d.tier] = s.kept_per_tier.get(d.tier, 0) + 1
            continue
        s.rejected += 1
        for r in d.reasons:
            name, _, rest = r.partition("=")
            head = f"{name}@{rest.rsplit('@', 1)[-1]}" if "@" in rest else name
            s.reasons[head] = s.reasons.get(head, 0) + 1
    return s


@pytest.mark.parametrize("drop_nsfw", [False, True], ids=["all-columns", "column-missing-from-parts"])
@pytest.mark.parametrize("dedup", [True, False])
def test_sql_filter_equals_python_decide(tmp_path, drop_nsfw, dedup):
    root = make_root(tmp_path, drop_nsfw=drop_nsfw)
    expected = reference(root, CFG, dedup)
    summary = run_filter(root, CFG, dedup=dedup)
    got = {r["clip_id"]: r for r in query(root, "SELECT * FROM decisions").to_pylist()}
    assert len(got) == len(expected) > N // 2
    mismatches = [
        (cid, d, got[cid])
        for cid, d in expected.items()
        if (got[cid]["tier"], got[cid]["keep"], got[cid]["reasons"]) != (d.tier, d.keep, d.reasons)
    ]
    assert not mismatches, mismatches[:5]
    # the run covers every tier, rejections, missing values and both bound sides
    kinds = {d.tier for d in expected.values()}
    # (256p bounds nsfw_max: with no stored part holding it, no clip can pass 256p)
    assert kinds == ({"720p", "480p", None} if drop_nsfw else {"720p", "480p", "256p", None})
    text = " ".join(r for d in expected.values() for r in d.reasons)
    for needle in ("=missing@", ">10@720p", "<0.5@720p", "short_side=0<", "duplicate_of=" if dedup else "@"):
        assert needle in text
    ref = reference_summary(expected)
    assert (summary.decided, summary.kept_per_tier, summary.rejected, summary.reasons) == (
        ref.decided,
        ref.kept_per_tier,
        ref.rejected,
        ref.reasons,
    )
    run = {r["filter_run"] for r in got.values()}
    assert run == {summary.run}


def test_dry_run_writes_nothing_and_counts_the_same(tmp_path):
    root = make_root(tmp_path)
    dry = run_filter(root, CFG, dry_run=True)
    assert not Table(root, "decisions").exists()
    wet = run_filter(root, CFG)
    assert (dry.decided, dry.kept_per_tier, dry.rejected, dry.reasons) == (
        wet.decided,
        wet.kept_per_tier,
        wet.rejected,
        wet.reasons,
    )
    assert pa.types.is_timestamp(Table(root, "decisions").read().schema.field("created_at").type)


def test_dry_run_diff_files_dedup_reasons_under_the_key_filter_counts(tmp_path, capsys):
    """`filter --dry-run` with the config that made the current decisions changes nothing: the
    stored `duplicate_of=<id>` reasons count under `duplicate_of`, as filter counts them (not
    `duplicate_of@`)."""
    from curation.cli import main

    root = make_root(tmp_path)
    argv = ["filter", "--config", "configs/offline.yaml", "--root", str(root), "--set", "dedup.enabled=true"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["reasons"]["duplicate_of"] > 0
    assert "duplicate_of@" not in out.err
    assert "reasons of rejected clips: unchanged" in out.err
    runs = query(root, "SELECT count(DISTINCT filter_run) AS n FROM decisions_history").column("n")[0]
    assert runs.as_py() == 1
