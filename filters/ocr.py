"""On-screen text score: PP-OCR (det + rec) through RapidOCR, whose ONNX weights ship in the wheel.

OCR dominates the CPU cost of scoring, so it runs on a few evenly spread frames (`n_frames`).
Text lines are detected on the frame resized to `det_short_side` (RapidOCR's own limit is set so
that it never resizes again) and read from crops of the frame at `rec_short_side`. A scorer
measures; the maximum text area per tier lives in the filter policy.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from filters.config import OcrConfig


class OcrScorer:
    """`OcrScorer(cfg)(frames) -> {ocr_area, ocr_boxes, ocr_text}` for one clip.

    frames: (T, H, W, 3) uint8 RGB, T >= 1. With `recognize` on, a box counts only if its text
    is recognised with confidence >= `text_score` (this rejects texture mistaken for text).
    """

    FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("ocr_area", pa.float32()),  # union of text boxes / frame area, max over frames, 0..1
        pa.field("ocr_boxes", pa.int32()),  # text boxes in one frame, max over frames, >= 0
        pa.field("ocr_text", pa.string()),  # distinct recognised lines, in order, joined by " | "
    ]

    def __init__(self, cfg: OcrConfig) -> None:
        from rapidocr_onnxruntime import RapidOCR  # heavy import, only where OCR runs

        self.cfg = cfg
        threads = cfg.intra_op_threads if cfg.intra_op_threads > 0 else -1
        # limit_type "min" with limit == det_short_side: our frames already have that short side,
        # so RapidOCR only rounds to a multiple of 32 and never upscales (its "max" mode ignores
        # the limit below 960 px in rapidocr-onnxruntime 1.4).
        self._engine = RapidOCR(
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
            det_limit_side_len=cfg.det_short_side,
            det_limit_type="min",
            det_box_thresh=cfg.box_thresh,
            text_score=cfg.text_score,
            use_cls=cfg.angle_cls,
            print_verbose=False,
        )

    def frame_indices(self, num_frames: int) -> np.ndarray:
        """Centres of `n_frames` equal segments of the sampled frames."""
        n = min(self.cfg.n_frames, num_frames)
        return ((np.arange(n) + 0.5) * num_frames / n).astype(int)

    def _is_text(self, text: str) -> bool:
        """A recognised string long and varied enough to be real on-screen text."""
        chars = "".join(text.split())
        distinct = {c.lower() for c in chars if c.isalnum()}
        return len(chars) >= self.cfg.min_chars and len(distinct) >= self.cfg.min_distinct_chars

    def _one(self, frame: np.ndarray) -> tuple[float, int, list[str]]:
        """(text area fraction, box count, texts) for one RGB frame.

        Lines are detected on the frame at `det_short_side` and, with `recognize` on, read from
        crops of the frame at `rec_short_side`: detection is the expensive half and finds text
        lines at a small size, while reading needs the glyphs sharp."""
        det, det_scale = _bgr_at(frame, self.cfg.det_short_side)
        boxes, _ = self._engine(det, use_det=True, use_cls=False, use_rec=False)
        if not boxes:
            return 0.0, 0, []
        texts: list[str] = []
        if self.cfg.recognize:
            boxes, texts = self._read(frame, det_scale, boxes)
        mask = np.zeros(det.shape[:2], np.uint8)  # rasterised union of the text polygons
        polys = [np.round(np.asarray(b, np.float32)).astype(np.int32) for b in boxes]
        cv2.fillPoly(mask, polys, 1)
        return float(mask.mean()), len(boxes), texts

    def _read(self, frame: np.ndarray, det_scale: float, boxes: list) -> tuple[list, list[str]]:
        """Recognise each detected line from `frame` at `rec_short_side` (no upscaling); keep the
        (box, text) pairs read with confidence >= `text_score` that look like real text."""
        src, rec_scale = _bgr_at(frame, min(self.cfg.rec_short_side, min(frame.shape[:2])))
        points = [np.asarray(b, np.float32) * (rec_scale / det_scale) for b in boxes]
        crops = self._engine.get_crop_img_list(src, points)
        if self.cfg.angle_cls:
            crops, _, _ = self._engine.text_cls(crops)
        read, _ = self._engine.text_rec(crops)
        kept = [
            (box, str(r[0]))
            for box, r in zip(boxes, read, strict=True)
            if float(r[1]) >= self.cfg.text_score and self._is_text(str(r[0]))
        ]
        return [b for b, _ in kept], [t for _, t in kept]

    def __call__(self, frames: np.ndarray, **ctx: Any) -> dict[str, Any]:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"frames must be (T>=1, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        area, boxes, lines = 0.0, 0, []
        for i in self.frame_indices(len(frames)):
            a, b, texts = self._one(frames[i])
            area, boxes = max(area, a), max(boxes, b)
            lines.extend(t for t in texts if t and t not in lines)
        return {"ocr_area": area, "ocr_boxes": boxes, "ocr_text": " | ".join(lines)}


def _bgr_at(frame: np.ndarray, short_side: int) -> tuple[np.ndarray, float]:
    """RGB frame -> (BGR frame resized to `short_side` on its short side, scale applied)."""
    h, w = frame.shape[:2]
    scale = short_side / min(h, w)
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), scale
