"""Reason strings: one format, written and parsed here only.

A rejected row keeps every reason it failed, as text in a `reasons` list:
  `<score>=<value><op><bound>@<tier>`   a tier's bound, e.g. `ocr_area=0.083>0.02@720p`
  `<score>=missing@<tier>`              a score the tier bounds was never stored (or is NaN)
  `short_side=<px><<px>@<tier>`         the source is too small for the tier
  `duplicate_of=<id>`                   a (near-)duplicate of the row with key <id> (ingest, dedup)
  `too_short=<s>s<<s>s`                 split: a scene too short to keep
Reasons are counted under their *head*: the name, plus `@<tier>` where the reason names a tier
(`ocr_area@720p`, `duplicate_of`, `too_short`). `head` is the Python form and `head_sql` the
SQL form of that rule; every connection from `manifests.db.connect` also has it as the macro
`reason_head(r)`, so the named queries and `reelsift sql` count reasons the same way.
"""

from __future__ import annotations

from manifests.sqltext import literal

DUPLICATE = "duplicate_of"


def fmt(value: float) -> str:
    """Numbers in reasons: 4 significant digits (DuckDB's `printf('%.4g', v)` gives the same)."""
    return f"{value:.4g}"


def bound(col: str, value: float, op: str, limit: float, tier: str) -> str:
    """`col` at `value` is `op` ('<' or '>') the tier's `limit`."""
    return f"{col}={fmt(value)}{op}{fmt(limit)}@{tier}"


def missing(col: str, tier: str) -> str:
    return f"{col}=missing@{tier}"


def short_side(side: int, need: int, tier: str) -> str:
    return f"short_side={side}<{need}@{tier}"


def duplicate(of: str) -> str:
    return f"{DUPLICATE}={of}"


def head(reason: str) -> str:
    """The key a reason is counted under: `ocr_area=0.08>0.02@720p` -> `ocr_area@720p`,
    `duplicate_of=<id>` -> `duplicate_of`."""
    name, _, rest = reason.partition("=")
    return f"{name}@{rest.rsplit('@', 1)[-1]}" if "@" in rest else name


def head_sql(r: str) -> str:
    """`head` as a SQL expression over the VARCHAR expression `r`."""
    return (
        f"CASE WHEN strpos({r}, '=') = 0 THEN {r} "
        f"WHEN strpos(substr({r}, strpos({r}, '=') + 1), '@') = 0 THEN split_part({r}, '=', 1) "
        f"ELSE split_part({r}, '=', 1) || '@' || regexp_extract({r}, '@([^@]*)$', 1) END"
    )


MACRO = f"CREATE OR REPLACE TEMP MACRO reason_head(r) AS {head_sql('r')}"
"""The `reason_head(r)` macro that `manifests.db.connect` defines on every connection."""


def bound_sql(col: str, value: str, op: str, limit: float, tier: str) -> str:
    """`bound` as a SQL expression over the DOUBLE expression `value`."""
    return f"{literal(col + '=')} || printf('%.4g', {value}) || {literal(f'{op}{fmt(limit)}@{tier}')}"


def short_side_sql(side: str, need: int, tier: str) -> str:
    """`short_side` as a SQL expression over the integer expression `side`."""
    return f"'short_side=' || {side}::VARCHAR || {literal(f'<{need}@{tier}')}"


def duplicate_sql(of: str) -> str:
    """`duplicate` as a SQL expression over the VARCHAR expression `of`."""
    return f"{literal(DUPLICATE + '=')} || {of}"
