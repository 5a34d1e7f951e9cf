"""Attention kernels.

Scaled dot-product attention, flash style: the forward walks K/V in tiles with an online
softmax (running row max and sum) and saves only the output and the row log-sum-exp; the
backward recomputes the probabilities tile by tile from that log-sum-exp, in one kernel for dQ
(one program per query tile) and one for dK/dV (one program per key tile, looping over the query
heads that share its key/value head, so no atomics). Head dims are padded to a power of two
with masks. Scores, softmax and accumulators are fp32; the tile products run on the tensor cores
in the storage dtype (fp32 storage multiplies in full fp32, not tf32). The backward allocates
its three gradients and one fp32 statistic per query row (delta), nothing else (on sm_90, plus
Triton's 128-byte scratch per tensor descriptor per program, for the launch only). GQA reads
key/value head h // groups by index: no repeated K/V. One launch heuristic (``sdpa_blocks``),
keyed on head dim, storage width, causal and GPU generation, picks each kernel's tiles, warps,
pipelining depth and copy path: on sm_90 TMA tensor descriptors, 128 query rows over two
warpgroups in the forward and dQ, 64 key rows in dK/dV (every product a wgmma); on sm_80
pointer loads that Triton pipelines through cp.async.

Encoder-decoder attention: the score projections once per call (a tensor-core matmul with fp32
output, [B, T, A]); one kernel for the scores of every (query tile, key tile) pair in parallel,
into an fp32 scratch the size of the weights; one for the masked softmax, the weights and the
context of a query tile and a slice of the value features (two passes over the scores). The
additive score ``v . tanh(qa_i + kb_j)`` is formed for a tile of (i, j) pairs and a slice of
the attention size at a time, so the [B, Tq, Tk, A] tensor never exists; its backward kernels
do the same. A decoder step (one query row) takes single-row tiles, not 16 rows of padding.

Every launch is a 1-D grid: CUDA caps grid axes 1 and 2 at 65535, and Z*H heads or a batch pass
that; axis 0 holds 2^31 - 1 programs.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Iterator, NamedTuple

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from ._launch import TORCH_DTYPES, TRITON_DTYPES, CompileCase, TensorArg, check_dtype, fresh, passed

MASK_NONE, MASK_BOOL, MASK_ADD = 0, 1, 2


@triton.jit
def _tile_of_program(n_tiles):
    """(tile, row) of this program in a 1-D grid of n_tiles x rows programs, tiles fastest (so
    neighbouring programs share a head's K/V in L2). One axis: axes 1 and 2 of a CUDA grid stop
    at 65535, axis 0 at 2^31 - 1, and Z*H or a batch can pass 65535."""
    pid = tl.program_id(0)
    return pid % n_tiles, (pid // n_tiles).to(tl.int64)


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention kernels
#
# Scores live in log2 units: s2 = (q . k) * scale * log2(e), so every exponential is one exp2
# (the softmax scale folded into it, no separate multiply by the scale and by log2(e)); the
# saved log-sum-exp stays in natural units, as the op returns it.
#
# Each kernel reads tiles of one head's (rows, features) matrix through ``_rows_source`` /
# ``_load_rows``: a TMA tensor descriptor on sm_90 (USE_TMA: the copy engine fetches the tile and
# zero-fills what lies past the matrix, so no masks and no per-element addresses), else pointer
# loads, which Triton pipelines with cp.async over num_stages. Every loop over tiles is split in
# two: the tiles wholly inside the matrix and (causal) wholly below the diagonal take no masks at
# all; only the diagonal and ragged tail tiles compute the causal and bounds masks. EVEN (every
# length divides its tile, every head dim is its padded one) drops the load masks too.

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr):
    # Triton's interpreter multiplies bfloat16 tiles wrongly, so under it (and only there) the
    # launcher sets DOT_F32 and the tiles, already rounded to the storage dtype, go in as fp32.
    if DOT_F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision="ieee")
    return out


@triton.jit
def _rows_source(base, n_rows, n_cols, s_row, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, USE_TMA: tl.constexpr):
    """Where ``_load_rows`` reads one head's (n_rows, n_cols) matrix from: a tensor descriptor
    (its unit column stride and 16-byte row stride and base are the launcher's condition for
    USE_TMA), or the head's base pointer."""
    if USE_TMA:
        src = tl.make_tensor_descriptor(base, shape=[n_rows, n_cols], strides=[s_row, 1],
                                        block_shape=[BLOCK_R, BLOCK_C])
    else:
        src = base
    return src


@triton.jit
def _load_rows(src, row0, n_rows, n_cols, s_row, s_col, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
               USE_TMA: tl.constexpr, EVEN: tl.constexpr):
    """Rows row0 .. row0 + BLOCK_R of a ``_rows_source``, zeros past its rows and columns.
    EVEN: the launcher knows the tile lies inside (no masks)."""
    if USE_TMA:
        tile = src.load([row0, 0])
    else:
        rows = row0 + tl.arange(0, BLOCK_R).to(tl.int64)
        cols = tl.arange(0, BLOCK_C)
        ptrs = src + rows[:, None] * s_row + cols[None, :] * s_col
        if EVEN:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)
    return tile


@triton.jit
def _mask_scores(s, mask_ptrs, q_idx, k_idx, L, S, MASK_KIND: tl.constexpr, BOUNDS: tl.constexpr,
                 CAUSAL: tl.constexpr):
    """Scores (log2 units) with the caller's mask applied and, where asked, -inf for keys past S
    (BOUNDS) and above the diagonal (CAUSAL). q_idx, k_idx: the query and key of each score,
    broadcastable to s (the dK/dV kernel holds transposed scores)."""
    if MASK_KIND == 1:
        keep = tl.load(mask_ptrs, mask=(q_idx < L) & (k_idx < S), other=0) != 0
        s = tl.where(keep, s, float("-inf"))
    if MASK_KIND == 2:
        s = s + tl.load(mask_ptrs, mask=(q_idx < L) & (k_idx < S), other=0.0).to(tl.float32) * LOG2E
    if BOUNDS:
        s = tl.where(k_idx < S, s, float("-inf"))
    if CAUSAL:  # key j is only seen by queries i >= j
        s = tl.where(k_idx <= q_idx, s, float("-inf"))
    return s


@triton.jit
def _key_tile_bounds(row0, S, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """(full, hi) for the query tile at row0: key tiles [0, full) lie inside S and (causal) below
    every query row of the tile, so they need no mask; [full, hi) are the diagonal and tail."""
    full = (S // BLOCK_N) * BLOCK_N
    hi = S
    if IS_CAUSAL:
        full = tl.minimum(full, (row0 // BLOCK_N) * BLOCK_N)
        hi = tl.minimum(S, row0 + BLOCK_M)
    return full, hi


@triton.jit
def _key_tile_scores(q, k_src, v_src, start_n, m_base, offs_m, L, S, E, EV, skn, skd, svn, svd, smn, qk_scale,
                     MASK_KIND: tl.constexpr, BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr, USE_TMA: tl.constexpr,
                     EVEN: tl.constexpr):
    """The key and value tiles at key row ``start_n`` and the query tile's scores against them.
    A tile that needs a mask gets scaled scores (log2 units) with the mask applied; a mask-free
    tile gets the raw products q.k, and its caller folds the scale into the one FMA that also
    subtracts the row's shift (``exp2(s * qk_scale - shift)``): a multiply per score fewer."""
    k = _load_rows(k_src, start_n, S, E, skn, skd, BLOCK_N, BLOCK_D, USE_TMA, EVEN)
    v = _load_rows(v_src, start_n, S, EV, svn, svd, BLOCK_N, BLOCK_DV, USE_TMA, EVEN)
    s = _dot(q, tl.trans(k), DOT_F32)
    if MASK_KIND != 0 or BOUNDS or CAUSAL:
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        s = _mask_scores(s * qk_scale, m_base + offs_n[None, :] * smn, offs_m[:, None], offs_n[None, :], L, S,
                         MASK_KIND, BOUNDS, CAUSAL)
    return k, v, s


@triton.jit
def _scaled_scores(s, qk_scale, MASK_KIND: tl.constexpr, BOUNDS: tl.constexpr, CAUSAL: tl.constexpr):
    """``_key_tile_scores``' scores in log2 units: a mask-free tile's raw products times the scale,
    written where a subtraction follows so that the two compile to one FMA."""
    if MASK_KIND != 0 or BOUNDS or CAUSAL:
        return s
    return s * qk_scale


@triton.jit
def _forward_tiles(acc, m_i, l_i, q, k_src, v_src, m_base, offs_m, lo, hi, L, S, E, EV, skn, skd, svn, svd, smn,
                   qk_scale, MASK_KIND: tl.constexpr, BOUNDS: tl.constexpr, CAUSAL: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr,
                   USE_TMA: tl.constexpr, EVEN: tl.constexpr):
    """The online softmax over key tiles [lo, hi): running row max m_i, sum l_i (log2 units) and
    the unnormalised output acc."""
    for start_n in range(lo, hi, BLOCK_N):
        k, v, s = _key_tile_scores(q, k_src, v_src, start_n, m_base, offs_m, L, S, E, EV, skn, skd, svn, svd, smn,
                                   qk_scale, MASK_KIND, BOUNDS, CAUSAL, BLOCK_N, BLOCK_D, BLOCK_DV, DOT_F32, USE_TMA,
                                   EVEN)
        if MASK_KIND != 0 or BOUNDS or CAUSAL:
            m_new = tl.maximum(m_i, tl.max(s, 1))
        else:  # raw q.k: the row maximum scaled once (qk_scale >= 0: the launch makes it so)
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        # A row with nothing kept so far has max -inf; shifting by 0 keeps exp2(-inf) = 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - shift)
        p = tl.exp2(_scaled_scores(s, qk_scale, MASK_KIND, BOUNDS, CAUSAL) - shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_F32)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def sdpa_forward_kernel(
    Q, K, V, M, O, LSE, sm_scale,
    sqz, sqh, sqm, sqd, skz, skh, skn, skd, svz, svh, svn, svd, smz, smh, smm, smn, soz, soh, som, sod,
    H, GROUPS, L, S, E, EV,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr,
    USE_TMA: tl.constexpr, EVEN: tl.constexpr,
):
    pid_m, zh = _tile_of_program(tl.cdiv(L, BLOCK_M))
    z, h = zh // H, zh % H
    hk = h // GROUPS  # GQA: query head h reads key/value head h // GROUPS, never a repeated copy
    row0 = pid_m * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M).to(tl.int64)
    q_src = _rows_source(Q + z * sqz + h * sqh, L, E, sqm, BLOCK_M, BLOCK_D, USE_TMA)
    q = _load_rows(q_src, row0, L, E, sqm, sqd, BLOCK_M, BLOCK_D, USE_TMA, EVEN)
    k_src = _rows_source(K + z * skz + hk * skh, S, E, skn, BLOCK_N, BLOCK_D, USE_TMA)
    v_src = _rows_source(V + z * svz + hk * svh, S, EV, svn, BLOCK_N, BLOCK_DV, USE_TMA)
    m_base = M + z * smz + h * smh + offs_m[:, None] * smm
    qk_scale = sm_scale * LOG2E

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    full, hi = _key_tile_bounds(row0, S, BLOCK_M, BLOCK_N, IS_CAUSAL)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_src, v_src, m_base, offs_m, 0, full, L, S, E, EV, skn, skd,
                                   svn, svd, smn, qk_scale, MASK_KIND, False, False, BLOCK_N, BLOCK_D, BLOCK_DV,
                                   DOT_F32, USE_TMA, EVEN)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_src, v_src, m_base, offs_m, full, hi, L, S, E, EV, skn, skd,
                                   svn, svd, smn, qk_scale, MASK_KIND, True, IS_CAUSAL, BLOCK_N, BLOCK_D, BLOCK_DV,
                                   DOT_F32, USE_TMA, False)

    empty = l_i == 0.0  # no position took part: zero output, log-sum-exp -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * LN2)
    offs_dv = tl.arange(0, BLOCK_DV)
    tl.store(O + z * soz + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod, out.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < L) & (offs_dv[None, :] < EV))
    tl.store(LSE + zh * L + offs_m, lse, mask=offs_m < L)


