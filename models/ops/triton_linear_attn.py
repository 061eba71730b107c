"""Fused Triton kernels for ReLU linear attention with RoPE on the numerator (CUDA only).

Same contract as ``models.ops.naive.linear_attention`` (shapes, block_size, eps, float32
accumulation); differentiable through ``torch.autograd.Function``. Imports cleanly where Triton
is missing: ``HAS_TRITON`` is then False and calling ``linear_attention`` raises.

Plan (full attention is block-causal with one block of N tokens):

forward
  1. ``_state_kernel``: grid (B*H, splits, blocks). Each program sums RoPE(phi(k))^T v and
     phi(k) over one split of one block: (D, D) and (D,) partial sums in float32.
  2. PyTorch: sum the splits, cumulative sum over blocks -> S_b, z_b per block (tiny tensors).
  3. ``_out_kernel``: grid (B*H, tiles, blocks): out = RoPE(phi(q)) S_b / (phi(q) . z_b + eps).
backward
  4. ``_bwd_q_kernel``: grid (B*H, splits, blocks): recomputes out, writes dq, and sums the
     query-side gradients dS = RoPE(phi(q))^T dnum and dz = sum dden phi(q) per split.
  5. PyTorch: sum the splits, reverse cumulative sum over blocks (block b's keys are seen by the
     queries of blocks >= b).
  6. ``_bwd_kv_kernel``: grid (B*H, tiles, blocks): dk, dv from dS_b, dz_b.

Each input is read once per pass and each output written once, so the forward moves the memory
floor of 4 N H D elements plus the (N, D/2) RoPE tables; B*H is the fastest grid axis so that
programs of all heads that share RoPE rows run together and hit them in L2. The head dim is
padded to a power of two (112 -> 128) with masked loads.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs: the module still imports, the op refuses to run
    triton = None
    tl = None
    HAS_TRITON = False

# Tile sizes and warps per kernel: the fastest of bench/attention_gpu.py's sweep on an H100 at
# 75,600 tokens x 20 heads x 112 (bf16); see bench/NOTES_attention.md.
TILES = {
    "state": dict(BLOCK_N=128, num_warps=8, num_stages=2),
    "out": dict(BLOCK_N=64, num_warps=4, num_stages=2),
    "bwd_q": dict(BLOCK_N=64, num_warps=8, num_stages=1),
    "bwd_kv": dict(BLOCK_N=64, num_warps=4, num_stages=2),
}
# float32 inputs at a padded head dim of 128 (D > 64): every tile is twice the bytes of bf16, and
# the bf16 configs above need up to 256 KB of shared memory (state: 262,144 > 232,448 on an
# H100). These keep each kernel <= ~131 KB at DP=128 (Triton 3.8 compiled for sm_90: state 131,072,
# out 98,432, bwd_q 106,496, bwd_kv 131,072 bytes). float32 is the exact test path, not the fast one.
TILES_FP32_WIDE = {
    "state": dict(BLOCK_N=64, num_warps=8, num_stages=2),
    "out": dict(BLOCK_N=64, num_warps=4, num_stages=1),
    "bwd_q": dict(BLOCK_N=32, num_warps=4, num_stages=1),
    "bwd_kv": dict(BLOCK_N=64, num_warps=4, num_stages=1),
}
MIN_PROGRAMS = 1056  # splits per block are chosen to launch at least this many programs (8 per SM)


if HAS_TRITON:

    @triton.jit
    def _rope(x, c, s, BLOCK_N: tl.constexpr, DP: tl.constexpr, INVERSE: tl.constexpr):
        """Rotate interleaved pairs of x (BLOCK_N, DP) by c, s (BLOCK_N, DP/2); INVERSE: by -angle."""
        x0, x1 = tl.split(tl.reshape(x, (BLOCK_N, DP // 2, 2)))  # 2 x (BLOCK_N, DP/2)
        if INVERSE:
            s = -s
        y0 = x0 * c - x1 * s
        y1 = x1 * c + x0 * s
        return tl.reshape(tl.join(y0, y1), (BLOCK_N, DP))

    @triton.jit
    def _load_rope(cos_ptr, sin_ptr, rows, rmask, HALF: tl.constexpr, DP: tl.constexpr):
        """cos, sin tiles (BLOCK_N, DP/2) of the (N, HALF) tables as float32; padding rotates by 0."""
        pairs = tl.arange(0, DP // 2)
        offs = rows[:, None] * HALF + pairs[None, :]
        m = rmask[:, None] & (pairs[None, :] < HALF)
        c = tl.load(cos_ptr + offs, mask=m, other=1.0).to(tl.float32)
        return c, tl.load(sin_ptr + offs, mask=m, other=0.0).to(tl.float32)

    @triton.jit
    def _span(N, BS, SPLIT_LEN):
        """Token range [start, end) of this program: one split of one block."""
        blk = tl.program_id(2)
        start = blk * BS + tl.program_id(1) * SPLIT_LEN
        end = tl.minimum(tl.minimum(start + SPLIT_LEN, (blk + 1) * BS), N)
        return start, end

    @triton.jit
    def _state_kernel(
        K,
        skb,
        skh,
        skn,
        V,
        svb,
        svh,
        svn,
        COS,
        SIN,
        SBUF,
        ZBUF,
        H,
        N,
        BS,
        SPLIT_LEN,
        D: tl.constexpr,
        DP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PREC: tl.constexpr,
    ):
        bh = tl.program_id(0)
        start, end = _span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        cmask = cols[None, :] < D
        k_ptr = K + (bh // H) * skb + (bh % H) * skh
        v_ptr = V + (bh // H) * svb + (bh % H) * svh
        S = tl.zeros((DP, DP), dtype=tl.float32)
        z = tl.zeros((DP,), dtype=tl.float32)
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            rmask = rows < end
            k = tl.load(k_ptr + rows[:, None] * skn + cols[None, :], mask=rmask[:, None] & cmask, other=0.0)
            v = tl.load(v_ptr + rows[:, None] * svn + cols[None, :], mask=rmask[:, None] & cmask, other=0.0)
            phi = tl.maximum(k.to(tl.float32), 0.0)  # (BLOCK_N, DP)
            c, s = _load_rope(COS, SIN, rows, rmask, D // 2, DP)
            rot = _rope(phi, c, s, BLOCK_N, DP, False)
            S += tl.dot(tl.trans(rot.to(v.dtype)), v, input_precision=PREC)  # (DP, DP)
            z += tl.sum(phi, axis=0)
        slot = (bh * tl.num_programs(2) + tl.program_id(2)) * tl.num_programs(1) + tl.program_id(1)
        tl.store(SBUF + slot * DP * DP + cols[:, None] * DP + cols[None, :], S)
        tl.store(ZBUF + slot * DP + cols, z)

    @triton.jit
    def _out_kernel(
        Q,
        sqb,
        sqh,
        sqn,
        OUT,
        sob,
        soh,
        son,
        COS,
        SIN,
        S,
        Z,
        H,
        N,
        BS,
        SPLIT_LEN,
        eps,
        D: tl.constexpr,
        DP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PREC: tl.constexpr,
    ):
        bh = tl.program_id(0)
        start, end = _span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        cmask = cols[None, :] < D
        q_ptr = Q + (bh // H) * sqb + (bh % H) * sqh
        o_ptr = OUT + (bh // H) * sob + (bh % H) * soh
        st = (bh * tl.num_programs(2) + tl.program_id(2)) * DP
        Sb = tl.load(S + st * DP + cols[:, None] * DP + cols[None, :]).to(
            Q.dtype.element_ty
        )  # (DP, DP), once
        zb = tl.load(Z + st + cols)  # (DP,)
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            m = (rows < end)[:, None] & cmask
            q = tl.load(q_ptr + rows[:, None] * sqn + cols[None, :], mask=m, other=0.0)
            phi = tl.maximum(q.to(tl.float32), 0.0)
            c, s = _load_rope(COS, SIN, rows, rows < end, D // 2, DP)
            rot = _rope(phi, c, s, BLOCK_N, DP, False)
            den = tl.sum(phi * zb[None, :], axis=1) + eps  # (BLOCK_N,)
            num = tl.dot(rot.to(q.dtype), Sb, input_precision=PREC)  # (BLOCK_N, DP)
            tl.store(
                o_ptr + rows[:, None] * son + cols[None, :],
                (num / den[:, None]).to(OUT.dtype.element_ty),
                mask=m,
            )

    @triton.jit
    def _bwd_q_kernel(
        Q,
        sqb,
        sqh,
        sqn,
        DO,
        sdb,
        sdh,
        sdn,
        DQ,
        sgb,
        sgh,
        sgn,
        COS,
        SIN,
        S,
        Z,
        DSBUF,
        DZBUF,
        H,
        N,
        BS,
        SPLIT_LEN,
        eps,
        D: tl.constexpr,
        DP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PREC: tl.constexpr,
    ):
        bh = tl.program_id(0)
        start, end = _span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        cmask = cols[None, :] < D
        dt = Q.dtype.element_ty
        st = (bh * tl.num_programs(2) + tl.program_id(2)) * DP
        Sb = tl.load(S + st * DP + cols[:, None] * DP + cols[None, :]).to(dt)  # (DP, DP)
        SbT = tl.trans(Sb)
        zb = tl.load(Z + st + cols)
        q_ptr = Q + (bh // H) * sqb + (bh % H) * sqh
        do_ptr = DO + (bh // H) * sdb + (bh % H) * sdh
        dq_ptr = DQ + (bh // H) * sgb + (bh % H) * sgh
        dS = tl.zeros((DP, DP), dtype=tl.float32)
        dz = tl.zeros((DP,), dtype=tl.float32)
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            m = (rows < end)[:, None] & cmask
            q = tl.load(q_ptr + rows[:, None] * sqn + cols[None, :], mask=m, other=0.0).to(tl.float32)
            do = tl.load(do_ptr + rows[:, None] * sdn + cols[None, :], mask=m, other=0.0).to(tl.float32)
            phi = tl.maximum(q, 0.0)
            c, s = _load_rope(COS, SIN, rows, rows < end, D // 2, DP)
            rot = _rope(phi, c, s, BLOCK_N, DP, False).to(dt)
            den = tl.sum(phi * zb[None, :], axis=1) + eps  # (BLOCK_N,)
            out = tl.dot(rot, Sb, input_precision=PREC) / den[:, None]  # recomputed (BLOCK_N, DP)
            dnum = (do / den[:, None]).to(dt)
            dden = -tl.sum(do * out, axis=1) / den  # (BLOCK_N,)
            drot = tl.dot(dnum, SbT, input_precision=PREC)  # (BLOCK_N, DP)
            dphi = _rope(drot, c, s, BLOCK_N, DP, True) + dden[:, None] * zb[None, :]
            dq = tl.where(q > 0.0, dphi, 0.0)
            tl.store(dq_ptr + rows[:, None] * sgn + cols[None, :], dq.to(DQ.dtype.element_ty), mask=m)
            dS += tl.dot(tl.trans(rot), dnum, input_precision=PREC)
            dz += tl.sum(dden[:, None] * phi, axis=0)
        slot = (bh * tl.num_programs(2) + tl.program_id(2)) * tl.num_programs(1) + tl.program_id(1)
        tl.store(DSBUF + slot * DP * DP + cols[:, None] * DP + cols[None, :], dS)
        tl.store(DZBUF + slot * DP + cols, dz)

    @triton.jit
    def _bwd_kv_kernel(
        K,
        skb,
        skh,
        skn,
        V,
        svb,
        svh,
        svn,
        DK,
        sgb,
        sgh,
        sgn,
        DV,
        swb,
        swh,
        swn,
        COS,
        SIN,
        DS,
        DZ,
        H,
        N,
        BS,
        SPLIT_LEN,
        D: tl.constexpr,
        DP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PREC: tl.constexpr,
    ):
        bh = tl.program_id(0)
        start, end = _span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        cmask = cols[None, :] < D
        dt = K.dtype.element_ty
        st = (bh * tl.num_programs(2) + tl.program_id(2)) * DP
        dSb = tl.load(DS + st * DP + cols[:, None] * DP + cols[None, :]).to(dt)  # (DP, DP)
        dSbT = tl.trans(dSb)
        dzb = tl.load(DZ + st + cols)
        b, h = bh // H, bh % H
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            m = (rows < end)[:, None] & cmask
            k = tl.load(K + b * skb + h * skh + rows[:, None] * skn + cols[None, :], mask=m, other=0.0).to(
                tl.float32
            )
            v = tl.load(V + b * svb + h * svh + rows[:, None] * svn + cols[None, :], mask=m, other=0.0)
            phi = tl.maximum(k, 0.0)
            c, s = _load_rope(COS, SIN, rows, rows < end, D // 2, DP)
            rot = _rope(phi, c, s, BLOCK_N, DP, False)
            drot = tl.dot(v.to(dt), dSbT, input_precision=PREC)  # (BLOCK_N, DP)
            dv = tl.dot(rot.to(dt), dSb, input_precision=PREC)  # (BLOCK_N, DP)
            dphi = _rope(drot, c, s, BLOCK_N, DP, True) + dzb[None, :]
            dk = tl.where(k > 0.0, dphi, 0.0)
            tl.store(
                DK + b * sgb + h * sgh + rows[:, None] * sgn + cols[None, :],
                dk.to(DK.dtype.element_ty),
                mask=m,
            )
            tl.store(
                DV + b * swb + h * swh + rows[:, None] * swn + cols[None, :],
                dv.to(DV.dtype.element_ty),
                mask=m,
            )


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _geometry(n: int, block_size: int | None, bh: int, block_n: int):
    """Block size, block count, split length (multiple of block_n) and splits per block."""
    bs = n if block_size is None else min(block_size, n)
    nblk = _cdiv(n, bs)
    want = max(1, _cdiv(MIN_PROGRAMS, bh * nblk))  # splits per block to fill the GPU
    split_len = _cdiv(_cdiv(bs, want), block_n) * block_n
    return bs, nblk, split_len, _cdiv(bs, split_len)


def _precision(x: torch.Tensor) -> str:
    # float32 inputs: exact float32 products (tests); 16-bit inputs: their own tensor-core path.
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _tables(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """RoPE table in the dtype the kernels read: float32 for float32 inputs, float16 (11-bit
    mantissa, rel. error <= 2^-11, below the 2^-8 of bf16 inputs) for 16-bit inputs, which
    halves the table bytes each tile loads next to its q or k tile."""
    return t.to(torch.float32 if dtype == torch.float32 else torch.float16).contiguous()


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, token) strides of a (B, H, N, D) tensor whose last dim is contiguous."""
    return x.stride(0), x.stride(1), x.stride(2)


