"""`write_report`: the page, its static sections, and the workbench data the page's script reads."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from curation.config import CurateConfig
from curation.report import workbench
from curation.report.cards import MAIN_SCORES, UNTRAINED_SCORES, clip_groups
from curation.report.data import SAMPLE_ROWS
from curation.report.html import bars_svg, e, hours, n_of, section, table
from curation.report.media import media_folders
from curation.stages.filter import config_hash
from filters.config import FilterConfig
from manifests import db, fs, queries
from manifests.commit import atomic_write
from manifests.schemas import TABLES
from manifests.store import Table

MEMORY_LIMIT = db.MEMORY_LIMIT
"""DuckDB's limit here. At 384 MB the report's joins over 10^7 clips spilled more: 278 CPU s, 792
MiB peak, against 240 CPU s, 901 MiB at 512 MB (10M clips, shared 2-core machine)."""

def write_report(root: str | Path, cfg: CurateConfig, *, max_thumbs: int = 12, max_previews: int = 60,
                 sample_rows: int = SAMPLE_ROWS, max_examples: int = 48, config_path: str | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Write `<root>/report/index.html` (+ thumbs/, previews/) and return its path.

    max_thumbs: clips per group in the Clips section (each kept tier, each reason), >= 0.
    max_previews: of those, how many get a preview (taken in turn from each group); others a still.
    sample_rows: candidate clips embedded for the sliders (all of them when the run is smaller).
    max_examples: clips near the bounds given a preview for the workbench, >= 0.
    config_path, overrides: how `cfg` was loaded; the page's `reelsift filter` command repeats them.
    """
    if min(max_thumbs, max_previews, max_examples) < 0 or sample_rows < 1:
        raise ValueError(f"max_thumbs, max_previews and max_examples must be >= 0 and sample_rows >= 1, got "
                         f"{max_thumbs}, {max_previews}, {max_examples}, {sample_rows}")
    root = fs.upath(root)
    out = root / "report"
    media_folders(out)
    with tempfile.TemporaryDirectory(prefix="reelsift-report-") as spill:
        return _write(root, out, cfg, db.connect(root), spill, max_thumbs=max_thumbs,
                      max_previews=max_previews, sample_rows=sample_rows, max_examples=max_examples,
                      config_path=config_path, overrides=overrides)


