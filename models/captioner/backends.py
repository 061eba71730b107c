"""VLM captioner backends: clip frames + prompt -> raw caption text.

Three backends, chosen by `caption.backend`, behind one call, `caption(items, prompts)`:

  transformers  an in-process VLM loaded by hub id or local folder through the generic
                `AutoModelForImageTextToText` + `AutoProcessor`; frames go in as the model's
                native video input where its processor has one, else as N images.
  openai        any OpenAI-compatible chat-completions server with image inputs (vLLM, SGLang):
                frames as base64 JPEG data URLs, a thread pool, retries with backoff.
  sidecar       captions already next to the source video (`<stem>.txt` or a `<stem>.json` field).

Backends return raw text; `clean_caption` (shared by all) strips boilerplate and refuses
refusals. "reelsift-tiny" is a tiny randomly initialised Qwen2.5-VL (tokenizer built from
scratch) written to a temp folder and loaded by the same code as a real model: tests and
`offline.yaml` use it, and its rows are flagged untrained.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import random
import re
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.captioner.config import (  # noqa: F401  (re-exported)
    DEFAULT_PROMPT,
    PROMPT_FIELDS,
    OpenAICaptionerConfig,
    SidecarCaptionerConfig,
    TransformersCaptionerConfig,
    prompt_hash,
    render_prompt,
)
from models.clip import MissingWeights

log = logging.getLogger("reelsift")

TINY_VLM = "reelsift-tiny"
UNTRAINED_ATTR = "reelsift_untrained"  # set in config.json of random-weight folders

# ---------------------------------------------------------------------------------------------
# inputs, outputs, post-processing

@dataclass
class CaptionInput:
    """One clip to caption. frames: (T, H, W, 3) uint8 RGB, or None for backends that need none."""

    clip_id: str
    path: str
    frames: np.ndarray | None
    fps: float  # rate of the sampled frames, frames per second of video time


@dataclass
class RawCaption:
    text: str | None
    n_tokens: int | None = None
    latency_s: float | None = None
    error: str | None = None


_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i cannot|i can'?t|i can not|i am unable|"
    r"i'?m unable|i'?m not able|i am not able|as an ai|unfortunately,? i)", re.I)
_BOILERPLATE = re.compile(
    r"^\s*(?:"
    r"(?:here is|here's) (?:a|an|the|my) [^:.]{0,60}(?:description|caption)[^:.]{0,30}[:.]\s*"
    r"|(?:caption|description)\s*:\s*"
    r"|(?:in|throughout|within) (?:this|the) (?:short |brief )?(?:video|clip|footage|scene|frames?)[,:]?\s+"
    r"|(?:the|this) (?:short |brief )?(?:video|clip|footage|scene|sequence|frames?) "
    r"(?:shows|depicts|features|captures|presents|displays|portrays|showcases|begins with|opens with|"
    r"starts with|is of)(?:[\s:,]+|$)(?:that\s+)?"
    r"|(?:the|these) (?:images|frames) (?:show|depict|feature|capture)(?:[\s:,]+|$)"
    r")", re.I)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


def clean_caption(text: str | None, min_words: int, max_words: int) -> tuple[str | None, str | None]:
    """Raw VLM output -> (caption, None) or (None, reason): one paragraph, no boilerplate opening,
    no unfinished last sentence, min_words..max_words words. Refusals and empty output are errors."""
    if text is None or not text.strip():
        return None, "empty output"
    text = " ".join(text.replace("*", " ").replace("#", " ").split())  # one paragraph, no markdown
    text = text.strip(" \"'`")
    if _REFUSAL.match(text):
        return None, f"refusal: {text[:80]!r}"
    for _ in range(3):  # openings stack: "Caption: In this video, the clip shows ..."
        stripped = _BOILERPLATE.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    if not text:
        return None, "empty after removing boilerplate"
    text = text[0].upper() + text[1:]
    words = text.split()
    if len(words) > max_words:  # cut to the last full sentence within max_words
        text = " ".join(words[:max_words])
    ends = list(_SENTENCE_END.finditer(text))
    if not ends and len(words) > max_words:
        return None, f"too long: {len(words)} words and no sentence end within max_words {max_words}"
    if ends and ends[-1].end() < len(text):  # drop an unfinished tail (generation hit its limit)
        text = text[: ends[-1].end()]
    n = len(text.split())
    if n < min_words:
        return None, f"too short: {n} words < min_words {min_words}: {text[:80]!r}"
    return text, None


# ---------------------------------------------------------------------------------------------
# transformers

def _torch_device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def is_untrained(model: str) -> bool:
    """Whether a transformers model spec has random weights (the tiny model or a marked folder)."""
    if model == TINY_VLM:
        return True
    config = Path(os.path.expanduser(model)) / "config.json"
    if config.is_file():
        return bool(json.loads(config.read_text()).get(UNTRAINED_ATTR, False))
    return False


class TransformersCaptioner:
    """In-process VLM; one instance per (GPU) actor. caption(): batched greedy generation."""

    needs_frames = True

    def __init__(self, cfg: TransformersCaptionerConfig, key: str = "caption.transformers"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        self.device = _torch_device(cfg.device)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            cfg.dtype, torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        path = cfg.model
        if cfg.model == TINY_VLM:
            self._tmp = tempfile.TemporaryDirectory(prefix="reelsift-tiny-vlm-")
            path = build_tiny_vlm(self._tmp.name, seed=cfg.seed)
        elif os.path.exists(os.path.expanduser(path)):
            path = os.path.expanduser(path)
        common = dict(revision=cfg.revision, local_files_only=cfg.local_files_only)
        try:
            self.processor = AutoProcessor.from_pretrained(path, **common)
            extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **common, **extra)
        except OSError as exc:  # missing folder/files, unknown hub id, no network
            raise MissingWeights(
                f"{key}.model: could not load {cfg.model!r} ({exc}); set a hub id or a local folder "
                "holding a model and processor saved with save_pretrained") from exc
        self.model.to(self.device).eval()
        self.untrained = bool(getattr(self.model.config, UNTRAINED_ATTR, False))
        if self.untrained:
            log.warning("caption: %s has RANDOM weights; its captions are meaningless (rows flagged "
                        "untrained)", cfg.model)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # batched generation continues after the prompt
        self.video = cfg.video_input and getattr(self.processor, "video_processor", None) is not None
        self.name = cfg.model

    def caption(self, items: list[CaptionInput], prompts: list[str]) -> list[RawCaption]:
        out: list[RawCaption] = []
        step = self.cfg.batch_size
        for start in range(0, len(items), step):
            chunk, texts = items[start : start + step], prompts[start : start + step]
            try:
                out.extend(self._generate(chunk, texts))
            except (RuntimeError, ValueError) as exc:  # CUDA OOM, processor rejects an input
                out.extend(RawCaption(None, error=f"generation failed: {exc}"[:500]) for _ in chunk)
        return out

    def _generate(self, items: list[CaptionInput], prompts: list[str]) -> list[RawCaption]:
        import torch
        from transformers.video_utils import VideoMetadata

        texts, media = [], {}
        for item, prompt in zip(items, prompts, strict=True):
            visual = [{"type": "video"}] if self.video else [{"type": "image"}] * len(item.frames)
            messages = [{"role": "user", "content": [*visual, {"type": "text", "text": prompt}]}]
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                            tokenize=False))
        if self.video:
            media["videos"] = [list(it.frames.copy()) for it in items]  # torch wants writable arrays
            media["video_metadata"] = [
                VideoMetadata(total_num_frames=len(it.frames), fps=it.fps,
                              frames_indices=list(range(len(it.frames))))
                for it in items]
            media["do_sample_frames"] = False  # frames are already the sampled ones
        else:
            media["images"] = [list(it.frames.copy()) for it in items]
        inputs = self.processor(text=texts, padding=True, return_tensors="pt", **media).to(self.device)
        sampling: dict = dict(do_sample=False)
        if self.cfg.temperature > 0:
            sampling = dict(do_sample=True, temperature=self.cfg.temperature)
        t0 = time.monotonic()
        with torch.inference_mode():
            ids = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, **sampling)
        latency = time.monotonic() - t0
        new = ids[:, inputs["input_ids"].shape[1] :]  # (B, new tokens)
        pad = self.tokenizer.pad_token_id
        n_tokens = (new != pad).sum(dim=1).tolist() if pad is not None else [new.shape[1]] * len(items)
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [RawCaption(t, n_tokens=int(n), latency_s=latency)
                for t, n in zip(decoded, n_tokens, strict=True)]


_TINY_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
_TINY_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def synthetic_tokenizer():
    """A 512-token byte-level BPE trained here on the default prompt, with Qwen's chat special
    tokens: no download. -> (PreTrainedTokenizerFast, {special token: id})."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=_TINY_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [DEFAULT_PROMPT, "A person walks a brown dog through a sunlit park."] * 4
    tok.train_from_iterator(corpus, trainer)
    ids = {t: tok.token_to_id(t) for t in _TINY_SPECIAL}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    return tokenizer, ids


