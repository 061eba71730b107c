"""The report's workbench in a real browser (the system's headless Chromium, driven by
Playwright): move a slider and check the page's counts against what `reelsift filter --dry-run`
prints with the `--set` arguments the page shows; play a preview; check the page's decide()
against `filter`'s, reason string for reason string. (The README's screenshot is taken from the
demo run by docs/screenshot.py, not here.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from curation.cli import main
from curation.config import load_config
from curation.report import write_report
from curation.stages.filter import run_filter
from manifests.db import query
from manifests.reasons import head as reason_head
from tests.report_synth import synth_root, write_config
from tests.test_queries import make_run_root

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="needs headless Chromium: `make browser` (apt-get install chromium)")


@pytest.fixture(scope="module")
def chromium():
    """The system Chromium through Playwright (which downloads no browser of its own)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--autoplay-policy=no-user-gesture-required"])
        yield browser
        browser.close()


@pytest.fixture
def browser(chromium):
    """A fresh page; `page.errors` collects its JS exceptions and console errors."""
    page = chromium.new_page(viewport={"width": 1400, "height": 1050})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    yield page
    page.close()


def _snapshot(b) -> tuple[dict[str, str], str]:
    """The workbench's cells by quantity, and the command shown, read together (one render)."""
    return b.evaluate("[Object.fromEntries([...document.querySelectorAll('#wb [data-q]')]"
                ".map(td => [td.dataset.q, td.textContent])), "
                "document.getElementById('wb-command').textContent]")


def _dry_run(command: str, capsys) -> dict:
    argv = shlex.split(command)
    assert argv[:2] == ["reelsift", "filter"] and argv[-1] == "--dry-run", command
    capsys.readouterr()
    assert main(argv[1:]) == 0
    return json.loads(capsys.readouterr().out)


def _page_counts(cells: dict[str, str], tiers: list[str]) -> tuple[dict, int, dict]:
    kept = {t: int(cells[f"kept:{t}"]) for t in tiers if int(cells[f"kept:{t}"])}
    reasons = {k[2:]: int(v) for k, v in cells.items() if k.startswith("r:") and ":" not in k[2:] and int(v)}
    return kept, int(cells["rejected"]), reasons


