"""`reelsift report`, `status` and the filter dry-run diff, on the hand-made run root of
tests/test_queries.py (no Ray). The page is driven in headless Chromium by tests/test_report_browser.py."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import av
import cv2
import pytest

from curation.config import CurateConfig
from curation.report import write_report
from curation.stages.filter import funnel_diff, run_filter
from curation.status import format_status, stage_status
from filters.config import Bound
from manifests import queries
from manifests.db import query
from manifests.schemas import CAPTIONS, CLIPS, VIDEOS
from manifests.store import Table, rows_to_table
from tests.test_queries import FILTER, make_run_root


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    return make_run_root(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def report(run_root) -> Path:
    return write_report(run_root, CurateConfig(filter=FILTER), max_thumbs=2)


def _status(root) -> dict[str, dict]:
    return {r["stage"]: r for r in stage_status(root).to_pylist()}


def test_status_of_a_finished_run(run_root):
    st = _status(run_root)
    assert list(st) == ["ingest", "split", "score", "filter", "shard"]  # no captions table: no caption row
    assert (st["ingest"]["done"], st["ingest"]["error"], st["ingest"]["pending"]) == (2, 1, None)
    assert (st["split"]["done"], st["split"]["rejected"], st["split"]["pending"]) == (4, 1, 0)
    assert (st["filter"]["done"], st["filter"]["rejected"], st["filter"]["pending"]) == (3, 1, 0)
    assert (st["shard"]["done"], st["shard"]["error"], st["shard"]["pending"]) == (1, 1, 0)
    assert all(r["last_run"] is not None for r in st.values())
    text = format_status(stage_status(run_root), root=run_root)
    assert "nothing pending" in text and f"--named errors --root {run_root}" in text


def test_status_counts_pending_upstream_keys(tmp_path):
    Table(tmp_path, "videos").write(rows_to_table([
        dict(video_id="v1", path="/x/1.mp4", status="ok"), dict(video_id="v2", path="/x/2.mp4", status="ok"),
    ], VIDEOS))
    Table(tmp_path, "clips").write(rows_to_table([
        dict(clip_id=c, video_id="v1", status="ok", width=64, height=48) for c in ("c1", "c2")
    ], CLIPS))
    st = _status(tmp_path)
    assert st["split"]["pending"] == 1 and st["score"]["pending"] == 2 and st["filter"]["pending"] == 2
    assert st["shard"]["pending"] == 0 and st["shard"]["last_run"] is None
    text = format_status(stage_status(tmp_path))
    assert "pending: split (1 video), score (2 clips), filter (2 clips)" in text
    assert "never" in text


def test_funnel_diff_of_a_dry_run(run_root):
    strict = replace(FILTER, tiers={**FILTER.tiers, "48p": replace(
        FILTER.tiers["48p"], bounds={"ocr_area": Bound(max=0.001)})})
    before = query(run_root, "SELECT count(*) AS n FROM decisions_history").column("n")[0].as_py()
    text = funnel_diff(run_root, run_filter(run_root, strict, dry_run=True))
    assert query(run_root, "SELECT count(*) AS n FROM decisions_history").column("n")[0].as_py() == before
    lines = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines()[2:] if ln.strip()}
    assert lines["kept@96p"] == ["1", "1", "0"]
    assert lines["kept@48p"] == ["1", "0", "-1"]
    assert lines["rejected"] == ["1", "2", "+1"]
    assert lines["ocr_area@48p"] == ["1", "2", "+1"]
    assert "short_side@96p" not in lines  # unchanged reasons are left out


def test_report_contents(run_root, report):
    page = report.read_text()
    assert report == run_root / "report" / "index.html"
    for text in ("Funnel", "UNTRAINED", "short_side@96p", "motion_mean@96p", "could not cut: test",
                 "a moving texture", "kept @96p", "rejected by filter: ocr_area",
                 "rejected at split: too_short", "absent: no caption stage has run"):
        assert text in page, text
    bench = json.loads(re.search(r'<script type="application/json" id="reelsift-data">(.*?)</script>', page,
                                 re.S).group(1))
    sliders = {s["id"]: s["value"] for s in bench["sliders"]}
    assert sliders == {"96p.motion_mean.min": 0.5, "48p.ocr_area.max": 0.05}
    assert bench["n_total"] == bench["sample"]["n"] == 3 and bench["sample"]["ids"] == ["a0", "a1", "b0"]
    assert bench["exact"]["kept"] == {"96p": [1, 1.0], "48p": [1, 1.0]}
    assert bench["exact"]["rejected"] == [1, 1.0]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the report must load nothing"
    posters = re.findall(r'poster="([^"]+)"', page)
    previews = re.findall(r'<video class=preview src="([^"]+)"', page)
    assert len(set(posters)) == len(set(previews)) == 4  # every clip with frames: a0, a1, b0, b1
    for src in posters:
        img = cv2.imread(str(report.parent / src))
        assert img is not None and img.shape[2] == 3 and img.std() > 1, src
    for src in previews:  # cut by the shard stage's code: H.264, small, a few frames a second
        with av.open(str(report.parent / src)) as f:
            stream = f.streams.video[0]
            frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(stream)]
            assert stream.codec_context.name == "h264" and min(stream.width, stream.height) <= 144, src
        assert 1 <= len(frames) <= 12 * 3 and max(fr.std() for fr in frames) > 1, src
    mtimes = {p: p.stat().st_mtime_ns for p in (report.parent / "previews").iterdir()}
    write_report(run_root, CurateConfig(filter=FILTER), max_thumbs=2)
    assert mtimes == {p: p.stat().st_mtime_ns for p in (report.parent / "previews").iterdir()}, "cached"


def test_report_on_an_empty_root(tmp_path):
    page = write_report(tmp_path, CurateConfig()).read_text()
    assert "No clips yet" in page and "no decisions yet" in page
    assert "<img" not in page and "<video" not in page


def test_captions_show_in_status_funnel_and_cards(tmp_path, monkeypatch):
    root = make_run_root(tmp_path)
    schema = CAPTIONS
    Table(root, "captions").write(rows_to_table([
        dict(clip_id="a0", caption="noise words", backend="transformers", model="tiny", prompt_hash="p",
             untrained=True, status="ok"),
        dict(clip_id="a1", backend="transformers", model="tiny", prompt_hash="p", status="error",
             error="generation timed out"),
    ], schema))
    st = _status(root)
    assert (st["caption"]["done"], st["caption"]["error"], st["caption"]["pending"]) == (1, 1, None)
    assert st["caption"]["pending_needs"] == "config"  # which captions are pending depends on the prompt
    assert "? caption: what is pending depends on the config" in format_status(stage_status(root))
    with_cfg = {r["stage"]: r for r in stage_status(root, CurateConfig(filter=FILTER)).to_pylist()}
    assert with_cfg["caption"]["pending"] == 2  # kept a0 and a1: their rows came from another model
    funnel = {(r["step"], r["tier"]): r["n"] for r in queries.run(root, "funnel").to_pylist()}
    assert funnel[("captioned", "all")] == 1
    page = write_report(root, CurateConfig(filter=FILTER), max_thumbs=1).read_text()
    assert "noise words <span class=warn-inline>(UNTRAINED captioner)</span>" in page
    assert "generation timed out" in page and "absent: no caption stage" not in page


def test_preview_budget_leaves_the_other_clips_a_still(tmp_path):
    root = make_run_root(tmp_path)
    cfg = CurateConfig(filter=FILTER)
    page = write_report(root, cfg, max_thumbs=2, max_previews=2, max_examples=0).read_text()
    # the first clip of each group in turn: a0 (kept @96p) and a1 (kept @48p) play; b1 and b0 are stills
    assert page.count("<video class=preview") == 2 and page.count('<img src="thumbs/') == 3
    assert len(list((root / "report" / "previews").iterdir())) == 2
