"""Reading through the filesystem layer (manifests/fs.py): seekable ranged reads for decoders,
streaming reads for tars, Parquet datasets and DuckDB relations over parts on S3."""

from __future__ import annotations

import itertools
import os
from typing import BinaryIO

from manifests.fs import S3Path, is_s3, open_stream, upath
from manifests.s3client import RangeReader, S3Options, retrying, s3_filesystem
from manifests.sqltext import literal


def retrying_s3():
    """The S3 client as a pyarrow filesystem whose reads go through `RangeReader` (retried,
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
            return pa.PythonFile(RangeReader(f, f"s3://{path}"), mode="r")

        def open_input_stream(self, path):
            return self.open_input_file(path)

        def _read_only(self, *args, **kw):
            raise OSError("this view of the bucket is read-only; write through manifests/fs.py")

        create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = _read_only
        delete_file = move = copy_file = open_output_stream = open_append_stream = _read_only

    return pafs.PyFileSystem(Handler(s3_filesystem()))  # cheap: the client itself is cached


SCAN_OPTIONS = S3Options(max_attempts=10, retry_quota=False)
"""The S3 client of Parquet scans: Arrow's own, with the SDK retrying each request up to 10
times (no shared quota that a burst of errors could drain)."""


def parquet_dataset(parts: list, schema=None):
    """A pyarrow dataset over Parquet parts, all local or all on S3.

    S3 parts are read by Arrow's own S3 client, never through Python (`retrying_s3`): Arrow
    opens a part from inside its scan while it holds a lock of its own, and a Python callback
    there needs the GIL. A DuckDB thread that starts a scan holds the GIL while it waits for
    that lock, so the two waited for each other forever (seen: a `run` on an S3 root hung in
    caption's pending query, every thread of the driver in a futex wait)."""
    import pyarrow.dataset as pads

    s3 = [is_s3(p) for p in parts]
    if any(s3) and not all(s3):
        raise ValueError("parquet parts must be all local or all on S3")
    if any(s3):
        return pads.dataset([upath(p)._path for p in parts], schema=schema, format="parquet",
                            filesystem=s3_filesystem(SCAN_OPTIONS))
    return pads.dataset([str(p) for p in parts], schema=schema, format="parquet")


_relations = itertools.count()


def parquet_relation(con, parts: list, schema=None) -> str:
    """SQL text that reads Parquet `parts` in DuckDB. Local parts: `read_parquet` (DuckDB's own
    reader). S3 parts: an Arrow dataset over this layer's S3 client, registered with the
    connection, so DuckDB needs no httpfs extension and downloads nothing at run time; filters
    and column projections are pushed down into ranged reads. `schema` (the table's) fills
    columns an older part lacks, as `union_by_name` does for local parts."""
    if not any(is_s3(p) for p in parts):
        quoted = ", ".join(literal(p) for p in parts)
        return f"read_parquet([{quoted}], union_by_name=true)"
    name = f"__s3_parts_{next(_relations)}"
    con.register(name, parquet_dataset(parts, schema))
    return name


def wds_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw) -> BinaryIO:
    """`webdataset.gopen` handler for s3:// shard URLs (register in `gopen_schemes['s3']`)."""
    if mode != "rb":
        raise ValueError(f"{url}: shards are read-only here (mode {mode!r})")
    return open_stream(url)


def arrow_fs(path: str | os.PathLike | S3Path) -> tuple[object | None, str]:
    """(filesystem, path) for pyarrow reads: (None, local path) or (S3 with retried reads, bucket/key)."""
    p = upath(path)
    return (retrying_s3(), p._path) if isinstance(p, S3Path) else (None, str(p))
