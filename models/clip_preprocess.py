"""CLIP image preprocessing, two ways with one result: uint8 RGB frames -> (N, 3, S, S) normalised.

  cpu_preprocess      OpenCV, frame by frame (CPU-only machines; the reference)
  TensorPreprocess    the same resize as two matrix products per batch of same-size frames, on
                      any torch device: frames travel as uint8 (pinned host memory, one copy per
                      batch) and are resized, cropped and normalised where the model runs

Both follow open_clip's transform: shortest side to S (or "squash" to S x S), centre crop,
`(x - mean) / std`. The resize is OpenCV's: INTER_AREA when shrinking, INTER_CUBIC when growing.
`axis_weights` writes each as a matrix (output pixels x input pixels), so the tensor path gives
OpenCV's pixels to within its fixed-point rounding (<= 1 level after the uint8 rounding both do).
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
import torch

CUBIC_A = -0.75  # OpenCV's bicubic kernel parameter


def resize_plan(h: int, w: int, out_h: int, out_w: int, mode: str) -> tuple[int, int, int, int, bool]:
    """-> (new_h, new_w, top, left, shrink): the resized size, the crop's corner, and whether
    OpenCV's area filter applies (shrinking) rather than bicubic."""
    if mode == "squash":
        scale_h, scale_w = out_h / h, out_w / w
    else:
        scale_h = scale_w = max(out_h / h, out_w / w)
    new_w, new_h = max(out_w, round(w * scale_w)), max(out_h, round(h * scale_h))
    return new_h, new_w, (new_h - out_h) // 2, (new_w - out_w) // 2, scale_h < 1


def cpu_preprocess(
    frames: np.ndarray | list[np.ndarray],
    image_size: tuple[int, int],
    mode: str,
    mean: np.ndarray,
    std: np.ndarray,
) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB (or a list of frames of any sizes) -> (N, 3, S_h, S_w) float32.
    mean, std: (3,) on the 0..255 scale."""
    out_h, out_w = image_size
    batch = []
    for frame in frames:
        h, w = frame.shape[:2]
        new_h, new_w, top, left, shrink = resize_plan(h, w, out_h, out_w, mode)
        img = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        batch.append(img[top : top + out_h, left : left + out_w])
    x = (np.stack(batch).astype(np.float32) - mean) / std  # (N, S, S, 3)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


def _area_rows(n_in: int, n_new: int) -> np.ndarray:
    """OpenCV INTER_AREA (shrinking) along one axis as an (n_new, n_in) matrix
    (computeResizeAreaTab: each output pixel averages the input cells it covers)."""
    scale = n_in / n_new
    m = np.zeros((n_new, n_in), np.float64)
    for dx in range(n_new):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, n_in - fsx1)
        sx2 = min(math.floor(fsx2), n_in - 1)
        sx1 = min(math.ceil(fsx1), sx2)
        if sx1 - fsx1 > 1e-3:
            m[dx, sx1 - 1] = (sx1 - fsx1) / cell
        m[dx, sx1:sx2] = 1.0 / cell
        if fsx2 - sx2 > 1e-3:
            m[dx, sx2] = min(min(fsx2 - sx2, 1.0), cell) / cell
    return m


def _kernel_rows(n_in: int, n_new: int, cubic: bool) -> np.ndarray:
    """OpenCV INTER_CUBIC / INTER_LINEAR along one axis as an (n_new, n_in) matrix; taps past
    the edge repeat the edge pixel, as OpenCV's resize does."""
    scale = n_in / n_new
    m = np.zeros((n_new, n_in), np.float64)
    for dx in range(n_new):
        fx = np.float32((dx + 0.5) * scale - 0.5)
        sx = math.floor(fx)
        fx = float(fx - sx)
        if cubic:
            a = CUBIC_A
            c0 = ((a * (fx + 1) - 5 * a) * (fx + 1) + 8 * a) * (fx + 1) - 4 * a
            c1 = ((a + 2) * fx - (a + 3)) * fx * fx + 1
            c2 = ((a + 2) * (1 - fx) - (a + 3)) * (1 - fx) * (1 - fx) + 1
            taps = [(sx - 1, c0), (sx, c1), (sx + 1, c2), (sx + 2, 1.0 - c0 - c1 - c2)]
        else:
            if sx < 0:
                sx, fx = 0, 0.0
            if sx >= n_in - 1:
                sx, fx = n_in - 1, 0.0
            taps = [(sx, 1.0 - fx), (sx + 1, fx)]
        for src, wgt in taps:
            m[dx, min(max(src, 0), n_in - 1)] += wgt
    return m


