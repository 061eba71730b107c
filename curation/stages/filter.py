"""filter: apply the tier policy to stored scores -> one new `decisions` run.

Filtering is a query, not a pass over video: it reads ok clips, their source size and their
latest scores, decides every clip again in one DuckDB query (`decide_sql`, the vectorised form
of `filters.policy.decide`, which stays the readable reference that the tests compare against)
and appends the whole run as one atomic part. The driver only streams Arrow batches from DuckDB
to the part; no clip becomes a Python object. The `decisions` view shows the newest run, so
changing thresholds and re-running re-decides in seconds and leaves the scores untouched.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from filters.config import TierConfig
from filters.policy import FilterConfig
from manifests import fs
from manifests.configtools import ConfigError, to_dict
from manifests.db import connect
from manifests.schemas import TABLES
from manifests.store import Table, now_utc


@dataclass
class FilterSummary:
    run: str
    decided: int = 0
    kept_per_tier: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def config_hash(cfg: FilterConfig) -> str:
    text = json.dumps(to_dict(cfg), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# Tables whose columns tier bounds may name, joined by clip_id, in lookup order (view, alias, extra ON).
SCORE_TABLES = (("scores", "s", ""), ("alignment", "a", "AND a.status = 'ok'"))
NOT_SCORES = {
    "clip_id",
    "created_at",
    "status",
    "error",
    "caption_model",
    "prompt_hash",
    "clip_model",
    "untrained",
    "decode_lane",
}


def candidates_sql(con: duckdb.DuckDBPyConnection, cfg: FilterConfig, dedup: bool = True) -> str:
    """SQL of the ok clips with their source short side (`short_side`, 0 when unknown), every
    score column the tiers mention (from `scores`, and from `alignment` once align has run:
    clip_score; NULL where no stored part has the column yet) and with `dedup` the clip each one
    near-duplicates (newest dedup run; null when kept or never deduplicated)."""
    owner: dict[str, str] = {}
    for table, alias, _ in SCORE_TABLES:
        for name in TABLES[table][0].names:
            if name not in NOT_SCORES:
                owner.setdefault(name, alias)
    cols = sorted(cfg.score_columns())
    unknown = [c for c in cols if c not in owner]
    if unknown:
        raise ConfigError(
            f"filter.tiers: bound(s) on unknown score column(s) {unknown}; score columns are: {sorted(owner)}"
        )
    present = {alias: set(con.sql(f"SELECT * FROM {t} LIMIT 0").columns) for t, alias, _ in SCORE_TABLES}
    select = "".join(
        f', {owner[c]}."{c}"' if c in present[owner[c]] else f', NULL::DOUBLE AS "{c}"' for c in cols
    )
    joins = " ".join(f"LEFT JOIN {t} {a} ON {a}.clip_id = c.clip_id {on}" for t, a, on in SCORE_TABLES)
    if dedup:
        select += ", d.duplicate_of"
        joins += " LEFT JOIN duplicates d ON d.clip_id = c.clip_id"
    else:
        select += ", NULL::VARCHAR AS duplicate_of"
    return f"""
        SELECT c.clip_id, coalesce(least(c.width, c.height), 0)::BIGINT AS short_side {select}
        FROM clips c {joins}
        WHERE c.status = 'ok'
    """


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _fmt(value: float) -> str:
    return f"{value:.4g}"  # the same as filters.policy._fmt and DuckDB's printf('%.4g', ...)


def _tier_failures(name: str, tier: TierConfig) -> str:
    """A VARCHAR[] expression: every bound of `tier` the row fails, as policy.check_tier words it."""
    at = f"@{name}"
    items = [
        f"CASE WHEN short_side < {tier.min_source_short_side} THEN 'short_side=' || short_side::VARCHAR"
        f" || {_lit(f'<{tier.min_source_short_side}{at}')} END"
    ]
    for col, bound in tier.bounds.items():
        v = f'"{col}"::DOUBLE'
        branches = [f"WHEN {v} IS NULL OR isnan({v}) THEN {_lit(f'{col}=missing{at}')}"]
        # NaN is handled first: DuckDB orders NaN above every number.
        if bound.min is not None:
            branches.append(
                f"WHEN {v} < {float(bound.min)!r}::DOUBLE THEN {_lit(col + '=')} || printf('%.4g', {v})"
                f" || {_lit(f'<{_fmt(bound.min)}{at}')}"
            )
        if bound.max is not None:
            branches.append(
                f"WHEN {v} > {float(bound.max)!r}::DOUBLE THEN {_lit(col + '=')} || printf('%.4g', {v})"
                f" || {_lit(f'>{_fmt(bound.max)}{at}')}"
            )
        items.append("CASE " + " ".join(branches) + " END")
    return f"list_filter([{', '.join(items)}]::VARCHAR[], lambda x: x IS NOT NULL)"


def decide_sql(candidates: str, cfg: FilterConfig, run: str, chash: str, stamp) -> str:
    """The `decisions` rows of `candidates` (clip_id, short_side, score columns, duplicate_of):
    the same tier, keep and reasons as `filters.policy.decide` plus the duplicate rule."""
    tiers = cfg.ordered()
    fails = ", ".join(f"{_tier_failures(name, tier)} AS f{i}" for i, (name, tier) in enumerate(tiers))
    passes = [f"len(f{i}) = 0" for i in range(len(tiers))]
    tier_case = " ".join(f"WHEN {p} THEN {_lit(name)}" for p, (name, _) in zip(passes, tiers, strict=True))
    concat = lambda n: "[]::VARCHAR[]" if n == 0 else " || ".join(f"f{i}" for i in range(n))  # noqa: E731
    reasons_case = " ".join(f"WHEN {p} THEN {concat(i)}" for i, p in enumerate(passes))
    return f"""
        WITH f AS (SELECT clip_id, duplicate_of, {fails} FROM ({candidates}))
        SELECT clip_id,
               CASE WHEN duplicate_of IS NOT NULL THEN NULL {tier_case} END AS tier,
               duplicate_of IS NULL AND ({" OR ".join(passes)}) AS keep,
               CASE WHEN duplicate_of IS NULL THEN []::VARCHAR[] ELSE ['duplicate_of=' || duplicate_of] END
                 || CASE {reasons_case} ELSE {concat(len(tiers))} END AS reasons,
               {_lit(run)} AS filter_run, {_lit(chash)} AS config_hash,
               {_lit(stamp.isoformat())}::TIMESTAMPTZ AS created_at
        FROM f
    """


# `score@tier` head of a reason, as FilterSummary.reasons counts it (`duplicate_of=<id>` -> duplicate_of).
_HEAD = """CASE WHEN strpos(r, '=') = 0 THEN r
    WHEN strpos(substr(r, strpos(r, '=') + 1), '@') = 0 THEN split_part(r, '=', 1)
    ELSE split_part(r, '=', 1) || '@' || regexp_extract(r, '@([^@]*)$', 1) END"""


def _tally(summary: FilterSummary, batch: pa.Table, con: duckdb.DuckDBPyConnection) -> None:
    summary.decided += batch.num_rows
    for tier, n in con.sql("SELECT tier, count(*) FROM batch WHERE keep GROUP BY 1").fetchall():
        summary.kept_per_tier[tier] = summary.kept_per_tier.get(tier, 0) + n
    summary.rejected += con.sql("SELECT count(*) FROM batch WHERE NOT keep").fetchall()[0][0]
    heads = con.sql(
        f"SELECT {_HEAD} AS h, count(*) FROM (SELECT unnest(reasons) AS r FROM batch WHERE NOT keep) "
        "GROUP BY 1"
    ).fetchall()
    for head, n in heads:
        summary.reasons[head] = summary.reasons.get(head, 0) + n


def decide_batches(
    root: Path, cfg: FilterConfig, summary: FilterSummary, dedup: bool = True, batch_rows: int = 65536
) -> Iterator[pa.Table]:
    """The decisions of every ok clip as Arrow batches (tallied in `summary`); unordered: a sort
    of every decision would cost memory and nothing reads the part in order."""
    con = connect(root)
    sql = decide_sql(candidates_sql(con, cfg, dedup), cfg, summary.run, config_hash(cfg), now_utc())
    tally = duckdb.connect(":memory:")
    for rb in con.sql(sql).to_arrow_reader(batch_rows):
        batch = pa.Table.from_batches([rb])
        _tally(summary, batch, tally)
        yield batch


def run_filter(
    root: str | Path, cfg: FilterConfig, *, dry_run: bool = False, dedup: bool = True
) -> FilterSummary:
    """Decide every ok clip; write the run as one part unless `dry_run`. With `dedup`, a clip
    the newest `duplicates` run marks duplicate_of another is rejected (`duplicate_of=<id>`)."""
    root = fs.upath(root)
    summary = FilterSummary(run=uuid.uuid4().hex[:12])
    batches = decide_batches(root, cfg, summary, dedup=dedup)
    if dry_run:
        for _ in batches:
            pass
    else:
        Table(root, "decisions").write_stream(batches)
    return summary
