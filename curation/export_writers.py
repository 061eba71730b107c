"""The writers of `reelsift export` (curation/export.py), one per format.

A writer gets the plan rows of one tar with their mp4 bytes (`add`), says which clip files an
earlier run exported (`done_relation`, a DuckDB relation of `file_name`s) and writes the
metadata at the end (`finish`). Folder formats record exported file names in journal parts under
`<out>/.reelsift-export/<format>/`; Lance's own commits are its record.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from manifests import commit, fs, fs_read

STATE = ".reelsift-export"
JOURNAL_ROWS = 50_000  # a journal part at least this often (rows) ...
JOURNAL_S = 10.0  # ... or seconds
LANCE_BYTES = 64 << 20  # clip bytes buffered before a Lance append
LANCE_ROWS = 50_000
REMOVE_THREADS = 16  # concurrent DELETEs when an S3 export drops clips a re-filter no longer keeps
DONE = pa.schema([("file_name", pa.string())])


@contextlib.contextmanager
def publishing(final: fs.AnyPath) -> Iterator[str]:
    """A local temp path to write; when the block succeeds it becomes `final` in one step (a
    rename, or one upload to S3 that is deleted again if it fails), with no marker beside it:
    these files are read by other tools."""
    local = isinstance(final, Path)
    if local:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{uuid.uuid4().hex}{final.suffix}"
    else:
        tmp = Path(tempfile.gettempdir()) / f"reelsift-export-{uuid.uuid4().hex}{final.suffix}"
    try:
        yield str(tmp)
        if local:
            os.replace(tmp, final)
        else:
            ok = False
            try:
                with final.open("wb") as dst, open(tmp, "rb") as src:
                    shutil.copyfileobj(src, dst, 8 << 20)
                ok = True
            finally:
                if not ok:
                    final.unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class TarMember:
    """A clip's bytes where they lie in a local tar: copied into a local file by the kernel
    (copy_file_range), as `cp` does, never through Python; read whole only for S3 or Lance."""

    tar: Path
    offset: int
    size: int

    def __len__(self) -> int:
        return self.size

    def read(self) -> bytes:
        with open(self.tar, "rb") as fh:
            fh.seek(self.offset)
            return fh.read(self.size)

    def copy_to(self, path: Path) -> None:
        with open(self.tar, "rb") as src, open(path, "wb") as dst:
            offset, left = self.offset, self.size
            try:
                while left:
                    n = os.copy_file_range(src.fileno(), dst.fileno(), left, offset)
                    if n == 0:
                        raise OSError(f"{self.tar}: ends inside a member (truncated tar)")
                    offset, left = offset + n, left - n
            except OSError as exc:  # a file system without copy_file_range: copy in user space
                if left != self.size or getattr(exc, "errno", None) not in _NO_KERNEL_COPY:
                    raise
                dst.write(self.read())


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def put_file(final: fs.AnyPath, data: bytes | TarMember) -> None:
    """Write a clip file whole or not at all: temp file and rename, or one PUT on S3."""
    if isinstance(final, Path):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{uuid.uuid4().hex}.mp4"
        try:
            if isinstance(data, TarMember):
                data.copy_to(tmp)
            else:
                tmp.write_bytes(data)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        final.write_bytes(data.read() if isinstance(data, TarMember) else data)


class _Writer:
    STREAM = "*"  # the plan columns `add` gets

    def __init__(self, out: fs.AnyPath, con, copy_clips: bool):
        self.out, self.con, self.copy_clips = out, con, copy_clips
        self.written = 0
        self.bytes_copied = 0
        self.removed = 0  # clips of an earlier run the newest decisions no longer keep

    def flush(self) -> None:
        pass


class FolderWriter(_Writer):
    """Clip files under `<out>/videos/`, a journal of the exported file names, and one metadata
    file (`META`) written by `select` over the exported clips.

    The folder follows the newest decisions: `finish` deletes the files of journaled clips the
    plan no longer holds, then rewrites the journal without them. A `running` marker lasts as long
    as a run. A run that finds one (the run before it was killed, maybe between writing a file and
    journaling it, or between deleting files and rewriting the journal) lists the clip files, trusts
    the journal only where a file exists, and in `finish` deletes every file the journal does not
    hold by then."""

    STREAM = "p.file_name, p.shard, p.key"
    META = ""  # the metadata file, under the export folder
    NAME = ""  # the journal's folder under .reelsift-export/
    COPY = ""  # DuckDB COPY options of the metadata file

    def __init__(self, out, con, copy_clips):
        super().__init__(out, con, copy_clips)
        self.state = out / STATE / self.NAME
        self.running = self.state / "running"
        self.legacy = self.state / "started"  # older exports' marker, never removed: check those once
        self.resumed = self.running.exists() or self.legacy.exists()
        self.on_disk: str | None = None  # a resumed run's listing of the clip files, as a relation
        if self.resumed:
            self.on_disk = self._register(self._clip_files())
            self._rewrite_journal(f"SELECT file_name FROM {self.done_relation()} "
                                  f"SEMI JOIN {self.on_disk} f USING (file_name)")
        else:
            with commit.atomic_write(self.running) as fh:
                fh.write(b"")
        self.pending: list[pa.Array] = []
        self.pending_rows = 0
        self.last_flush = time.monotonic()

    def _register(self, table: pa.Table) -> str:
        name = f"__export_names_{uuid.uuid4().hex[:8]}"
        self.con.register(name, table)
        return name

    def _clip_files(self) -> pa.Table:
        """Every file under `<out>/videos/` (temp files of killed writes too), as `file_name`s."""
        base = self.out / "videos"
        if isinstance(base, Path):
            files = (p for p in base.rglob("*") if p.is_file())
        else:
            files = iter(base.list_files(recursive=True))
        chunks = []
        while chunk := [p.relative_to(self.out).as_posix() for p in itertools.islice(files, 100_000)]:
            chunks.append(pa.array(chunk, pa.string()))
        return pa.table({"file_name": pa.chunked_array(chunks, pa.string())})

    def done_relation(self) -> str:
        parts = commit.committed_glob(self.state, "done-*.parquet")
        if parts:
            return fs_read.parquet_relation(self.con, parts, DONE)
        return self._register(DONE.empty_table())

    def _rewrite_journal(self, names_sql: str) -> None:
        """Replace the journal by one part holding `names_sql`'s rows: the new part is committed
        before the old ones go, so a crash in between leaves a superset (a resumed run trims it)."""
        old = commit.committed_glob(self.state, "done-*.parquet")
        reader = self.con.sql(names_sql).to_arrow_reader(JOURNAL_ROWS)
        with commit.atomic_write(self.state / f"done-{time.time_ns():020d}.parquet") as fh, \
                pq.ParquetWriter(fh, DONE) as pw:
            for batch in reader:
                pw.write_batch(batch.cast(DONE))
        for part in old:
            commit.remove(part)

    def _remove(self, names_sql: str) -> int:
        """Delete the clip files `names_sql` names -> how many. On S3 each is one DELETE request,
        so they go REMOVE_THREADS at a time."""
        n = 0
        unlink = lambda name: (self.out / name).unlink(missing_ok=True)
        threads = 1 if isinstance(self.out, Path) else REMOVE_THREADS
        with ThreadPoolExecutor(threads, thread_name_prefix="reelsift-export-rm") as pool:
            for batch in self.con.sql(names_sql).to_arrow_reader(JOURNAL_ROWS):
                list(pool.map(unlink, batch.column(0).to_pylist()))
                n += batch.num_rows
        return n

    def add(self, rows: pa.Table, clips: list[bytes | TarMember | None]) -> None:
        names = rows.column("file_name").to_pylist()
        for name, data in zip(names, clips, strict=True):
            if data is None:
                continue
            target = self.out / name
            if self.resumed and target.exists():
                continue
            put_file(target, data)
            self.bytes_copied += len(data)
        self.pending.append(rows.column("file_name"))
        self.pending_rows += rows.num_rows
        self.written += rows.num_rows
        if self.pending_rows >= JOURNAL_ROWS or time.monotonic() - self.last_flush >= JOURNAL_S:
            self.flush()

    def flush(self) -> None:
        if self.pending_rows:
            chunks = [c for col in self.pending for c in col.chunks]
            table = pa.table({"file_name": pa.chunked_array(chunks, pa.string())})
            with commit.atomic_write(self.state / f"done-{time.time_ns():020d}.parquet") as fh:
                pq.write_table(table, fh)
        self.pending, self.pending_rows, self.last_flush = [], 0, time.monotonic()

    def select(self, exported: str) -> str:
        raise NotImplementedError

    def finish(self, plan: str) -> int:
        """Delete the files of clips the newest decisions no longer keep (and, after a killed run,
        any file the journal does not hold), then write the metadata of the exported clips unless
        an earlier run wrote the same (same clips, same captions) -> its rows."""
        done = self.done_relation()
        stale = f"SELECT file_name FROM {done} x ANTI JOIN {plan} p USING (file_name)"
        self.removed = self._remove(stale)
        if self.on_disk is not None:  # files of a killed run's writes or deletes
            self.removed += self._remove(
                f"SELECT file_name FROM {self.on_disk} f ANTI JOIN {done} x USING (file_name)")
        if self.removed:
            self._rewrite_journal(f"SELECT file_name FROM {done} x SEMI JOIN {plan} p USING (file_name)")
            done = self.done_relation()
        exported = f"SELECT p.* FROM {plan} p SEMI JOIN {done} x ON x.file_name = p.file_name"
        rows, digest = self.con.sql(
            f"SELECT count(*), coalesce(sum(hash(file_name, text)), 0)::VARCHAR FROM ({exported})"
        ).fetchall()[0]
        stamp = self.state / "metadata.json"
        meta = self.out / self.META
        want = {"rows": rows, "digest": digest}
        if not (stamp.exists() and json.loads(stamp.read_text()) == want and meta.exists()):
            with publishing(meta) as tmp:
                self.con.execute(f"COPY ({self.select(exported)}) TO '{tmp}' {self.COPY}")
            with commit.atomic_write(stamp) as fh:
                fh.write(json.dumps(want).encode())
        for marker in (self.running, self.legacy):
            if marker.exists():
                commit.remove(marker)
        return rows


class OpenSoraWriter(FolderWriter):
    """`opensora.csv`: Open-Sora's data columns (path, text, num_frames, height, width,
    aspect_ratio, fps, resolution, aes, flow, ocr, match) plus `id` and `tier`."""

    META, NAME, COPY = "opensora.csv", "opensora", "(HEADER, DELIMITER ',')"

    def select(self, exported: str) -> str:
        base = str(self.out.resolve() if isinstance(self.out, Path) else self.out).replace("'", "''")
        return f"""SELECT '{base}/' || file_name AS path, text, num_frames, height, width,
                   height / width AS aspect_ratio, fps, height * width AS resolution, aes, flow, ocr,
                   clip_score AS match, clip_id AS id, tier
            FROM ({exported}) ORDER BY file_name"""


class VideoFolderWriter(FolderWriter):
    """`metadata.jsonl` beside the clips: `file_name` (relative), `text` and the scores, as
    HF `datasets`' videofolder loader reads it."""

    META, NAME, COPY = "metadata.jsonl", "videofolder", "(FORMAT json)"

    def select(self, exported: str) -> str:
        return f"""SELECT file_name, text, clip_id, tier, num_frames, height, width, fps, aes, flow, ocr,
                   clip_score, source, start_s, end_s
            FROM ({exported}) ORDER BY file_name"""


