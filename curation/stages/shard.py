"""shard: cut kept clips frame-accurately, resize to their tier, write WebDataset tars.

Layout: `<root>/shards/<tier>/<group>-<n>.tar`, each sample `<clip_id>.mp4`, `.txt` (caption,
empty until captions exist) and `.json` (every manifest field of the clip). Member and file
names come from keys only, never from user file names. A tar is written to a temp name and
renamed when complete; its rows are appended to the `shards` table right after. Tars that a
killed run left unindexed are removed at the next start and their clips cut again.

What to cut is planned in DuckDB (curation/shard_plan.py); a writer gets one row per group and
reads its clips from the plan file. Tars of clips a re-filter dropped are rewritten first
(curation/reshard.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.config import ShardConfig
from curation.errors import NoSpace, error_fields, is_disk_full, problem_fields
from curation.shard_plan import plan_dir, read_group
from filters.video import VideoDecodeError, encode_mp4, even_size, iter_frames, source_changed
from manifests import fs
from manifests.commit import atomic_write, committed_glob, remove, remove_uncommitted
from manifests.db import connect
from manifests.schemas import SHARDS
from manifests.store import rows_to_table

log = logging.getLogger("reelsift")


@dataclass(frozen=True)
class ShardJob:
    """What a writer task needs: the config plus where the run root is."""

    cfg: ShardConfig
    root: str


def output_indices(
    start: int, end: int, src_fps: float, out_fps: float | None
) -> tuple[list[int] | None, float]:
    """Source frames to keep for `out_fps` (nearest in time) -> (indices or None=all, fps)."""
    if out_fps is None or out_fps >= src_fps - 1e-6:
        return None, src_fps
    step = src_fps / out_fps
    n = int((end - start) / step)
    return [start + int(round(k * step)) for k in range(n)], out_fps


def cut_clip(
    clip: dict, short_side: int, out_fps: float | None, cfg: ShardConfig, deadline: float | None = None
) -> tuple[bytes, int, int, float, int]:
    """Decode [start_frame, end_frame) of the source, resize, re-encode -> (mp4, w, h, fps, n)."""
    w, h = even_size(int(clip["display_width"]), int(clip["display_height"]), short_side)
    indices, fps = output_indices(
        int(clip["start_frame"]), int(clip["end_frame"]), float(clip["fps"]), out_fps
    )
    rotation = int(clip["rotation"] or 0)
    frames = [
        f
        for _, f in iter_frames(
            clip["path"],
            int(clip["start_frame"]),
            int(clip["end_frame"]),
            float(clip["fps"]),
            size=(w, h),
            rotation=rotation,
            indices=indices,
            deadline=deadline,
            yuv=not rotation,  # straight to the encoder's format: no RGB round trip
        )
    ]
    if not frames:
        raise VideoDecodeError(clip["path"], "no frame decoded in the clip's range")
    return encode_mp4(frames, fps, crf=cfg.crf, preset=cfg.preset), w, h, fps, len(frames)


class _Empty(Exception):
    """A tar that got no sample: its write is abandoned."""


class _TarSet:
    """Rolls tars within one writer task by sample count and bytes; each closes atomically."""

    def __init__(self, root: Path, tier: str, group: str, cfg: ShardConfig):
        self.root, self.tier, self.group, self.cfg = root, tier, group, cfg
        self.dir = root / "shards" / tier
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index = 0
        self.rows: list[dict] = []
        self._open()

    def _open(self):
        import webdataset as wds

        self.final = self.dir / f"{self.group}-{self.index:03d}.tar"
        self.commit = atomic_write(self.final)  # temp + rename locally; object + marker on S3
        self.fh = self.commit.__enter__()
        self.writer = wds.TarWriter(self.fh)
        self.samples = 0
        self.pending: list[dict] = []

    def add(self, key: str, mp4: bytes, caption: str, meta: dict, row: dict):
        self.writer.write({"__key__": key, "mp4": mp4, "txt": caption, "json": meta})
        self.samples += 1
        self.pending.append(row)
        if self.samples >= self.cfg.max_samples or self.fh.tell() >= self.cfg.max_bytes:
            self._close()
            self.index += 1
            self._open()

    def _close(self):
        self.writer.close()
        if self.samples == 0:  # nothing in it: abandon the write, nothing becomes visible
            self.commit.__exit__(_Empty, _Empty(), None)
            return
        self.commit.__exit__(None, None, None)
        rel = str(self.final.relative_to(self.root))
        self.rows.extend({**r, "shard": rel} for r in self.pending)

    def close(self) -> list[dict]:
        self._close()
        return self.rows

    def abandon(self, exc: BaseException) -> list[str]:
        """Drop the tar being written (its temp file goes, nothing becomes visible) -> the clip
        ids that were in it. Tars closed before stay, with their rows."""
        try:
            self.writer.close()
        except OSError:
            pass
        self.commit.__exit__(type(exc), exc, None)
        return [r["clip_id"] for r in self.pending]


class ShardWriter:
    """Batch of groups {group, tier, short_side, fps, group_index, plan} (shard_plan.GROUPS) ->
    `shards` rows; each group's clips are read from the plan file here, in the worker."""

    def __init__(self, job: ShardJob):
        self.job = job

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = []
        for i in range(len(batch["group"])):
            clips = read_group(str(batch["plan"][i]), int(batch["group_index"][i]))
            rows.extend(
                self.write_group(
                    str(batch["group"][i]),
                    str(batch["tier"][i]),
                    int(batch["short_side"][i]),
                    None if np.isnan(batch["fps"][i]) else float(batch["fps"][i]),
                    clips,
                )
            )
        return rows_to_table(rows, SHARDS)

    def write_group(
        self, group: str, tier: str, short_side: int, out_fps: float | None, clips: list[dict]
    ) -> list[dict]:
        cfg = self.job.cfg
        tars = _TarSet(fs.upath(self.job.root), tier, group, cfg)
        errors = []
        for n_done, clip in enumerate(clips):
            key = clip["clip_id"]
            changed = source_changed(clip["path"], clip.get("size_bytes"), clip.get("ingested_at"))
            if changed:  # never cut from new bytes under the old video_id
                errors.append(dict(clip_id=key, key=key, tier=tier, **problem_fields(changed)))
                continue
            try:
                mp4, w, h, fps, n = cut_clip(
                    clip, short_side, out_fps, cfg, deadline=time.monotonic() + cfg.timeout_s
                )
            except fs.StorageError as exc:  # the source could not be read: the next run cuts it
                errors.append(dict(clip_id=key, key=key, tier=tier, **error_fields(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - any cut failure is this clip's error row (errors.py)
                fields = error_fields(exc, "could not cut clip")
                errors.append(dict(clip_id=key, key=key, tier=tier, **fields))
                continue
            meta = dict(clip["meta"])
            meta["shard"] = dict(tier=tier, width=w, height=h, fps=fps, n_frames=n)
            caption = clip.get("caption") or ""
            row = dict(
                clip_id=key,
                key=key,
                tier=tier,
                status="ok",
                width=w,
                height=h,
                fps=fps,
                n_frames=n,
                bytes=len(mp4),
                caption=caption,
            )
            try:
                tars.add(key, mp4, caption, meta, row)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                return self._out_of_space(tars, exc, len(mp4), tier, clips[n_done:]) + errors
        try:
            return tars.close() + errors
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            return self._out_of_space(tars, exc, 0, tier, []) + errors

    @staticmethod
    def _out_of_space(tars: _TarSet, exc: OSError, extra: int, tier: str, rest: list[dict]) -> list[dict]:
        """The rows of the tars already closed, plus a `disk_full` row for every clip not stored
        (in the dropped tar, or not cut yet): the driver stores the former and stops."""
        need = tars.fh.tell() + extra if not tars.fh.closed else extra
        lost = list(dict.fromkeys(tars.abandon(exc) + [c["clip_id"] for c in rest]))
        fields = error_fields(NoSpace(tars.final, max(need, 1)))
        return tars.rows + [dict(clip_id=k, key=k, tier=tier, **fields) for k in lost]


def indexed_tars(root: Path) -> set[str]:
    """Tars the newest `shards` rows point to (one string per tar, not per clip)."""
    rows = connect(root).sql("SELECT DISTINCT shard FROM shards WHERE status = 'ok' AND shard IS NOT NULL")
    return {s for (s,) in rows.fetchall()}


def clean_orphans(root: Path) -> int:
    """Delete tars no current `shards` row points to (left by a killed run or reshard), temp
    tars (unmarked objects on S3) and old plan files."""
    base = root / "shards"
    if isinstance(base, Path) and not base.is_dir():
        return 0
    fs.rmtree(plan_dir(root))
    indexed = indexed_tars(root)
    removed = 0
    for tar in committed_glob(base, "*/*.tar"):
        if str(tar.relative_to(root)) not in indexed:
            remove(tar)
            removed += 1
    return removed + remove_uncommitted(base, "*/*.tar")
