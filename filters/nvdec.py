"""NVDEC decode lane: sampled frames of a clip decoded by the GPU's video engines (PyNvVideoCodec),
handed to torch through DLPack and resized on the GPU.

Frames come out as (T, H, W, 3) uint8 RGB CUDA tensors, upright (display rotation applied), at the
same frame indices as `filters.video.iter_frames`: for a constant-rate stream, index i is the
frame shown at start + i / fps, which is how both decoders count. Streams where the two counts
could differ (variable frame rate) and streams NVDEC cannot decode stay on the CPU lane:
`refusal(clip)` says why a clip is not taken.

One `NvdecDecoder` is one decoder session, reused across files (`reconfigure_decoder`): creating
a session per file costs more than decoding a short clip. Each session owns a CUDA stream, so
sessions in different threads never wait on each other through the default stream.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from manifests import fs

# H100/H200 NVDEC: H.264 and HEVC 8-bit 4:2:0 (no AV1 on these cards; VP9 stays on the CPU too).
NVDEC_CODECS = frozenset({"h264", "hevc"})
NVDEC_PIX_FMTS = frozenset({"yuv420p", "yuvj420p", "nv12", ""})
# Sessions are created for the largest coded frame they may meet (H.264's NVDEC limit), so a
# reconfigure for another file never needs a new session.
MAX_SIDE = 4096


class NvdecError(RuntimeError):
    """NVDEC could not decode a file; the CPU lane takes it (auto) or it is an error row (nvdec)."""


def refusal(clip: dict[str, Any]) -> str | None:
    """Why the NVDEC lane does not take this clip (the CPU lane does), or None when it does.
    clip: a row with path, codec, pix_fmt, vfr, display_width, display_height."""
    codec = (clip.get("codec") or "").lower()
    if codec not in NVDEC_CODECS:
        return f"codec {codec or 'unknown'} is not decoded by NVDEC here"
    if (clip.get("pix_fmt") or "").lower() not in NVDEC_PIX_FMTS:
        return f"pixel format {clip.get('pix_fmt')} (NVDEC takes 8-bit 4:2:0)"
    if clip.get("vfr"):
        return "variable frame rate: frame indices are counted by the CPU decoder"
    if fs.is_s3(clip["path"]):
        return "source on object storage (NVDEC reads local files)"
    w, h = int(clip.get("display_width") or 0), int(clip.get("display_height") or 0)
    if max(w, h) > MAX_SIDE:
        return f"frame size {w}x{h}: a side over {MAX_SIDE}"
    return None


def unavailable(gpu_id: int = 0) -> str | None:
    """Why NVDEC cannot be used in this process, or None when it can."""
    try:
        import PyNvVideoCodec  # noqa: F401
        import torch
    except ImportError as exc:
        return f"PyNvVideoCodec is not installed ({exc.name}); pip install pynvvideocodec"
    except OSError as exc:  # the wheel loads the driver's libnvcuvid
        return f"PyNvVideoCodec cannot load the NVIDIA video decoder library ({exc})"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if gpu_id >= torch.cuda.device_count():
        return f"no CUDA device {gpu_id}"
    return None


@functools.lru_cache(maxsize=64)
def _resize_weights(h: int, w: int, height: int, width: int, device: str):
    """(height, h) and (width, w) area/bilinear weights on `device`, uploaded once per size."""
    import torch

    from models.clip_preprocess import axis_weights

    wy = torch.from_numpy(axis_weights(h, height, 0, height, height <= h)).to(device)
    wx = torch.from_numpy(axis_weights(w, width, 0, width, width <= w)).to(device)
    return wy, wx


def resize_on_device(frames, size: tuple[int, int], rotation: int):
    """(N, H, W, 3) uint8 CUDA tensor in coded orientation -> (N, h, w, 3) uint8, upright, where
    (w, h) = `size` as displayed. Area filter when shrinking (models.clip_preprocess weights),
    as two matrix products, then the display rotation."""
    import torch

    width, height = size
    if rotation % 180 == 90:
        width, height = height, width  # resize in coded orientation, then rotate
    n, h, w, _ = frames.shape
    x = frames
    if (h, w) != (height, width):
        wy, wx = _resize_weights(h, w, height, width, str(frames.device))
        x = frames.permute(0, 3, 1, 2).float()  # (N, 3, H, W)
        x = torch.matmul(wy, torch.matmul(x, wx.T))  # (N, 3, h, w)
        x = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (N, h, w, 3)
    if rotation:
        x = torch.rot90(x, k=-(rotation // 90), dims=(1, 2))
    return x.contiguous()


class NvdecDecoder:
    """One NVDEC session on GPU `gpu_id`, reused across files. Not thread-safe: one per thread.

    `frames(path, indices)` -> (len(indices), H, W, 3) uint8 CUDA tensor, coded orientation.
    Counters: `created` sessions, `reconfigured` (reused for a new file), `frames_decoded`.
    """

    def __init__(self, gpu_id: int = 0, cache_size: int = 4):
        import PyNvVideoCodec as nvc
        import torch

        self.nvc, self.torch = nvc, torch
        self.gpu_id, self.cache_size = gpu_id, cache_size
        self.device = torch.device("cuda", gpu_id)
        self.stream = torch.cuda.Stream(device=self.device)
        self.decoder = None
        self.path: str | None = None
        self.created = self.reconfigured = self.frames_decoded = 0

    def _open(self, path: str) -> None:
        nvc = self.nvc
        if self.decoder is not None and path != self.path:
            try:
                self.decoder.reconfigure_decoder(path)
                self.path = path
                self.reconfigured += 1
                return
            except Exception:  # noqa: BLE001  (a session that can't take the new file is rebuilt)
                self.close()
        if self.decoder is None:
            self.decoder = nvc.SimpleDecoder(
                path,
                gpu_id=self.gpu_id,
                cuda_stream=self.stream.cuda_stream,
                use_device_memory=True,
                max_width=MAX_SIDE,
                max_height=MAX_SIDE,
                decoder_cache_size=self.cache_size,
                output_color_type=nvc.OutputColorType.RGB,
            )
            self.path = path
            self.created += 1

    def frames(self, path: str, indices: list[int]):
        torch = self.torch
        if not indices:
            raise ValueError("frames: no indices")
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            try:
                self._open(str(path))
                got = self.decoder.get_batch_frames_by_index(list(indices))
                tensors = [torch.from_dlpack(f) for f in got]
            except Exception as exc:  # noqa: BLE001  (PyNvVideoCodec raises its own types)
                self.close()
                raise NvdecError(f"NVDEC: {type(exc).__name__}: {exc}") from exc
            if len(tensors) != len(indices):
                raise NvdecError(f"NVDEC returned {len(tensors)} of {len(indices)} frames")
            x = torch.stack(tensors)  # a copy: the session reuses its surfaces
            if x.shape[-1] != 3 and x.shape[1] == 3:
                x = x.permute(0, 2, 3, 1)  # (N, 3, H, W) planar -> (N, H, W, 3)
            x = x.contiguous()
        self.stream.synchronize()
        self.frames_decoded += len(indices)
        return x

    def close(self) -> None:
        self.decoder, self.path = None, None


def host_copy(frames) -> np.ndarray:
    """uint8 tensor -> numpy array (a CUDA tensor through pinned memory, waiting for the
    current stream only)."""
    import torch

    if not frames.is_cuda:
        return frames.numpy()
    host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
    host.copy_(frames, non_blocking=True)
    torch.cuda.current_stream(frames.device).synchronize()
    return host.numpy()
