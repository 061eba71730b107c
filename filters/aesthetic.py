"""Aesthetic score (LAION improved aesthetic predictor on open_clip embeddings) and the clip's
CLIP image embedding, which the align stage and dedup reuse.

Default: ViT-L-14 / openai + the LAION ViT-L-14 head (1..10 rating scale). Offline/tests:
`random_init` builds the same code path with random seeded weights (e.g. clip_model
"reelsift-tiny"); every output row then carries aesthetic_untrained = True.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from filters.config import DEFAULT_AESTHETIC_HEAD as DEFAULT_HEAD  # noqa: F401  (the config lives in filters/config.py)
from filters.config import AestheticConfig
from models.clip import ClipEncoder, load_aesthetic_head, resolve_weights


class AestheticScorer:
    """`AestheticScorer(cfg)(frames) -> {aesthetic_*, clip_embedding}` for one clip;
    `score_batch(list_of_frames)` runs all clips' frames through CLIP together (GPU actors).

    frames: (T, H, W, 3) uint8 RGB, T >= 1.
    """

    FIELDS: ClassVar[list[pa.Field]] = [
        pa.field("aesthetic_mean", pa.float32()),  # mean over frames of the head's score
        pa.field("aesthetic_min", pa.float32()),  # min over frames of the head's score
        pa.field("aesthetic_untrained", pa.bool_()),  # True: random weights, scores meaningless
        pa.field("clip_embedding", pa.list_(pa.float32())),  # (D,) unit-norm mean frame embedding
    ]

    def __init__(self, cfg: AestheticConfig) -> None:
        self.cfg = cfg
        # resolve the head first: a missing head must fail before a large CLIP download
        head_path = None
        if not cfg.random_init:
            head_path = resolve_weights(cfg.head_weights, "score.aesthetic.head_weights")
        self.encoder = ClipEncoder(
            cfg.clip_model,
            None if cfg.random_init else cfg.clip_pretrained,
            device=cfg.device,
            precision=cfg.precision,
            seed=cfg.seed,
            key="score.aesthetic",
        )
        self.head = load_aesthetic_head(
            head_path,
            self.encoder.embed_dim,
            device=cfg.device,
            seed=cfg.seed + 1,
            key="score.aesthetic.head_weights",
        )
        self.untrained = cfg.random_init

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    def _pick(self, frames: np.ndarray) -> np.ndarray:
        n = self.cfg.n_frames
        if n == 0 or n >= len(frames):
            return frames
        return frames[((np.arange(n) + 0.5) * len(frames) / n).astype(int)]

    @torch.inference_mode()
    def score_batch(self, clips: list[np.ndarray]) -> list[dict[str, Any]]:
        picked = [self._pick(_check(f)) for f in clips]
        # a flat list, so clips of different frame sizes share one batch
        frames = [f for clip in picked for f in clip]
        emb = self.encoder.encode_images(frames, self.cfg.batch_size)  # (sum T, D)
        scores = self.head(torch.from_numpy(emb).to(self.cfg.device)).float().cpu().numpy()
        out, start = [], 0
        for f in picked:
            e, s = emb[start : start + len(f)], scores[start : start + len(f)]
            start += len(f)
            mean = e.mean(axis=0)
            mean /= max(float(np.linalg.norm(mean)), 1e-12)
            out.append(
                {
                    "aesthetic_mean": float(s.mean()),
                    "aesthetic_min": float(s.min()),
                    "aesthetic_untrained": self.untrained,
                    "clip_embedding": mean.astype(np.float32).tolist(),
                }
            )
        return out

    def __call__(self, frames: np.ndarray, **ctx: Any) -> dict[str, Any]:
        return self.score_batch([frames])[0]


def _check(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be (T>=1, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    return frames