def _dense_last(x: torch.Tensor) -> torch.Tensor:
    # kernels take any (B, H, N) strides, e.g. views of a (B, N, 3, H, D) qkv projection
    return x if x.stride(-1) == 1 else x.contiguous()


def _tiles(name: str, dtype: torch.dtype, dp: int) -> dict:
    """Launch config of one kernel: the tuned (16-bit) TILES, or TILES_FP32_WIDE where float32
    tiles at DP >= 128 would not fit shared memory."""
    return TILES_FP32_WIDE[name] if dtype == torch.float32 and dp >= 128 else TILES[name]


def _launch(kernel, name, grid_bh, nsplit, nblk, *args, d, dp, ref):
    cfg = _tiles(name, ref.dtype, dp)
    kernel[(grid_bh, nsplit, nblk)](
        *args,
        D=d,
        DP=dp,
        BLOCK_N=cfg["BLOCK_N"],
        PREC=_precision(ref),
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cos, sin, block_size, eps):
        b, h, n, d = q.shape
        q, k, v = _dense_last(q), _dense_last(k), _dense_last(v)
        cos, sin = _tables(cos, q.dtype), _tables(sin, q.dtype)
        dp = max(16, triton.next_power_of_2(d))
        bs, nblk, split_len, nsplit = _geometry(n, block_size, b * h, _tiles("state", q.dtype, dp)["BLOCK_N"])
        sbuf = torch.empty(b * h, nblk, nsplit, dp, dp, device=q.device, dtype=torch.float32)
        zbuf = torch.empty(b * h, nblk, nsplit, dp, device=q.device, dtype=torch.float32)
        _launch(
            _state_kernel,
            "state",
            b * h,
            nsplit,
            nblk,
            k,
            *_strides(k),
            v,
            *_strides(v),
            cos,
            sin,
            sbuf,
            zbuf,
            h,
            n,
            bs,
            split_len,
            d=d,
            dp=dp,
            ref=k,
        )
        S = sbuf.sum(2).cumsum(1)  # (BH, nblk, DP, DP): sums over all blocks <= b
        z = zbuf.sum(2).cumsum(1)  # (BH, nblk, DP)
        # output laid out (B, N, H, D) so that merging heads afterwards is a free view
        o = torch.empty(b, n, h, d, device=q.device, dtype=q.dtype).transpose(1, 2)  # (B, H, N, D) view
        _, _, split_len, nsplit = _geometry(n, bs, b * h, _tiles("out", q.dtype, dp)["BLOCK_N"])
        _launch(
            _out_kernel,
            "out",
            b * h,
            nsplit,
            nblk,
            q,
            *_strides(q),
            o,
            *_strides(o),
            cos,
            sin,
            S,
            z,
            h,
            n,
            bs,
            split_len,
            eps,
            d=d,
            dp=dp,
            ref=q,
        )
        ctx.save_for_backward(q, k, v, cos, sin, S, z)
        ctx.bs, ctx.nblk, ctx.eps = bs, nblk, eps
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, cos, sin, S, z = ctx.saved_tensors
        b, h, n, d = q.shape
        bs, nblk, dp = ctx.bs, ctx.nblk, S.shape[-1]
        do = _dense_last(do)
        _, _, split_len, nsplit = _geometry(n, bs, b * h, _tiles("bwd_q", q.dtype, dp)["BLOCK_N"])
        dq = torch.empty_like(q)
        dsbuf = torch.empty(b * h, nblk, nsplit, dp, dp, device=q.device, dtype=torch.float32)
        dzbuf = torch.empty(b * h, nblk, nsplit, dp, device=q.device, dtype=torch.float32)
        _launch(
            _bwd_q_kernel,
            "bwd_q",
            b * h,
            nsplit,
            nblk,
            q,
            *_strides(q),
            do,
            *_strides(do),
            dq,
            *_strides(dq),
            cos,
            sin,
            S,
            z,
            dsbuf,
            dzbuf,
            h,
            n,
            bs,
            split_len,
            ctx.eps,
            d=d,
            dp=dp,
            ref=q,
        )
        # keys of block b are seen by the queries of blocks >= b: reverse cumulative sum
        dS = dsbuf.sum(2).flip(1).cumsum(1).flip(1).contiguous()  # (BH, nblk, DP, DP)
        dz = dzbuf.sum(2).flip(1).cumsum(1).flip(1).contiguous()  # (BH, nblk, DP)
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        _, _, split_len, nsplit = _geometry(n, bs, b * h, _tiles("bwd_kv", q.dtype, dp)["BLOCK_N"])
        _launch(
            _bwd_kv_kernel,
            "bwd_kv",
            b * h,
            nsplit,
            nblk,
            k,
            *_strides(k),
            v,
            *_strides(v),
            dk,
            *_strides(dk),
            dv,
            *_strides(dv),
            cos,
            sin,
            dS,
            dz,
            h,
            n,
            bs,
            split_len,
            d=d,
            dp=dp,
            ref=k,
        )
        return dq, dk, dv, None, None, None, None


