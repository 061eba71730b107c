"""Pieces of bench/train_gpu_smoke.py: counting which linear-attention backend runs, phase
bookkeeping, the tiny shards and text encoder it trains on, mp4 checks and the summary table."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# Counting which linear-attention backend runs


COUNTS = {"triton_fwd": 0, "triton_bwd": 0, "fallback_fwd": 0}
DTYPES: set[str] = set()


def instrument_backends() -> None:
    """Count calls of the fused Triton entry and its autograd backward, and of the PyTorch
    fallbacks, as dispatched by models.ops.linear_attention (which imports the Triton entry at
    call time, so patching the module attribute is seen)."""
    from models import ops

    for name, fn in list(ops.BACKENDS.items()):
        def wrapped(*a, _fn=fn, **k):
            COUNTS["fallback_fwd"] += 1
            return _fn(*a, **k)
        ops.BACKENDS[name] = wrapped
    if not ops.triton_available():
        return
    from models.ops import triton_linear_attn as tla

    fused = tla.linear_attention

    def counted(*a, **k):
        COUNTS["triton_fwd"] += 1
        DTYPES.add(str(a[0].dtype).removeprefix("torch."))
        return fused(*a, **k)

    tla.linear_attention = counted
    bwd = tla._LinearAttention.backward

    def counted_bwd(ctx, *grads):
        COUNTS["triton_bwd"] += 1
        return bwd(ctx, *grads)

    tla._LinearAttention.backward = staticmethod(counted_bwd)


def take_counts() -> dict:
    out = {**COUNTS, "triton_dtypes": sorted(DTYPES)}
    for k in COUNTS:
        COUNTS[k] = 0
    DTYPES.clear()
    return out


# --------------------------------------------------------------------------------------------
# Phases

RESULTS: dict = {"phases": {}}
"""filled by the phases; the JSON of the run"""


@contextlib.contextmanager
def phase(name: str):
    rec = RESULTS["phases"].setdefault(name, {})
    t0 = time.perf_counter()
    print(f"--- {name}", flush=True)
    try:
        yield rec
        rec["ok"] = True
    except Exception as exc:  # noqa: BLE001 - record and go on with the next phase
        rec["ok"] = False
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc()[-4000:]
        print(rec["traceback"], flush=True)
    finally:
        rec["wall_s"] = round(time.perf_counter() - t0, 2)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None


CLIPS = [  # (key, kind, width, height, frames, tar)
    ("c00", "moving", 456, 256, 24, 0), ("c01", "static", 456, 256, 24, 0),
    ("c02", "text", 456, 256, 24, 0), ("c03", "cuts", 456, 256, 24, 0),
    ("c04", "moving", 456, 256, 24, 1), ("c05", "text", 456, 256, 24, 1),
    ("c06", "moving", 456, 256, 24, 1), ("c07", "static", 456, 256, 24, 1),
]


def write_shards(root: Path) -> dict:
    import webdataset as wds

    from curation.demo_frames import render_frames
    from filters.video import encode_mp4

    tier = root / "shards" / "256p"
    tier.mkdir(parents=True, exist_ok=True)
    writers = [wds.TarWriter(str(tier / f"g{i}-000.tar")) for i in range(2)]
    nbytes = 0
    for i, (key, kind, w, h, n, tar) in enumerate(CLIPS):
        cuts = (n // 2,) if kind == "cuts" else ()
        mp4 = encode_mp4(list(render_frames(kind, n, (w, h), seed=i, cuts=cuts)), 24, crf=23)
        nbytes += len(mp4)
        meta = {"clip": {"clip_id": key}, "video": {"video_id": "v"}, "scores": {"motion_mean": 1.5 * i},
                "decision": {"tier": "256p", "keep": True},
                "shard": {"tier": "256p", "width": w, "height": h, "fps": 24.0, "n_frames": n}}
        writers[tar].write({"__key__": key, "mp4": mp4, "txt": f"a {kind} scene", "json": meta})
    for wr in writers:
        wr.close()
    return {"clips": len(CLIPS), "tars": len(writers), "mp4_bytes": nbytes}


def write_tiny_bert(folder: Path, dim: int = 64) -> str:
    """A 1-layer random BERT (fixed seed) + a character-level WordPiece vocab, saved as a local
    transformers folder: text_encoder.path points here."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'-")
    words = ["a", "scene", "moving", "static", "text", "cuts", "motion", "score", "the", "of"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words,
             *[c for c in chars if c not in words], *[f"##{c}" for c in chars]]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(1234)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=dim, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=2 * dim, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(str(folder))
    return str(folder)


def metrics_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def step_stats(rows: list[dict], skip: int, t_start: float) -> dict:
    """Step wall time from consecutive metrics rows (log_every=1; loss.item() syncs each step)."""
    dts = [b["time"] - a["time"] for a, b in zip(rows, rows[1:], strict=False)]
    data = [dt * b["data_wait_frac"] for dt, b in zip(dts, rows[1:], strict=True)]
    dts, data = dts[skip:] or dts, data[skip:] or data
    if not dts:
        return {}
    return {"step_ms_median": round(1000 * statistics.median(dts), 2),
            "data_ms_median": round(1000 * statistics.median(data), 2),
            "first_step_s": round(rows[0]["time"] - t_start, 3)}


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def decode_mp4(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # (T, H, W, 3)


def video_checks(path: Path, want_frames: int, hw: tuple[int, int]) -> dict:
    frames = decode_mp4(path)
    rec = {"mp4_bytes": path.stat().st_size, "frames": int(frames.shape[0]),
           "frame_hw": list(frames.shape[1:3]), "pixel_mean": round(float(frames.mean()), 2),
           "pixel_std": round(float(frames.std()), 2),
           "frame_to_frame_mad": round(float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()), 3)}
    assert frames.shape[0] == want_frames, f"{frames.shape[0]} frames in the mp4, want {want_frames}"
    assert tuple(frames.shape[1:3]) == hw, f"frame size {frames.shape[1:3]}, want {hw}"
    assert frames.std() > 0, "the video is one flat colour"
    return rec


def free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def print_table(R: dict) -> None:
    P = R["phases"]
    print(f"\ncard: {R['card']}   torch {R['torch']}   triton {R['triton']}   all_ok={R.get('all_ok')}")
    print(f"{'phase':<17}{'ok':<4}{'wall s':>8}  details")
    for name, p in P.items():
        keys = {
            "probe": ("auto_dispatch", "autocast_rms_norm_dtype", "mixed_dtype_fused_call"),
            "tiny": ("params", "steps", "loss_first5_mean", "loss_last5_mean", "step_ms_median",
                     "first_step_s", "peak_gib", "triton_fwd_per_step", "ema_vs_model_max_abs_diff"),
            "resume": ("resumed_at", "steps", "first_step_rel_diff", "max_rel_diff", "data_state_equal"),
            "mid_gradckpt": ("params", "tokens_per_step", "steps", "loss_first", "loss_last",
                             "step_ms_median", "first_step_s", "peak_gib", "attn_fwd_per_step"),
            "sample_cli": ("blocks", "frames", "frame_hw", "dtype", "elapsed_s", "pixel_std", "state_bytes"),
            "sample_clip": ("frames", "dtype", "elapsed_s", "pixel_std"),
        }
        keys["mid_no_gradckpt"] = keys["mid_gradckpt"]
        detail = ", ".join(f"{k}={p[k]}" for k in keys.get(name, ()) if k in p)
        if not p.get("ok"):
            detail = p.get("error", "")[:300]
        print(f"{name:<17}{'yes' if p.get('ok') else 'NO':<4}{p.get('wall_s', 0):>8}  {detail}")
