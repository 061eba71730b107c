"""The `sidecar` captioner backend: captions already next to the source video."""

from __future__ import annotations

import json

from manifests import fs
from models.captioner.common import CaptionInput, RawCaption
from models.captioner.config import SidecarCaptionerConfig


class SidecarCaptioner:
    """Reads `<video stem>.txt`, or field `json_field` of `<video stem>.json`, beside the video."""

    needs_frames = False
    untrained = False

    def __init__(self, cfg: SidecarCaptionerConfig, key: str = "caption.sidecar"):
        self.cfg = cfg
        self.name = f"sidecar:json:{cfg.json_field}" if cfg.json_field else "sidecar:txt"

    def caption(self, items: list[CaptionInput], prompts: list[str]) -> list[RawCaption]:
        return [self.one(it) for it in items]

    def one(self, item: CaptionInput) -> RawCaption:
        field = self.cfg.json_field
        path = fs.upath(item.path).with_suffix(".json" if field else ".txt")  # beside it, on disk or S3
        try:
            text = path.read_text(encoding=self.cfg.encoding)
        except FileNotFoundError:
            return RawCaption(None, error=f"no sidecar caption: {path} not found")
        except (OSError, UnicodeDecodeError) as exc:
            return RawCaption(None, error=f"sidecar {path} unreadable: {exc}")
        if field:
            try:
                value = json.loads(text)
                for part in field.split("."):
                    value = value[part]
            except json.JSONDecodeError as exc:
                return RawCaption(None, error=f"sidecar {path} is not JSON: {exc}")
            except (KeyError, TypeError):
                return RawCaption(None, error=f"sidecar {path} has no field {field!r}")
            if not isinstance(value, str):
                return RawCaption(None, error=f"sidecar {path} field {field!r} is not a string")
            text = value
        return RawCaption(text, n_tokens=len(text.split()), latency_s=0.0)
