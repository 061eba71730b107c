"""`reelsift report`: one self-contained HTML page about a run root, readable offline.

`write_report(root, cfg)` writes `<root>/report/index.html` and middle-frame thumbnails under
`<root>/report/thumbs/<clip_id>.jpg` (cached: clip ids never change meaning). Charts are inline
SVG drawn here; there is no CDN, no external script or font. Sections: the funnel, rejection
reasons, per-tier summary, score histograms with the config's thresholds, thumbnails of kept and
rejected clips, and every error row. Numbers come from the named queries in manifests/queries/.
"""

from __future__ import annotations

import html
import math
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from curation.config import CurateConfig
from curation.stages.filter import config_hash
from filters.policy import Bound, FilterConfig
from filters.video import VideoDecodeError, even_size, iter_frames
from manifests import queries
from manifests.schemas import SCORES, TABLES
from manifests.store import Table

# Shown on every thumbnail card and as histograms even where no tier bounds them.
MAIN_SCORES = ("motion_mean", "ocr_area", "quality_sharpness", "aesthetic_mean")
UNTRAINED_SCORES = ("aesthetic_mean", "aesthetic_min")  # random weights under offline.yaml
THUMB_SHORT_SIDE = 144
HIST_SAMPLE = 200_000  # histograms read at most this many scored clips


def write_report(root: str | Path, cfg: CurateConfig, *, max_thumbs: int = 12) -> Path:
    """Write `<root>/report/index.html` (+ thumbs/) and return its path.

    max_thumbs: thumbnails per group (each kept tier, each rejection reason), >= 0.
    Histogram threshold lines are `cfg.filter`'s tier bounds.
    """
    if max_thumbs < 0:
        raise ValueError(f"max_thumbs must be >= 0, got {max_thumbs}")
    root = Path(root)
    out = root / "report"
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    con = queries.connect(root)
    results = {name: queries.run(root, name).to_pylist()
               for name in ("funnel", "rejected-by-reason", "tier-summary", "errors")}
    score_cols = ", ".join(f's."{c}"' for c in _score_columns(cfg.filter))
    scored = con.sql(f"""
        SELECT * FROM (
            SELECT least(c.width, c.height) AS short_side, {score_cols}
            FROM clips c JOIN scores s ON s.clip_id = c.clip_id AND s.status = 'ok' WHERE c.status = 'ok'
        ) USING SAMPLE reservoir({HIST_SAMPLE} ROWS) REPEATABLE (0)
    """).to_arrow_table()
    n_scored = con.execute("SELECT count(*) FROM clips c JOIN scores s ON s.clip_id = c.clip_id "
                           "AND s.status = 'ok' WHERE c.status = 'ok'").fetchall()[0][0]
    untrained = bool(con.execute("SELECT bool_or(aesthetic_untrained) FROM scores").fetchall()[0][0])
    current = con.execute(
        "SELECT any_value(filter_run), any_value(config_hash), count(*) FROM decisions").fetchall()[0]
    has_captions = "captions" in TABLES and Table(root, "captions").exists()

    body = [
        _header(root, cfg, current, untrained),
        _section("Funnel", _funnel(results["funnel"], cfg.filter, has_captions)),
        _section("Rejection reasons", _reasons(results["rejected-by-reason"])),
        _section("Kept clips per tier", _table(results["tier-summary"], untrained_cols=("aesthetic_mean",))),
        _section("Scores per tier", _histograms(scored, n_scored, cfg.filter)),
        _section("Clips", _thumbnails(con, out, cfg.filter, max_thumbs, untrained)),
        _section(f"Errors ({len(results['errors'])})",
                 _table(results["errors"]) if results["errors"] else "<p>No error rows.</p>"),
    ]
    page = _PAGE.format(title=html.escape(f"reelsift report: {root.name}"), body="\n".join(body))
    index = out / "index.html"
    tmp = out / f".tmp-{uuid.uuid4().hex}.html"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    return index


# ---------------------------------------------------------------- sections


