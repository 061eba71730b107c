"""`reelsift export`: the clips the newest decisions keep, in the layouts other trainers read.

    reelsift export --root R --format opensora|videofolder|lance --out DIR [--tier T]

* `opensora`: `DIR/videos/<tier>/<xx>/<clip_id>.mp4` and `DIR/opensora.csv` with Open-Sora's
  columns (`path`, `text`, `num_frames`, `height`, `width`, `aspect_ratio`, `fps`,
  `resolution`, `aes`, `flow`, `ocr`, `match`, ...).
* `videofolder`: the same clip files and `DIR/metadata.jsonl` (`file_name`, `text`, the score
  columns), which HF `datasets` loads with `load_dataset("videofolder", data_dir=DIR)`.
* `lance`: one Lance dataset `DIR/clips.lance`: the clip's mp4 bytes (`video`) and the metadata.

Clip files are the shard tars' mp4 members, copied byte for byte (no re-encode): each tar is
read once, front to back. The plan (kept clips with a tar, their caption and scores) is a
DuckDB temp table (it spills to disk) streamed in batches, so memory stays bounded at any size.
A kept clip that no tar holds yet is counted and left out (run `reelsift shard` first).

Resumable: the clip files (and Lance fragments) a run has written are recorded under
`DIR/.reelsift-export/`, and a re-run plans only the rest; a run killed between recording
points checks for existing files before writing, so no clip is written twice. The export
follows the newest decisions: a re-run after a re-filter deletes the files (and Lance rows) of
clips no longer kept, or kept at another tier, or outside `--tier`. The metadata file is written
last, in one step, for exactly the exported clips; it is rewritten only when that set or its
captions changed. Local folders and `s3://` both work for the run root and for DIR.
"""

from __future__ import annotations

import contextlib
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from manifests import fs

FORMATS = ("opensora", "videofolder", "lance")
BATCH_ROWS = 8192  # plan rows per Arrow batch from DuckDB


@dataclass
class ExportSummary:
    format: str
    out: str
    exported: int  # clips written by this run
    removed: int  # clips of earlier runs deleted because the newest decisions no longer keep them
    total: int  # clips in the export now (the metadata's rows)
    unsharded: int  # kept clips no tar holds yet (left out)
    missing: int  # planned clips their tar did not hold (run `reelsift verify`)
    bytes_copied: int
    seconds: float


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


PLAN = "export_plan"
# The plan's columns beyond the kept clip and its tar, added one join at a time: each step holds
# one hash table, so DuckDB stays within its memory limit at any size (all joins in one query
# hold every build side at once, and ran out of memory at 10^6 clips).
PLAN_STEPS = (
    ("c.video_id, c.path AS source, c.start_s, c.end_s",
     "JOIN clips c ON c.clip_id = p.clip_id AND c.status = 'ok'"),
    ("coalesce(cap.caption, p.shard_caption, '') AS text",
     "LEFT JOIN captions cap ON cap.clip_id = p.clip_id AND cap.status = 'ok'"),
    ("s.aesthetic_mean::DOUBLE AS aes, s.motion_mean::DOUBLE AS flow, s.ocr_area::DOUBLE AS ocr",
     "LEFT JOIN scores s ON s.clip_id = p.clip_id AND s.status = 'ok'"),
    ("a.clip_score::DOUBLE AS clip_score",
     "LEFT JOIN alignment a ON a.clip_id = p.clip_id AND a.status = 'ok'"),
)


