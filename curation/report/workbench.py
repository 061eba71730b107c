"""The workbench's page data: sliders, exact counts at the config, exact histograms, the sample,
and the clips near each bound (with their media) that the page shows when they cross it.

The page estimates what `filter` would decide with the sliders' values by a difference
estimator: exact count at the config (SQL, every clip) + N/n x (change seen on the sample).
With the whole run in the sample (n = N) this is exact; otherwise the page shows a 95% interval.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import duckdb
import numpy as np

from curation.report import data
from curation.report.cards import clip_details
from curation.report.media import write_all_media
from filters.config import FilterConfig


def build(con: duckdb.DuckDBPyConnection, out: Path, filt: FilterConfig, *, extra_cols: list[str],
          dedup: bool, sample_rows: int, max_examples: int, command: list[str],
          ranked: tuple[str, ...] = ()) -> dict:
    """Everything report.js needs, as one JSON-able dict. `extra_cols`: scores drawn as
    histograms though no tier bounds them. `command`: `reelsift filter ...` argv the sliders' `--set`
    arguments are appended to. `ranked`: see `cards.clip_details`."""
    tiers = data.tier_heads(filt)
    bounded = list(dict.fromkeys(b["col"] for t in tiers for b in t["bounds"]))
    owner = data.score_owner()
    cols = bounded + [c for c in extra_cols if c not in bounded and c in owner]
    n_total = data.load_candidates(con, filt, cols, dedup)
    hist = data.histograms(con, cols, tiers)
    sample, table = data.sample(con, bounded, n_total, sample_rows)
    sliders = _sliders(tiers, hist)
    picked = _near_bounds(table, tiers, sliders, max_examples)
    media = {}
    if picked:
        details = clip_details(con, [sample["ids"][i] for i in picked], [], ranked)
        made = write_all_media(list(details.values()), out)
        media = {i: made[sample["ids"][i]] for i in picked if sample["ids"][i] in made}
    return dict(tiers=tiers, sliders=sliders, exact=data.exact_counts(con, tiers), n_total=n_total,
                hist=hist, sample=sample, media=media, hist_cols=cols, n_bins=data.N_BINS,
                command=" ".join(shlex.quote(a) for a in command))


def _nice_step(span: float) -> float:
    raw = span / 200 if span > 0 else 0.01
    p = 10 ** math.floor(math.log10(raw))
    return next(m * p for m in (1, 2, 5, 10) if m * p >= raw)


def _sliders(tiers: list[dict], hist: dict) -> list[dict]:
    """One slider per bounded end (min or max) per tier, over the histogram's axis."""
    out = []
    for t in tiers:
        for b in t["bounds"]:
            h = hist.get(b["col"])
            for end in ("min", "max"):
                value = b[end]
                if value is None:
                    continue
                pad = max(1.0, abs(value))
                lo, hi = (h["lo"], h["hi"]) if h else (value - pad, value + pad)
                lo, hi = min(lo, value), max(hi, value)
                step = _nice_step(hi - lo)
                out.append(dict(id=f"{t['name']}.{b['col']}.{end}", tier=t["name"], col=b["col"], end=end,
                                value=value, lo=math.floor(lo / step) * step, hi=math.ceil(hi / step) * step,
                                step=step, key=f"filter.tiers.{t['name']}.bounds.{b['col']}.{end}"))
    return out


def _near_bounds(table, tiers: list[dict], sliders: list[dict], budget: int, per_side: int = 2) -> list[int]:
    """Sample rows to give previews: the `per_side` nearest each slider's value on each side, then
    clips spread over each bounded score's range (so a slider moved far still finds some), round
    robin over the sliders, at most `budget`."""
    if table.num_rows == 0 or budget <= 0:
        return []
    short = table.column("short_side").to_numpy()
    by_tier = {t["name"]: t for t in tiers}
    queues = []
    for s in sliders:
        v = table.column(s["col"]).fill_null(math.nan).to_numpy()
        ok = np.flatnonzero((short >= by_tier[s["tier"]]["min_short"]) & np.isfinite(v))
        if len(ok) == 0:
            continue
        below = ok[v[ok] < s["value"]]
        above = ok[v[ok] >= s["value"]]
        near = list(below[np.argsort(s["value"] - v[below], kind="stable")][:per_side])
        near += list(above[np.argsort(v[above] - s["value"], kind="stable")][:per_side])
        spread = ok[np.argsort(v[ok], kind="stable")][np.linspace(0, len(ok) - 1, 6).astype(int)]
        queues.append([int(i) for i in near] + [int(i) for i in spread])
    picked: dict[int, None] = {}
    while len(picked) < budget and any(queues):
        for q in queues:
            while q and q[0] in picked:
                q.pop(0)
            if q and len(picked) < budget:
                picked[q.pop(0)] = None
    return sorted(picked)