def _header(root: Path, cfg: CurateConfig, current, untrained: bool) -> str:
    run, chash, n = current
    decided = (f"decisions from filter run <code>{_e(run)}</code> "
               f"(config <code>{_e(chash)}</code>, {n} clips)" if n else "no decisions yet")
    parts = [f"<h1>reelsift report</h1><p class=meta>run root <code>{_e(root.resolve())}</code> · "
             f"written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · {decided}</p>"]
    if n and chash != config_hash(cfg.filter):
        parts.append("<p class=warn>The thresholds drawn below (this config) differ from those that made "
                     "the current decisions: run <code>reelsift filter</code> with this config to apply "
                     "them.</p>")
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
            lines.append((label, r["hours"] or 0.0, f"{_n(r['n'], unit)}, {_hours(r['hours'])}{note}"))
    return ("<p>Bar length = hours (source duration). Kept/sharded are split per tier.</p>"
            + _bars_svg(lines))


def _reasons(rows: list[dict]) -> str:
    if not rows:
        return "<p>No clip was rejected.</p>"
    bars = []
    for r in rows:
        text = f"{r['rejected']} rejected ({_hours(r['rejected_hours'])})"
        if r["kept_lower"]:
            text += f", {r['kept_lower']} kept lower ({_hours(r['kept_lower_hours'])})"
        bars.append((f"{r['stage']}: {r['reason']}", r["rejected"], text))
    return ("<p><i>rejected</i>: clips dropped with this reason among theirs; <i>kept lower</i>: clips that "
            "missed this tier for this reason but were kept in a lower tier. A clip counts under each of "
            "its reasons.</p>" + _bars_svg(bars) + _table(rows))


def _histograms(scored, n_scored: int, filt: FilterConfig) -> str:
    cols = _score_columns(filt)
    short = np.asarray(scored.column("short_side").to_pylist() or [], dtype=float)
    tiers = filt.ordered()
    head = "".join(f"<th>{_e(t)} (source ≥ {tc.min_source_short_side}px)</th>" for t, tc in tiers)
    rows = []
    for col in cols:
        values = np.asarray([np.nan if v is None else v for v in scored.column(col).to_pylist()], dtype=float)
        cells = []
        for _tier, tc in tiers:
            eligible = values[short >= tc.min_source_short_side] if len(short) else values
            bound = tc.bounds.get(col)
            cells.append(f"<td>{_histogram_svg(eligible, bound)}</td>")
        label = _e(col) + (" <span class=warn-inline>UNTRAINED</span>" if col in UNTRAINED_SCORES else "")
        rows.append(f"<tr><th class=rowhead>{label}</th>{''.join(cells)}</tr>")
    sample = (f" (a random sample of {scored.num_rows} of the {n_scored} scored clips)"
              if n_scored > scored.num_rows else "")
    return (f"<p>Scored clips whose source is large enough for each tier{sample}. Red lines: this config's "
            "bounds; the shaded side fails.</p>"
            f"<table class=hist><tr><th></th>{head}</tr>{''.join(rows)}</table>")


_GROUPS_SQL = """
    WITH g AS (
        SELECT 0 AS kind, 'kept @' || d.tier AS grp, d.tier, c.clip_id, c.duration_s
        FROM clips c JOIN decisions d USING (clip_id) WHERE c.status = 'ok' AND d.keep
        UNION ALL
        SELECT DISTINCT 1, 'rejected at split: ' || split_part(r, '=', 1), NULL, clip_id, duration_s
        FROM (SELECT clip_id, duration_s, unnest(reasons) AS r FROM clips WHERE status = 'rejected')
        UNION ALL  -- a rejected clip failed every tier: group it by each score that failed
        SELECT DISTINCT 2, 'rejected by filter: ' || split_part(r, '=', 1), NULL, clip_id, duration_s
        FROM (SELECT c.clip_id, c.duration_s, unnest(d.reasons) AS r
              FROM clips c JOIN decisions d USING (clip_id) WHERE c.status = 'ok' AND NOT d.keep)
        UNION ALL
        SELECT 3, 'not decided yet', NULL, clip_id, duration_s FROM clips
        WHERE status = 'ok' AND clip_id NOT IN (SELECT clip_id FROM decisions)
    )
    SELECT kind, grp, tier, clip_id, count(*) OVER w AS n, sum(duration_s) OVER w AS seconds,
           row_number() OVER (PARTITION BY grp ORDER BY clip_id) AS rn
    FROM g WINDOW w AS (PARTITION BY grp)
    QUALIFY rn <= {limit}
"""


