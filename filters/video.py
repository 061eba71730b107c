"""Video I/O through PyAV: probing, frame-accurate range decoding, in-memory H.264 encoding.

Frames are `np.ndarray` uint8 RGB of shape (H, W, 3), upright (display rotation applied).
Frame indices count frames of the video stream from its start, at the stream's average rate.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from manifests import fs


class VideoDecodeError(RuntimeError):
    """A file can't be read as a video; the message says why in plain words."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{reason}: {path}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # crosses a process boundary (curation/guard.py)
        return (type(self), (self.path, self.reason))


class DecodeTimeout(TimeoutError):
    """Decoding one video ran past its time limit."""


_NOT_REGULAR = {
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "directory",
}


def file_problem(path: str | Path) -> str | None:
    """Why `path` can't be read as a video file, found without opening it; None when it can.

    A FIFO or a device is never opened: reading one can block forever. On S3 the object must
    exist; a storage failure after the client's retries is a problem a re-run retries.
    """
    if fs.is_s3(path):
        try:
            return None if fs.upath(path).is_file() else "no such object"
        except fs.StorageError as exc:
            return fs.retryable(exc)
    path = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symlink -> {os.readlink(path)}"
        return "no such file"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    kind = _NOT_REGULAR.get(stat.S_IFMT(st.st_mode))
    if kind:
        return f"not a regular file ({kind})"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def source_changed(path: str | Path, size_bytes: int | None, ingested_at: float | None) -> str | None:
    """Why the file at `path` is no longer the one ingested (size differs, or modified after
    `ingested_at`, seconds since the epoch), or None while it is the same.

    Every stage that reads a source checks this first, so a clip is never cut or scored from
    new bytes under the old video_id; `reelsift ingest` again gives the new bytes a new video.
    """
    problem = file_problem(path)
    if problem:
        return problem if fs.is_retryable(problem) else f"source changed since ingest: {problem}"
    st = fs.upath(path).stat()
    if size_bytes is not None and int(size_bytes) >= 0 and st.st_size != int(size_bytes):
        return f"source changed since ingest: size {int(size_bytes)} -> {st.st_size} bytes; run ingest again"
    if ingested_at is not None and st.st_mtime > float(ingested_at):
        return "source changed since ingest: modified after it was ingested; run ingest again"
    return None


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """blake2b-128 of the file's bytes, hex (the video_id)."""
    h = hashlib.blake2b(digest_size=16)
    with fs.open_stream(path) as fh:  # streamed once, never written to disk
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def key_hash(*parts: object) -> str:
    """Short deterministic id from parts (clip ids, shard names)."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Probe:
    duration_s: float
    fps: float
    vfr: bool
    n_frames: int
    width: int
    height: int
    rotation: int
    codec: str
    pix_fmt: str
    has_audio: bool
    bitrate: int

    @property
    def display_size(self) -> tuple[int, int]:
        if self.rotation % 180 == 90:
            return self.height, self.width
        return self.width, self.height


@dataclass(frozen=True)
class DecodeSpec:
    """What a stage needs decoded from each clip (score and caption build one from their config)."""

    n_frames: int
    """Frames sampled evenly over the clip (`sample_indices`)."""
    short_side: int
    """Working resolution: short side of the returned frames (never upscaled), pixels."""
    timeout_s: float
    """Per-clip decode time limit, seconds."""

    @classmethod
    def of(cls, cfg: Any) -> DecodeSpec:
        return cls(int(cfg.n_frames), int(cfg.short_side), float(cfg.timeout_s))


def _explain(exc: Exception) -> str:
    """Turn FFmpeg's terse errors into something a user can act on."""
    text = str(exc)
    low = text.lower()
    if "moov atom not found" in low:
        return "moov atom not found: file is truncated or not fully written"
    if isinstance(exc, av.error.InvalidDataError) or "invalid data" in low:
        return f"not a decodable video (invalid data found when processing input): {text}"
    if isinstance(exc, av.error.EOFError):
        return f"file ends before any frame could be decoded: {text}"
    return f"{type(exc).__name__}: {text}"


