"""Parquet parts, DuckDB views and the read-only SQL entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from manifests.db import ReadOnlyError, query
from manifests.schemas import CLIPS, DECISIONS, TABLES
from manifests.store import Table, rows_to_table

REPO = Path(__file__).resolve().parent.parent


def test_parts_are_atomic_and_append_only(tmp_path):
    t = Table(tmp_path, "clips")
    first = t.write(rows_to_table([dict(clip_id="a", video_id="v", status="ok")], CLIPS))
    (t.dir / ".tmp-deadbeef.parquet").write_bytes(b"half a part")  # a killed writer's leftover
    t.write(rows_to_table([dict(clip_id="b", video_id="v", status="error", error="x")], CLIPS))
    assert first.exists() and len(t.parts()) == 2
    assert t.keys() == {"a", "b"}  # the temp file is never read
    assert t.clean_temp() == 1


def test_every_table_has_a_view_even_when_empty(tmp_path):
    for name in TABLES:
        assert query(tmp_path, f"SELECT count(*) AS n FROM {name}").column("n")[0].as_py() == 0


def test_decisions_view_shows_the_newest_row_per_clip(tmp_path):
    t = Table(tmp_path, "decisions")
    for run, keep in (("r1", False), ("r2", True)):
        t.write(rows_to_table([dict(clip_id="a", keep=keep, reasons=[], filter_run=run)], DECISIONS))
    assert query(tmp_path, "SELECT keep FROM decisions").column("keep").to_pylist() == [True]
    assert query(tmp_path, "SELECT count(*) n FROM decisions_history").column("n")[0].as_py() == 2


def test_clips_view_hides_exactly_the_split_errors_a_newer_ok_row_of_their_video_supersedes(tmp_path):
    """An error row stays unless its video has a strictly newer non-error row (edge cases: same
    time, error after ok, the newest row of a clip being its error)."""
    from datetime import datetime, timedelta

    from manifests.db import connect

    t0 = datetime(2026, 1, 1)
    rows = [  # (clip, video, status, minutes)
        ("v1", "v1", "error", 0), ("a1", "v1", "ok", 1),  # retried: error hidden
        ("v2", "v2", "error", 2), ("b1", "v2", "ok", 1),  # ok then error: error stays
        ("v3", "v3", "error", 0),  # never retried
        ("v4", "v4", "error", 1), ("d1", "v4", "rejected", 1),  # same time: error stays
        ("v5", "v5", "error", 0), ("v5", "v5", "error", 3), ("e1", "v5", "rejected", 2),  # newest error stays
        ("f1", "v6", "ok", 0), ("f1", "v6", "error", 1),  # newest of f1 is its error: stays
    ]
    Table(tmp_path, "clips").write(rows_to_table(
        [dict(clip_id=c, video_id=v, status=s, created_at=t0 + timedelta(minutes=m)) for c, v, s, m in rows],
        CLIPS))
    con = connect(tmp_path)
    got = sorted(con.sql("SELECT clip_id, status FROM clips").fetchall())
    want = sorted(con.sql("""
        SELECT clip_id, status FROM __clips_newest t WHERE t.status <> 'error' OR NOT EXISTS (
            SELECT 1 FROM __clips_newest n WHERE n.status <> 'error' AND n.video_id = t.video_id
            AND n.created_at > t.created_at)""").fetchall())
    assert got == want
    assert [c for c, s in got if s == "error"] == ["f1", "v2", "v3", "v4", "v5"]


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT 1) TO '/tmp/reelsift_should_not_exist.csv'",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO clips SELECT * FROM clips",
        "ATTACH '/tmp/x.db'",
        "SELECT 1; DROP VIEW clips",
    ],
)
def test_writes_are_refused(tmp_path, sql):
    with pytest.raises(ReadOnlyError, match="read-only"):
        query(tmp_path, sql)
    assert not Path("/tmp/reelsift_should_not_exist.csv").exists()


def test_sql_cli_formats(tmp_path):
    Table(tmp_path, "clips").write(
        rows_to_table([dict(clip_id=c, video_id="v", status="ok") for c in "ab"], CLIPS)
    )
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "curation.cli", "sql", "--root", str(tmp_path), *a],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    table = run("SELECT clip_id FROM clips ORDER BY 1")
    assert table.returncode == 0 and "(2 rows)" in table.stdout
    csv = run("SELECT clip_id FROM clips ORDER BY 1", "--format", "csv")
    assert csv.stdout.split() == ['"clip_id"', '"a"', '"b"']
    js = run("SELECT clip_id FROM clips ORDER BY 1", "--format", "json")
    assert '"clip_id": "a"' in js.stdout
    refused = run("DELETE FROM clips")
    assert refused.returncode == 2 and "read-only" in refused.stderr


def test_conform_rejects_missing_required_columns(tmp_path):
    with pytest.raises(ValueError, match="clip_id"):
        Table(tmp_path, "clips").write(pa.table({"status": ["ok"]}))
