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

from curation.configtools import ConfigError, to_dict
from filters.policy import FilterConfig, decide
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


def _candidates(root: Path, cfg: FilterConfig, batch_rows: int = 8192) -> Iterator[pa.RecordBatch]:
    """ok clips with their source short side and every score column the tiers mention."""
    con = connect(root)
    has_scores = "scores" in TABLES and Table(root, "scores").exists()
    cols = sorted(cfg.score_columns())
    if has_scores:
        known = set(TABLES["scores"][0].names)
        unknown = [c for c in cols if c not in known]
        if unknown:
            raise ConfigError(
                f"filter.tiers: bound(s) on unknown score column(s) {unknown}; "
                f"score columns are: {sorted(known - {'clip_id', 'created_at'})}"
            )
        select = ", ".join(f's."{c}"' for c in cols)
        join = "LEFT JOIN scores s USING (clip_id)"
        select = ", " + select if select else ""
    else:
        select = "".join(f", NULL AS \"{c}\"" for c in cols)
        join = ""
    sql = f"""
        SELECT c.clip_id, least(c.width, c.height) AS short_side {select}
        FROM clips c {join}
        WHERE c.status = 'ok'
        ORDER BY c.clip_id
    """
    reader = con.sql(sql).to_arrow_reader(batch_rows)
    yield from reader


def decide_batches(root: Path, cfg: FilterConfig, summary: FilterSummary) -> Iterator[pa.Table]:
    chash = config_hash(cfg)
    stamp = now_utc()
    for batch in _candidates(root, cfg):
        rows = []
        for rec in batch.to_pylist():
            d = decide(int(rec.pop("short_side") or 0), rec, cfg)
            rows.append(dict(clip_id=rec["clip_id"], tier=d.tier, keep=d.keep, reasons=d.reasons,
                             filter_run=summary.run, config_hash=chash, created_at=stamp))
            summary.decided += 1
            if d.keep:
                summary.kept_per_tier[d.tier] = summary.kept_per_tier.get(d.tier, 0) + 1
            else:
                summary.rejected += 1
                for r in d.reasons:
                    head = r.split("=", 1)[0] + "@" + r.rsplit("@", 1)[-1]
                    summary.reasons[head] = summary.reasons.get(head, 0) + 1
        yield pa.Table.from_pylist(rows, schema=DECISIONS)


def run_filter(root: str | Path, cfg: FilterConfig, *, dry_run: bool = False) -> FilterSummary:
    """Decide every ok clip; write the run as one part unless `dry_run`."""
    root = Path(root)
    summary = FilterSummary(run=uuid.uuid4().hex[:12])
    batches = decide_batches(root, cfg, summary)
    if dry_run:
        for _ in batches:
            pass
    else:
        Table(root, "decisions").write_stream(batches)
    return summary
