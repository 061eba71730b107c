"""Retries: a row a stage wrote as `retryable` (its source could not be read for a storage
failure, not for its bytes) is taken again by the stage's next run, and the newest-per-key views
show each key once (real videos, real stages, run inline so the patched check reaches them)."""

from __future__ import annotations

from pathlib import Path

import curation.runner
import curation.stages.score
import curation.stages.split
from curation import pipeline
from curation.config import load_config
from curation.status import stage_status
from manifests import fs
from manifests.db import query
from tests.media import make_video

REPO = Path(__file__).resolve().parent.parent
CFG = load_config(REPO / "configs" / "offline.yaml")


def rows(root: Path, sql: str) -> list[dict]:
    return query(root, sql).to_pylist()


def store_down(*_) -> str:
    """`source_changed`'s answer when the object store holding the source can't be reached."""
    return fs.retryable(fs.StorageError("GET s3://bucket/video.mp4: connection reset"))


def test_split_and_score_retry_retryable_rows_without_duplicates(tmp_path, monkeypatch):
    # in this process, even where an earlier test started Ray: the patched check must reach the stages
    monkeypatch.setattr(curation.runner, "runs_inline", lambda *a: True)
    src = tmp_path / "in"
    for i in range(2):
        make_video(src / f"{i}.mp4", n_frames=72, size=(96, 64), kind="moving", seed=i)
    root = tmp_path / "root"
    pipeline.ingest(CFG, root, src)

    with monkeypatch.context() as m:  # split while the store is down: one error row per video
        m.setattr(curation.stages.split, "source_changed", store_down)
        pipeline.split(CFG, root)
    first = rows(root, "SELECT status, error_kind FROM clips")
    assert first == [dict(status="error", error_kind="retryable")] * 2
    pipeline.split(CFG, root)  # the store is back: both videos are split now
    clips = rows(root, "SELECT clip_id, status FROM clips")
    assert clips and all(r["status"] in ("ok", "rejected") for r in clips), clips
    assert len({r["clip_id"] for r in clips}) == len(clips)
    pipeline.split(CFG, root)  # nothing left
    assert len(rows(root, "SELECT * FROM clips_history")) == len(clips) + 2

    ok = sorted(r["clip_id"] for r in clips if r["status"] == "ok")
    with monkeypatch.context() as m:
        m.setattr(curation.stages.score, "source_changed", store_down)
        pipeline.score(CFG, root)
    assert rows(root, "SELECT DISTINCT status, error_kind FROM scores") == [
        dict(status="error", error_kind="retryable")]
    pipeline.score(CFG, root)
    assert rows(root, "SELECT clip_id, status FROM scores ORDER BY clip_id") == [
        dict(clip_id=c, status="ok") for c in ok]
    assert len(rows(root, "SELECT * FROM scores_history")) == 2 * len(ok)
    pending = {r["stage"]: r["pending"] for r in stage_status(root).to_pylist()}
    assert pending["split"] == 0 and pending["score"] == 0
    errors = rows(root, "SELECT * FROM clips WHERE status = 'error'")
    assert errors == [], "a video split on retry keeps no error row in the view"
    from manifests.frames import Run

    frame = Run(root).table("clips").collect().sort("clip_id")
    assert frame["clip_id"].to_list() == sorted(r["clip_id"] for r in clips)  # the polars view agrees