def build_tiny_vlm(path: str | Path, seed: int = 0) -> str:
    """Write a tiny random Qwen2.5-VL (~0.1 M parameters) + processor to `path`; returns it.

    The byte-level BPE tokenizer is trained from scratch on a few sentences (no download); the
    image/video processors are their class defaults with a small pixel budget. config.json
    carries `reelsift_untrained: true`, which the loader turns into untrained rows.
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer, ids = synthetic_tokenizer()
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=_TINY_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[1], window_size=56),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    setattr(config, UNTRAINED_ATTR, True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible server

class _Retry(Exception):
    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


def _jpeg_data_url(frame: np.ndarray, quality: int) -> str:
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


class OpenAICaptioner:
    """Chat-completions client: a thread pool of `concurrency` requests, retries with backoff."""

    needs_frames = True
    untrained = False

    def __init__(self, cfg: OpenAICaptionerConfig, key: str = "caption.openai"):
        self.cfg = cfg
        self.name = cfg.model
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env)
            if not api_key:
                raise ValueError(f"{key}.api_key_env: environment variable {cfg.api_key_env} is not set")
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="caption-openai")

    def caption(self, items: list[CaptionInput], prompts: list[str]) -> list[RawCaption]:
        return list(self.pool.map(self.one, items, prompts))

    def one(self, item: CaptionInput, prompt: str) -> RawCaption:
        cfg = self.cfg
        images = [{"type": "image_url", "image_url": {"url": _jpeg_data_url(f, cfg.jpeg_quality)}}
                  for f in item.frames]
        body = json.dumps({
            "model": cfg.model,
            "messages": [{"role": "user", "content": [*images, {"type": "text", "text": prompt}]}],
            "max_tokens": cfg.max_tokens,
            "temperature": cfg.temperature,
        }).encode()
        t0 = time.monotonic()
        reason = ""
        for attempt in range(cfg.max_retries + 1):
            try:
                payload = self._post(body)
            except _Retry as exc:
                reason = str(exc)
                if attempt < cfg.max_retries:
                    backoff = cfg.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
                    time.sleep(min(cfg.max_backoff_s, exc.wait_s if exc.wait_s is not None else backoff))
                continue
            except ValueError as exc:  # not retried: 4xx other than 429, malformed response
                return RawCaption(None, latency_s=time.monotonic() - t0, error=str(exc))
            try:
                content = payload["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                return RawCaption(None, latency_s=time.monotonic() - t0,
                                  error=f"response has no choices[0].message.content: {str(payload)[:200]}")
            if isinstance(content, list):  # some servers return content parts
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            usage = payload.get("usage") or {}
            return RawCaption(content, n_tokens=usage.get("completion_tokens"),
                              latency_s=time.monotonic() - t0)
        return RawCaption(None, latency_s=time.monotonic() - t0,
                          error=f"gave up after {cfg.max_retries + 1} attempts: {reason}")

    def _post(self, body: bytes) -> dict:
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            if exc.code == 429 or exc.code >= 500:
                after = exc.headers.get("Retry-After") if exc.headers else None
                wait = float(after) if after and after.replace(".", "", 1).isdigit() else None
                raise _Retry(f"HTTP {exc.code}: {detail}", wait) from exc
            raise ValueError(f"HTTP {exc.code} (not retried): {detail}") from exc
        except TimeoutError as exc:
            raise _Retry(f"no response within timeout_s={self.cfg.timeout_s}") from exc
        except urllib.error.URLError as exc:  # connect refused / connect timeout
            raise _Retry(f"cannot reach {self.url}: {exc.reason}") from exc
        except (ConnectionError, http.client.HTTPException) as exc:  # dropped mid-response
            raise _Retry(f"connection lost: {exc!r}") from exc
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"response is not JSON: {raw[:200]!r}") from exc


# ---------------------------------------------------------------------------------------------
# sidecar files

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
        path = Path(item.path).with_suffix(".json" if field else ".txt")
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


BACKENDS = {"transformers": TransformersCaptioner, "openai": OpenAICaptioner, "sidecar": SidecarCaptioner}
