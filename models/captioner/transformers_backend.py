"""The `transformers` captioner backend: an in-process VLM loaded by hub id or local folder
through the generic `AutoModelForImageTextToText` + `AutoProcessor`; frames go in as the model's
native video input where its processor has one, else as N images.

Greedy decoding runs through `models.captioner.fast_decode` (static KV cache, CUDA-graph decode
steps) where the model allows it, else through `generate`; both give the same tokens.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

from models.captioner.common import (
    RANDOM_PREFIX,
    TINY_VLM,
    UNTRAINED_ATTR,
    CaptionInput,
    RawCaption,
    build_random_vlm,
    build_tiny_vlm,
    torch_device,
)
from models.captioner.config import TransformersCaptionerConfig
from models.clip import MissingWeights

log = logging.getLogger("reelsift")


class TransformersCaptioner:
    """In-process VLM; one instance per (GPU) actor. caption(): batched greedy generation."""

    needs_frames = True

    def __init__(self, cfg: TransformersCaptionerConfig, key: str = "caption.transformers"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        self.device = torch_device(cfg.device)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            cfg.dtype, torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        )
        path = cfg.model
        if cfg.model.startswith(RANDOM_PREFIX):  # a named size, random weights, built on the device
            self.model, self.processor = build_random_vlm(
                cfg.model, self.device, dtype, cfg.seed, cfg.attn_implementation
            )
            self._setup()
            return
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
                "holding a model and processor saved with save_pretrained"
            ) from exc
        self._setup()

    @classmethod
    def from_model(cls, cfg: TransformersCaptionerConfig, model, processor) -> TransformersCaptioner:
        """A captioner around an already built model and processor (benches, tests)."""
        self = cls.__new__(cls)
        self.cfg, self.device, self.model, self.processor = cfg, torch_device(cfg.device), model, processor
        self._setup()
        return self

    def _setup(self) -> None:
        from models.captioner import fast_decode

        cfg = self.cfg
        self.model.to(self.device).eval()
        self.decoder, self.decode_path = None, "generate"
        if cfg.fast_decode and cfg.temperature == 0:
            ok, why = fast_decode.supports(self.model)
            if ok:
                fast_decode.use_varlen_vision_attention(self.model)
                self.decoder = fast_decode.StaticGreedyDecoder(self.model, use_graphs=cfg.cuda_graphs)
                self.decode_path = "static-cache" + (" + CUDA graphs" if self.decoder.use_graphs else "")
            else:
                log.info("caption: fast_decode not used for %s (%s); using generate", cfg.model, why)
        self.max_batch = cfg.batch_size  # lowered after an out-of-memory error
        self.untrained = bool(getattr(self.model.config, UNTRAINED_ATTR, False))
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # batched generation continues after the prompt
        self.video = cfg.video_input and getattr(self.processor, "video_processor", None) is not None
        self.name = cfg.model
        if self.untrained:
            log.warning(
                "caption: %s has RANDOM weights; its captions are meaningless (rows flagged untrained)",
                cfg.model,
            )

    def caption(self, items: list[CaptionInput], prompts: list[str]) -> list[RawCaption]:
        out: list[RawCaption] = []
        start = 0
        while start < len(items):
            step = min(self.cfg.batch_size, self.max_batch)
            chunk, texts = items[start : start + step], prompts[start : start + step]
            try:
                out.extend(self._generate(chunk, texts))
            except Exception as exc:  # CUDA OOM first: the batch is sized down to fit memory
                if _out_of_memory(exc) and len(chunk) > 1:
                    self.max_batch = len(chunk) // 2
                    log.warning(
                        "caption: out of device memory at %d clips a batch; now %d",
                        len(chunk),
                        self.max_batch,
                    )
                    _free_device_memory(self)
                    continue
                if not isinstance(exc, (RuntimeError, ValueError)):  # processor rejects an input
                    raise
                out.extend(RawCaption(None, error=f"generation failed: {exc}"[:500]) for _ in chunk)
            start += len(chunk)
        return out

    def inputs(self, items: list[CaptionInput], prompts: list[str]) -> dict:
        """The processor's batch (left-padded prompts + pixels) on the model's device."""
        from transformers.video_utils import VideoMetadata

        texts, media = [], {}
        for item, prompt in zip(items, prompts, strict=True):
            visual = [{"type": "video"}] if self.video else [{"type": "image"}] * len(item.frames)
            messages = [{"role": "user", "content": [*visual, {"type": "text", "text": prompt}]}]
            texts.append(
                self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            )
        if self.video:
            media["videos"] = [list(it.frames.copy()) for it in items]  # torch wants writable arrays
            media["video_metadata"] = [
                VideoMetadata(
                    total_num_frames=len(it.frames), fps=it.fps, frames_indices=list(range(len(it.frames)))
                )
                for it in items
            ]
            media["do_sample_frames"] = False  # frames are already the sampled ones
        else:
            media["images"] = [list(it.frames.copy()) for it in items]
        if self.cfg.processor_on_device and self.video:
            media["device"] = self.device  # resize / normalise / patchify the frames there
        return self.processor(text=texts, padding=True, return_tensors="pt", **media).to(self.device)

    def _generate(self, items: list[CaptionInput], prompts: list[str]) -> list[RawCaption]:
        import torch

        inputs = self.inputs(items, prompts)
        sampling: dict = dict(do_sample=False)
        if self.cfg.temperature > 0:
            sampling = dict(do_sample=True, temperature=self.cfg.temperature)
        t0 = time.monotonic()
        with torch.inference_mode():
            if self.decoder is not None:
                new = self.decoder.generate(inputs, self.cfg.max_new_tokens)  # (B, new tokens)
            else:
                ids = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens, **sampling)
                new = ids[:, inputs["input_ids"].shape[1] :]  # (B, new tokens)
        latency = time.monotonic() - t0
        pad = self.tokenizer.pad_token_id
        n_tokens = (new != pad).sum(dim=1).tolist() if pad is not None else [new.shape[1]] * len(items)
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [
            RawCaption(t, n_tokens=int(n), latency_s=latency) for t, n in zip(decoded, n_tokens, strict=True)
        ]


def _out_of_memory(exc: Exception) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _free_device_memory(cap: TransformersCaptioner) -> None:
    import torch

    if cap.decoder is not None:
        cap.decoder.states.clear()  # static caches and graphs of the larger batch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