@lru_cache(maxsize=64)
def axis_weights(n_in: int, n_new: int, start: int, n_out: int, shrink: bool) -> np.ndarray:
    """(n_out, n_in) float32: resize an axis of n_in pixels to n_new, keep [start, start + n_out).
    shrink: OpenCV's area filter (it falls back to bilinear on an axis that grows); else bicubic."""
    if shrink:
        rows = _area_rows(n_in, n_new) if n_new <= n_in else _kernel_rows(n_in, n_new, cubic=False)
    else:
        rows = _kernel_rows(n_in, n_new, cubic=True)
    return rows[start : start + n_out].astype(np.float32)


class TensorPreprocess:
    """uint8 RGB frames -> (N, 3, S_h, S_w) normalised, computed on `device`.

    Frames of one size share one upload and two batched matrix products (width, then height);
    the result is rounded to uint8 levels like OpenCV's, then normalised. mean, std: (3,) on the
    0..255 scale.
    """

    def __init__(self, image_size: tuple[int, int], mode: str, mean, std, device: torch.device | str):
        self.image_size, self.mode = image_size, mode
        self.device = torch.device(device)
        self.mean = torch.as_tensor(np.asarray(mean, np.float32), device=self.device).view(1, 3, 1, 1)
        self.std = torch.as_tensor(np.asarray(std, np.float32), device=self.device).view(1, 3, 1, 1)
        self._weights: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def upload(self, clips: list[np.ndarray]) -> list[tuple[np.ndarray, torch.Tensor]]:
        """Clips (T_i, H_i, W_i, 3) uint8 -> [(frame numbers in the flat order, (n, H, W, 3)
        uint8 on the device)], one entry per frame size. Each size group is copied once into
        pinned host memory and sent asynchronously (CUDA); clips may be freed on return.
        A group whose clips are all tensors on the device already is concatenated there."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, clip in enumerate(clips):
            groups.setdefault(tuple(clip.shape[1:3]), []).append(i)
        starts = np.cumsum([0] + [len(c) for c in clips])
        pin = self.device.type == "cuda"
        out = []
        for (h, w), members in groups.items():
            index = [np.arange(starts[i], starts[i] + len(clips[i])) for i in members]
            if all(isinstance(clips[i], torch.Tensor) and clips[i].device == self.device for i in members):
                # frames already on the device (NVDEC lane): no host round trip
                out.append((np.concatenate(index), torch.cat([clips[i] for i in members])))
                continue
            n = sum(len(clips[i]) for i in members)
            host = torch.empty((n, h, w, 3), dtype=torch.uint8, pin_memory=pin)
            view, at, index = host.numpy(), 0, []
            for i in members:
                t = len(clips[i])
                view[at : at + t] = clips[i]
                index.append(np.arange(starts[i], starts[i] + t))
                at += t
            out.append((np.concatenate(index), host.to(self.device, non_blocking=pin)))
        return out

    def weights(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_h, H) and (S_w, W) resize-and-crop matrices for frames of size (h, w), cached."""
        if (h, w) not in self._weights:
            out_h, out_w = self.image_size
            new_h, new_w, top, left, shrink = resize_plan(h, w, out_h, out_w, self.mode)
            wy = axis_weights(h, new_h, top, out_h, shrink)
            wx = axis_weights(w, new_w, left, out_w, shrink)
            self._weights[(h, w)] = (
                torch.from_numpy(wy).to(self.device),
                torch.from_numpy(wx).to(self.device),
            )
        return self._weights[(h, w)]

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 on the device -> (N, 3, S_h, S_w) float32 normalised."""
        wy, wx = self.weights(frames.shape[1], frames.shape[2])
        x = frames.permute(0, 3, 1, 2).float()  # (N, 3, H, W)
        x = torch.matmul(x, wx.T)  # (N, 3, H, S_w)
        x = torch.matmul(wy, x)  # (N, 3, S_h, S_w)
        x = x.round_().clamp_(0, 255)  # OpenCV's output is uint8
        return (x - self.mean) / self.std
