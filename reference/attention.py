"""Attention, forward and backward, in plain NumPy.

Two ops:

* ``sdpa_forward`` / ``sdpa_backward``: ``torch.nn.functional.scaled_dot_product_attention``
  with its semantics: ``softmax(q k^T * scale + mask) v`` over the last two dims; a boolean mask
  keeps the positions where it is True, a float mask is added to the scores; ``is_causal`` keeps
  ``j <= i`` (the top-left aligned lower triangle, also when L != S); grouped-query attention
  repeats each key/value head for ``Hq / Hk`` consecutive query heads. A row that has no
  position left gives a zero output and zero gradients, as PyTorch's math backend does.
  The forward also returns the row log-sum-exp of the scores (-inf for such empty rows); the
  backward recomputes the probabilities from it.
* ``attention_forward`` / ``attention_backward``: one encoder-decoder attention step with
  the textbook score functions ``e_ij = a(s_i, h_j)`` (dot, scaled dot, general, additive),
  ``alpha = softmax_j(e)``, ``c_i = sum_j alpha_ij h_j`` (see ``gpukernels.ops.attention``).

Float16 computes in float32 (NumPy's float16 arithmetic rounds at every step); every other
dtype in its own precision.
"""

from __future__ import annotations

import math

import numpy as np

from . import _parallel
from ._parallel import along
from .softmax import row_dot, row_shift, row_sum, select_or_minus_inf

SCORE_KINDS = ("dot", "scaled_dot", "general", "additive")


def _compute_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float32) if x.dtype == np.float16 else x.dtype


def _cast(dtype: np.dtype, *arrays):
    return tuple(None if a is None else np.asarray(a, dtype=dtype) for a in arrays)


def _exp_rows(scores, lse, factor, out):
    """The numerators of a softmax of ``scores`` along the last axis into ``out``, the row
    log-sum-exp into ``lse`` and the factor that normalises each row, 1 / its sum, into ``factor``
    (both shaped (..., 1)). Rows with nothing to keep (all -inf, or NaN) are zeros with factor 0,
    lse -inf (NaN). The maximum is subtracted only where a row needs it (``row_shift``)."""
    shift = row_shift(scores, scores.ndim - 1)  # empty rows: a shift of 0, exp(-inf - 0) = 0
    if shift is None:
        np.exp(scores, out=out)
    else:
        np.subtract(scores, shift, out=out)
        np.exp(out, out=out)
    total = row_sum(out, out.ndim - 1)
    np.log(total, out=lse)
    if shift is not None:
        lse += shift
    np.reciprocal(total, out=factor)  # a reciprocal per row and a multiply: cheaper than a division each
    empty = ~(total > 0)
    if empty.any():
        np.putmask(out, np.broadcast_to(empty, out.shape), 0)
        np.putmask(factor, empty, 0)


def _softmax_rows(scores, lse, out):
    factor = np.empty_like(lse)
    _exp_rows(scores, lse, factor, out)
    out *= factor


