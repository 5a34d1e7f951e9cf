"""Softmax, log-softmax and masked softmax, forward and backward, in plain NumPy.

``dim`` is a non-negative axis here (the public op normalises it). The forward subtracts the
row maximum before exponentiating, so inputs around 1e4 neither overflow nor lose the answer;
a block of rows whose maxima all lie where ``exp`` can neither overflow nor lose what the shift
would keep (see ``row_shift``) is exponentiated as it is, a pass fewer.
Backward takes the forward's output ``y`` (ATen's ``_softmax_backward_data``):

* softmax:     dx = y * (dy - sum(dy * y))
* log_softmax: dx = dy - exp(y) * sum(dy)

Masked softmax treats masked positions as absent: they get probability 0, and a row with no
position kept (or whose kept entries are all -inf) is all zeros instead of 0/0 = NaN. Its
backward is the softmax backward: y = 0 at every masked position, so the gradient is 0 there
and over a fully masked row, whatever ``dy`` is.

Each op is a formula over whole rows written into ``out``; ``along`` computes large inputs a
block of rows at a time on the thread pool (a row is never split, so every sum runs as it would
over the whole array).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._parallel import along
from ._precision import reference_op


def row_dot(a: np.ndarray, b: np.ndarray, dim: int) -> np.ndarray:
    """``sum(a * b)`` along ``dim``, kept as an axis of length 1 (along the last axis without
    the product array: np.vecdot, twice as fast as the einsum that stands in before NumPy 2)."""
    if dim != a.ndim - 1:
        return np.sum(a * b, axis=dim, keepdims=True)
    if _vecdot is None:
        return np.einsum("...j,...j->...", a, b)[..., None]
    return _vecdot(a, b)[..., None]


_vecdot = getattr(np, "vecdot", None)  # NumPy >= 2.0


def row_sum(a: np.ndarray, dim: int) -> np.ndarray:
    """``sum(a)`` along ``dim``, kept as an axis of length 1. Rows along the last axis of up to
    ``EINSUM_ROW_MAX`` values go through einsum's sum: vectorised (NumPy's pairwise sum of a short
    row is three times slower) and no BLAS, whose threads would compete with the pool's. Its
    error grows with the row length (float32, positive values: 2 ulp at 4096, 100 ulp at 2^20),
    so longer rows take NumPy's pairwise sum, accurate to a few ulp at any length. Either way a
    row is summed in an order that depends on its length alone: every thread count gives the
    same bits."""
    if dim != a.ndim - 1 or a.shape[-1] > EINSUM_ROW_MAX:
        return np.sum(a, axis=dim, keepdims=True)
    return np.einsum("...j->...", a)[..., None]


EINSUM_ROW_MAX = 4096


def _row_max(x: np.ndarray, dim: int) -> np.ndarray:
    """``max(x)`` along ``dim``, 0 for a row that is all -inf (its -inf - -inf would be NaN
    before the caller decides what such a row means) or empty."""
    m = np.max(x, axis=dim, keepdims=True, initial=-np.inf)  # initial: rows of length 0
    m[np.isneginf(m)] = 0
    return m


def row_shift(x: np.ndarray, dim: int) -> np.ndarray | None:
    """What to subtract from ``x`` before exponentiating: the row maximum, or None (nothing)
    when no row needs it, which saves a pass over the block.

    Subtracting the maximum keeps ``exp`` from overflowing and the row sum from underflowing.
    Neither can happen when every row maximum ``m`` lies in ``[0, log(max) - log(n) - 1]``:
    then ``exp(x) <= exp(m)`` and the sum of ``n`` of them stay finite, and ``exp(x) >= exp(x - m)``,
    so nothing underflows that the shifted form would keep. ``exp(x)`` is then at least as
    accurate as ``exp(x - m)`` (no rounding of ``x - m``). NaN, +inf and all -inf rows fail the
    test and take the shift (as do all-negative rows such as log-probabilities). The choice is
    made per block of rows, and blocks follow from the shape alone: the bits do not depend on
    the thread count."""
    m = np.max(x, axis=dim, keepdims=True, initial=-np.inf)  # initial: rows of length 0
    if m.size and m.min() >= 0 and m.max() <= _log_max(x.dtype) - math.log(x.shape[dim]) - 1:
        return None
    m[np.isneginf(m)] = 0
    return m


@functools.lru_cache(maxsize=None)
def _log_max(dtype: np.dtype) -> float:
    """log of the largest finite value of ``dtype`` (float16 inputs arrive here as float32)."""
    return math.log(float(np.finfo(dtype).max))


def _softmax(x, out, dim):
    shift = row_shift(x, dim)
    if shift is None:
        np.exp(x, out=out)
    else:
        np.subtract(x, shift, out=out)
        np.exp(out, out=out)
    # PyTorch's 0/0 = NaN for an all -inf row is kept: only masked_softmax promises zeros.
    # One reciprocal per row and a multiply (as ATen does): a division per element costs more.
    out *= np.reciprocal(row_sum(out, dim))


def _log_softmax(x, out, dim):
    shift = row_shift(x, dim)
    # Unshifted, x - log(sum(exp(x))) is a pass fewer; its rounding error is that of a number the
    # size of the row maximum, as in ATen's x - (max + log(sum(exp(x - max)))).
    if shift is None:
        np.subtract(x, np.log(row_sum(np.exp(x), dim)), out=out)
    else:
        np.subtract(x, shift, out=out)
        out -= np.log(row_sum(np.exp(out), dim))


@reference_op
def softmax(x: np.ndarray, dim: int) -> np.ndarray:
    return along(lambda x, out: _softmax(x, out, dim), x, axis=dim)


@reference_op
def log_softmax(x: np.ndarray, dim: int) -> np.ndarray:
    return along(lambda x, out: _log_softmax(x, out, dim), x, axis=dim)


def keep_mask(shape: tuple[int, ...], mask: np.ndarray | None, lengths: np.ndarray | None, dim: int) -> np.ndarray:
    """Boolean array of ``shape``: True where masked_softmax keeps a position. ``mask`` is
    broadcast to ``shape``; ``lengths`` (``shape`` without ``dim``) keeps index j along ``dim``
    while ``j < lengths``. Both may be given: a position must pass both."""
    if mask is not None and lengths is None:  # (read-only: a view where mask already has the shape)
        return np.broadcast_to(mask if mask.dtype == bool else mask != 0, shape)  # float16 calls widen mask
    keep = np.ones(shape, dtype=bool)
    if mask is not None:
        keep &= np.broadcast_to(mask != 0, shape)
    if lengths is not None:
        index = np.arange(shape[dim]).reshape([-1 if a == dim else 1 for a in range(len(shape))])
        keep &= index < np.expand_dims(lengths, dim)
    return keep


def select_or_minus_inf(x: np.ndarray, keep: np.ndarray, out: np.ndarray) -> None:
    """``out = x where keep, else -inf`` (``out`` may be ``x``): a select on the bits,
    x ^ ((x ^ -inf) & drop) with drop all ones where masked. Arithmetic would let a masked NaN
    or inf through (NaN * 0 is NaN), and np.where on a random mask is about eight times slower."""
    bits = np.dtype(f"i{out.itemsize}")
    drop = keep.astype(bits)
    drop -= 1  # keep: 1 - 1 = 0; masked: 0 - 1 = all ones
    x_bits = x.view(bits)
    flip = np.bitwise_xor(x_bits, np.array(-np.inf, out.dtype).view(bits))
    flip &= drop
    np.bitwise_xor(x_bits, flip, out=out.view(bits))


def _masked_softmax(x, keep, out, dim):
    # Masked positions are absent: -inf before the maximum, so a masked NaN or inf does not count.
    select_or_minus_inf(x, keep, out)
    out -= _row_max(out, dim)
    np.exp(out, out=out)
    total = row_sum(out, dim)
    empty = ~(total > 0)  # nothing finite kept (or a NaN): the row is zeros, not 0/0 = NaN
    out /= total
    if empty.any():
        np.putmask(out, np.broadcast_to(empty, out.shape), 0)


@reference_op
def masked_softmax(x: np.ndarray, mask: np.ndarray | None, lengths: np.ndarray | None, dim: int) -> np.ndarray:
    keep = keep_mask(x.shape, mask, lengths, dim)
    return along(lambda x, keep, out: _masked_softmax(x, keep, out, dim), x, keep, axis=dim)


def _softmax_backward(grad_output, y, out, dim):
    np.subtract(grad_output, row_dot(grad_output, y, dim), out=out)
    out *= y


def _log_softmax_backward(grad_output, y, out, dim):
    np.exp(y, out=out)
    out *= row_sum(grad_output, dim)
    np.subtract(grad_output, out, out=out)


@reference_op
def softmax_backward(grad_output: np.ndarray, output: np.ndarray, dim: int) -> np.ndarray:
    return along(lambda g, y, out: _softmax_backward(g, y, out, dim), grad_output, output, axis=dim)


@reference_op
def log_softmax_backward(grad_output: np.ndarray, output: np.ndarray, dim: int) -> np.ndarray:
    return along(lambda g, y, out: _log_softmax_backward(g, y, out, dim), grad_output, output, axis=dim)
