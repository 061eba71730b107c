"""One filesystem layer: every input, run root and shard is a local path or an `s3://` URL.

`upath(x)` returns a `pathlib.Path` for a local path (so local behaviour is exactly what it
was) and an `S3Path` for `s3://bucket/key`. `S3Path` has the part of the `Path` API the stages
use (`/`, `name`, `parent`, `exists`, `glob`, `read_bytes`, `unlink`, ...), so code converts at
its edges and keeps its logic. The S3 client is `pyarrow.fs.S3FileSystem`: it is already a
dependency, reads Parquet natively (column projection, coalesced range reads), has the AWS
SDK's retries and timeouts, and imports in milliseconds (no botocore, no torch).

Credentials and the endpoint come from the standard AWS chain, read by the SDK itself:
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE` with
`~/.aws/credentials` and `~/.aws/config`, instance roles; `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_S3`) for an S3-compatible server and `AWS_REGION`. They are never put in a
URL, a repr, a log line or an error message (`redact` scrubs secret values from any text).

The commit protocol that makes written objects visible is in `manifests/commit.py`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from manifests.s3client import (
    CREDENTIALS_HINT,
    RangeReader,
    StorageError,
    explain,
    redact,
    retrying,
    s3_filesystem,
)
from manifests.schemas import RETRYABLE_PREFIX

READ_BUFFER = 1 << 20  # bytes per ranged GET when decoding: a 2-4 MB mp4 takes a few requests
RETRYABLE = RETRYABLE_PREFIX


def retryable(exc: StorageError) -> str:
    """The `error` text of a row that failed on storage, not on its input: stages take such
    keys again on the next run (the input itself may be fine)."""
    return RETRYABLE + str(exc)


def is_retryable(error: str | None) -> bool:
    return bool(error) and error.startswith(RETRYABLE)


class S3Path:
    """`s3://bucket/key` with the `pathlib.Path` subset the pipeline uses. Cheap to pickle:
    only the URL travels; each process builds its own client."""

    __slots__ = ("bucket", "key")

    def __init__(self, url: str):
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        rest = url[len("s3://"):]
        bucket, _, key = rest.partition("/")
        if not bucket or "@" in bucket or "?" in url or "#" in url:
            raise ValueError(
                f"bad S3 URL {redact(url)!r}: use s3://bucket/key with no user, query or fragment; "
                f"{CREDENTIALS_HINT}"
            )
        self.bucket = bucket
        self.key = "/".join(p for p in key.split("/") if p and p != ".")

    # --- pure path operations -----------------------------------------------------------
    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def __repr__(self) -> str:
        return f"S3Path({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, S3Path) and (self.bucket, self.key) == (other.bucket, other.key)

    def __hash__(self) -> int:
        return hash(("s3", self.bucket, self.key))

    def __lt__(self, other: S3Path) -> bool:
        return str(self) < str(other)

    def __truediv__(self, other: str | os.PathLike) -> S3Path:
        other = str(other).strip("/")
        return S3Path(f"{self}/{other}") if other else self

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def parent(self) -> S3Path:
        return S3Path(f"s3://{self.bucket}/{self.key.rpartition('/')[0]}")

    @property
    def parts(self) -> tuple[str, ...]:
        return ("s3://" + self.bucket, *[p for p in self.key.split("/") if p])

    def with_name(self, name: str) -> S3Path:
        return self.parent / name

    def with_suffix(self, suffix: str) -> S3Path:
        return self.with_name(self.stem + suffix)

    def relative_to(self, other: S3Path | str) -> Path:
        base = str(other).rstrip("/") + "/"
        if not str(self).startswith(base):
            raise ValueError(f"{self} is not under {other}")
        return Path(str(self)[len(base):])

    def resolve(self) -> S3Path:
        return self

    absolute = expanduser = resolve

    # --- I/O ------------------------------------------------------------------------------
    @property
    def _path(self) -> str:
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    def _call(self, op: str, fn, *args, **kw):
        try:
            return retrying(fn, *args, **kw)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise explain(exc, str(self), op) from exc

    def _info(self):
        fs = s3_filesystem()
        return self._call("stat", fs.get_file_info, self._path)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def stat(self):
        info = self._info()
        if info.size is None:
            raise FileNotFoundError(str(self))
        mtime = info.mtime.timestamp() if info.mtime else 0.0
        return os.stat_result((0o100644, 0, 0, 1, 0, 0, info.size, mtime, mtime, mtime))

    def _list(self, recursive: bool) -> list:
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self._path, recursive=recursive, allow_not_found=True)
        return self._call("list", s3_filesystem().get_file_info, sel)

    def list_files(self, recursive: bool = True) -> list[S3Path]:
        """Every object (not inferred folder) under this prefix."""
        return [p for p, _, _ in self.list_file_infos(recursive)]

    def list_file_infos(self, recursive: bool = True) -> list[tuple[S3Path, int, float]]:
        """(object, size in bytes, mtime in s since the epoch) of every object under this
        prefix, from the listing itself: no request per object."""
        import pyarrow.fs as pafs

        return [
            (S3Path(f"s3://{i.path}"), i.size, i.mtime.timestamp() if i.mtime else 0.0)
            for i in self._list(recursive=recursive)
            if i.type == pafs.FileType.File
        ]

    def iterdir(self) -> Iterator[S3Path]:
        for info in self._list(recursive=False):
            yield S3Path(f"s3://{info.path}")

    def glob(self, pattern: str) -> Iterator[S3Path]:
        """Objects (and inferred folders) matching `pattern`, one component per `/`; no `**`."""
        yield from self._glob([pattern])[0]

    def _glob(self, patterns: list[str]) -> list[list[S3Path]]:
        """One listing of this prefix, matched against each pattern (all of one depth)."""
        wants = [p.strip("/").split("/") for p in patterns]
        if any("**" in w for w in wants) or len({len(w) for w in wants}) != 1:
            raise ValueError(f"S3Path.glob: '**' and mixed depths are not supported ({patterns!r})")
        base = self._path + "/"
        out: list[list[S3Path]] = [[] for _ in wants]
        for info in self._list(recursive=len(wants[0]) > 1):
            rel = info.path[len(base):].split("/")
            for want, found in zip(wants, out, strict=True):
                if len(rel) == len(want) and all(map(fnmatch.fnmatchcase, rel, want)):
                    found.append(S3Path(f"s3://{info.path}"))
        return out

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """S3 has no folders: a key's prefix exists once an object is under it."""

    def unlink(self, missing_ok: bool = False) -> None:
        fs = s3_filesystem()
        try:
            self._call("delete", fs.delete_file, self._path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        fs = s3_filesystem()
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", fs.delete_dir_contents, self._path, missing_dir_ok=True)

    def read_bytes(self) -> bytes:
        def once():
            with s3_filesystem().open_input_stream(self._path) as f:
                return f.read()

        return self._call("read", once)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """One PUT of the whole buffer: S3 makes it visible whole or not at all."""
        def once():
            with s3_filesystem().open_output_stream(self._path) as f:
                f.write(data)

        self._call("write", once)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def open(self, mode: str = "rb", buffering: int = -1, encoding: str | None = None):
        if mode in ("r", "rt"):
            return io.TextIOWrapper(self.open("rb"), encoding=encoding or "utf-8")
        if mode == "rb":
            return open_input(self)
        if mode == "wb":
            return self._call("write", s3_filesystem().open_output_stream, self._path)
        raise ValueError(f"S3Path.open: mode {mode!r} not supported (rb, r, wb)")


AnyPath = Path | S3Path


def is_s3(x: str | os.PathLike | S3Path) -> bool:
    return isinstance(x, S3Path) or str(x).startswith("s3://")


def upath(x: str | os.PathLike | S3Path) -> AnyPath:
    """A local path -> `pathlib.Path` (unchanged behaviour); `s3://...` -> `S3Path`."""
    if isinstance(x, (Path, S3Path)):
        return x
    text = os.fspath(x)
    if text.startswith("s3://"):
        return S3Path(text)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme and scheme.isalnum():
        raise ValueError(f"{text!r}: only local paths and s3:// URLs are supported")
    return Path(text)


def check_root(root: str | os.PathLike | S3Path) -> None:
    """Fail early, saying what to fix, when an S3 URL's bucket or credentials are wrong."""
    p = upath(root)
    if isinstance(p, S3Path):
        bucket = S3Path(f"s3://{p.bucket}")
        bucket._list(recursive=False)  # raises on bad credentials or an unreachable server
        if not bucket.exists():
            raise StorageError(f"{p}: bucket {p.bucket!r} does not exist: create it, or fix the URL "
                               f"or AWS_ENDPOINT_URL ({CREDENTIALS_HINT})")


def rmtree(path: str | os.PathLike | S3Path) -> None:
    """Delete a folder (a key prefix on S3) and everything under it; missing is fine."""
    p = upath(path)
    if isinstance(p, S3Path):
        p.rmtree()
    else:
        import shutil

        shutil.rmtree(p, ignore_errors=True)


def open_input(path: str | os.PathLike | S3Path, buffer_size: int = READ_BUFFER) -> BinaryIO:
    """A seekable binary reader: a local file, or ranged GETs through a read buffer on S3
    (PyAV's `av.open(fileobj)` decodes from it without downloading the object first)."""
    p = upath(path)
    if isinstance(p, Path):
        return open(p, "rb")
    f = p._call("open", s3_filesystem().open_input_file, p._path)
    return io.BufferedReader(RangeReader(f, str(p)), buffer_size=buffer_size)


def open_stream(path: str | os.PathLike | S3Path, buffer_size: int = 4 * READ_BUFFER) -> BinaryIO:
    """A forward-only reader (tars read front to back): one streaming GET on S3."""
    p = upath(path)
    if isinstance(p, Path):
        return open(p, "rb")
    return p._call("open", s3_filesystem().open_input_stream, p._path, buffer_size=buffer_size)
