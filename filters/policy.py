"""The threshold policy: stored scores + tier config -> (tier, keep, reasons).

Scorers measure; this module decides. Tiers are tried from the highest source requirement
down; a clip lands in the first tier whose every bound it passes. Each failed bound becomes a
reason string `<score>=<value><op><bound>@<tier>`, e.g. `ocr_area=0.083>0.02@720p`, so a query
can count why clips missed each tier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from curation.configtools import ConfigError, check


@dataclass(frozen=True)
class Bound:
    min: float | None = None
    """Lowest allowed value (inclusive); null = no lower bound."""
    max: float | None = None
    """Highest allowed value (inclusive); null = no upper bound."""

    def __post_init__(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"min {self.min} must be <= max {self.max}")


@dataclass(frozen=True)
class TierConfig:
    min_source_short_side: int = 0
    """Shortest side the source must have (displayed pixels) to enter this tier (>= 0)."""
    short_side: int = 256
    """Output short side of clips sharded in this tier, pixels (even, >= 16)."""
    fps: float | None = None
    """Output frame rate of this tier; null keeps the source rate."""
    bounds: dict[str, Bound] = field(default_factory=dict)
    """score column -> {min, max}; a clip must satisfy every bound of the tier."""

    def __post_init__(self):
        check(self.min_source_short_side >= 0, "min_source_short_side", "must be >= 0")
        check(self.short_side >= 16 and self.short_side % 2 == 0, "short_side", "must be even and >= 16")
        check(self.fps is None or self.fps > 0, "fps", "must be > 0 or null")


def _default_tiers() -> dict[str, TierConfig]:
    return {"256p": TierConfig(min_source_short_side=256, short_side=256)}


@dataclass(frozen=True)
class FilterConfig:
    tiers: dict[str, TierConfig] = field(default_factory=_default_tiers)
    """tier name -> its requirements; names are free-form ('720p', '480p', ...)."""

    def __post_init__(self):
        check(len(self.tiers) > 0, "filter.tiers", "must hold at least one tier")

    def ordered(self) -> list[tuple[str, TierConfig]]:
        """Tiers from the strictest source requirement down (ties keep config order)."""
        return sorted(self.tiers.items(), key=lambda kv: -kv[1].min_source_short_side)

    def score_columns(self) -> set[str]:
        return {name for tier in self.tiers.values() for name in tier.bounds}


@dataclass(frozen=True)
class Decision:
    tier: str | None
    keep: bool
    reasons: list[str]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def check_tier(name: str, tier: TierConfig, source_short_side: int, scores: Mapping[str, Any]) -> list[str]:
    """Reasons the clip fails `tier` (empty when it passes)."""
    reasons = []
    if source_short_side < tier.min_source_short_side:
        reasons.append(f"short_side={source_short_side}<{tier.min_source_short_side}@{name}")
    for col, bound in tier.bounds.items():
        value = scores.get(col)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            reasons.append(f"{col}=missing@{name}")
            continue
        value = float(value)
        if bound.min is not None and value < bound.min:
            reasons.append(f"{col}={_fmt(value)}<{_fmt(bound.min)}@{name}")
        if bound.max is not None and value > bound.max:
            reasons.append(f"{col}={_fmt(value)}>{_fmt(bound.max)}@{name}")
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
