"""One pyarrow schema per manifest table.

Tables live under a run root as `<root>/<table>/part-*.parquet`. Every row carries
`created_at` (UTC) so views can pick the newest row of a key where a table is re-decided
(decisions, captions). `status` is always one of ok | rejected | error.
"""

from __future__ import annotations

import pyarrow as pa

STATUSES = ("ok", "rejected", "error")

ERROR_KINDS = ("retryable", "disk_full", "timeout", "permanent")
"""`error_kind` of an error row (the `error` text is for people):
  retryable  storage failed, not the input: the stage's next run takes the key again
  disk_full  the run root had no room (never stored: the driver stops the stage)
  timeout    the input ran past its time limit
  permanent  the input itself is bad: corrupt, unreadable, changed since ingest
Rows written before the column existed read it as null; `retryable_sql` tells their kind from
the message."""

RETRYABLE_PREFIX = "storage error (a re-run retries it): "
"""How a retryable row's `error` begins (manifests/fs.py words it)."""


def retryable_sql(alias: str = "") -> str:
    """SQL true for a retryable error row of the table aliased `alias`."""
    a = f"{alias}." if alias else ""
    older = f"CASE WHEN starts_with({a}error, '{RETRYABLE_PREFIX}') THEN 'retryable' END"
    return f"(coalesce({a}error_kind, {older}, '') = 'retryable')"


_TS = pa.timestamp("us", tz="UTC")
_REASONS = pa.list_(pa.string())

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string()),  # blake2b-128 of the file bytes; NULL if unreadable
        pa.field("path", pa.string(), nullable=False),  # absolute input path
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),  # null unless status='error'; see ERROR_KINDS
        pa.field("reasons", _REASONS),
        pa.field("size_bytes", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),  # average frame rate
        pa.field("vfr", pa.bool_()),  # variable frame rate suspected
        pa.field("n_frames", pa.int64()),
        pa.field("width", pa.int32()),  # coded width (pixels)
        pa.field("height", pa.int32()),
        pa.field("rotation", pa.int32()),  # display rotation, degrees (0, 90, 180, 270)
        pa.field("display_width", pa.int32()),  # width as shown, after rotation
        pa.field("display_height", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("pix_fmt", pa.string()),
        pa.field("has_audio", pa.bool_()),
        pa.field("bitrate", pa.int64()),  # bits/s of the container, 0 if unknown
        pa.field("created_at", _TS, nullable=False),
    ]
)

CLIPS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),  # hash of (video_id, start, end)
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string()),  # source video path (denormalised for workers)
        pa.field("scene_index", pa.int32()),
        pa.field("piece_index", pa.int32()),  # >0 when a long scene was cut into pieces
        pa.field("start_frame", pa.int64()),  # inclusive, source frame index
        pa.field("end_frame", pa.int64()),  # exclusive
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("duration_s", pa.float64()),
        pa.field("fps", pa.float64()),
        pa.field("width", pa.int32()),  # display size of the source
        pa.field("height", pa.int32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),  # null unless status='error'; see ERROR_KINDS
        pa.field("reasons", _REASONS),
        pa.field("created_at", _TS, nullable=False),
    ]
)

DECISIONS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("tier", pa.string()),  # highest tier passed, null when rejected
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reasons", _REASONS),  # every failed bound, e.g. 'motion_mean=0.1<0.5@480p'
        pa.field("filter_run", pa.string(), nullable=False),  # one id per filter run
        pa.field("config_hash", pa.string()),  # hash of the filter config used
        pa.field("created_at", _TS, nullable=False),
    ]
)

SHARDS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("shard", pa.string()),  # tar path relative to the run root; null on error
        pa.field("key", pa.string(), nullable=False),  # WebDataset __key__ inside the tar
        pa.field("tier", pa.string(), nullable=False),
        # ok; error (clip could not be cut); removed (a re-filter dropped it from its tar)
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),  # null unless status='error'; see ERROR_KINDS
        pa.field("width", pa.int32()),  # encoded size
        pa.field("height", pa.int32()),
        pa.field("fps", pa.float64()),
        pa.field("n_frames", pa.int32()),
        pa.field("bytes", pa.int64()),  # size of the mp4 member
        pa.field("caption", pa.string()),
        pa.field("created_at", _TS, nullable=False),
    ]
)

