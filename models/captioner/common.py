"""What every captioner backend shares: the clip input, the raw output, `clean_caption`, and
"reelsift-tiny", a tiny randomly initialised Qwen2.5-VL (tokenizer built from scratch) written
to a folder and loaded by the same code as a real model: tests and `offline.yaml` use it, and
its rows are flagged untrained.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.captioner.config import DEFAULT_PROMPT

TINY_VLM = "reelsift-tiny"
UNTRAINED_ATTR = "reelsift_untrained"  # set in config.json of random-weight folders


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
    r"i'?m unable|i'?m not able|i am not able|as an ai|unfortunately,? i)",
    re.I,
)
_BOILERPLATE = re.compile(
    r"^\s*(?:"
    r"(?:here is|here's) (?:a|an|the|my) [^:.]{0,60}(?:description|caption)[^:.]{0,30}[:.]\s*"
    r"|(?:caption|description)\s*:\s*"
    r"|(?:in|throughout|within) (?:this|the) (?:short |brief )?(?:video|clip|footage|scene|frames?)[,:]?\s+"
    r"|(?:the|this) (?:short |brief )?(?:video|clip|footage|scene|sequence|frames?) "
    r"(?:shows|depicts|features|captures|presents|displays|portrays|showcases|begins with|opens with|"
    r"starts with|is of)(?:[\s:,]+|$)(?:that\s+)?"
    r"|(?:the|these) (?:images|frames) (?:show|depict|feature|capture)(?:[\s:,]+|$)"
    r")",
    re.I,
)
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


def torch_device(spec: str) -> str:
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


def is_untrained(model: str) -> bool:
    """Whether a transformers model spec has random weights (the tiny model or a marked folder)."""
    if model == TINY_VLM or model.startswith(RANDOM_PREFIX):
        return True
    config = Path(os.path.expanduser(model)) / "config.json"
    if config.is_file():
        return bool(json.loads(config.read_text()).get(UNTRAINED_ATTR, False))
    return False


_TINY_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
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
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=_TINY_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # its progress display leaves blank lines in a log
    )
    corpus = [DEFAULT_PROMPT, "A person walks a brown dog through a sunlit park."] * 4
    tok.train_from_iterator(corpus, trainer)
    ids = {t: tok.token_to_id(t) for t in _TINY_SPECIAL}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    return tokenizer, ids


def vlm_parts(text: dict, vision: dict, pixels: dict | None = None):
    """A Qwen2.5-VL processor (the synthetic BPE tokenizer, the chat template, image/video
    processors with `pixels` or their class defaults) and a config of `text`/`vision` sizes whose
    special-token ids come from that tokenizer. -> (processor, config); no weights."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer, ids = synthetic_tokenizer()
    pixels = pixels or {}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=_TINY_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),  # a bigger vocabulary in `text` wins: ids stay valid
            **text,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return processor, config


_TINY = dict(  # reelsift-tiny: two layers of width 32, its own small vocabulary
    text=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
    ),
    vision=dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=32,
        fullatt_block_indexes=[1],
        window_size=56,
    ),
)


def build_tiny_vlm(path: str | Path, seed: int = 0) -> str:
    """Write a tiny random Qwen2.5-VL (~0.1 M parameters) + processor to `path`; returns it.

    The byte-level BPE tokenizer is trained from scratch on a few sentences (no download); the
    image/video processors are their class defaults with a small pixel budget. config.json
    carries `reelsift_untrained: true`, which the loader turns into untrained rows.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    processor, config = vlm_parts(
        text=_TINY["text"],
        vision=_TINY["vision"],
        pixels=dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
    )
    setattr(config, UNTRAINED_ATTR, True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


# `caption.transformers.model: reelsift-random:<name>` builds a model of these sizes with RANDOM
# weights on the captioner's device (benches and GPU-node runs without a hub): UNTRAINED captions.
RANDOM_PREFIX = "reelsift-random:"
_QWEN25_VL_7B = dict(  # Qwen/Qwen2.5-VL-7B-Instruct config.json
    text=dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
    ),
    vision=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
    ),
)
_SMOKE = dict(  # the 7B vocabulary and positions, reelsift-tiny's layers (CPU tests)
    text={**_TINY["text"], "vocab_size": 152064, "max_position_embeddings": 32768},
    vision=_TINY["vision"],
)
RANDOM_SIZES = {"qwen2.5-vl-7b": _QWEN25_VL_7B, "qwen2.5-vl-smoke": _SMOKE}


def build_random_vlm(model: str, device: str, dtype, seed: int = 0, attn_implementation: str | None = None):
    """`reelsift-random:<name>` -> (model, processor): a Qwen2.5-VL of RANDOM_SIZES[name] created
    on `device` with random weights (marked untrained), and the synthetic-tokenizer processor."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    name = model.removeprefix(RANDOM_PREFIX)
    if name not in RANDOM_SIZES:
        raise ValueError(
            f"caption.transformers.model: unknown random model {name!r}; known: {sorted(RANDOM_SIZES)}"
        )
    sizes = RANDOM_SIZES[name]
    processor, config = vlm_parts(sizes["text"], sizes["vision"])
    config._attn_implementation = attn_implementation or "sdpa"
    setattr(config, UNTRAINED_ATTR, True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            net = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return net.eval(), processor