def _write(root: Path, out: Path, cfg: CurateConfig, con, spill: str, *, max_thumbs: int, max_previews: int,
           sample_rows: int, max_examples: int, config_path: str | None, overrides) -> Path:
    # DuckDB holds at most MEMORY_LIMIT and spills the rest: the driver's memory stays bounded at any scale.
    db.bound(con, MEMORY_LIMIT)
    con.execute(f"SET temp_directory = '{spill}'")
    _snapshot(con)
    results = {name: con.sql(queries.load(name)).to_arrow_table().to_pylist()
               for name in ("funnel", "rejected-by-reason", "tier-summary")}
    untrained = bool(con.execute("SELECT bool_or(aesthetic_untrained) FROM scores").fetchall()[0][0])
    current = con.execute(
        "SELECT any_value(filter_run), any_value(config_hash), count(*) FROM decisions").fetchall()[0]
    has_captions = "captions" in TABLES and Table(root, "captions").exists()
    command = ["reelsift", "filter", *(["--config", config_path] if config_path else []), "--root", str(root)]
    for o in overrides:
        command += ["--set", o]
    bench = workbench.build(con, out, cfg.filter, extra_cols=list(MAIN_SCORES), dedup=cfg.dedup.enabled,
                            sample_rows=sample_rows, max_examples=max_examples, command=command,
                            ranked=RANKED)
    bench["untrained"] = list(UNTRAINED_SCORES) if untrained else []

    body = [
        _header(root, cfg, current, untrained),
        section("Funnel (the stored decisions)", _funnel(results["funnel"], cfg.filter, has_captions)),
        section("Thresholds: move a bound, see what filter would decide", _WORKBENCH, sid="workbench"),
        section("Rejection reasons (the stored decisions)", table(results["rejected-by-reason"])),
        section("Kept clips per tier", table(results["tier-summary"], untrained_cols=("aesthetic_mean",))),
        section("Clips", clip_groups(con, out, cfg.filter, max_thumbs, max_previews, untrained, RANKED)),
        _errors(con),
    ]
    blob = json.dumps(bench, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    assets = resources.files("curation.report") / "assets"
    page = _PAGE.format(title=e(f"reelsift report: {root.name}"), body="\n".join(body), data=blob,
                        css=(assets / "report.css").read_text(encoding="utf-8"),
                        js=(assets / "report.js").read_text(encoding="utf-8"))
    index = out / "index.html"
    with atomic_write(index) as fh:  # temp + rename on disk; object + commit marker on S3
        fh.write(page.encode("utf-8"))
    return index


SNAPSHOT = {"clips": "", "decisions": "", "scores": "EXCLUDE (clip_embedding)",
            "captions": "EXCLUDE (caption)", "shards": "", "alignment": "", "duplicates": ""}
"""Newest-wins views the report reads many times, and the wide columns it never reads there."""

RANKED = ("clips", "decisions", "scores", "shards")
"""Snapshots that hold every column `cards.clip_details` reads (captions' text is left out)."""


def _snapshot(con) -> None:
    """Rank each newest-wins view's rows once: a temp table (DuckDB spills it past the memory limit)
    replaces the view for the rest of the report, so every section reads the same snapshot and no
    query ranks 10^7 keys again. (`clip_details` reads the captions' history of a few clips.)"""
    for name, exclude in SNAPSHOT.items():
        columns = set(con.sql(f"SELECT * FROM {name} LIMIT 0").columns)
        exclude = exclude if exclude and exclude.split("(")[1].rstrip(")") in columns else ""
        con.execute(f"CREATE TEMP TABLE __report_{name} AS SELECT * {exclude} FROM {name}")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM __report_{name}")


def _header(root: Path, cfg: CurateConfig, current, untrained: bool) -> str:
    run, chash, n = current
    decided = (f"decisions from filter run <code>{e(run)}</code> "
               f"(config <code>{e(chash)}</code>, {n} clips)" if n else "no decisions yet")
    parts = [f"<h1>reelsift report</h1><p class=meta>run root <code>{e(root.resolve())}</code> · "
             f"written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {decided}</p>"]
    if n and chash != config_hash(cfg.filter):
        parts.append("<p class=warn>The thresholds of this config differ from those that made the stored "
                     "decisions: the workbench starts from this config; run <code>reelsift filter</code> "
                     "with "
                     "it to apply them.</p>")
    if untrained:
        parts.append("<p class=warn><b>Aesthetic/CLIP scores are UNTRAINED</b>: they come from randomly "
                     "initialised tiny models (score.aesthetic.random_init) and carry no meaning.</p>")
    return "\n".join(parts)


def _funnel(rows: list[dict], filt: FilterConfig, has_captions: bool) -> str:
    by_step = {(r["step"], r["tier"]): r for r in rows}
    lines = []
    for step in ("videos", "clips", "scored", "kept", "captioned", "sharded"):
        tiers = ["all"] + ([t for t, _ in filt.ordered()] if step in ("kept", "sharded") else [])
        tiers += sorted({t for s, t in by_step if s == step and t not in tiers})  # tiers no longer in config
        for tier in tiers:
            r = by_step.get((step, tier), {"n": 0, "hours": 0.0})
            label = step if tier == "all" else f"  {step} @{tier}"
            unit = "video" if step == "videos" else "clip"
            note = " (absent: no caption stage has run)" if step == "captioned" and not has_captions else ""
            lines.append((label, r["hours"] or 0.0, f"{n_of(r['n'], unit)}, {hours(r['hours'])}{note}"))
    return ("<p>Bar length = hours (source duration). Kept/sharded are split per tier.</p>"
            + bars_svg(lines))


def _errors(con, max_rows: int = 100, max_kinds: int = 30) -> str:
    """Error rows (named query `errors`): the count per source and message, then the first rows."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE __errors AS {queries.load('errors')}\n")  # read once
    sql = "__errors"
    n = con.sql(f"SELECT count(*) FROM {sql}").fetchall()[0][0]
    if n == 0:
        return section("Errors (0)", "<p>No error rows.</p>")
    kinds = con.sql(f"SELECT source, error, count(*) AS n FROM {sql} GROUP BY ALL "
                    f"ORDER BY n DESC, source, error LIMIT {max_kinds}").to_arrow_table().to_pylist()
    rows = con.sql(f"SELECT * FROM {sql} ORDER BY rowid LIMIT {max_rows}").to_arrow_table().to_pylist()
    more = (f"<p>The first {max_rows} of {n} rows: <code>reelsift sql --named errors</code> lists them "
            "all.</p>" if n > max_rows else "")
    return section(f"Errors ({n})", table(kinds) + more + table(rows))


_WORKBENCH = "<div id=wb><p class=warn>The workbench needs JavaScript: open this file in a browser.</p></div>"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
{css}
</style></head>
<body>
{body}
<p class=meta id="img-check"></p>
<script type="application/json" id="reelsift-data">{data}</script>
<script>
{js}
</script>
</body></html>
"""
