"""manifests/frames.py: every table's polars frame has the rows of its DuckDB view, on a real run
(after re-filters and a compaction, so newest-wins is exercised on compacted and fresh parts) and
on the same run on S3; kept() and sql() agree with DuckDB."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from manifests import db
from manifests.compact import compact
from manifests.frames import Run
from manifests.schemas import TABLES
from manifests.store import Table
from tests.s3server import BUCKET

REPO = Path(__file__).resolve().parent.parent


def assert_views_equal(root) -> dict[str, int]:
    """Every table's frame equals its DuckDB view row for row -> rows per view."""
    run, con = Run(root), db.connect(root)
    rows = {}
    for name in run.tables():
        frame = run.table(name).collect()
        view = pl.from_arrow(con.sql(f"SELECT * FROM {name}").to_arrow_table())
        view = view.with_columns(pl.col("created_at").dt.convert_time_zone("UTC"))
        key = TABLES[name.removesuffix("_history")][1]
        order = [key, "created_at"]
        assert_frame_equal(frame.sort(order), view.sort(order), check_exact=True)
        rows[name] = frame.height
    return rows


@pytest.fixture(scope="module")
def history_run(demo_run, tmp_path_factory):
    """A copy of the demo run with three filter runs: the second (stricter) is compacted, the
    third (the config's thresholds again) is a fresh part on top of it."""
    from curation import pipeline
    from curation.config import load_config

    root = tmp_path_factory.mktemp("frames") / "run"
    shutil.copytree(demo_run[0], root)
    config = REPO / "configs" / "offline.yaml"
    pipeline.filter_(load_config(config, ["filter.tiers.256p.bounds.motion_mean.min=15"]), root)
    compact(root, ["decisions", "captions"])
    pipeline.filter_(load_config(config), root)
    return root


def test_every_frame_equals_its_duckdb_view_on_a_real_run(history_run):
    compacted, fresh = Table(history_run, "decisions").snapshot()
    assert compacted and fresh  # both halves of the newest-wins rule are in play
    rows = assert_views_equal(history_run)
    assert rows["decisions_history"] > rows["decisions"] > 0
    assert rows["clips"] > 0 and rows["shards"] > 0 and rows["captions"] > 0


def test_kept_has_one_row_per_kept_clip_with_its_scores_and_caption(history_run):
    run = Run(history_run)
    kept = run.kept().collect()
    want = db.query(history_run, """
        SELECT d.clip_id, d.tier, s.motion_mean, c.caption, a.clip_score FROM decisions d
        LEFT JOIN scores s ON s.clip_id = d.clip_id AND s.status = 'ok'
        LEFT JOIN captions c ON c.clip_id = d.clip_id AND c.status = 'ok'
        LEFT JOIN alignment a ON a.clip_id = d.clip_id AND a.status = 'ok'
        WHERE d.keep""")
    cols = ["clip_id", "tier", "motion_mean", "caption", "clip_score"]
    assert kept.height == want.num_rows > 0 and kept["clip_id"].n_unique() == kept.height
    assert_frame_equal(kept.select(cols).sort("clip_id"), pl.from_arrow(want).sort("clip_id"))
    assert {"start_s", "end_s", "width", "aesthetic_mean", "caption_model", "decided_at"} <= set(kept.columns)
    tier = kept["tier"][0]
    assert set(run.kept(tier).collect()["tier"]) == {tier}
    assert run.kept(tier="no-such-tier").collect().height == 0


def test_sql_returns_a_dataframe_and_stays_read_only(history_run):
    run = Run(history_run)
    got = run.sql("SELECT tier, count(*) AS n FROM decisions WHERE keep GROUP BY 1 ORDER BY 1")
    assert isinstance(got, pl.DataFrame)
    want = run.table("decisions").filter(pl.col("keep")).group_by("tier").len("n").sort("tier").collect()
    assert got.to_dicts() == want.to_dicts()
    with pytest.raises(db.ReadOnlyError):
        run.sql("DELETE FROM clips")
    with pytest.raises(KeyError, match="tables are"):
        run.table("nope")


def test_every_frame_equals_its_duckdb_view_on_s3(history_run, s3_server):
    """The same tables on S3 (parts copied with their created_at, committed with markers), then
    a compaction and a re-decision of a few clips on S3 itself."""
    root = f"s3://{BUCKET}/frames-{uuid.uuid4().hex[:8]}"
    for name in TABLES:
        for part in Table(history_run, name).parts():
            Table(root, name).write(pl.read_parquet(part).to_arrow())
    compact(root, ["decisions"])
    redecide = Table(root, "decisions").read().slice(0, 3)
    Table(root, "decisions").write(redecide.drop_columns(["created_at"]))
    compacted, fresh = Table(root, "decisions").snapshot()
    assert compacted and fresh
    rows = assert_views_equal(root)
    local = {name: Run(history_run).table(name).collect().height for name in TABLES}
    assert {name: rows[name] for name in TABLES} == local
    assert Run(root).kept().collect().height == Run(history_run).kept().collect().height


def test_a_split_error_superseded_by_a_retry_is_hidden_as_in_the_view(tmp_path):
    """clips: an error row of a video is history once a newer ok row of that video exists."""
    import time

    import pyarrow as pa

    def rows(status, clip, video):
        return pa.table({"clip_id": [clip], "video_id": [video], "status": [status]})

    Table(tmp_path, "clips").write(rows("error", "v1", "v1"))  # split failed on v1, on v2
    Table(tmp_path, "clips").write(rows("error", "v2", "v2"))
    time.sleep(0.01)
    Table(tmp_path, "clips").write(rows("ok", "c1", "v1"))  # a retry split v1
    frame = Run(tmp_path).table("clips").collect()
    assert sorted(frame["clip_id"]) == ["c1", "v2"]
    assert_views_equal(tmp_path)
