"""What each stage's next run would take: one SQL query per stage, over the run root's views.

A stage runs on exactly these rows and `reelsift status` counts exactly these rows, so the two
never disagree. Each query takes a key again when its newest row there is a retryable error
(`manifests.schemas.retryable_sql`). A query that depends on the config returns None when it
has none (`reelsift status` without `--config`): the figure is not knowable without it.

"Not done yet" is an explicit ANTI JOIN, not NOT IN (subquery): DuckDB plans NOT IN as a mark
join that keeps NULL semantics, and a correlated NOT EXISTS as a join that copies the outer
rows first. The keys joined on are never NULL (manifests/schemas.py; an ok video has its id),
so both forms take the same rows.
"""

from __future__ import annotations

from typing import Any

import duckdb

from manifests.schemas import retryable_sql
from manifests.sqltext import literal

# ok videos, the newest row of each (a file ingested again unchanged has a second row)
_VIDEOS = """(SELECT * FROM videos WHERE status = 'ok'
              QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY created_at DESC) = 1)"""


def split(con: duckdb.DuckDBPyConnection, cfg: Any) -> str:
    """ok videos with no clips row but a retryable one."""
    return f"""
        SELECT video_id, path, fps, n_frames, display_width, display_height, size_bytes,
               epoch(created_at) AS ingested_at
        FROM {_VIDEOS} v
        ANTI JOIN clips c ON c.video_id = v.video_id AND NOT {retryable_sql("c")}
        ORDER BY video_id
    """


def score(con: duckdb.DuckDBPyConnection, cfg: Any) -> str:
    """ok clips of ok videos with no scores row but a retryable one, neighbours together (a batch
    holds neighbouring clips: one decode pass)."""
    return f"""
        SELECT c.clip_id, c.path, c.start_frame, c.end_frame, c.fps, v.rotation,
               c.width AS display_width, c.height AS display_height, v.size_bytes,
               epoch(v.created_at) AS ingested_at, v.codec, v.pix_fmt, v.vfr
        FROM clips c JOIN {_VIDEOS} v ON v.video_id = c.video_id
        ANTI JOIN scores s ON s.clip_id = c.clip_id AND NOT {retryable_sql("s")}
        WHERE c.status = 'ok'
        ORDER BY c.video_id, c.start_frame
    """


def dedup(con: duckdb.DuckDBPyConnection, cfg: Any) -> str:
    """Scored clips with an embedding that no dedup run has grouped yet (none while
    dedup.enabled is false)."""
    off = "AND false" if cfg is not None and not cfg.dedup.enabled else ""
    return f"""
        SELECT s.clip_id FROM scores s JOIN clips c USING (clip_id)
        ANTI JOIN duplicates d ON d.clip_id = s.clip_id
        WHERE s.status = 'ok' AND c.status = 'ok' AND s.clip_embedding IS NOT NULL {off}
    """


def filter_(con: duckdb.DuckDBPyConnection, cfg: Any) -> str:
    """ok clips of ok videos that no filter run has decided yet (filter decides every clip
    again each run; these are the ones with no decision at all)."""
    return f"""
        SELECT c.clip_id FROM clips c JOIN {_VIDEOS} v ON v.video_id = c.video_id
        ANTI JOIN decisions d ON d.clip_id = c.clip_id
        WHERE c.status = 'ok'
    """


def caption(con: duckdb.DuckDBPyConnection, cfg: Any) -> str | None:
    return None if cfg is None else caption_sql(cfg.caption)


def caption_sql(cap: Any) -> str:
    """Kept clips (newest filter run) with no captions row for (clip, model, prompt hash) but a
    retryable one (any error row with caption.retry_errors). `cap`: the CaptionConfig."""
    retried = "status = 'ok'" if cap.retry_errors else f"NOT {retryable_sql()}"
    return f"""
        SELECT c.clip_id, c.path, c.start_frame, c.end_frame, c.fps, c.duration_s, v.rotation,
               c.width AS display_width, c.height AS display_height, v.codec, v.pix_fmt, v.vfr
        FROM decisions d
        JOIN clips c ON c.clip_id = d.clip_id AND c.status = 'ok'
        JOIN {_VIDEOS} v ON v.video_id = c.video_id
        WHERE d.keep AND c.clip_id NOT IN (
            SELECT clip_id FROM captions_history
            WHERE model = {literal(cap.model_name)} AND prompt_hash = {literal(cap.prompt_hash)}
              AND {retried})
        ORDER BY c.clip_id
    """


def align(con: duckdb.DuckDBPyConnection, cfg: Any) -> str | None:
    return None if cfg is None else align_sql(cfg.score.aesthetic.clip_model)


def align_sql(clip_model: str) -> str:
    """Each clip's newest ok caption, with its stored CLIP embedding, that has no alignment row
    for (caption model, prompt hash, `clip_model`) but a retryable one."""
    return f"""
        WITH cap AS (
            SELECT clip_id, caption, model, prompt_hash FROM captions_history WHERE status = 'ok'
            QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY created_at DESC) = 1)
        SELECT cap.clip_id, cap.caption, cap.model AS caption_model, cap.prompt_hash,
               s.clip_model, s.clip_embedding
        FROM cap LEFT JOIN scores s ON s.clip_id = cap.clip_id AND s.status = 'ok'
        WHERE NOT EXISTS (
            SELECT 1 FROM alignment_history a
            WHERE a.clip_id = cap.clip_id AND a.caption_model = cap.model
              AND a.prompt_hash = cap.prompt_hash AND a.clip_model = {literal(clip_model)}
              AND NOT {retryable_sql("a")})
        ORDER BY cap.clip_id
    """


SHARD = f"""
    SELECT d.clip_id, d.tier FROM decisions d
    SEMI JOIN (SELECT c.clip_id FROM clips c JOIN videos v ON v.video_id = c.video_id AND v.status = 'ok') c
        ON c.clip_id = d.clip_id
    ANTI JOIN shards sh ON sh.clip_id = d.clip_id AND sh.tier = d.tier AND sh.status = 'ok'
    ANTI JOIN shards er ON er.clip_id = d.clip_id AND er.status = 'error' AND NOT {retryable_sql("er")}
    WHERE d.keep
"""
"""Kept clips that no tar holds at their tier (never cut, taken out by a re-filter, kept now in
another tier: reshard takes those out of their tars first) and that have no error row but a
retryable one. Two plain anti-joins, not one with an OR inside: at 10M clips the OR form ran out of
DuckDB's 512 MB (`status` failed); this form takes 29 s and 731 MiB there, and is 2.8x faster at 1M.
Written as explicit SEMI/ANTI joins: NOT EXISTS over a correlated subquery first copies the
decision rows into a hash table (DuckDB's delim join); an explicit join streams them past the
smaller side's table (at 1M clips: 2.6 -> 2.1 CPU s)."""


def shard(con: duckdb.DuckDBPyConnection, cfg: Any) -> str:
    return SHARD