@triton.jit
def sdpa_backward_delta_kernel(
    O, DO, DELTA, soz, soh, som, sod, sgz, sgh, sgm, sgd, H, L, EV,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """delta_i = sum_d dO_id O_id, the row term of the softmax backward."""
    pid_m, zh = _tile_of_program(tl.cdiv(L, BLOCK_M))
    z, h = zh // H, zh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV)
    inside = (offs_m[:, None] < L) & (offs_dv[None, :] < EV)
    o = tl.load(O + z * soz + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod, mask=inside, other=0.0)
    do = tl.load(DO + z * sgz + h * sgh + offs_m[:, None] * sgm + offs_dv[None, :] * sgd, mask=inside, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + zh * L + offs_m, delta, mask=offs_m < L)


@triton.jit
def _row_stats(LSE, DELTA, zh, offs_m, L):
    """(log-sum-exp in log2 units, delta) of query rows offs_m."""
    lse = tl.load(LSE + zh * L + offs_m, mask=offs_m < L, other=0.0)
    # Rows that kept nothing have lse = -inf; +inf makes their probabilities exp2(s - inf) = 0.
    lse = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    delta = tl.load(DELTA + zh * L + offs_m, mask=offs_m < L, other=0.0)
    return lse, delta


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, k_src, v_src, m_base, offs_m, lo, hi, L, S, E, EV, skn, skd, svn, svd, smn,
              qk_scale, MASK_KIND: tl.constexpr, BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr, USE_TMA: tl.constexpr,
              EVEN: tl.constexpr):
    """dQ (unscaled) summed over key tiles [lo, hi): sum_j dS_ij K_j, dS = P (dP - delta)."""
    for start_n in range(lo, hi, BLOCK_N):
        k, v, s = _key_tile_scores(q, k_src, v_src, start_n, m_base, offs_m, L, S, E, EV, skn, skd, svn, svd, smn,
                                   qk_scale, MASK_KIND, BOUNDS, CAUSAL, BLOCK_N, BLOCK_D, BLOCK_DV, DOT_F32, USE_TMA,
                                   EVEN)
        p = tl.exp2(_scaled_scores(s, qk_scale, MASK_KIND, BOUNDS, CAUSAL) - lse2[:, None])
        dp = _dot(do, tl.trans(v), DOT_F32)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, DOT_F32)
    return dq


@triton.jit
def sdpa_backward_dq_kernel(
    Q, K, V, M, DO, LSE, DELTA, DQ, sm_scale,
    sqz, sqh, sqm, sqd, skz, skh, skn, skd, svz, svh, svn, svd, smz, smh, smm, smn, sgz, sgh, sgm, sgd,
    H, GROUPS, L, S, E, EV,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr,
    USE_TMA: tl.constexpr, EVEN: tl.constexpr,
):
    """dQ for one tile of query rows: dQ = scale * sum_j dS_ij K_j, dS = P (dP - delta)."""
    pid_m, zh = _tile_of_program(tl.cdiv(L, BLOCK_M))
    z, h = zh // H, zh % H
    hk = h // GROUPS
    row0 = pid_m * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M).to(tl.int64)
    q_src = _rows_source(Q + z * sqz + h * sqh, L, E, sqm, BLOCK_M, BLOCK_D, USE_TMA)
    q = _load_rows(q_src, row0, L, E, sqm, sqd, BLOCK_M, BLOCK_D, USE_TMA, EVEN)
    do_src = _rows_source(DO + z * sgz + h * sgh, L, EV, sgm, BLOCK_M, BLOCK_DV, USE_TMA)
    do = _load_rows(do_src, row0, L, EV, sgm, sgd, BLOCK_M, BLOCK_DV, USE_TMA, EVEN)
    lse2, delta = _row_stats(LSE, DELTA, zh, offs_m, L)
    k_src = _rows_source(K + z * skz + hk * skh, S, E, skn, BLOCK_N, BLOCK_D, USE_TMA)
    v_src = _rows_source(V + z * svz + hk * svh, S, EV, svn, BLOCK_N, BLOCK_DV, USE_TMA)
    m_base = M + z * smz + h * smh + offs_m[:, None] * smm
    qk_scale = sm_scale * LOG2E

    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    full, hi = _key_tile_bounds(row0, S, BLOCK_M, BLOCK_N, IS_CAUSAL)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_src, v_src, m_base, offs_m, 0, full, L, S, E, EV, skn, skd, svn, svd,
                   smn, qk_scale, MASK_KIND, False, False, BLOCK_N, BLOCK_D, BLOCK_DV, DOT_F32, USE_TMA, EVEN)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_src, v_src, m_base, offs_m, full, hi, L, S, E, EV, skn, skd, svn, svd,
                   smn, qk_scale, MASK_KIND, True, IS_CAUSAL, BLOCK_N, BLOCK_D, BLOCK_DV, DOT_F32, USE_TMA, False)
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(DQ + zh * L * E + offs_m[:, None] * E + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=(offs_m[:, None] < L) & (offs_d[None, :] < E))


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_src, do_src, LSE, DELTA, zh, mask_base, offs_n, lo, hi, L, S, E, EV, sqm, sqd, sgm,
                sgd, smm, qk_scale, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr, USE_TMA: tl.constexpr,
                EVEN: tl.constexpr, WITH_DK: tl.constexpr, WITH_DV: tl.constexpr):
    """dK, dV (unscaled) of the key tile summed over query tiles [lo, hi) of one query head, in
    transposed form: S^T = K Q^T (key rows x query rows), so every product has the key tile's
    rows as its M (the rows a warpgroup's wgmma takes) and no tile is transposed in registers.
    Query rows past L need no mask: their Q and dO rows load as zeros and add nothing; key rows
    past S produce rows that are never stored."""
    for start_m in range(lo, hi, BLOCK_M):
        q = _load_rows(q_src, start_m, L, E, sqm, sqd, BLOCK_M, BLOCK_D, USE_TMA, EVEN)
        do = _load_rows(do_src, start_m, L, EV, sgm, sgd, BLOCK_M, BLOCK_DV, USE_TMA, EVEN)
        offs_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
        lse2, delta = _row_stats(LSE, DELTA, zh, offs_m, L)
        st = _dot(k, tl.trans(q), DOT_F32) * qk_scale
        if MASK_KIND != 0 or CAUSAL:
            st = _mask_scores(st, mask_base + offs_m[None, :] * smm, offs_m[None, :], offs_n[:, None], L, S,
                              MASK_KIND, False, CAUSAL)
        pt = tl.exp2(st - lse2[None, :])
        if WITH_DV:
            dv += _dot(pt.to(do.dtype), do, DOT_F32)
        if WITH_DK:
            dpt = _dot(v, tl.trans(do), DOT_F32)
            dst = pt * (dpt - delta[None, :])
            dk += _dot(dst.to(q.dtype), q, DOT_F32)
    return dk, dv


@triton.jit
def sdpa_backward_dkdv_kernel(
    Q, K, V, M, DO, LSE, DELTA, DK, DV, sm_scale,
    sqz, sqh, sqm, sqd, skz, skh, skn, skd, svz, svh, svn, svd, smz, smh, smm, smn, sgz, sgh, sgm, sgd,
    H, GROUPS, L, S, E, EV,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr,
    USE_TMA: tl.constexpr, EVEN: tl.constexpr, WITH_DK: tl.constexpr, WITH_DV: tl.constexpr,
):
    """dK and dV for one tile of key rows of one key/value head, summed over the GROUPS query
    heads that read it (no atomics): dV = sum_i P_ij dO_i, dK = scale * sum_i dS_ij Q_i.
    WITH_DK / WITH_DV let a launch make one of the two (see ``dkdv_passes``): one accumulator
    fewer to hold."""
    pid_n, zhk = _tile_of_program(tl.cdiv(S, BLOCK_N))
    HK = H // GROUPS
    z, hk = zhk // HK, zhk % HK
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
    k_src = _rows_source(K + z * skz + hk * skh, S, E, skn, BLOCK_N, BLOCK_D, USE_TMA)
    k = _load_rows(k_src, n0, S, E, skn, skd, BLOCK_N, BLOCK_D, USE_TMA, EVEN)
    if WITH_DK:  # dV needs no V
        v_src = _rows_source(V + z * svz + hk * svh, S, EV, svn, BLOCK_N, BLOCK_DV, USE_TMA)
        v = _load_rows(v_src, n0, S, EV, svn, svd, BLOCK_N, BLOCK_DV, USE_TMA, EVEN)
        dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    else:
        v = k
        dk = 0.0
    if WITH_DV:
        dv = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    else:
        dv = 0.0
    lo = 0
    mid = 0
    if IS_CAUSAL:
        # Query tiles wholly above this key tile see none of it: skipped. Those from ``mid`` on
        # lie wholly below it: no causal mask.
        lo = (n0 // BLOCK_M) * BLOCK_M
        mid = tl.minimum(tl.cdiv(n0 + BLOCK_N, BLOCK_M) * BLOCK_M, L)
    qk_scale = sm_scale * LOG2E
    for g in range(0, GROUPS):
        h = hk * GROUPS + g
        zh = z * H + h
        q_src = _rows_source(Q + z * sqz + h * sqh, L, E, sqm, BLOCK_M, BLOCK_D, USE_TMA)
        do_src = _rows_source(DO + z * sgz + h * sgh, L, EV, sgm, BLOCK_M, BLOCK_DV, USE_TMA)
        mask_base = M + z * smz + h * smh + offs_n[:, None] * smn
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_src, do_src, LSE, DELTA, zh, mask_base, offs_n, lo, mid, L, S, E, EV,
                             sqm, sqd, sgm, sgd, smm, qk_scale, MASK_KIND, True, BLOCK_M, BLOCK_D, BLOCK_DV, DOT_F32,
                             USE_TMA, False, WITH_DK, WITH_DV)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_src, do_src, LSE, DELTA, zh, mask_base, offs_n, mid, L, L, S, E, EV,
                             sqm, sqd, sgm, sgd, smm, qk_scale, MASK_KIND, False, BLOCK_M, BLOCK_D, BLOCK_DV, DOT_F32,
                             USE_TMA, EVEN, WITH_DK, WITH_DV)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    if WITH_DK:
        tl.store(DK + zhk * S * E + offs_n[:, None] * E + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty),
                 mask=(offs_n[:, None] < S) & (offs_d[None, :] < E))
    if WITH_DV:
        tl.store(DV + zhk * S * EV + offs_n[:, None] * EV + offs_dv[None, :], dv.to(DV.dtype.element_ty),
                 mask=(offs_n[:, None] < S) & (offs_dv[None, :] < EV))


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention kernels. QP/KP are the score function's inputs: query and keys for
# dot and scaled_dot, (query W) and keys for general, (query W_q^T) and (keys W_k^T) for additive,
# the projections made once by ``projection_kernel`` ([B, T, A] fp32: the hidden tensor
# [B, Tq, Tk, A] never exists). The forward is two kernels: the scores of a (query tile, key
# tile) pair, all such pairs in parallel, into an fp32 scratch the size of the weights; then the
# masked softmax and the context for a query tile and a slice of the value features.
# Products over a feature axis take ``tl.dot`` for tiles of 16 rows or more (its least); the
# single-row tiles of a decoder step take a broadcast product instead, whose (rows, keys,
# features) terms pile up in registers over the loop and are summed once after it: a sum per
# iteration would cost more cross-lane shuffles than the products themselves.

KIND_DOT, KIND_ADDITIVE = 0, 1


@triton.jit
def _tile_pair_of_program(n_fast, n_mid):
    """(fast, mid, batch) of this program in a 1-D grid of n_fast x n_mid x batch programs."""
    fast, rest = _tile_of_program(n_fast)
    return fast, rest % n_mid, rest // n_mid


@triton.jit
def _additive_gate(x, y, FACTORED: tl.constexpr):
    """r = 1 / (1 + exp(2 (x_i + y_j))) over (rows of x, rows of y, features), so that
    tanh(x_i + y_j) = 1 - 2r and 1 - tanh^2 = 4 r (1 - r). Near 0, 1 - 2r keeps an absolute
    error of ~1e-7, not a relative one (the activation's tanh guards that): the terms only ever
    enter sums over the attention features, where absolute error counts.

    FACTORED (tiles of many rows): exp(2x) exp(2y) takes one exp per row of x and of y and one
    reciprocal per element, where exp(2 (x + y)) takes an exp per element: the special-function
    units, which bound these kernels, do about half the work. It is exact while |x|, |y| <= 40
    (each factor a normal float, their product at worst inf, whose r = 0 is the limit); a slice
    with a larger projection, which no sane model makes, takes the direct form, right at any
    magnitude. Single-row tiles take the direct form: there every y is used once anyway."""
    if FACTORED:
        if tl.maximum(tl.max(tl.abs(x)), tl.max(tl.abs(y))) <= 40.0:
            r = 1.0 / (1.0 + tl.exp(2.0 * x)[:, None, :] * tl.exp(2.0 * y)[None, :, :])
        else:
            r = tl.sigmoid(-2.0 * (x[:, None, :] + y[None, :, :]))
    else:
        r = tl.sigmoid(-2.0 * (x[:, None, :] + y[None, :, :]))
    return r


@triton.jit
def projection_kernel(
    X, W, Y, sxm, sxk, swn, swk, n_rows, n_cols, depth,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
):
    """Y = X W^T in fp32 (X (n_rows, depth), W (n_cols, depth), Y contiguous): the score
    projections, once per call. 16-bit storage multiplies on the tensor cores with fp32
    accumulation, so the tanh sees unrounded projections; fp32 storage multiplies in full fp32."""
    pid_n, pid_m = _tile_of_program(tl.cdiv(n_cols, BLOCK_N))  # column tiles of a row tile run together
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for start_k in range(0, depth, BLOCK_K):
        offs_k = start_k + tl.arange(0, BLOCK_K)
        x = tl.load(X + offs_m[:, None] * sxm + offs_k[None, :] * sxk,
                    mask=(offs_m[:, None] < n_rows) & (offs_k[None, :] < depth), other=0.0)
        w = tl.load(W + offs_n[:, None] * swn + offs_k[None, :] * swk,
                    mask=(offs_n[:, None] < n_cols) & (offs_k[None, :] < depth), other=0.0)
        acc += _dot(x, tl.trans(w), DOT_F32)
    tl.store(Y + offs_m[:, None] * n_cols + offs_n[None, :], acc,
             mask=(offs_m[:, None] < n_rows) & (offs_n[None, :] < n_cols))


@triton.jit
def enc_dec_scores_kernel(
    QP, KP, VA, M, SC, sm_scale,
    sqb, sqm, sqf, skb, skn, skf, smb, smm, smn, ssb, ssm, ssn,
    Tq, Tk, F,
    KIND: tl.constexpr, MASK_KIND: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Scores of one (BLOCK_M, BLOCK_N) tile of one batch row, over the F score features in
    BLOCK_F slices: dot: scale qp_i . kp_j; additive: sum_a v_a tanh(qp_ia + kp_ja), the
    (BLOCK_M, BLOCK_N, BLOCK_F) terms piling up in registers and summed over the features once
    at the end. Masked-out positions get -inf. SC is the fp32 scratch the softmax reads or the
    scores output."""
    # The query tiles of a key tile run together: they share its key projection in L2.
    pid_m, pid_n, b = _tile_pair_of_program(tl.cdiv(Tq, BLOCK_M), tl.cdiv(Tk, BLOCK_N))
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    rows, cols = offs_m < Tq, offs_n < Tk
    s = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    terms = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_F), tl.float32)
    for start_f in range(0, F, BLOCK_F):
        offs_f = start_f + tl.arange(0, BLOCK_F)
        x = tl.load(QP + b * sqb + offs_m[:, None] * sqm + offs_f[None, :] * sqf,
                    mask=rows[:, None] & (offs_f[None, :] < F), other=0.0).to(tl.float32)
        y = tl.load(KP + b * skb + offs_n[:, None] * skn + offs_f[None, :] * skf,
                    mask=cols[:, None] & (offs_f[None, :] < F), other=0.0).to(tl.float32)
        if KIND == 1:
            va = tl.load(VA + offs_f, mask=offs_f < F, other=0.0).to(tl.float32)  # 0 past F: no term
            terms += (1.0 - 2.0 * _additive_gate(x, y, BLOCK_M > 1)) * va[None, None, :]
        elif BLOCK_M >= 16:
            s += tl.dot(x, tl.trans(y), input_precision="ieee")
        else:
            terms += x[:, None, :] * y[None, :, :]
    if KIND == 1:
        s = tl.sum(terms, 2)
    elif BLOCK_M >= 16:
        s = s * sm_scale
    else:
        s = tl.sum(terms, 2) * sm_scale
    keep = rows[:, None] & cols[None, :]
    if MASK_KIND == 1:
        keep = keep & (tl.load(M + b * smb + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=keep, other=0) != 0)
    tl.store(SC + b * ssb + offs_m[:, None] * ssm + offs_n[None, :] * ssn,
             tl.where(keep, s, float("-inf")).to(SC.dtype.element_ty), mask=rows[:, None] & cols[None, :])


@triton.jit
def enc_dec_softmax_context_kernel(
    SC, VAL, W, CTX, ssb, ssm, ssn, svb, svn, svd, swb, swm, swn, scb, scm, scd, Tq, Tk, Dv,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr,
):
    """Softmax of one tile of score rows over the keys and its context for one BLOCK_DV slice
    of the value features: pass 1 finds each row's max and sum, pass 2 writes the weights (the
    first value slice's programs) and accumulates P V. A row with no key left gets weights 0."""
    pid_v, pid_m, b = _tile_pair_of_program(tl.cdiv(tl.maximum(Dv, 1), BLOCK_DV), tl.cdiv(Tq, BLOCK_M))
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rows = offs_m < Tq
    s_rows = SC + b * ssb + offs_m[:, None] * ssm
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    for start_n in range(0, Tk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        s = tl.load(s_rows + offs_n[None, :] * ssn, mask=rows[:, None] & (offs_n[None, :] < Tk), other=float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing kept yet: exp(-inf) = 0
        l_i = l_i * tl.exp(m_i - shift) + tl.sum(tl.exp(s - shift[:, None]), 1)
        m_i = m_new
    shift = tl.where(m_i == float("-inf"), 0.0, m_i)
    inv_l = tl.where(l_i > 0.0, 1.0 / tl.where(l_i > 0.0, l_i, 1.0), 0.0)
    offs_dv = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    terms = tl.zeros((BLOCK_M, BLOCK_DV, BLOCK_N), tl.float32)  # keys last: p is not recomputed per feature
    for start_n in range(0, Tk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        inside = rows[:, None] & (offs_n[None, :] < Tk)
        s = tl.load(s_rows + offs_n[None, :] * ssn, mask=inside, other=float("-inf"))
        p = tl.exp(s - shift[:, None]) * inv_l[:, None]
        if pid_v == 0:
            tl.store(W + b * swb + offs_m[:, None] * swm + offs_n[None, :] * swn, p.to(W.dtype.element_ty),
                     mask=inside)
        if BLOCK_M >= 16:  # the tensor cores in the storage dtype, as the SDPA kernels do
            val = tl.load(VAL + b * svb + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                          mask=(offs_n[:, None] < Tk) & (offs_dv[None, :] < Dv), other=0.0)
            acc += _dot(p.to(val.dtype), val, DOT_F32)
        else:
            val_t = tl.load(VAL + b * svb + offs_n[None, :] * svn + offs_dv[:, None] * svd,
                            mask=(offs_n[None, :] < Tk) & (offs_dv[:, None] < Dv), other=0.0)
            terms += p[:, None, :] * val_t.to(tl.float32)[None, :, :]
    if BLOCK_M < 16:
        acc = tl.sum(terms, 2)
    tl.store(CTX + b * scb + offs_m[:, None] * scm + offs_dv[None, :] * scd, acc.to(CTX.dtype.element_ty),
             mask=rows[:, None] & (offs_dv[None, :] < Dv))


@triton.jit
def attention_backward_dp_kernel(
    W, DW, DCTX, VAL, DE, RS, swb, swm, swn, sgb, sgm, sgn, scb, scm, scd, svb, svn, svd, Tq, Tk, Dv,
    HAS_DW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    """dP = dC V^T (+ dW when the weights reach the loss) for one (BLOCK_M, BLOCK_N) tile, into
    DE (fp32, contiguous), and this key tile's part of each row's sum_j P_ij dP_ij into
    RS[b, key tile, i] (the softmax backward's row term, summed in order by the next kernel)."""
    n_n = tl.cdiv(Tk, BLOCK_N)
    pid_m, pid_n, b = _tile_pair_of_program(tl.cdiv(Tq, BLOCK_M), n_n)  # query tiles sharing a V tile together
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    rows, cols = offs_m < Tq, offs_n < Tk
    inside = rows[:, None] & cols[None, :]
    dp = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    terms = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_DV), tl.float32)
    for start_d in range(0, Dv, BLOCK_DV):
        offs_d = start_d + tl.arange(0, BLOCK_DV)
        dc = tl.load(DCTX + b * scb + offs_m[:, None] * scm + offs_d[None, :] * scd,
                     mask=rows[:, None] & (offs_d[None, :] < Dv), other=0.0)
        val = tl.load(VAL + b * svb + offs_n[:, None] * svn + offs_d[None, :] * svd,
                      mask=cols[:, None] & (offs_d[None, :] < Dv), other=0.0)
        if BLOCK_M >= 16:  # exact products of the storage-dtype tiles, fp32 accumulation
            dp += _dot(dc, tl.trans(val), DOT_F32)
        else:
            terms += dc.to(tl.float32)[:, None, :] * val.to(tl.float32)[None, :, :]
    if BLOCK_M < 16:
        dp = tl.sum(terms, 2)
    if HAS_DW:
        dw = tl.load(DW + b * sgb + offs_m[:, None] * sgm + offs_n[None, :] * sgn, mask=inside, other=0.0)
        dp += dw.to(tl.float32)
    p = tl.load(W + b * swb + offs_m[:, None] * swm + offs_n[None, :] * swn, mask=inside, other=0.0).to(tl.float32)
    tl.store(DE + (b * Tq + offs_m[:, None]) * Tk + offs_n[None, :], dp, mask=inside)
    tl.store(RS + (b * n_n + pid_n) * Tq + offs_m, tl.sum(p * dp, 1), mask=rows)


@triton.jit
def attention_backward_de_kernel(
    W, DE, RS, swb, swm, swn, Tq, Tk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dE = P (dP - sum_j P_ij dP_ij), in place over the dP in DE; the row term adds the key
    tiles' parts in a fixed order, so the result is the same bits every run."""
    n_n = tl.cdiv(Tk, BLOCK_N)
    pid_n, pid_m, b = _tile_pair_of_program(n_n, tl.cdiv(Tq, BLOCK_M))
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    rows = offs_m < Tq
    inside = rows[:, None] & (offs_n[None, :] < Tk)
    row_term = tl.zeros((BLOCK_M,), tl.float32)
    for tile in range(0, n_n):
        row_term += tl.load(RS + (b * n_n + tile) * Tq + offs_m, mask=rows, other=0.0)
    p = tl.load(W + b * swb + offs_m[:, None] * swm + offs_n[None, :] * swn, mask=inside, other=0.0).to(tl.float32)
    de_ptrs = DE + (b * Tq + offs_m[:, None]) * Tk + offs_n[None, :]
    tl.store(de_ptrs, p * (tl.load(de_ptrs, mask=inside, other=0.0) - row_term[:, None]), mask=inside)


@triton.jit
def additive_backward_kernel(
    QP, KP, VA, DE, DQA, DKB, DVA, sqb, sqm, sqf, skb, skn, skf, sdb, sdm, sdn, Tq, Tk, F,
    FOR_KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Additive scores backward for one BLOCK_F slice of the attention features, with r as in
    ``_additive_gate`` and g_ija = dE_ij v_a (1 - t_ija^2) = 4 v_a dE_ij r (1 - r):
    FOR_KEYS=0: a tile of decoder rows i over every key: dQA_ia = sum_j g_ija (the (i, j, a)
      terms pile up in registers and are summed over j once, after the loop);
    FOR_KEYS=1: a tile of encoder rows j over every decoder row: dKB_ja = sum_i g_ija, and the
      tile's part of dV_a = sum_ij dE_ij t_ija into DVA[b, key tile, a].
    DQA and DKB are in the storage dtype (they feed the tensor-core products after)."""
    n_f = tl.cdiv(F, BLOCK_F)
    if FOR_KEYS == 0:
        pid_m, pid_f, b = _tile_pair_of_program(tl.cdiv(Tq, BLOCK_M), n_f)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
        in_f = offs_f < F
        va = tl.load(VA + offs_f, mask=in_f, other=0.0).to(tl.float32)
        x = tl.load(QP + b * sqb + offs_m[:, None] * sqm + offs_f[None, :] * sqf,
                    mask=(offs_m[:, None] < Tq) & in_f[None, :], other=0.0).to(tl.float32)
        terms = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_F), tl.float32)
        for start_n in range(0, Tk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
            y = tl.load(KP + b * skb + offs_n[:, None] * skn + offs_f[None, :] * skf,
                        mask=(offs_n[:, None] < Tk) & in_f[None, :], other=0.0).to(tl.float32)
            de = tl.load(DE + b * sdb + offs_m[:, None] * sdm + offs_n[None, :] * sdn,
                         mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk), other=0.0).to(tl.float32)
            r = _additive_gate(x, y, BLOCK_M > 1)
            terms += de[:, :, None] * (r * (1.0 - r))
        d_q = tl.sum(terms, 1) * (4.0 * va)[None, :]
        tl.store(DQA + (b * Tq + offs_m[:, None]) * F + offs_f[None, :], d_q.to(DQA.dtype.element_ty),
                 mask=(offs_m[:, None] < Tq) & in_f[None, :])
    else:
        pid_n, pid_f, b = _tile_pair_of_program(tl.cdiv(Tk, BLOCK_N), n_f)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
        in_f = offs_f < F
        va = tl.load(VA + offs_f, mask=in_f, other=0.0).to(tl.float32)
        y = tl.load(KP + b * skb + offs_n[:, None] * skn + offs_f[None, :] * skf,
                    mask=(offs_n[:, None] < Tk) & in_f[None, :], other=0.0).to(tl.float32)
        d_k = tl.zeros((BLOCK_N, BLOCK_F), tl.float32)
        d_v = tl.zeros((BLOCK_N, BLOCK_F), tl.float32)
        for start_m in range(0, Tq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
            x = tl.load(QP + b * sqb + offs_m[:, None] * sqm + offs_f[None, :] * sqf,
                        mask=(offs_m[:, None] < Tq) & in_f[None, :], other=0.0).to(tl.float32)
            de = tl.load(DE + b * sdb + offs_m[:, None] * sdm + offs_n[None, :] * sdn,
                         mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk), other=0.0).to(tl.float32)[:, :, None]
            r = _additive_gate(x, y, BLOCK_M > 1)
            d_k += tl.sum(de * (r * (1.0 - r)), 0)
            d_v += tl.sum(de * (1.0 - 2.0 * r), 0)
        d_k = d_k * (4.0 * va)[None, :]
        tl.store(DKB + (b * Tk + offs_n[:, None]) * F + offs_f[None, :], d_k.to(DKB.dtype.element_ty),
                 mask=(offs_n[:, None] < Tk) & in_f[None, :])
        tl.store(DVA + (b * tl.cdiv(Tk, BLOCK_N) + pid_n) * F + offs_f, tl.sum(d_v, 0), mask=in_f)


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention: launch helpers


MAX_PROGRAMS = 2**31 - 1  # CUDA's limit on grid axis 0, the only axis these launches use


def program_grid(tiles: int, rows: int) -> tuple[int]:
    """The 1-D grid of ``tiles`` x ``rows`` programs that ``_tile_of_program`` decodes."""
    programs = tiles * rows
    if programs > MAX_PROGRAMS:
        raise ValueError(f"{tiles} tiles x {rows} heads or batch rows make {programs} programs, more than a "
                         f"CUDA grid holds ({MAX_PROGRAMS}); split the batch")
    return (programs,)


class SdpaBlocks(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    # The dK/dV kernel's own tiles where they differ: it holds k, v and two accumulators of a key
    # tile over its loop, more than the others hold. Its tiles are its own business: each kernel
    # reads only the row statistics, which no tile shapes.
    dkdv: SdpaBlocks | None = None
    tma: bool = False  # tiles through TMA tensor descriptors (sm_90, typical launches only)
    num_stages: int | None = None  # software pipelining depth; None: Triton's default
    split: bool = False  # dK/dV only: dK and dV in two launches, one accumulator each (``dkdv_passes``)

    def for_dkdv(self) -> SdpaBlocks:
        return self.dkdv or self


def dkdv_passes(blocks: SdpaBlocks) -> tuple[tuple[bool, bool], ...]:
    """(WITH_DK, WITH_DV) of each dK/dV launch at the dK/dV tiles ``blocks``: both in one, or
    (``split``) dK, then dV, each pass holding one [key rows, d] accumulator. The dK pass
    recomputes S^T, which the dV pass also makes: 5 products where one pass makes 4. Two tiles
    split, both at head dim 256: fp32 storage, whose FMA products (no tensor cores) with both
    [16, 256] accumulators live spill at every tile config (d=128 fits both in one pass; split,
    ptxas spills one of its builds), and sm_90's typical tiles (see ``SDPA_SM90_TILES``)."""
    return ((True, False), (False, True)) if blocks.split else ((True, True),)


# Padded head dims the SDPA kernels are built for. Heads below 64 pad to 64: real models use
# 64 and 128, and three tiers keep the compile gate to a handful of tile configs.
HEAD_DIMS = (64, 128, 256)
# The GPU generations the launch heuristic tells apart (and the compile gate builds for): sm_90
# (Hopper: wgmma, TMA) and everything else, which takes sm_80's configurations.
ARCHS = (80, 90)


def padded_head_dim(n: int) -> int:
    return max(HEAD_DIMS[0], triton.next_power_of_2(n))


# Tiles of every SDPA kernel by (padded head dim, bytes per stored element) for the launches
# that are not typical (``sdpa_typical_launch``) and for fp32 storage, on every GPU: the largest
# with which the forward and both backward kernels build without spilling (the compile gate's
# rule) on sm_80 and sm_90 in the heaviest launch the dispatch can send (GQA, a mask, causal,
# strided views one element into their storage). fp32 storage multiplies in full fp32 on the FMA
# units, whose operand layouts take many more registers: the smallest tiles there; the forward
# and dQ over 4 warps at d=64 and 8 above (at d=256 unpipelined, num_stages=1: deeper, or over
# 4 warps, they spill); the dK/dV kernel unpipelined, over 4 warps at d=64 and 8 above, and at
# d=256 in two passes (``dkdv_passes``). No fp32 dK/dV configuration (2, 4 or 8 warps, 1 or 3
# stages) builds spill-free in every launch: the best spills 8-64 bytes in a few (see
# ``_FP32_DKDV_SPILLS``).
SDPA_TILES = {
    (64, 2): SdpaBlocks(32, 32, 4),
    (128, 2): SdpaBlocks(32, 32, 8),
    (256, 2): SdpaBlocks(16, 16, 8),
    (64, 4): SdpaBlocks(16, 16, 4, SdpaBlocks(16, 16, 4, num_stages=1)),
    (128, 4): SdpaBlocks(16, 16, 8, SdpaBlocks(16, 16, 8, num_stages=1)),
    (256, 4): SdpaBlocks(16, 16, 8, SdpaBlocks(16, 16, 8, num_stages=1, split=True), num_stages=1),
}


# 16-bit tiles of a typical launch on sm_80 (and any GPU but sm_90): pointer loads, which
# Triton's pipeliner turns into cp.async copies num_stages deep.
#
# Which warp computes which rows: Triton gives every tl.dot of a kernel whose products feed one
# another (all of them here) one warp layout, that of the [rows, head dim] accumulator's product
# (O, dQ, dK/dV; the builds' TTGIR shows it): all warps down its rows when the tile has at least
# as many rows as the head dim, else all across its columns. A warp's mma.sync is 16 rows by 8
# columns, so either way a product with fewer than 16 rows (or 8 columns) per warp makes several
# warps compute the same scores (the report's inner-loop "mma work" above 1.0). Every tile below
# gives each warp its own 16 rows or 8 columns of every product: mma work 1.0 in every build, 0
# spills, and at most 99 KiB of shared memory (the most a block may take on sm_86/sm_89, which
# take these tiles too).
# - d=64: the forward and dQ over 64x64 tiles and 4 warps; dK/dV small tiles (64 (or 32) key
#   rows spill in the typical-gqa launch), two deep (three deep spills in typical-ragged).
# - d=128: the forward and dQ over 128 query rows and 8 warps, 16 rows each (with 64 rows the
#   8 warps computed every score twice: mma work 1.5, 3.6 instructions per kFLOP, 1.3 now);
#   dK/dV likewise over 128 key rows and 8 warps (was 64 key rows: mma work 1.5, 1.39 per kFLOP,
#   0.86 now), unpipelined: two deep, the typical-ragged causal build spills 16 bytes.
# - d=256: the [rows, 256] accumulators put the warps across their columns, so the score tiles
#   need 8 columns per warp: forward and dQ 32 query x 64 key rows over 8 warps (was 32x32:
#   mma work 1.5 and 1.67; 32x32 over 4 warps spills in typical-ragged), unpipelined (two deep,
#   dQ takes 100 KiB); dK/dV 32 query x 16 key rows over 4 warps (was 16x16 over 8: mma work
#   2.5), unpipelined (two or three deep it spills in typical-gqa or typical-ragged; 64 query
#   rows over 8 warps take 112 KiB).
SDPA_TYPICAL_TILES = {
    64: SdpaBlocks(64, 64, 4, SdpaBlocks(32, 16, 4, num_stages=2)),
    128: SdpaBlocks(128, 32, 8, SdpaBlocks(16, 128, 8, num_stages=1)),
    256: SdpaBlocks(32, 64, 8, SdpaBlocks(32, 16, 4, num_stages=1), num_stages=1),
}

# 16-bit tiles of a typical launch on sm_90 (Hopper), by padded head dim: TMA tensor descriptors
# for every tile; the forward and dQ take 128 query rows over two warpgroups (8 warps, each
# warpgroup's wgmma 64 rows) at d=64 and 128; dK/dV takes 64 key rows, so each of its four
# products (all with the key tile's rows as M) is a wgmma, over 4 warps. 128 key rows in the
# forward, or 64 query rows in dK/dV at d=128, reach 255 registers or spill. d=256 takes 64-row
# forward and dQ tiles, and dK/dV in two passes (``split``): Triton gives chained wgmma products
# all the warps down their rows, 16 rows each, so the 64 key rows take 4 warps, whose two
# [64, 256] fp32 accumulators (128 registers each a thread) cannot both be held; over 8 warps (one
# pass, before) the 16-row score products ran twice (mma work 1.5). Split, each pass holds one
# accumulator and every product runs once (5 products where one pass makes 4: dK's pass makes
# S^T again), three deep (two or four deep, or 32 query rows, the causal GQA dK pass spills 8
# bytes). Causal and not take the same tiles (the gate builds both).
SDPA_SM90_TILES = {
    64: SdpaBlocks(128, 64, 8, SdpaBlocks(32, 64, 4, tma=True, num_stages=3), tma=True, num_stages=3),
    128: SdpaBlocks(128, 64, 8, SdpaBlocks(32, 64, 4, tma=True, num_stages=2), tma=True, num_stages=2),
    256: SdpaBlocks(64, 32, 4, SdpaBlocks(16, 64, 4, tma=True, num_stages=3, split=True), tma=True, num_stages=2),
}


def sdpa_typical_launch(addresses, strides, sizes, mask_kind: int) -> bool:
    """Whether a launch is typical: no mask; every tensor the caller hands in (``addresses``,
    with its ``strides``) 16-byte aligned, with unit stride on the head dim and every other
    stride divisible by 16; every sequence length and head dim (``sizes``) divisible by 16.
    Triton then marks all of these divisible by 16 and folds the unit strides, as in the gate's
    typical builds, which prove the larger tiles; every other launch takes the tiles the gate
    proves at the worst launch. These are also the conditions of a TMA tensor descriptor
    (16-byte base and row strides, unit column stride)."""
    return (mask_kind == MASK_NONE and all(n % 16 == 0 for n in sizes) and all(a % 16 == 0 for a in addresses)
            and all(st[-1] == 1 and all(x % 16 == 0 for x in st[:-1]) for st in strides))


def sdpa_blocks(block_d: int, block_dv: int, itemsize: int, typical: bool, arch: int = 80,
                causal: bool = False) -> SdpaBlocks:
    """The launch heuristic: tiles, warps, pipelining and the copy path of every SDPA kernel,
    keyed on the wider padded head dim, the storage width, causal or not, and the GPU
    generation (``ARCHS``). 16-bit storage in a typical launch (``sdpa_typical_launch``) takes
    ``SDPA_SM90_TILES`` on sm_90 and ``SDPA_TYPICAL_TILES`` elsewhere; everything else
    ``SDPA_TILES``. ``causal`` selects nothing today: every table's tiles build spill-free both
    ways (the gate builds both), and the key stays so a table that needs it can use it."""
    head_dim = max(block_d, block_dv)
    if typical and itemsize == 2:
        return (SDPA_SM90_TILES if arch == 90 else SDPA_TYPICAL_TILES)[head_dim]
    return SDPA_TILES[(head_dim, 4 if itemsize == 4 else 2)]


def device_arch(x: torch.Tensor) -> int:
    """The ``ARCHS`` entry whose configurations a launch on x's device takes: 90 on an sm_90 GPU,
    80 on any other, and in the interpreter (CPU tensors; tests pick 90 to run the TMA path)."""
    if x.device.type != "cuda":
        return 80
    return 90 if torch.cuda.get_device_capability(x.device) == (9, 0) else 80


def sdpa_even(L: int, S: int, E: int, EV: int, block_d: int, block_dv: int, blocks: SdpaBlocks) -> bool:
    """The EVEN constexpr of a kernel launched with ``blocks``: every length divides its tile and
    every head dim is its padded one, so no load needs a mask."""
    return L % blocks.block_m == 0 and S % blocks.block_n == 0 and E == block_d and EV == block_dv


def _launch_blocks(tensors, sizes, mask_kind: int, block_d: int, block_dv: int, itemsize: int,
                   causal: bool) -> SdpaBlocks:
    typical = sdpa_typical_launch([t.data_ptr() for t in tensors], [t.stride() for t in tensors], sizes, mask_kind)
    return sdpa_blocks(block_d, block_dv, itemsize, typical, device_arch(tensors[0]), causal)


def _torch_scratch(size: int, alignment: int, stream) -> torch.Tensor:
    # The caching allocator's blocks are 512-byte aligned, past the 128 bytes descriptors need.
    return torch.empty(size, dtype=torch.int8, device="cuda")


@contextlib.contextmanager
def _descriptor_scratch(blocks: SdpaBlocks):
    """Around a launch whose kernels build TMA descriptors in the kernel: those live in global
    scratch that Triton's launcher asks an allocator for (``triton.set_allocator``). When the
    caller has set none, one from torch's caching allocator for the launch only (so the caller's
    setting, if any, is never replaced). Nothing is needed in the interpreter."""
    from triton.runtime import _allocation

    uses_tma = blocks.tma or blocks.for_dkdv().tma
    if not uses_tma or triton_interpreting() or not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        yield
        return
    token = _allocation._allocator.set(_torch_scratch)
    try:
        yield
    finally:
        _allocation._allocator.reset(token)


def dot_f32(x: torch.Tensor) -> bool:
    """True only for bfloat16 under Triton's interpreter (see ``_dot``)."""
    return x.dtype == torch.bfloat16 and triton_interpreting()


def _heads_view(x: torch.Tensor) -> torch.Tensor:
    """(..., H, T, D) as a 4-D (Z, H, T, D) view (a copy only where the strides force one)."""
    if x.dim() == 2:
        return x[None, None]
    return x.reshape(math.prod(x.shape[:-3]), *x.shape[-3:])


def _mask_view(attn_mask, q4: torch.Tensor, S: int, query_shape) -> tuple[torch.Tensor, int]:
    """(the mask as a broadcast (Z, Hq, L, S) view, MASK_KIND); a dummy for no mask."""
    if attn_mask is None:
        return q4, MASK_NONE
    mask = attn_mask.expand(*query_shape[:-1], S)
    mask = _heads_view(mask)
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8), MASK_BOOL  # Triton loads bytes; nonzero = keep
    return mask, MASK_ADD


def _sdpa_setup(q, k, v, attn_mask, scale):
    for name, x in (("query", q), ("key", k), ("value", v)):
        check_dtype(x, name)
    q4, k4, v4 = _heads_view(q), _heads_view(k), _heads_view(v)
    mask4, mask_kind = _mask_view(attn_mask, q4, k.shape[-2], q.shape)
    if mask_kind == MASK_NONE:
        mask_strides = (0, 0, 0, 0)
    else:
        mask_strides = mask4.stride()
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    block_d, block_dv = padded_head_dim(q.shape[-1]), padded_head_dim(v.shape[-1])
    return q4, k4, v4, mask4, mask_kind, mask_strides, sm_scale, block_d, block_dv


def _meta(blocks: SdpaBlocks, L: int, S: int, E: int, EV: int, block_d: int, block_dv: int) -> dict:
    """The launch options and tile constexprs every SDPA kernel but delta takes from ``blocks``."""
    meta = dict(BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
                USE_TMA=blocks.tma, EVEN=sdpa_even(L, S, E, EV, block_d, block_dv, blocks),
                num_warps=blocks.num_warps)
    if blocks.num_stages is not None:
        meta["num_stages"] = blocks.num_stages
    return meta


def sdpa_forward(query, key, value, attn_mask=None, *, is_causal=False, scale=None, groups=1):
    q4, k4, v4, mask4, mask_kind, mask_strides, sm_scale, block_d, block_dv = _sdpa_setup(
        query, key, value, attn_mask, scale)
    Z, H, L, E = q4.shape
    S, EV = k4.shape[2], v4.shape[3]
    blocks = _launch_blocks((q4, k4, v4), (L, S, E, EV), mask_kind, block_d, block_dv, query.element_size(),
                            is_causal)
    out = torch.empty((Z, H, L, EV), dtype=query.dtype, device=query.device)
    lse = torch.empty((Z, H, L), dtype=torch.float32, device=query.device)
    if out.numel() and S == 0:  # softmax over no keys: nothing takes part
        out.zero_()
        lse.fill_(float("-inf"))
    elif out.numel():
        if sm_scale < 0:  # the kernel scales a row's maximum, which a negative scale would make its minimum
            q4, sm_scale = torch.neg(q4), -sm_scale
        with _descriptor_scratch(blocks):
            sdpa_forward_kernel[program_grid(triton.cdiv(L, blocks.block_m), Z * H)](
                q4, k4, v4, mask4, out, lse, sm_scale, *q4.stride(), *k4.stride(), *v4.stride(), *mask_strides,
                *out.stride(), H, groups, L, S, E, EV, MASK_KIND=mask_kind, IS_CAUSAL=is_causal,
                DOT_F32=dot_f32(query), **_meta(blocks, L, S, E, EV, block_d, block_dv))
    return out.reshape(*query.shape[:-1], EV), lse.reshape(query.shape[:-1])


def sdpa_backward(grad_output, query, key, value, attn_mask=None, output=None, logsumexp=None, *, is_causal=False,
                  scale=None, groups=1):
    q4, k4, v4, mask4, mask_kind, mask_strides, sm_scale, block_d, block_dv = _sdpa_setup(
        query, key, value, attn_mask, scale)
    Z, H, L, E = q4.shape
    HK, S, EV = k4.shape[1], k4.shape[2], v4.shape[3]
    o4, do4 = _heads_view(output), _heads_view(grad_output)
    lse = logsumexp.reshape(Z * H, L).to(torch.float32).contiguous()
    blocks = _launch_blocks((q4, k4, v4, o4, do4, lse), (L, S, E, EV), mask_kind, block_d, block_dv,
                            query.element_size(), is_causal)
    dq = torch.empty((Z, H, L, E), dtype=query.dtype, device=query.device)
    dk = torch.empty((Z, HK, S, E), dtype=key.dtype, device=key.device)
    dv = torch.empty((Z, HK, S, EV), dtype=value.dtype, device=value.device)
    if dq.numel() and S:
        delta = torch.empty((Z * H, L), dtype=torch.float32, device=query.device)
        common = (*q4.stride(), *k4.stride(), *v4.stride(), *mask_strides, *do4.stride(), H, groups, L, S, E, EV)
        flags = dict(MASK_KIND=mask_kind, IS_CAUSAL=is_causal, DOT_F32=dot_f32(query))
        grid_m = program_grid(triton.cdiv(L, blocks.block_m), Z * H)
        kv = blocks.for_dkdv()
        with _descriptor_scratch(blocks):
            sdpa_backward_delta_kernel[grid_m](o4, do4, delta, *o4.stride(), *do4.stride(), H, L, EV,
                                               BLOCK_M=blocks.block_m, BLOCK_DV=block_dv, num_warps=blocks.num_warps)
            sdpa_backward_dq_kernel[grid_m](q4, k4, v4, mask4, do4, lse, delta, dq, sm_scale, *common, **flags,
                                            **_meta(blocks, L, S, E, EV, block_d, block_dv))
            for with_dk, with_dv in dkdv_passes(kv):
                sdpa_backward_dkdv_kernel[program_grid(triton.cdiv(S, kv.block_n), Z * HK)](
                    q4, k4, v4, mask4, do4, lse, delta, dk, dv, sm_scale, *common, **flags,
                    **_meta(kv, L, S, E, EV, block_d, block_dv), WITH_DK=with_dk, WITH_DV=with_dv)
    else:  # no query rows or no keys: every gradient is an empty sum
        dq.zero_(), dk.zero_(), dv.zero_()
    return dq.reshape(query.shape), dk.reshape(key.shape), dv.reshape(value.shape)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention: launch helpers


class EncDecBlocks(NamedTuple):
    block_m: int
    block_n: int
    block_f: int
    block_dv: int
    num_warps: int


# One decoder step (Tq == 1) takes single-row tiles with wide key tiles: it is memory-bound, and
# 16-row tiles would do 16x its tanh work on padding. Longer query blocks take 16-row tiles, the
# least ``tl.dot`` takes. Either way a (block_m, block_n, block_f) slice of the hidden tensor is
# 2048 or 4096 fp32 values over 128 threads (8 features a slice keep the factored tanh's two
# paths in registers, ~128 of them, where 16 features took all 255).
ENC_DEC_TILES = (EncDecBlocks(1, 64, 32, 64, 4), EncDecBlocks(16, 32, 8, 64, 4))
DOT_BLOCK_F = 32  # features per slice of the dot scores: ``tl.dot`` takes 16 at least


def enc_dec_blocks(query_rows: int) -> EncDecBlocks:
    return ENC_DEC_TILES[0] if query_rows == 1 else ENC_DEC_TILES[1]


def score_block_f(blocks: EncDecBlocks, kind_code: int) -> int:
    return blocks.block_f if kind_code == KIND_ADDITIVE else DOT_BLOCK_F


class ProjectionBlocks(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int


def projection_blocks(itemsize: int) -> ProjectionBlocks:
    """128 x 64 tensor-core tiles for 16-bit storage (~120 registers at launch specialisation,
    no spill even with unknown strides); fp32 (full-precision FMA products) takes 64 x 64 over
    8 warps: over 4 it spills 16 bytes on sm_80 with strided, unaligned inputs."""
    return ProjectionBlocks(128, 64, 32, 4) if itemsize == 2 else ProjectionBlocks(64, 64, 16, 8)


def _project(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) times w^T for w (N, D), in fp32: (B, T, N)."""
    x2 = x.reshape(-1, x.shape[-1])  # a view for the (B, T, D) tensors models pass
    rows, depth, cols = x2.shape[0], x2.shape[1], w.shape[0]
    out = torch.empty((*x.shape[:-1], cols), dtype=torch.float32, device=x.device)
    if out.numel():
        blocks = projection_blocks(x.element_size())
        projection_kernel[program_grid(triton.cdiv(cols, blocks.block_n), triton.cdiv(rows, blocks.block_m))](
            x2, w, out, *x2.stride(), *w.stride(), rows, cols, depth, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
            BLOCK_K=blocks.block_k, DOT_F32=dot_f32(x), num_warps=blocks.num_warps)
    return out


def _score_inputs(query, keys, weight, w_query, w_keys, v, kind):
    """(QP, KP, VA, F, scale, KIND): what the score kernels read. The projections are made once,
    in fp32 (16-bit storage rounds nothing that feeds a tanh); VA is unused by the dot kinds."""
    if kind == "additive":
        return _project(query, w_query), _project(keys, w_keys), v, v.shape[0], 1.0, KIND_ADDITIVE
    qp = _project(query, weight.T) if kind == "general" else query
    scale = 1.0 / math.sqrt(keys.shape[-1]) if kind == "scaled_dot" else 1.0
    return qp, keys, keys, keys.shape[-1], scale, KIND_DOT


def _mask3(mask, like: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int], int]:
    """(mask bytes, (batch, row, key) strides, MASK_KIND); a (B, Tk) mask repeats over rows."""
    if mask is None:
        return like, (0, 0, 0), MASK_NONE
    m = mask.view(torch.uint8)
    if m.dim() == 2:
        return m, (m.stride(0), 0, m.stride(1)), MASK_BOOL
    return m, tuple(m.stride()), MASK_BOOL


def _launch_scores(out, query, keys, mask, weight, w_query, w_keys, v, kind, blocks):
    """Scores (B, Tq, Tk) into ``out``: fp32 and masked for the softmax, or the scores output."""
    qp, kp, va, features, scale, kind_code = _score_inputs(query, keys, weight, w_query, w_keys, v, kind)
    B, Tq, Tk = out.shape
    mask_bytes, mask_strides, mask_kind = _mask3(mask, out)
    enc_dec_scores_kernel[program_grid(triton.cdiv(Tq, blocks.block_m), triton.cdiv(Tk, blocks.block_n) * B)](
        qp, kp, va, mask_bytes, out, scale, *qp.stride(), *kp.stride(), *mask_strides, *out.stride(), Tq, Tk,
        features, KIND=kind_code, MASK_KIND=mask_kind, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
        BLOCK_F=score_block_f(blocks, kind_code), num_warps=blocks.num_warps)


def _additive_backward(de, qp, kp, va, dtype):
    """(d qp, d kp) in ``dtype`` and d v (fp32) of the additive scores, from dE (any float)."""
    B, Tq, Tk = de.shape
    A = qp.shape[2]
    blocks = enc_dec_blocks(Tq)
    d_qp = torch.empty((B, Tq, A), dtype=dtype, device=de.device)
    d_kp = torch.empty((B, Tk, A), dtype=dtype, device=de.device)
    key_tiles, feature_tiles = triton.cdiv(Tk, blocks.block_n), triton.cdiv(A, blocks.block_f)
    d_v_parts = torch.zeros((B, key_tiles, A), dtype=torch.float32, device=de.device)
    if B and A and Tq and Tk:
        common = dict(BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_F=blocks.block_f,
                      num_warps=blocks.num_warps)
        args = (qp, kp, va, de, d_qp, d_kp, d_v_parts, *qp.stride(), *kp.stride(), *de.stride(), Tq, Tk, A)
        additive_backward_kernel[program_grid(triton.cdiv(Tq, blocks.block_m), feature_tiles * B)](
            *args, FOR_KEYS=0, **common)
        additive_backward_kernel[program_grid(key_tiles, feature_tiles * B)](*args, FOR_KEYS=1, **common)
    else:  # no keys or no rows: every sum is empty
        d_qp.zero_(), d_kp.zero_()
    return d_qp, d_kp, d_v_parts.sum(dim=(0, 1))


def _scores_backward(de, query, keys, weight, w_query, w_keys, v, kind):
    """Gradients of (query, keys, weight, w_query, w_keys, v) from dE (fp32 or the storage
    dtype). The products around the kernels go to cuBLAS in the storage dtype (fp32
    accumulation), with dE and the projection gradients rounded to it first, as autograd's own
    16-bit products would; fp32 storage stays fp32 throughout."""
    dtype = query.dtype
    if kind == "additive":
        qp, kp = _project(query, w_query), _project(keys, w_keys)
        d_qp, d_kp, d_v = _additive_backward(de, qp, kp, v, dtype)
        d_w_query = d_qp.reshape(-1, d_qp.shape[2]).T @ query.reshape(-1, query.shape[2])
        d_w_keys = d_kp.reshape(-1, d_kp.shape[2]).T @ keys.reshape(-1, keys.shape[2])
        return d_qp @ w_query, d_kp @ w_keys, None, d_w_query, d_w_keys, d_v.to(dtype)
    de = (de * (1.0 / math.sqrt(keys.shape[-1])) if kind == "scaled_dot" else de).to(dtype)
    d_qp = de @ keys
    if kind == "general":
        d_keys = de.transpose(1, 2) @ _project(query, weight.T).to(dtype)
        d_weight = query.reshape(-1, query.shape[2]).T @ d_qp.reshape(-1, d_qp.shape[2])
        return d_qp @ weight.T, d_keys, d_weight, None, None, None
    return d_qp, de.transpose(1, 2) @ query, None, None, None, None


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention: what the dispatch layer calls


def _check_dtypes(query, keys) -> None:
    for name, x in (("query", query), ("keys", keys)):
        check_dtype(x, name)


def attention_scores(query, keys, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot"):
    _check_dtypes(query, keys)
    B, Tq, Tk = query.shape[0], query.shape[1], keys.shape[1]
    scores = torch.empty((B, Tq, Tk), dtype=query.dtype, device=query.device)
    if scores.numel():
        _launch_scores(scores, query, keys, None, weight, w_query, w_keys, v, kind, enc_dec_blocks(Tq))
    return scores


def attention_forward(query, keys, values, mask=None, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot"):
    _check_dtypes(query, keys)
    B, Tq, Tk, Dv = query.shape[0], query.shape[1], keys.shape[1], values.shape[2]
    blocks = enc_dec_blocks(Tq)
    weights = torch.empty((B, Tq, Tk), dtype=query.dtype, device=query.device)
    context = torch.empty((B, Tq, Dv), dtype=query.dtype, device=query.device)
    if B and Tq:
        scores = torch.empty((B, Tq, Tk), dtype=torch.float32, device=query.device)
        if Tk:
            _launch_scores(scores, query, keys, mask, weight, w_query, w_keys, v, kind, blocks)
        grid = program_grid(triton.cdiv(max(Dv, 1), blocks.block_dv), triton.cdiv(Tq, blocks.block_m) * B)
        enc_dec_softmax_context_kernel[grid](
            scores, values, weights, context, *scores.stride(), *values.stride(), *weights.stride(),
            *context.stride(), Tq, Tk, Dv, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
            BLOCK_DV=blocks.block_dv, DOT_F32=dot_f32(values), num_warps=blocks.num_warps)
    return context, weights


def attention_scores_backward(grad_scores, query, keys, weight=None, w_query=None, w_keys=None, v=None, *,
                              kind="dot"):
    _check_dtypes(query, keys)
    return _scores_backward(grad_scores, query, keys, weight, w_query, w_keys, v, kind)


def attention_backward(grad_context, grad_weights, query, keys, values, weights, weight=None, w_query=None,
                       w_keys=None, v=None, *, kind="dot"):
    _check_dtypes(query, keys)
    B, Tq, Tk = weights.shape
    Dv = values.shape[2]
    blocks = enc_dec_blocks(Tq)
    de = torch.empty((B, Tq, Tk), dtype=torch.float32, device=query.device)
    if de.numel():
        key_tiles, row_tiles = triton.cdiv(Tk, blocks.block_n), triton.cdiv(Tq, blocks.block_m)
        row_terms = torch.empty((B, key_tiles, Tq), dtype=torch.float32, device=query.device)
        dw = grad_weights if grad_weights is not None else weights
        attention_backward_dp_kernel[program_grid(row_tiles, key_tiles * B)](
            weights, dw, grad_context, values, de, row_terms, *weights.stride(), *dw.stride(),
            *grad_context.stride(), *values.stride(), Tq, Tk, Dv, HAS_DW=grad_weights is not None,
            BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_DV=blocks.block_dv, DOT_F32=dot_f32(values),
            num_warps=blocks.num_warps)
        attention_backward_de_kernel[program_grid(key_tiles, row_tiles * B)](
            weights, de, row_terms, *weights.stride(), Tq, Tk, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
            num_warps=blocks.num_warps)
    d_values = weights.transpose(1, 2) @ grad_context  # cuBLAS in the storage dtype, fp32 accumulation
    d_query, d_keys, d_weight, d_w_query, d_w_keys, d_v = _scores_backward(de, query, keys, weight, w_query, w_keys,
                                                                           v, kind)
    return d_query, d_keys, d_values, d_weight, d_w_query, d_w_keys, d_v


# ---------------------------------------------------------------------------------------------
# Compile gate


# Representative launches. "typical": contiguous tensors of a training shape (SDPA: 4 x 16 heads x
# 1024 x d, one query head per key head; encoder-decoder: 64 x 32 decoder rows x 1024 encoder
# positions), 16-byte-aligned, so every size and stride but the unit ones is divisible by 16 and
# the unit strides become constants. "worst": what tells Triton the least that the dispatch lets
# through (the ops pass any strides on): GQA groups, ragged sizes, caller tensors that are strided
# views (odd strides) starting one element into their storage. Outputs and workspaces are always
# the launcher's own: contiguous and aligned. SDPA adds "typical-gqa": typical tensors with query
# heads sharing key/value heads, H and GROUPS neither 1 nor divisible by 16, the typical launch
# that tells Triton the least (its larger tiles must build for it too), and "typical-ragged":
# typical in alignment, but lengths and head dims that are multiples of 16 and of no tile, so the
# kernels take their masked loads (EVEN off) with the typical launch's tiles and TMA.
LAUNCHES = ("typical", "worst")
_SDPA_SHAPES = {  # (Z, H, GROUPS, L, S, head dim short of the padded one)
    "typical": (4, 16, 1, 1024, 1024, 0),
    "typical-gqa": (4, 12, 3, 1024, 1024, 0),
    "typical-ragged": (4, 12, 3, 1040, 1008, 16),
    "worst": (3, 6, 3, 1023, 1001, 3),
}
# Encoder-decoder: batch, decoder rows, encoder positions, features (query, keys and values),
# attention size A. A decoder step (one row) takes its own tile, so each launch also runs at Tq=1.
_ENC_DEC_SHAPES = {
    "typical": dict(B=64, Tq=32, Tk=1024, D=512, A=256),
    "worst": dict(B=37, Tq=31, Tk=1001, D=509, A=253),
}


def _strides(shape, launch: str, caller: bool = True) -> tuple[int, ...]:
    """Strides of a tensor of ``shape``: contiguous, or (a caller's tensor in the worst launch)
    odd ones, which Triton can neither mark divisible nor fold to 1."""
    contiguous = launch != "worst" or not caller
    strides, step = [], 1 if contiguous else 3
    for size in reversed(shape):
        strides.append(step)
        step = step * size if contiguous else (step * size + 2) | 1
    return tuple(reversed(strides))


def _gate_args(kernel, pointers: dict, strides: dict[str, tuple[int, ...]], values: dict) -> dict:
    """Every argument of ``kernel`` by name: the pointers and values (constexprs included) given,
    and each stride argument (``s`` + tensor letter + dim letter, a tensor's strides listed in
    order) from the strides of its tensor, keyed by the two-letter prefix."""
    args, used = {}, {}
    for name in kernel.arg_names:
        if name in pointers:
            args[name] = pointers[name]
        elif name in values:
            args[name] = values[name]
        else:  # KeyError here: the kernel grew an argument the gate does not know
            prefix = name[:2]
            args[name] = strides[prefix][used.setdefault(prefix, 0)]
            used[prefix] += 1
    return args


def _sdpa_args(kernel, tdtype: str, block_d: int, launch: str, mask_kind: int, causal: bool, arch: int
               ) -> tuple[dict, SdpaBlocks]:
    """(the arguments ``sdpa_forward``/``sdpa_backward`` pass to ``kernel`` on an sm_``arch`` GPU,
    their blocks): the tiles chosen by the launcher's own rules (``sdpa_typical_launch``,
    ``sdpa_blocks``, ``sdpa_even``) from the same arguments."""
    Z, H, groups, L, S, short = _SDPA_SHAPES[launch]
    E = EV = block_d - short
    aligned = launch != "worst"
    forward = kernel is sdpa_forward_kernel
    q, kv, o = (Z, H, L, E), (Z, H // groups, S, E), (Z, H, L, EV)
    pointers = {"Q": passed(tdtype, aligned), "K": passed(tdtype, aligned), "V": passed(tdtype, aligned),
                "DO": passed(tdtype, aligned), "LSE": passed("fp32", aligned), "DELTA": fresh("fp32"),
                "DQ": fresh(tdtype), "DK": fresh(tdtype), "DV": fresh(tdtype),
                # the forward's output and log-sum-exp; the backward's O: the forward's, from the caller
                "O": fresh(tdtype) if forward else passed(tdtype, aligned)}
    if forward:
        pointers["LSE"] = fresh("fp32")
    if mask_kind == MASK_NONE:  # the launcher passes q in the mask's place, with zero strides
        pointers["M"], mask_strides = pointers["Q"], (0, 0, 0, 0)
    else:
        pointers["M"] = passed("u8" if mask_kind == MASK_BOOL else tdtype, aligned)
        mask_strides = _strides((Z, H, L, S), launch)
    strides = {"sq": _strides(q, launch), "sk": _strides(kv, launch), "sv": _strides(kv, launch),
               "sm": mask_strides, "so": _strides(o, launch, caller=not forward), "sg": _strides(o, launch)}
    callers = {"Q": "sq", "K": "sk", "V": "sv"} if forward else {"Q": "sq", "K": "sk", "V": "sv", "O": "so",
                                                                  "DO": "sg", "LSE": None}
    typical = sdpa_typical_launch([pointers[n].data_ptr() for n in callers],
                                  [strides[p] if p else (L, 1) for p in callers.values()], (L, S, E, EV), mask_kind)
    blocks = sdpa_blocks(block_d, block_d, TORCH_DTYPES[tdtype].itemsize, typical, arch, causal)
    if kernel is sdpa_backward_dkdv_kernel:
        blocks = blocks.for_dkdv()
    values = dict(sm_scale=1.0 / math.sqrt(E), H=H, GROUPS=groups, L=L, S=S, E=E, EV=EV, MASK_KIND=mask_kind,
                  IS_CAUSAL=causal, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_D=block_d,
                  BLOCK_DV=block_d, DOT_F32=False, WITH_DK=True, WITH_DV=True, USE_TMA=blocks.tma,
                  EVEN=sdpa_even(L, S, E, EV, block_d, block_d, blocks))
    return _gate_args(kernel, pointers, strides, values), blocks


# The fp32 dK/dV builds that spill (8-64 bytes) at the best configuration there is (see
# SDPA_TILES), as (padded head dim, launch, causal, gradients made): FMA products with int64
# per-element addresses of [16, d] tiles. Every other build, and every 16-bit one, is spill-free.
_FP32_DKDV_SPILLS = {
    (64, "worst", False, "both"),
    (128, "typical-gqa", True, "both"), (128, "typical-ragged", False, "both"),
    (128, "typical-ragged", True, "both"), (128, "worst", False, "both"),
    (256, "typical-gqa", True, "dk"), (256, "typical-ragged", False, "dv"), (256, "typical-ragged", True, "dk"),
    (256, "worst", True, "dk"), (256, "worst", True, "dv"), (256, "worst", False, "dk"),
}
_FP32_DKDV_SPILL = ("fp32 dK/dV (FMA products) spills 8-64 bytes here at every warp count (2, 4, 8) and "
                    "pipelining depth (1, 3) tried")


def _known_spill(name: str, dtype: torch.dtype, block_d: int, launch: str, causal: bool, grads: str) -> str:
    heavy = name == "sdpa_backward_dkdv" and dtype == torch.float32 and (block_d, launch, causal,
                                                                         grads) in _FP32_DKDV_SPILLS
    return _FP32_DKDV_SPILL if heavy else ""


_SDPA_KERNELS = (("sdpa_forward", sdpa_forward_kernel), ("sdpa_backward_dq", sdpa_backward_dq_kernel),
                 ("sdpa_backward_dkdv", sdpa_backward_dkdv_kernel))


def _sdpa_launches(index: int) -> tuple[tuple[str, int, bool], ...]:
    """(launch, mask kind, causal) of each build: the typical launch without a mask, causal and
    not; typical-gqa causal; typical-ragged causal and not; the worst with a mask (bool and
    additive in turn, by ``index``), causal (the heaviest code) and not."""
    worst_mask = (MASK_BOOL, MASK_ADD)[index % 2]
    return (("typical", MASK_NONE, False), ("typical", MASK_NONE, True), ("typical-gqa", MASK_NONE, True),
            ("typical-ragged", MASK_NONE, False), ("typical-ragged", MASK_NONE, True), ("worst", worst_mask, True),
            ("worst", worst_mask, False))


def _arch_variants(build):
    """[(targets, arch tag, build(arch))]: one build for every target when the heuristic picks the
    same configuration on each ``ARCHS`` entry, else one per architecture, built for it only."""
    per_arch = {arch: build(arch) for arch in ARCHS}
    if all(per_arch[arch][1] == per_arch[ARCHS[0]][1] for arch in ARCHS):
        return [(None, "any", per_arch[ARCHS[0]])]
    return [((arch,), f"sm{arch}", per_arch[arch]) for arch in ARCHS]


def sdpa_compile_cases() -> Iterator[CompileCase]:
    """Each SDPA kernel at each (padded head dim, storage width) the launcher can pick, at each
    launch of ``_sdpa_launches``, with the configuration the launch heuristic picks for each
    ``ARCHS`` entry (built for that target only where the two differ). bf16 builds fp16's
    tiles, at d=64 only."""
    index = 0
    for block_d in HEAD_DIMS:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            if dtype == torch.bfloat16 and block_d != 64:  # fp16's configs; one case checks the bf16 casts
                continue
            tdtype = TRITON_DTYPES[dtype]
            launches = _sdpa_launches(index)
            index += 1
            for (name, kernel), (launch, mask_kind, causal) in itertools.product(_SDPA_KERNELS, launches):
                variants = _arch_variants(lambda arch: _sdpa_args(kernel, tdtype, block_d, launch, mask_kind, causal,
                                                                  arch))
                dkdv = kernel is sdpa_backward_dkdv_kernel
                for (targets, arch_tag, (args, blocks)), (with_dk, with_dv) in (
                        (variant, grads) for variant in variants
                        for grads in (dkdv_passes(variant[2][1]) if dkdv else ((True, True),))):
                    passes = {"WITH_DK": with_dk, "WITH_DV": with_dv} if dkdv else {}
                    grads = {(True, True): "both", (True, False): "dk", (False, True): "dv"}[with_dk, with_dv]
                    yield CompileCase(
                        name=name, kernel=kernel, args={**args, **passes}, num_warps=blocks.num_warps,
                        num_stages=blocks.num_stages, known_spill=_known_spill(name, dtype, block_d, launch, causal, grads),
                        targets=targets,
                        tags={"dtype": tdtype, "d": str(block_d), "block_m": str(blocks.block_m),
                              "block_n": str(blocks.block_n), "mask": ("none", "bool", "add")[mask_kind],
                              "causal": str(causal), "launch": launch, "grads": grads, "arch": arch_tag,
                              "tma": str(blocks.tma), "even": str(args["EVEN"])})
            if dtype != torch.bfloat16:
                for launch in LAUNCHES:
                    for targets, arch_tag, (args, blocks) in _arch_variants(
                            lambda arch: _sdpa_args(sdpa_backward_delta_kernel, tdtype, block_d, launch, MASK_NONE,
                                                    False, arch)):
                        yield CompileCase(
                            name="sdpa_backward_delta", kernel=sdpa_backward_delta_kernel, args=args,
                            num_warps=blocks.num_warps, targets=targets,
                            tags={"dtype": tdtype, "d": str(block_d), "block_m": str(blocks.block_m),
                                  "launch": launch, "arch": arch_tag})


class _Tensor(NamedTuple):
    arg: TensorArg
    strides: tuple[int, ...]


def _callers(dtype: str, shape, launch: str) -> _Tensor:
    """A tensor the caller hands the op: contiguous and aligned in the typical launch, a strided
    view one element into its storage in the worst (the ops pass views on as they are)."""
    return _Tensor(passed(dtype, launch == "typical"), _strides(shape, launch))


def _launchers(dtype: str, shape) -> _Tensor:
    """A tensor the launcher allocates (``torch.empty``): contiguous and aligned."""
    return _Tensor(fresh(dtype), _strides(shape, "typical"))


def _enc_dec_args(kernel, tensors: dict[str, _Tensor], values: dict) -> dict:
    """``_gate_args`` for tensors given as (pointer, strides), stride prefix ``s`` + the
    pointer's first letter, lower case (QP: sq, DE: sd, CTX: sc, ...)."""
    pointers = {name: t.arg for name, t in tensors.items()}
    strides = {"s" + name[0].lower(): t.strides for name, t in tensors.items()}
    return _gate_args(kernel, pointers, strides, values)


def _projection_args(tdtype: str, launch: str, w_layout: str) -> tuple[dict, ProjectionBlocks]:
    """What ``_project(x, w)`` passes. ``rows``: w is a caller's (N, D) parameter, as ``w_keys``
    projecting the keys (additive); ``transposed``: w is ``weight.T`` (general), projecting the
    query, so its unit stride is the row one. x is the caller's (B, T, D) tensor merged to 2-D
    (a view whenever its strides allow; in the worst launch a mergeable view with odd strides)."""
    s = _ENC_DEC_SHAPES[launch]
    blocks = projection_blocks(TORCH_DTYPES[tdtype].itemsize)
    if w_layout == "rows":
        rows, depth, cols = s["B"] * s["Tk"], s["D"], s["A"]
        w = _callers(tdtype, (cols, depth), launch)
    else:
        rows, depth, cols = s["B"] * s["Tq"], s["D"], s["D"]
        weight = _callers(tdtype, (depth, cols), launch)
        w = _Tensor(weight.arg, weight.strides[::-1])
    x = _callers(tdtype, (rows, depth), launch)
    pointers = {"X": x.arg, "W": w.arg, "Y": fresh("fp32")}
    strides = {"sx": x.strides, "sw": w.strides}
    values = dict(n_rows=rows, n_cols=cols, depth=depth, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
                  BLOCK_K=blocks.block_k, DOT_F32=False)
    return _gate_args(projection_kernel, pointers, strides, values), blocks


def _scores_args(kind: str, tdtype: str, launch: str, Tq: int, blocks: EncDecBlocks, out: str, masked: bool) -> dict:
    """What ``_launch_scores`` passes: the caller's query and keys for dot scores (keys also in
    VA's place, unread), the launcher's fp32 projections for general (the query side) and
    additive (both, with the caller's v); scores into ``attention``'s fp32 scratch or into
    ``attention_scores``' output (never masked). The mask is the caller's bool tensor as bytes:
    (B, Tk), repeated over rows with stride 0, in the typical launch, a (B, Tq, Tk) view in the
    worst; no mask passes the output with zero strides."""
    s = _ENC_DEC_SHAPES[launch]
    B, Tk, D, A = s["B"], s["Tk"], s["D"], s["A"]
    if kind == "additive":
        qp, kp = _launchers("fp32", (B, Tq, A)), _launchers("fp32", (B, Tk, A))
        va, features, kind_code = passed(tdtype, launch == "typical"), A, KIND_ADDITIVE
    else:
        qp = _launchers("fp32", (B, Tq, D)) if kind == "general" else _callers(tdtype, (B, Tq, D), launch)
        kp = _callers(tdtype, (B, Tk, D), launch)
        va, features, kind_code = kp.arg, D, KIND_DOT
    sc = _launchers("fp32" if out == "scratch" else tdtype, (B, Tq, Tk))
    if not masked:
        mask = _Tensor(sc.arg, (0, 0, 0))
    elif launch == "typical":
        batch, key = _strides((B, Tk), launch)
        mask = _Tensor(passed("u8", True), (batch, 0, key))
    else:
        mask = _callers("u8", (B, Tq, Tk), launch)
    tensors = {"QP": qp, "KP": kp, "M": mask, "SC": sc}
    values = dict(VA=va, sm_scale=1.0 / math.sqrt(D) if kind == "dot" else 1.0, Tq=Tq, Tk=Tk, F=features,
                  KIND=kind_code, MASK_KIND=MASK_BOOL if masked else MASK_NONE, BLOCK_M=blocks.block_m,
                  BLOCK_N=blocks.block_n, BLOCK_F=score_block_f(blocks, kind_code))
    return _enc_dec_args(enc_dec_scores_kernel, tensors, values)


def _softmax_context_args(tdtype: str, launch: str, Tq: int, blocks: EncDecBlocks) -> dict:
    """What ``attention_forward`` passes: its fp32 scores, the caller's values, its weights and
    context."""
    s = _ENC_DEC_SHAPES[launch]
    B, Tk, Dv = s["B"], s["Tk"], s["D"]
    tensors = {"SC": _launchers("fp32", (B, Tq, Tk)), "VAL": _callers(tdtype, (B, Tk, Dv), launch),
               "W": _launchers(tdtype, (B, Tq, Tk)), "CTX": _launchers(tdtype, (B, Tq, Dv))}
    values = dict(Tq=Tq, Tk=Tk, Dv=Dv, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_DV=blocks.block_dv,
                  DOT_F32=False)
    return _enc_dec_args(enc_dec_softmax_context_kernel, tensors, values)


def _backward_args(kernel, tdtype: str, launch: str, Tq: int, blocks: EncDecBlocks, has_dw: bool = False) -> dict:
    """What ``attention_backward`` passes its two kernels: the caller's weights (the forward's,
    handed back), grad_weights (or the weights again), grad_context and values; its own fp32 dE
    and per-key-tile row terms."""
    s = _ENC_DEC_SHAPES[launch]
    B, Tk, Dv = s["B"], s["Tk"], s["D"]
    weights = _callers(tdtype, (B, Tq, Tk), launch)
    pointers = {"W": weights.arg, "DE": fresh("fp32"), "RS": fresh("fp32")}
    strides = {"sw": weights.strides}
    values = dict(Tq=Tq, Tk=Tk, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n)
    if kernel is attention_backward_dp_kernel:
        dw = _callers(tdtype, (B, Tq, Tk), launch) if has_dw else weights
        dctx, val = _callers(tdtype, (B, Tq, Dv), launch), _callers(tdtype, (B, Tk, Dv), launch)
        pointers.update(DW=dw.arg, DCTX=dctx.arg, VAL=val.arg)
        strides.update(sg=dw.strides, sc=dctx.strides, sv=val.strides)
        values.update(Dv=Dv, HAS_DW=has_dw, BLOCK_DV=blocks.block_dv, DOT_F32=False)
    return _gate_args(kernel, pointers, strides, values)


def _additive_backward_args(tdtype: str, launch: str, Tq: int, blocks: EncDecBlocks, grad: str,
                            for_keys: int) -> dict:
    """What ``_additive_backward`` passes: its fp32 projections, the caller's v, dE (the fp32
    scratch of ``attention_backward``, or the caller's grad_scores given to
    ``attention_scores_backward``), its storage-dtype gradients and fp32 partial sums of dv."""
    s = _ENC_DEC_SHAPES[launch]
    B, Tk, A = s["B"], s["Tk"], s["A"]
    de = _launchers("fp32", (B, Tq, Tk)) if grad == "scratch" else _callers(tdtype, (B, Tq, Tk), launch)
    tensors = {"QP": _launchers("fp32", (B, Tq, A)), "KP": _launchers("fp32", (B, Tk, A)), "DE": de}
    values = dict(VA=passed(tdtype, launch == "typical"), DQA=fresh(tdtype), DKB=fresh(tdtype), DVA=fresh("fp32"),
                  Tq=Tq, Tk=Tk, F=A, FOR_KEYS=for_keys, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
                  BLOCK_F=blocks.block_f)
    return _enc_dec_args(additive_backward_kernel, tensors, values)


_ENC_DEC_DTYPES = ("fp16", "bf16", "fp32")
_SCORE_KINDS = ("dot", "general", "additive")  # scaled_dot is dot with another float scale
_SCORE_OUTPUTS = (("scratch", False), ("scratch", True), ("scores", False))


def _enc_dec_cases() -> Iterator[CompileCase]:
    """The encoder-decoder kernels, each at a typical and a worst launch: the projection at each
    storage width (w as a parameter's rows or as ``weight.T``); then, at each row tile the
    launcher picks (``enc_dec_blocks``: one decoder row, or a block of them), the scores for
    each kind and output (fp32 scratch unmasked and masked, the scores output; the storage
    dtypes rotate over them so each kind and each output meets each dtype), the softmax/context
    and both attention-backward kernels in each storage dtype (dP with and without grad_weights),
    and the additive backward for query and key rows in each storage dtype, from the fp32
    scratch and from the caller's grad_scores."""
    for tdtype, launch in itertools.product(_ENC_DEC_DTYPES, LAUNCHES):
        for w_layout in ("rows", "transposed") if launch == "typical" else ("rows",):
            args, blocks = _projection_args(tdtype, launch, w_layout)
            yield CompileCase(
                name="attention_projection", kernel=projection_kernel, args=args, num_warps=blocks.num_warps,
                tags={"dtype": tdtype, "block_m": str(blocks.block_m), "block_n": str(blocks.block_n),
                      "block_k": str(blocks.block_k), "w": w_layout, "launch": launch})
    for launch in LAUNCHES:
        for Tq in (1, _ENC_DEC_SHAPES[launch]["Tq"]):
            blocks = enc_dec_blocks(Tq)
            tiles = {"block_m": str(blocks.block_m), "block_n": str(blocks.block_n)}

            def case(name, kernel, args, tdtype, **tags):
                return CompileCase(name=name, kernel=kernel, args=args, num_warps=blocks.num_warps,
                                   tags={"dtype": tdtype, **tiles, **tags, "launch": launch})

            for (k, kind), (o, (out, masked)) in itertools.product(enumerate(_SCORE_KINDS), enumerate(_SCORE_OUTPUTS)):
                tdtype = _ENC_DEC_DTYPES[(k + o) % 3]
                yield case("attention_scores", enc_dec_scores_kernel,
                           _scores_args(kind, tdtype, launch, Tq, blocks, out, masked), tdtype, kind=kind,
                           block_f=str(score_block_f(blocks, KIND_ADDITIVE if kind == "additive" else KIND_DOT)),
                           out=out, mask=str(masked))
            for tdtype in _ENC_DEC_DTYPES:
                yield case("attention_softmax_context", enc_dec_softmax_context_kernel,
                           _softmax_context_args(tdtype, launch, Tq, blocks), tdtype, block_dv=str(blocks.block_dv))
                for has_dw in (True, False):
                    yield case("attention_backward_dp", attention_backward_dp_kernel,
                               _backward_args(attention_backward_dp_kernel, tdtype, launch, Tq, blocks, has_dw),
                               tdtype, block_dv=str(blocks.block_dv), has_dw=str(has_dw))
                yield case("attention_backward_de", attention_backward_de_kernel,
                           _backward_args(attention_backward_de_kernel, tdtype, launch, Tq, blocks), tdtype)
                for grad, for_keys in itertools.product(("scratch", "scores"), (0, 1)):
                    yield case("attention_additive_backward", additive_backward_kernel,
                               _additive_backward_args(tdtype, launch, Tq, blocks, grad, for_keys), tdtype,
                               block_f=str(blocks.block_f), rows=("query", "keys")[for_keys], grad=grad)


def compile_cases() -> Iterator[CompileCase]:
    yield from sdpa_compile_cases()
    yield from _enc_dec_cases()
