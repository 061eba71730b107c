"""Greedy decoding for Qwen2.5-VL-style models without `generate`'s per-step overhead.

    decoder = StaticGreedyDecoder(model, use_graphs=True)
    ids = decoder.generate(inputs, max_new_tokens=256)     # (B, <= 256) new tokens, pad after EOS

  - one prefill forward (vision encoder + prompt) into a static KV cache of a fixed length
    (prompt rounded up + max_new_tokens), so every decode step has the same shapes;
  - each decode step (embed, 28 layers, lm_head, EOS / min-length / repetition-penalty logic,
    argmax) is captured once per (batch, cache length) as a CUDA graph and replayed: one launch a
    token instead of ~1,000 kernel launches through Python;
  - the vision tower's window attention runs as one batched SDPA call per window length
    (`varlen_sdpa`) instead of one call per window.

The tokens equal `model.generate(do_sample=False)` for the logits processors reproduced here
(min_new_tokens, repetition_penalty, EOS/pad); `supports(model)` says False for any other
generation setting, and the caller then uses `generate`. On CPU the same step runs eagerly.
"""

from __future__ import annotations

import inspect
import time

import torch

VARLEN_ATTN = "flash_varlen_sdpa"  # "flash" in the name routes cu_seqlens to it (transformers)
KEEP_SHAPES = 2  # (batch, cache length) states kept: a full batch and a last, smaller one
ROUND = 256  # cache lengths are rounded up to a multiple, so graphs are reused across batches


