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

from curation.candidates import candidates_sql
from filters.config import FilterConfig, TierConfig
from manifests import fs, reasons
from manifests.configtools import to_dict
from manifests.db import connect
from manifests.sqltext import double, literal
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


def _tier_failures(name: str, tier: TierConfig) -> str:
    """A VARCHAR[] expression: every bound of `tier` the row fails, as policy.check_tier words it."""
    need = tier.min_source_short_side
    items = [f"CASE WHEN short_side < {need} THEN {reasons.short_side_sql('short_side', need, name)} END"]
    for col, bound in tier.bounds.items():
        v = f'"{col}"::DOUBLE'
        branches = [f"WHEN {v} IS NULL OR isnan({v}) THEN {literal(reasons.missing(col, name))}"]
        # NaN is handled first: DuckDB orders NaN above every number.
        if bound.min is not None:
            fail = reasons.bound_sql(col, v, "<", bound.min, name)
            branches.append(f"WHEN {v} < {double(bound.min)} THEN {fail}")
        if bound.max is not None:
            fail = reasons.bound_sql(col, v, ">", bound.max, name)
            branches.append(f"WHEN {v} > {double(bound.max)} THEN {fail}")
        items.append("CASE " + " ".join(branches) + " END")
    return f"list_filter([{', '.join(items)}]::VARCHAR[], lambda x: x IS NOT NULL)"


def decide_sql(candidates: str, cfg: FilterConfig, run: str, chash: str, stamp) -> str:
    """The `decisions` rows of `candidates` (clip_id, short_side, score columns, duplicate_of):
    the same tier, keep and reasons as `filters.policy.decide` plus the duplicate rule."""
    tiers = cfg.ordered()
    fails = ", ".join(f"{_tier_failures(name, tier)} AS f{i}" for i, (name, tier) in enumerate(tiers))
    passes = [f"len(f{i}) = 0" for i in range(len(tiers))]
    tier_case = " ".join(f"WHEN {p} THEN {literal(name)}" for p, (name, _) in zip(passes, tiers, strict=True))
    concat = lambda n: "[]::VARCHAR[]" if n == 0 else " || ".join(f"f{i}" for i in range(n))  # noqa: E731
    reasons_case = " ".join(f"WHEN {p} THEN {concat(i)}" for i, p in enumerate(passes))
    return f"""
        WITH f AS (SELECT clip_id, duplicate_of, {fails} FROM ({candidates}))
        SELECT clip_id,
               CASE WHEN duplicate_of IS NOT NULL THEN NULL {tier_case} END AS tier,
               duplicate_of IS NULL AND ({" OR ".join(passes)}) AS keep,
               CASE WHEN duplicate_of IS NULL THEN []::VARCHAR[]
                    ELSE [{reasons.duplicate_sql("duplicate_of")}] END
                 || CASE {reasons_case} ELSE {concat(len(tiers))} END AS reasons,
               {literal(run)} AS filter_run, {literal(chash)} AS config_hash,
               {literal(stamp.isoformat())}::TIMESTAMPTZ AS created_at
        FROM f
    """


def _tally(summary: FilterSummary, batch: pa.Table, con: duckdb.DuckDBPyConnection) -> None:
    summary.decided += batch.num_rows
    for tier, n in con.sql("SELECT tier, count(*) FROM batch WHERE keep GROUP BY 1").fetchall():
        summary.kept_per_tier[tier] = summary.kept_per_tier.get(tier, 0) + n
    summary.rejected += con.sql("SELECT count(*) FROM batch WHERE NOT keep").fetchall()[0][0]
    heads = con.sql(
        f"SELECT {reasons.head_sql('r')} AS h, count(*) "
        "FROM (SELECT unnest(reasons) AS r FROM batch WHERE NOT keep) GROUP BY 1"
    ).fetchall()
    for head, n in heads:
        summary.reasons[head] = summary.reasons.get(head, 0) + n


def decide_batches(
    root: Path, cfg: FilterConfig, summary: FilterSummary, dedup: bool = True, batch_rows: int = 65536
) -> Iterator[pa.Table]:
    """The decisions of every ok clip as Arrow batches (tallied in `summary`); unordered: a sort
    of every decision would cost memory and nothing reads the part in order."""
    con = connect(root)
    sql = decide_sql(candidates_sql(con, cfg, dedup=dedup), cfg, summary.run, config_hash(cfg), now_utc())
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


def funnel_diff(root: str | Path, summary: FilterSummary) -> str:
    """How a (dry-run) filter `summary` would change the funnel vs the current decisions.

    Rows: clips kept per tier, rejected, and the reasons of rejected clips (`score@tier`), each
    with the current count, the new count and the change; unchanged reason rows are left out.
    """
    con = connect(root)
    kept = dict(con.execute("SELECT tier, count(*) FROM decisions WHERE keep GROUP BY tier").fetchall())
    rejected = con.execute("SELECT count(*) FROM decisions WHERE NOT keep").fetchall()[0][0]
    reasons = dict(con.execute("""
        SELECT reason_head(r), count(*) FROM (SELECT unnest(reasons) AS r FROM decisions WHERE NOT keep)
        GROUP BY 1
    """).fetchall())  # the same `score@tier` heads as FilterSummary.reasons
    current = con.execute(
        "SELECT any_value(filter_run), any_value(config_hash), count(*) FROM decisions").fetchall()[0]

    tiers = sorted(set(kept) | set(summary.kept_per_tier), key=_tier_key)
    rows = [(f"kept@{t}", kept.get(t, 0), summary.kept_per_tier.get(t, 0)) for t in tiers]
    rows.append(("kept (all tiers)", sum(kept.values()), sum(summary.kept_per_tier.values())))
    rows.append(("rejected", rejected, summary.rejected))
    reason_rows = [(f"  {h}", reasons.get(h, 0), summary.reasons.get(h, 0))
                   for h in sorted(set(reasons) | set(summary.reasons))
                   if reasons.get(h, 0) != summary.reasons.get(h, 0)]

    base = ("no decisions yet" if not current[2] else
            f"current = filter run {current[0]} (config {current[1]}, {current[2]} clips)")
    out = [f"funnel change of this filter config vs the current decisions ({base}):"]
    w = max(len(x[0]) for x in rows + reason_rows + [("reasons of rejected clips:", 0, 0)])
    line = lambda name, a, b: f"{name:<{w}}  {a:>8}  {b:>8}  {_signed(b - a):>7}"  # noqa: E731
    out.append(f"{'':<{w}}  {'current':>8}  {'new':>8}  {'change':>7}")
    out += [line(*r) for r in rows]
    if reason_rows:
        out.append("reasons of rejected clips (changed only):")
        out += [line(*r) for r in reason_rows]
    else:
        out.append("reasons of rejected clips: unchanged")
    return "\n".join(out)


def _signed(n: int) -> str:
    return f"+{n}" if n > 0 else ("0" if n == 0 else str(n))


def _tier_key(tier: str) -> tuple[int, str]:
    digits = "".join(ch for ch in tier if ch.isdigit())
    return (-int(digits) if digits else 0, tier)
