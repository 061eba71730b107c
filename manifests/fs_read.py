"""Reading through the filesystem layer (manifests/fs.py): seekable ranged reads for decoders,
streaming reads for tars, Parquet datasets and DuckDB relations over parts on S3."""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path
from typing import BinaryIO

from manifests.fs import READ_BUFFER, S3Path, _explain, is_s3, retrying, s3_filesystem, upath


class _RangeReader(io.RawIOBase):
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
            raise _explain(exc, self.url, "read") from exc
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


def open_input(path: str | os.PathLike | S3Path, buffer_size: int = READ_BUFFER) -> BinaryIO:
    """A seekable binary reader: a local file, or ranged GETs through a read buffer on S3
    (PyAV's `av.open(fileobj)` decodes from it without downloading the object first)."""
    p = upath(path)
    if isinstance(p, Path):
        return open(p, "rb")
    f = p._call("open", s3_filesystem().open_input_file, p._path)
    return io.BufferedReader(_RangeReader(f, str(p)), buffer_size=buffer_size)


def open_stream(path: str | os.PathLike | S3Path, buffer_size: int = 4 * READ_BUFFER) -> BinaryIO:
    """A forward-only reader (tars read front to back): one streaming GET on S3."""
    p = upath(path)
    if isinstance(p, Path):
        return open(p, "rb")
    return p._call("open", s3_filesystem().open_input_stream, p._path, buffer_size=buffer_size)


def retrying_s3():
    """The S3 client as a pyarrow filesystem whose reads go through `_RangeReader` (retried,
    like every read of this layer); Parquet datasets and DuckDB scans read through it."""
    import pyarrow.fs as pafs

    class Handler(pafs.FileSystemHandler):
        def __init__(self, s3):
            self.s3 = s3

        def get_type_name(self):
            return "reelsift-s3"

        def normalize_path(self, path):
            return self.s3.normalize_path(path)

        def equals(self, other):
            return isinstance(other, Handler)

        def get_file_info(self, paths):
            return retrying(self.s3.get_file_info, paths)

        def get_file_info_selector(self, selector):
            return retrying(self.s3.get_file_info, selector)

        def open_input_file(self, path):
            import pyarrow as pa

            f = retrying(self.s3.open_input_file, path)
            return pa.PythonFile(_RangeReader(f, f"s3://{path}"), mode="r")

        def open_input_stream(self, path):
            return self.open_input_file(path)

        def _read_only(self, *args, **kw):
            raise OSError("this view of the bucket is read-only; write through manifests/fs.py")

        create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
        delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only

    return pafs.PyFileSystem(Handler(s3_filesystem()))  # cheap: the client itself is cached


def parquet_dataset(parts: list, schema=None):
    """A pyarrow dataset over Parquet parts, all local or all on S3 (read through this layer)."""
    import pyarrow.dataset as pads

    s3 = [is_s3(p) for p in parts]
    if any(s3) and not all(s3):
        raise ValueError("parquet parts must be all local or all on S3")
    if any(s3):
        return pads.dataset([upath(p)._path for p in parts], schema=schema, format="parquet",
                            filesystem=retrying_s3())
    return pads.dataset([str(p) for p in parts], schema=schema, format="parquet")


_relations = itertools.count()


def parquet_relation(con, parts: list, schema=None) -> str:
    """SQL text that reads Parquet `parts` in DuckDB. Local parts: `read_parquet` (DuckDB's own
    reader). S3 parts: an Arrow dataset over this layer's S3 client, registered with the
    connection, so DuckDB needs no httpfs extension and downloads nothing at run time; filters
    and column projections are pushed down into ranged reads. `schema` (the table's) fills
    columns an older part lacks, as `union_by_name` does for local parts."""
    if not any(is_s3(p) for p in parts):
        quoted = ", ".join("'" + str(p).replace("'", "''") + "'" for p in parts)
        return f"read_parquet([{quoted}], union_by_name=true)"
    name = f"__s3_parts_{next(_relations)}"
    con.register(name, parquet_dataset(parts, schema))
    return name


def wds_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw) -> BinaryIO:
    """`webdataset.gopen` handler for s3:// shard URLs (register in `gopen_schemes['s3']`)."""
    if mode != "rb":
        raise ValueError(f"{url}: shards are read-only here (mode {mode!r})")
    return open_stream(url)
