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
import functools
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

READ_BUFFER = 1 << 20  # bytes per ranged GET when decoding: a 2-4 MB mp4 takes a few requests
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
CREDENTIALS_HINT = (
    "credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE and "
    "~/.aws/credentials), the server from AWS_ENDPOINT_URL, the region from AWS_REGION"
)


class StorageError(OSError):
    """An object-store call failed after the client's retries; the message says what to check."""


RETRYABLE = "storage error (a re-run retries it): "


def retryable(exc: StorageError) -> str:
    """The `error` text of a row that failed on storage, not on its input: stages take such
    keys again on the next run (the input itself may be fine)."""
    return RETRYABLE + str(exc)


def is_retryable(error: str | None) -> bool:
    return bool(error) and error.startswith(RETRYABLE)


@dataclass(frozen=True)
class S3Options:
    """Client behaviour; credentials are deliberately not here (they come from the AWS chain)."""

    max_attempts: int = 5
    """tries per request, first included (AWS standard retry: jittered exponential backoff)"""
    connect_timeout_s: float = 5.0
    """seconds to open a connection"""
    request_timeout_s: float = 30.0
    """seconds a request may wait for bytes before it is retried"""


def redact(text: str) -> str:
    """`text` with the value of every credential variable of the environment replaced by ***."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def s3_filesystem(options: S3Options = S3Options()):
    """The process's S3 client for `options` and the current endpoint (one per worker process;
    never pickled). Credentials are left to the AWS SDK's own chain; the endpoint of an
    S3-compatible server is the standard `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _client(options, endpoint, region)


@functools.lru_cache(maxsize=8)
def _client(options: S3Options, endpoint: str | None, region: str | None):
    import pyarrow.fs as pafs

    kw = {}
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        kw = dict(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    return pafs.S3FileSystem(
        region=region,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=options.max_attempts),
        connect_timeout=options.connect_timeout_s,
        request_timeout=options.request_timeout_s,
        allow_delayed_open=True,  # a small object is one PUT, sent when it is closed
        **kw,
    )


def retrying(fn, *args, attempts: int = 3, backoff_s: float = 0.25, **kw):
    """`fn(*args, **kw)`, called again after an OSError (not FileNotFoundError), with backoff.

    For idempotent object-store calls (stat, list, read, delete, a whole-buffer PUT). The SDK
    retries too, but gives up early under a sustained error rate (its retry quota runs dry)
    and not at all when a 503's body is longer than the range asked for."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kw)
        except FileNotFoundError:
            raise
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(backoff_s * 2**attempt)


def _explain(exc: Exception, url: str, op: str) -> StorageError:
    text = redact(str(exc))
    low = text.lower()
    if "nosuchbucket" in low or "bucket" in low and "not found" in low or "no_such_bucket" in low:
        hint = "the bucket does not exist: create it, or fix the URL or AWS_ENDPOINT_URL"
    elif any(s in low for s in ("access_denied", "accessdenied", "invalidaccess", "signature", "forbidden")):
        hint = f"access denied: check the credentials ({CREDENTIALS_HINT})"
    elif any(s in low for s in ("connect", "resolve", "timed out", "timeout", "network", "curl")):
        hint = f"no answer after retries: check AWS_ENDPOINT_URL and the network ({CREDENTIALS_HINT})"
    else:
        hint = CREDENTIALS_HINT
    return StorageError(f"{url}: {op} failed: {text}. Hint: {hint}")


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
            raise _explain(exc, str(self), op) from exc

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
        import pyarrow.fs as pafs

        infos = self._list(recursive=recursive)
        return [S3Path(f"s3://{i.path}") for i in infos if i.type == pafs.FileType.File]

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


def arrow_fs(path: str | os.PathLike | S3Path) -> tuple[object | None, str]:
    """(filesystem, path) for pyarrow reads: (None, local path) or (S3 with retried reads, bucket/key)."""
    p = upath(path)
    return (retrying_s3(), p._path) if isinstance(p, S3Path) else (None, str(p))


def rmtree(path: str | os.PathLike | S3Path) -> None:
    """Delete a folder (a key prefix on S3) and everything under it; missing is fine."""
    p = upath(path)
    if isinstance(p, S3Path):
        p.rmtree()
    else:
        import shutil

        shutil.rmtree(p, ignore_errors=True)


# Reading helpers live in manifests/fs_read.py; callers use them as `fs.open_input` and so on.
from manifests.fs_read import (  # noqa: E402, F401  (re-exported)
    open_input,
    open_stream,
    parquet_dataset,
    parquet_relation,
    retrying_s3,
    wds_open,
)
