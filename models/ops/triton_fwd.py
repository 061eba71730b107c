"""Forward kernels of the fused linear attention.

  1. ``_state_kernel``: grid (B*H, splits, blocks). Each program sums RoPE(phi(k))^T v and phi(k)
     over one split of one block: (D, D) and (D,) partial sums in float32.
  2. PyTorch: sum the splits, cumulative sum over blocks, plus the initial state if one is given
     -> S_b, z_b per block (tiny tensors).
  3. ``_out_kernel``: grid (B*H, splits, blocks): out = RoPE(phi(q)) S_b / (phi(q) . z_b + eps).

B*H is the fastest grid axis so that programs of all heads sharing RoPE rows run together and
hit them in L2. The head dim is padded to a power of two (112 -> 128) with masked loads.
"""

from __future__ import annotations

import torch

from models.ops.triton_common import HAS_TRITON, dense_last, geometry, launch, strides, tables, tiles

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
        start, end = span(N, BS, SPLIT_LEN)
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
            c, s = load_rope(COS, SIN, rows, rmask, D // 2, DP)
            rot = rope(phi, c, s, BLOCK_N, DP, False)
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
        start, end = span(N, BS, SPLIT_LEN)
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
            c, s = load_rope(COS, SIN, rows, rows < end, D // 2, DP)
            rot = rope(phi, c, s, BLOCK_N, DP, False)
            den = tl.sum(phi * zb[None, :], axis=1) + eps  # (BLOCK_N,)
            num = tl.dot(rot.to(q.dtype), Sb, input_precision=PREC)  # (BLOCK_N, DP)
            tl.store(
                o_ptr + rows[:, None] * son + cols[None, :],
                (num / den[:, None]).to(OUT.dtype.element_ty),
                mask=m,
            )


def forward(q, k, v, cos, sin, block_size, eps, state=None):
    """Fused forward. q, k, v (B, H, N, D), one float dtype; ``state`` None or (S (B, H, D, D),
    z (B, H, D)) float32 sums of earlier tokens, added to every block's sums.

    Returns (out (B, H, N, D) stored as (B, N, H, D) memory, S (B*H, nblk, DP, DP), z (B*H, nblk,
    DP), bs, nblk, dp, tables): S_b, z_b are the float32 sums block b's queries see (inclusive).
    """
    b, h, n, d = q.shape
    q, k, v = dense_last(q), dense_last(k), dense_last(v)
    cos, sin = tables(cos, q.dtype), tables(sin, q.dtype)
    dp = max(16, triton.next_power_of_2(d))
    bs, nblk, split_len, nsplit = geometry(n, block_size, b * h, tiles("state", k, dp)["BLOCK_N"], k)
    sbuf = torch.empty(b * h, nblk, nsplit, dp, dp, device=q.device, dtype=torch.float32)
    zbuf = torch.empty(b * h, nblk, nsplit, dp, device=q.device, dtype=torch.float32)
    launch(_state_kernel, "state", (b * h, nsplit, nblk), k, *strides(k), v, *strides(v), cos, sin,
           sbuf, zbuf, h, n, bs, split_len, d=d, dp=dp, ref=k)
    S = sbuf.sum(2)  # (BH, nblk, DP, DP)
    z = zbuf.sum(2)  # (BH, nblk, DP)
    if nblk > 1:  # sums over all blocks <= b
        S, z = S.cumsum(1), z.cumsum(1)
    if state is not None:
        S0, z0 = state
        S[:, :, :d, :d] += S0.reshape(b * h, 1, d, d).float()
        z[:, :, :d] += z0.reshape(b * h, 1, d).float()
    # output laid out (B, N, H, D) so that merging heads afterwards is a free view
    o = torch.empty(b, n, h, d, device=q.device, dtype=q.dtype).transpose(1, 2)  # (B, H, N, D) view
    _, _, split_len, nsplit = geometry(n, bs, b * h, tiles("out", q, dp)["BLOCK_N"], q)
    launch(_out_kernel, "out", (b * h, nsplit, nblk), q, *strides(q), o, *strides(o), cos, sin, S, z,
           h, n, bs, split_len, eps, d=d, dp=dp, ref=q)
    return o, S, z, bs, nblk, dp, (cos, sin)
