"""Backward kernels of the fused linear attention (pair space: see ``triton_common``).

  4. ``_bwd_q_kernel``: grid (B*H, splits, blocks): recomputes out, writes dq, and sums the
     query-side gradients dS = RoPE(phi(q))^T dnum and dz = sum dden phi(q) per split.
  5. PyTorch: sum the splits, reverse cumulative sum over blocks (block b's keys are seen by the
     queries of blocks >= b).
  6. ``_bwd_kv_kernel``: grid (B*H, splits, blocks): dk, dv from dS_b, dz_b.

With r0 = p0 c - p1 s and r1 = p1 c + p0 s (the even and odd halves of RoPE(phi)), a gradient
(d0, d1) on (r0, r1) is (d0 c + d1 s, d1 c - d0 s) on (p0, p1): the inverse rotation.
"""

from __future__ import annotations

import torch

from models.ops.triton_common import HAS_TRITON, dense_last, geometry, launch, pairs, strides, tiles

if HAS_TRITON:
    import triton
    import triton.language as tl

    from models.ops.triton_common import (
        load_halves,
        load_pairs,
        load_rows,
        load_tables,
        span,
        store_halves,
        store_pairs,
        store_rows,
    )

    @triton.jit
    def _bwd_q_kernel(Q, sqb, sqh, sqn, DO, sdb, sdh, sdn, DQ, sgb, sgh, sgn, COS, SIN, S, Z, DSBUF, DZBUF,
                      H, N, BS, SPLIT_LEN, eps, D: tl.constexpr, DP: tl.constexpr, HP: tl.constexpr,
                      BLOCK_N: tl.constexpr, PACK_KIND: tl.constexpr, PREC: tl.constexpr):
        bh = tl.program_id(0)
        start, end = span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        dt = DO.dtype.element_ty
        st = (bh * tl.num_programs(2) + tl.program_id(2)) * DP
        Se, So = load_rows(S + st * DP, DP, HP)  # (HP, DP)
        Se = Se.to(dt)
        So = So.to(dt)
        SeT = tl.trans(Se)
        SoT = tl.trans(So)
        ze, zo = load_halves(Z + st, HP)
        q_ptr = Q + (bh // H) * sqb + (bh % H) * sqh
        do_ptr = DO + (bh // H) * sdb + (bh % H) * sdh
        dq_ptr = DQ + (bh // H) * sgb + (bh % H) * sgh
        dS0 = tl.zeros((HP, DP), dtype=tl.float32)
        dS1 = tl.zeros((HP, DP), dtype=tl.float32)
        dz0 = tl.zeros((HP,), dtype=tl.float32)
        dz1 = tl.zeros((HP,), dtype=tl.float32)
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            rmask = rows < end
            q0, q1 = load_pairs(q_ptr, rows, sqn, rmask, D // 2, HP, PACK_KIND)
            do = tl.load(do_ptr + rows[:, None] * sdn + cols[None, :], mask=rmask[:, None] & (cols[None, :] < D),
                         other=0.0).to(tl.float32)
            c, s = load_tables(COS, SIN, rows, rmask, D // 2, HP)
            p0 = tl.maximum(q0, 0.0)
            p1 = tl.maximum(q1, 0.0)
            r0 = (p0 * c - p1 * s).to(dt)
            r1 = (p1 * c + p0 * s).to(dt)
            den = tl.sum(p0 * ze[None, :], axis=1) + tl.sum(p1 * zo[None, :], axis=1) + eps  # (BLOCK_N,)
            out = tl.dot(r0, Se, input_precision=PREC)
            out = tl.dot(r1, So, out, input_precision=PREC) / den[:, None]  # recomputed (BLOCK_N, DP)
            dnum = (do / den[:, None]).to(dt)
            dden = -tl.sum(do * out, axis=1) / den  # (BLOCK_N,)
            d0 = tl.dot(dnum, SeT, input_precision=PREC)  # (BLOCK_N, HP): on r0
            d1 = tl.dot(dnum, SoT, input_precision=PREC)
            g0 = d0 * c + d1 * s + dden[:, None] * ze[None, :]
            g1 = d1 * c - d0 * s + dden[:, None] * zo[None, :]
            store_pairs(dq_ptr, rows, sgn, rmask, tl.where(q0 > 0.0, g0, 0.0), tl.where(q1 > 0.0, g1, 0.0),
                        D // 2, HP, PACK_KIND)
            dS0 += tl.dot(tl.trans(r0), dnum, input_precision=PREC)
            dS1 += tl.dot(tl.trans(r1), dnum, input_precision=PREC)
            dz0 += tl.sum(dden[:, None] * p0, axis=0)
            dz1 += tl.sum(dden[:, None] * p1, axis=0)
        slot = (bh * tl.num_programs(2) + tl.program_id(2)) * tl.num_programs(1) + tl.program_id(1)
        store_rows(DSBUF + slot * DP * DP, dS0, dS1, DP, HP)
        store_halves(DZBUF + slot * DP, dz0, dz1, HP)

    @triton.jit
    def _bwd_kv_kernel(K, skb, skh, skn, V, svb, svh, svn, DK, sgb, sgh, sgn, DV, swb, swh, swn, COS, SIN,
                       DS, DZ, H, N, BS, SPLIT_LEN, D: tl.constexpr, DP: tl.constexpr, HP: tl.constexpr,
                       BLOCK_N: tl.constexpr, PACK_KIND: tl.constexpr, PREC: tl.constexpr):
        bh = tl.program_id(0)
        start, end = span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        dt = V.dtype.element_ty
        st = (bh * tl.num_programs(2) + tl.program_id(2)) * DP
        dSe, dSo = load_rows(DS + st * DP, DP, HP)  # (HP, DP)
        dSe = dSe.to(dt)
        dSo = dSo.to(dt)
        dSeT = tl.trans(dSe)
        dSoT = tl.trans(dSo)
        dze, dzo = load_halves(DZ + st, HP)
        b, h = bh // H, bh % H
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            rmask = rows < end
            m = rmask[:, None] & (cols[None, :] < D)
            k0, k1 = load_pairs(K + b * skb + h * skh, rows, skn, rmask, D // 2, HP, PACK_KIND)
            v = tl.load(V + b * svb + h * svh + rows[:, None] * svn + cols[None, :], mask=m, other=0.0)
            c, s = load_tables(COS, SIN, rows, rmask, D // 2, HP)
            p0 = tl.maximum(k0, 0.0)
            p1 = tl.maximum(k1, 0.0)
            r0 = (p0 * c - p1 * s).to(dt)
            r1 = (p1 * c + p0 * s).to(dt)
            d0 = tl.dot(v, dSeT, input_precision=PREC)  # (BLOCK_N, HP): on r0
            d1 = tl.dot(v, dSoT, input_precision=PREC)
            dv = tl.dot(r0, dSe, input_precision=PREC)
            dv = tl.dot(r1, dSo, dv, input_precision=PREC)  # (BLOCK_N, DP)
            g0 = d0 * c + d1 * s + dze[None, :]
            g1 = d1 * c - d0 * s + dzo[None, :]
            store_pairs(DK + b * sgb + h * sgh, rows, sgn, rmask, tl.where(k0 > 0.0, g0, 0.0),
                        tl.where(k1 > 0.0, g1, 0.0), D // 2, HP, PACK_KIND)
            tl.store(DV + b * swb + h * swh + rows[:, None] * swn + cols[None, :], dv.to(DV.dtype.element_ty),
                     mask=m)


def backward(do, q, k, v, cos, sin, S, z, bs, nblk, eps):
    """Gradients (dq, dk, dv) of ``triton_fwd.forward``'s output; S, z as it returned them."""
    b, h, n, d = q.shape
    dp = S.shape[-1]
    do = dense_last(do)
    _, _, split_len, nsplit = geometry(n, bs, b * h, tiles("bwd_q", q, dp)["BLOCK_N"], q)
    dq = torch.empty_like(q)
    dsbuf = torch.empty(b * h, nblk, nsplit, dp, dp, device=q.device, dtype=torch.float32)
    dzbuf = torch.empty(b * h, nblk, nsplit, dp, device=q.device, dtype=torch.float32)
    qp, dqp = pairs(q), pairs(dq)
    launch(_bwd_q_kernel, "bwd_q", (b * h, nsplit, nblk), qp, *strides(qp), do, *strides(do), dqp,
           *strides(dqp), cos, sin, S, z, dsbuf, dzbuf, h, n, bs, split_len, eps, d=d, dp=dp, ref=q)
    dS, dz = dsbuf.sum(2), dzbuf.sum(2)  # (BH, nblk, DP, DP), (BH, nblk, DP)
    if nblk > 1:  # keys of block b are seen by the queries of blocks >= b: reverse cumulative sum
        dS = dS.flip(1).cumsum(1).flip(1).contiguous()
        dz = dz.flip(1).cumsum(1).flip(1).contiguous()
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    _, _, split_len, nsplit = geometry(n, bs, b * h, tiles("bwd_kv", q, dp)["BLOCK_N"], q)
    kp, dkp = pairs(k), pairs(dk)
    launch(_bwd_kv_kernel, "bwd_kv", (b * h, nsplit, nblk), kp, *strides(kp), v, *strides(v), dkp,
           *strides(dkp), dv, *strides(dv), cos, sin, dS, dz, h, n, bs, split_len, d=d, dp=dp, ref=q)
    return dq, dk, dv
