"""Shared pieces of the fused linear-attention kernels: Triton helpers, launch geometry and the
tile table per card. Imports cleanly where Triton is missing (``HAS_TRITON`` is then False).

Pair space. RoPE rotates interleaved pairs (x[2i], x[2i+1]). Instead of splitting a loaded tile
into its even and odd columns (a register shuffle through shared memory, the v3 kernels' main
cost), q and k are read as packed pairs: one 32-bit word holds two bf16/fp16 values (a 64-bit
word two float32), viewed on the host as an integer tensor of D/2 columns. ``unpack`` turns a
(BLOCK_N, D/2) tile of words into its even and odd halves with integer shifts, and every kernel
works on the halves; S and dS are read and written as their even and odd rows. Gradients dq,
dk are packed back the same way.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs: the module still imports, the op refuses to run
    triton = None
    tl = None
    HAS_TRITON = False

# Launch config per kernel, per card (torch.cuda.get_device_name): BLOCK_N tokens per tile,
# warps and software-pipelining stages. "default" serves cards not listed. The H200 entry is
# bench/attention_gpu.py's sweep on that card (bench/NOTES_attention.md); "default" is the
# H100-tuned v3 table, not re-swept for the pair-space kernels.
TILES_BY_CARD: dict[str, dict[str, dict]] = {
    "default": {
        "state": dict(BLOCK_N=128, num_warps=8, num_stages=2),
        "out": dict(BLOCK_N=64, num_warps=4, num_stages=2),
        "bwd_q": dict(BLOCK_N=64, num_warps=8, num_stages=1),
        "bwd_kv": dict(BLOCK_N=64, num_warps=4, num_stages=2),
    },
}
TILES_BY_CARD["NVIDIA H200"] = {k: dict(v) for k, v in TILES_BY_CARD["default"].items()}
# float32 inputs at a padded head dim of 128: every tile is twice the bytes of bf16 and the
# 16-bit configs can exceed shared memory (232,448 B on Hopper). float32 is the exact test path.
TILES_FP32_WIDE = {
    "state": dict(BLOCK_N=64, num_warps=8, num_stages=2),
    "out": dict(BLOCK_N=64, num_warps=4, num_stages=1),
    "bwd_q": dict(BLOCK_N=32, num_warps=4, num_stages=1),
    "bwd_kv": dict(BLOCK_N=64, num_warps=4, num_stages=1),
}
MIN_PROGRAMS = {"default": 1056}  # per card: splits per block launch at least this many programs


@functools.lru_cache(maxsize=16)
def card_of(index: int) -> str:
    return torch.cuda.get_device_name(index)


def card_table(device: torch.device, table: dict):
    name = card_of(device.index if device.index is not None else torch.cuda.current_device())
    return table.get(name, table["default"])


def tiles(name: str, x: torch.Tensor, dp: int) -> dict:
    """Launch config of one kernel for x's card and dtype (float32 at DP >= 128: the small table)."""
    if x.dtype == torch.float32 and dp >= 128:
        return TILES_FP32_WIDE[name]
    return card_table(x.device, TILES_BY_CARD)[name]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def geometry(n: int, block_size: int | None, bh: int, block_n: int, x: torch.Tensor):
    """Block size, block count, split length (multiple of block_n) and splits per block."""
    bs = n if block_size is None else min(block_size, n)
    nblk = cdiv(n, bs)
    want = max(1, cdiv(card_table(x.device, MIN_PROGRAMS), bh * nblk))  # splits per block
    split_len = cdiv(cdiv(bs, want), block_n) * block_n
    return bs, nblk, split_len, cdiv(bs, split_len)


def precision(x: torch.Tensor) -> str:
    # float32 inputs: exact float32 products (tests); 16-bit inputs: their own tensor-core path.
    return "ieee" if x.dtype == torch.float32 else "tf32"


PACK = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}
PAIR_DTYPE = {torch.bfloat16: torch.int32, torch.float16: torch.int32, torch.float32: torch.int64}


def pairs(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) float view -> (B, H, N, D/2) integer view: one word per RoPE pair."""
    return x.view(PAIR_DTYPE[x.dtype])


def tables(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """RoPE table in the dtype the kernels read: float32 for float32 inputs, float16 (rel. error
    <= 2^-11, below the 2^-8 of bf16 inputs) for 16-bit inputs: half the table bytes."""
    return t.to(torch.float32 if dtype == torch.float32 else torch.float16).contiguous()


def strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, token) strides of a (B, H, N, D) tensor whose last dim is contiguous."""
    return x.stride(0), x.stride(1), x.stride(2)


def dense_last(x: torch.Tensor) -> torch.Tensor:
    # kernels take any (B, H, N) strides, e.g. views of a (B, N, 3, H, D) qkv projection
    # and the pair view needs even strides and offset (always so for an even D)
    ok = x.stride(-1) == 1 and all(st % 2 == 0 for st in (*x.stride()[:-1], x.storage_offset()))
    return x if ok else x.contiguous()