def open_video(path: str | Path) -> av.container.InputContainer:
    """Open a file for reading, with readable errors for empty and broken files."""
    path = str(path)
    try:
        size = fs.upath(path).stat().st_size
    except fs.StorageError:
        raise
    except OSError as exc:
        raise VideoDecodeError(path, f"cannot read file ({exc.strerror})") from exc
    if size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    # On S3, FFmpeg reads through a file object: ranged GETs, never a download of the object.
    source = fs.open_input(path) if fs.is_s3(path) else path
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        if source is not path:
            source.close()
        raise VideoDecodeError(path, _explain(exc)) from exc
    # (the container holds the file object; both are closed when the container is collected)
    fmt = container.format.name or ""
    if fmt.endswith("_pipe") or fmt == "image2":
        container.close()
        raise VideoDecodeError(path, f"an image file ({fmt.removesuffix('_pipe')}), not a video")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoDecodeError(path, f"no video stream (streams found: {', '.join(kinds)})")
    return container


def _rotation(stream, first_frame) -> int:
    rot = 0
    if first_frame is not None and getattr(first_frame, "rotation", None) is not None:
        rot = int(first_frame.rotation)
    elif "rotate" in stream.metadata:
        rot = -int(stream.metadata["rotate"])
    return (-rot) % 360  # PyAV reports counter-clockwise degrees; store clockwise


