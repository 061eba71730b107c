"""The report's media folder: a middle-frame JPEG (the poster) and a short muted preview per clip.

`<root>/report/thumbs/<clip_id>.jpg` and `<root>/report/previews/<clip_id>.mp4`, each written
once (clip ids never change meaning) to a temp name and renamed. Previews are cut by the shard
stage's own `cut_clip` (same frame-accurate decode, rotation, resize and H.264 encoder), at a
small size, a low frame rate and a high CRF: the first `PREVIEW_SECONDS` of the clip.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

from curation.config import ShardConfig
from curation.stages.shard import cut_clip
from filters.video import DecodeTimeout, VideoDecodeError, even_size, iter_frames
from manifests.commit import atomic_write

THUMB_SHORT_SIDE = 144
PREVIEW_SHORT_SIDE = 144
PREVIEW_FPS = 12.0
PREVIEW_SECONDS = 3.0
PREVIEW_CODEC = ShardConfig(crf=32, preset="veryfast")  # ~20-40 kB per preview
MEDIA_ERRORS = (VideoDecodeError, DecodeTimeout, OSError, ValueError)

# The clip fields media needs; `details_sql` selects them.
CLIP_FIELDS = "c.clip_id, c.path, c.start_frame, c.end_frame, c.fps, c.width, c.height, v.rotation"
VIDEO_JOIN = """LEFT JOIN (SELECT video_id, any_value(rotation) AS rotation FROM videos WHERE status = 'ok'
                GROUP BY video_id) v ON v.video_id = c.video_id"""


def write_thumb(c: dict, dest: Path) -> None:
    """Middle frame of the clip as a JPEG of short side <= THUMB_SHORT_SIDE (kept if present)."""
    if dest.exists():
        return
    size = even_size(int(c["width"]), int(c["height"]), THUMB_SHORT_SIDE)
    mid = (int(c["start_frame"]) + int(c["end_frame"])) // 2
    frames = [f for _, f in iter_frames(c["path"], mid, mid + 1, float(c["fps"]), size=size,
                                        rotation=int(c["rotation"] or 0))]
    if not frames:
        raise VideoDecodeError(c["path"], f"no frame decoded at index {mid}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError(f"JPEG encoding failed for clip {c['clip_id']}")
    _write_atomic(dest, buf.tobytes())


def write_preview(c: dict, dest: Path) -> None:
    """The clip's first PREVIEW_SECONDS as a small muted H.264 mp4 (kept if present)."""
    if dest.exists():
        return
    start, fps = int(c["start_frame"]), float(c["fps"])
    end = min(int(c["end_frame"]), start + max(1, round(PREVIEW_SECONDS * fps)))
    clip = dict(c, end_frame=end, display_width=c["width"], display_height=c["height"])
    mp4, *_ = cut_clip(clip, PREVIEW_SHORT_SIDE, min(PREVIEW_FPS, fps), PREVIEW_CODEC)
    _write_atomic(dest, mp4)


def write_media(c: dict, out: Path, preview: bool = True) -> dict:
    """Poster and (with `preview`) preview of clip `c` under `out` -> {thumb, preview} relative
    paths (None where one could not be made) and `error`, the first reason one could not."""
    media: dict = dict(thumb=None, preview=None, error=None)
    for key, folder, ext, write in (("thumb", "thumbs", "jpg", write_thumb),
                                    ("preview", "previews", "mp4", write_preview))[:2 if preview else 1]:
        rel = f"{folder}/{c['clip_id']}.{ext}"
        try:
            write(c, out / rel)
            media[key] = rel
        except MEDIA_ERRORS as exc:
            media["error"] = media["error"] or f"no {key}: {exc}"
    return media


def write_all_media(clips: list[dict], out: Path, previews: set[str] | None = None) -> dict[str, dict]:
    """`write_media` of each clip, in threads (decoding and x264 release the GIL) -> by clip id.
    `previews`: the clip ids that get a preview (None: all); the others get their poster only."""
    todo = list({c["clip_id"]: c for c in clips}.values())
    if not todo:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1, 8)) as pool:
        made = pool.map(lambda c: write_media(c, out, previews is None or c["clip_id"] in previews), todo)
        return dict(zip((c["clip_id"] for c in todo), made, strict=True))


def media_folders(out: Path) -> None:
    for folder in ("thumbs", "previews"):
        (out / folder).mkdir(parents=True, exist_ok=True)


def _write_atomic(dest: Path, data: bytes) -> None:
    with atomic_write(dest) as fh:
        fh.write(data)

