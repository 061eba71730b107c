"""VLM captioner backends: clip frames + prompt -> raw caption text.

    models.captioner.config                the backend configs and the prompt template (light)
    models.captioner.common                CaptionInput, RawCaption, clean_caption, the tiny VLM
    models.captioner.transformers_backend  in-process VLM (+ fast_decode: static cache, CUDA graphs)
    models.captioner.openai_backend        OpenAI-compatible server client
    models.captioner.sidecar               captions in files beside the videos
    models.captioner.backends              BACKENDS: name -> class

`from models.captioner import X` works for every public name of these modules; a backend (and
torch, transformers, cv2 with it) is imported only when one of its names is used.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "config": [
        "DEFAULT_PROMPT",
        "PROMPT_FIELDS",
        "OpenAICaptionerConfig",
        "SidecarCaptionerConfig",
        "TransformersCaptionerConfig",
        "prompt_hash",
        "render_prompt",
    ],
    "common": [
        "TINY_VLM",
        "UNTRAINED_ATTR",
        "CaptionInput",
        "RawCaption",
        "clean_caption",
        "is_untrained",
        "torch_device",
        "synthetic_tokenizer",
        "build_tiny_vlm",
        "_TINY_TEMPLATE",
    ],
    "transformers_backend": ["TransformersCaptioner"],
    "fast_decode": ["StaticGreedyDecoder"],
    "openai_backend": ["OpenAICaptioner"],
    "sidecar": ["SidecarCaptioner"],
    "backends": ["BACKENDS"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'models.captioner' has no attribute {name!r}")
    return getattr(importlib.import_module(f"models.captioner.{_WHERE[name]}"), name)
