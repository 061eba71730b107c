"""NSFW score: NudeNet's body-part detector (a YOLOv8 ONNX model that ships in the `nudenet`
wheel) run through onnxruntime on a few of the clip's sampled frames.

The detector's raw output is, per anchor box, one sigmoid confidence per class; this scorer keeps
the highest confidence of each class over all boxes and frames (no box threshold, no NMS: NMS
never lowers the best box of a class). Class names are read from the model's own metadata, so
another NudeNet export (e.g. 640m.onnx at input_size 640) works the same way. A scorer
measures; the per-tier maximum (e.g. `nsfw_max: {max: 0.5}`) lives in the filter policy.

Frames go in as RGB (what Ultralytics models are trained on). nudenet 3.4's own `detect()` swaps
R and B twice (cvtColor RGBA2BGR on a 3-channel image, then swapRB: notAI-tech/NudeNet#203), so
it feeds the model its input's channel order unchanged: BGR for a file path (cv2.imread). Given
the same RGB array, its input blob equals ours.

Note: the bundled 320n.onnx carries Ultralytics' AGPL-3.0 licence in its metadata (the nudenet
package itself is MIT).
"""

from __future__ import annotations

import ast
import os
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from filters.config import NsfwConfig

EXPOSED = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
"""Classes that count as NSFW for `nsfw_max` (exposed belly, feet, armpits, male chest do not)."""

# output column -> classes whose max confidence it holds
_COLUMNS = {
    "nsfw_breast": ("FEMALE_BREAST_EXPOSED",),
    "nsfw_genitalia": ("FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED"),
    "nsfw_buttocks": ("BUTTOCKS_EXPOSED", "ANUS_EXPOSED"),
}


def _missing(message: str) -> Exception:
    from models.clip import MissingWeights  # imports torch: only on this error path

    return MissingWeights(message)


def _model_path(weights: str) -> str:
    if not weights:
        try:
            from importlib.resources import files

            path = str(files("nudenet") / "320n.onnx")
        except ModuleNotFoundError as exc:
            raise _missing(
                "score.nsfw.weights: the nudenet package is not installed "
                "(pip install nudenet), or set a local .onnx path"
            ) from exc
    else:
        path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        raise _missing(f"score.nsfw.weights: file {path!r} not found; set a local NudeNet .onnx path")
    return path


class NsfwScorer:
    """`NsfwScorer(cfg)(frames) -> {nsfw_*: float}` for one clip.

    frames: (T, H, W, 3) uint8 RGB, T >= 1. Every value is a detector confidence in 0..1: the
    maximum over the scored frames and every box of the named classes.
    """

    FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("nsfw_max", pa.float32()),  # max over frames of any EXPOSED class confidence, 0..1
        pa.field("nsfw_mean", pa.float32()),  # mean over frames of the per-frame EXPOSED max, 0..1
        pa.field("nsfw_breast", pa.float32()),  # FEMALE_BREAST_EXPOSED, max over frames, 0..1
        pa.field("nsfw_genitalia", pa.float32()),  # FEMALE/MALE_GENITALIA_EXPOSED, max, 0..1
        pa.field("nsfw_buttocks", pa.float32()),  # BUTTOCKS/ANUS_EXPOSED, max over frames, 0..1
    ]

    def __init__(self, cfg: NsfwConfig) -> None:
        import onnxruntime as ort

        self.cfg = cfg
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.intra_op_threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            _model_path(cfg.weights), opts, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        names = ast.literal_eval(self._session.get_modelmeta().custom_metadata_map.get("names", "{}"))
        self.labels = [names[i] for i in sorted(names)]
        missing = sorted(set(EXPOSED) - set(self.labels))
        if missing:
            raise ValueError(
                f"score.nsfw.weights: model classes {self.labels} lack {missing}; is this a NudeNet detector?"
            )
        col = {name: i for i, name in enumerate(self.labels)}
        self._exposed = [col[c] for c in EXPOSED]
        self._columns = {k: [col[c] for c in v] for k, v in _COLUMNS.items()}

    def _pick(self, frames: np.ndarray) -> np.ndarray:
        n = self.cfg.n_frames
        if n >= len(frames):
            return frames
        return frames[((np.arange(n) + 0.5) * len(frames) / n).astype(int)]

    def _blob(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, 3, S, S) float32 in 0..1; pad bottom/right to a square
        with black, then resize (NudeNet's own preprocessing)."""
        s = self.cfg.input_size
        _, h, w, _ = frames.shape
        side = max(h, w)
        out = np.empty((len(frames), s, s, 3), np.uint8)
        for i, f in enumerate(frames):
            sq = cv2.copyMakeBorder(f, 0, side - h, 0, side - w, cv2.BORDER_CONSTANT, value=0)
            out[i] = cv2.resize(sq, (s, s), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2), np.float32) / 255.0  # (T, 3, S, S)

    def class_max(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (T, n_classes) max confidence per frame and class."""
        out = self._session.run(None, {self._input: self._blob(frames)})[0]  # (T, 4 + C, anchors)
        return out[:, 4:, :].max(axis=2)  # (T, C)

    def __call__(self, frames: np.ndarray, **ctx: Any) -> dict[str, Any]:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"frames must be (T>=1, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        conf = self.class_max(self._pick(frames))  # (T, C)
        exposed = conf[:, self._exposed].max(axis=1)  # (T,)
        row = {"nsfw_max": float(exposed.max()), "nsfw_mean": float(exposed.mean())}
        row.update({k: float(conf[:, idx].max()) for k, idx in self._columns.items()})
        return row
