"""SQL text built in Python: literals, in one place (DuckDB dialect)."""

from __future__ import annotations

import math


def literal(value: object) -> str:
    """A SQL string literal of `str(value)`: `it's` -> `'it''s'` (a path, a model name, a tier)."""
    return "'" + str(value).replace("'", "''") + "'"


def double(value: float) -> str:
    """A DOUBLE literal that round-trips `value` exactly (`repr` keeps every digit; inf and nan
    as DuckDB spells them)."""
    value = float(value)
    return (repr(value) if math.isfinite(value) else f"'{value}'") + "::DOUBLE"
