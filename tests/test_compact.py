"""compact: merged parts, newest row per key, atomic for readers, nothing lost when killed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import duckdb
import numpy as np
import pyarrow as pa

from manifests.compact import compact
from manifests.db import query
from manifests.store import Table
from tests.procs import REPO

N = 60_000  # clips; 3 filter runs of decisions -> 180k history rows


def _decisions(ids: list[str], run: str, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    keep = rng.random(len(ids)) < 0.6
    return pa.table(
        {
            "clip_id": ids,
            "tier": np.where(keep, "256p", None).tolist(),
            "keep": keep,
            "reasons": [[] if k else [f"motion_mean={seed}<0.5@256p"] for k in keep],
            "filter_run": [run] * len(ids),
        }
    )


def make_root(root, runs: int = 3):
    ids = [f"{i:08x}" for i in range(N)]
    for r in range(runs):
        Table(root, "decisions").write(_decisions(ids, f"run{r}", r))
        time.sleep(0.002)
    clips = pa.table({"clip_id": ids, "video_id": ["v"] * N, "status": ["ok"] * N})
    for i in range(0, N, N // 4):
        Table(root, "clips").write(clips.slice(i, N // 4))
    return root


STATE = """SELECT count(*) AS n, count(DISTINCT clip_id) AS keys, sum(keep::INT) AS kept,
                  count(DISTINCT filter_run) AS runs, min(filter_run) AS run FROM decisions"""


def state(root) -> dict:
    return {
        "decisions": query(root, STATE).to_pylist()[0],
        "clips": query(root, "SELECT count(*) AS n, count(DISTINCT clip_id) AS k FROM clips").to_pylist()[0],
        "rows": sorted(
            query(root, "SELECT clip_id, keep, reasons FROM decisions").to_pylist(),
            key=lambda r: r["clip_id"],
        )[:: N // 500],
    }


def test_compact_keeps_newest_and_merges(tmp_path):
    root = make_root(tmp_path)
    before = state(root)
    assert before["decisions"]["run"] == "run2" and before["decisions"]["n"] == N
    assert query(root, "SELECT count(*) AS n FROM decisions_history").to_pylist()[0]["n"] == 3 * N
    out = {c.table: c for c in compact(root, keep_s=0)}
    assert (out["decisions"].rows_before, out["decisions"].rows_after) == (3 * N, N)
    assert (out["clips"].rows_before, out["clips"].rows_after) == (N, N)  # not newest-wins: merged only
    assert state(root) == before
    for name in ("decisions", "clips"):
        assert [p.name[:8] for p in Table(root, name).parts()] == ["compact-"]
        assert len(list((root / name).glob("*.parquet"))) == 1
    assert query(root, "SELECT count(*) AS n FROM decisions_history").to_pylist()[0]["n"] == N
    # a newer run after compaction wins over the compacted rows
    Table(root, "decisions").write(_decisions([f"{i:08x}" for i in range(10)], "run3", 3))
    runs = query(root, "SELECT filter_run, count(*) AS n FROM decisions GROUP BY 1 ORDER BY 1").to_pylist()
    assert runs == [{"filter_run": "run2", "n": N - 10}, {"filter_run": "run3", "n": 10}]
    compact(root)
    assert query(root, "SELECT count(*) AS n FROM decisions_history").to_pylist()[0]["n"] == N
    assert (
        query(root, "SELECT count(*) AS n FROM decisions WHERE filter_run = 'run3'").to_pylist()[0]["n"] == 10
    )


def on_disk(root, table: str) -> dict[str, int]:
    """The table's parquet files by what the manifest says of them: read now, or replaced."""
    t = Table(root, table)
    read, retired = {p.name for p in t.parts()}, set(t.manifest().get("retired", {}))
    files = [p.name for p in (root / table).glob("*.parquet")]
    assert set(files) <= read | retired, "a file neither read nor kept as replaced"
    return {k: v for k, v in (("read", len(read)), ("replaced", len(set(files) & retired))) if v}


def test_replaced_parts_stay_readable_until_a_later_compaction(tmp_path):
    """A reader that listed the parts just before a compaction (a stage's first query) still
    reads them after it; they go once they are `keep_s` old."""
    from manifests.db import _read

    root = make_root(tmp_path)
    before = Table(root, "decisions").parts()
    compact(root, ["decisions"])
    assert on_disk(root, "decisions") == {"read": 1, "replaced": len(before)}
    con = duckdb.connect()
    old = con.sql(f"SELECT count(*) FROM {_read(before, con, Table(root, 'decisions').schema)}").fetchall()
    assert old == [(3 * N,)]  # the listed parts are all still there
    compact(root, ["decisions"], keep_s=0)  # nothing new to merge; tidies what is old enough
    assert on_disk(root, "decisions") == {"read": 1}
    assert state(root)["decisions"]["n"] == N


def test_reader_sees_old_or_new_set_never_a_mix(tmp_path):
    root = make_root(tmp_path)
    expected = query(root, STATE).to_pylist()[0]
    seen, errors, stop = [], [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                seen.append(query(root, STATE).to_pylist()[0])
            except Exception as exc:  # noqa: BLE001  a file deleted under a running query
                errors.append(str(exc))

    t = threading.Thread(target=read)
    t.start()
    compact(root, ["decisions"])
    stop.set()
    t.join()
    assert seen and all(s == expected for s in seen), [s for s in seen if s != expected][:3]
    assert all("No files found" in e or "No such file" in e for e in errors), errors[:3]


def _kill_when(cmd: list[str], ready, timeout: float = 60.0) -> bool:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds; -> whether it was killed mid-run."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < timeout:
        if ready():
            proc.kill()
            break
        time.sleep(0.001)
    return proc.wait() == -9


KILL_POINTS = {
    # clips compacted and committed, decisions not started
    "clips-committed": lambda r: (r / "clips" / "_compacted.json").exists(),
    # decisions' new part being written
    "decisions-writing": lambda r: any((r / "decisions").glob(".tmp-*")),
    # decisions' new part in place, commit or deletion of old parts under way
    "decisions-renamed": lambda r: any((r / "decisions").glob("compact-*")),
}


def test_sigkill_during_compact_loses_nothing(tmp_path):
    ref = make_root(tmp_path / "ref")
    compact(ref)
    expected = state(ref)
    cmd = lambda root: [sys.executable, "-m", "curation.cli", "compact", "--root", str(root)]  # noqa: E731
    kills = 0
    for name, ready in KILL_POINTS.items():
        root = make_root(tmp_path / name)
        kills += _kill_when(cmd(root), lambda: ready(root))  # noqa: B023
        assert state(root) == expected  # a killed compaction: readers see the old or the new set
        subprocess.run(cmd(root), cwd=REPO, check=True, capture_output=True)
        assert state(root) == expected
        for table in ("decisions", "clips"):
            assert on_disk(root, table)["read"] == 1  # the rest is kept unread a while
            assert not list((root / table).glob(".tmp-*"))
    assert kills >= 2  # the kills landed while compaction ran
