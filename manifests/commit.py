"""Visibility of written objects: the commit step that replaces rename on object stores.

S3 has no rename. `atomic_write(final)` writes the object's bytes under its final key and then
puts an empty marker object `<final>.committed`; an object counts only once its marker exists.
`committed_glob` lists a folder once and keeps only marked objects, so a reader never sees an
object whose writer failed or was killed (pyarrow completes an upload when the stream closes,
even on an exception, so an unmarked object may be whole or partial: it is never read).
`remove_uncommitted` deletes unmarked objects and lone markers (the orphans of a killed run);
`remove` deletes the marker before the object, so a crash in between leaves an orphan, never a
marked hole. Keys are chosen by the callers from content and plans, never from the attempt, so a
re-run after SIGKILL writes the same keys. On local disk the same calls are a temp file, fsync and
`os.replace`, as before.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from manifests.fs import AnyPath, S3Path, upath

MARKER = ".committed"


def marker(path: S3Path) -> S3Path:
    return path.with_name(path.name + MARKER)


def _unmark(m: S3Path) -> S3Path:
    return m.with_name(m.name[: -len(MARKER)])


@contextlib.contextmanager
def atomic_write(final: str | os.PathLike | S3Path) -> Iterator[BinaryIO]:
    """Yield a binary file for `final`'s bytes; `final` becomes visible only if the block ends
    without an exception. Local: temp file, fsync, `os.replace`. S3: the object, then its
    marker (see the module docstring); a failed block deletes what it wrote."""
    p = upath(final)
    if isinstance(p, Path):
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.parent / f".tmp-{uuid.uuid4().hex}{p.suffix}"
        try:
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        return
    ok = False
    try:
        with p.open("wb") as fh:
            yield fh
        ok = True
    finally:
        if not ok:
            p.unlink(missing_ok=True)
    marker(p).write_bytes(b"")


def committed_glob(base: str | os.PathLike | S3Path, pattern: str) -> list[AnyPath]:
    """Sorted objects under `base` matching `pattern` that a commit made visible."""
    b = upath(base)
    if isinstance(b, Path):
        return sorted(b.glob(pattern))
    found, marks = b._glob([pattern, pattern + MARKER])
    return sorted(set(found) & {_unmark(m) for m in marks})


def remove(path: str | os.PathLike | S3Path) -> None:
    """Delete an object and its marker (marker first: a crash in between leaves an orphan)."""
    p = upath(path)
    if isinstance(p, S3Path):
        marker(p).unlink(missing_ok=True)
    p.unlink(missing_ok=True)


def remove_uncommitted(base: str | os.PathLike | S3Path, pattern: str) -> int:
    """Delete what killed writers left under `base` for `pattern`: local temp files
    (`.tmp-*` beside the matches), S3 objects without a marker and markers without an object."""
    b = upath(base)
    head, _, tail = pattern.rpartition("/")
    if isinstance(b, Path):
        n = 0
        for tmp in b.glob(f"{head}/.tmp-*" if head else ".tmp-*"):
            tmp.unlink(missing_ok=True)
            n += 1
        return n
    found, marks = (set(x) for x in b._glob([pattern, pattern + MARKER]))
    stale = (found - {_unmark(m) for m in marks}) | {m for m in marks if _unmark(m) not in found}
    for obj in sorted(stale):
        obj.unlink(missing_ok=True)
    return len(stale)
