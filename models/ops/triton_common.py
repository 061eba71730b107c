"""Shared pieces of the fused linear-attention kernels: Triton helpers, launch geometry and the
tile table per card. Imports cleanly where Triton is missing (``HAS_TRITON`` is then False).

RoPE rotates interleaved pairs (x[2i], x[2i+1]) of a (BLOCK_N, DP) tile in registers
(``rope``: split into halves, rotate, join). A pair-space variant (q, k read as packed 32-bit
pairs, the halves taken apart with integer shifts, no shuffles) was tried and measured slower on
an H200 (bench/NOTES_attention.md, v5): the shuffles are not what limits these kernels.

The angles come as one (N, D) table with cos and sin of pair i at columns 2i, 2i+1 (``rope_table``):
a tile of it has the shape and layout of a q or k tile, so it is read with the same wide loads
(v6; the two (N, D/2) tables needed one 2-byte shared-memory load per value, bench/NOTES_attention.md).

The five kernels are written in the jit helpers at the end, each piece once: program geometry
(``span``, ``key_chunk``), head pointers and masked tiles (``head_ptr``, ``load_tile``,
``store_tile``), ReLU + RoPE and its gradient (``relu_rope``, ``relu_rope_grad``), the block sums
a program reads (``block_state``) or writes (``store_partials``), and the output formula shared by
the forward and the backward's recomputation (``z_matrix``, ``attend``). Helpers are inlined: with
Triton 3.6 on sm_90 the main loops compile to the same SASS as the kernels written out did
(bench/NOTES_attention.md, 2026-12-01 refactor).
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
# warps and software-pipelining stages; "default" serves cards not listed. Kernels: state, out
# (forward); bwd_q (dq), bwd_ds (dS, dz partials), bwd_kv (backward). The v6 kernels were tuned on
# an H200 only, so "default" holds the same tiles until another card is measured (the v3 H100 table
# tuned kernels that no longer exist).
_V6_TILES = {  # per-kernel sweeps and bench/attention_gpu.py's sweep, NVIDIA H200, 2026-12-01 (NOTES, v6)
    "state": dict(BLOCK_N=32, num_warps=4, num_stages=3),
    "out": dict(BLOCK_N=64, num_warps=4, num_stages=3),
    "bwd_q": dict(BLOCK_N=64, num_warps=4, num_stages=2),
    "bwd_ds": dict(BLOCK_N=64, num_warps=4, num_stages=3),
    "bwd_kv": dict(BLOCK_N=64, num_warps=4, num_stages=2),
}
TILES_BY_CARD: dict[str, dict[str, dict]] = {"default": dict(_V6_TILES), "NVIDIA H200": dict(_V6_TILES)}
# float32 inputs at a padded head dim of 128: every tile is twice the bytes of bf16 and the
# 16-bit configs can exceed shared memory (232,448 B on Hopper). float32 is the exact test path.
TILES_FP32_WIDE = {
    "state": dict(BLOCK_N=64, num_warps=8, num_stages=2),
    "out": dict(BLOCK_N=64, num_warps=4, num_stages=1),
    "bwd_q": dict(BLOCK_N=32, num_warps=4, num_stages=1),
    "bwd_ds": dict(BLOCK_N=32, num_warps=4, num_stages=2),
    "bwd_kv": dict(BLOCK_N=64, num_warps=4, num_stages=1),
}
# per card: splits per block launch at least this many programs (key halves of the state and dS
# kernels count as programs)
MIN_PROGRAMS = {"default": 1056}


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


def key_chunks(dp: int) -> int:
    """Programs per (head, split) of the state / dS kernels: each sums RoPE(phi)^T v for DP/KCH key
    dims, halving the float32 accumulator (whole RoPE pairs: DP/KCH is even)."""
    return 2 if dp >= 64 else 1


def precision(x: torch.Tensor) -> str:
    # float32 inputs: exact float32 products (tests); 16-bit inputs: their own tensor-core path.
    return "ieee" if x.dtype == torch.float32 else "tf32"


def rope_table(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, D) table of the kernels: cos and sin of pair i at columns 2i, 2i+1; float32 for float32
    inputs, float16 (rel. error <= 2^-11, below the 2^-8 of bf16 inputs) for 16-bit inputs."""
    n, half = cos.shape
    cs = torch.empty(n, half, 2, device=cos.device,
                     dtype=torch.float32 if dtype == torch.float32 else torch.float16)  # (N, D/2, 2)
    cs[..., 0] = cos
    cs[..., 1] = sin
    return cs.view(n, 2 * half)  # (N, D)


def strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, token) strides of a (B, H, N, D) tensor whose last dim is contiguous."""
    return x.stride(0), x.stride(1), x.stride(2)


def dense_last(x: torch.Tensor) -> torch.Tensor:
    # kernels take any (B, H, N) strides, e.g. views of a (B, N, 3, H, D) qkv projection
    return x if x.stride(-1) == 1 else x.contiguous()


def launch(kernel, name, grid, *args, d, dp, ref, **constexprs):
    cfg = tiles(name, ref, dp)
    kernel[grid](
        *args,
        D=d,
        DP=dp,
        BLOCK_N=cfg["BLOCK_N"],
        PREC=precision(ref),
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
        **constexprs,
    )


def block_sums(sbuf, zbuf, dtype, state=None, reverse=False):
    """Sum the per-split partials (BH, nblk, nsplit, DP, DP) and (BH, nblk, nsplit, DP) over splits
    and then cumulatively over blocks (from the last block down when ``reverse``), starting from
    ``state`` (S0 (BH, d, d), z0 (BH, d) float32) if given; one launch.

    Returns S (BH, nblk, DP, DP) float32, S in ``dtype`` (the same tensor for float32) and z
    (BH, nblk, DP) float32."""
    bh, nblk, nsplit, dp, _ = sbuf.shape
    S = torch.empty(bh, nblk, dp, dp, device=sbuf.device, dtype=torch.float32)
    S16 = S if dtype == torch.float32 else torch.empty(S.shape, device=S.device, dtype=dtype)
    z = torch.empty(bh, nblk, dp, device=sbuf.device, dtype=torch.float32)
    ns = min(32, triton.next_power_of_2(nsplit))  # splits per load
    tile = min(dp * dp, 4096 // ns)  # (ns, tile) float32 values per load
    S0, z0 = state if state is not None else (S, z)  # unread without a state
    d = S0.shape[-1] if state is not None else dp
    _sum_kernel[(bh, dp * dp // tile + 1)](
        sbuf, zbuf, S0, z0, S, S16, z, nsplit, nblk, d, NS=ns, TILE=tile, DP=dp,
        HAS_STATE=state is not None, WRITE16=S16 is not S, REVERSE=reverse, num_warps=4,
    )
    return S, S16, z


if HAS_TRITON:

    @triton.jit
    def _sum_kernel(SBUF, ZBUF, S0, Z0, S, S16, Z, NSPLIT, NBLK, d, NS: tl.constexpr, TILE: tl.constexpr,
                    DP: tl.constexpr, HAS_STATE: tl.constexpr, WRITE16: tl.constexpr, REVERSE: tl.constexpr):
        """Grid (BH, DP*DP/TILE + 1): each program runs one TILE of S (the last program: z) over
        the blocks in order, adding each block's splits to a running float32 sum."""
        bh = tl.program_id(0)
        t = tl.program_id(1)
        sp = tl.arange(0, NS)[:, None]
        if t < DP * DP // TILE:
            offs = t * TILE + tl.arange(0, TILE)  # flat (row, col) of S
            acc = tl.zeros((TILE,), dtype=tl.float32)
            if HAS_STATE:
                r, c = offs // DP, offs % DP
                acc += tl.load(S0 + bh * d * d + r * d + c, mask=(r < d) & (c < d), other=0.0)
            for i in range(NBLK):
                blk = NBLK - 1 - i if REVERSE else i
                base = (bh * NBLK + blk) * NSPLIT
                for s0 in range(0, NSPLIT, NS):
                    m = s0 + sp < NSPLIT
                    part = tl.load(SBUF + (base + s0 + sp) * DP * DP + offs[None, :], mask=m, other=0.0)
                    acc += tl.sum(part, 0)  # (NS, TILE) -> (TILE,)
                out = (bh * NBLK + blk) * DP * DP + offs
                tl.store(S + out, acc)
                if WRITE16:
                    tl.store(S16 + out, acc.to(S16.dtype.element_ty))
        else:
            cols = tl.arange(0, DP)
            zacc = tl.zeros((DP,), dtype=tl.float32)
            if HAS_STATE:
                zacc += tl.load(Z0 + bh * d + cols, mask=cols < d, other=0.0)
            for j in range(NBLK):
                zblk = NBLK - 1 - j if REVERSE else j
                zbase = (bh * NBLK + zblk) * NSPLIT
                for z0 in range(0, NSPLIT, NS):
                    zm = z0 + sp < NSPLIT
                    zpart = tl.load(ZBUF + (zbase + z0 + sp) * DP + cols[None, :], mask=zm, other=0.0)
                    zacc += tl.sum(zpart, 0)  # (NS, DP) -> (DP,)
                tl.store(Z + (bh * NBLK + zblk) * DP + cols, zacc)

    @triton.jit
    def span(N, BS, SPLIT_LEN):
        """Token range [start, end) of this program: one split of one block."""
        blk = tl.program_id(2)
        start = blk * BS + tl.program_id(1) * SPLIT_LEN
        end = tl.minimum(tl.minimum(start + SPLIT_LEN, (blk + 1) * BS), N)
        return start, end

    @triton.jit
    def key_chunk(KCH: tl.constexpr, DK: tl.constexpr):
        """Head bh, first key dim k0 and key dims k0 + [0, DK) of a program of the grid
        (B*H*KCH, splits, blocks) (state and dS kernels): KCH programs per head, DK = DP / KCH."""
        bh = tl.program_id(0) // KCH
        k0 = (tl.program_id(0) % KCH) * DK
        return bh, k0, k0 + tl.arange(0, DK)

    @triton.jit
    def head_ptr(X, bh, H, sb, sh):
        """Start of head bh (of B*H) of a (B, H, N, D) tensor with batch and head strides sb, sh."""
        return X + (bh // H) * sb + (bh % H) * sh

    @triton.jit
    def load_tile(ptr, rows, sn, cols, end, D: tl.constexpr):
        """Tile (rows, cols) of one head's (N, D) values at token stride sn; rows >= end and
        cols >= D read 0, so they add nothing to any sum or product."""
        m = (rows < end)[:, None] & (cols < D)[None, :]
        return tl.load(ptr + rows[:, None] * sn + cols[None, :], mask=m, other=0.0)

    @triton.jit
    def store_tile(ptr, rows, sn, cols, end, D: tl.constexpr, x):
        """Write x (rows, cols) in ptr's dtype where rows < end and cols < D; load_tile's layout."""
        m = (rows < end)[:, None] & (cols < D)[None, :]
        tl.store(ptr + rows[:, None] * sn + cols[None, :], x.to(ptr.dtype.element_ty), mask=m)

    @triton.jit
    def rope(x, c, s, BLOCK_N: tl.constexpr, DP: tl.constexpr, INVERSE: tl.constexpr):
        """Rotate interleaved pairs of x (BLOCK_N, DP) by c, s (BLOCK_N, DP/2); INVERSE: by -angle."""
        x0, x1 = tl.split(tl.reshape(x, (BLOCK_N, DP // 2, 2)))  # 2 x (BLOCK_N, DP/2)
        if INVERSE:
            s = -s
        y0 = x0 * c - x1 * s
        y1 = x1 * c + x0 * s
        return tl.reshape(tl.join(y0, y1), (BLOCK_N, DP))

    @triton.jit
    def load_rope(cs_ptr, rows, N, c0, D: tl.constexpr, NC: tl.constexpr):
        """cos, sin (BLOCK_N, NC/2) as float32 for columns [c0, c0 + NC) of the (N, D) table.

        Rows past N read row N - 1 and columns past D read 0: their q or k values are 0, so any
        finite angle does. Clamping instead of masking rows keeps the load unpredicated."""
        r = tl.minimum(rows, N - 1)
        c = c0 + tl.arange(0, NC)
        cs = tl.load(cs_ptr + r[:, None] * D + c[None, :], mask=(c < D)[None, :], other=0.0)
        return tl.split(tl.reshape(cs.to(tl.float32), (rows.shape[0], NC // 2, 2)))

    @triton.jit
    def relu_rope(x, CS, rows, N, c0, D: tl.constexpr, BLOCK_N: tl.constexpr, NC: tl.constexpr):
        """phi = ReLU(x) and RoPE(phi), both float32 (BLOCK_N, NC), for a q or k tile x holding
        columns [c0, c0 + NC); also the tile's cos, sin, which relu_rope_grad takes."""
        phi = tl.maximum(x.to(tl.float32), 0.0)
        c, s = load_rope(CS, rows, N, c0, D, NC)
        return phi, rope(phi, c, s, BLOCK_N, NC, False), c, s

    @triton.jit
    def relu_rope_grad(x, drot, dphi, c, s, BLOCK_N: tl.constexpr, DP: tl.constexpr):
        """Gradient on x (BLOCK_N, DP) from drot on RoPE(ReLU(x)) plus dphi (broadcast) on ReLU(x):
        the inverse rotation (RoPE is orthogonal per pair), then ReLU's mask."""
        g = rope(drot, c, s, BLOCK_N, DP, True) + dphi
        return tl.where(x > 0.0, g, 0.0)

    @triton.jit
    def block_state(S, Z, bh, dt: tl.constexpr, DP: tl.constexpr):
        """This program's block sums: S_b (DP, DP) in dt and z_b (DP,) as stored, of (BH, nblk, DP, DP)
        and (BH, nblk, DP) tensors (S, z in the forward; dS, dz in the backward)."""
        cols = tl.arange(0, DP)
        st = (bh * tl.num_programs(2) + tl.program_id(2)) * DP
        Sb = tl.load(S + st * DP + cols[:, None] * DP + cols[None, :]).to(dt)
        return Sb, tl.load(Z + st + cols)

    @triton.jit
    def store_partials(SBUF, ZBUF, bh, kcols, acc, zt, DP: tl.constexpr):
        """Write a key chunk's sums acc (DK, DP) and zt (BLOCK_N, DK) summed over rows into this
        program's slot of the (BH, nblk, nsplit, DP, DP) and (BH, nblk, nsplit, DP) partial
        buffers (rows kcols)."""
        cols = tl.arange(0, DP)
        slot = (bh * tl.num_programs(2) + tl.program_id(2)) * tl.num_programs(1) + tl.program_id(1)
        tl.store(SBUF + slot * DP * DP + kcols[:, None] * DP + cols[None, :], acc)
        tl.store(ZBUF + slot * DP + kcols, tl.sum(zt, axis=0))

    @triton.jit
    def z_matrix(zb, dt: tl.constexpr):
        """(DP, 16) in dt: column 0 = z rounded to dt, column 1 = the rounding error, the rest 0.
        phi @ it, summed over its 16 columns, is phi . z to about float32 accuracy."""
        c16 = tl.arange(0, 16)[None, :]
        hi = zb.to(dt)
        lo = (zb - hi.to(tl.float32)).to(dt)
        return tl.where(c16 == 0, hi[:, None], tl.where(c16 == 1, lo[:, None], 0.0)).to(dt)

    @triton.jit
    def attend(phi, rot, Sb, Zm, eps, PREC: tl.constexpr):
        """out = RoPE(phi) S_b / (phi . z_b + eps) (BLOCK_N, DP) float32 and 1 / den (BLOCK_N,), from
        phi, rot (BLOCK_N, DP) float32, S_b (DP, DP) and Zm = z_matrix(z_b) in the input dtype.
        The forward's output and the backward's recomputation of it."""
        dt = Sb.dtype
        rden = 1.0 / (tl.sum(tl.dot(phi.to(dt), Zm, input_precision=PREC), axis=1) + eps)  # (BLOCK_N,)
        return tl.dot(rot.to(dt), Sb, input_precision=PREC) * rden[:, None], rden
