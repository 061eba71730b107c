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

    from models.ops.triton_common import (
        attend,
        block_state,
        head_ptr,
        key_chunk,
        load_tile,
        relu_rope,
        relu_rope_grad,
        span,
        store_partials,
        store_tile,
        z_matrix,
    )

    @triton.jit
    def _bwd_q_kernel(Q, sqb, sqh, sqn, DO, sdb, sdh, sdn, DQ, sgb, sgh, sgn, CS, S, Z, RDEN, DDEN,
                      H, N, BS, SPLIT_LEN, eps,
                      D: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
        bh = tl.program_id(0)
        start, end = span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        dt = Q.dtype.element_ty
        Sb, zb = block_state(S, Z, bh, dt, DP)  # (DP, DP), (DP,) float32
        SbT = tl.trans(Sb)
        Zm = z_matrix(zb, dt)  # (DP, 16)
        q_ptr = head_ptr(Q, bh, H, sqb, sqh)
        do_ptr = head_ptr(DO, bh, H, sdb, sdh)
        dq_ptr = head_ptr(DQ, bh, H, sgb, sgh)
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            q = load_tile(q_ptr, rows, sqn, cols, end, D).to(tl.float32)
            do = load_tile(do_ptr, rows, sdn, cols, end, D).to(tl.float32)
            phi, rot, c, s = relu_rope(q, CS, rows, N, 0, D, BLOCK_N, DP)
            out, rden = attend(phi, rot, Sb, Zm, eps, PREC)  # recomputed (BLOCK_N, DP), (BLOCK_N,)
            dnum = (do * rden[:, None]).to(dt)
            dden = -tl.sum(do * out, axis=1) * rden  # (BLOCK_N,)
            drot = tl.dot(dnum, SbT, input_precision=PREC)  # (BLOCK_N, DP)
            dq = relu_rope_grad(q, drot, dden[:, None] * zb[None, :], c, s, BLOCK_N, DP)
            store_tile(dq_ptr, rows, sgn, cols, end, D, dq)
            tl.store(RDEN + bh * N + rows, rden, mask=rows < end)
            tl.store(DDEN + bh * N + rows, dden, mask=rows < end)

    @triton.jit
    def _bwd_ds_kernel(Q, sqb, sqh, sqn, DO, sdb, sdh, sdn, CS, RDEN, DDEN, DSBUF, DZBUF,
                       H, N, BS, SPLIT_LEN,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                       KCH: tl.constexpr):
        DK: tl.constexpr = DP // KCH
        bh, k0, kcols = key_chunk(KCH, DK)  # this program's key dims
        start, end = span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        dt = Q.dtype.element_ty
        q_ptr = head_ptr(Q, bh, H, sqb, sqh)
        do_ptr = head_ptr(DO, bh, H, sdb, sdh)
        dS = tl.zeros((DK, DP), dtype=tl.float32)
        dzt = tl.zeros((BLOCK_N, DK), dtype=tl.float32)  # reduced over rows after the loop
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            q = load_tile(q_ptr, rows, sqn, kcols, end, D)
            do = load_tile(do_ptr, rows, sdn, cols, end, D)
            rden = tl.load(RDEN + bh * N + rows, mask=rows < end, other=0.0)
            dden = tl.load(DDEN + bh * N + rows, mask=rows < end, other=0.0)
            phi, rot, _, _ = relu_rope(q, CS, rows, N, k0, D, BLOCK_N, DK)  # (BLOCK_N, DK)
            dnum = (do.to(tl.float32) * rden[:, None]).to(dt)
            dS += tl.dot(tl.trans(rot.to(dt)), dnum, input_precision=PREC)  # (DK, DP)
            dzt += dden[:, None] * phi
        store_partials(DSBUF, DZBUF, bh, kcols, dS, dzt, DP)

    @triton.jit
    def _bwd_kv_kernel(K, skb, skh, skn, V, svb, svh, svn, DK, sgb, sgh, sgn, DV, swb, swh, swn, CS, DS, DZ,
                       H, N, BS, SPLIT_LEN,
                       D: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
        bh = tl.program_id(0)
        start, end = span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        dt = K.dtype.element_ty
        dSb, dzb = block_state(DS, DZ, bh, dt, DP)  # (DP, DP), (DP,) float32
        dSbT = tl.trans(dSb)
        k_ptr = head_ptr(K, bh, H, skb, skh)
        v_ptr = head_ptr(V, bh, H, svb, svh)
        dk_ptr = head_ptr(DK, bh, H, sgb, sgh)
        dv_ptr = head_ptr(DV, bh, H, swb, swh)
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            k = load_tile(k_ptr, rows, skn, cols, end, D).to(tl.float32)
            v = load_tile(v_ptr, rows, svn, cols, end, D)
            phi, rot, c, s = relu_rope(k, CS, rows, N, 0, D, BLOCK_N, DP)
            drot = tl.dot(v.to(dt), dSbT, input_precision=PREC)  # (BLOCK_N, DP)
            dv = tl.dot(rot.to(dt), dSb, input_precision=PREC)  # (BLOCK_N, DP)
            dk = relu_rope_grad(k, drot, dzb[None, :], c, s, BLOCK_N, DP)
            store_tile(dk_ptr, rows, sgn, cols, end, D, dk)
            store_tile(dv_ptr, rows, swn, cols, end, D, dv)


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