def _thumbnails(con, out: Path, filt: FilterConfig, max_thumbs: int, untrained: bool) -> str:
    """Cards of the first `max_thumbs` clips (by id) of each group; groups and counts come from SQL."""
    picked = con.sql(_GROUPS_SQL.format(limit=max(max_thumbs, 1))).to_arrow_table().to_pylist()
    if not picked:
        return "<p>No clips yet.</p>"
    shown = [c for c in MAIN_SCORES if c in SCORES.names]
    con.register("__report_clip_ids", pa.table({"clip_id": sorted({p["clip_id"] for p in picked})}))
    details = con.sql(f"""
        SELECT c.clip_id, c.path, c.start_frame, c.end_frame, c.fps, c.width, c.height, c.duration_s,
               c.reasons AS clip_reasons, v.rotation, d.keep, d.reasons,
               coalesce(cap.caption, sh.caption) AS caption, cap.untrained AS caption_untrained,
               {", ".join(f's."{c}"' for c in shown)}
        FROM __report_clip_ids ids
        JOIN clips c ON c.clip_id = ids.clip_id
        LEFT JOIN (SELECT video_id, any_value(rotation) AS rotation FROM videos WHERE status = 'ok'
                   GROUP BY video_id) v ON v.video_id = c.video_id
        LEFT JOIN decisions d ON d.clip_id = c.clip_id
        LEFT JOIN scores s ON s.clip_id = c.clip_id AND s.status = 'ok'
        LEFT JOIN (SELECT clip_id, any_value(caption) AS caption, bool_or(untrained) AS untrained
                   FROM captions WHERE status = 'ok' GROUP BY clip_id) cap ON cap.clip_id = c.clip_id
        LEFT JOIN (SELECT clip_id, any_value(caption) AS caption FROM shards GROUP BY clip_id) sh
               ON sh.clip_id = c.clip_id
    """).to_arrow_table().to_pylist()
    by_id = {d["clip_id"]: d for d in details}
    groups: dict[str, dict] = {}
    for p in picked:
        g = groups.setdefault(p["grp"], dict(p, clips=[]))
        if len(g["clips"]) < max_thumbs:
            g["clips"].append(by_id[p["clip_id"]])
    tier_rank = {t: i for i, (t, _) in enumerate(filt.ordered())}
    order = sorted(groups.values(), key=lambda g: (g["kind"], tier_rank.get(g["tier"], len(tier_rank)),
                                                   -g["n"], g["grp"]))
    parts = [f"<p>Middle frame of up to {max_thumbs} clips per group (the first by clip id). Rejected clips "
             "are grouped by each score that failed (at every tier), so a clip can appear more than once. "
             "Red: why the clip was dropped; grey: why a kept clip missed the tiers above its own."
             + (" Aesthetic scores marked * are UNTRAINED (random weights)." if untrained else "") + "</p>"]
    for g in order:
        cards = "".join(_card(c, out, shown) for c in g["clips"])
        size = f"{_n(g['n'], 'clip')}, {_hours(g['seconds'] / 3600)}"
        parts.append(f"<h3>{_e(g['grp'])} <small>({size})</small></h3><div class=grid>{cards}</div>")
    return "\n".join(parts)


def _card(c: dict, out: Path, shown: list[str]) -> str:
    rel = f"thumbs/{c['clip_id']}.jpg"
    try:
        _write_thumb(c, out / rel)
        img = f'<img src="{_e(rel)}" alt="clip {_e(c["clip_id"])}">'
    except (VideoDecodeError, OSError, ValueError) as exc:
        img = f"<div class=noimg>no thumbnail: {_e(exc)}</div>"
    scores = " · ".join(f"{_e(k)} {_fmt(c[k])}" + ("*" if k in UNTRAINED_SCORES else "")
                        for k in shown if c.get(k) is not None)
    reasons = (c["clip_reasons"] or []) + (c["reasons"] or [])
    why = "missed" if c["keep"] else "reasons"
    caption = _e(c["caption"]) if c["caption"] else "<i>no caption</i>"
    if c["caption"] and c["caption_untrained"]:
        caption += " <span class=warn-inline>(UNTRAINED captioner)</span>"
    return (f"<figure class=card>{img}<figcaption><code>{_e(c['clip_id'])}</code> "
            f"{_fmt(c['duration_s'])}s {c['width']}×{c['height']}"
            f"<div class=scores>{scores or 'not scored'}</div>"
            + (f"<div class={why}>{_e(', '.join(reasons))}</div>" if reasons else "")
            + f"<div class=caption>{caption}</div>"
            "</figcaption></figure>")