def linear_attention(q, k, v, cos, sin, block_size: int | None = None, eps: float = 1e-6):
    """Fused full / block-causal linear attention; contract of ``models.ops.naive``.

    Needs CUDA tensors and Triton. q, k, v: (B, H, N, D) of one float dtype (float32, bfloat16
    or float16), any strides over (B, H, N) (e.g. head-split views of a fused projection),
    D <= 128 and even; cos, sin: (N, D // 2). Returns (B, H, N, D) in q's dtype, stored as
    (B, N, H, D) memory so ``out.transpose(1, 2).reshape(B, N, H * D)`` is free.
    """
    if not HAS_TRITON:
        raise RuntimeError(
            "linear attention backend 'triton' needs the triton package; use backend='chunked'"
        )
    if not q.is_cuda:
        raise RuntimeError(
            "linear attention backend 'triton' needs CUDA tensors; use backend='chunked' on CPU"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            "q, k, v must share shape and dtype, got "
            f"{q.shape}/{q.dtype}, {k.shape}/{k.dtype}, {v.shape}/{v.dtype}"
        )
    d = q.shape[-1]
    if d % 2 or d > 128:
        raise ValueError(f"head dim must be even and <= 128 for the fused kernels, got {d}")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1 or None, got {block_size}")
    return _LinearAttention.apply(q, k, v, cos, sin, block_size, float(eps))
