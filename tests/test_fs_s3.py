"""The filesystem layer and the commit protocol against a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests import commit, fs, fs_read
from tests.s3server import BUCKET, SECRET_KEY

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def prefix(s3_server):
    """A fresh folder in the test bucket."""
    return fs.upath(f"s3://{BUCKET}/t-{uuid.uuid4().hex[:8]}")


def test_upath_keeps_local_paths_and_parses_s3_urls(tmp_path):
    assert fs.upath(tmp_path) is tmp_path
    assert fs.upath(str(tmp_path / "a")) == tmp_path / "a"
    p = fs.upath("s3://bkt/runs//r1/")
    assert str(p) == "s3://bkt/runs/r1" and p.bucket == "bkt" and p.key == "runs/r1"
    q = p / "clips" / "part-1.parquet"
    assert str(q) == "s3://bkt/runs/r1/clips/part-1.parquet"
    assert (q.name, q.stem, q.suffix) == ("part-1.parquet", "part-1", ".parquet")
    assert q.parent.parent == p and str(q.relative_to(p)) == "clips/part-1.parquet"
    assert sorted([p / "b", p / "a"]) == [p / "a", p / "b"]
    for bad in ("s3://key:secret@bkt/x", "s3://bkt/x?secret_key=abc", "gs://bkt/x"):
        with pytest.raises(ValueError) as err:
            fs.upath(bad)
        assert "secret" not in str(err.value).split("'")[0]


def test_objects_round_trip_list_and_delete(prefix):
    (prefix / "a.txt").write_text("hello")
    (prefix / "sub" / "b.tar").write_bytes(b"x" * 10)
    (prefix / "sub" / "c.txt").write_bytes(b"y")
    assert (prefix / "a.txt").read_text() == "hello"
    assert (prefix / "a.txt").is_file() and (prefix / "sub").is_dir() and prefix.exists()
    assert not (prefix / "nope").exists()
    assert (prefix / "sub" / "b.tar").stat().st_size == 10
    assert sorted(prefix.glob("*.txt")) == [prefix / "a.txt"]
    assert sorted(prefix.glob("*/*.tar")) == [prefix / "sub" / "b.tar"]
    assert sorted(p.name for p in prefix.iterdir()) == ["a.txt", "sub"]
    (prefix / "a.txt").unlink()
    assert not (prefix / "a.txt").exists()
    with pytest.raises(FileNotFoundError):
        (prefix / "a.txt").unlink()
    (prefix / "a.txt").unlink(missing_ok=True)
    prefix.rmtree()
    assert list(prefix.glob("*/*")) == []


def test_random_access_reads_fetch_ranges_not_the_object(prefix):
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    (prefix / "blob.bin").write_bytes(data)
    with fs.open_input(prefix / "blob.bin", buffer_size=64 << 10) as f:
        f.seek(2_000_000)
        assert f.read(100) == data[2_000_000:2_000_100]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        raw = f.raw
        assert raw.requests == 2 and raw.bytes_fetched <= (64 << 10) + 10


def _noise_video(path: Path, n_frames: int = 48, size=(320, 240)) -> None:
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24, options={"crf": "8"})
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for _ in range(n_frames):
            frame = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def _frames(container) -> list[np.ndarray]:
    return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_pyav_decodes_from_s3_through_a_file_object(prefix, tmp_path):
    local = tmp_path / "noise.mp4"
    _noise_video(local)
    size = local.stat().st_size
    assert size > 2 << 20, size  # several read buffers, so a partial read is visible
    (prefix / "noise.mp4").write_bytes(local.read_bytes())
    with av.open(str(local)) as c:
        want = _frames(c)
    with fs.open_input(prefix / "noise.mp4") as f, av.open(f) as c:
        got = _frames(c)
    assert len(got) == len(want) == 48
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    # Probing and decoding the first frame reads the moov atom (at the end) and the first
    # frames only: ranged GETs, never the whole object.
    with fs.open_input(prefix / "noise.mp4", buffer_size=256 << 10) as f, av.open(f) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
        fetched = f.raw.bytes_fetched
    assert np.array_equal(first, want[0])
    assert fetched < size / 2, (fetched, size)


def test_atomic_write_makes_objects_visible_only_on_success(prefix):
    with commit.atomic_write(prefix / "part-1.parquet") as fh:
        fh.write(b"complete")
    with pytest.raises(RuntimeError), commit.atomic_write(prefix / "part-2.parquet") as fh:
        fh.write(b"half")
        raise RuntimeError("writer failed mid-object")
    assert commit.committed_glob(prefix, "part-*.parquet") == [prefix / "part-1.parquet"]
    assert not (prefix / "part-2.parquet").exists()
    assert (prefix / "part-1.parquet").read_bytes() == b"complete"
    # an upload that completed without its marker (killed between the two) stays invisible
    (prefix / "part-3.parquet").write_bytes(b"orphan")
    (prefix / "part-4.parquet.committed").write_bytes(b"")  # lone marker: its object was removed
    assert commit.committed_glob(prefix, "part-*.parquet") == [prefix / "part-1.parquet"]
    assert commit.remove_uncommitted(prefix, "part-*.parquet") == 2
    assert sorted(p.name for p in prefix.iterdir()) == ["part-1.parquet", "part-1.parquet.committed"]
    commit.remove(prefix / "part-1.parquet")
    assert list(prefix.iterdir()) == []


_KILLED_WRITER = """
import sys, time
from manifests import commit
with commit.atomic_write(sys.argv[1]) as fh:
    for i in range(400):
        fh.write(bytes([i % 256]) * (64 << 10))
        if i == 120:
            print("writing", flush=True)
        if i >= 120:
            time.sleep(0.05)
