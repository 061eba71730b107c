"""verify: read every shard back and check it against the `shards` table.

Checks per indexed tar: it exists and reads to the end as a tar; its sample keys equal the
table's keys for that tar; every sample has mp4, txt and json; the json names the same clip; the
mp4 decodes to the frame count the table records. Tars on disk that no row points to are
reported too. Returns a list of problems (empty = all good); each problem names the shard.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import av

from manifests.store import Table


@dataclass(frozen=True)
class Problem:
    shard: str
    message: str

    def __str__(self) -> str:
        return f"{self.shard}: {self.message}"


def _read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(path, "r:") as tar:
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


def verify(root: str | Path, decode: bool = True) -> tuple[int, list[Problem]]:
    """-> (number of samples checked, problems)."""
    root = Path(root)
    rows = [r for r in Table(root, "shards").read().to_pylist() if r["status"] == "ok"]
    by_shard: dict[str, dict[str, dict]] = defaultdict(dict)
    problems: list[Problem] = []
    for r in rows:
        if r["key"] in by_shard[r["shard"]]:
            problems.append(Problem(r["shard"], f"key {r['key']} indexed twice"))
        by_shard[r["shard"]][r["key"]] = r
    checked = 0
    for shard, expected in sorted(by_shard.items()):
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
            problems.append(Problem(shard, f"{len(missing)} indexed sample(s) missing, e.g. {missing[0]}"))
        if extra:
            problems.append(Problem(shard, f"{len(extra)} sample(s) not in the table, e.g. {extra[0]}"))
        for key in sorted(set(expected) & set(samples)):
            checked += 1
            problems.extend(_check_sample(shard, key, samples[key], expected[key], decode))
    indexed = set(by_shard)
    for tar in sorted((root / "shards").glob("*/*.tar")):
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
