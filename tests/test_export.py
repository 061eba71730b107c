"""`reelsift export` read back by the libraries that consume each format (HF `datasets`, `lance`,
pandas as Open-Sora reads its CSV), resumed after SIGKILL with no clip written twice, on local
disk and on S3; HF `datasets` also loads reelsift's own tars; `reelsift sql --format parquet`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from manifests import commit, fs
from manifests.db import query
from manifests.store import Table
from tests.s3server import BUCKET

os.environ["HF_DATASETS_OFFLINE"] = "1"  # HF datasets must never reach the network here
os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "curation.cli", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert (out.returncode == 0) == ok, (args, out.stdout[-2000:], out.stderr[-3000:])
    return out


def kept(root) -> dict[str, dict]:
    """The kept clips in a tar, by clip_id, with the caption an export must carry."""
    rows = query(root, """
        SELECT d.clip_id, d.tier, sh.shard, coalesce(c.caption, sh.caption, '') AS text FROM decisions d
        JOIN shards sh ON sh.clip_id = d.clip_id AND sh.status = 'ok' AND sh.tier = d.tier
        LEFT JOIN captions c ON c.clip_id = d.clip_id AND c.status = 'ok'
        WHERE d.keep""").to_pylist()
    return {r["clip_id"]: r for r in rows}


def members(root) -> dict[str, bytes]:
    """Every mp4 member of the run's tars, by key."""
    out = {}
    for tar in commit.committed_glob(Path(root) / "shards", "*/*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".mp4"):
                    out[m.name.split(".", 1)[0]] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def run_root(demo_run):
    root = demo_run[0]
    want = kept(root)
    assert len(want) >= 3 and any(r["text"] for r in want.values()), want
    return root, want


def test_videofolder_export_loads_in_hf_datasets(run_root, tmp_path):
    from datasets import Video, load_dataset

    root, want = run_root
    out = tmp_path / "vf"
    res = cli("export", "--root", str(root), "--format", "videofolder", "--out", str(out))
    assert f"now holds {len(want)} kept clip(s)" in res.stdout
    ds = load_dataset("videofolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == len(want)
    texts = {r["clip_id"]: r["text"] for r in ds.remove_columns("video")}
    assert texts == {k: r["text"] for k, r in want.items()}
    assert {"aes", "flow", "ocr", "clip_score", "num_frames", "fps", "tier"} <= set(ds.column_names)
    tars = members(root)
    for row in ds.cast_column("video", Video(decode=False)):  # the tar's bytes, not a re-encode
        assert Path(row["video"]["path"]).read_bytes() == tars[row["clip_id"]]


def test_hf_datasets_loads_reelsifts_own_tars(run_root, tmp_path):
    from datasets import load_dataset

    root, _ = run_root
    tars = [str(p) for p in commit.committed_glob(Path(root) / "shards", "*/*.tar")]
    ds = load_dataset("webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path / "hf"))
    shards = {r["clip_id"]: r["caption"] for r in query(
        root, "SELECT clip_id, caption FROM shards WHERE status = 'ok'").to_pylist()}
    assert ds.num_rows == len(shards)
    assert {r["__key__"]: r["txt"] for r in ds.select_columns(["__key__", "txt"])} == shards


def test_lance_export_holds_the_clip_bytes_and_metadata(run_root, tmp_path):
    import lance

    root, want = run_root
    out = tmp_path / "ln"
    cli("export", "--root", str(root), "--format", "lance", "--out", str(out))
    table = lance.dataset(str(out / "clips.lance")).to_table()
    assert table.num_rows == len(want)
    tars = members(root)
    for row in table.to_pylist():
        assert row["video"] == tars[row["clip_id"]] and row["text"] == want[row["clip_id"]]["text"]
        assert row["tier"] == want[row["clip_id"]]["tier"] and row["num_frames"] > 0


def test_opensora_csv_has_the_columns_open_soras_loader_reads(run_root, tmp_path):
    import pandas as pd

    root, want = run_root
    out = tmp_path / "os"
    cli("export", "--root", str(root), "--format", "opensora", "--out", str(out), "--tier", "256p")
    df = pd.read_csv(out / "opensora.csv")  # how Open-Sora's datasets read it
    tier = {k for k, r in want.items() if r["tier"] == "256p"}
    assert set(df["id"]) == tier and len(df) == len(tier) > 0
    for col in ("num_frames", "height", "width", "resolution"):
        assert df[col].dtype.kind == "i", col
    for col in ("aspect_ratio", "fps", "aes", "flow", "ocr", "match"):
        assert df[col].dtype.kind == "f", col
    assert (df["aspect_ratio"] == df["height"] / df["width"]).all()
    assert df["text"].fillna("").tolist() == [want[i]["text"] for i in df["id"]]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])


KILLER = """
import os, signal, sys
from curation import export, export_writers
writes = []
real = export_writers.put_file
def put_file(path, data):
    if len(writes) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # mid-export: some files written, none journaled
    writes.append(path)
    real(path, data)
export_writers.put_file = put_file
export_writers.LANCE_ROWS = 2
export_writers.JOURNAL_ROWS = 1
lance_appends = export_writers.LanceWriter.flush
def flush(self):
    if self._dataset() is not None:
        os.kill(os.getpid(), signal.SIGKILL)  # after the first Lance commit
    lance_appends(self)
export_writers.LanceWriter.flush = flush
export.export(sys.argv[1], sys.argv[2], sys.argv[3])
"""


@pytest.mark.parametrize("fmt", ["videofolder", "lance"])
def test_export_resumes_after_sigkill_and_writes_nothing_twice(run_root, tmp_path, fmt):
    root, want = run_root
    out = tmp_path / fmt
    killed = subprocess.run([sys.executable, "-c", KILLER, str(root), str(out), fmt], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if fmt == "videofolder":
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
        assert len(before) == 2 and not (out / "metadata.jsonl").exists()
    again = cli("export", "--root", str(root), "--format", fmt, "--out", str(out))
    assert f"now holds {len(want)} kept clip(s)" in again.stdout
    if fmt == "videofolder":
        after = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
        assert len(after) == len(want) and all(after[p] == t for p, t in before.items())  # not rewritten
        rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
        assert sorted(r["clip_id"] for r in rows) == sorted(want)
        stamp = (out / "metadata.jsonl").stat().st_mtime_ns
    else:
        import lance

        names = lance.dataset(str(out / "clips.lance")).to_table(columns=["clip_id"])["clip_id"].to_pylist()
        assert sorted(names) == sorted(want)  # one row per clip: the first commit's rows were kept
    third = cli("export", "--root", str(root), "--format", fmt, "--out", str(out))
    assert third.stdout.startswith("exported 0 new clip(s)")
    if fmt == "videofolder":
        assert (out / "metadata.jsonl").stat().st_mtime_ns == stamp  # nothing written at all


def test_export_from_and_to_s3(run_root, s3_server, tmp_path):
    import lance

    from curation.export_writers import lance_storage_options

    local, want = run_root
    root = fs.upath(f"s3://{BUCKET}/export-{uuid.uuid4().hex[:8]}/run")
    for name in ("clips", "decisions", "shards", "captions", "scores", "alignment"):
        for part in Table(local, name).parts():
            Table(root, name).write(pq.read_table(part))
    for tar in commit.committed_glob(Path(local) / "shards", "*/*.tar"):
        with commit.atomic_write(root / tar.relative_to(local)) as fh:
            fh.write(tar.read_bytes())
    out = root.parent / "out"
    cli("export", "--root", str(root), "--format", "videofolder", "--out", str(out / "vf"))
    rows = [json.loads(line) for line in (out / "vf" / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["clip_id"] for r in rows) == sorted(want)
    tars = members(local)
    assert all((out / "vf" / r["file_name"]).read_bytes() == tars[r["clip_id"]] for r in rows)
    assert not list((out / "vf").glob("*.committed"))  # files for other tools: no commit markers
    cli("export", "--root", str(root), "--format", "lance", "--out", str(out / "ln"))
    uri = out / "ln" / "clips.lance"
    table = lance.dataset(str(uri), storage_options=lance_storage_options(uri)).to_table()
    assert sorted(table["clip_id"].to_pylist()) == sorted(want)
    # the same tables and tars on S3 give the export that local disk gives
    cli("export", "--root", str(local), "--format", "videofolder", "--out", str(tmp_path / "vf"))
    assert (tmp_path / "vf" / "metadata.jsonl").read_text() == (out / "vf" / "metadata.jsonl").read_text()


KILL_MID_REMOVAL = """
import os, pathlib, signal, sys
from curation import export
real = pathlib.Path.unlink
def unlink(self, *a, **kw):
    if self.suffix == ".mp4":
        if getattr(unlink, "done", False):
            os.kill(os.getpid(), signal.SIGKILL)  # one file deleted, the journal not rewritten
        unlink.done = True
    real(self, *a, **kw)
pathlib.Path.unlink = unlink
export.export(sys.argv[1], sys.argv[2], sys.argv[3])
"""


def clip_files(out) -> dict[str, bytes]:
    """The files under an export's videos/ (local or S3), by path relative to the export."""
    base = fs.upath(out) / "videos"
    found = base.rglob("*") if isinstance(base, Path) else base.list_files(recursive=True)
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in found if p.is_file()}


def exported_ids(out, fmt: str) -> list[str]:
    """The clip ids of an export's metadata (CSV, jsonl) or Lance rows, sorted."""
    import lance
    import pandas as pd

    from curation.export_writers import lance_storage_options

    out = fs.upath(out)
    if fmt == "lance":
        uri = out / "clips.lance"
        ds = lance.dataset(str(uri), storage_options=lance_storage_options(uri))
        return sorted(ds.to_table(columns=["clip_id"])["clip_id"].to_pylist())
    if fmt == "opensora":
        return sorted(pd.read_csv(out / "opensora.csv")["id"])
    return sorted(json.loads(line)["clip_id"] for line in (out / "metadata.jsonl").read_text().splitlines())


def test_re_export_after_a_stricter_refilter_removes_exactly_the_dropped_clips(run_root, s3_server, tmp_path):
    from curation.config import load_config
    from curation.export import export
    from curation.stages.filter import run_filter

    src, want = run_root
    root = tmp_path / "run"
    shutil.copytree(src, root)
    s3 = fs.upath(f"s3://{BUCKET}/refilter-{uuid.uuid4().hex[:8]}")
    outs = {("videofolder", "local"): tmp_path / "vf", ("opensora", "local"): tmp_path / "os",
            ("lance", "local"): tmp_path / "ln", ("videofolder", "s3"): s3 / "vf", ("lance", "s3"): s3 / "ln",
            ("videofolder", "killed"): tmp_path / "vf-killed"}
    for (fmt, _), out in outs.items():
        assert export(root, out, fmt).total == len(want)
    before = {k: clip_files(out) for k, out in outs.items() if k[0] != "lance"}
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "vf").rglob("*.mp4")}

    # a stricter 256p motion bound: the 2 (or a few more) least moving kept 256p clips are dropped
    motion = sorted(r["m"] for r in query(root, "SELECT s.motion_mean AS m FROM decisions d JOIN scores s "
                                          "USING (clip_id) WHERE d.keep AND d.tier = '256p'").to_pylist())
    half = next(i for i in range(2, len(motion)) if motion[i - 1] < motion[i])
    cut = (motion[half - 1] + motion[half]) / 2
    run_filter(root, load_config(REPO / "configs" / "offline.yaml",
                                 [f"filter.tiers.256p.bounds.motion_mean.min={cut!r}"]).filter)
    now = kept(root)
    dropped = set(want) - set(now)
    assert len(dropped) == half and set(now) < set(want)

    argv = [sys.executable, "-c", KILL_MID_REMOVAL, str(root), str(outs["videofolder", "killed"])]
    killed = subprocess.run([*argv, "videofolder"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(clip_files(outs["videofolder", "killed"])) == len(want) - 1  # one of the dropped files went
    for (fmt, where), out in outs.items():
        summary = export(root, out, fmt)
        assert (summary.exported, summary.total) == (0, len(now)), (fmt, where)
        assert summary.removed == (len(dropped) if where != "killed" else 1), (fmt, where)
        assert exported_ids(out, fmt) == sorted(now), (fmt, where)
        if fmt != "lance":  # the kept clips' files are still there, byte for byte; the dropped ones are gone
            files = clip_files(out)
            assert sorted(name.rsplit("/", 1)[1][:-4] for name in files) == sorted(now), (fmt, where)
            assert files == {n: b for n, b in before[fmt, where].items() if n in files}
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "vf").rglob("*.mp4")} == {
        p: t for p, t in mtimes.items() if p.stem in now}  # not rewritten
    meta = tmp_path / "vf" / "metadata.jsonl"
    stamp = meta.stat().st_mtime_ns
    again = export(root, tmp_path / "vf", "videofolder")  # idempotent: nothing to copy, remove or rewrite
    assert (again.exported, again.removed, again.total) == (0, 0, len(now))
    assert meta.stat().st_mtime_ns == stamp


def test_sql_writes_any_query_result_as_parquet(run_root, tmp_path):
    root, _ = run_root
    sql = "SELECT clip_id, tier, keep, reasons FROM decisions ORDER BY clip_id"
    res = cli("sql", "--root", str(root), sql, "--format", "parquet", "--out", str(tmp_path / "d.parquet"))
    got = pq.read_table(tmp_path / "d.parquet")
    assert got.equals(query(root, sql)) and f"wrote {got.num_rows} rows" in res.stdout
    cli("sql", "--root", str(root), "--named", "funnel", "-f", "parquet", "-o", str(tmp_path / "f.parquet"))
    assert pq.read_table(tmp_path / "f.parquet").num_rows > 0
    bad = cli("sql", "--root", str(root), sql, "--format", "parquet", ok=False)
    assert "--out" in bad.stderr
    refused = cli("sql", "--root", str(root), "DROP TABLE clips", "-f", "parquet", "--out",
                  str(tmp_path / "x.parquet"), ok=False)
    assert "read-only" in refused.stderr and not (tmp_path / "x.parquet").exists()
