"""Attention through CuPy: cuBLAS matmuls (``cupy.matmul``) in fp32 around the row and
additive-score kernels of attention.cu / attention.cuh.

Scaled dot-product attention here is the plain composition (scores, masked softmax rows,
probabilities times values) and does materialise the L x S scores; the flash-style kernels are
the Triton backend's. The additive scores and their gradients never form [B, Tq, Tk, A].
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from ._module import THREADS, NvrtcProgram, cuda_type, grid_for, kernel

PROGRAM = NvrtcProgram("attention.cu", (
    "attention_softmax_rows", "attention_softmax_backward_rows", "attention_additive_scores",
    "attention_additive_backward_query", "attention_additive_backward_keys",
))


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


def _launch(name: str, work_items: int, *args) -> None:
    if work_items:
        kernel(PROGRAM, name)(grid_for(work_items), (THREADS,), args)


def to_float32(x, xp):
    """A contiguous float32 copy of ``x`` (array module ``xp``); bfloat16 (ml_dtypes, which
    cupy cannot cast) by its bits: a bfloat16 is the top half of a float32."""
    if str(x.dtype) == "bfloat16":
        bits = xp.ascontiguousarray(x).view(xp.uint16).astype(xp.uint32) << 16
        return bits.view(xp.float32)
    return xp.ascontiguousarray(x, dtype=xp.float32)


def from_float32(x, dtype, xp):
    """float32 ``x`` rounded to ``dtype``; bfloat16 to nearest even through its bits (NaN and
    inf keep their all-ones exponent, so they survive the shift)."""
    if str(dtype) != "bfloat16":
        return x.astype(dtype)
    bits = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)
    rounded = (bits + xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))) >> 16
    out = xp.empty(x.shape, dtype=dtype)
    out.view(xp.uint16)[...] = rounded.astype(xp.uint16)
    return out


def _f32(x):
    import cupy

    return to_float32(x, cupy)


def _to(x, dtype):
    import cupy

    return from_float32(x, dtype, cupy)


def _softmax_rows(scores, keep):
    """Masked softmax over the last axis of the fp32 ``scores`` in place; returns the lse."""
    import cupy

    n = scores.shape[-1]
    rows = scores.size // n if n else 0
    lse = cupy.full(scores.shape[:-1], -cupy.inf, dtype=cupy.float32)
    if keep is not None:
        keep = cupy.ascontiguousarray(cupy.broadcast_to(keep, scores.shape), dtype=cupy.uint8)
    keep_pointer = keep if keep is not None else np.uint64(0)  # null: every position takes part
    _launch("attention_softmax_rows", rows, scores, keep_pointer, lse, np.int64(rows), np.int64(n))
    return lse


def _softmax_backward_rows(p, dp):
    n = p.shape[-1]
    rows = p.size // n if n else 0
    _launch("attention_softmax_backward_rows", rows, p, dp, np.int64(rows), np.int64(n))
    return dp


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention


def _probabilities(q, k, attn_mask, is_causal, scale, groups):
    import cupy

    k = cupy.repeat(k, groups, axis=-3) if groups > 1 else k
    scores = cupy.ascontiguousarray(cupy.matmul(q, cupy.swapaxes(k, -1, -2)))
    scores *= np.float32(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    keep = None
    if is_causal:
        keep = cupy.tri(scores.shape[-2], scores.shape[-1], dtype=cupy.bool_)
    if attn_mask is not None:
        if attn_mask.dtype == cupy.bool_:
            keep = attn_mask if keep is None else keep & attn_mask
        else:
            scores += _f32(attn_mask)
    lse = _softmax_rows(scores, keep)
    return scores, lse


def _sum_groups(x, groups):
    if groups == 1:
        return x
    return x.reshape(*x.shape[:-3], x.shape[-3] // groups, groups, *x.shape[-2:]).sum(axis=-3)


def sdpa_forward(query, key, value, attn_mask=None, *, is_causal=False, scale=None, groups=1):
    import cupy

    cuda_type(query, "query")
    p, lse = _probabilities(_f32(query), _f32(key), attn_mask, is_causal, scale, groups)
    v = _f32(value)
    out = cupy.matmul(p, cupy.repeat(v, groups, axis=-3) if groups > 1 else v)
    return _to(out, query.dtype), lse


def sdpa_backward(grad_output, query, key, value, attn_mask=None, output=None, logsumexp=None, *, is_causal=False,
                  scale=None, groups=1):
    import cupy

    cuda_type(query, "query")
    q, k, v, do = _f32(query), _f32(key), _f32(value), _f32(grad_output)
    p, _ = _probabilities(q, k, attn_mask, is_causal, scale, groups)
    k_rep = cupy.repeat(k, groups, axis=-3) if groups > 1 else k
    v_rep = cupy.repeat(v, groups, axis=-3) if groups > 1 else v
    dv = cupy.matmul(cupy.swapaxes(p, -1, -2), do)
    ds = _softmax_backward_rows(p, cupy.ascontiguousarray(cupy.matmul(do, cupy.swapaxes(v_rep, -1, -2))))
    ds *= np.float32(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    dq = cupy.matmul(ds, k_rep)
    dk = cupy.matmul(cupy.swapaxes(ds, -1, -2), q)
    dk, dv = _sum_groups(dk, groups), _sum_groups(dv, groups)
    return _to(dq, query.dtype), _to(dk, key.dtype), _to(dv, value.dtype)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention


def _additive_inputs(query, keys, w_query, w_keys, v):
    import cupy

    qa = cupy.ascontiguousarray(cupy.matmul(_f32(query), _f32(w_query).T))
    kb = cupy.ascontiguousarray(cupy.matmul(_f32(keys), _f32(w_keys).T))
    return qa, kb, _f32(v)


def _scores(query, keys, weight, w_query, w_keys, v, kind):
    """fp32 scores (B, Tq, Tk)."""
    import cupy

    if kind == "additive":
        qa, kb, va = _additive_inputs(query, keys, w_query, w_keys, v)
        B, Tq, A = qa.shape
        Tk = kb.shape[1]
        e = cupy.empty((B, Tq, Tk), dtype=cupy.float32)
        _launch("attention_additive_scores", e.size, qa, kb, va, e, *(np.int64(n) for n in (B, Tq, Tk, A)))
        return e
    q = _f32(query)
    if kind == "general":
        q = cupy.matmul(q, _f32(weight))
    e = cupy.ascontiguousarray(cupy.matmul(q, cupy.swapaxes(_f32(keys), 1, 2)))
    if kind == "scaled_dot":
        e *= np.float32(1.0 / math.sqrt(keys.shape[-1]))
    return e


def attention_scores(query, keys, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot"):
    cuda_type(query, "query")
    return _to(_scores(query, keys, weight, w_query, w_keys, v, kind), query.dtype)


def attention_forward(query, keys, values, mask=None, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot"):
    import cupy

    cuda_type(query, "query")
    p = _scores(query, keys, weight, w_query, w_keys, v, kind)
    keep = None if mask is None else (mask[:, None, :] if mask.ndim == 2 else mask)
    _softmax_rows(p, keep)
    context = cupy.matmul(p, _f32(values))
    return _to(context, query.dtype), _to(p, query.dtype)


def _scores_backward(de, query, keys, weight, w_query, w_keys, v, kind):
    import cupy

    dtype = query.dtype
    if kind == "additive":
        qa, kb, va = _additive_inputs(query, keys, w_query, w_keys, v)
        B, Tq, A = qa.shape
        Tk = kb.shape[1]
        d_qa = cupy.zeros_like(qa)
        d_kb = cupy.zeros_like(kb)
        d_v_rows = cupy.zeros_like(qa)
        sizes = tuple(np.int64(n) for n in (B, Tq, Tk, A))
        slices = (A + 3) // 4
        _launch("attention_additive_backward_query", B * Tq * slices, qa, kb, va, de, d_qa, d_v_rows, *sizes)
        _launch("attention_additive_backward_keys", B * Tk * slices, qa, kb, va, de, d_kb, *sizes)
        grads = (cupy.matmul(d_qa, _f32(w_query)), cupy.matmul(d_kb, _f32(w_keys)), None,
                 d_qa.reshape(-1, A).T @ _f32(query).reshape(-1, query.shape[2]),
                 d_kb.reshape(-1, A).T @ _f32(keys).reshape(-1, keys.shape[2]), d_v_rows.sum(axis=(0, 1)))
    else:
        if kind == "scaled_dot":
            de = de * np.float32(1.0 / math.sqrt(keys.shape[-1]))
        q = _f32(query)
        projected = cupy.matmul(q, _f32(weight)) if kind == "general" else q
        d_projected = cupy.matmul(de, _f32(keys))
        d_keys = cupy.matmul(cupy.swapaxes(de, 1, 2), projected)
        if kind == "general":
            d_weight = q.reshape(-1, q.shape[2]).T @ d_projected.reshape(-1, d_projected.shape[2])
            grads = (cupy.matmul(d_projected, _f32(weight).T), d_keys, d_weight, None, None, None)
        else:
            grads = (d_projected, d_keys, None, None, None, None)
    return tuple(None if g is None else _to(g, dtype) for g in grads)


def attention_scores_backward(grad_scores, query, keys, weight=None, w_query=None, w_keys=None, v=None, *,
                              kind="dot"):
    cuda_type(query, "query")
    return _scores_backward(_f32(grad_scores), query, keys, weight, w_query, w_keys, v, kind)


def attention_backward(grad_context, grad_weights, query, keys, values, weights, weight=None, w_query=None,
                       w_keys=None, v=None, *, kind="dot"):
    import cupy

    cuda_type(query, "query")
    p, dc = _f32(weights), _f32(grad_context)
    dp = cupy.ascontiguousarray(cupy.matmul(dc, cupy.swapaxes(_f32(values), 1, 2)))
    if grad_weights is not None:
        dp += _f32(grad_weights)
    de = _softmax_backward_rows(p, dp)
    d_values = _to(cupy.matmul(cupy.swapaxes(p, 1, 2), dc), values.dtype)
    d_query, d_keys, d_weight, d_w_query, d_w_keys, d_v = _scores_backward(de, query, keys, weight, w_query, w_keys,
                                                                           v, kind)
    return d_query, d_keys, d_values, d_weight, d_w_query, d_w_keys, d_v
