"""Named queries (manifests/queries/*.sql) over a small hand-made run root, without Ray.

`make_run_root` writes real tables (and real, tiny videos) for a run whose every number is known:
it is shared with tests/test_report.py.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from filters.config import Bound, FilterConfig, TierConfig
from manifests import queries
from manifests.db import query
from manifests.schemas import CAPTIONS, CLIPS, SCORES, SHARDS, VIDEOS
from manifests.store import Table, rows_to_table
from tests.media import make_video

REQUIRED = {"funnel", "rejected-by-reason", "tier-summary", "errors", "caption-lengths"}

# 'hi' needs a 96-px source and motion >= 0.5; 'lo' takes 48-px sources with little text.
FILTER = FilterConfig(tiers={
    "96p": TierConfig(min_source_short_side=96, short_side=96, bounds={"motion_mean": Bound(min=0.5)}),
    "48p": TierConfig(min_source_short_side=48, short_side=48, bounds={"ocr_area": Bound(max=0.05)}),
})


def make_run_root(root: Path) -> Path:
    """A run root as the stages would leave it, decided with FILTER.

    videos: big (160x96, ok), small (64x48, ok), broken (error).
    clips:  a0 big 0-24, a1 big 24-48, b0 small 0-24, b1 small 24-30 (rejected at split: too short)
    scores: a0 moving (kept @96p), a1 static (motion fails 96p, kept @48p), b0 text-heavy
            (short_side@96p and ocr_area@48p: rejected)
    shards: a0 ok with a caption, a1 error
    """
    from curation.stages.filter import run_filter

    big = make_video(root / "in" / "big.mp4", n_frames=48, size=(160, 96), kind="moving")
    small = make_video(root / "in" / "small.mp4", n_frames=30, size=(64, 48), kind="text")
    Table(root, "videos").write(rows_to_table([
        dict(video_id="vbig", path=str(big), status="ok", duration_s=2.0, fps=24.0, n_frames=48,
             width=160, height=96, rotation=0, display_width=160, display_height=96),
        dict(video_id="vsmall", path=str(small), status="ok", duration_s=1.25, fps=24.0, n_frames=30,
             width=64, height=48, rotation=0, display_width=64, display_height=48),
        dict(video_id="vbroken", path=str(root / "in" / "broken.mp4"), status="error",
             error="not a decodable video (invalid data found when processing input)"),
    ], VIDEOS))

    def clip(cid, vid, path, s, e, w, h, status="ok", reasons=()):
        return dict(clip_id=cid, video_id=vid, path=str(path), start_frame=s, end_frame=e,
                    start_s=s / 24, end_s=e / 24, duration_s=(e - s) / 24, fps=24.0, width=w, height=h,
                    status=status, reasons=list(reasons))

    Table(root, "clips").write(rows_to_table([
        clip("a0", "vbig", big, 0, 24, 160, 96), clip("a1", "vbig", big, 24, 48, 160, 96),
        clip("b0", "vsmall", small, 0, 24, 64, 48),
        clip("b1", "vsmall", small, 24, 30, 64, 48, "rejected", ["too_short=0.25s<0.5s"]),
    ], CLIPS))
    Table(root, "scores").write(rows_to_table([
        dict(clip_id="a0", status="ok", motion_mean=2.0, ocr_area=0.0, quality_sharpness=50.0,
             aesthetic_mean=5.0, aesthetic_untrained=True),
        dict(clip_id="a1", status="ok", motion_mean=0.1, ocr_area=0.01, quality_sharpness=40.0,
             aesthetic_mean=4.0, aesthetic_untrained=True),
        dict(clip_id="b0", status="ok", motion_mean=1.0, ocr_area=0.3, quality_sharpness=30.0,
             aesthetic_mean=3.0, aesthetic_untrained=True),
    ], SCORES))
    run_filter(root, FILTER)
    Table(root, "shards").write(rows_to_table([
        dict(clip_id="a0", shard="shards/96p/00000.tar", key="a0", tier="96p", status="ok",
             width=160, height=96, fps=24.0, n_frames=24, bytes=1000, caption="a moving texture"),
        dict(clip_id="a1", key="a1", tier="48p", status="error", error="could not cut: test"),
    ], SHARDS))
    return root


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    return make_run_root(tmp_path_factory.mktemp("run"))


def test_names_and_unknown_name_lists_them():
    assert REQUIRED <= set(queries.names())
    with pytest.raises(queries.UnknownQuery, match="named queries are: .*funnel"):
        queries.load("funel")
    with pytest.raises(queries.UnknownQuery):
        queries.load("../db")
    for name in queries.names():
        assert queries.describe(name), f"{name}.sql needs a leading -- comment saying what it shows"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_query_runs_on_an_empty_root(tmp_path, name):
    assert isinstance(queries.run(tmp_path, name), pa.Table)


def test_funnel(run_root):
    rows = {(r["step"], r["tier"]): (r["n"], round(r["hours"] * 3600, 3))
            for r in queries.run(run_root, "funnel").to_pylist()}
    assert rows[("videos", "all")] == (2, 3.25)
    assert rows[("clips", "all")] == (3, 3.0)
    assert rows[("scored", "all")] == (3, 3.0)
    assert rows[("kept", "all")] == (2, 2.0)
    assert rows[("kept", "96p")] == (1, 1.0) and rows[("kept", "48p")] == (1, 1.0)
    assert rows[("captioned", "all")] == (0, 0.0)
    assert rows[("sharded", "all")] == (1, 1.0)


def test_rejected_by_reason(run_root):
    got = {(r["stage"], r["reason"]): (r["rejected"], r["kept_lower"])
           for r in queries.run(run_root, "rejected-by-reason").to_pylist()}
    assert got == {
        ("split", "too_short"): (1, 0),
        ("filter", "short_side@96p"): (1, 0),
        ("filter", "ocr_area@48p"): (1, 0),
        ("filter", "motion_mean@96p"): (0, 1),
    }


def test_tier_summary_and_errors(run_root):
    tiers = {r["tier"]: r for r in queries.run(run_root, "tier-summary").to_pylist()}
    assert tiers["96p"]["kept"] == 1 and tiers["96p"]["sharded"] == 1
    assert tiers["48p"]["sharded"] == 0 and tiers["48p"]["aesthetic_untrained"] is True
    errors = queries.run(run_root, "errors").to_pylist()
    assert [(e["source"], e["key"]) for e in errors] == [("videos", "vbroken"), ("shards", "a1")]
    assert errors[1]["path"].endswith("big.mp4") and "could not cut" in errors[1]["error"]


def test_caption_lengths_with_a_captions_table(tmp_path, monkeypatch):
    assert queries.run(tmp_path, "caption-lengths").num_rows == 0  # no captions table at all
    schema = CAPTIONS
    Table(tmp_path, "captions").write(rows_to_table([
        dict(clip_id="a", caption="a red ball rolls", backend="vlm", model="m", prompt_hash="p", n_tokens=5,
             latency_s=1.0, status="ok"),
        dict(clip_id="b", caption="  two  words ", backend="vlm", model="m", prompt_hash="p", n_tokens=3,
             latency_s=3.0, status="ok"),
        dict(clip_id="c", backend="vlm", model="m", prompt_hash="p", status="error", error="timeout",
             latency_s=2.0),
    ], schema))
    (row,) = queries.run(tmp_path, "caption-lengths").to_pylist()
    assert (row["ok"], row["errors"], row["words_min"], row["words_max"]) == (2, 1, 2, 4)
    assert row["words_mean"] == 3.0 and row["tokens_mean"] == 4.0 and row["latency_s_mean"] == 2.0


def test_markdown_doc(run_root):
    doc = queries.markdown_doc(run_root)
    for name in REQUIRED:
        assert f"## {name}" in doc and f"--named {name}" in doc
    assert "| step | tier | n | hours |" in doc and "untrained" in doc


def test_duckdb_threads_follow_the_memory_limit_not_the_host(monkeypatch):
    """A many-core node gets no more DuckDB threads than the memory limit can feed: each thread
    holds its own buffers, and 128 threads under 512 MB fail with "Out of Memory"."""
    import duckdb

    from manifests import db

    def threads(limit: str) -> int:
        con = db.bound(duckdb.connect(":memory:"), limit)
        return con.sql("SELECT current_setting('threads')").fetchall()[0][0]

    monkeypatch.setattr(db, "cpus", lambda: 128)
    assert threads("512MB") == 4
    assert threads("4GB") == 32
    assert threads("100MB") == 1
    monkeypatch.setattr(db, "cpus", lambda: 2)
    assert threads("4GB") == 2


def test_summary_prints_the_known_counts(run_root, capsys):
    from curation.cli import main

    assert main(["summary", "--root", str(run_root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["videos", "error=1,", "ok=2"]
    assert out[2].split() == ["clips", "ok=3,", "rejected=1"]
    assert out[3].split() == ["decisions", "kept@48p=1,", "kept@96p=1,", "rejected=1"]
    assert out[4].split() == ["shards", "error=1,", "ok=1"]
    assert out[5] == f"hours in: {3.25 / 3600:.4f}  hours out: {1 / 3600:.4f}"


def test_reason_head_macro_matches_the_python_rule(run_root):
    """`reelsift sql` has `reason_head(r)`, the rule filter, status and the report count by."""
    from manifests.reasons import head

    sql = ("SELECT r, reason_head(r) AS h FROM (SELECT unnest(reasons) AS r FROM decisions "
           "UNION ALL SELECT unnest(['duplicate_of=c1', 'too_short=0.50s<1s', 'a=b@c=d@480p', 'plain']))")
    rows = query(run_root, sql).to_pylist()
    assert len(rows) > 4 and all(r["h"] == head(r["r"]) for r in rows)
    assert {head("duplicate_of=c1"), head("too_short=0.50s<1s"), head("ocr_area=0.3>0.02@720p")} == {
        "duplicate_of", "too_short", "ocr_area@720p"}
