"""Captioner configs and the prompt template: what `caption.*` holds, with no backend code.

Loading a config imports this module only (no torch, transformers or cv2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from manifests.configtools import check

DEFAULT_PROMPT = (
    "These are {n_frames} frames sampled evenly from a {duration_s:.1f}-second video clip. "
    "Write a single dense paragraph of 80 to 120 words that describes the clip as a whole: the main "
    "subject and its appearance, what it does and how it moves, the setting and background, the "
    "lighting and colour palette, how the camera frames and moves (static, pan, tilt, zoom, "
    "tracking, handheld), and the visual style (live action, animation, time-lapse, ...). Describe "
    "only what is visible; do not guess names, brands or text you cannot read. Start directly with "
    'the subject, never with phrases such as "The video shows", and write no lists, headings or notes.'
)
PROMPT_FIELDS = {"n_frames": 8, "duration_s": 4.0}  # placeholders a template may use


def prompt_hash(template: str) -> str:
    """Short stable id of a prompt template (12 hex chars)."""
    return hashlib.blake2b(template.encode(), digest_size=6).hexdigest()


def render_prompt(template: str, n_frames: int, duration_s: float) -> str:
    return template.format(n_frames=n_frames, duration_s=duration_s)


@dataclass(frozen=True)
class TransformersCaptionerConfig:
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Hub id or local folder (model + processor saved with save_pretrained), any model the
    image-text-to-text auto classes load; "reelsift-tiny" = tiny random Qwen2.5-VL (UNTRAINED)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); null = default branch."""
    local_files_only: bool = False
    """Never touch the network: load from the local folder / HF cache only."""
    device: str = "auto"
    """torch device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ..."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; "auto" = bfloat16 on GPU, float32 on CPU."""
    attn_implementation: str | None = "sdpa"
    """Attention kernel ("sdpa", "flash_attention_2", "eager"); null = the model's default."""
    video_input: bool = True
    """Give frames as the model's native video input where its processor has one (Qwen-VL);
    false, or no video processor = one image per frame."""
    batch_size: int = 4
    """Clips per generate() call (>= 1); prompts are left-padded. After a device out-of-memory
    error the batch is halved until it fits (the clips are retried, not failed). On an H200 with
    a 7B model, 64..128 (set caption.captioner.batch_size as large)."""
    max_new_tokens: int = 256
    """Longest caption generated, tokens (>= 1); ~1.4 tokens per English word."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy decoding (deterministic)."""
    seed: int = 0
    """Seed of the random weights of "reelsift-tiny" (>= 0)."""
    fast_decode: bool = True
    """Greedy decoding with a static KV cache and batched vision window attention
    (models/captioner/fast_decode.py) where the model and its generation config allow; the
    tokens equal `generate`'s. false = transformers' `generate` always."""
    cuda_graphs: bool = True
    """With fast_decode on a CUDA device: replay each decode step as a captured CUDA graph."""
    processor_on_device: bool = True
    """Video frames are resized, normalised and cut into patches by the processor on the
    model's device (its torchvision backend) rather than on the CPU."""

    def __post_init__(self):
        check(
            bool(self.model),
            "caption.transformers.model",
            "must be a hub id, a local folder or reelsift-tiny",
        )
        check(
            self.device == "auto" or self.device.startswith(("cpu", "cuda", "mps")),
            "caption.transformers.device",
            f"must be auto, cpu, cuda[:N] or mps, got {self.device!r}",
        )
        check(self.batch_size >= 1, "caption.transformers.batch_size", "must be >= 1")
        check(self.max_new_tokens >= 1, "caption.transformers.max_new_tokens", "must be >= 1")
        check(self.temperature >= 0, "caption.transformers.temperature", "must be >= 0")
        check(self.seed >= 0, "caption.transformers.seed", "must be >= 0")


@dataclass(frozen=True)
class OpenAICaptionerConfig:
    base_url: str = "http://localhost:8000/v1"
    """Server root up to /v1; requests go to <base_url>/chat/completions."""
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    """Model name the server serves (vLLM: the --served-model-name or the path it loaded)."""
    api_key_env: str | None = None
    """NAME of the environment variable holding the API key (sent as a Bearer token); null = no
    key. The key itself never goes into config, logs or tables."""
    concurrency: int = 8
    """Requests in flight per captioner actor (>= 1)."""
    timeout_s: float = 120.0
    """Per-request socket timeout, seconds (> 0): no byte from the server for this long = retry."""
    max_retries: int = 4
    """Retries after a 429, a 5xx, a timeout or a dropped connection (>= 0); other errors fail at once."""
    backoff_s: float = 1.0
    """First retry delay, seconds, doubled per retry, with jitter (>= 0); a Retry-After header wins."""
    max_backoff_s: float = 30.0
    """Longest single retry delay, seconds (>= backoff_s)."""
    max_tokens: int = 256
    """Longest caption generated, tokens (>= 1)."""
    temperature: float = 0.0
    """Sampling temperature (>= 0)."""
    jpeg_quality: int = 90
    """JPEG quality of the frames sent (1..100)."""

    def __post_init__(self):
        check(
            self.base_url.startswith(("http://", "https://")),
            "caption.openai.base_url",
            f"must start with http:// or https://, got {self.base_url!r}",
        )
        check(bool(self.model), "caption.openai.model", "must name the served model")
        check(self.concurrency >= 1, "caption.openai.concurrency", "must be >= 1")
        check(self.timeout_s > 0, "caption.openai.timeout_s", "must be > 0")
        check(self.max_retries >= 0, "caption.openai.max_retries", "must be >= 0")
        check(self.backoff_s >= 0, "caption.openai.backoff_s", "must be >= 0")
        check(self.max_backoff_s >= self.backoff_s, "caption.openai.max_backoff_s", "must be >= backoff_s")
        check(self.max_tokens >= 1, "caption.openai.max_tokens", "must be >= 1")
        check(self.temperature >= 0, "caption.openai.temperature", "must be >= 0")
        check(1 <= self.jpeg_quality <= 100, "caption.openai.jpeg_quality", "must be in 1..100")


@dataclass(frozen=True)
class SidecarCaptionerConfig:
    json_field: str | None = None
    """null = read `<video stem>.txt`; else read `<video stem>.json` and take this field
    (dotted path for nested objects, e.g. "meta.caption")."""
    encoding: str = "utf-8"
    """Text encoding of the sidecar files."""