def _write_thumb(c: dict, dest: Path) -> None:
    """Middle frame of the clip as a JPEG of short side <= THUMB_SHORT_SIDE (kept if present)."""
    if dest.exists():
        return
    size = even_size(int(c["width"]), int(c["height"]), THUMB_SHORT_SIDE)
    mid = (int(c["start_frame"]) + int(c["end_frame"])) // 2
    frames = [f for _, f in iter_frames(c["path"], mid, mid + 1, float(c["fps"]), size=size,
                                        rotation=int(c["rotation"] or 0))]
    if not frames:
        raise VideoDecodeError(c["path"], f"no frame decoded at index {mid}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError(f"JPEG encoding failed for clip {c['clip_id']}")
    tmp = dest.with_name(f".tmp-{uuid.uuid4().hex}.jpg")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, dest)


# ---------------------------------------------------------------- SVG and HTML helpers


def _bars_svg(bars: list[tuple[str, float, str]], width: int = 900, row: int = 22) -> str:
    """Horizontal bars: (label, value, text after the bar); lengths relative to the largest."""
    top = max((v or 0) for _, v, _ in bars) or 1.0
    label_w, bar_w = 260, 330
    h = row * len(bars) + 6
    items = []
    for i, (label, value, text) in enumerate(bars):
        y = 3 + i * row
        w = max(1.0, bar_w * (value or 0) / top) if value else 0
        items.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" '
                     f'xml:space="preserve">{_e(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="#4c78a8"/>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{_e(text)}</text>')
    return (f'<svg class=chart width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(items)}</svg>')


def _histogram_svg(values: np.ndarray, bound: Bound | None, bins: int = 20, w: int = 300,
                   h: int = 150) -> str:
    """Histogram of the finite `values` with the bound's min/max as red lines, failing side shaded."""
    vals = values[np.isfinite(values)]
    svg = f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">'
    if len(vals) == 0:
        return svg + (f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle" fill="#888">'
                      'no scored clips</text></svg>')
    lo, hi = float(vals.min()), float(vals.max())
    span = hi - lo
    marks = [] if bound is None else [m for m in ((bound.min, "min"), (bound.max, "max")) if m[0] is not None]
    for value, _ in marks:  # widen the axis to show a bound unless it would squash the data
        if lo <= value <= hi or span == 0 or max(hi, value) - min(lo, value) <= 3 * span:
            lo, hi = min(lo, value), max(hi, value)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
    left, right, top, bottom = 28, w - 8, 16, h - 34
    x = lambda v: left + (right - left) * (v - lo) / (hi - lo)  # noqa: E731
    ymax = max(int(counts.max()), 1)
    parts = [svg]
    for value, kind in marks:  # shade the failing side first, under the bars
        xv = min(max(x(value), left), right)
        x0, x1 = (left, xv) if kind == "min" else (xv, right)
        parts.append(f'<rect x="{x0:.1f}" y="{top}" width="{x1 - x0:.1f}" height="{bottom - top}" '
                     f'fill="#fbe3e3"/>')
    bw = (right - left) / bins
    for i, n in enumerate(counts):
        if n:
            bh = (bottom - top) * n / ymax
            parts.append(f'<rect x="{left + i * bw + 0.5:.1f}" y="{bottom - bh:.1f}" width="{bw - 1:.1f}" '
                         f'height="{bh:.1f}" fill="#4c78a8">'
                         f'<title>{_fmt(edges[i])}..{_fmt(edges[i + 1])}: {n}</title></rect>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>'
                 f'<text x="{left - 4}" y="{top + 9}" text-anchor="end" font-size="10">{ymax}</text>'
                 f'<text x="{left}" y="{bottom + 13}" font-size="10">{_fmt(lo)}</text>'
                 f'<text x="{right}" y="{bottom + 13}" font-size="10" text-anchor="end">{_fmt(hi)}</text>')
    failing = 0
    for value, kind in marks:
        failing += int((vals < value).sum() if kind == "min" else (vals > value).sum())
        if lo <= value <= hi:
            xv = x(value)
            anchor = "end" if xv > (left + right) / 2 else "start"
            parts.append(f'<line x1="{xv:.1f}" y1="{top}" x2="{xv:.1f}" y2="{bottom}" stroke="#d62728" '
                         f'stroke-width="2" stroke-dasharray="4 2"/>'
                         f'<text x="{xv:.1f}" y="{top - 4}" font-size="10" fill="#d62728" '
                         f'text-anchor="{anchor}">{kind} {_fmt(value)}</text>')
        else:
            anchor = "end" if value > hi else "start"
            parts.append(f'<text x="{right if value > hi else left}" y="{top - 4}" font-size="10" '
                         f'fill="#d62728" text-anchor="{anchor}">{kind} {_fmt(value)} (off scale)</text>')
    note = f"n={len(vals)}" + (f", {failing} outside bounds" if marks else ", no bound")
    parts.append(f'<text x="{left}" y="{h - 4}" font-size="11" fill="#444">{_e(note)}</text></svg>')
    return "".join(parts)


