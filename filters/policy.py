"""The threshold policy: stored scores + tier config -> (tier, keep, reasons).

Scorers measure; this module decides. Tiers are tried from the highest source requirement
down; a clip lands in the first tier whose every bound it passes. Each failed bound becomes a
reason string `<score>=<value><op><bound>@<tier>`, e.g. `ocr_area=0.083>0.02@720p` (the format
lives in manifests/reasons.py), so a query can count why clips missed each tier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from filters.config import FilterConfig, TierConfig
from manifests import reasons as reason


@dataclass(frozen=True)
class Decision:
    tier: str | None
    keep: bool
    reasons: list[str]


def check_tier(name: str, tier: TierConfig, source_short_side: int, scores: Mapping[str, Any]) -> list[str]:
    """Reasons the clip fails `tier` (empty when it passes)."""
    reasons = []
    if source_short_side < tier.min_source_short_side:
        reasons.append(reason.short_side(source_short_side, tier.min_source_short_side, name))
    for col, bound in tier.bounds.items():
        value = scores.get(col)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            reasons.append(reason.missing(col, name))
            continue
        value = float(value)
        if bound.min is not None and value < bound.min:
            reasons.append(reason.bound(col, value, "<", bound.min, name))
        if bound.max is not None and value > bound.max:
            reasons.append(reason.bound(col, value, ">", bound.max, name))
    return reasons


def decide(source_short_side: int, scores: Mapping[str, Any], cfg: FilterConfig) -> Decision:
    """Highest tier whose bounds all pass; reasons list every failed bound of higher tiers.

    A kept clip's reasons say why it missed the tiers above its own; a rejected clip's reasons
    say why it missed every tier.
    """
    reasons: list[str] = []
    for name, tier in cfg.ordered():
        failed = check_tier(name, tier, source_short_side, scores)
        if not failed:
            return Decision(tier=name, keep=True, reasons=reasons)
        reasons.extend(failed)
    return Decision(tier=None, keep=False, reasons=reasons)


ALIGN_COLUMNS = frozenset({"clip_score"})
"""Score columns that the alignment table provides (they exist only after captioning)."""


def pre_align_filter(cfg: FilterConfig) -> FilterConfig:
    """`cfg` without bounds on alignment columns: the filter pass that picks clips to caption
    (before any caption exists, clip_score would be missing and reject every clip)."""
    return FilterConfig(
        tiers={
            name: replace(
                tier, bounds={c: b for c, b in tier.bounds.items() if c not in ALIGN_COLUMNS}
            )
            for name, tier in cfg.tiers.items()
        }
    )
