"""How every stage turns a failure into an error row: one rule, a typed `error_kind`.

A stage catches what goes wrong with one input and writes `error_fields(exc, what)` into that
input's row; the run goes on. The kind (manifests/schemas.py ERROR_KINDS) decides what happens
next, the message is for people:
  retryable  a storage call failed (fs.StorageError): the stage's next run takes the key again
  timeout    the input ran past its time limit (any TimeoutError)
  disk_full  the run root has no room (OSError ENOSPC/EDQUOT/EFBIG, or NoSpace): the driver
             stores what was written and stops the stage with DiskFull
  permanent  anything else: the input itself is bad
"""

from __future__ import annotations

import errno
from typing import Any

import pyarrow as pa

from manifests import fs
from manifests.configtools import InputError

RETRYABLE, DISK_FULL, TIMEOUT, PERMANENT = "retryable", "disk_full", "timeout", "permanent"

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, NoSpace) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS)


class NoSpace(OSError):
    """A worker could not write `path` (about `need` bytes) for want of space."""

    def __init__(self, path: Any, need: int):
        super().__init__(errno.ENOSPC, f"no space left: {path} needs about {int(need)} bytes")
        self.path, self.need = str(path), int(need)

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return (type(self), (self.path, self.need))


def kind_of(exc: BaseException) -> str:
    if is_disk_full(exc):
        return DISK_FULL
    if isinstance(exc, fs.StorageError):
        return RETRYABLE
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    return PERMANENT


def error_fields(exc: BaseException, what: str | None = None) -> dict[str, str]:
    """The status, error and error_kind of a row whose input failed with `exc`; `what` words
    the step that failed (`decode failed`): `<what>: <exc>`."""
    kind = kind_of(exc)
    text = fs.retryable(exc) if kind == RETRYABLE else (str(exc) or type(exc).__name__)
    return dict(status="error", error=f"{what}: {text}" if what else text, error_kind=kind)


def problem_fields(problem: str) -> dict[str, str]:
    """Fields of a row whose source has `problem` (filters.video.file_problem/source_changed)."""
    kind = RETRYABLE if fs.is_retryable(problem) else PERMANENT
    return dict(status="error", error=problem, error_kind=kind)


def is_retryable(row: dict) -> bool:
    """A stored row the stage's next run takes again (rows from before `error_kind` existed
    by their message)."""
    kind = row.get("error_kind")
    return kind == RETRYABLE or (kind is None and fs.is_retryable(row.get("error")))


class DiskFull(InputError):
    """The run root's filesystem (or the file-size limit) has no room for the next part or tar.

    Nothing is lost: rows are only counted done once their part is visible, so after space is
    freed the same command redoes exactly the rows that were not written.
    """

    def __init__(self, root, what: str, reason: str, need: int | None = None):
        import shutil

        try:
            free = f"{shutil.disk_usage(root).free} bytes free"
        except OSError:
            free = "free space unknown"
        needs = f"; it needs about {need} bytes" if need is not None else ""
        super().__init__(
            f"run root {root}: cannot write {what} ({reason}){needs} ({free}). "
            "Free some space there and run the same command again: the rows already written are "
            "kept and the rest are redone"
        )
        self.root, self.need = root, need

    @classmethod
    def for_part(cls, table, rows: pa.Table, exc: OSError) -> DiskFull:
        import pyarrow.parquet as pq

        buf = pa.BufferOutputStream()  # the part's exact size, measured in memory
        pq.write_table(rows, buf)
        return cls(table.root, f"the next {table.name} part", exc.strerror, buf.getvalue().size)

    @classmethod
    def from_rows(cls, table, rows: pa.Table) -> DiskFull:
        """The stop for `disk_full` rows that workers returned (their `error` says what and how
        much)."""
        errors = sorted(set(rows.column("error").to_pylist()))
        return cls(table.root, f"{rows.num_rows} clip(s) into {table.name} files", "; ".join(errors[:3]))


def disk_full_rows(batch: pa.Table) -> pa.Array | None:
    """Boolean mask of the `disk_full` rows of `batch`, or None when it has none (one vectorised
    test per batch: every stage's batches pass here)."""
    import pyarrow.compute as pc

    if "error_kind" not in batch.column_names:
        return None
    hit = pc.fill_null(pc.equal(batch.column("error_kind"), DISK_FULL), False)
    return hit if pc.any(hit).as_py() else None