def _table(rows: list[dict], untrained_cols: tuple[str, ...] = ()) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{_e(c)}{' (UNTRAINED)' if c in untrained_cols else ''}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table class=data><tr>{head}</tr>{body}</table>"


def _section(title: str, content: str) -> str:
    return f"<section><h2>{_e(title)}</h2>\n{content}\n</section>"


def _score_columns(filt: FilterConfig) -> list[str]:
    """Score columns some tier bounds (config order), then the main scores."""
    cols = [c for _, t in filt.ordered() for c in t.bounds]
    cols += [c for c in MAIN_SCORES if c in SCORES.names]
    return list(dict.fromkeys(cols))


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _hours(h: float | None) -> str:
    h = h or 0.0
    return f"{h:.2f} h" if h >= 1 else f"{h * 60:.1f} min" if h * 60 >= 1 else f"{h * 3600:.1f} s"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, datetime):
        return f"{v:%Y-%m-%d %H:%M:%S}"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return str(v)


def _e(v) -> str:
    return html.escape(str(v), quote=True)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }}
h3 small {{ color: #666; font-weight: normal; }}
.meta {{ color: #555; }}
.warn {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: 6px 10px; }}
.warn-inline {{ color: #b35c00; font-size: 11px; }}
svg text {{ font-size: 12px; fill: #222; }}
table.data {{ border-collapse: collapse; margin: 8px 0; }}
table.data td, table.data th {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left;
  font-size: 13px; }}
table.hist th {{ font-weight: normal; color: #555; }}
table.hist th.rowhead {{ text-align: right; font-weight: bold; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 12px; }}
.card {{ margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fafafa; }}
.card img {{ display: block; max-width: 100%; height: auto; margin: 0 auto; }}
.card figcaption {{ font-size: 12px; margin-top: 4px; word-break: break-word; }}
.noimg {{ height: 120px; background: #eee; color: #a00; font-size: 12px; padding: 6px; }}
.scores {{ color: #333; }} .reasons {{ color: #a33; }} .missed {{ color: #888; }}
.caption {{ color: #555; margin-top: 2px; }}
</style></head>
<body>
{body}
<p class=meta id="img-check"></p>
<script>
// Reports broken thumbnails on the page (and to tests, through data-broken-images).
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.dataset.images = imgs.length;
  document.body.dataset.brokenImages = broken;
  document.getElementById("img-check").textContent =
    broken ? broken + " of " + imgs.length + " thumbnails failed to load"
           : imgs.length + " thumbnails loaded";
}});
</script>
</body></html>
"""
