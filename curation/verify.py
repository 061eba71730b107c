"""verify: the tars hold exactly the newest kept set, and read back as the `shards` table says.

1. Against the decisions (DuckDB, no tar read): every clip the newest decisions keep has a
   current `shards` row in its tier (or an error row: it could not be cut), and every current
   row of a tar belongs to a kept clip of that tier. Mismatches name the clips.
2. Per indexed tar (streamed one tar's rows at a time): it exists and reads to the end as a tar;
   its sample keys equal the table's keys for that tar; every sample has mp4, txt and json; the
   json names the same clip; the mp4 decodes to the frame count the table records. Tars on disk
   that no current row points to are reported too.
Returns a list of problems (empty = all good); each names the shard (or `decisions`).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av

from manifests import fs
from manifests.commit import committed_glob
from manifests.db import connect, shared_views

NAMED = 20  # clips named per mismatch message

# Explicit anti-joins, not NOT EXISTS with an OR inside: DuckDB turns a correlated subquery into a
# join that first copies every kept decision row, whole, into a hash table (at 10M clips, spilled
# to disk); an anti-join hashes only the shards side and streams the decisions past it.
_NOT_SHARDED = """
    SELECT d.clip_id, d.tier FROM decisions d
    ANTI JOIN shards sh ON sh.clip_id = d.clip_id AND sh.status = 'ok' AND sh.tier = d.tier
    ANTI JOIN shards er ON er.clip_id = d.clip_id AND er.status = 'error'
    WHERE d.keep
"""
_NOT_KEPT = """
    SELECT s.clip_id, s.shard, s.tier, d.keep, d.tier AS decided FROM shards s
    LEFT JOIN decisions d ON d.clip_id = s.clip_id
    WHERE s.status = 'ok' AND NOT coalesce(d.keep AND d.tier = s.tier, false)
"""


@dataclass(frozen=True)
class Problem:
    shard: str
    message: str

    def __str__(self) -> str:
        return f"{self.shard}: {self.message}"


def _read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with fs.open_input(path) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            fh = tar.extractfile(member)
            samples[key][ext] = fh.read() if fh else b""
    return dict(samples)


def _count_frames(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4)) as container:
        return sum(1 for _ in container.decode(video=0))


def _names(rows: list[tuple], n: int) -> str:
    more = f" and {n - len(rows)} more" if n > len(rows) else ""
    return ", ".join(str(r[0]) for r in rows) + more


def check_kept_set(con) -> list[Problem]:
    """Problems where the current shards rows differ from the newest decisions' kept set."""
    problems = []
    # one query, so `decisions` (every filter run's rows) is ranked once for both counts
    counts = f"SELECT (SELECT count(*) FROM ({_NOT_SHARDED})), (SELECT count(*) FROM ({_NOT_KEPT}))"
    missing, stale = con.execute(shared_views(counts) + counts).fetchall()[0]
    if missing:
        rows = con.sql(f"{_NOT_SHARDED} ORDER BY clip_id LIMIT {NAMED}").fetchall()
        problems.append(
            Problem(
                "decisions",
                f"{missing} kept clip(s) in no tar of their tier: {_names(rows, missing)} "
                "(run reelsift shard)",
            )
        )
    if stale:
        rows = con.sql(f"{_NOT_KEPT} ORDER BY clip_id LIMIT {NAMED}").fetchall()
        where = "; ".join(
            f"{c} in {sh} ({'rejected' if not keep else f'now kept in {dt}'})" for c, sh, _, keep, dt in rows
        )
        problems.append(
            Problem(
                "decisions",
                f"{stale} clip(s) in a tar that the newest decisions do not keep there: {where}"
                + (f" and {stale - len(rows)} more" if stale > len(rows) else "")
                + " (run reelsift shard)",
            )
        )
    return problems


def _tars(con) -> Iterator[tuple[str, dict[str, dict]]]:
    """(shard, {key: row}) per indexed tar, streamed in shard order; keys indexed twice are kept
    as a list under `__twice__`."""
    reader = con.sql(
        "SELECT shard, key, clip_id, bytes, n_frames FROM shards WHERE status = 'ok' ORDER BY shard, key"
    ).to_arrow_reader(8192)
    shard, rows = None, {}
    for batch in reader:
        for r in batch.to_pylist():
            if r["shard"] != shard and rows:
                yield shard, rows
                rows = {}
            shard = r["shard"]
            if r["key"] in rows:
                rows.setdefault("__twice__", []).append(r["key"])
            rows[r["key"]] = r
    if rows:
        yield shard, rows


def verify(root: str | Path, decode: bool = True, read_tars: bool = True) -> tuple[int, list[Problem]]:
    """-> (number of samples checked, problems). `read_tars=False` checks only the tables."""
    root = fs.upath(root)
    con = connect(root)
    problems = check_kept_set(con)
    checked = 0
    if not read_tars:
        return checked, problems
    indexed = set()
    for shard, expected in _tars(con):
        indexed.add(shard)
        for key in expected.pop("__twice__", []):
            problems.append(Problem(shard, f"key {key} indexed twice"))
        path = root / shard
        if not path.is_file():
            problems.append(Problem(shard, "indexed in the shards table but missing on disk"))
            continue
        try:
            samples = _read_tar(path)
        except (tarfile.TarError, EOFError, OSError) as exc:
            problems.append(Problem(shard, f"unreadable or truncated tar ({exc})"))
            continue
        missing = sorted(set(expected) - set(samples))
        extra = sorted(set(samples) - set(expected))
        if missing:
            problems.append(
                Problem(shard, f"{len(missing)} indexed sample(s) missing: {', '.join(missing[:NAMED])}")
            )
        if extra:
            problems.append(
                Problem(shard, f"{len(extra)} sample(s) not in the table: {', '.join(extra[:NAMED])}")
            )
        for key in sorted(set(expected) & set(samples)):
            checked += 1
            problems.extend(_check_sample(shard, key, samples[key], expected[key], decode))
    for tar in committed_glob(root / "shards", "*/*.tar"):
        rel = str(tar.relative_to(root))
        if rel not in indexed:
            problems.append(Problem(rel, "tar on disk that no shards row points to"))
    return checked, problems


def _check_sample(shard: str, key: str, parts: dict[str, bytes], row: dict, decode: bool) -> list[Problem]:
    out = []
    for ext in ("mp4", "txt", "json"):
        if ext not in parts:
            out.append(Problem(shard, f"sample {key} has no .{ext}"))
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
            if meta.get("clip", {}).get("clip_id") != row["clip_id"]:
                out.append(Problem(shard, f"sample {key}: json names another clip"))
        except ValueError:
            out.append(Problem(shard, f"sample {key}: json does not parse"))
    if "mp4" in parts:
        if row.get("bytes") is not None and len(parts["mp4"]) != row["bytes"]:
            out.append(
                Problem(shard, f"sample {key}: mp4 is {len(parts['mp4'])} bytes, table says {row['bytes']}")
            )
        elif decode:
            try:
                n = _count_frames(parts["mp4"])
                if row.get("n_frames") is not None and n != row["n_frames"]:
                    out.append(
                        Problem(shard, f"sample {key}: {n} frames decoded, table says {row['n_frames']}")
                    )
            except (av.error.FFmpegError, IndexError) as exc:
                out.append(Problem(shard, f"sample {key}: mp4 does not decode ({exc})"))
    return out