def build_plan(con, tier: str | None) -> str:
    """Create the temp table `PLAN`: one row per kept clip whose current tar holds it (at its
    decided tier) with the columns every format writes; `file_name` (relative to the export
    folder) is the export key. `text` is the newest caption (the tar's where that row is an error)."""
    where = f"AND d.tier = {_lit(tier)}" if tier else ""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE {PLAN} AS
        SELECT d.clip_id, d.tier, sh.shard, sh.key,
               'videos/' || d.tier || '/' || substr(d.clip_id, 1, 2) || '/' || d.clip_id || '.mp4'
                   AS file_name,
               sh.caption AS shard_caption, sh.n_frames::BIGINT AS num_frames, sh.height::BIGINT AS height,
               sh.width::BIGINT AS width, sh.fps::DOUBLE AS fps, sh.bytes::BIGINT AS bytes
        FROM decisions d JOIN shards sh ON sh.clip_id = d.clip_id AND sh.status = 'ok' AND sh.tier = d.tier
        WHERE d.keep {where}""")
    for columns, join in PLAN_STEPS:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {PLAN} AS SELECT p.*, {columns} FROM {PLAN} p {join}")
    return PLAN


def _unsharded(con, tier: str | None) -> int:
    where = f"AND d.tier = {_lit(tier)}" if tier else ""
    return con.sql(f"""SELECT count(*) FROM decisions d WHERE d.keep {where} AND NOT EXISTS
        (SELECT 1 FROM shards sh WHERE sh.clip_id = d.clip_id AND sh.status = 'ok' AND sh.tier = d.tier)
    """).fetchall()[0][0]


def _tars(reader):
    """(tar, rows of the plan in it) from plan batches sorted by tar; a tar may span batches."""
    pending: list[pa.RecordBatch] = []
    current = None
    for batch in reader:
        shards = batch.column("shard").to_pylist()
        start = 0
        for i in range(1, len(shards) + 1):
            if i < len(shards) and shards[i] == shards[start]:
                continue
            if shards[start] != current and pending:
                yield current, pa.Table.from_batches(pending)
                pending = []
            current = shards[start]
            pending.append(batch.slice(start, i - start))
            start = i
    if pending:
        yield current, pa.Table.from_batches(pending)


def tar_members(tar: fs.AnyPath, keys: set[str]):
    """(key, mp4) of the samples of `tar` whose key is in `keys`, in tar order. A local tar's
    members come as TarMember (offset and size: the writer copies them in the kernel, headers
    are read by seeking past the data); on S3, bytes from one streaming read (a forward-only GET)."""
    from curation.export_writers import TarMember

    local = isinstance(tar, Path)
    with contextlib.ExitStack() as stack:
        if local:
            tf = stack.enter_context(tarfile.open(tar, mode="r:"))
        else:
            fh = stack.enter_context(fs.open_stream(tar))
            tf = stack.enter_context(tarfile.open(fileobj=fh, mode="r|"))
        for member in tf:
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            if ext == "mp4" and key in keys and member.isfile():
                if local:
                    yield key, TarMember(tar, member.offset_data, member.size)
                else:
                    yield key, tf.extractfile(member).read()


def export(
    root: str | Path, out: str | Path, fmt: str, tier: str | None = None, *, copy_clips: bool = True,
    log=None,
) -> ExportSummary:
    """Export the kept clips of `root` to `out` in `fmt` (see the module docstring).
    `copy_clips=False` writes the metadata only (for benchmarks of the planning and writing)."""
    from curation.export_writers import WRITERS
    from manifests.db import connect

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    root, out = fs.upath(root), fs.upath(out)
    con = connect(root)
    con.execute("SET preserve_insertion_order = false")
    writer = WRITERS[fmt](out, con, copy_clips)
    done = writer.done_relation()  # file names exported before, as a SQL relation
    plan = build_plan(con, tier)
    todo = con.sql(
        f"SELECT {writer.STREAM} FROM {plan} p ANTI JOIN {done} x ON x.file_name = p.file_name "
        + ("ORDER BY shard, key" if copy_clips else "")  # each tar is read once, front to back
    ).to_arrow_reader(BATCH_ROWS)
    missing = 0
    batches = _tars(todo) if copy_clips else ((None, pa.Table.from_batches([b])) for b in todo)
    for tar, rows in batches:
        if not copy_clips:
            writer.add(rows, [None] * rows.num_rows)
            continue
        names = dict(zip(rows.column("key").to_pylist(), range(rows.num_rows), strict=True))
        found = {}
        for key, data in tar_members(root / tar, set(names)):
            found[names[key]] = data
            if len(found) == len(names):
                break
        if found:
            idx = sorted(found)
            writer.add(rows.take(pa.array(idx)), [found[i] for i in idx])
        if len(found) < len(names):
            missing += len(names) - len(found)
            if log:
                log(f"{tar}: {len(names) - len(found)} planned clip(s) not in it (run `reelsift verify`)")
    writer.flush()
    total = writer.finish(plan)
    return ExportSummary(
        format=fmt, out=str(out), exported=writer.written, removed=writer.removed, total=total,
        unsharded=_unsharded(con, tier), missing=missing, bytes_copied=writer.bytes_copied,
        seconds=time.perf_counter() - t0,
    )


def register(sub) -> None:
    """Add the `export` subcommand to the CLI's subparsers."""
    p = sub.add_parser("export", help="copy the kept clips out of the tars for other trainers (opensora, "
                       "videofolder for HF datasets, lance)")
    p.add_argument("--root", "-r", required=True, help="run root (local or s3://)")
    p.add_argument("--format", "-f", required=True, choices=FORMATS)
    p.add_argument("--out", "-o", required=True, help="export folder (local or s3://); a re-run resumes it")
    p.add_argument("--tier", help="only clips kept at this tier")


def cmd_export(args) -> int:
    summary = export(args.root, args.out, args.format, args.tier, log=lambda m: print(m, file=sys.stderr))
    mb = summary.bytes_copied / 1e6
    print(f"exported {summary.exported} new clip(s) ({mb:.1f} MB copied in {summary.seconds:.1f} s); "
          f"{summary.out} now holds {summary.total} kept clip(s) as {summary.format}")
    if summary.removed:
        print(f"removed {summary.removed} clip(s) that the newest decisions no longer keep")
    if summary.unsharded:
        print(f"note: {summary.unsharded} kept clip(s) are in no tar yet and were left out: run "
              "`reelsift shard` and export again", file=sys.stderr)
    return 1 if summary.missing else 0


def write_parquet(root: str | Path, sql: str, out: str | Path) -> int:
    """`reelsift sql --format parquet --out FILE`: stream a read-only query's rows into one
    Parquet file (local or s3://), written whole or not at all -> rows written."""
    import pyarrow.parquet as pq

    from curation.export_writers import publishing
    from manifests.db import check_read_only, connect

    con = connect(root)
    check_read_only(con, sql)
    statements = con.extract_statements(sql)
    for stmt in statements[:-1]:
        con.execute(stmt.query)
    reader = con.sql(statements[-1].query).to_arrow_reader(BATCH_ROWS)
    rows = 0
    with publishing(fs.upath(out)) as tmp, pq.ParquetWriter(tmp, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows
