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

    from models.ops.triton_common import (
        attend,
        block_state,
        head_ptr,
        key_chunk,
        load_tile,
        relu_rope,
        span,
        store_partials,
        store_tile,
        z_matrix,
    )

    @triton.jit
    def _state_kernel(K, skb, skh, skn, V, svb, svh, svn, CS, SBUF, ZBUF, H, N, BS, SPLIT_LEN,
                      D: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
                      KCH: tl.constexpr):
        DK: tl.constexpr = DP // KCH
        bh, k0, kcols = key_chunk(KCH, DK)  # this program's key dims
        start, end = span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        k_ptr = head_ptr(K, bh, H, skb, skh)
        v_ptr = head_ptr(V, bh, H, svb, svh)
        S = tl.zeros((DK, DP), dtype=tl.float32)
        zt = tl.zeros((BLOCK_N, DK), dtype=tl.float32)  # per-row sums of phi(k), reduced after the loop
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            k = load_tile(k_ptr, rows, skn, kcols, end, D)
            v = load_tile(v_ptr, rows, svn, cols, end, D)
            phi, rot, _, _ = relu_rope(k, CS, rows, N, k0, D, BLOCK_N, DK)  # (BLOCK_N, DK)
            S += tl.dot(tl.trans(rot.to(v.dtype)), v, input_precision=PREC)  # (DK, DP)
            zt += phi
        store_partials(SBUF, ZBUF, bh, kcols, S, zt, DP)

    @triton.jit
    def _out_kernel(Q, sqb, sqh, sqn, OUT, sob, soh, son, CS, S, Z, H, N, BS, SPLIT_LEN, eps,
                    D: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
        bh = tl.program_id(0)
        start, end = span(N, BS, SPLIT_LEN)
        cols = tl.arange(0, DP)
        q_ptr = head_ptr(Q, bh, H, sqb, sqh)
        o_ptr = head_ptr(OUT, bh, H, sob, soh)
        dt = Q.dtype.element_ty
        Sb, zb = block_state(S, Z, bh, dt, DP)  # (DP, DP) (stored in dt), (DP,) float32; once
        Zm = z_matrix(zb, dt)  # (DP, 16)
        for off in range(start, end, BLOCK_N):
            rows = off + tl.arange(0, BLOCK_N)
            q = load_tile(q_ptr, rows, sqn, cols, end, D)
            phi, rot, _, _ = relu_rope(q, CS, rows, N, 0, D, BLOCK_N, DP)
            out, _ = attend(phi, rot, Sb, Zm, eps, PREC)  # (BLOCK_N, DP)
            store_tile(o_ptr, rows, son, cols, end, D, out)


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
