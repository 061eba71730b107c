"""The S3 client under manifests/fs.py: one pyarrow S3FileSystem per process, retries around
its calls, error messages that say what to check (never a credential), and the ranged reader
that decoders seek in."""

from __future__ import annotations

import functools
import io
import os
import time
from dataclasses import dataclass

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
CREDENTIALS_HINT = (
    "credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE and "
    "~/.aws/credentials), the server from AWS_ENDPOINT_URL, the region from AWS_REGION"
)


class StorageError(OSError):
    """An object-store call failed after the client's retries; the message says what to check."""


@dataclass(frozen=True)
class S3Options:
    """Client behaviour; credentials are deliberately not here (they come from the AWS chain)."""

    max_attempts: int = 5
    """tries per request, first included (AWS standard retry: jittered exponential backoff)"""
    connect_timeout_s: float = 5.0
    """seconds to open a connection"""
    request_timeout_s: float = 30.0
    """seconds a request may wait for bytes before it is retried"""
    retry_quota: bool = True
    """AWS standard retries, which stop early once a shared retry quota runs dry under many
    errors; False: the SDK's older strategy, which retries every request `max_attempts` times"""


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
        retry_strategy=(pafs.AwsStandardS3RetryStrategy if options.retry_quota
                        else pafs.AwsDefaultS3RetryStrategy)(max_attempts=options.max_attempts),
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


def explain(exc: Exception, url: str, op: str) -> StorageError:
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


class RangeReader(io.RawIOBase):
    """Seekable raw reader over an S3 object: every `readinto` is one ranged GET."""

    def __init__(self, f, url: str):
        self._f, self.url = f, url
        self._size = f.size()  # known from opening; no request
        self.requests = 0
        self.bytes_fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._f.tell() >= self._size:
            return 0
        pos = self._f.tell()
        try:
            data = retrying(lambda: self._f.read_at(len(b), pos))
        except OSError as exc:
            raise explain(exc, self.url, "read") from exc
        self._f.seek(pos + len(data))
        n = len(data)
        b[:n] = data
        self.requests += 1
        self.bytes_fetched += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()
