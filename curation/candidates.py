"""The candidate rows that `filter` decides and the report's workbench counts: one query.

A candidate is an ok clip with its source short side, the score columns asked for (from
`scores`, else from `alignment` once align has run) and, with dedup, the clip it
near-duplicates (newest dedup run). A score column that no stored part has yet (a root scored
before the column existed) reads as NULL, so it fails its bounds as `missing` instead of
failing the query.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from filters.config import FilterConfig
from manifests.configtools import ConfigError
from manifests.schemas import TABLES

# Tables whose columns tier bounds may name, joined by clip_id, in lookup order (view, alias, extra ON).
SCORE_TABLES = (("scores", "s", ""), ("alignment", "a", "AND a.status = 'ok'"))
NOT_SCORES = frozenset({
    "clip_id", "created_at", "status", "error", "error_kind", "caption_model", "prompt_hash", "clip_model",
    "untrained", "decode_lane",
})


def score_owner() -> dict[str, tuple[str, pa.DataType]]:
    """score column -> (table alias, Arrow type), in lookup order."""
    owner: dict[str, tuple[str, pa.DataType]] = {}
    for table, alias, _ in SCORE_TABLES:
        schema = TABLES[table][0]
        for name in schema.names:
            if name not in NOT_SCORES:
                owner.setdefault(name, (alias, schema.field(name).type))
    return owner


def candidates_sql(
    con: duckdb.DuckDBPyConnection, filt: FilterConfig, cols: list[str] | None = None, dedup: bool = True
) -> str:
    """SELECT of the candidates: clip_id, short_side (0 when unknown), duration_s, duplicate_of
    (null when kept by dedup, never deduplicated or `dedup` off) and each of `cols` (default: the
    columns the tiers bound) as DOUBLE, as Python compares them (a FLOAT column against a DOUBLE
    bound would otherwise round the bound)."""
    owner = score_owner()
    unknown = sorted(c for c in filt.score_columns() if c not in owner)
    if unknown:
        raise ConfigError(
            f"filter.tiers: bound(s) on unknown score column(s) {unknown}; score columns are: {sorted(owner)}"
        )
    cols = sorted(filt.score_columns()) if cols is None else [c for c in cols if c in owner]
    present = {alias: set(con.sql(f"SELECT * FROM {t} LIMIT 0").columns) for t, alias, _ in SCORE_TABLES}
    select = "".join(
        f', {owner[c][0]}."{c}"::DOUBLE AS "{c}"' if c in present[owner[c][0]] else f', NULL::DOUBLE AS "{c}"'
        for c in cols
    )
    joins = " ".join(f"LEFT JOIN {t} {a} ON {a}.clip_id = c.clip_id {on}" for t, a, on in SCORE_TABLES)
    if dedup:
        joins += " LEFT JOIN duplicates d ON d.clip_id = c.clip_id"
    return f"""
        SELECT c.clip_id, coalesce(least(c.width, c.height), 0)::INTEGER AS short_side,
               coalesce(c.duration_s, 0)::DOUBLE AS duration_s,
               {"d.duplicate_of" if dedup else "NULL::VARCHAR"} AS duplicate_of {select}
        FROM clips c {joins}
        WHERE c.status = 'ok'
    """