LANCE = pa.schema([
    ("file_name", pa.string()), ("clip_id", pa.string()), ("tier", pa.string()), ("text", pa.string()),
    ("num_frames", pa.int64()), ("height", pa.int64()), ("width", pa.int64()), ("fps", pa.float64()),
    ("aes", pa.float64()), ("flow", pa.float64()), ("ocr", pa.float64()), ("clip_score", pa.float64()),
    ("source", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
    ("video", pa.large_binary()),  # the mp4 member of the tar, as is
])


def lance_storage_options(uri: fs.AnyPath) -> dict[str, str] | None:
    """Lance's object-store options for an s3:// dataset: the endpoint and region of the
    environment (credentials are read from the environment by Lance itself)."""
    if isinstance(uri, Path):
        return None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    opts = {"region": region}
    if endpoint:
        opts.update(endpoint=endpoint, allow_http=str(endpoint.startswith("http://")).lower())
    return opts


class LanceWriter(_Writer):
    """`<out>/clips.lance`: a row per clip with its mp4 bytes; each append is one Lance commit,
    so a killed run leaves whole fragments only and the dataset itself says what is done."""

    def __init__(self, out, con, copy_clips):
        super().__init__(out, con, copy_clips)
        self.path = out / "clips.lance"
        self.uri = str(self.path.resolve() if isinstance(self.path, Path) else self.path)
        self.options = lance_storage_options(self.path)
        self.buffer: list[pa.Table] = []
        self.buffered = self.buffered_rows = 0

    def _dataset(self):
        import lance

        try:
            return lance.dataset(self.uri, storage_options=self.options)
        except (ValueError, FileNotFoundError, OSError):  # no dataset there yet
            return None

    def done_relation(self) -> str:
        ds = self._dataset()
        names = ds.to_table(columns=["file_name"]) if ds is not None else DONE.empty_table()
        name = f"__export_done_{uuid.uuid4().hex[:8]}"
        self.con.register(name, names)
        return name

    def add(self, rows: pa.Table, clips: list[bytes | TarMember | None]) -> None:
        clips = [c.read() if isinstance(c, TarMember) else c for c in clips]
        cols = {f.name: rows.column(f.name).cast(f.type) for f in LANCE if f.name != "video"}
        cols["video"] = pa.array(clips, pa.large_binary())
        self.buffer.append(pa.table(cols, schema=LANCE))
        size = sum(len(c) for c in clips if c is not None)
        self.buffered += size
        self.buffered_rows += rows.num_rows
        self.bytes_copied += size
        self.written += rows.num_rows
        if self.buffered >= LANCE_BYTES or self.buffered_rows >= LANCE_ROWS:
            self.flush()

    def flush(self) -> None:
        import lance

        if not self.buffer:
            return
        table = pa.concat_tables(self.buffer)
        mode = "append" if self._dataset() is not None else "create"
        lance.write_dataset(table, self.uri, schema=LANCE, mode=mode, storage_options=self.options)
        self.buffer, self.buffered, self.buffered_rows = [], 0, 0

    def finish(self, plan: str) -> int:
        """Delete the rows of clips the newest decisions no longer keep -> rows in the dataset."""
        ds = self._dataset()
        if ds is None:
            return 0
        self.con.register("__lance_names", ds.to_table(columns=["file_name"]))
        stale = [n for (n,) in self.con.sql(
            f"SELECT file_name FROM __lance_names x ANTI JOIN {plan} p ON p.file_name = x.file_name"
        ).fetchall()]
        self.removed = len(stale)
        for i in range(0, len(stale), 1000):
            quoted = ", ".join("'" + n.replace("'", "''") + "'" for n in stale[i:i + 1000])
            ds.delete(f"file_name IN ({quoted})")
        return self._dataset().count_rows()


WRITERS = {"opensora": OpenSoraWriter, "videofolder": VideoFolderWriter, "lance": LanceWriter}
