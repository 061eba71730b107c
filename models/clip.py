"""open_clip image/text encoders and the LAION "improved aesthetic predictor" MLP head.

Real models (`ViT-L-14` + `openai` weights, the LAION head) and the tiny randomly initialised
test model go through the same code: `open_clip.create_model`, whose config keys the tiny
architecture overrides (see `ARCHS`). Nothing here downloads unless a hub id is configured.

Weight specs (for `pretrained` and the head): an open_clip tag (`openai`, `laion2b_s32b_b82k`,
CLIP only), a local file path, or `hf-hub:<org>/<repo>/<file>` (head) / `hf-hub:<org>/<repo>`
(CLIP, open_clip's own hub schema).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from models.clip_preprocess import TensorPreprocess, cpu_preprocess

HF_PREFIX = "hf-hub:"

# Architectures reelsift defines (name -> (open_clip base config, keys it overrides)).
# Every other name is an open_clip built-in (`open_clip.list_models()`).
ARCHS: dict[str, tuple[str, dict]] = {
    "reelsift-tiny": (
        "ViT-B-16",
        {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        },
    ),
}


class MissingWeights(FileNotFoundError):
    """A configured weight file is absent; the message names the config key to set."""


def resolve_weights(spec: str, key: str) -> str:
    """Local path for a weight spec (`hf-hub:org/repo/file` downloads once into the HF cache)."""
    if not spec:
        raise MissingWeights(f"{key}: set a local path or hub id (hf-hub:<org>/<repo>/<file>)")
    if spec.startswith(HF_PREFIX):
        parts = spec[len(HF_PREFIX) :].split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise MissingWeights(f"{key}: hub id must look like hf-hub:<org>/<repo>/<file>, got {spec!r}")
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download(repo_id=f"{parts[0]}/{parts[1]}", filename=parts[2])
        except Exception as exc:  # network, auth, missing file: all mean "weights not available"
            raise MissingWeights(f"{key}: could not fetch {spec!r} ({exc}); set a local path") from exc
    path = os.path.expanduser(spec)
    if not os.path.isfile(path):
        raise MissingWeights(f"{key}: file {spec!r} not found; set a local path or hub id")
    return path


@contextmanager
def _seeded(seed: int):
    """Deterministic random init without disturbing the caller's global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class ClipEncoder:
    """L2-normalised open_clip image and text embeddings, as float32 numpy arrays.

    arch: open_clip architecture or a key of `ARCHS`; pretrained: tag, local checkpoint,
    `hf-hub:org/repo`, or None for a random (seeded) init, flagged by `self.untrained`.
    key: config prefix used in error messages (e.g. "score.aesthetic").
    preprocess: where frames are resized and normalised: "cpu" (OpenCV, frame by frame),
    "device" (uint8 frames sent to `device`, resized there; see models/clip_preprocess.py), or
    "auto" (device on CUDA, cpu elsewhere).
    """

    def __init__(
        self,
        arch: str,
        pretrained: str | None,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        seed: int = 0,
        key: str = "clip",
        preprocess: str = "auto",
    ) -> None:
        import open_clip

        self.device = torch.device(device)
        self.untrained = pretrained is None
        base, overrides = ARCHS.get(arch, (arch, {}))
        if base not in open_clip.list_models():
            raise ValueError(f"{key}.clip_model: unknown architecture {arch!r}; see open_clip.list_models()")
        if pretrained is not None and pretrained.startswith(HF_PREFIX):
            model_name, tag, tokenizer_name = pretrained, None, pretrained  # open_clip's hub schema
        else:
            model_name, tag, tokenizer_name = base, pretrained, base
            known = open_clip.list_pretrained_tags_by_model(base)
            if tag is not None and tag not in known:
                tag = os.path.expanduser(tag)
                if not os.path.isfile(tag):
                    raise MissingWeights(
                        f"{key}.clip_pretrained: {pretrained!r} is neither an open_clip tag of "
                        f"{base} ({known}) nor an existing file; set one"
                    )
        # open_clip only warns when a tag was trained with QuickGELU (e.g. "openai") and the
        # architecture config lacks it; the embeddings would then be silently wrong.
        tag_cfg = open_clip.get_pretrained_cfg(base, tag) if tag else {}
        quick_gelu = bool(tag_cfg and tag_cfg.get("quick_gelu", False))
        with _seeded(seed):
            self.model = open_clip.create_model(
                model_name,
                pretrained=tag,
                device=self.device,
                precision=precision,
                force_quick_gelu=quick_gelu,
                **overrides,
            )
        self.model.eval()
        self.input_dtype = open_clip.get_input_dtype(precision) or torch.float32
        self.tokenizer = open_clip.get_tokenizer(tokenizer_name)
        pp = open_clip.get_model_preprocess_cfg(self.model)
        size = pp["size"]
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)  # (H, W)
        self.resize_mode = pp.get("resize_mode", "shortest")
        self.mean = np.asarray(pp["mean"], np.float32) * 255.0
        self.std = np.asarray(pp["std"], np.float32) * 255.0
        on_cuda = self.device.type == "cuda"
        self.preprocess_on_device = preprocess == "device" or (preprocess == "auto" and on_cuda)
        self.tensor_preprocess = TensorPreprocess(
            self.image_size, self.resize_mode, self.mean, self.std, self.device
        )
        out_dim = getattr(self.model.visual, "output_dim", None)
        self.embed_dim = int(out_dim) if out_dim else int(self.encode_text(["a"]).shape[-1])

    def preprocess(self, frames: np.ndarray | list[np.ndarray]) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB (or a list of frames of any sizes) -> (N, 3, S, S) normalised
        CPU tensor, like open_clip's transform (shortest side to S, centre crop; area
        interpolation when shrinking, cubic when growing)."""
        return cpu_preprocess(frames, self.image_size, self.resize_mode, self.mean, self.std)

    @torch.inference_mode()
    def embed_clips(self, clips: list[np.ndarray], batch_size: int = 32) -> torch.Tensor:
        """Clips (T_i, H_i, W_i, 3) uint8 RGB -> (sum T_i, D) float32 unit-norm embeddings on
        `device`, frames in clip order. Nothing waits for the device: the caller syncs.

        On the device path each frame size is uploaded once as uint8 and resized there in
        batches of `batch_size` frames; on the CPU path OpenCV prepares each batch."""
        n = sum(len(c) for c in clips)
        out = torch.empty((n, self.embed_dim), dtype=torch.float32, device=self.device)
        if self.preprocess_on_device:
            for index, frames in self.tensor_preprocess.upload(clips):
                rows = torch.from_numpy(index).to(self.device, non_blocking=True)
                for s in range(0, len(frames), batch_size):
                    x = self.tensor_preprocess(frames[s : s + batch_size]).to(self.input_dtype)
                    out[rows[s : s + batch_size]] = self.model.encode_image(x, normalize=True).float()
            return out
        flat = [f for clip in clips for f in clip]
        for s in range(0, n, batch_size):
            x = self.preprocess(flat[s : s + batch_size]).to(self.device, self.input_dtype)
            out[s : s + batch_size] = self.model.encode_image(x, normalize=True).float()
        return out

    @torch.inference_mode()
    def encode_images(self, frames: np.ndarray | list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB, or a list of N (H_i, W_i, 3) frames of any sizes
        -> (N, D) float32, unit L2 norm."""
        if len(frames) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        return self.embed_clips([np.asarray(f)[None] for f in frames], batch_size).cpu().numpy()

    @torch.inference_mode()
    def encode_text(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """list of N strings -> (N, D) float32, unit L2 norm (for caption-clip similarity)."""
        feats = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            feats.append(self.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(feats).numpy() if feats else np.zeros((0, self.embed_dim), np.float32)


class AestheticHead(nn.Module):
    """LAION improved aesthetic predictor: MLP on L2-normalised CLIP image embeddings -> score.

    Layer indices match the published checkpoint (`layers.0`, `.2`, `.4`, `.6`, `.7`). It has no
    non-linearities (as released); the ViT-L-14 head predicts a 1..10 rating.
    """

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.layers(emb).squeeze(-1)  # (N, D) -> (N,)


def load_aesthetic_head(
    path: str | None, embed_dim: int, *, device: str = "cpu", seed: int = 0, key: str = "head_weights"
) -> AestheticHead:
    """Head with weights from a local file (see `resolve_weights`), or random (seeded) when None."""
    with _seeded(seed):
        head = AestheticHead(embed_dim)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        got = state.get("layers.0.weight")
        if got is None or got.shape[1] != embed_dim:
            shape = None if got is None else tuple(got.shape)
            raise ValueError(
                f"{key}: {path!r} is not an aesthetic head for {embed_dim}-d CLIP embeddings "
                f"(layers.0.weight shape {shape}); use the head trained for this clip_model"
            )
        head.load_state_dict(state)
    return head.to(device).eval()
