"""On-screen text score: PP-OCR (det + rec) through RapidOCR, whose ONNX weights ship in the wheel.

OCR dominates the CPU cost of scoring, so it runs on a few evenly spread frames (`n_frames`)
resized to a fixed detection short side (`det_short_side`) that this scorer controls itself
(RapidOCR's own limit is set so that it never resizes again). A scorer measures; the maximum
text area per tier lives in the filter policy.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

from filters.config import OcrConfig  # noqa: F401  (the config lives in filters/config.py)


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
        """(text area fraction, box count, texts) for one RGB frame."""
        h, w = frame.shape[:2]
        scale = self.cfg.det_short_side / min(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        bgr = cv2.cvtColor(cv2.resize(frame, size, interpolation=interp), cv2.COLOR_RGB2BGR)
        result, _ = self._engine(bgr, use_det=True, use_cls=self.cfg.angle_cls, use_rec=self.cfg.recognize)
        if not result:
            return 0.0, 0, []
        if self.cfg.recognize:
            # [box(4x2), text, score]; drop lone glyphs that textures are misread as
            kept = [item for item in result if self._is_text(str(item[1]))]
            boxes = [item[0] for item in kept]
            texts = [str(item[1]) for item in kept]
        else:
            boxes, texts = result, []
        mask = np.zeros((size[1], size[0]), np.uint8)  # rasterised union of the text polygons
        polys = [np.round(np.asarray(b, np.float32)).astype(np.int32) for b in boxes]
        cv2.fillPoly(mask, polys, 1)
        return float(mask.mean()), len(boxes), texts

    def __call__(self, frames: np.ndarray, **ctx: Any) -> dict[str, Any]:
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"frames must be (T>=1, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        area, boxes, lines = 0.0, 0, []
        for i in self.frame_indices(len(frames)):
            a, b, texts = self._one(frames[i])
            area, boxes = max(area, a), max(boxes, b)
            lines.extend(t for t in texts if t and t not in lines)
        return {"ocr_area": area, "ocr_boxes": boxes, "ocr_text": " | ".join(lines)}
