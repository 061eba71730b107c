"""The workbench's numbers (curation/report/data.py) against what `filter` decides, on a
synthetic run root full of edge cases (no browser, no video)."""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from curation.config import CurateConfig
from curation.report import data, write_report
from curation.stages.filter import run_filter
from filters.config import Bound
from manifests.db import connect
from tests.report_synth import filter_config, synth_root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return synth_root(tmp_path_factory.mktemp("synth"), 3000, parts=3)


def _exact(root, filt, dedup=True):
    con = connect(root)
    tiers = data.tier_heads(filt)
    cols = sorted(filt.score_columns())
    n = data.load_candidates(con, filt, cols, dedup)
    return n, data.exact_counts(con, tiers), con


@pytest.mark.parametrize("dedup", [True, False])
def test_exact_counts_equal_filter_dry_run(root, dedup):
    filt = filter_config()
    n, exact, _ = _exact(root, filt, dedup)
    s = run_filter(root, filt, dry_run=True, dedup=dedup)
    assert n == s.decided == 3000
    assert {t: c for t, (c, _) in exact["kept"].items() if c} == s.kept_per_tier
    assert exact["rejected"][0] == s.rejected
    assert exact["reasons"] == s.reasons
    assert ("duplicate_of" in s.reasons) == dedup


def test_exact_counts_follow_moved_bounds(root):
    """A bound on a float32 score's exact value, and a tier that takes every short side."""
    filt = filter_config()
    t = filt.tiers["256p"]
    moved = replace(filt, tiers={**filt.tiers, "256p": replace(t, min_source_short_side=0, bounds={
        **t.bounds, "ocr_area": Bound(max=float(np.float32(0.05))), "quality_dark_frac": Bound(min=0.3)})})
    _, exact, _ = _exact(root, moved)
    s = run_filter(root, moved, dry_run=True)
    assert {k: c for k, (c, _) in exact["kept"].items() if c} == s.kept_per_tier
    assert exact["reasons"] == s.reasons and exact["rejected"][0] == s.rejected


def test_histograms_count_every_clip_and_sample_is_fixed(root):
    filt = filter_config()
    _, _, con = _exact(root, filt)
    tiers = data.tier_heads(filt)
    hist = data.histograms(con, ["motion_mean", "ocr_area"], tiers)
    for col in ("motion_mean", "ocr_area"):
        for t in tiers:
            eligible, missing = con.sql(
                f"SELECT count(*) FILTER (WHERE NOT isnan({col})), count(*) FILTER (WHERE {col} IS NULL "
                f"OR isnan({col})) FROM cand WHERE short_side >= {t['min_short']}").fetchall()[0]
            assert sum(hist[col]["counts"][t["name"]]) == eligible
            assert hist[col]["missing"][t["name"]] == missing
    a, _ = data.sample(con, ["motion_mean"], 3000, 500)
    b, _ = data.sample(_exact(root, filt)[2], ["motion_mean"], 3000, 500)
    assert a["n"] == 500 and a["ids"] == b["ids"], "the sample must not depend on the order of the parts"
    mm = np.frombuffer(base64.b64decode(a["cols"]["motion_mean"]["b64"]), "<f4")
    ref = dict(con.sql("SELECT clip_id, motion_mean FROM cand").fetchall())
    np.testing.assert_array_equal(mm, np.array([ref[i] for i in a["ids"]], dtype=np.float32))


def test_page_size_is_bounded_by_the_sample(root, tmp_path):
    page = write_report(root, CurateConfig(filter=filter_config()), max_thumbs=0, max_examples=0,
                        sample_rows=1000)
    small = page.stat().st_size
    page = write_report(root, CurateConfig(filter=filter_config()), max_thumbs=0, max_examples=0,
                        sample_rows=3000)
    # ~60 bytes per sampled clip at three bounded scores: 20k clips fit well under 2 MB
    per_row = (page.stat().st_size - small) / 2000
    assert per_row < 70, per_row
    assert small + per_row * (data.SAMPLE_ROWS - 1000) < 2_000_000


def test_report_on_a_root_whose_parts_lack_a_bounded_score_column(tmp_path):
    """Scores written before a column existed: the report reads it as missing, as `filter` does
    (one candidate query), instead of failing with a DuckDB BinderException."""
    from tests.test_filter_sql import CFG, make_root

    root = make_root(tmp_path, drop_nsfw=True)  # 256p bounds nsfw_max, which no part holds
    n, exact, _ = _exact(root, CFG)
    s = run_filter(root, CFG, dry_run=True)
    assert n == s.decided and exact["rejected"][0] == s.rejected and exact["reasons"] == s.reasons
    assert s.reasons["nsfw_max@256p"] > 0 and "256p" not in s.kept_per_tier
    from curation.report import workbench

    wb = workbench.build(connect(root), tmp_path / "out", CFG, extra_cols=["nsfw_mean"], dedup=True,
                         sample_rows=500, max_examples=0, command=["reelsift", "filter"])
    assert wb["exact"]["reasons"] == s.reasons and wb["hist"]["nsfw_max"] is None
    assert wb["hist"]["motion_mean"]["hi"] < float("inf")  # the axis spans finite scores


def test_clip_details_from_the_snapshot_equal_those_from_the_histories(tmp_path):
    """The report reads a few clips' rows from its snapshot of the newest rows; they must be the
    rows ranked from each table's history (decisions decided twice, so two rows a clip)."""
    from curation.report import cards, page

    root = synth_root(tmp_path, 400, parts=2)
    filt = filter_config()
    run_filter(root, filt)
    run_filter(root, replace(filt, tiers={k: t for k, t in list(filt.tiers.items())[1:]}))
    con = connect(root)
    ids = [r[0] for r in con.sql("SELECT clip_id FROM clips WHERE status = 'ok' ORDER BY clip_id LIMIT 40")
           .fetchall()]
    ids += [r[0] for r in con.sql("SELECT clip_id FROM clips WHERE status <> 'ok' LIMIT 5").fetchall()]
    shown = list(cards.MAIN_SCORES)
    want = cards.clip_details(con, ids, shown)
    assert con.sql("SELECT count(*) FROM decisions_history").fetchall()[0][0] > \
        con.sql("SELECT count(*) FROM decisions").fetchall()[0][0]
    page._snapshot(con)
    got = cards.clip_details(con, ids, shown, page.RANKED)
    assert repr(sorted(got.items())) == repr(sorted(want.items()))  # repr: NaN scores equal
    assert len(got) == len(set(ids))
    assert {r["keep"] for r in got.values()} >= {True, False}
