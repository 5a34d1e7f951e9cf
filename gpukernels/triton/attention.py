"""Attention kernels.

Scaled dot-product attention, flash style: the forward walks K/V in tiles with an online
softmax (running row max and sum) and saves only the output and the row log-sum-exp; the
backward recomputes the probabilities tile by tile from that log-sum-exp, in one kernel for dQ
(one program per query tile) and one for dK/dV (one program per key tile, looping over the query
heads that share its key/value head, so no atomics). Head dims are padded to a power of two
with masks. Scores, softmax and accumulators are fp32; the tile products run on the tensor cores
in the storage dtype (fp32 storage multiplies in full fp32, not tf32).

Encoder-decoder attention: one kernel computes scores, masked softmax, weights and context for a
tile of decoder rows (two passes over the encoder positions: the first finds each row's max and
sum, the second writes the normalised weights and accumulates the context). The additive score
``v . tanh(qa_i + kb_j)`` is formed for a tile of (i, j) pairs and a slice of the attention
size at a time, so the [B, Tq, Tk, A] tensor never exists; its backward kernels do the same.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, NamedTuple

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from ._launch import CompileCase, TRITON_DTYPES, check_dtype, fresh, passed
from .activation import _tanh  # accurate near 0, no libdevice: the interpreter runs it

MASK_NONE, MASK_BOOL, MASK_ADD = 0, 1, 2


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention kernels


@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr):
    # Triton's interpreter multiplies bfloat16 tiles wrongly, so under it (and only there) the
    # launcher sets DOT_F32 and the tiles, already rounded to the storage dtype, go in as fp32.
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _sdpa_scores(q, k, mask_ptrs, offs_m, offs_n, L, S, sm_scale, MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
                 DOT_F32: tl.constexpr):
    """Scaled, masked scores of a (BLOCK_M, BLOCK_N) tile; -inf wherever a position is out."""
    s = _dot(q, tl.trans(k), DOT_F32) * sm_scale
    keep = (offs_m[:, None] < L) & (offs_n[None, :] < S)
    if IS_CAUSAL:
        keep = keep & (offs_n[None, :] <= offs_m[:, None])
    if MASK_KIND == 1:
        keep = keep & (tl.load(mask_ptrs, mask=keep, other=0) != 0)
    if MASK_KIND == 2:
        s = s + tl.load(mask_ptrs, mask=keep, other=0.0).to(tl.float32)
    return tl.where(keep, s, float("-inf"))


@triton.jit
def sdpa_forward_kernel(
    Q, K, V, M, O, LSE, sm_scale,
    sqz, sqh, sqm, sqd, skz, skh, skn, skd, svz, svh, svn, svd, smz, smh, smm, smn, soz, soh, som, sod,
    H, GROUPS, L, S, E, EV,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    zh = tl.program_id(1).to(tl.int64)
    z, h = zh // H, zh % H
    hk = h // GROUPS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(Q + z * sqz + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < L) & (offs_d[None, :] < E), other=0.0)
    k_base = K + z * skz + hk * skh
    v_base = V + z * svz + hk * svh
    m_base = M + z * smz + h * smh + offs_m[:, None] * smm

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
    hi = S
    if IS_CAUSAL:  # key j is only seen by queries i >= j
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
                    mask=(offs_n[:, None] < S) & (offs_d[None, :] < E), other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=(offs_n[:, None] < S) & (offs_dv[None, :] < EV), other=0.0)
        s = _sdpa_scores(q, k, m_base + offs_n[None, :] * smn, offs_m, offs_n, L, S, sm_scale, MASK_KIND, IS_CAUSAL,
                         DOT_F32)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with nothing kept so far has max -inf; shifting by 0 keeps exp(-inf) = 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - shift)
        p = tl.exp(s - shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_F32)
        m_i = m_new

    empty = l_i == 0.0  # no position took part: zero output, log-sum-exp -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.log(tl.where(empty, 1.0, l_i)))
    tl.store(O + z * soz + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod, out.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < L) & (offs_dv[None, :] < EV))
    tl.store(LSE + zh * L + offs_m, lse, mask=offs_m < L)


@triton.jit
def sdpa_backward_delta_kernel(
    O, DO, DELTA, soz, soh, som, sod, sgz, sgh, sgm, sgd, H, L, EV,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """delta_i = sum_d dO_id O_id, the row term of the softmax backward."""
    pid_m = tl.program_id(0)
    zh = tl.program_id(1).to(tl.int64)
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
    lse = tl.load(LSE + zh * L + offs_m, mask=offs_m < L, other=0.0)
    # Rows that kept nothing have lse = -inf; +inf makes their probabilities exp(s - inf) = 0.
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta = tl.load(DELTA + zh * L + offs_m, mask=offs_m < L, other=0.0)
    return lse, delta


@triton.jit
def sdpa_backward_dq_kernel(
    Q, K, V, M, DO, LSE, DELTA, DQ, sm_scale,
    sqz, sqh, sqm, sqd, skz, skh, skn, skd, svz, svh, svn, svd, smz, smh, smm, smn, sgz, sgh, sgm, sgd,
    H, GROUPS, L, S, E, EV,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr,
):
    """dQ for one tile of query rows: dQ = scale * sum_j dS_ij K_j, dS = P (dP - delta)."""
    pid_m = tl.program_id(0)
    zh = tl.program_id(1).to(tl.int64)
    z, h = zh // H, zh % H
    hk = h // GROUPS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_mask = (offs_m[:, None] < L) & (offs_d[None, :] < E)
    q = tl.load(Q + z * sqz + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=q_mask, other=0.0)
    do = tl.load(DO + z * sgz + h * sgh + offs_m[:, None] * sgm + offs_dv[None, :] * sgd,
                 mask=(offs_m[:, None] < L) & (offs_dv[None, :] < EV), other=0.0)
    lse, delta = _row_stats(LSE, DELTA, zh, offs_m, L)
    k_base = K + z * skz + hk * skh
    v_base = V + z * svz + hk * svh
    m_base = M + z * smz + h * smh + offs_m[:, None] * smm

    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    hi = S
    if IS_CAUSAL:
        hi = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
                    mask=(offs_n[:, None] < S) & (offs_d[None, :] < E), other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=(offs_n[:, None] < S) & (offs_dv[None, :] < EV), other=0.0)
        s = _sdpa_scores(q, k, m_base + offs_n[None, :] * smn, offs_m, offs_n, L, S, sm_scale, MASK_KIND, IS_CAUSAL,
                         DOT_F32)
        p = tl.exp(s - lse[:, None])
        dp = _dot(do, tl.trans(v), DOT_F32)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, DOT_F32)
    tl.store(DQ + zh * L * E + offs_m[:, None] * E + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=q_mask)


@triton.jit
def sdpa_backward_dkdv_kernel(
    Q, K, V, M, DO, LSE, DELTA, DK, DV, sm_scale,
    sqz, sqh, sqm, sqd, skz, skh, skn, skd, svz, svh, svn, svd, smz, smh, smm, smn, sgz, sgh, sgm, sgd,
    H, GROUPS, L, S, E, EV,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_F32: tl.constexpr,
):
    """dK and dV for one tile of key rows of one key/value head, summed over the GROUPS query
    heads that read it: dV = sum_i P_ij dO_i, dK = scale * sum_i dS_ij Q_i."""
    pid_n = tl.program_id(0)
    zhk = tl.program_id(1).to(tl.int64)
    HK = H // GROUPS
    z, hk = zhk // HK, zhk % HK
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k_mask = (offs_n[:, None] < S) & (offs_d[None, :] < E)
    v_mask = (offs_n[:, None] < S) & (offs_dv[None, :] < EV)
    k = tl.load(K + z * skz + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=k_mask, other=0.0)
    v = tl.load(V + z * svz + hk * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd, mask=v_mask, other=0.0)

    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    lo = 0
    if IS_CAUSAL:  # query i only sees keys j <= i: skip the query tiles wholly above this key tile
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    for g in range(0, GROUPS):
        h = hk * GROUPS + g
        zh = z * H + h
        for start_m in range(lo, L, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
            q = tl.load(Q + z * sqz + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                        mask=(offs_m[:, None] < L) & (offs_d[None, :] < E), other=0.0)
            do = tl.load(DO + z * sgz + h * sgh + offs_m[:, None] * sgm + offs_dv[None, :] * sgd,
                         mask=(offs_m[:, None] < L) & (offs_dv[None, :] < EV), other=0.0)
            lse, delta = _row_stats(LSE, DELTA, zh, offs_m, L)
            mask_ptrs = M + z * smz + h * smh + offs_m[:, None] * smm + offs_n[None, :] * smn
            s = _sdpa_scores(q, k, mask_ptrs, offs_m, offs_n, L, S, sm_scale, MASK_KIND, IS_CAUSAL, DOT_F32)
            p = tl.exp(s - lse[:, None])
            dv += _dot(tl.trans(p.to(do.dtype)), do, DOT_F32)
            dp = _dot(do, tl.trans(v), DOT_F32)
            ds = p * (dp - delta[:, None])
            dk += _dot(tl.trans(ds.to(q.dtype)), q, DOT_F32)
    tl.store(DK + zhk * S * E + offs_n[:, None] * E + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty),
             mask=k_mask)
    tl.store(DV + zhk * S * EV + offs_n[:, None] * EV + offs_dv[None, :], dv.to(DV.dtype.element_ty), mask=v_mask)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention kernels. QP/KP are the score function's inputs: query and keys for
# dot and scaled_dot, (query W) and keys for general, (query W_q^T) and (keys W_k^T) for additive.
# All tiles are fp32 in registers (a decoder step has few query rows: there is little for the
# tensor cores to win, and the scores stay exact).

KIND_DOT, KIND_ADDITIVE = 0, 1
MODE_SCORES, MODE_ATTENTION = 0, 1


@triton.jit
def _enc_dec_scores(QP, KP, VA, b, offs_m, offs_n, Tq, Tk, F, sqb, sqm, sqf, skb, skn, skf, sm_scale,
                    KIND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr):
    """Scores e of a (BLOCK_M, BLOCK_N) tile, summed over the feature size F in BLOCK_A slices:
    dot: sum_f qp_if kp_jf * scale; additive: sum_a v_a tanh(qp_ia + kp_ja), never more than a
    (BLOCK_M, BLOCK_N, BLOCK_A) slice of the hidden tensor at once."""
    s = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for start_a in range(0, F, BLOCK_A):
        offs_a = start_a + tl.arange(0, BLOCK_A)
        qp = tl.load(QP + b * sqb + offs_m[:, None] * sqm + offs_a[None, :] * sqf,
                     mask=(offs_m[:, None] < Tq) & (offs_a[None, :] < F), other=0.0).to(tl.float32)
        kp = tl.load(KP + b * skb + offs_n[:, None] * skn + offs_a[None, :] * skf,
                     mask=(offs_n[:, None] < Tk) & (offs_a[None, :] < F), other=0.0).to(tl.float32)
        if KIND == 0:
            s += tl.dot(qp, tl.trans(kp), input_precision="ieee")
        else:
            va = tl.load(VA + offs_a, mask=offs_a < F, other=0.0)  # zero past F: padded slices add 0
            hidden = _tanh(qp[:, None, :] + kp[None, :, :])
            s += tl.sum(hidden * va[None, None, :], 2)
    if KIND == 0:
        s = s * sm_scale
    return s


@triton.jit
def attention_forward_kernel(
    QP, KP, VA, VAL, M, CTX, W, sm_scale,
    sqb, sqm, sqf, skb, skn, skf, svb, svn, svd, smb, smm, smn, scb, scm, scd, swb, swm, swn,
    Tq, Tk, F, Dv,
    KIND: tl.constexpr, MODE: tl.constexpr, MASK_KIND: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One tile of decoder rows and one slice of the value features. MODE 0 writes the raw
    scores to W. MODE 1 finds each row's max and sum over the unmasked keys (pass 1), then
    writes the weights to W (from the first value slice only) and the context to CTX (pass 2)."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    pid_v = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    w_rows = W + b * swb + offs_m[:, None] * swm
    if MODE == 0:
        for start_n in range(0, Tk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
            s = _enc_dec_scores(QP, KP, VA, b, offs_m, offs_n, Tq, Tk, F, sqb, sqm, sqf, skb, skn, skf, sm_scale,
                                KIND, BLOCK_M, BLOCK_N, BLOCK_A)
            tl.store(w_rows + offs_n[None, :] * swn, s.to(W.dtype.element_ty),
                     mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk))
    else:
        m_rows = M + b * smb + offs_m[:, None] * smm
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        for start_n in range(0, Tk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
            s = _enc_dec_scores(QP, KP, VA, b, offs_m, offs_n, Tq, Tk, F, sqb, sqm, sqf, skb, skn, skf, sm_scale,
                                KIND, BLOCK_M, BLOCK_N, BLOCK_A)
            s = _enc_dec_keep(s, m_rows, offs_m, offs_n, smn, Tq, Tk, MASK_KIND)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing kept yet: exp(-inf) = 0
            l_i = l_i * tl.exp(m_i - shift) + tl.sum(tl.exp(s - shift[:, None]), 1)
            m_i = m_new
        shift = tl.where(m_i == float("-inf"), 0.0, m_i)
        inv_l = tl.where(l_i > 0.0, 1.0 / tl.where(l_i > 0.0, l_i, 1.0), 0.0)  # empty rows: weights 0
        offs_dv = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
        acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
        for start_n in range(0, Tk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
            s = _enc_dec_scores(QP, KP, VA, b, offs_m, offs_n, Tq, Tk, F, sqb, sqm, sqf, skb, skn, skf, sm_scale,
                                KIND, BLOCK_M, BLOCK_N, BLOCK_A)
            s = _enc_dec_keep(s, m_rows, offs_m, offs_n, smn, Tq, Tk, MASK_KIND)
            p = tl.exp(s - shift[:, None]) * inv_l[:, None]
            if pid_v == 0:
                tl.store(w_rows + offs_n[None, :] * swn, p.to(W.dtype.element_ty),
                         mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk))
            val = tl.load(VAL + b * svb + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                          mask=(offs_n[:, None] < Tk) & (offs_dv[None, :] < Dv), other=0.0).to(tl.float32)
            acc += tl.dot(p, val, input_precision="ieee")
        tl.store(CTX + b * scb + offs_m[:, None] * scm + offs_dv[None, :] * scd, acc.to(CTX.dtype.element_ty),
                 mask=(offs_m[:, None] < Tq) & (offs_dv[None, :] < Dv))


@triton.jit
def _enc_dec_keep(s, m_rows, offs_m, offs_n, smn, Tq, Tk, MASK_KIND: tl.constexpr):
    keep = (offs_m[:, None] < Tq) & (offs_n[None, :] < Tk)
    if MASK_KIND == 1:
        keep = keep & (tl.load(m_rows + offs_n[None, :] * smn, mask=keep, other=0) != 0)
    return tl.where(keep, s, float("-inf"))


@triton.jit
def attention_backward_scores_kernel(
    W, DW, DCTX, VAL, DE, swb, swm, swn, sgb, sgm, sgn, scb, scm, scd, svb, svn, svd,
    Tq, Tk, Dv, HAS_DW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """dE = P (dP - sum_j P dP) with dP = dC V^T (+ dW when the weights reach the loss): the
    softmax backward fused with the product that feeds it, in two passes over the keys."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rows = offs_m[:, None] < Tq
    row_sum = tl.zeros((BLOCK_M,), tl.float32)
    for step in range(0, 2):
        for start_n in range(0, Tk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
            inside = rows & (offs_n[None, :] < Tk)
            dp = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
            for start_d in range(0, Dv, BLOCK_DV):
                offs_d = start_d + tl.arange(0, BLOCK_DV)
                dc = tl.load(DCTX + b * scb + offs_m[:, None] * scm + offs_d[None, :] * scd,
                             mask=rows & (offs_d[None, :] < Dv), other=0.0).to(tl.float32)
                val = tl.load(VAL + b * svb + offs_n[:, None] * svn + offs_d[None, :] * svd,
                              mask=(offs_n[:, None] < Tk) & (offs_d[None, :] < Dv), other=0.0).to(tl.float32)
                dp += tl.dot(dc, tl.trans(val), input_precision="ieee")
            if HAS_DW:
                dp += tl.load(DW + b * sgb + offs_m[:, None] * sgm + offs_n[None, :] * sgn, mask=inside,
                              other=0.0).to(tl.float32)
            p = tl.load(W + b * swb + offs_m[:, None] * swm + offs_n[None, :] * swn, mask=inside,
                        other=0.0).to(tl.float32)
            if step == 0:
                row_sum += tl.sum(p * dp, 1)
            else:
                de = p * (dp - row_sum[:, None])
                tl.store(DE + b * Tq * Tk + offs_m[:, None] * Tk + offs_n[None, :], de, mask=inside)


@triton.jit
def additive_backward_kernel(
    QP, KP, VA, DE, DQA, DKB, DVA, sqb, sqm, sqf, skb, skn, skf, Tq, Tk, F, n_blocks,
    FOR_KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """Additive scores backward, one program per (row tile, batch, attention slice), with
    g_ija = dE_ij v_a (1 - t_ija^2), t = tanh(qp_i + kp_j), formed a tile at a time:
    FOR_KEYS=0: rows are decoder rows i: dQA_ia = sum_j g_ija, and the partial
      dV_a = sum_ij dE_ij t_ija of this tile goes to DVA[b, tile, a];
    FOR_KEYS=1: rows are encoder rows j: dKB_ja = sum_i g_ija."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_a = tl.program_id(2) * BLOCK_A + tl.arange(0, BLOCK_A)
    a_in = offs_a < F
    va = tl.load(VA + offs_a, mask=a_in, other=0.0)
    if FOR_KEYS == 0:
        offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        qp = tl.load(QP + b * sqb + offs_m[:, None] * sqm + offs_a[None, :] * sqf,
                     mask=(offs_m[:, None] < Tq) & a_in[None, :], other=0.0).to(tl.float32)
        d_q = tl.zeros((BLOCK_M, BLOCK_A), tl.float32)
        d_v = tl.zeros((BLOCK_A,), tl.float32)
        for start_n in range(0, Tk, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
            kp = tl.load(KP + b * skb + offs_n[:, None] * skn + offs_a[None, :] * skf,
                         mask=(offs_n[:, None] < Tk) & a_in[None, :], other=0.0).to(tl.float32)
            de = tl.load(DE + b * Tq * Tk + offs_m[:, None] * Tk + offs_n[None, :],
                         mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk), other=0.0)
            t = _tanh(qp[:, None, :] + kp[None, :, :])
            d_v += tl.sum(tl.sum(de[:, :, None] * t, 0), 0)
            d_q += tl.sum(de[:, :, None] * va[None, None, :] * ((1.0 - t) * (1.0 + t)), 1)
        tl.store(DQA + b * Tq * F + offs_m[:, None] * F + offs_a[None, :], d_q,
                 mask=(offs_m[:, None] < Tq) & a_in[None, :])
        tl.store(DVA + (b * n_blocks + pid) * F + offs_a, d_v, mask=a_in)
    else:
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        kp = tl.load(KP + b * skb + offs_n[:, None] * skn + offs_a[None, :] * skf,
                     mask=(offs_n[:, None] < Tk) & a_in[None, :], other=0.0).to(tl.float32)
        d_k = tl.zeros((BLOCK_N, BLOCK_A), tl.float32)
        for start_m in range(0, Tq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
            qp = tl.load(QP + b * sqb + offs_m[:, None] * sqm + offs_a[None, :] * sqf,
                         mask=(offs_m[:, None] < Tq) & a_in[None, :], other=0.0).to(tl.float32)
            de = tl.load(DE + b * Tq * Tk + offs_m[:, None] * Tk + offs_n[None, :],
                         mask=(offs_m[:, None] < Tq) & (offs_n[None, :] < Tk), other=0.0)
            t = _tanh(qp[:, None, :] + kp[None, :, :])
            d_k += tl.sum(de[:, :, None] * va[None, None, :] * ((1.0 - t) * (1.0 + t)), 0)
        tl.store(DKB + b * Tk * F + offs_n[:, None] * F + offs_a[None, :], d_k,
                 mask=(offs_n[:, None] < Tk) & a_in[None, :])


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention: launch helpers


class SdpaBlocks(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int


# Padded head dims the SDPA kernels are built for. Heads below 64 pad to 64: real models use
# 64 and 128, and three tiers keep the compile gate to a handful of tile configs.
HEAD_DIMS = (64, 128, 256)


def padded_head_dim(n: int) -> int:
    return max(HEAD_DIMS[0], triton.next_power_of_2(n))


# Tiles of every SDPA kernel by (padded head dim, bytes per stored element): the largest with
# which the forward and both backward kernels build without spilling (the compile gate's rule) on
# sm_80 and sm_90 under Triton 3.6 and 3.7, in the typical launch and in the heaviest one the
# dispatch can send (GQA, a mask, causal, strided views one element into their storage). 64-row
# tiles, which sm_90's wgmma needs, spill in that launch (the dK/dV kernel most), so the 16-bit
# tiles have 32 rows and multiply with mma.sync. fp32 storage multiplies in full fp32 on the FMA
# units, whose operand layouts take many more registers: the smallest tiles there, and the dK/dV
# kernel still spills at d >= 128 (see compile_cases).
SDPA_TILES = {
    (64, 2): SdpaBlocks(32, 32, 4),
    (128, 2): SdpaBlocks(32, 32, 8),
    (256, 2): SdpaBlocks(16, 16, 8),
    (64, 4): SdpaBlocks(16, 16, 8),
    (128, 4): SdpaBlocks(16, 16, 8),
    (256, 4): SdpaBlocks(16, 16, 8),
}


def sdpa_blocks(block_d: int, block_dv: int, itemsize: int) -> SdpaBlocks:
    """Tile sizes for every SDPA kernel, from ``SDPA_TILES`` by the wider padded head dim."""
    return SDPA_TILES[(max(block_d, block_dv), 4 if itemsize == 4 else 2)]


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
    blocks = sdpa_blocks(block_d, block_dv, q.element_size())
    return q4, k4, v4, mask4, mask_kind, mask_strides, sm_scale, block_d, block_dv, blocks


def sdpa_forward(query, key, value, attn_mask=None, *, is_causal=False, scale=None, groups=1):
    q4, k4, v4, mask4, mask_kind, mask_strides, sm_scale, block_d, block_dv, blocks = _sdpa_setup(
        query, key, value, attn_mask, scale)
    Z, H, L, E = q4.shape
    S, EV = k4.shape[2], v4.shape[3]
    out = torch.empty((Z, H, L, EV), dtype=query.dtype, device=query.device)
    lse = torch.empty((Z, H, L), dtype=torch.float32, device=query.device)
    if out.numel() and S == 0:  # softmax over no keys: nothing takes part
        out.zero_()
        lse.fill_(float("-inf"))
    elif out.numel():
        grid = (triton.cdiv(L, blocks.block_m), Z * H)
        sdpa_forward_kernel[grid](
            q4, k4, v4, mask4, out, lse, sm_scale, *q4.stride(), *k4.stride(), *v4.stride(), *mask_strides,
            *out.stride(), H, groups, L, S, E, EV, MASK_KIND=mask_kind, IS_CAUSAL=is_causal,
            BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
            DOT_F32=dot_f32(query), num_warps=blocks.num_warps)
    return out.reshape(*query.shape[:-1], EV), lse.reshape(query.shape[:-1])


def sdpa_backward(grad_output, query, key, value, attn_mask=None, output=None, logsumexp=None, *, is_causal=False,
                  scale=None, groups=1):
    q4, k4, v4, mask4, mask_kind, mask_strides, sm_scale, block_d, block_dv, blocks = _sdpa_setup(
        query, key, value, attn_mask, scale)
    Z, H, L, E = q4.shape
    HK, S, EV = k4.shape[1], k4.shape[2], v4.shape[3]
    o4, do4 = _heads_view(output), _heads_view(grad_output)
    lse = logsumexp.reshape(Z * H, L).to(torch.float32).contiguous()
    dq = torch.empty((Z, H, L, E), dtype=query.dtype, device=query.device)
    dk = torch.empty((Z, HK, S, E), dtype=key.dtype, device=key.device)
    dv = torch.empty((Z, HK, S, EV), dtype=value.dtype, device=value.device)
    if dq.numel() and S:
        delta = torch.empty((Z * H, L), dtype=torch.float32, device=query.device)
        common = (*q4.stride(), *k4.stride(), *v4.stride(), *mask_strides, *do4.stride(), H, groups, L, S, E, EV)
        meta = dict(MASK_KIND=mask_kind, IS_CAUSAL=is_causal, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
                    BLOCK_D=block_d, BLOCK_DV=block_dv, DOT_F32=dot_f32(query), num_warps=blocks.num_warps)
        grid_m = (triton.cdiv(L, blocks.block_m), Z * H)
        sdpa_backward_delta_kernel[grid_m](o4, do4, delta, *o4.stride(), *do4.stride(), H, L, EV,
                                           BLOCK_M=blocks.block_m, BLOCK_DV=block_dv, num_warps=blocks.num_warps)
        sdpa_backward_dq_kernel[grid_m](q4, k4, v4, mask4, do4, lse, delta, dq, sm_scale, *common, **meta)
        sdpa_backward_dkdv_kernel[(triton.cdiv(S, blocks.block_n), Z * HK)](
            q4, k4, v4, mask4, do4, lse, delta, dk, dv, sm_scale, *common, **meta)
    else:  # no query rows or no keys: every gradient is an empty sum
        dq.zero_(), dk.zero_(), dv.zero_()
    return dq.reshape(query.shape), dk.reshape(key.shape), dv.reshape(value.shape)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention: launch helpers


class EncDecBlocks(NamedTuple):
    block_m: int
    block_n: int
    block_a: int
    block_dv: int
    num_warps: int


ENC_DEC_BLOCK_DV = 64  # value features per program; wider values take more programs per row tile


def enc_dec_blocks(kind: str) -> EncDecBlocks:
    """Decoder steps have few query rows, so row tiles are the 16 a tile product needs; the
    additive kernels hold a (16, 16, 16) slice of the hidden tensor, the dot kernels (16, 16, 32)
    tiles of the features: 32 encoder positions per tile spill in the worst launch (strided
    views of ragged sizes) and in the additive bf16 forward (the compile gate's sweep)."""
    return EncDecBlocks(16, 16, 16 if kind == "additive" else 32, ENC_DEC_BLOCK_DV, 4)


def _score_inputs(query, keys, weight, w_query, w_keys, v, kind):
    """(QP, KP, VA, F, scale, KIND): what the score kernels read. The projections (one matmul
    each, O(T x A)) run in fp32, so fp16/bf16 storage rounds nothing that feeds a tanh."""
    if kind == "additive":
        qp = torch.matmul(query.float(), w_query.float().T)
        kp = torch.matmul(keys.float(), w_keys.float().T)
        return qp, kp, v.float().contiguous(), v.shape[0], 1.0, KIND_ADDITIVE
    qp = torch.matmul(query.float(), weight.float()) if kind == "general" else query
    scale = 1.0 / math.sqrt(keys.shape[-1]) if kind == "scaled_dot" else 1.0
    return qp, keys, keys.new_zeros(1, dtype=torch.float32), keys.shape[-1], scale, KIND_DOT


def _mask3(mask, like: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int], int]:
    """(mask bytes, (batch, row, key) strides, MASK_KIND); a (B, Tk) mask repeats over rows."""
    if mask is None:
        return like, (0, 0, 0), MASK_NONE
    m = mask.view(torch.uint8)
    if m.dim() == 2:
        return m, (m.stride(0), 0, m.stride(1)), MASK_BOOL
    return m, tuple(m.stride()), MASK_BOOL


def _enc_dec_launch(mode, query, keys, values, mask, weight, w_query, w_keys, v, kind):
    for name, x in (("query", query), ("keys", keys)):
        check_dtype(x, name)
    qp, kp, va, features, scale, kind_code = _score_inputs(query, keys, weight, w_query, w_keys, v, kind)
    B, Tq, Tk = query.shape[0], query.shape[1], keys.shape[1]
    dv = values.shape[2] if values is not None else 0
    blocks = enc_dec_blocks(kind)
    scores = torch.empty((B, Tq, Tk), dtype=query.dtype, device=query.device)
    context = torch.empty((B, Tq, dv), dtype=query.dtype, device=query.device) if values is not None else scores
    mask_bytes, mask_strides, mask_kind = _mask3(mask, scores)
    values = scores if values is None else values
    grid = (triton.cdiv(Tq, blocks.block_m), B, max(1, triton.cdiv(dv, blocks.block_dv)) if mode else 1)
    if B and Tq:
        attention_forward_kernel[grid](
            qp, kp, va, values, mask_bytes, context, scores, scale, *qp.stride(), *kp.stride(), *values.stride(),
            *mask_strides, *context.stride(), *scores.stride(), Tq, Tk, features, dv, KIND=kind_code, MODE=mode,
            MASK_KIND=mask_kind, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_A=blocks.block_a,
            BLOCK_DV=blocks.block_dv, num_warps=blocks.num_warps)
    return context, scores


def _additive_backward(de, qp, kp, va):
    """(d qp, d kp, d v) of the additive scores from dE, all fp32."""
    B, Tq, Tk = de.shape
    A = qp.shape[2]
    blocks = enc_dec_blocks("additive")
    d_qp = torch.empty((B, Tq, A), dtype=torch.float32, device=de.device)
    d_kp = torch.empty((B, Tk, A), dtype=torch.float32, device=de.device)
    n_blocks = triton.cdiv(Tq, blocks.block_m)
    d_v_parts = torch.empty((B, n_blocks, A), dtype=torch.float32, device=de.device)
    if B and A and Tq:
        common = dict(BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_A=blocks.block_a,
                      num_warps=blocks.num_warps)
        args = (qp, kp, va, de, d_qp, d_kp, d_v_parts, *qp.stride(), *kp.stride(), Tq, Tk, A, n_blocks)
        a_blocks = triton.cdiv(A, blocks.block_a)
        additive_backward_kernel[(n_blocks, B, a_blocks)](*args, FOR_KEYS=0, **common)
        if Tk:
            additive_backward_kernel[(triton.cdiv(Tk, blocks.block_n), B, a_blocks)](*args, FOR_KEYS=1, **common)
    else:
        d_qp.zero_(), d_kp.zero_(), d_v_parts.zero_()
    return d_qp, d_kp, d_v_parts.sum(dim=(0, 1))


def _scores_backward(de, query, keys, weight, w_query, w_keys, v, kind):
    """Gradients of (query, keys, weight, w_query, w_keys, v) from dE (fp32); the matmuls
    around the kernels go to cuBLAS."""
    qp, kp, va, _, scale, _ = _score_inputs(query, keys, weight, w_query, w_keys, v, kind)
    if kind == "additive":
        d_qp, d_kp, d_v = _additive_backward(de, qp, kp, va)
        d_query, d_keys = d_qp @ w_query.float(), d_kp @ w_keys.float()
        d_w_query = d_qp.reshape(-1, d_qp.shape[2]).T @ query.reshape(-1, query.shape[2]).float()
        d_w_keys = d_kp.reshape(-1, d_kp.shape[2]).T @ keys.reshape(-1, keys.shape[2]).float()
        grads = (d_query, d_keys, None, d_w_query, d_w_keys, d_v)
    else:
        de = de * scale
        d_qp = de @ keys.float()
        d_keys = de.transpose(1, 2) @ qp.float()
        if kind == "general":
            d_weight = query.reshape(-1, query.shape[2]).float().T @ d_qp.reshape(-1, d_qp.shape[2])
            grads = (d_qp @ weight.float().T, d_keys, d_weight, None, None, None)
        else:
            grads = (d_qp, d_keys, None, None, None, None)
    return tuple(None if g is None else g.to(query.dtype) for g in grads)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention: what the dispatch layer calls


def attention_scores(query, keys, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot"):
    return _enc_dec_launch(MODE_SCORES, query, keys, None, None, weight, w_query, w_keys, v, kind)[1]


def attention_forward(query, keys, values, mask=None, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot"):
    return _enc_dec_launch(MODE_ATTENTION, query, keys, values, mask, weight, w_query, w_keys, v, kind)


def attention_scores_backward(grad_scores, query, keys, weight=None, w_query=None, w_keys=None, v=None, *,
                              kind="dot"):
    return _scores_backward(grad_scores.float(), query, keys, weight, w_query, w_keys, v, kind)


def attention_backward(grad_context, grad_weights, query, keys, values, weights, weight=None, w_query=None,
                       w_keys=None, v=None, *, kind="dot"):
    B, Tq, Tk = weights.shape
    dv = values.shape[2]
    de = torch.empty((B, Tq, Tk), dtype=torch.float32, device=query.device)
    if de.numel():
        blocks = enc_dec_blocks(kind)
        dw = grad_weights if grad_weights is not None else weights
        attention_backward_scores_kernel[(triton.cdiv(Tq, blocks.block_m), B)](
            weights, dw, grad_context, values, de, *weights.stride(), *dw.stride(), *grad_context.stride(),
            *values.stride(), Tq, Tk, dv, HAS_DW=grad_weights is not None, BLOCK_M=blocks.block_m,
            BLOCK_N=blocks.block_n, BLOCK_DV=blocks.block_dv, num_warps=blocks.num_warps)
    d_values = (weights.float().transpose(1, 2) @ grad_context.float()).to(values.dtype)
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
# the launcher's own: contiguous and aligned.
LAUNCHES = ("typical", "worst")
_SDPA_SHAPES = {  # (Z, H, GROUPS, L, S, head dim short of the padded one)
    "typical": (4, 16, 1, 1024, 1024, 0),
    "worst": (3, 6, 3, 1023, 1001, 3),
}
_ENC_DEC_SHAPES = {  # (B, Tq, Tk, features, value features)
    "typical": (64, 32, 1024, 512, 512),
    "worst": (37, 31, 1001, 509, 509),
}


def _strides(shape, launch: str, caller: bool = True) -> tuple[int, ...]:
    """Strides of a tensor of ``shape``: contiguous, or (a caller's tensor in the worst launch)
    odd ones, which Triton can neither mark divisible nor fold to 1."""
    strides, step = [], 1 if launch == "typical" or not caller else 3
    for size in reversed(shape):
        strides.append(step)
        step = step * size if launch == "typical" or not caller else (step * size + 2) | 1
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


def _sdpa_args(kernel, tdtype: str, block_d: int, launch: str, mask_kind: int, constexprs: dict) -> dict:
    """The arguments ``sdpa_forward``/``sdpa_backward`` pass to ``kernel``."""
    Z, H, groups, L, S, short = _SDPA_SHAPES[launch]
    E = EV = block_d - short
    aligned = launch == "typical"
    q, kv, o = (Z, H, L, E), (Z, H // groups, S, E), (Z, H, L, EV)
    pointers = {"Q": passed(tdtype, aligned), "K": passed(tdtype, aligned), "V": passed(tdtype, aligned),
                "DO": passed(tdtype, aligned), "LSE": passed("fp32", aligned), "O": fresh(tdtype),
                "DELTA": fresh("fp32"), "DQ": fresh(tdtype), "DK": fresh(tdtype), "DV": fresh(tdtype)}
    if kernel is sdpa_forward_kernel:  # the log-sum-exp is the forward's output
        pointers["LSE"] = fresh("fp32")
    output_passed_back = kernel is sdpa_backward_delta_kernel  # O: the forward's output, from the caller
    if output_passed_back:
        pointers["O"] = passed(tdtype, aligned)
    if mask_kind == MASK_NONE:  # the launcher passes q in the mask's place, with zero strides
        pointers["M"], mask_strides = pointers["Q"], (0, 0, 0, 0)
    else:
        pointers["M"] = passed("u8" if mask_kind == MASK_BOOL else tdtype, aligned)
        mask_strides = _strides((Z, H, L, S), launch)
    strides = {"sq": _strides(q, launch), "sk": _strides(kv, launch), "sv": _strides(kv, launch),
               "sm": mask_strides, "so": _strides(o, launch, caller=output_passed_back), "sg": _strides(o, launch)}
    values = dict(sm_scale=1.0 / math.sqrt(E), H=H, GROUPS=groups, L=L, S=S, E=E, EV=EV, **constexprs)
    return _gate_args(kernel, pointers, strides, values)


# fp32 storage: the dK/dV kernel keeps k, v and the dK, dV accumulators of a key tile live over
# its loop, and the FMA products' operand layouts take many registers; at d=256 (and at d=128 in
# the GQA, masked, strided launch) it spills even at 16x16 tiles with 4 or 8 warps. No tile
# config avoids that: it needs a kernel change (dK and dV in separate passes, say).
_FP32_DKDV_SPILL = "fp32 dK/dV at this head dim spills at every tile config; needs a kernel change"


def _known_spill(name: str, dtype: torch.dtype, block_d: int, launch: str) -> str:
    heavy = block_d == 256 or (block_d == 128 and launch == "worst")
    return _FP32_DKDV_SPILL if name == "sdpa_backward_dkdv" and dtype == torch.float32 and heavy else ""


def _sdpa_cases() -> Iterator[CompileCase]:
    """Each SDPA kernel at each (padded head dim, storage width) the launcher can pick, launched
    three ways: typical without a mask, typical causal, and the worst launch with a mask (bool and
    additive in turn) and causal, the heaviest code. bf16 builds fp16's tiles, at d=64 only."""
    kernels = (("sdpa_forward", sdpa_forward_kernel), ("sdpa_backward_dq", sdpa_backward_dq_kernel),
               ("sdpa_backward_dkdv", sdpa_backward_dkdv_kernel))
    index = 0
    for block_d in HEAD_DIMS:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            if dtype == torch.bfloat16 and block_d != 64:  # fp16's configs; one case checks the bf16 casts
                continue
            tdtype = TRITON_DTYPES[dtype]
            blocks = sdpa_blocks(block_d, block_d, dtype.itemsize)
            worst_mask = (MASK_BOOL, MASK_ADD)[index % 2]
            index += 1
            launches = (("typical", MASK_NONE, False), ("typical", MASK_NONE, True), ("worst", worst_mask, True))
            for (name, kernel), (launch, mask_kind, causal) in itertools.product(kernels, launches):
                constexprs = dict(MASK_KIND=mask_kind, IS_CAUSAL=causal, BLOCK_M=blocks.block_m,
                                  BLOCK_N=blocks.block_n, BLOCK_D=block_d, BLOCK_DV=block_d, DOT_F32=False)
                yield CompileCase(
                    name=name, kernel=kernel,
                    args=_sdpa_args(kernel, tdtype, block_d, launch, mask_kind, constexprs),
                    num_warps=blocks.num_warps, known_spill=_known_spill(name, dtype, block_d, launch),
                    tags={"dtype": tdtype, "d": str(block_d), "block_m": str(blocks.block_m),
                          "block_n": str(blocks.block_n), "mask": ("none", "bool", "add")[mask_kind],
                          "causal": str(causal), "launch": launch})
            if dtype != torch.bfloat16:
                for launch in LAUNCHES:
                    yield CompileCase(
                        name="sdpa_backward_delta", kernel=sdpa_backward_delta_kernel,
                        args=_sdpa_args(sdpa_backward_delta_kernel, tdtype, block_d, launch, MASK_NONE,
                                        {"BLOCK_M": blocks.block_m, "BLOCK_DV": block_d}),
                        num_warps=blocks.num_warps,
                        tags={"dtype": tdtype, "d": str(block_d), "block_m": str(blocks.block_m), "launch": launch})


def _enc_dec_forward_args(kind: str, tdtype: str, mode: int, mask_kind: int, launch: str, constexprs: dict) -> dict:
    """The arguments ``_enc_dec_launch`` passes: query and keys as the caller hands them for dot
    scores, the fp32 projections it computes itself (general: the query side; additive: both)."""
    B, Tq, Tk, F, Dv = _ENC_DEC_SHAPES[launch]
    aligned = launch == "typical"
    caller_q, caller_k = kind in ("dot", "scaled_dot"), kind != "additive"
    q_dtype, k_dtype = (tdtype if caller_q else "fp32"), (tdtype if caller_k else "fp32")
    pointers = {"QP": passed(q_dtype, aligned) if caller_q else fresh(q_dtype),
                "KP": passed(k_dtype, aligned) if caller_k else fresh(k_dtype),
                # additive: the caller's v (fp32 passes through); dot kinds: a zero the launcher makes
                "VA": passed("fp32", aligned) if kind == "additive" else fresh("fp32"),
                "W": fresh(tdtype), "CTX": fresh(tdtype)}
    strides = {"sq": _strides((B, Tq, F), launch, caller_q), "sk": _strides((B, Tk, F), launch, caller_k),
               "sw": _strides((B, Tq, Tk), launch, caller=False)}
    if mode == MODE_ATTENTION:
        pointers["VAL"] = passed(tdtype, aligned)
        strides.update(sv=_strides((B, Tk, Dv), launch), sc=_strides((B, Tq, Dv), launch, caller=False))
    else:  # no values: the scores stand in for them and the context, and Dv is 0
        pointers["VAL"] = pointers["CTX"] = pointers["W"]
        strides.update(sv=strides["sw"], sc=strides["sw"])
        Dv = 0
    if mask_kind == MASK_BOOL:  # a (B, Tk) mask repeats over the rows: row stride 0
        pointers["M"] = passed("u8", aligned)
        batch, key = _strides((B, Tk), launch)
        strides["sm"] = (batch, 0, key)
    else:
        pointers["M"], strides["sm"] = pointers["W"], (0, 0, 0)
    values = dict(sm_scale=1.0 / math.sqrt(F) if kind == "scaled_dot" else 1.0, Tq=Tq, Tk=Tk, F=F, Dv=Dv,
                  **constexprs)
    return _gate_args(attention_forward_kernel, pointers, strides, values)


def _enc_dec_backward_args(kernel, tdtype: str, launch: str, constexprs: dict) -> dict:
    B, Tq, Tk, F, Dv = _ENC_DEC_SHAPES[launch]
    aligned = launch == "typical"
    if kernel is attention_backward_scores_kernel:  # the caller's weights, gradients and values
        pointers = {"W": passed(tdtype, aligned), "DCTX": passed(tdtype, aligned), "VAL": passed(tdtype, aligned),
                    "DE": fresh("fp32")}
        pointers["DW"] = passed(tdtype, aligned) if constexprs["HAS_DW"] else pointers["W"]
        strides = {"sw": _strides((B, Tq, Tk), launch), "sg": _strides((B, Tq, Tk), launch),
                   "sc": _strides((B, Tq, Dv), launch), "sv": _strides((B, Tk, Dv), launch)}
        return _gate_args(kernel, pointers, strides, dict(Tq=Tq, Tk=Tk, Dv=Dv, **constexprs))
    # additive backward: everything is the launcher's own fp32 (projections, dE, partial sums)
    pointers = {name: fresh("fp32") for name in ("QP", "KP", "VA", "DE", "DQA", "DKB", "DVA")}
    strides = {"sq": _strides((B, Tq, F), launch, caller=False), "sk": _strides((B, Tk, F), launch, caller=False)}
    n_blocks = triton.cdiv(Tq, enc_dec_blocks("additive").block_m)
    return _gate_args(kernel, pointers, strides, dict(Tq=Tq, Tk=Tk, F=F, n_blocks=n_blocks, **constexprs))


def _enc_dec_cases() -> Iterator[CompileCase]:
    """The encoder-decoder kernels at their one tile config, for each kind of score input
    (storage-dtype query/keys for dot and scaled_dot, fp32 projected query for general, fp32
    projections for additive), both modes, with and without a mask, and the backward kernels,
    each in the typical and the worst launch."""
    forward = [  # (kind name, MODE, MASK_KIND, dtype)
        ("dot", MODE_ATTENTION, MASK_BOOL, "fp16"),
        ("scaled_dot", MODE_SCORES, MASK_NONE, "fp32"),
        ("general", MODE_ATTENTION, MASK_NONE, "bf16"),
        ("additive", MODE_ATTENTION, MASK_BOOL, "bf16"),
        ("additive", MODE_SCORES, MASK_NONE, "fp16"),
    ]
    for (kind, mode, mask_kind, tdtype), launch in itertools.product(forward, LAUNCHES):
        blocks = enc_dec_blocks(kind)
        code = KIND_ADDITIVE if kind == "additive" else KIND_DOT
        yield CompileCase(
            name="attention_forward", kernel=attention_forward_kernel,
            args=_enc_dec_forward_args(kind, tdtype, mode, mask_kind, launch, dict(
                KIND=code, MODE=mode, MASK_KIND=mask_kind, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
                BLOCK_A=blocks.block_a, BLOCK_DV=blocks.block_dv)),
            num_warps=blocks.num_warps,
            tags={"kind": kind, "mode": ("scores", "attention")[mode], "mask": ("none", "bool")[mask_kind],
                  "dtype": tdtype, "launch": launch})
    blocks = enc_dec_blocks("dot")
    for (has_dw, tdtype), launch in itertools.product(((True, "fp16"), (False, "fp32")), LAUNCHES):
        yield CompileCase(
            name="attention_backward_scores", kernel=attention_backward_scores_kernel,
            args=_enc_dec_backward_args(attention_backward_scores_kernel, tdtype, launch, dict(
                HAS_DW=has_dw, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_DV=blocks.block_dv)),
            num_warps=blocks.num_warps, tags={"has_dw": str(has_dw), "dtype": tdtype, "launch": launch})
    blocks = enc_dec_blocks("additive")
    for for_keys, launch in itertools.product((0, 1), LAUNCHES):
        yield CompileCase(
            name="attention_additive_backward", kernel=additive_backward_kernel,
            args=_enc_dec_backward_args(additive_backward_kernel, "fp32", launch, dict(
                FOR_KEYS=for_keys, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n, BLOCK_A=blocks.block_a)),
            num_warps=blocks.num_warps, tags={"rows": ("query", "keys")[for_keys], "launch": launch})


def compile_cases() -> Iterator[CompileCase]:
    yield from _sdpa_cases()
    yield from _enc_dec_cases()
