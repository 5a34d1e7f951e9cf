"""Attention through CuPy: cuBLAS matmuls (``cupy.matmul``) in fp32 around the row and
additive-score kernels of attention.cu / attention.cuh.

Scaled dot-product attention here is the plain composition (scores, masked softmax rows,
probabilities times values) and does materialise the L x S scores; the flash-style kernels are
the Triton backend's. The additive scores and their gradients never form [B, Tq, Tk, A].
Everything below the launch helpers is written against an array module ``xp`` (CuPy on the GPU,
NumPy in the CPU tests), so the CPU tests run this very host code.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from ._module import NULL, THREADS, Launch, NvrtcProgram, Runner, cuda_type, grid_for, on_gpu
from ._stream import on_callers_stream

PROGRAM = NvrtcProgram("attention.cu", (
    "attention_softmax_rows", "attention_softmax_backward_rows", "attention_additive_scores",
    "attention_additive_backward_query", "attention_additive_backward_keys",
))


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


# ---------------------------------------------------------------------------------------------
# Launch helpers: every kernel is a grid-stride loop over work items of fp32 buffers.


def _launch(name: str, work_items: int, *args) -> Launch | None:
    """The launch of kernel ``name`` over ``work_items`` (None when there are none)."""
    return Launch(name, grid_for(work_items), (THREADS,), args) if work_items else None


def _rows(scores) -> tuple[int, int]:
    n = scores.shape[-1]
    return (scores.size // n if n else 0), n


def softmax_rows_launch(scores, keep, lse) -> Launch | None:
    """Masked softmax of each row of ``scores`` in place, the row log-sum-exp into ``lse``;
    ``keep`` (uint8 per score) None for every position."""
    rows, n = _rows(scores)
    return _launch("attention_softmax_rows", rows, scores, NULL if keep is None else keep, lse, np.int64(rows),
                   np.int64(n))


def softmax_backward_rows_launch(p, dp) -> Launch | None:
    rows, n = _rows(p)
    return _launch("attention_softmax_backward_rows", rows, p, dp, np.int64(rows), np.int64(n))


def _sizes(qa, kb) -> tuple[np.int64, ...]:
    (B, Tq, A), Tk = qa.shape, kb.shape[1]
    return tuple(np.int64(n) for n in (B, Tq, Tk, A))


def _slices(A: int) -> int:
    return (A + 3) // 4  # the backward kernels give each thread 4 outputs of the attention size


def additive_scores_launch(qa, kb, v, e) -> Launch | None:
    return _launch("attention_additive_scores", e.size, qa, kb, v, e, *_sizes(qa, kb))


def additive_backward_query_launch(qa, kb, v, de, d_qa, d_v_rows) -> Launch | None:
    B, Tq, _, A = _sizes(qa, kb)
    return _launch("attention_additive_backward_query", int(B * Tq) * _slices(int(A)), qa, kb, v, de, d_qa, d_v_rows,
                   *_sizes(qa, kb))


def additive_backward_keys_launch(qa, kb, v, de, d_kb) -> Launch | None:
    B, _, Tk, A = _sizes(qa, kb)
    return _launch("attention_additive_backward_keys", int(B * Tk) * _slices(int(A)), qa, kb, v, de, d_kb,
                   *_sizes(qa, kb))


def _go(run: Runner, spec: Launch | None) -> None:
    if spec is not None:
        run.launch(spec)


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


def _softmax_rows(run: Runner, scores, keep):
    """Masked softmax over the last axis of the fp32 ``scores`` in place; returns the lse."""
    xp = run.xp
    lse = xp.full(scores.shape[:-1], -xp.inf, dtype=xp.float32)
    if keep is not None:
        keep = xp.ascontiguousarray(xp.broadcast_to(keep, scores.shape), dtype=xp.uint8)
    _go(run, softmax_rows_launch(scores, keep, lse))
    return lse


def _softmax_backward_rows(run: Runner, p, dp):
    _go(run, softmax_backward_rows_launch(p, dp))
    return dp


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention


def _probabilities(run: Runner, q, k, attn_mask, is_causal, scale, groups):
    xp = run.xp
    k = xp.repeat(k, groups, axis=-3) if groups > 1 else k
    scores = xp.ascontiguousarray(xp.matmul(q, xp.swapaxes(k, -1, -2)))
    scores *= np.float32(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    keep = None
    if is_causal:
        keep = xp.tri(scores.shape[-2], scores.shape[-1], dtype=xp.bool_)
    if attn_mask is not None:
        if attn_mask.dtype == xp.bool_:
            keep = attn_mask if keep is None else keep & attn_mask
        else:
            scores += to_float32(attn_mask, xp)
    lse = _softmax_rows(run, scores, keep)
    return scores, lse


def _sum_groups(x, groups):
    if groups == 1:
        return x
    return x.reshape(*x.shape[:-3], x.shape[-3] // groups, groups, *x.shape[-2:]).sum(axis=-3)


def _sdpa_forward(run: Runner, query, key, value, attn_mask, is_causal, scale, groups):
    xp = run.xp
    cuda_type(query, "query")
    p, lse = _probabilities(run, to_float32(query, xp), to_float32(key, xp), attn_mask, is_causal, scale, groups)
    v = to_float32(value, xp)
    out = xp.matmul(p, xp.repeat(v, groups, axis=-3) if groups > 1 else v)
    return from_float32(out, query.dtype, xp), lse


def _sdpa_backward(run: Runner, grad_output, query, key, value, attn_mask, is_causal, scale, groups):
    xp = run.xp
    cuda_type(query, "query")
    q, k, v, do = (to_float32(a, xp) for a in (query, key, value, grad_output))
    p, _ = _probabilities(run, q, k, attn_mask, is_causal, scale, groups)
    k_rep = xp.repeat(k, groups, axis=-3) if groups > 1 else k
    v_rep = xp.repeat(v, groups, axis=-3) if groups > 1 else v
    dv = xp.matmul(xp.swapaxes(p, -1, -2), do)
    ds = _softmax_backward_rows(run, p, xp.ascontiguousarray(xp.matmul(do, xp.swapaxes(v_rep, -1, -2))))
    ds *= np.float32(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    dq = xp.matmul(ds, k_rep)
    dk = xp.matmul(xp.swapaxes(ds, -1, -2), q)
    dk, dv = _sum_groups(dk, groups), _sum_groups(dv, groups)
    return from_float32(dq, query.dtype, xp), from_float32(dk, key.dtype, xp), from_float32(dv, value.dtype, xp)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention


def _additive_inputs(xp, query, keys, w_query, w_keys, v):
    qa = xp.ascontiguousarray(xp.matmul(to_float32(query, xp), to_float32(w_query, xp).T))
    kb = xp.ascontiguousarray(xp.matmul(to_float32(keys, xp), to_float32(w_keys, xp).T))
    return qa, kb, to_float32(v, xp)


def _scores(run: Runner, query, keys, weight, w_query, w_keys, v, kind):
    """fp32 scores (B, Tq, Tk)."""
    xp = run.xp
    if kind == "additive":
        qa, kb, va = _additive_inputs(xp, query, keys, w_query, w_keys, v)
        e = xp.empty((qa.shape[0], qa.shape[1], kb.shape[1]), dtype=xp.float32)
        _go(run, additive_scores_launch(qa, kb, va, e))
        return e
    q = to_float32(query, xp)
    if kind == "general":
        q = xp.matmul(q, to_float32(weight, xp))
    e = xp.ascontiguousarray(xp.matmul(q, xp.swapaxes(to_float32(keys, xp), 1, 2)))
    if kind == "scaled_dot":
        e *= np.float32(1.0 / math.sqrt(keys.shape[-1]))
    return e


def _scores_backward(run: Runner, de, query, keys, weight, w_query, w_keys, v, kind):
    xp = run.xp
    f32 = lambda a: to_float32(a, xp)  # noqa: E731
    if kind == "additive":
        qa, kb, va = _additive_inputs(xp, query, keys, w_query, w_keys, v)
        A = qa.shape[2]
        d_qa, d_kb, d_v_rows = xp.empty_like(qa), xp.empty_like(kb), xp.empty_like(qa)
        _go(run, additive_backward_query_launch(qa, kb, va, de, d_qa, d_v_rows))
        _go(run, additive_backward_keys_launch(qa, kb, va, de, d_kb))
        grads = (xp.matmul(d_qa, f32(w_query)), xp.matmul(d_kb, f32(w_keys)), None,
                 d_qa.reshape(-1, A).T @ f32(query).reshape(-1, query.shape[2]),
                 d_kb.reshape(-1, A).T @ f32(keys).reshape(-1, keys.shape[2]), d_v_rows.sum(axis=(0, 1)))
    else:
        if kind == "scaled_dot":
            de = de * np.float32(1.0 / math.sqrt(keys.shape[-1]))
        q = f32(query)
        projected = xp.matmul(q, f32(weight)) if kind == "general" else q
        d_projected = xp.matmul(de, f32(keys))
        d_keys = xp.matmul(xp.swapaxes(de, 1, 2), projected)
        if kind == "general":
            d_weight = q.reshape(-1, q.shape[2]).T @ d_projected.reshape(-1, d_projected.shape[2])
            grads = (xp.matmul(d_projected, f32(weight).T), d_keys, d_weight, None, None, None)
        else:
            grads = (d_projected, d_keys, None, None, None, None)
    return tuple(None if g is None else from_float32(g, query.dtype, xp) for g in grads)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


@on_callers_stream
def sdpa_forward(query, key, value, attn_mask=None, *, is_causal=False, scale=None, groups=1,
                 run: Runner | None = None):
    return _sdpa_forward(run or on_gpu(PROGRAM), query, key, value, attn_mask, is_causal, scale, groups)


@on_callers_stream
def sdpa_backward(grad_output, query, key, value, attn_mask=None, output=None, logsumexp=None, *, is_causal=False,
                  scale=None, groups=1, run: Runner | None = None):
    return _sdpa_backward(run or on_gpu(PROGRAM), grad_output, query, key, value, attn_mask, is_causal, scale,
                          groups)


@on_callers_stream
def attention_scores(query, keys, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot",
                     run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    cuda_type(query, "query")
    return from_float32(_scores(run, query, keys, weight, w_query, w_keys, v, kind), query.dtype, run.xp)


@on_callers_stream
def attention_forward(query, keys, values, mask=None, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot",
                      run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    cuda_type(query, "query")
    p = _scores(run, query, keys, weight, w_query, w_keys, v, kind)
    keep = None if mask is None else (mask[:, None, :] if mask.ndim == 2 else mask)
    _softmax_rows(run, p, keep)
    context = xp.matmul(p, to_float32(values, xp))
    return from_float32(context, query.dtype, xp), from_float32(p, query.dtype, xp)


@on_callers_stream
def attention_scores_backward(grad_scores, query, keys, weight=None, w_query=None, w_keys=None, v=None, *,
                              kind="dot", run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    cuda_type(query, "query")
    return _scores_backward(run, to_float32(grad_scores, run.xp), query, keys, weight, w_query, w_keys, v, kind)


@on_callers_stream
def attention_backward(grad_context, grad_weights, query, keys, values, weights, weight=None, w_query=None,
                       w_keys=None, v=None, *, kind="dot", run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    cuda_type(query, "query")
    p, dc = to_float32(weights, xp), to_float32(grad_context, xp)
    dp = xp.ascontiguousarray(xp.matmul(dc, xp.swapaxes(to_float32(values, xp), 1, 2)))
    if grad_weights is not None:
        dp += to_float32(grad_weights, xp)
    de = _softmax_backward_rows(run, p, dp)
    d_values = from_float32(xp.matmul(xp.swapaxes(p, 1, 2), dc), values.dtype, xp)
    d_query, d_keys, d_weight, d_w_query, d_w_keys, d_v = _scores_backward(run, de, query, keys, weight, w_query,
                                                                           w_keys, v, kind)
    return d_query, d_keys, d_values, d_weight, d_w_query, d_w_keys, d_v