def test_slider_moves_the_funnel_to_what_filter_decides(tmp_path, browser, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths: the command on the page is the one run below
    root = make_run_root(Path("run"))
    config = Path("filter.yaml")
    config.write_text(yaml.safe_dump({"filter": {"tiers": {
        "96p": {"min_source_short_side": 96, "short_side": 96, "bounds": {"motion_mean": {"min": 0.5}}},
        "48p": {"min_source_short_side": 48, "short_side": 48, "bounds": {"ocr_area": {"max": 0.05}}},
    }}}))
    page = write_report(root, load_config(config), max_thumbs=2, config_path=str(config)).resolve()
    browser.goto(page.as_uri())
    browser.wait_for_function("document.body.dataset.images !== undefined")
    n_posters = page.read_text().count(" poster=")  # b0 shows in two groups (it failed two bounds)
    assert n_posters == 5
    images = browser.evaluate("[document.body.dataset.images, document.body.dataset.brokenImages]")
    assert images == ["5", "0"]
    tiers = ["96p", "48p"]

    before, command = _snapshot(browser)
    assert _page_counts(before, tiers) == ({"96p": 1, "48p": 1}, 1, {"short_side@96p": 1, "ocr_area@48p": 1})
    out = _dry_run(command, capsys)
    assert _page_counts(before, tiers) == (out["kept_per_tier"], out["rejected"], out["reasons"])

    # A real key press on the slider: End takes 48p's ocr_area max to the top of its range, past
    # b0's text-heavy 0.3, so b0 is now kept at 48p.
    browser.focus("[id='s-48p.ocr_area.max']")
    browser.keyboard.press("End")
    browser.wait_for_function("document.getElementById('wb-command').textContent.includes('48p.bounds.ocr_area.max=')")
    after, command = _snapshot(browser)
    assert "--set filter.tiers.48p.bounds.ocr_area.max=" in command
    out = _dry_run(command, capsys)
    assert out["kept_per_tier"] == {"96p": 1, "48p": 2} and out["rejected"] == 0
    assert _page_counts(after, tiers) == (out["kept_per_tier"], out["rejected"], out["reasons"])
    assert after["kept:48p:change"] == "+1" and after["rejected:change"] == "-1"
    assert after["kept_s:48p"] == "2.0 s"  # hours follow: a1 and b0, one second each
    crossing = browser.evaluate("document.getElementById('wb-crossing').textContent")
    assert "b0" in crossing and "rejected → kept @48p" in crossing
    assert browser.evaluate("document.querySelectorAll('#wb-crossing video.preview').length") == 1

    # A preview plays on hover: its time advances.
    browser.hover("section video.preview")
    browser.wait_for_function("(() => { const v = document.querySelector('section video.preview'); "
                     "return !v.paused && v.currentTime > 0.3; })()")
    assert browser.errors == []


_DECIDE_ALL = """(B => { const r = window.reelsift, tiers = JSON.parse(
    document.getElementById('reelsift-data').textContent).tiers;
  const name = t => t < 0 ? null : tiers[t].name;
  return Array.from({length: r.n}, (_, i) => { const d = r.decideRow(i, B), f = r.decideFast(i, B);
    return [name(d.tier), d.keep, d.reasons, name(f.tier), f.heads]; }); })"""


def test_page_decides_as_filter_reason_for_reason(tmp_path, browser):
    """Every clip of a run full of edge cases, at the config and with moved bounds."""
    root = synth_root(tmp_path / "run", 1500, seed=1)
    config = write_config(tmp_path / "filter.yaml")
    cfg = load_config(config)
    page = write_report(root, cfg, max_thumbs=0, max_examples=0, config_path=str(config))
    browser.goto(page.as_uri())
    ids = browser.evaluate("JSON.parse(document.getElementById('reelsift-data').textContent).sample.ids")
    moved = load_config(config, [f"filter.tiers.720p.bounds.motion_mean.min={float(np.float32(0.3))!r}",
                                 "filter.tiers.256p.bounds.ocr_area.max=0.1",
                                 "filter.tiers.480p.bounds.quality_dark_frac.max=0.05"])
    for filt in (cfg.filter, moved.filter):
        run_filter(root, filt)
        want = {r["clip_id"]: r for r in
                query(root, "SELECT clip_id, tier, keep, reasons FROM decisions").to_pylist()}
        bounds = [[{"min": b.min, "max": b.max} for b in t.bounds.values()] for _, t in filt.ordered()]
        got = browser.evaluate(f"{_DECIDE_ALL}({json.dumps(bounds)})")
        assert len(ids) == len(want) == len(got) == 1500
        mismatched = []
        for i, (tier, keep, reasons, fast_tier, heads) in zip(ids, got, strict=True):
            w = want[i]
            if (tier, keep, reasons) != (w["tier"], w["keep"], w["reasons"]) or fast_tier != (
                    w["tier"] if w["keep"] else None) or heads != ([] if w["keep"] else
                                                                  [reason_head(r) for r in w["reasons"]]):
                mismatched.append((i, tier, keep, reasons, fast_tier, heads, w))
        assert mismatched == [], mismatched[:3]
        assert sum("missing" in r for w in want.values() for r in w["reasons"]) > 0  # edge cases are there
        assert sum(r.startswith("duplicate_of=") for w in want.values() for r in w["reasons"]) > 0

    rng = np.random.default_rng(0)
    values = [1.0625, 0.03125, 2.5e-05, 12345.5, 99995.0, 0.00012345, 1e-05, 123456789.0, 0.5, 16.0,
              1e16, 0.1, 0.30000001192092896, 9.9995, 1234.5, 0.0001, 1e-300, 5e-324]
    values += [float(np.float32(v)) for v in rng.lognormal(0, 6, 300)] + list(rng.normal(0, 100, 100))
    js = browser.evaluate(f"{json.dumps(values)}.map(window.reelsift.fmt4g)")
    assert js == [f"{v:.4g}" for v in values]
    assert browser.errors == []


def test_estimates_hold_the_truth_within_their_interval(tmp_path, browser, capsys):
    """3000 clips, 600 in the page: exact at the config, estimates within ± once sliders move."""
    root = synth_root(tmp_path / "run", 3000, seed=2)
    config = write_config(tmp_path / "filter.yaml")
    page = write_report(root, load_config(config), max_thumbs=0, max_examples=0, sample_rows=600,
                        config_path=str(config))
    browser.goto(page.as_uri())
    tiers = ["720p", "480p", "256p"]
    cells, command = _snapshot(browser)
    out = _dry_run(command, capsys)
    assert _page_counts(cells, tiers) == (out["kept_per_tier"], out["rejected"], out["reasons"])
    note = browser.evaluate("document.getElementById('wb').textContent")
    assert "a fixed random sample of 600 of the 3000" in note

    for slider, value in (("480p.motion_mean.min", "0.9"), ("256p.ocr_area.max", "0.02")):
        browser.evaluate(f"(() => {{ const n = document.getElementById('s-{slider}').parentNode"
                   f".querySelector('.num'); n.value = '{value}'; "
                   "n.dispatchEvent(new Event('change')); })()")
    browser.wait_for_function(
        "document.getElementById('wb-command').textContent.includes('ocr_area.max=0.02 ')")
    cells, command = _snapshot(browser)
    assert "--set filter.tiers.480p.bounds.motion_mean.min=0.9 " in command
    out = _dry_run(command, capsys)
    truth = {**{f"kept:{t}": out["kept_per_tier"].get(t, 0) for t in tiers}, "rejected": out["rejected"],
             **{f"r:{h}": n for h, n in out["reasons"].items()}}
    assert truth["kept:480p"] < int(cells["kept:480p:config"])  # the moves changed something
    for key, true in truth.items():
        m = re.fullmatch(r"≈(-?\d+) ±(\d+)", cells[key])
        assert m, cells[key]
        est, err = int(m.group(1)), int(m.group(2))
        assert abs(est - true) <= err, (key, est, err, true)
        assert err < 0.2 * 3000, (key, err)  # and the interval says something
    # a count no sample clip changes gets the rule of three, 3 N/n; hours get 3 N/n x the mean duration
    unseen = browser.evaluate("(() => { const E = reelsift.estimate(); return [...E.keys]"
                        ".filter(k => !E.est(k).seen).map(k => [k, E.est(k).err]); })()")
    assert any(k.startswith("r:") for k, _ in unseen) and any(k.startswith("kept_s:") for k, _ in unseen)
    for key, err in unseen:
        assert (err > 15 * 1.5) if key.startswith("kept_s:") or key == "rejected_s" else err == 15, (key, err)
    assert browser.errors == []

