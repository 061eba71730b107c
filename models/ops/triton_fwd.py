"""Forward kernels of the fused linear attention.

  1. ``_state_kernel``: grid (B*H*KCH, splits, blocks). Each program sums RoPE(phi(k))^T v and
     phi(k) over one split of one block for DP/KCH of the key dims: (DP/KCH, DP) and (DP/KCH,)
     partial sums in float32. phi(k) is summed into a register tile, reduced once at the end.
  2. ``block_sums`` (one small launch): sum the splits, cumulative sum over blocks, plus the
     initial state if one is given -> S_b, z_b per block, S_b also in the input dtype for step 3.
  3. ``_out_kernel``: grid (B*H, splits, blocks): out = RoPE(phi(q)) S_b / (phi(q) . z_b + eps),
     the denominator as a second small dot (z_b split into a 16-bit high and low part, so it keeps
     float32 accuracy) whose rows land where the numerator's do.

B*H is the fastest grid axis so that programs of all heads sharing RoPE rows run together and
hit them in L2. The head dim is padded to a power of two (112 -> 128) with masked loads.
Why these shapes (key split, register z, dot denominator, one RoPE table): bench/NOTES_attention.md, v6.
"""

from __future__ import annotations

import torch

from models.ops.triton_common import (
    HAS_TRITON,
    block_sums,
    dense_last,
    geometry,
    key_chunks,
    launch,
    rope_table,
    strides,
    tiles,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

    from models.ops.triton_common import load_rope, rope, span

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
        CS,
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
        KCH: tl.constexpr,
    ):
        bh = tl.program_id(0) // KCH
        DK: tl.constexpr = DP // KCH
        k0 = (tl.program_id(0) % KCH) * DK
        kcols = k0 + tl.arange(0, DK)  # this program's key dims
        start, end = span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        k_ptr = K + (bh // H) * skb + (bh % H) * skh
        v_ptr = V + (bh // H) * svb + (bh % H) * svh
        S = tl.zeros((DK, DP), dtype=tl.float32)
        zt = tl.zeros((BLOCK_N, DK), dtype=tl.float32)  # per-row sums of phi(k), reduced after the loop
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            rmask = rows < end
            kmask = rmask[:, None] & (kcols < D)[None, :]
            k = tl.load(k_ptr + rows[:, None] * skn + kcols[None, :], mask=kmask, other=0.0)
            vmask = rmask[:, None] & (cols < D)[None, :]
            v = tl.load(v_ptr + rows[:, None] * svn + cols[None, :], mask=vmask, other=0.0)
            phi = tl.maximum(k.to(tl.float32), 0.0)  # (BLOCK_N, DK)
            c, s = load_rope(CS, rows, N, k0, D, DK)
            rot = rope(phi, c, s, BLOCK_N, DK, False)
            S += tl.dot(tl.trans(rot.to(v.dtype)), v, input_precision=PREC)  # (DK, DP)
            zt += phi
        slot = (bh * tl.num_programs(2) + tl.program_id(2)) * tl.num_programs(1) + tl.program_id(1)
        tl.store(SBUF + slot * DP * DP + kcols[:, None] * DP + cols[None, :], S)
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
    def _out_kernel(
        Q,
        sqb,
        sqh,
        sqn,
        OUT,
        sob,
        soh,
        son,
        CS,
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
        start, end = span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        cmask = cols[None, :] < D
        dt = Q.dtype.element_ty
        q_ptr = Q + (bh // H) * sqb + (bh % H) * sqh
        o_ptr = OUT + (bh // H) * sob + (bh % H) * soh
        st = (bh * tl.num_programs(2) + tl.program_id(2)) * DP
        Sb = tl.load(S + st * DP + cols[:, None] * DP + cols[None, :])  # (DP, DP) in dt, once
        Zm = z_matrix(tl.load(Z + st + cols), dt)  # (DP, 16)
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            m = (rows < end)[:, None] & cmask
            q = tl.load(q_ptr + rows[:, None] * sqn + cols[None, :], mask=m, other=0.0)
            phi = tl.maximum(q.to(tl.float32), 0.0)
            c, s = load_rope(CS, rows, N, 0, D, DP)
            rot = rope(phi, c, s, BLOCK_N, DP, False)
            rden = 1.0 / (tl.sum(tl.dot(phi.to(dt), Zm, input_precision=PREC), axis=1) + eps)  # (BLOCK_N,)
            num = tl.dot(rot.to(dt), Sb, input_precision=PREC)  # (BLOCK_N, DP)
            out = (num * rden[:, None]).to(OUT.dtype.element_ty)
            tl.store(o_ptr + rows[:, None] * son + cols[None, :], out, mask=m)


def forward(q, k, v, cos, sin, block_size, eps, state=None):
    """Fused forward. q, k, v (B, H, N, D), one float dtype; ``state`` None or (S (B, H, D, D),
    z (B, H, D)) float32 sums of earlier tokens, added to every block's sums.

    Returns (out (B, H, N, D) stored as (B, N, H, D) memory, S (B*H, nblk, DP, DP), z (B*H, nblk,
    DP), bs, nblk, dp, cs): S_b, z_b are the float32 sums block b's queries see (inclusive); cs is
    the (N, D) RoPE table the backward reads.
    """
    b, h, n, d = q.shape
    q, k, v = dense_last(q), dense_last(k), dense_last(v)
    cs = rope_table(cos, sin, q.dtype)
    dp = max(16, triton.next_power_of_2(d))
    kch = key_chunks(dp)
    bs, nblk, split_len, nsplit = geometry(n, block_size, b * h * kch, tiles("state", k, dp)["BLOCK_N"], k)
    sbuf = torch.empty(b * h, nblk, nsplit, dp, dp, device=q.device, dtype=torch.float32)
    zbuf = torch.empty(b * h, nblk, nsplit, dp, device=q.device, dtype=torch.float32)
    launch(_state_kernel, "state", (b * h * kch, nsplit, nblk), k, *strides(k), v, *strides(v), cs, sbuf,
           zbuf, h, n, bs, split_len, d=d, dp=dp, ref=k, KCH=kch)
    if state is not None:
        S0, z0 = state
        state = (S0.reshape(b * h, d, d).float().contiguous(), z0.reshape(b * h, d).float().contiguous())
    S, S16, z = block_sums(sbuf, zbuf, q.dtype, state)  # sums over all blocks <= b (and the state)
    # output laid out (B, N, H, D) so that merging heads afterwards is a free view
    o = torch.empty(b, n, h, d, device=q.device, dtype=q.dtype).transpose(1, 2)  # (B, H, N, D) view
    _, _, split_len, nsplit = geometry(n, bs, b * h, tiles("out", q, dp)["BLOCK_N"], q)
    launch(_out_kernel, "out", (b * h, nsplit, nblk), q, *strides(q), o, *strides(o), cs, S16, z,
           h, n, bs, split_len, eps, d=d, dp=dp, ref=q)
    return o, S, z, bs, nblk, dp, cs