def launch(kernel, name, grid, *args, d, dp, ref):
    cfg = tiles(name, ref, dp)
    kernel[grid](
        *args,
        D=d,
        DP=dp,
        HP=dp // 2,
        BLOCK_N=cfg["BLOCK_N"],
        PACK_KIND=PACK[ref.dtype],
        PREC=precision(ref),
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )


if HAS_TRITON:

    @triton.jit
    def span(N, BS, SPLIT_LEN):
        """Token range [start, end) of this program: one split of one block."""
        blk = tl.program_id(2)
        start = blk * BS + tl.program_id(1) * SPLIT_LEN
        end = tl.minimum(tl.minimum(start + SPLIT_LEN, (blk + 1) * BS), N)
        return start, end

    @triton.jit
    def unpack(x, PACK_KIND: tl.constexpr):
        """Words of packed pairs -> (even, odd) float32 halves (bf16 / fp16 / float32 pairs)."""
        if PACK_KIND == 0:  # bf16 is the top half of a float32: shift, then reinterpret
            lo = (x << 16).to(tl.float32, bitcast=True)
            hi = (x & -65536).to(tl.float32, bitcast=True)
        elif PACK_KIND == 1:
            lo = x.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
            hi = (x >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        else:
            lo = x.to(tl.int32).to(tl.float32, bitcast=True)
            hi = (x >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        return lo, hi

    @triton.jit
    def pack(lo, hi, PACK_KIND: tl.constexpr):
        """(even, odd) float32 halves -> words of packed pairs in the input dtype."""
        if PACK_KIND == 0:
            a = lo.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) & 65535
            b = hi.to(tl.bfloat16).to(tl.int16, bitcast=True).to(tl.int32) << 16
        elif PACK_KIND == 1:
            a = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 65535
            b = hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) << 16
        else:
            a = lo.to(tl.int32, bitcast=True).to(tl.int64) & 4294967295
            b = hi.to(tl.int32, bitcast=True).to(tl.int64) << 32
        return a | b

    @triton.jit
    def load_pairs(ptr, rows, sn, rmask, HALF: tl.constexpr, HP: tl.constexpr, PACK_KIND: tl.constexpr):
        """(even, odd) float32 halves (BLOCK_N, HP) of a tile of packed rows."""
        p = tl.arange(0, HP)
        x = tl.load(ptr + rows[:, None] * sn + p[None, :], mask=rmask[:, None] & (p[None, :] < HALF), other=0)
        return unpack(x, PACK_KIND)

    @triton.jit
    def store_pairs(ptr, rows, sn, rmask, lo, hi, HALF: tl.constexpr, HP: tl.constexpr,
                    PACK_KIND: tl.constexpr):
        p = tl.arange(0, HP)
        tl.store(ptr + rows[:, None] * sn + p[None, :], pack(lo, hi, PACK_KIND),
                 mask=rmask[:, None] & (p[None, :] < HALF))

    @triton.jit
    def load_tables(cos_ptr, sin_ptr, rows, rmask, HALF: tl.constexpr, HP: tl.constexpr):
        """cos, sin tiles (BLOCK_N, HP) of the (N, HALF) tables as float32; padding rotates by 0."""
        p = tl.arange(0, HP)
        offs = rows[:, None] * HALF + p[None, :]
        m = rmask[:, None] & (p[None, :] < HALF)
        c = tl.load(cos_ptr + offs, mask=m, other=1.0).to(tl.float32)
        return c, tl.load(sin_ptr + offs, mask=m, other=0.0).to(tl.float32)

    @triton.jit
    def load_rows(ptr, DP: tl.constexpr, HP: tl.constexpr):
        """Even and odd rows (HP, DP) each of a (DP, DP) float32 matrix at ptr."""
        p = tl.arange(0, HP)
        cols = tl.arange(0, DP)
        even = tl.load(ptr + (2 * p)[:, None] * DP + cols[None, :])
        return even, tl.load(ptr + (2 * p + 1)[:, None] * DP + cols[None, :])

    @triton.jit
    def store_rows(ptr, even, odd, DP: tl.constexpr, HP: tl.constexpr):
        p = tl.arange(0, HP)
        cols = tl.arange(0, DP)
        tl.store(ptr + (2 * p)[:, None] * DP + cols[None, :], even)
        tl.store(ptr + (2 * p + 1)[:, None] * DP + cols[None, :], odd)

    @triton.jit
    def store_halves(ptr, even, odd, HP: tl.constexpr):
        p = tl.arange(0, HP)
        tl.store(ptr + 2 * p, even)
        tl.store(ptr + 2 * p + 1, odd)

    @triton.jit
    def load_halves(ptr, HP: tl.constexpr):
        p = tl.arange(0, HP)
        return tl.load(ptr + 2 * p), tl.load(ptr + 2 * p + 1)
