"""The workbench's numbers, read with DuckDB aggregates: never every row into Python.

What `filter` decides is mirrored three times, and tests hold the three to each other:
- here, in SQL, for the exact counts at the config's thresholds (every clip, any scale);
- in the page's JavaScript (assets/report.js), on an embedded sample, when a slider moves;
- in `filters/policy.py decide()`, which `reelsift filter` runs.

The candidate rows are those `filter` decides, from the same query (curation/candidates.py): ok
clips, their source short side, the score columns the tiers bound (from `scores`, else
`alignment`), and the newest dedup verdict. The sample is the `SAMPLE_ROWS` candidates with
the smallest seeded hash of their clip id: a fixed, uniform sample that does not depend on the
order of the Parquet parts. Per-bin counts of every
histogram are exact (one GROUP BY per score column over all candidates).
"""

from __future__ import annotations

import base64
import math

import duckdb
import numpy as np
import pyarrow as pa

from curation.candidates import candidates_sql, score_owner
from filters.config import FilterConfig
from manifests import reasons
from manifests.sqltext import double

SAMPLE_ROWS = 20_000  # rows embedded in the page at most (~60 bytes each at six bounded scores) ...
SAMPLE_BYTES = 1_400_000  # ... and fewer where many bounded scores would take the page past 2 MB
SAMPLE_SEED = 0
N_BINS = 40

def load_candidates(con: duckdb.DuckDBPyConnection, filt: FilterConfig, cols: list[str], dedup: bool) -> int:
    """Materialise `filter`'s candidate rows (curation/candidates.py) as the temp table `cand`
    (inside DuckDB); -> row count. `cols`: every score column to read (bounded ones first)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE cand AS {candidates_sql(con, filt, cols, dedup)}")
    return con.sql("SELECT count(*) FROM cand").fetchall()[0][0]


def _fail_sql(col: str, lo: float | None, hi: float | None) -> str:
    """SQL true when `col` fails the bound: missing (NULL or NaN), under min or over max."""
    parts = [f'"{col}" IS NULL', f'isnan("{col}")']
    if lo is not None:
        parts.append(f'"{col}" < {double(lo)}')
    if hi is not None:
        parts.append(f'"{col}" > {double(hi)}')
    return "(" + " OR ".join(parts) + ")"


def tier_heads(filt: FilterConfig) -> list[dict]:
    """Per tier (highest first): its name, source requirement and bounds, with the reason-count
    key each failure is filed under (computed from a reason string, as `filter` does)."""
    out = []
    for name, tier in filt.ordered():
        out.append(dict(
            name=name, min_short=tier.min_source_short_side,
            short_head=reasons.head(reasons.short_side(0, tier.min_source_short_side, name)),
            bounds=[dict(col=col, min=b.min, max=b.max, head=reasons.head(reasons.missing(col, name)))
                    for col, b in tier.bounds.items()],
        ))
    return out


def exact_counts(con: duckdb.DuckDBPyConnection, tiers: list[dict]) -> dict:
    """What `filter` would decide now over every candidate: kept per tier, rejected, reason counts."""
    passes = []
    for t in tiers:
        conds = [f"short_side >= {int(t['min_short'])}"]
        conds += [f"NOT {_fail_sql(b['col'], b['min'], b['max'])}" for b in t["bounds"]]
        passes.append(" AND ".join(conds))
    tier_idx = "CASE " + " ".join(f"WHEN {p} THEN {j}" for j, p in enumerate(passes)) + " END"
    aggs = ["count(*) FILTER (WHERE duplicate_of IS NOT NULL) AS dup"]
    aggs += ["count(*) FILTER (WHERE NOT keep)", "coalesce(sum(duration_s) FILTER (WHERE NOT keep), 0)"]
    for j in range(len(tiers)):
        aggs += [f"count(*) FILTER (WHERE keep AND t = {j})",
                 f"coalesce(sum(duration_s) FILTER (WHERE keep AND t = {j}), 0)"]
    heads: list[str] = []
    for j, t in enumerate(tiers):  # a rejected clip lists the failures of every tier it was tried at
        missed = f"NOT keep AND (t IS NULL OR t > {j})"
        if t["min_short"] > 0:
            heads.append(t["short_head"])
            aggs.append(f"count(*) FILTER (WHERE {missed} AND short_side < {int(t['min_short'])})")
        for b in t["bounds"]:
            heads.append(b["head"])
            aggs.append(f"count(*) FILTER (WHERE {missed} AND {_fail_sql(b['col'], b['min'], b['max'])})")
    row = con.sql(f"""
        SELECT count(*), {", ".join(aggs)} FROM (
            SELECT *, {tier_idx} AS t, duplicate_of IS NULL AND ({tier_idx}) IS NOT NULL AS keep FROM cand)
    """).fetchall()[0]
    decided, dup, rejected, rejected_s = row[:4]
    kept = {t["name"]: [row[4 + 2 * j], float(row[5 + 2 * j])] for j, t in enumerate(tiers)}
    counts: dict[str, int] = {reasons.DUPLICATE: dup} if dup else {}
    for head, n in zip(heads, row[4 + 2 * len(tiers):], strict=True):
        if n:
            counts[head] = counts.get(head, 0) + n
    return dict(decided=decided, kept=kept, rejected=[rejected, float(rejected_s)], reasons=counts)


def histograms(con: duckdb.DuckDBPyConnection, cols: list[str], tiers: list[dict]) -> dict:
    """Exact per-bin counts of each score over the candidates eligible for each tier (source
    short side large enough). The axis spans the data and, unless that would squash the data,
    every tier's bound on the column."""
    out = {}
    for col in cols:
        sql = f'SELECT min("{col}"), max("{col}") FROM cand WHERE isfinite("{col}")'  # axis: finite values
        lo, hi = con.sql(sql).fetchall()[0]
        if lo is None:
            out[col] = None
            continue
        span = hi - lo
        for t in tiers:
            for b in t["bounds"]:
                for v in (b["min"], b["max"]) if b["col"] == col else ():
                    if v is not None and (lo <= v <= hi or span == 0 or max(hi, v) - min(lo, v) <= 3 * span):
                        lo, hi = min(lo, v), max(hi, v)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5
        width = (hi - lo) / N_BINS
        per_tier = ", ".join(f"count(*) FILTER (WHERE short_side >= {int(t['min_short'])})" for t in tiers)
        rows = con.sql(f"""
            SELECT CASE WHEN "{col}" IS NULL OR isnan("{col}") THEN -1
                        ELSE least(greatest(floor(("{col}" - {double(lo)}) / {double(width)}), 0),
                                   {N_BINS - 1})
                   END::INTEGER AS bin, {per_tier}
            FROM cand GROUP BY bin
        """).fetchall()
        counts = {t["name"]: [0] * N_BINS for t in tiers}
        missing = {t["name"]: 0 for t in tiers}
        for r in rows:
            for j, t in enumerate(tiers):
                if r[0] < 0:
                    missing[t["name"]] = r[1 + j]
                else:
                    counts[t["name"]][r[0]] = r[1 + j]
        out[col] = dict(lo=lo, hi=hi, counts=counts, missing=missing)
    return out


