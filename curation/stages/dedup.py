"""dedup: near-duplicate clips from the stored CLIP embeddings -> one new `duplicates` run.

Like `filter`, dedup is a pass over stored scores, not over video: it streams
`scores.clip_embedding` (ok clips only, never all in memory) into filters/dedup.py, picks the
kept clip of every group by `dedup.score_column`, and appends the whole run as one atomic part.
Every clip considered gets a row (singletons too), so the newest-row-per-clip view always shows
the latest run. Embeddings of different `clip_model`s are never compared.

The filter turns a row with `duplicate_of` set into keep=false with reason
`duplicate_of=<clip_id>` (manifests/reasons.py).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from filters.config import DedupConfig
from filters.dedup import find_groups
from manifests import fs
from manifests.db import connect
from manifests.schemas import DUPLICATES, TABLES
from manifests.sqltext import literal
from manifests.store import Table, now_utc


@dataclass
class DedupSummary:
    run: str
    clips: int = 0
    groups: int = 0  # groups of >= 2 clips
    duplicates: int = 0  # clips marked duplicate_of another
    clusters: dict[str, int] = field(default_factory=dict)  # clip_model -> k-means clusters


def config_hash(cfg: DedupConfig) -> str:
    text = json.dumps(asdict(cfg), sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _one_model(
    root: Path,
    model: str,
    cfg: DedupConfig,
    summary: DedupSummary,
    stamp,
    chash: str,
    workdir: str | Path | None,
) -> pa.Table:
    where = f"""
        FROM scores s JOIN clips c USING (clip_id)
        WHERE s.status = 'ok' AND c.status = 'ok' AND s.clip_embedding IS NOT NULL
          AND s.clip_model = {literal(model)}
        ORDER BY s.clip_id
    """
    con = connect(root)
    meta = con.sql(f'SELECT s.clip_id, s."{cfg.score_column}" AS score {where}').to_arrow_table()
    ids = np.asarray(meta.column("clip_id").to_pylist(), dtype=str)
    scores = meta.column("score").cast(pa.float64()).fill_null(np.nan).to_numpy()

    def embeddings() -> Iterator[np.ndarray]:  # streamed once, in the order of `ids`
        for batch in con.sql(f"SELECT s.clip_embedding {where}").to_arrow_reader(cfg.batch_rows):
            col = batch.column(0)
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            yield flat.reshape(len(col), -1)  # (n, D); one model -> one D

    res = find_groups(embeddings, scores, ids, cfg, workdir)
    is_dup = res.kept != np.arange(len(ids))
    summary.clips += len(ids)
    summary.duplicates += int(is_dup.sum())
    summary.groups += len(np.unique(res.group[res.group_size > 1]))
    summary.clusters[model] = res.n_clusters
    return pa.table(
        {
            "clip_id": pa.array(ids.tolist(), pa.string()),
            "group_id": pa.array(ids[res.kept].tolist(), pa.string()),
            "group_size": pa.array(res.group_size, pa.int32()),
            "duplicate_of": pa.array(ids[res.kept].tolist(), pa.string(), mask=~is_dup),
            "similarity": pa.array(res.similarity, pa.float32(), mask=~is_dup),
            "clip_model": pa.array([model] * len(ids), pa.string()),
            "dedup_run": pa.array([summary.run] * len(ids), pa.string()),
            "config_hash": pa.array([chash] * len(ids), pa.string()),
            "created_at": pa.array([stamp] * len(ids), DUPLICATES.field("created_at").type),
        },
        schema=DUPLICATES,
    )


def run_dedup(
    root: str | Path, cfg: DedupConfig, *, workdir: str | Path | None = None, dry_run: bool = False
) -> DedupSummary:
    """Group every ok clip with a stored embedding; write the run as one part unless `dry_run`.

    workdir: where embeddings are spilled while clustering (default: the system temp dir).
    """
    root = fs.upath(root)
    summary = DedupSummary(run=uuid.uuid4().hex[:12])
    if not cfg.enabled or not Table(root, "scores").exists():
        return summary
    known = set(TABLES["scores"][0].names)
    if cfg.score_column not in known:
        raise ValueError(
            f"dedup.score_column: {cfg.score_column!r} is not a scores column; "
            f"known: {sorted(known - {'clip_id', 'created_at'})}"
        )
    models = [
        r[0]
        for r in connect(root)
        .sql(
            "SELECT DISTINCT clip_model FROM scores WHERE status = 'ok' AND clip_embedding IS NOT NULL "
            "AND clip_model IS NOT NULL ORDER BY 1"
        )
        .fetchall()
    ]
    chash, stamp = config_hash(cfg), now_utc()
    tables = (_one_model(root, m, cfg, summary, stamp, chash, workdir) for m in models)
    if dry_run:
        for _ in tables:
            pass
    else:
        table = Table(root, "duplicates")
        table.clean_temp()
        table.write_stream(tables)
    return summary
