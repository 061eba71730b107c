"""reshard: bring the written tars to the newest decisions before new clips are cut.

A tar holding a clip that the newest decisions no longer keep (or keep in another tier) is
rewritten without it: the kept members are copied byte for byte (never re-encoded) into a new
tar named `<old stem>-r<hash of its keys>.tar`, and the `shards` table gets, in one part, a row
per kept clip pointing to the new tar and a `removed` row per dropped clip (a clip kept again
later, or kept in another tier, is then cut again by the normal shard planning). Only then is
the old tar deleted.

Kill-safety: a new tar that no row points to yet, and an old tar that no current row points
to any more, are both removed by `clean_orphans` at the next start; names are deterministic, so
a re-run ends with the same tars and the same current rows as an uninterrupted run. The write
path is small functions (`rewrite_tar`, `copy_members`, `commit`) so checks can wrap each.
"""

from __future__ import annotations

import logging
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filters.video import key_hash
from manifests import fs
from manifests.commit import atomic_write, remove
from manifests.db import connect
from manifests.schemas import SHARDS
from manifests.store import Table, rows_to_table

log = logging.getLogger("reelsift")

_REVISION = re.compile(r"-r[0-9a-f]{16}$")

# every current member of every tar that holds at least one clip not kept (in its tier) any more
AFFECTED = """
    WITH cur AS (
        SELECT s.*, coalesce(d.keep AND d.tier = s.tier, false) AS stays
        FROM shards s LEFT JOIN decisions d ON d.clip_id = s.clip_id
        WHERE s.status = 'ok')
    SELECT * FROM cur WHERE shard IN (SELECT shard FROM cur WHERE NOT stays)
    ORDER BY shard, key
"""


@dataclass
class ReshardSummary:
    tars_rewritten: int = 0
    tars_removed: int = 0  # every member dropped: no new tar
    clips_removed: int = 0
    clips_copied: int = 0


def member_key(name: str) -> str:
    """WebDataset key of a tar member name (`<key>.<ext>`; keys hold no dot)."""
    return name.partition(".")[0]


def copy_members(src: Path, dst: Path, keys: set[str]) -> None:
    """Write `dst` (atomically) with the members of `src` whose key is in `keys`, bytes unchanged."""
    with fs.open_input(src) as fin, tarfile.open(fileobj=fin, mode="r:") as tin, atomic_write(dst) as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tout:
            for member in tin:
                if member_key(member.name) in keys:
                    tout.addfile(member, tin.extractfile(member) if member.isfile() else None)


def new_name(shard: str, keys: list[str]) -> str:
    path = Path(shard)
    stem = _REVISION.sub("", path.stem)
    return str(path.with_name(f"{stem}-r{key_hash(*sorted(keys))}.tar"))


def rewrite_tar(root: Path, shard: str, rows: list[dict], summary: ReshardSummary) -> list[dict]:
    """New `shards` rows for the members of `shard` (rows: its current rows + `stays`)."""
    keep = [r for r in rows if r["stays"]]
    drop = [r for r in rows if not r["stays"]]
    src = root / shard
    if keep and not src.is_file():
        log.warning("reshard: %s is missing on disk; its %d kept clip(s) will be cut again", shard, len(keep))
        drop, keep = rows, []
    out = [
        dict(clip_id=r["clip_id"], key=r["key"], tier=r["tier"], status="removed", shard=None) for r in drop
    ]
    summary.clips_removed += len(drop)
    if not keep:
        summary.tars_removed += 1
        return out
    dst = new_name(shard, [r["key"] for r in keep])
    copy_members(src, root / dst, {r["key"] for r in keep})
    summary.tars_rewritten += 1
    summary.clips_copied += len(keep)
    return out + [{**{k: r[k] for k in SHARDS.names}, "shard": dst, "created_at": None} for r in keep]


def commit(root: Path, rows: list[dict], old_tars: list[str]) -> None:
    """Index the rewritten tars, then delete the tars they replace."""
    Table(root, "shards").write(rows_to_table(rows, SHARDS))
    for shard in old_tars:
        remove(root / shard)


def _by_shard(root: Path) -> Iterator[tuple[str, list[dict]]]:
    """(shard, its rows) for every affected tar, streamed (one tar's rows in memory at a time)."""
    reader = connect(root).sql(AFFECTED).to_arrow_reader(8192)
    shard, rows = None, []
    for batch in reader:
        for r in batch.to_pylist():
            if r["shard"] != shard and rows:
                yield shard, rows
                rows = []
            shard = r["shard"]
            rows.append(r)
    if rows:
        yield shard, rows


def reshard(root: str | Path, tars_per_commit: int = 64) -> ReshardSummary:
    """Rewrite every tar that holds a clip the newest decisions no longer keep in its tier."""
    root = fs.upath(root)
    summary = ReshardSummary()
    if not Table(root, "shards").exists():
        return summary
    rows: list[dict] = []
    old: list[str] = []
    for shard, members in _by_shard(root):
        rows += rewrite_tar(root, shard, members, summary)
        old.append(shard)
        if len(old) >= tars_per_commit:
            commit(root, rows, old)
            rows, old = [], []
    if old:
        commit(root, rows, old)
    return summary
