"""ingest: list input files, hash and probe each one -> `videos` table.

Every input file gets exactly one row, keyed by its absolute path: `ok` with stream facts,
`error` with a readable reason (empty, truncated, not a video, audio only, broken symlink, not a
regular file (fifo), permission denied, ...), or `rejected` when its bytes duplicate a file
already ingested. A file changed since its ingest (size or mtime) gets a second row, a new video.
"""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from stat import S_ISREG

import numpy as np
import pyarrow as pa

from curation.config import IngestConfig
from curation.errors import PERMANENT, error_fields, problem_fields
from curation.guard import Guard, HardTimeout, WorkerDied
from filters.video import VideoDecodeError, file_hash, file_problem, probe
from manifests import fs
from manifests.configtools import InputError
from manifests.schemas import VIDEOS
from manifests.store import rows_to_table

_GLOB_CHARS = set("*?[")


# What the listing says of each input file; size_bytes and mtime (s since the epoch) are null
# where the file is not there (missing, dangling link), `regular` is false for a FIFO, device,
# folder or an object whose stat failed for a reason other than "not found".
LISTING = pa.schema(
    [
        pa.field("path", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("mtime", pa.float64()),
        pa.field("regular", pa.bool_()),
    ]
)


def list_sources(spec: str | Path, cfg: IngestConfig, threads: int = 32) -> pa.Table:
    """`list_inputs` with each file's size and mtime (schema LISTING), for change detection.

    An S3 prefix's listing carries them (no request per object); local files are stat'ed in
    `threads` threads, once each (the walk itself stats none); the paths of a list file are
    stat'ed the same way (on S3 one HEAD each, in parallel).
    """
    if fs.is_s3(str(spec)):
        s3, exts = fs.upath(str(spec)), tuple(e.lower() for e in cfg.extensions)
        named = _s3_named(s3, exts)
        return _s3_listing(s3, exts, cfg.recursive) if named is None else stat_paths(named, threads)
    return stat_paths(list_inputs(spec, cfg), threads)


def stat_paths(paths: list[str], threads: int = 32, chunk: int = 2048) -> pa.Table:
    """LISTING rows of `paths`, stat'ed in chunks over a thread pool (a stat drops the GIL)."""
    if not paths:
        return LISTING.empty_table()
    with ThreadPoolExecutor(max(1, min(threads, len(paths) // chunk + 1))) as pool:
        parts = list(pool.map(_stat_chunk, (paths[i:i + chunk] for i in range(0, len(paths), chunk))))
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "size_bytes": pa.array([s for p in parts for s in p[0]], pa.int64()),
            "mtime": pa.array([m for p in parts for m in p[1]], pa.float64()),
            "regular": pa.array([r for p in parts for r in p[2]], pa.bool_()),
        },
        schema=LISTING,
    )


def _stat_chunk(paths: list[str]) -> tuple[list, list, list]:
    sizes, mtimes, regular = [], [], []
    for path in paths:
        try:
            st = fs.upath(path).stat() if fs.is_s3(path) else os.stat(path)
        except FileNotFoundError:
            sizes.append(None), mtimes.append(None), regular.append(False)
            continue
        except (OSError, fs.StorageError):  # there but unreadable: ingest writes why
            sizes.append(-1), mtimes.append(0.0), regular.append(False)
            continue
        sizes.append(st.st_size), mtimes.append(st.st_mtime), regular.append(S_ISREG(st.st_mode))
    return sizes, mtimes, regular


def list_inputs(spec: str | Path, cfg: IngestConfig) -> list[str]:
    """Absolute paths of the videos named by `spec`: a folder, a glob, a list file, or a file.

    Folders are walked following symlinks, each real folder once (a symlink loop can't hang
    the walk). A list file (.txt/.lst) holds one path per line; '#' starts a comment.
    """
    spec = str(spec)
    exts = tuple(e.lower() for e in cfg.extensions)
    if fs.is_s3(spec):
        s3 = fs.upath(spec)
        named = _s3_named(s3, exts)
        return named if named is not None else _s3_listing(s3, exts, cfg.recursive).column("path").to_pylist()
    if any(c in spec for c in _GLOB_CHARS) and not os.path.exists(spec):
        found = [p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p)]
        if not found:
            raise InputError(f"--input {spec!r}: the pattern matches no file")
        return sorted(os.path.abspath(p) for p in found)
    path = Path(spec)
    if path.is_dir():
        return _walk(path, exts, cfg.recursive)
    if path.is_file() and path.suffix.lower() in (".txt", ".lst"):
        base = os.path.abspath(path.parent)
        out = set()
        for line in path.read_text().splitlines():  # string ops only: 10^6 lines take ~1 s
            line = line.split("#", 1)[0].strip()
            if fs.is_s3(line):
                out.add(str(fs.upath(line)))
            elif line:
                full = os.path.join(base, line)  # an absolute line stays itself
                # normpath only where needed: it is most of the cost of a 10^6-line list
                out.add(os.path.normpath(full) if "//" in full or "/." in full or full[-1] == "/" else full)
        return sorted(out)
    if path.is_file():
        return [os.path.abspath(path)]
    raise InputError(f"--input {spec!r}: no such folder, file or glob")


def _s3_named(spec: fs.S3Path, exts: tuple[str, ...]) -> list[str] | None:
    """The paths an s3:// input names one by one: the lines of a list file (.txt/.lst, paths or
    URLs), or the object itself; None for a prefix (listed by `_s3_listing`)."""
    if spec.suffix.lower() in (".txt", ".lst") and spec.is_file():
        lines = (ln.split("#", 1)[0].strip() for ln in spec.read_text().splitlines())
        return sorted({str(fs.upath(ln) if fs.is_s3(ln) else spec.parent / ln) for ln in lines if ln})
    if spec.name.lower().endswith(exts) and spec.is_file():
        return [str(spec)]
    return None


def _s3_listing(spec: fs.S3Path, exts: tuple[str, ...], recursive: bool) -> pa.Table:
    """LISTING rows of the objects with a video extension under an s3:// prefix (recursively
    unless ingest.recursive is false); the listing gives each object's size and mtime."""
    found = sorted((str(p), size, mtime) for p, size, mtime in spec.list_file_infos(recursive)
                   if p.name.lower().endswith(exts))
    if not found:
        raise InputError(f"--input {spec}: no object with a video extension {list(exts)} under this prefix")
    paths, sizes, mtimes = zip(*found, strict=True)
    return pa.table({"path": list(paths), "size_bytes": list(sizes), "mtime": list(mtimes),
                     "regular": [True] * len(paths)}, schema=LISTING)


def _walk(top: Path, exts: tuple[str, ...], recursive: bool) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    # os.walk sorts each entry into dirnames (a folder, or a link to one) or filenames by the
    # entry's own type, so a name in filenames needs no second stat; `top` is made absolute
    # once, so the joined paths are too.
    for dirpath, dirnames, filenames in os.walk(os.path.abspath(top), followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []  # already walked through another link: a loop or a second path
            continue
        seen.add(real)
        dirnames.sort()
        if not recursive:
            dirnames[:] = []
        # Not only regular files: a dangling link or a FIFO named like a video gets its error
        # row at ingest instead of vanishing without a word.
        out.extend(os.path.join(dirpath, name) for name in sorted(filenames) if name.lower().endswith(exts))
    return out


def hash_and_probe(path: str, probe_frames: int):
    """(video_id, Probe or the VideoDecodeError of a file that does not decode) of one file:
    runs in the guard's child process. A file whose bytes read still gets its hash."""
    video_id = file_hash(path)
    try:
        return video_id, probe(path, probe_frames)
    except VideoDecodeError as exc:
        return video_id, exc


class IngestStage:
    """Batch of {'path'} -> one `videos` row per path."""

    def __init__(self, cfg: IngestConfig):
        self.cfg = cfg
        self.guard = Guard()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return rows_to_table([self.one(str(p)) for p in batch["path"]], VIDEOS)

    def one(self, path: str) -> dict:
        # video_id stays NULL where the bytes could not be read (or the read timed out)
        row: dict = {"path": path, "video_id": None, "status": "error"}
        problem = file_problem(path)  # never opens a FIFO or a device
        if problem:
            return {**row, **problem_fields(problem)}
        try:
            row["size_bytes"] = fs.upath(path).stat().st_size
            row["video_id"], info = self.guard.call(
                hash_and_probe, (path, self.cfg.probe_frames), self.cfg.timeout_s
            )
            if isinstance(info, VideoDecodeError):
                raise info
        except VideoDecodeError as exc:
            return {**row, **error_fields(exc), "error": exc.reason}
        except (fs.StorageError, HardTimeout, WorkerDied) as exc:
            return {**row, **error_fields(exc)}
        except PermissionError as exc:
            return {**row, **error_fields(exc), "error": "permission denied"}
        except OSError as exc:
            return {**row, **error_fields(exc), "error": f"cannot read file: {exc.strerror or exc}"}
        dw, dh = info.display_size
        if info.width * info.height > self.cfg.max_pixels:
            row["error_kind"] = PERMANENT
            row["error"] = (
                f"frame size {info.width}x{info.height} is over ingest.max_pixels={self.cfg.max_pixels}: "
                "raise it to take this video (decoding needs memory in proportion)"
            )
            return row
        row.update(
            status="ok",
            duration_s=info.duration_s,
            fps=info.fps,
            vfr=info.vfr,
            n_frames=info.n_frames,
            width=info.width,
            height=info.height,
            rotation=info.rotation,
            display_width=dw,
            display_height=dh,
            codec=info.codec,
            pix_fmt=info.pix_fmt,
            has_audio=info.has_audio,
            bitrate=info.bitrate,
        )
        return row


class DuplicateMarker:
    """Driver-side: a file whose bytes equal an earlier file's becomes `rejected`.

    `seen` maps video_id -> path for every ok row already in the table, so the check also
    holds across runs.
    """

    def __init__(self, seen: dict[str, str]):
        self.seen = dict(seen)

    def __call__(self, table: pa.Table) -> pa.Table:
        rows = table.to_pylist()
        for row in rows:
            if row["status"] != "ok":
                continue
            first = self.seen.setdefault(row["video_id"], row["path"])
            if first != row["path"]:
                row["status"] = "rejected"
                row["reasons"] = [f"duplicate_of={first}"]
        return pa.Table.from_pylist(rows, schema=VIDEOS)
