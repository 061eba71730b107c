"""The captioner backends by `caption.backend` name, behind one call, `caption(items, prompts)`:

  transformers  models/captioner/transformers_backend.py  in-process VLM (+ fast_decode.py)
  openai        models/captioner/openai_backend.py        OpenAI-compatible server
  sidecar       models/captioner/sidecar.py               captions in files beside the videos

Backends return raw text; `clean_caption` (models/captioner/common.py) strips boilerplate and
refuses refusals.
"""

from __future__ import annotations

from models.captioner.openai_backend import OpenAICaptioner
from models.captioner.sidecar import SidecarCaptioner
from models.captioner.transformers_backend import TransformersCaptioner

BACKENDS = {"transformers": TransformersCaptioner, "openai": OpenAICaptioner, "sidecar": SidecarCaptioner}