def _masked_softmax(scores: np.ndarray, keep: np.ndarray | None, normalise: bool = True) -> tuple:
    """(softmax over the last axis restricted to ``keep`` (and to finite scores), log-sum-exp),
    or with ``normalise=False`` (its numerators, log-sum-exp, the (..., 1) factors that normalise
    the rows): a caller multiplying the probabilities by a narrower matrix normalises the product
    instead, a pass over fewer elements.

    Rows with nothing to keep give all-zero probabilities and a log-sum-exp of -inf. ``scores``
    is overwritten: it becomes the probabilities (the numerators).
    """
    if keep is not None:  # a select, not arithmetic: a masked NaN or inf must not count
        select_or_minus_inf(scores, keep, scores)
    lse = np.empty((*scores.shape[:-1], 1), dtype=scores.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        if normalise:
            along(_softmax_rows, scores, lse, axis=-1, out=scores)
            return scores, lse[..., 0]
        factor = np.empty_like(lse)
        along(_exp_rows, scores, lse, factor, axis=-1, out=scores)
        return scores, lse[..., 0], factor


def _softmax_backward(grad_p: np.ndarray, p: np.ndarray) -> np.ndarray:
    """d scores from d probabilities: ``p * (dp - sum_j p dp)``; zero where p is zero.
    ``grad_p`` is overwritten: it becomes the result."""

    def rows(grad_p, p, out):
        np.subtract(grad_p, row_dot(p, grad_p, p.ndim - 1), out=out)
        out *= p

    return along(rows, grad_p, p, axis=-1, out=grad_p)


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention


def _repeat_kv(x: np.ndarray, groups: int) -> np.ndarray:
    return x if groups == 1 else np.repeat(x, groups, axis=-3)


def _sum_groups(x: np.ndarray, groups: int) -> np.ndarray:
    """The adjoint of ``_repeat_kv``: add the gradients of the query heads sharing a KV head."""
    if groups == 1:
        return x
    shape = x.shape
    return x.reshape(*shape[:-3], shape[-3] // groups, groups, *shape[-2:]).sum(axis=-3)


def _sdpa_probabilities(q, k, attn_mask, is_causal, scale, first_row=0, normalise=True):
    """(probabilities, log-sum-exp, ``q * scale``) for the query rows ``q`` (rows ``first_row``
    on of the whole query; ``attn_mask`` already cut to them) against every key of ``k`` (its
    heads already repeated); with ``normalise=False`` the softmax's numerators and the factors
    that normalise its rows (see _masked_softmax) instead of the probabilities. The scale
    multiplies the query, (L, E), rather than the scores, (L, S): the same product with a
    smaller pass."""
    q_scaled = q * q.dtype.type(scale)
    scores = np.matmul(q_scaled, np.swapaxes(k, -1, -2))
    keep = None
    if is_causal:  # j <= i, counting i from the top of the whole query
        L, S = scores.shape[-2:]
        keep = np.arange(first_row, first_row + L)[:, None] >= np.arange(S)
    if attn_mask is not None:
        if attn_mask.dtype == np.bool_:
            keep = attn_mask if keep is None else keep & attn_mask
        else:
            scores += attn_mask.astype(scores.dtype)  # broadcasts to scores' shape, which it keeps
    if keep is not None:
        keep = np.broadcast_to(keep, scores.shape)
    return (*_masked_softmax(scores, keep, normalise), q_scaled)


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else scale


# The CPU splits attention into blocks, (heads, query rows) each, whose scores, softmax and
# products are tasks of the thread pool (as torch's CPU flash kernel splits batch x heads x query
# blocks): the heads and the rows of the output are independent. At N=256 such a product is too
# small for BLAS's own threads to gain (and, spin-waiting beside the pool or other processes,
# they cost milliseconds), so the blocks run their products on one BLAS thread each. A block is
# about a quarter of the scores (_parallel.blocks' sizes): whole heads where a head's scores
# fit, rows of one head where they do not. The blocks follow from the shapes alone.


class _Heads:
    """q, k, v (and the mask) with their leading (batch, head) axes flattened into one: the
    blocks' views. Inputs broadcast along those axes are copied out (a mask without leading axes
    is not: it broadcasts against any block)."""

    def __init__(self, q, k, v, attn_mask):
        self.lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        self.count = math.prod(self.lead)
        self.L, self.S = q.shape[-2], k.shape[-2]

        def flat(x):
            return np.broadcast_to(x, (*self.lead, *x.shape[-2:])).reshape(self.count, *x.shape[-2:])

        self.q, self.k, self.v = flat(q), flat(k), None if v is None else flat(v)
        self.mask, self.mask_per_head = attn_mask, attn_mask is not None and math.prod(attn_mask.shape[:-2]) > 1
        if self.mask_per_head:
            self.mask = flat(attn_mask)
        elif attn_mask is not None and attn_mask.ndim > 2:  # leading axes of length 1: one (L, S) mask
            self.mask = attn_mask.reshape(attn_mask.shape[-2:])

    def mask_of(self, heads: slice, lo: int, hi: int):
        """The mask of a block: its heads' (where it has heads), its rows (where it has rows)."""
        mask = self.mask
        if mask is None or mask.ndim < 2:
            return mask
        if self.mask_per_head:
            mask = mask[heads]
        return mask if mask.shape[-2] == 1 else mask[..., lo:hi, :]

    def blocks(self, itemsize: int) -> list[tuple[slice, int, int]]:
        """(heads, first row, end row) of each block."""
        row_bytes = self.S * itemsize
        total = self.count * self.L * row_bytes
        if total < _parallel.PARALLEL_MIN_BYTES:
            return [(slice(0, self.count), 0, self.L)]
        chunk = _parallel._chunk_bytes(total)
        if self.L * row_bytes <= chunk:  # whole heads
            return [(slice(h0, h1), 0, self.L) for h0, h1 in _parallel.split(self.count, chunk // (self.L * row_bytes))]
        rows = _parallel.split(self.L, max(1, chunk // row_bytes))
        return [(slice(h, h + 1), lo, hi) for h in range(self.count) for lo, hi in rows]


def _in_blocks(work, blocks) -> None:
    """``work(heads, lo, hi)`` for every block, on the pool when there are several."""
    if len(blocks) == 1:
        work(*blocks[0])
        return
    with _parallel.one_blas_thread():
        _parallel.run([lambda block=block: work(*block) for block in blocks])


def sdpa_forward(q, k, v, attn_mask=None, *, is_causal=False, scale=None, groups=1):
    """(output (..., L, Ev), row log-sum-exp (..., L) of the scaled, masked scores)."""
    dtype = _compute_dtype(q)
    q, k, v = _cast(dtype, q, k, v)
    scale = default_scale(q.shape[-1], scale)
    heads = _Heads(q, _repeat_kv(k, groups), _repeat_kv(v, groups), attn_mask)
    out = np.empty((heads.count, heads.L, v.shape[-1]), dtype)
    lse = np.empty((heads.count, heads.L), dtype)

    def block(h, lo, hi):
        with np.errstate(over="ignore"):
            numerators, lse[h, lo:hi], factor, _ = _sdpa_probabilities(
                heads.q[h, lo:hi], heads.k[h], heads.mask_of(h, lo, hi), is_causal, scale, lo, normalise=False)
        rows = out[h, lo:hi]
        np.matmul(numerators, heads.v[h], out=rows)
        rows *= factor  # normalised here, (L, Ev), rather than the probabilities, (L, S): usually fewer

    _in_blocks(block, heads.blocks(dtype.itemsize))
    return out.reshape(*heads.lead, *out.shape[1:]), lse.reshape(*heads.lead, heads.L)


def sdpa_backward(grad_out, q, k, v, attn_mask=None, out=None, lse=None, *, is_causal=False, scale=None, groups=1):
    """(dq, dk, dv). ``out`` and ``lse`` are what the forward returned; the reference
    recomputes the probabilities from the inputs and does not need them. A block of rows of a
    head gives its rows of dq and its share of that head's dk and dv (shares summed in row order)."""
    dtype = _compute_dtype(q)
    grad_out, q, k, v = _cast(dtype, grad_out, q, k, v)
    scale = default_scale(q.shape[-1], scale)
    heads = _Heads(q, _repeat_kv(k, groups), _repeat_kv(v, groups), attn_mask)
    d_out = grad_out.reshape(heads.count, heads.L, grad_out.shape[-1])
    dq = np.empty(heads.q.shape, dtype)
    dk = np.empty(heads.k.shape, dtype)
    dv = np.empty(heads.v.shape, dtype)
    blocks = heads.blocks(dtype.itemsize)
    later_rows = {}  # the shares of blocks that do not start at row 0, added after

    def block(h, lo, hi):
        with np.errstate(over="ignore"):
            p, _, q_scaled = _sdpa_probabilities(heads.q[h, lo:hi], heads.k[h], heads.mask_of(h, lo, hi), is_causal,
                                                 scale, lo)
        dv_share = np.matmul(np.swapaxes(p, -1, -2), d_out[h, lo:hi])
        dscores = _softmax_backward(np.matmul(d_out[h, lo:hi], np.swapaxes(heads.v[h], -1, -2)), p)
        # The scale goes on the (L, E) and (S, E) sides, not on the (L, S) dscores: a smaller pass.
        np.matmul(dscores, heads.k[h], out=dq[h, lo:hi])
        dq[h, lo:hi] *= dtype.type(scale)
        dk_share = np.matmul(np.swapaxes(dscores, -1, -2), q_scaled)
        if lo == 0:
            dk[h], dv[h] = dk_share, dv_share
        else:
            later_rows[h.start, lo] = dk_share, dv_share

    _in_blocks(block, blocks)
    for h, lo, _ in blocks:
        if lo > 0:
            dk_share, dv_share = later_rows[h.start, lo]
            dk[h] += dk_share
            dv[h] += dv_share
    lead = heads.lead
    dq, dk, dv = (x.reshape(*lead, *x.shape[1:]) for x in (dq, dk, dv))
    return dq, _sum_groups(dk, groups), _sum_groups(dv, groups)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention: scores, masked softmax, context


def _rows(x: np.ndarray) -> np.ndarray:
    """(B, T, D) as (B*T, D): one matrix product over every position instead of B of them."""
    return x.reshape(-1, x.shape[-1])


def _project(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w.T`` for x of shape (B, T, D)."""
    return (_rows(x) @ w.T).reshape(*x.shape[:-1], w.shape[0])


def _outer_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum over b, t of a[b, t, i] b[b, t, j]`` (the weight gradient of a projection)."""
    return _rows(a).T @ _rows(b)


def _additive_hidden_tanh(qa_i, kb):
    """``tanh(W_q s_i + W_k h_j)`` for one query row: (B, Tk, A)."""
    t = np.add(qa_i[:, None, :], kb)
    return np.tanh(t, out=t)


# Additive attention is many small products (per query row, per batch), too small for BLAS's
# threads: the CPU computes it in blocks of batch rows, each block a task of the thread pool on one
# BLAS thread, projections included. A block's weight gradients are its share, the shares summed
# in block order. The blocks follow from the shapes alone (a block is a quarter of the keys'
# projections and hidden rows, _parallel's chunk sizes).


def _batch_blocks(query, keys, A: int) -> list[tuple[int, int]]:
    B, Tq = query.shape[:2]
    Tk, D = keys.shape[1:]
    per_batch = Tk * (D + Tq * A) * query.itemsize
    if B * per_batch < _parallel.PARALLEL_MIN_BYTES:
        return [(0, B)]
    return _parallel.split(B, _parallel._items_per_chunk(B, per_batch))


def _in_batch_blocks(work, blocks) -> list:
    """[work(lo, hi) for each block], on the pool when there are several, BLAS on one thread."""
    results = [None] * len(blocks)

    def task(n):
        results[n] = work(*blocks[n])

    with _parallel.one_blas_thread():
        if len(blocks) == 1:
            task(0)
        else:
            _parallel.run([lambda n=n: task(n) for n in range(len(blocks))])
    return results


def _additive_scores(query, keys, w_query, w_keys, v):
    """``e_ij = v . tanh(W_q s_i + W_k h_j)``, one query row at a time so at most [B, Tk, A] lives."""
    scores = np.empty((query.shape[0], query.shape[1], keys.shape[1]), dtype=query.dtype)

    def block(lo, hi):
        qa, kb = _project(query[lo:hi], w_query), _project(keys[lo:hi], w_keys)
        for i in range(qa.shape[1]):
            np.matmul(_additive_hidden_tanh(qa[:, i], kb), v, out=scores[lo:hi, i, :])

    _in_batch_blocks(block, _batch_blocks(query, keys, v.shape[0]))
    return scores


def attention_scores(query, keys, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot"):
    """``e`` (B, Tq, Tk) for one of SCORE_KINDS (formulas in gpukernels.ops.attention)."""
    dtype = _compute_dtype(query)
    query, keys, weight, w_query, w_keys, v = _cast(dtype, query, keys, weight, w_query, w_keys, v)
    if kind == "additive":
        return _additive_scores(query, keys, w_query, w_keys, v)
    if kind == "general":
        query = np.matmul(query, weight)
    scores = np.matmul(query, np.swapaxes(keys, -1, -2))
    if kind == "scaled_dot":
        scores *= dtype.type(1.0 / math.sqrt(keys.shape[-1]))
    return scores


def _keep(mask, shape):
    """A (B, Tk) or (B, Tq, Tk) boolean mask as (B, Tq, Tk); None stays None."""
    if mask is None:
        return None
    return np.broadcast_to(mask[:, None, :] if mask.ndim == 2 else mask, shape)


def attention_forward(query, keys, values, mask=None, weight=None, w_query=None, w_keys=None, v=None, *, kind="dot"):
    """(context (B, Tq, Dv), weights (B, Tq, Tk))."""
    dtype = _compute_dtype(query)
    scores = attention_scores(query, keys, weight, w_query, w_keys, v, kind=kind)
    p, _ = _masked_softmax(scores, _keep(mask, scores.shape))
    context = np.matmul(p, values.astype(dtype, copy=False))
    return context, p


def _additive_scores_backward(de, query, keys, w_query, w_keys, v):
    """Gradients (query, keys, None, w_query, w_keys, v) of the additive scores."""
    d_query, d_keys = np.empty_like(query), np.empty_like(keys)

    def block(lo, hi):
        qa, kb = _project(query[lo:hi], w_query), _project(keys[lo:hi], w_keys)
        d_qa = np.empty_like(qa)
        d_kb = np.zeros_like(kb)
        d_v = np.zeros_like(v)
        for i in range(qa.shape[1]):  # one query row at a time: at most [B, Tk, A] lives
            t = _additive_hidden_tanh(qa[:, i], kb)
            de_i = de[lo:hi, i, :]
            d_v += de_i.reshape(-1) @ t.reshape(-1, t.shape[-1])  # sum over b, j of de_bij t_bj
            d_hidden = np.add(1, t)  # de_bij v (1 - t^2), written (1 - t)(1 + t): no cancellation
            np.subtract(1, t, out=t)
            d_hidden *= t
            d_hidden *= de_i[:, :, None]
            d_hidden *= v
            d_hidden.sum(axis=1, out=d_qa[:, i, :])
            d_kb += d_hidden
        np.matmul(d_qa, w_query, out=d_query[lo:hi])
        np.matmul(d_kb, w_keys, out=d_keys[lo:hi])
        return _outer_sum(d_qa, query[lo:hi]), _outer_sum(d_kb, keys[lo:hi]), d_v

    shares = _in_batch_blocks(block, _batch_blocks(query, keys, v.shape[0]))
    d_w_query, d_w_keys, d_v = shares[0]
    for share in shares[1:]:
        d_w_query += share[0]
        d_w_keys += share[1]
        d_v += share[2]
    return d_query, d_keys, None, d_w_query, d_w_keys, d_v


def attention_scores_backward(grad_scores, query, keys, weight=None, w_query=None, w_keys=None, v=None, *,
                              kind="dot"):
    """Gradients of (query, keys, weight, w_query, w_keys, v) from d scores (B, Tq, Tk); None for
    the parameters the kind does not use."""
    dtype = _compute_dtype(query)
    de, query, keys, weight, w_query, w_keys, v = _cast(dtype, grad_scores, query, keys, weight, w_query, w_keys, v)
    if kind == "additive":
        return _additive_scores_backward(de, query, keys, w_query, w_keys, v)
    if kind == "scaled_dot":
        de = de * dtype.type(1.0 / math.sqrt(keys.shape[-1]))
    projected = np.matmul(query, weight) if kind == "general" else query
    d_projected = np.matmul(de, keys)
    d_keys = np.matmul(np.swapaxes(de, -1, -2), projected)
    if kind == "general":
        return np.matmul(d_projected, weight.T), d_keys, _outer_sum(query, d_projected), None, None, None
    return d_projected, d_keys, None, None, None, None


def attention_backward(grad_context, grad_weights, query, keys, values, weights, weight=None, w_query=None,
                       w_keys=None, v=None, *, kind="dot"):
    """Gradients of (query, keys, values, weight, w_query, w_keys, v); None for the parameters
    the kind does not use. ``weights`` are the forward's probabilities (the mask is in them:
    masked positions are 0); ``grad_weights`` may be None when the weights were not used."""
    dtype = _compute_dtype(query)
    grad_context, grad_weights, values, p = _cast(dtype, grad_context, grad_weights, values, weights)
    grad_p = np.matmul(grad_context, np.swapaxes(values, -1, -2))
    if grad_weights is not None:
        grad_p = grad_p + grad_weights
    if p.shape[-2] == 1:  # one query row: an outer product, which NumPy's matmul computes in a slow
        d_values = np.multiply(np.swapaxes(p, -1, -2), grad_context)  # loop (inner dimension 1: 5x slower)
    else:
        d_values = np.matmul(np.swapaxes(p, -1, -2), grad_context)
    d_query, d_keys, d_weight, d_w_query, d_w_keys, d_v = attention_scores_backward(
        _softmax_backward(grad_p, p), query, keys, weight, w_query, w_keys, v, kind=kind)
    return d_query, d_keys, d_values, d_weight, d_w_query, d_w_keys, d_v
