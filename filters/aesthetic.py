"""Aesthetic score (LAION improved aesthetic predictor on open_clip embeddings) and the clip's
CLIP image embedding, which the align stage and dedup reuse.

Default: ViT-L-14 / openai + the LAION ViT-L-14 head (1..10 rating scale). Offline/tests:
`random_init` builds the same code path with random seeded weights (e.g. clip_model
"reelsift-tiny"); every output row then carries aesthetic_untrained = True.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from filters.config import AestheticConfig
from models.clip import ClipEncoder, load_aesthetic_head, resolve_weights


class AestheticScorer:
    """`AestheticScorer(cfg)(frames) -> {aesthetic_*, clip_embedding}` for one clip;
    `score_batch(list_of_frames)` runs all clips' frames through CLIP together (GPU actors).
    `submit(clips)` starts a batch and returns at once; `collect(handle)` waits for its rows, so
    a caller can prepare the next batch while the device works on this one.

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
            preprocess=cfg.preprocess,
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

    def _pick(self, frames):
        n = self.cfg.n_frames
        if n == 0 or n >= len(frames):
            return frames
        pick = ((np.arange(n) + 0.5) * len(frames) / n).astype(int)
        if isinstance(frames, torch.Tensor):
            return frames[torch.from_numpy(pick).to(frames.device)]
        return frames[pick]

    @torch.inference_mode()
    def submit(self, clips: list[np.ndarray]) -> Pending:
        """Start scoring clips (each (T_i, H_i, W_i, 3) uint8); the clips may be freed or reused
        once this returns. -> a handle for `collect`."""
        picked = [self._pick(_check(f)) for f in clips]
        dev = self.encoder.device
        emb = self.encoder.embed_clips(picked, self.cfg.batch_size)  # (sum T, D) on dev
        scores = self.head(emb).float()  # (sum T,)
        lengths = torch.tensor([len(f) for f in picked], device=dev)
        owner = torch.repeat_interleave(torch.arange(len(picked), device=dev), lengths)  # (sum T,)
        mean = torch.zeros((len(picked), emb.shape[1]), device=dev).index_add_(0, owner, emb)
        mean = torch.nn.functional.normalize(mean / lengths[:, None], dim=1, eps=1e-12)  # (B, D)
        s_mean = torch.zeros(len(picked), device=dev).index_add_(0, owner, scores) / lengths
        s_min = torch.full((len(picked),), float("inf"), device=dev).scatter_reduce_(0, owner, scores, "amin")
        packed = torch.cat([s_mean[:, None], s_min[:, None], mean], dim=1)  # (B, 2 + D)
        if dev.type != "cuda":
            return Pending(packed, None)
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        host.copy_(packed, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return Pending(host, done)

    def collect(self, pending: Pending) -> list[dict[str, Any]]:
        """Wait for a submitted batch -> one row of scores per clip, in order."""
        if pending.done is not None:
            pending.done.synchronize()
        rows = pending.packed.numpy()
        return [
            {
                "aesthetic_mean": float(r[0]),
                "aesthetic_min": float(r[1]),
                "aesthetic_untrained": self.untrained,
                "clip_embedding": r[2:].astype(np.float32).tolist(),
            }
            for r in rows
        ]

    def score_batch(self, clips: list[np.ndarray]) -> list[dict[str, Any]]:
        return self.collect(self.submit(clips))

    def __call__(self, frames: np.ndarray, **ctx: Any) -> dict[str, Any]:
        return self.score_batch([frames])[0]


@dataclass
class Pending:
    """A submitted batch: (B, 2 + D) rows [score mean, score min, embedding] on the host, and
    the CUDA event after which they are valid (None: already valid)."""

    packed: torch.Tensor
    done: Any


def _check(frames):
    """(T>=1, H, W, 3) uint8, a numpy array or a tensor (frames the NVDEC lane left on the GPU)."""
    uint8 = frames.dtype == (torch.uint8 if isinstance(frames, torch.Tensor) else np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or not uint8 or len(frames) == 0:
        raise ValueError(f"frames must be (T>=1, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
    return frames