def sample(con: duckdb.DuckDBPyConnection, cols: list[str], n_total: int,
           budget: int) -> tuple[dict, pa.Table]:
    """The embedded sample: columns as base64 typed arrays (exact: float32 scores stay float32,
    which the page reads back to the same double). -> (page JSON, the sample as Arrow)."""
    owner = score_owner()
    f8 = sum(1 for c in cols if not _is_f32(owner[c][1]))
    row_bytes = 4 / 3 * (4 * len(cols) + 4 * f8 + 8) + 20  # base64 of the columns, + the clip id
    budget = max(1, min(budget, int(SAMPLE_BYTES / row_bytes)))
    order = ("ORDER BY clip_id" if n_total <= budget  # every clip, in a fixed order
             else f"ORDER BY hash(clip_id || '{SAMPLE_SEED}'), clip_id LIMIT {budget}")
    table = con.sql(f"SELECT * FROM cand {order}").to_arrow_table()
    data = dict(n=table.num_rows, ids=table.column("clip_id").to_pylist(),
                short_side=_b64(table, "short_side", np.int32, 0),
                duration_s=_b64(table, "duration_s", np.float32, 0.0),
                dup={i: d for i, d in enumerate(table.column("duplicate_of").to_pylist()) if d is not None},
                cols={})
    for col in cols:
        f32 = _is_f32(owner[col][1])
        data["cols"][col] = dict(dtype="f4" if f32 else "f8",
                                 b64=_b64(table, col, np.float32 if f32 else np.float64, math.nan))
    return data, table


def _is_f32(t: pa.DataType) -> bool:
    return pa.types.is_float32(t) or pa.types.is_float16(t) or (pa.types.is_integer(t) and t.bit_width <= 16)


def _b64(table: pa.Table, col: str, dtype, fill) -> str:
    arr = table.column(col).fill_null(fill).to_numpy()
    little_endian = np.asarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
    return base64.b64encode(little_endian.tobytes()).decode("ascii")
