"""Backward kernels of the fused linear attention.

  4. ``_bwd_q_kernel``: grid (B*H, splits, blocks): recomputes out, writes dq, and per query row
     1/den and dden = -dO . out / den (two float32 values a row) for step 5. No accumulator.
  5. ``_bwd_ds_kernel``: grid (B*H*KCH, splits, blocks), the state kernel's shape: sums
     dS = RoPE(phi(q))^T (dO / den) and dz = sum dden phi(q) per split, DP/KCH key dims a program.
  6. ``block_sums``: sum the splits, reverse cumulative sum over blocks (block b's keys are seen by
     the queries of blocks >= b).
  7. ``_bwd_kv_kernel``: grid (B*H, splits, blocks): dk, dv from dS_b, dz_b.

A gradient on RoPE(phi) is one on phi after the inverse rotation (RoPE is orthogonal per pair).
Steps 4-5 were one kernel holding S, S^T and the dS accumulator at once (v3: 255 registers and
spills); split, they read q and dO twice but run faster together (bench/NOTES_attention.md, v6).
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
    strides,
    tiles,
)

if HAS_TRITON:
    import triton
    import triton.language as tl

    from models.ops.triton_common import load_rope, rope, span
    from models.ops.triton_fwd import z_matrix

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
        CS,
        S,
        Z,
        RDEN,
        DDEN,
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
        st = (bh * tl.num_programs(2) + tl.program_id(2)) * DP
        Sb = tl.load(S + st * DP + cols[:, None] * DP + cols[None, :]).to(dt)  # (DP, DP)
        SbT = tl.trans(Sb)
        zb = tl.load(Z + st + cols)
        Zm = z_matrix(zb, dt)  # (DP, 16)
        q_ptr = Q + (bh // H) * sqb + (bh % H) * sqh
        do_ptr = DO + (bh // H) * sdb + (bh % H) * sdh
        dq_ptr = DQ + (bh // H) * sgb + (bh % H) * sgh
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            rmask = rows < end
            m = rmask[:, None] & cmask
            q = tl.load(q_ptr + rows[:, None] * sqn + cols[None, :], mask=m, other=0.0).to(tl.float32)
            do = tl.load(do_ptr + rows[:, None] * sdn + cols[None, :], mask=m, other=0.0).to(tl.float32)
            phi = tl.maximum(q, 0.0)
            c, s = load_rope(CS, rows, N, 0, D, DP)
            rot = rope(phi, c, s, BLOCK_N, DP, False).to(dt)
            rden = 1.0 / (tl.sum(tl.dot(phi.to(dt), Zm, input_precision=PREC), axis=1) + eps)  # (BLOCK_N,)
            out = tl.dot(rot, Sb, input_precision=PREC) * rden[:, None]  # recomputed (BLOCK_N, DP)
            dnum = (do * rden[:, None]).to(dt)
            dden = -tl.sum(do * out, axis=1) * rden  # (BLOCK_N,)
            drot = tl.dot(dnum, SbT, input_precision=PREC)  # (BLOCK_N, DP)
            dphi = rope(drot, c, s, BLOCK_N, DP, True) + dden[:, None] * zb[None, :]
            dq = tl.where(q > 0.0, dphi, 0.0)
            tl.store(dq_ptr + rows[:, None] * sgn + cols[None, :], dq.to(DQ.dtype.element_ty), mask=m)
            tl.store(RDEN + bh * N + rows, rden, mask=rmask)
            tl.store(DDEN + bh * N + rows, dden, mask=rmask)

    @triton.jit
    def _bwd_ds_kernel(
        Q,
        sqb,
        sqh,
        sqn,
        DO,
        sdb,
        sdh,
        sdn,
        CS,
        RDEN,
        DDEN,
        DSBUF,
        DZBUF,
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
        dt = Q.dtype.element_ty
        q_ptr = Q + (bh // H) * sqb + (bh % H) * sqh
        do_ptr = DO + (bh // H) * sdb + (bh % H) * sdh
        dS = tl.zeros((DK, DP), dtype=tl.float32)
        dzt = tl.zeros((BLOCK_N, DK), dtype=tl.float32)  # reduced over rows after the loop
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            rmask = rows < end
            qmask = rmask[:, None] & (kcols < D)[None, :]
            q = tl.load(q_ptr + rows[:, None] * sqn + kcols[None, :], mask=qmask, other=0.0)
            dmask = rmask[:, None] & (cols < D)[None, :]
            do = tl.load(do_ptr + rows[:, None] * sdn + cols[None, :], mask=dmask, other=0.0)
            rden = tl.load(RDEN + bh * N + rows, mask=rmask, other=0.0)
            dden = tl.load(DDEN + bh * N + rows, mask=rmask, other=0.0)
            phi = tl.maximum(q.to(tl.float32), 0.0)  # (BLOCK_N, DK)
            c, s = load_rope(CS, rows, N, k0, D, DK)
            rot = rope(phi, c, s, BLOCK_N, DK, False).to(dt)
            dnum = (do.to(tl.float32) * rden[:, None]).to(dt)
            dS += tl.dot(tl.trans(rot), dnum, input_precision=PREC)  # (DK, DP)
            dzt += dden[:, None] * phi
        slot = (bh * tl.num_programs(2) + tl.program_id(2)) * tl.num_programs(1) + tl.program_id(1)
        tl.store(DSBUF + slot * DP * DP + kcols[:, None] * DP + cols[None, :], dS)
        tl.store(DZBUF + slot * DP + kcols, tl.sum(dzt, axis=0))

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
        CS,
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
        start, end = span(N, BS, SPLIT_LEN)
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
            c, s = load_rope(CS, rows, N, 0, D, DP)
            rot = rope(phi, c, s, BLOCK_N, DP, False)
            drot = tl.dot(v.to(dt), dSbT, input_precision=PREC)  # (BLOCK_N, DP)
            dv = tl.dot(rot.to(dt), dSb, input_precision=PREC)  # (BLOCK_N, DP)
            dphi = rope(drot, c, s, BLOCK_N, DP, True) + dzb[None, :]
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


def backward(do, q, k, v, cs, S, z, bs, nblk, eps):
    """Gradients (dq, dk, dv) of ``triton_fwd.forward``'s output; cs, S, z as it returned them."""
    b, h, n, d = q.shape
    dp = S.shape[-1]
    kch = key_chunks(dp)
    do = dense_last(do)
    dq = torch.empty_like(q)
    rden = torch.empty(b * h, n, device=q.device, dtype=torch.float32)  # 1 / den per query row
    dden = torch.empty_like(rden)  # -dO . out / den per query row
    _, _, split_len, nsplit = geometry(n, bs, b * h, tiles("bwd_q", q, dp)["BLOCK_N"], q)
    launch(_bwd_q_kernel, "bwd_q", (b * h, nsplit, nblk), q, *strides(q), do, *strides(do), dq, *strides(dq),
           cs, S, z, rden, dden, h, n, bs, split_len, eps, d=d, dp=dp, ref=q)
    _, _, split_len, nsplit = geometry(n, bs, b * h * kch, tiles("bwd_ds", q, dp)["BLOCK_N"], q)
    dsbuf = torch.empty(b * h, nblk, nsplit, dp, dp, device=q.device, dtype=torch.float32)
    dzbuf = torch.empty(b * h, nblk, nsplit, dp, device=q.device, dtype=torch.float32)
    launch(_bwd_ds_kernel, "bwd_ds", (b * h * kch, nsplit, nblk), q, *strides(q), do, *strides(do), cs, rden,
           dden, dsbuf, dzbuf, h, n, bs, split_len, d=d, dp=dp, ref=q, KCH=kch)
    # keys of block b are seen by the queries of blocks >= b: reverse cumulative sum over blocks
    dS, _, dz = block_sums(dsbuf, dzbuf, torch.float32, reverse=True)  # (BH, nblk, DP, DP), (BH, nblk, DP)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    _, _, split_len, nsplit = geometry(n, bs, b * h, tiles("bwd_kv", q, dp)["BLOCK_N"], q)
    launch(_bwd_kv_kernel, "bwd_kv", (b * h, nsplit, nblk), k, *strides(k), v, *strides(v), dk, *strides(dk),
           dv, *strides(dv), cs, dS, dz, h, n, bs, split_len, d=d, dp=dp, ref=q)
    return dq, dk, dv