def probe(path: str | Path, decode_frames: int = 1) -> Probe:
    """Read stream facts and decode `decode_frames` frames to prove the stream is decodable."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        avg = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not avg or float(avg) <= 0:
            raise VideoDecodeError(path, "no usable frame rate in the video stream")
        fps = float(avg)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        n_frames = int(stream.frames) if stream.frames else int(round(duration * fps))
        first = None
        if decode_frames:
            try:
                for i, frame in enumerate(container.decode(stream)):
                    first = first or frame
                    if i + 1 >= decode_frames:
                        break
            except av.error.FFmpegError as exc:
                raise VideoDecodeError(path, _explain(exc)) from exc
            if first is None:
                raise VideoDecodeError(path, "the video stream holds no decodable frame")
        # A container whose average rate disagrees with its nominal rate has uneven timestamps.
        base = float(stream.base_rate or avg)
        vfr = bool(base > 0 and abs(base - fps) / base > 0.01)
        width = ctx.width or (first.width if first is not None else 0)
        height = ctx.height or (first.height if first is not None else 0)
        if width <= 0 or height <= 0:
            raise VideoDecodeError(path, "video stream has no frame size")
        return Probe(
            duration_s=duration,
            fps=fps,
            vfr=vfr,
            n_frames=n_frames,
            width=int(width),
            height=int(height),
            rotation=_rotation(stream, first),
            codec=ctx.name or "",
            pix_fmt=ctx.pix_fmt or (first.format.name if first is not None else ""),
            has_audio=bool(container.streams.audio),
            bitrate=int(container.bit_rate or 0),
        )


def even_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Scale (width, height) so the short side is `short_side` (never upscaled), both even."""
    scale = min(1.0, short_side / min(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


# A stream that does not say which YUV->RGB matrix it uses is converted as BT.709, which is what
# NVDEC does with it (swscale alone would take BT.601, 3.4 levels off on average): the CPU and
# NVDEC decode lanes then give the same colours (the GPU tests compare them on untagged streams).
# A tagged stream follows its tag here.
UNTAGGED_COLORSPACE = 2  # AVCOL_SPC_UNSPECIFIED


def _src_colorspace(frame: av.VideoFrame) -> str | None:
    return "ITU709" if frame.colorspace == UNTAGGED_COLORSPACE else None


def _upright(
    frame: av.VideoFrame, width: int | None, height: int | None, rotation: int, scaler=None
) -> np.ndarray:
    """Decoded frame -> RGB array (H, W, 3), resized to (width, height) as displayed.

    `scaler` (an av VideoReformatter) is reused across the frames of one video: PyAV would
    otherwise build a new swscale context for every frame."""
    if rotation % 180 == 90 and width and height:
        width, height = height, width  # resize in coded orientation, then rotate
    cs = _src_colorspace(frame)
    if scaler is None:
        arr = frame.to_ndarray(format="rgb24", width=width, height=height, src_colorspace=cs)
    else:
        arr = scaler.reformat(
            frame, width=width, height=height, format="rgb24", src_colorspace=cs
        ).to_ndarray()
    if rotation:
        arr = np.ascontiguousarray(np.rot90(arr, k=-(rotation // 90)))
    return arr


def iter_frames(
    path: str | Path,
    start_frame: int,
    end_frame: int,
    fps: float,
    *,
    size: tuple[int, int] | None = None,
    rotation: int = 0,
    indices: list[int] | None = None,
    deadline: float | None = None,
    yuv: bool = False,
) -> Iterator[tuple[int, np.ndarray | av.VideoFrame]]:
    """Yield (frame_index, RGB frame) for frames in [start_frame, end_frame), frame-accurately.

    Seeks to the keyframe before `start_frame`, decodes forward and counts frames by their
    timestamps. `indices` (sorted) restricts output to those frames; `size` = (width, height)
    as displayed. Raises DecodeTimeout once `deadline` (time.monotonic()) is passed.
    `yuv` (unrotated sources only): yield yuv420p av.VideoFrames at `size` instead of RGB arrays,
    for re-encoding without two colour conversions per frame.
    """
    if yuv and rotation:
        raise ValueError("iter_frames: yuv output is for unrotated sources")
    wanted = None if indices is None else set(indices)
    last_wanted = end_frame - 1 if indices is None else max(indices, default=start_frame - 1)
    width, height = size if size else (None, None)
    scaler = VideoReformatter()
    with open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        seek_s = max(0.0, start_frame / fps - 1.0)
        if seek_s > 0:
            container.seek(int((seek_s + t0) / tb), stream=stream, backward=True, any_frame=False)
        counter = None
        ctx = stream.codec_context
        index = lambda pts: int(math.floor((pts * tb - t0) * fps + 0.5))  # noqa: E731
        # With `indices`, a packet whose picture is not wanted is decoded only if other pictures
        # reference it (FFmpeg's skip_frame NONREF): the same frames come out, fewer are decoded.
        # Indices then come from packet timestamps; a stream without them decodes everything.
        skip = wanted is not None
        try:
            for packet in container.demux(stream):
                if skip:
                    if packet.pts is None:
                        skip, ctx.skip_frame = packet.size == 0, "DEFAULT"
                    else:
                        ctx.skip_frame = "DEFAULT" if index(packet.pts) in wanted else "NONREF"
                for frame in ctx.decode(packet):
                    if deadline is not None and time.monotonic() > deadline:
                        raise DecodeTimeout(f"decoding took longer than the time limit: {path}")
                    idx = index(frame.pts) if frame.pts is not None else 0 if counter is None else counter + 1
                    counter = idx
                    if idx < start_frame:
                        continue
                    if idx > last_wanted or idx >= end_frame:
                        return
                    if wanted is not None and idx not in wanted:
                        continue
                    if yuv:
                        yield idx, scaler.reformat(frame, width=width, height=height, format="yuv420p")
                    else:
                        yield idx, _upright(frame, width, height, rotation, scaler)
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(path, _explain(exc)) from exc


def encode_mp4(
    frames: list[np.ndarray] | list[av.VideoFrame], fps: float, *, crf: int = 20, preset: str = "veryfast"
) -> bytes:
    """Encode frames (all the same even size) as H.264 yuv420p mp4 bytes, in memory: RGB arrays,
    or yuv420p av.VideoFrames (iter_frames(yuv=True)), which x264 takes without conversion."""
    if not frames:
        raise ValueError("no frames to encode")
    first = frames[0]
    h, w = (first.height, first.width) if isinstance(first, av.VideoFrame) else first.shape[:2]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        rate = _rate(fps)
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for i, f in enumerate(frames):
            if isinstance(f, av.VideoFrame):
                # a decoded frame carries its source's timestamps and picture type, and x264 obeys
                # the type (a clip must start on a keyframe): number it in the output's frame rate
                f.pts, f.time_base = i, 1 / rate
                f.pict_type = PictureType.NONE
            else:
                f = av.VideoFrame.from_ndarray(f, format="rgb24")
            for packet in stream.encode(f):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
