"""filter: apply the tier policy to stored scores -> one new `decisions` run.

Filtering is a query, not a pass over video: it reads ok clips, their source size and their
latest scores, decides every clip again and appends the whole run as one atomic part. The
`decisions` view shows the newest run, so changing thresholds and re-running re-decides in
seconds and leaves the scores untouched.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from filters.policy import Decision, FilterConfig, decide
from manifests.configtools import ConfigError, to_dict
from manifests.db import connect
from manifests.schemas import DECISIONS, TABLES
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
}


def _candidates(
    root: Path, cfg: FilterConfig, batch_rows: int = 8192, dedup: bool = True
) -> Iterator[pa.RecordBatch]:
    """ok clips with their source short side and every score column the tiers mention
    (from `scores`, and from `alignment` once align has run: clip_score), and with `dedup` the
    clip each one near-duplicates (newest dedup run; null when kept or never deduplicated)."""
    con = connect(root)
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
    select = "".join(f', {owner[c]}."{c}"' for c in cols)
    joins = " ".join(f"LEFT JOIN {t} {a} ON {a}.clip_id = c.clip_id {on}" for t, a, on in SCORE_TABLES)
    if dedup:
        select += ", d.duplicate_of"
        joins += " LEFT JOIN duplicates d ON d.clip_id = c.clip_id"
    else:
        select += ", NULL::VARCHAR AS duplicate_of"
    sql = f"""
        SELECT c.clip_id, least(c.width, c.height) AS short_side {select}
        FROM clips c {joins}
        WHERE c.status = 'ok'
        ORDER BY c.clip_id
    """
    yield from con.sql(sql).to_arrow_reader(batch_rows)


def decide_batches(
    root: Path, cfg: FilterConfig, summary: FilterSummary, dedup: bool = True
) -> Iterator[pa.Table]:
    chash = config_hash(cfg)
    stamp = now_utc()
    for batch in _candidates(root, cfg, dedup=dedup):
        rows = []
        for rec in batch.to_pylist():
            dup_of = rec.pop("duplicate_of")
            d = decide(int(rec.pop("short_side") or 0), rec, cfg)
            if dup_of is not None:  # a near-duplicate of a better clip: rejected whatever its scores
                d = Decision(tier=None, keep=False, reasons=[f"duplicate_of={dup_of}", *d.reasons])
            rows.append(
                dict(
                    clip_id=rec["clip_id"],
                    tier=d.tier,
                    keep=d.keep,
                    reasons=d.reasons,
                    filter_run=summary.run,
                    config_hash=chash,
                    created_at=stamp,
                )
            )
            summary.decided += 1
            if d.keep:
                summary.kept_per_tier[d.tier] = summary.kept_per_tier.get(d.tier, 0) + 1
            else:
                summary.rejected += 1
                for r in d.reasons:
                    name, _, rest = r.partition("=")
                    head = f"{name}@{rest.rsplit('@', 1)[-1]}" if "@" in rest else name
                    summary.reasons[head] = summary.reasons.get(head, 0) + 1
        yield pa.Table.from_pylist(rows, schema=DECISIONS)


def run_filter(
    root: str | Path, cfg: FilterConfig, *, dry_run: bool = False, dedup: bool = True
) -> FilterSummary:
    """Decide every ok clip; write the run as one part unless `dry_run`. With `dedup`, a clip
    the newest `duplicates` run marks duplicate_of another is rejected (`duplicate_of=<id>`)."""
    root = Path(root)
    summary = FilterSummary(run=uuid.uuid4().hex[:12])
    batches = decide_batches(root, cfg, summary, dedup=dedup)
    if dry_run:
        for _ in batches:
            pass
    else:
        Table(root, "decisions").write_stream(batches)
    return summary