def varlen_sdpa(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention within the packed sequences of `cu_seq_lens_q`, one SDPA call per distinct length.
    query/key/value: (1, H, N, D) -> (1, N, H, D), like transformers' flash-attention functions."""
    cu = kwargs["cu_seq_lens_q"].tolist()
    starts, lengths = cu[:-1], [b - a for a, b in zip(cu[:-1], cu[1:], strict=True)]
    _, h, n, d = query.shape
    out = torch.empty_like(query)
    groups: dict[int, list[int]] = {}
    for s, length in zip(starts, lengths, strict=True):
        if length:
            groups.setdefault(length, []).append(s)
    for length, firsts in groups.items():
        m = len(firsts)
        if m * length == n:  # one length throughout: the sequences tile the whole range
            take = slice(None)
        else:
            take = (torch.tensor(firsts)[:, None] + torch.arange(length)).view(-1).to(query.device)
        q, k, v = (
            t[0][:, take].view(h, m, length, d).transpose(0, 1) for t in (query, key, value)
        )  # (m, H, L, D)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scaling)  # (m, H, L, D)
        out[0][:, take] = o.transpose(0, 1).reshape(h, m * length, d)
    return out.transpose(1, 2).contiguous(), None  # (1, N, H, D)


def use_varlen_vision_attention(model) -> bool:
    """Route the vision tower's packed attention through `varlen_sdpa`; False if the model has
    no such tower (then nothing changes)."""
    from transformers import AttentionInterface

    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None or not hasattr(visual, "blocks"):
        return False
    AttentionInterface.register(VARLEN_ATTN, varlen_sdpa)
    for m in visual.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = VARLEN_ATTN
    return True


# generation settings whose logits processors this decoder does not reproduce
_UNSUPPORTED = (
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "sequence_bias",
    "encoder_repetition_penalty",
    "exponential_decay_length_penalty",
    "stop_strings",
    "min_length",
    "max_time",
)


def supports(model) -> tuple[bool, str]:
    """(whether StaticGreedyDecoder reproduces model.generate(do_sample=False), why not)."""
    lm = getattr(model, "model", None)
    if lm is None or not hasattr(lm, "language_model") or not hasattr(lm, "get_rope_index"):
        return False, "not a Qwen-VL-style model (model.language_model + get_rope_index)"
    gc = model.generation_config
    for name in _UNSUPPORTED:
        if getattr(gc, name, None):
            return False, f"generation_config.{name} is set"
    if getattr(model.config.get_text_config(), "use_sliding_window", False):
        return False, "sliding-window attention"
    return True, ""


class StaticGreedyDecoder:
    """Greedy decoding with a static KV cache and (on CUDA) one CUDA graph per decode shape."""

    def __init__(self, model, use_graphs: bool = True):
        self.model = model
        self.lm = model.model.language_model
        self.embed = model.get_input_embeddings()
        self.device = next(model.parameters()).device
        self.use_graphs = use_graphs and self.device.type == "cuda"
        gc = model.generation_config
        eos = gc.eos_token_id
        self.eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.pad = gc.pad_token_id if gc.pad_token_id is not None else (self.eos[0] if self.eos else 0)
        self.states: dict[tuple[int, int], _State] = {}
        self.profile = False  # benches: sync the device to time prefill, capture and decode
        self.timing: dict[str, float] = {}

    @torch.inference_mode()
    def generate(self, inputs: dict, max_new_tokens: int, record: list | None = None) -> torch.Tensor:
        """inputs: the processor's output (on the model's device) -> (B, T) new token ids,
        T <= max_new_tokens, pad after a sequence's EOS (as generate)."""
        gc = self.model.generation_config
        min_new = int(gc.min_new_tokens or 0)
        penalty = float(gc.repetition_penalty or 1.0)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        b, prompt = ids.shape
        cache_len = -(-(prompt + max_new_tokens) // ROUND) * ROUND
        st = self.state(b, cache_len)
        st.cache.reset()
        # 3D rope positions of the prompt; every later token is one past the prompt's largest
        rope = self.model.model.get_rope_index
        names = inspect.signature(rope).parameters
        pos, _ = rope(ids, **{k: v for k, v in inputs.items() if k in names and k != "input_ids"})
        clock = _Clock(self.profile, self.device)
        out = self.model(
            **inputs, position_ids=pos, past_key_values=st.cache, use_cache=True, logits_to_keep=1
        )
        prefill_s = clock.lap()
        st.pos.copy_((pos.amax(dim=(0, 2)) + 1).view(1, b, 1).expand(3, b, 1))
        st.mask.zero_()
        st.mask[:, 0, 0, :prompt] = mask.bool()
        st.slot.fill_(prompt)
        st.seen.zero_()
        if penalty != 1.0:  # prompt ids, left padding excluded (as generate's processor)
            vocab = st.seen.shape[1]
            marks = torch.zeros((b, vocab + 1), dtype=torch.bool, device=ids.device)
            st.seen.copy_(marks.scatter_(1, ids.masked_fill(mask == 0, vocab), True)[:, :vocab])
        st.done.zero_()
        st.step.zero_()
        st.out.fill_(self.pad)
        st.configure(min_new, penalty, self.eos, self.pad)
        st.record = record
        if record is not None and self.use_graphs:
            raise ValueError("record needs eager decoding (use_graphs=False)")
        st.choose(out.logits[:, -1])  # the first new token, from the prefill's logits
        capture_s = 0.0
        for t in range(1, max_new_tokens):
            if t % 32 == 0 and bool(st.done.all()):  # a rare sync: stop once every sequence ended
                break
            if self.use_graphs:
                if st.graph is None:
                    clock.lap()
                    st.capture(self._step)
                    capture_s = clock.lap()
                st.graph.replay()
            else:
                self._step(st)
        steps = int(st.step.item())
        self.timing = {
            "prefill_s": prefill_s,
            "capture_s": capture_s,
            "decode_s": clock.lap(),
            "steps": steps,
        }
        out = st.out[:, :steps].cpu()
        # generate stops at the step where the last sequence ended: drop columns past that
        ends = torch.isin(out, st.eos.cpu())
        last = torch.where(ends.any(1), ends.float().argmax(1), out.shape[1] - 1)
        return out[:, : int(last.max()) + 1]

    def state(self, b: int, cache_len: int) -> _State:
        if (b, cache_len) not in self.states:
            from transformers import StaticCache

            while len(self.states) >= KEEP_SHAPES:  # each holds a KV cache: drop the oldest
                self.states.pop(next(iter(self.states)))
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

            cache = StaticCache(config=self.model.config, max_cache_len=cache_len)
            vocab = self.model.get_output_embeddings().weight.shape[0]
            self.states[(b, cache_len)] = _State(cache, b, cache_len, vocab, self.device)
        return self.states[(b, cache_len)]

    def _step(self, st: _State) -> None:
        """One token for every sequence: feeds st.tok at st.slot, writes the next into st.out."""
        st.mask[:, 0, 0].index_fill_(1, st.slot, True)  # the new token sees itself
        h = self.embed(st.tok)  # (B, 1, hidden)
        hidden = self.lm(
            inputs_embeds=h,
            attention_mask={"full_attention": st.mask},
            position_ids=st.pos,
            past_key_values=st.cache,
            use_cache=True,
        ).last_hidden_state
        st.choose(self.model.lm_head(hidden[:, -1]))
        st.pos.add_(1)
        st.slot.add_(1)


class _Clock:
    """Seconds between laps, the device synced first; all zeros when off."""

    def __init__(self, on: bool, device: torch.device):
        self.on, self.device = on, device
        self.t = time.perf_counter()

    def lap(self) -> float:
        if not self.on:
            return 0.0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t, self.t = self.t, time.perf_counter()
        return self.t - t


class _State:
    """Static tensors of one (batch, cache length): what a captured graph reads and writes."""

    def __init__(self, cache, b: int, cache_len: int, vocab: int, device: torch.device):
        self.cache, self.graph = cache, None
        self.record: list[torch.Tensor] | None = None  # eager runs only: each step's scores
        self.tok = torch.zeros((b, 1), dtype=torch.long, device=device)  # last chosen token
        self.pos = torch.zeros((3, b, 1), dtype=torch.long, device=device)  # its rope position
        self.slot = torch.zeros((1,), dtype=torch.long, device=device)  # its cache slot
        self.mask = torch.zeros((b, 1, 1, cache_len), dtype=torch.bool, device=device)  # keys seen
        self.seen = torch.zeros((b, vocab), dtype=torch.bool, device=device)  # for the penalty
        self.done = torch.zeros((b,), dtype=torch.bool, device=device)
        self.step = torch.zeros((1,), dtype=torch.long, device=device)  # tokens chosen so far
        self.out = torch.zeros((b, cache_len), dtype=torch.long, device=device)

    def configure(self, min_new: int, penalty: float, eos: list[int], pad: int) -> None:
        self.min_new, self.penalty, self.pad = min_new, penalty, pad
        self.eos = torch.tensor(eos or [-1], device=self.tok.device)
        self.eos_cols = torch.zeros(self.seen.shape[1], dtype=torch.bool, device=self.tok.device)
        self.eos_cols[[e for e in eos if 0 <= e < self.seen.shape[1]]] = True

    def choose(self, logits: torch.Tensor) -> None:
        """(B, V) logits -> the next token, as generate's greedy search and its processors."""
        logits = logits.float()
        if self.penalty != 1.0:  # RepetitionPenaltyLogitsProcessor over prompt + generated ids
            hit = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
            logits = torch.where(self.seen, hit, logits)
        if self.min_new > 0:  # MinNewTokensLengthLogitsProcessor: no EOS before min_new tokens
            block = self.eos_cols[None, :] & (self.step < self.min_new)[:, None]  # (1|B, V)
            logits = logits.masked_fill(block, float("-inf"))
        if self.record is not None:  # tests: the processed scores, as generate's output_scores
            self.record.append(logits.clone())
        nxt = torch.where(self.done, self.pad, logits.argmax(dim=-1))  # (B,)
        self.out.index_copy_(1, self.step, nxt[:, None])
        self.done |= torch.isin(nxt, self.eos)
        if self.penalty != 1.0:
            self.seen.scatter_(1, nxt[:, None], True)
        self.tok.copy_(nxt[:, None])
        self.step.add_(1)

    def capture(self, step_fn) -> None:
        """Warm up on a side stream (restoring the state after), then capture one step."""
        lengths = [layer.cumulative_length for layer in self.cache.layers]  # the cache's write slot
        state = [
            self.tok,
            self.pos,
            self.slot,
            self.mask,
            self.seen,
            self.done,
            self.step,
            self.out,
            *lengths,
        ]
        keep = [t.clone() for t in state]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step_fn(self)
        torch.cuda.current_stream().wait_stream(side)
        for t, k in zip(state, keep, strict=True):
            t.copy_(k)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step_fn(self)