"""


def test_sigkill_mid_write_leaves_nothing_visible_and_same_key_rewrites(prefix):
    target = prefix / "shards" / "256p" / "g0-000.tar"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # 7.5 MB sent: a multipart upload is open
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert commit.committed_glob(prefix / "shards", "*/*.tar") == []
    commit.remove_uncommitted(prefix / "shards", "*/*.tar")
    assert list((prefix / "shards").glob("*/*")) == []
    # the re-run writes the same key and it becomes visible whole
    with commit.atomic_write(target) as fh:
        fh.write(b"t" * 1000)
    assert commit.committed_glob(prefix / "shards", "*/*.tar") == [target]
    assert target.read_bytes() == b"t" * 1000


def test_duckdb_reads_parquet_parts_on_s3_without_extensions(prefix):
    import duckdb

    schema = pa.schema([("clip_id", pa.string()), ("score", pa.float64()), ("note", pa.string())])
    old = pa.table({"clip_id": ["a", "b"], "score": [0.1, 0.9]})  # a part written before `note` existed
    new = pa.table({"clip_id": ["c"], "score": [0.5], "note": ["n"]})
    for i, t in enumerate([old, new]):
        with commit.atomic_write(prefix / f"part-{i}.parquet") as fh:
            pq.write_table(t, fh)
    parts = commit.committed_glob(prefix, "part-*.parquet")
    con = duckdb.connect(":memory:")
    rel = fs_read.parquet_relation(con, parts, schema)
    rows = con.sql(f"SELECT clip_id, score, note FROM {rel} WHERE score > 0.2 ORDER BY clip_id").fetchall()
    assert rows == [("b", 0.9, None), ("c", 0.5, "n")]
    loaded = con.sql("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()
    assert ("httpfs",) not in loaded
    local = fs_read.parquet_relation(con, [Path("/x/part-0.parquet")])
    assert local.startswith("read_parquet(['/x/part-0.parquet']")


def test_webdataset_reads_a_tar_by_s3_url(prefix):
    import webdataset as wds

    url = prefix / "shards" / "g-000.tar"
    with commit.atomic_write(url) as fh, wds.TarWriter(fh) as tar:
        for i in range(3):
            tar.write({"__key__": f"k{i}", "txt": f"caption {i}", "json": {"i": i}})
    wds.gopen_schemes["s3"] = fs_read.wds_open
    got = [(s["__key__"], s["txt"].decode()) for s in wds.WebDataset([str(url)], shardshuffle=False)]
    assert got == [("k0", "caption 0"), ("k1", "caption 1"), ("k2", "caption 2")]


def test_errors_name_the_url_and_the_variables_never_the_secret(s3_server):
    planted = "wrong-planted-" + uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), "AWS_SECRET_ACCESS_KEY": planted}
    code = f"from manifests.fs import check_root; check_root('s3://{BUCKET}/runs/r1')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert f"s3://{BUCKET}" in out.stderr and "access denied" in out.stderr
    assert "AWS_SECRET_ACCESS_KEY" in out.stderr and "AWS_ENDPOINT_URL" in out.stderr
    assert planted not in out.stderr + out.stdout and SECRET_KEY not in out.stderr + out.stdout
    with pytest.raises(fs.StorageError, match="bucket 'no-such-bucket' does not exist"):
        fs.check_root("s3://no-such-bucket/runs/r1")
    assert fs.redact(f"x {SECRET_KEY} y") == "x *** y"


def test_ingest_lists_a_prefix_and_list_files_of_urls(prefix, tmp_path):
    from curation.config import load_config
    from curation.stages.ingest import list_inputs, list_sources
    from manifests.configtools import InputError

    cfg = load_config(REPO / "configs" / "offline.yaml").ingest
    for name in ("a/one.mp4", "a/b/two.MOV", "a/notes.txt", "c/three.mkv"):
        (prefix / name).write_bytes(b"x")
    want = [f"{prefix}/a/b/two.MOV", f"{prefix}/a/one.mp4"]
    assert list_inputs(f"{prefix}/a/", cfg) == want  # recursive, by extension, sorted
    # a list file on S3 (lines relative to it or s3:// URLs) and one on disk (s3:// URLs)
    (prefix / "list.txt").write_text(f"a/one.mp4\n# a comment\n{prefix}/c/three.mkv\n")
    assert list_inputs(f"{prefix}/list.txt", cfg) == [f"{prefix}/a/one.mp4", f"{prefix}/c/three.mkv"]
    local = tmp_path / "inputs.lst"
    local.write_text(f"{prefix}/a/b/two.MOV\n{prefix}/a/one.mp4\n")
    assert list_inputs(str(local), cfg) == want
    with pytest.raises(InputError, match="no object with a video extension"):
        list_inputs(f"{prefix}/empty/", cfg)
    # sizes and mtimes for change detection: from the prefix's listing, or one HEAD per listed URL
    (prefix / "a/one.mp4").write_bytes(b"xyz")
    (prefix / "gone.txt").write_text(f"{prefix}/a/one.mp4\n{prefix}/a/gone.mp4\n")
    cases = (("a/", {"a/b/two.MOV": 1, "a/one.mp4": 3}), ("gone.txt", {"a/gone.mp4": None, "a/one.mp4": 3}))
    for spec, sizes in cases:
        got = list_sources(f"{prefix}/{spec}", cfg).to_pylist()
        assert {r["path"][len(str(prefix)) + 1:]: r["size_bytes"] for r in got} == sizes
        assert all(r["mtime"] > 1e9 for r in got if r["size_bytes"] is not None)
