"""The pending queries (curation/pending.py), `status` and verify's kept-set check on a random
small root: each query returns the rows of its plain NOT IN / NOT EXISTS definition, and status
counts exactly what each stage's own query returns.

The queries are written as explicit SEMI/ANTI joins, and status reads every table once for all
stages; these tests hold them to the plain definitions below on roots with retries, retryable
and final error rows, re-ingested videos, several filter runs and stale shard rows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from curation.pipeline import all_stages
from curation.status import stage_status
from curation.verify import _NOT_KEPT, _NOT_SHARDED, check_kept_set
from manifests import schemas
from manifests.db import connect, shared_views
from manifests.schemas import retryable_sql
from manifests.store import Table, rows_to_table

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
RETRYABLE = dict(status="error", error="timeout", error_kind="retryable")
FINAL = dict(status="error", error="broken", error_kind="final")

# the definitions, as first written (NOT IN / correlated NOT EXISTS)
_VIDEOS = """(SELECT * FROM videos WHERE status = 'ok'
              QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY created_at DESC) = 1)"""
PLAIN = {
    "split": f"""SELECT video_id FROM {_VIDEOS}
        WHERE video_id NOT IN (SELECT video_id FROM clips WHERE NOT {retryable_sql()})""",
    "score": f"""SELECT c.clip_id FROM clips c JOIN {_VIDEOS} v ON v.video_id = c.video_id
        WHERE c.status = 'ok'
          AND c.clip_id NOT IN (SELECT clip_id FROM scores WHERE NOT {retryable_sql()})""",
    "dedup": """SELECT s.clip_id FROM scores s JOIN clips c USING (clip_id)
        WHERE s.status = 'ok' AND c.status = 'ok' AND s.clip_embedding IS NOT NULL
          AND s.clip_id NOT IN (SELECT clip_id FROM duplicates)""",
    "filter": f"""SELECT c.clip_id FROM clips c JOIN {_VIDEOS} v ON v.video_id = c.video_id
        WHERE c.status = 'ok' AND c.clip_id NOT IN (SELECT clip_id FROM decisions)""",
    "shard": f"""SELECT d.clip_id, d.tier FROM decisions d WHERE d.keep
        AND d.clip_id IN (
            SELECT c.clip_id FROM clips c JOIN videos v ON v.video_id = c.video_id AND v.status = 'ok')
        AND NOT EXISTS (SELECT 1 FROM shards sh WHERE sh.clip_id = d.clip_id AND sh.tier = d.tier
                        AND sh.status = 'ok')
        AND NOT EXISTS (SELECT 1 FROM shards sh WHERE sh.clip_id = d.clip_id AND sh.status = 'error'
                        AND NOT {retryable_sql("sh")})""",
}
PLAIN_NOT_SHARDED = """SELECT d.clip_id, d.tier FROM decisions d
    WHERE d.keep AND NOT EXISTS (SELECT 1 FROM shards s WHERE s.clip_id = d.clip_id
                                 AND (s.status = 'error' OR (s.status = 'ok' AND s.tier = d.tier)))"""
TIERS = ["720p", "480p", "256p"]


def _write(root, name, rows, at):
    for r in rows:
        r.setdefault("created_at", at)
    Table(root, name).write(rows_to_table(rows, schemas.TABLES[name][0]))


def random_root(root, seed: int) -> None:
    """Videos (some re-ingested, some unreadable), clips with split errors and retries, scores,
    duplicates, two filter runs and shards rows of every status, each table in several parts."""
    rng = np.random.default_rng(seed)
    pick = lambda *xs, p=None: xs[rng.choice(len(xs), p=p)]  # noqa: E731
    videos = [dict(video_id=f"v{i:03d}", path=f"/d/{i}.mp4",
                   **pick(dict(status="ok"), dict(status="ok"), dict(status="ok"), FINAL))
              for i in range(40)]
    _write(root, "videos", videos, T0)
    _write(root, "videos", [dict(v, path=v["path"] + ".again") for v in videos[:5]], T0 + timedelta(1))
    clips, late = [], []
    for v in videos:
        kind = rng.integers(5)
        if kind == 0:
            continue  # never split
        if kind == 1:  # split failed: one error row keyed by the video
            clips.append(dict(clip_id=f"{v['video_id']}-x", video_id=v["video_id"], **pick(RETRYABLE, FINAL)))
            continue
        for j in range(rng.integers(1, 5)):
            row = dict(clip_id=f"{v['video_id']}-{j}", video_id=v["video_id"], start_frame=int(j * 10),
                       duration_s=float(rng.uniform(1, 9)),
                       **pick(dict(status="ok"), dict(status="rejected"), RETRYABLE, p=[0.8, 0.1, 0.1]))
            clips.append(row)
            if rng.random() < 0.15:  # retried later: the newer row wins
                again = pick(dict(status="ok"), RETRYABLE, FINAL)
                late.append({**row, "error": None, "error_kind": None, **again})
    half = len(clips) // 2
    _write(root, "clips", clips[:half], T0 + timedelta(2))
    _write(root, "clips", clips[half:], T0 + timedelta(2, 1))
    _write(root, "clips", late, T0 + timedelta(3))
    ok = [c["clip_id"] for c in clips if c["status"] == "ok"]
    scores = []
    for c in ok:
        if rng.random() < 0.8:
            row = dict(clip_id=c, clip_model="m",
                       **pick(dict(status="ok"), RETRYABLE, FINAL, p=[0.8, 0.1, 0.1]))
            row["clip_embedding"] = None if rng.random() < 0.1 else [float(rng.random())] * 4
            scores.append(row)
    _write(root, "scores", scores, T0 + timedelta(4))
    _write(root, "scores", [dict(s, status="ok", error=None, error_kind=None) for s in scores[::7]],
           T0 + timedelta(5))
    _write(root, "duplicates", [dict(clip_id=s["clip_id"], group_id=s["clip_id"], group_size=1, dedup_run="d")
                                for s in scores if rng.random() < 0.5], T0 + timedelta(6))
    decided = [c for c in ok if rng.random() < 0.9]
    for run in range(2):
        rows = []
        for c in decided:
            if run == 1 and rng.random() < 0.2:
                continue  # the later run did not decide it again: the older decision stands
            tier = pick(*TIERS, None)
            rows.append(dict(clip_id=c, tier=tier, keep=tier is not None, filter_run=f"f{run}"))
        _write(root, "decisions", rows, T0 + timedelta(7 + run))
    shards = []
    for c in decided:
        if rng.random() < 0.7:
            shards.append(dict(clip_id=c, key=c, tier=pick(*TIERS), shard=f"shards/{c[:4]}.tar",
                               **pick(dict(status="ok"), dict(status="removed"), RETRYABLE, FINAL,
                                      p=[0.7, 0.1, 0.1, 0.1])))
    _write(root, "shards", shards, T0 + timedelta(9))
    _write(root, "shards", [dict(s, status="ok", error=None, error_kind=None) for s in shards[::5]],
           T0 + timedelta(10))


@pytest.fixture(params=[0, 1, 2])
def root(request, tmp_path):
    random_root(tmp_path, request.param)
    return tmp_path


def _rows(con, sql, cols):
    return sorted(con.sql(f"SELECT {cols} FROM ({sql})").fetchall())


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_each_pending_query_returns_the_rows_of_its_plain_definition(root, name):
    con = connect(root)
    stage = {s.name: s for s in all_stages()}[name]
    cols = "clip_id, tier" if name == "shard" else "video_id" if name == "split" else "clip_id"
    got = _rows(con, stage.pending_sql(con, None), cols)
    assert got == _rows(con, PLAIN[name], cols)


def test_the_random_roots_have_work_pending_for_every_stage(tmp_path):
    random_root(tmp_path, 0)  # the equivalence above is only worth something if rows differ
    con = connect(tmp_path)
    for name, sql in PLAIN.items():
        assert con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0] > 0, name


def test_status_counts_what_each_stage_reads_and_its_own_pending_query(root):
    con = connect(root)
    got = {r["stage"]: r for r in stage_status(root).to_pylist()}
    for stage in all_stages():
        if stage.name not in got:
            continue
        done, rejected, error, last = con.execute(
            f"SELECT count(*) FILTER (WHERE {stage.done}), count(*) FILTER (WHERE {stage.rejected}), "
            f"count(*) FILTER (WHERE {stage.error}), max(created_at) FROM {stage.table}").fetchall()[0]
        sql = stage.pending_sql(con, None)
        expect = None if sql is None else con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
        row = got[stage.name]
        assert (row["done"], row["rejected"], row["error"], row["last_run"], row["pending"]) == (
            done, rejected, error, last, expect), stage.name


def test_verify_names_the_clips_of_the_plain_kept_set_definition(root):
    con = connect(root)
    missing = _rows(con, PLAIN_NOT_SHARDED, "clip_id, tier")
    assert _rows(con, _NOT_SHARDED, "clip_id, tier") == missing
    stale = con.execute(f"SELECT count(*) FROM ({_NOT_KEPT})").fetchall()[0][0]
    problems = [p.message for p in check_kept_set(con)]
    assert missing and stale
    assert problems[0].startswith(f"{len(missing)} kept clip(s) in no tar of their tier: {missing[0][0]}")
    assert problems[1].startswith(f"{stale} clip(s) in a tar that the newest decisions do not keep")


def test_status_shares_views_read_twice_but_not_one_with_embeddings():
    sql = "SELECT * FROM clips c, clips d, scores s, scores t, decisions x, decisions_history h"
    assert shared_views(sql) == "WITH clips AS MATERIALIZED (SELECT * FROM main.clips) "
    assert shared_views("SELECT * FROM decisions") == ""