SCORES = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok, or error (clip not decodable)
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),  # null unless status='error'; see ERROR_KINDS
        pa.field("n_frames_scored", pa.int32()),  # frames decoded once and shared by scorers
        pa.field("frame_step", pa.float32()),  # source frames between sampled frames
        pa.field("work_width", pa.int32()),  # working resolution of the sampled frames
        pa.field("work_height", pa.int32()),
        pa.field("decode_lane", pa.string()),  # cpu, nvdec, or cpu-fallback (NVDEC failed on the file)
        # motion (filters/motion.py): px per source frame at a 256-px short side
        pa.field("motion_mean", pa.float32()),
        pa.field("motion_p90", pa.float32()),
        pa.field("motion_max", pa.float32()),
        pa.field("motion_static_frac", pa.float32()),  # 0..1
        pa.field("motion_pairs", pa.int32()),
        # ocr (filters/ocr.py)
        pa.field("ocr_area", pa.float32()),  # union of text boxes / frame area, 0..1
        pa.field("ocr_boxes", pa.int32()),
        pa.field("ocr_text", pa.string()),
        # quality (filters/quality.py)
        pa.field("quality_brightness", pa.float32()),  # 0..1
        pa.field("quality_contrast", pa.float32()),  # 0..0.5
        pa.field("quality_saturation", pa.float32()),  # 0..1
        pa.field("quality_colorfulness", pa.float32()),  # 0..~180
        pa.field("quality_sharpness", pa.float32()),  # >= 0
        pa.field("quality_dark_frac", pa.float32()),  # 0..1
        pa.field("quality_bright_frac", pa.float32()),  # 0..1
        # aesthetic + CLIP (filters/aesthetic.py)
        pa.field("aesthetic_mean", pa.float32()),  # LAION scale ~1..10 with real weights
        pa.field("aesthetic_min", pa.float32()),
        pa.field("aesthetic_untrained", pa.bool_()),  # True: random weights, scores meaningless
        pa.field("clip_model", pa.string()),  # which CLIP made clip_embedding
        pa.field("clip_embedding", pa.list_(pa.float32())),  # (D,) unit norm
        # nsfw (filters/nsfw.py): NudeNet detector confidence, max over scored frames, 0..1
        pa.field("nsfw_max", pa.float32()),  # any exposed-nudity class
        pa.field("nsfw_mean", pa.float32()),  # mean over frames of the per-frame max
        pa.field("nsfw_breast", pa.float32()),
        pa.field("nsfw_genitalia", pa.float32()),
        pa.field("nsfw_buttocks", pa.float32()),
        pa.field("created_at", _TS, nullable=False),
    ]
)

CAPTIONS = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("caption", pa.string()),  # post-processed caption; null on error
        pa.field("backend", pa.string(), nullable=False),  # transformers | openai | sidecar
        pa.field("model", pa.string(), nullable=False),  # hub id, path, or served model name
        pa.field("prompt_hash", pa.string(), nullable=False),  # hash of the prompt template
        pa.field("n_tokens", pa.int32()),  # generated tokens (or words for sidecar)
        pa.field("latency_s", pa.float64()),  # wall time of the request/generation
        pa.field("untrained", pa.bool_()),  # True when the captioner had random weights
        pa.field("status", pa.string(), nullable=False),  # ok | error
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),  # null unless status='error'; see ERROR_KINDS
        pa.field("created_at", _TS, nullable=False),
    ]
)

ALIGNMENT = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("caption_model", pa.string(), nullable=False),  # captions.model that was scored
        pa.field("prompt_hash", pa.string(), nullable=False),  # captions.prompt_hash
        pa.field("clip_score", pa.float32()),  # cosine(caption text emb, clip_embedding), -1..1
        pa.field("clip_model", pa.string(), nullable=False),  # CLIP of both embeddings
        pa.field("untrained", pa.bool_()),  # True: random CLIP, score meaningless
        pa.field("status", pa.string(), nullable=False),  # ok | error
        pa.field("error", pa.string()),
        pa.field("error_kind", pa.string()),  # null unless status='error'; see ERROR_KINDS
        pa.field("created_at", _TS, nullable=False),
    ]
)

DUPLICATES = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),  # clip_id of the clip the group keeps
        pa.field("group_size", pa.int32(), nullable=False),  # 1 = no near-duplicate found
        pa.field("duplicate_of", pa.string()),  # = group_id for a dropped clip; null when kept
        pa.field("similarity", pa.float32()),  # cosine to the kept clip; null when kept
        pa.field("clip_model", pa.string()),  # embeddings compared (only within one model)
        pa.field("dedup_run", pa.string(), nullable=False),  # one id per dedup run
        pa.field("config_hash", pa.string()),  # hash of the dedup config used
        pa.field("created_at", _TS, nullable=False),
    ]
)

# name -> (schema, key column, newest-row-wins?). Newest wins: the view shows the newest row per
# key (`<name>_history` shows all), so a retry replaces the row before it.
TABLES: dict[str, tuple[pa.Schema, str, bool]] = {
    "videos": (VIDEOS, "path", False),
    "clips": (CLIPS, "clip_id", True),
    "scores": (SCORES, "clip_id", True),
    "decisions": (DECISIONS, "clip_id", True),
    "captions": (CAPTIONS, "clip_id", True),
    "alignment": (ALIGNMENT, "clip_id", True),
    # newest wins: a reshard appends the row of the tar that holds the clip now ('removed' once
    # a re-filter dropped it); parts written before this was newest-wins hold one row per clip.
    "shards": (SHARDS, "clip_id", True),
    "duplicates": (DUPLICATES, "clip_id", True),
}

def register(name: str, schema: pa.Schema, key: str, newest_wins: bool = False) -> None:
    """Add a table defined elsewhere (a stage registered by `curation.registry.register`) so
    views, `sql` and `compact` see it."""
    TABLES[name] = (schema, key, newest_wins)


SUPERSEDED_ERRORS: dict[str, str] = {"clips": "video_id"}
"""table -> group column: the view hides an error row once a newer row of its group exists. A
video that split failed on has one error row (its own key); once a retry splits it, that row is
history and the video's clips stand in its place."""
