"""shard: cut kept clips frame-accurately, resize to their tier, write WebDataset tars.

Layout: `<root>/shards/<tier>/<group>-<n>.tar`, each sample `<clip_id>.mp4`, `.txt` (caption,
empty until captions exist) and `.json` (every manifest field of the clip). Member and file
names come from keys only, never from user file names. A tar is written to a temp name and
renamed when complete; its rows are appended to the `shards` table right after. Tars that a
killed run left unindexed are removed at the next start and their clips cut again.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.config import ShardConfig
from filters.policy import FilterConfig
from filters.video import DecodeTimeout, VideoDecodeError, encode_mp4, even_size, iter_frames, key_hash
from manifests.configtools import ConfigError
from manifests.db import connect
from manifests.schemas import SHARDS, TABLES
from manifests.store import Table, rows_to_table

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
    frames = [
        f
        for _, f in iter_frames(
            clip["path"],
            int(clip["start_frame"]),
            int(clip["end_frame"]),
            float(clip["fps"]),
            size=(w, h),
            rotation=int(clip["rotation"] or 0),
            indices=indices,
            deadline=deadline,
        )
    ]
    if not frames:
        raise VideoDecodeError(clip["path"], "no frame decoded in the clip's range")
    return encode_mp4(frames, fps, crf=cfg.crf, preset=cfg.preset), w, h, fps, len(frames)


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

        self.tmp = self.dir / f".tmp-{uuid.uuid4().hex}.tar"
        self.fh = open(self.tmp, "wb")
        self.writer = wds.TarWriter(self.fh)
        self.final = self.dir / f"{self.group}-{self.index:03d}.tar"
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
        if not self.fh.closed:
            self.fh.close()
        if self.samples == 0:
            self.tmp.unlink(missing_ok=True)
            return
        os.replace(self.tmp, self.final)
        rel = str(self.final.relative_to(self.root))
        self.rows.extend({**r, "shard": rel} for r in self.pending)

    def close(self) -> list[dict]:
        self._close()
        return self.rows


class ShardWriter:
    """Batch of one group {tier, short_side, fps, clips_json} -> `shards` rows."""

    def __init__(self, job: ShardJob):
        self.job = job

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = []
        for i in range(len(batch["group"])):
            rows.extend(
                self.write_group(
                    str(batch["group"][i]),
                    str(batch["tier"][i]),
                    int(batch["short_side"][i]),
                    None if np.isnan(batch["fps"][i]) else float(batch["fps"][i]),
                    json.loads(str(batch["clips_json"][i])),
                )
            )
        return rows_to_table(rows, SHARDS)

    def write_group(
        self, group: str, tier: str, short_side: int, out_fps: float | None, clips: list[dict]
    ) -> list[dict]:
        cfg = self.job.cfg
        tars = _TarSet(Path(self.job.root), tier, group, cfg)
        errors = []
        for clip in clips:
            key = clip["clip_id"]
            try:
                mp4, w, h, fps, n = cut_clip(
                    clip, short_side, out_fps, cfg, deadline=time.monotonic() + cfg.timeout_s
                )
            except (VideoDecodeError, DecodeTimeout, ValueError) as exc:
                errors.append(
                    dict(clip_id=key, key=key, tier=tier, status="error", error=f"could not cut clip: {exc}")
                )
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
            tars.add(key, mp4, caption, meta, row)
        return tars.close() + errors


def clean_orphans(root: Path) -> int:
    """Delete tars no `shards` row points to (left by a killed run) and temp tars."""
    base = root / "shards"
    if not base.is_dir():
        return 0
    indexed = {s for s in Table(root, "shards").read(["shard"]).column("shard").to_pylist() if s}
    removed = 0
    for tar in base.glob("*/*.tar"):
        if str(tar.relative_to(root)) not in indexed:
            tar.unlink()
            removed += 1
    for tmp in base.glob("*/.tmp-*"):
        tmp.unlink()
        removed += 1
    return removed


def pending_groups(root: Path, filt: FilterConfig, cfg: ShardConfig) -> pa.Table:
    """Kept, not yet sharded clips, grouped per tier into writer tasks (deterministic)."""
    con = connect(root)
    scores_join, scores_col = "", "NULL"
    if "scores" in TABLES and Table(root, "scores").exists():
        scores_join, scores_col = "LEFT JOIN scores s ON s.clip_id = d.clip_id", "to_json(s)"
    captions_join, caption_col = "", "NULL"
    if "captions" in TABLES and Table(root, "captions").exists():
        captions_join = """LEFT JOIN (SELECT clip_id, caption FROM captions_history WHERE status = 'ok'
            QUALIFY row_number() OVER (PARTITION BY clip_id ORDER BY created_at DESC) = 1) cap
            ON cap.clip_id = d.clip_id"""
        caption_col = "cap.caption"
    sql = f"""
        SELECT d.clip_id, d.tier, c.path, c.start_frame, c.end_frame, c.fps,
               v.rotation, c.width AS display_width, c.height AS display_height,
               {caption_col} AS caption,
               to_json(c) AS clip_json, to_json(v) AS video_json,
               {scores_col} AS scores_json, to_json(d) AS decision_json
        FROM decisions d
        JOIN clips c ON c.clip_id = d.clip_id
        JOIN videos v ON v.video_id = c.video_id AND v.status = 'ok'
        {scores_join} {captions_join}
        WHERE d.keep AND d.clip_id NOT IN (SELECT clip_id FROM shards)
        ORDER BY d.tier, d.clip_id
    """
    rows = con.sql(sql).to_arrow_table().to_pylist()
    by_tier: dict[str, list[dict]] = {}
    for r in rows:
        meta = {
            name: json.loads(r.pop(f"{name}_json")) if r.get(f"{name}_json") else None
            for name in ("clip", "video", "scores", "decision")
        }
        r["meta"] = meta
        by_tier.setdefault(r["tier"], []).append(r)
    groups = []
    for tier, clips in by_tier.items():
        if tier not in filt.tiers:
            raise ConfigError(
                f"decisions name tier {tier!r}, which filter.tiers no longer has; re-run filter"
            )
        tcfg = filt.tiers[tier]
        for i in range(0, len(clips), cfg.clips_per_task):
            chunk = clips[i : i + cfg.clips_per_task]
            groups.append(
                dict(
                    group=key_hash(*sorted(c["clip_id"] for c in chunk)),
                    tier=tier,
                    short_side=tcfg.short_side,
                    fps=float("nan") if tcfg.fps is None else tcfg.fps,
                    clips_json=json.dumps(chunk, default=str),
                    n_clips=len(chunk),
                )
            )
    schema = pa.schema(
        [
            ("group", pa.string()),
            ("tier", pa.string()),
            ("short_side", pa.int32()),
            ("fps", pa.float64()),
            ("clips_json", pa.string()),
            ("n_clips", pa.int32()),
        ]
    )
    return pa.Table.from_pylist(groups, schema=schema)
