"""Small HTML helpers of the report: escaping, number formats, tables and an SVG bar chart."""

from __future__ import annotations

import html
import math
from datetime import datetime


def bars_svg(bars: list[tuple[str, float, str]], width: int = 900, row: int = 22) -> str:
    """Horizontal bars: (label, value, text after the bar); lengths relative to the largest."""
    top = max((v or 0) for _, v, _ in bars) or 1.0
    label_w, bar_w = 260, 330
    h = row * len(bars) + 6
    items = []
    for i, (label, value, text) in enumerate(bars):
        y = 3 + i * row
        w = max(1.0, bar_w * (value or 0) / top) if value else 0
        items.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" '
                     f'xml:space="preserve">{e(label)}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="#4c78a8"/>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{e(text)}</text>')
    return (f'<svg class=chart width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(items)}</svg>')


def table(rows: list[dict], untrained_cols: tuple[str, ...] = ()) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{e(c)}{' (UNTRAINED)' if c in untrained_cols else ''}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{e(fmt(r[c]))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table class=data><tr>{head}</tr>{body}</table>"


def section(title: str, content: str, sid: str = "") -> str:
    return f"<section{f' id={sid}' if sid else ''}><h2>{e(title)}</h2>\n{content}\n</section>"


def n_of(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def hours(h: float | None) -> str:
    h = h or 0.0
    return f"{h:.2f} h" if h >= 1 else f"{h * 60:.1f} min" if h * 60 >= 1 else f"{h * 3600:.1f} s"


def fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, datetime):
        return f"{v:%Y-%m-%d %H:%M:%S}"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return str(v)


def e(v) -> str:
    return html.escape(str(v), quote=True)
