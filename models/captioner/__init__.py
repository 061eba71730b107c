"""VLM captioner backends: clip frames + prompt -> raw caption text.

    models.captioner.config     the backend configs and the prompt template (light to import)
    models.captioner.backends   the transformers, openai and sidecar backends, clean_caption

`from models.captioner import X` works for every public name of both modules; the backends
(and torch, transformers, cv2 with them) are imported only when one of their names is used.
"""

from __future__ import annotations

import importlib

_CONFIG_NAMES = {
    "DEFAULT_PROMPT",
    "PROMPT_FIELDS",
    "OpenAICaptionerConfig",
    "SidecarCaptionerConfig",
    "TransformersCaptionerConfig",
    "prompt_hash",
    "render_prompt",
}


def __getattr__(name: str):
    module = "config" if name in _CONFIG_NAMES else "backends"
    try:
        return getattr(importlib.import_module(f"models.captioner.{module}"), name)
    except AttributeError:
        raise AttributeError(f"module 'models.captioner' has no attribute {name!r}") from None
