"""Layer normalisation and RMS normalisation, with and without a fused residual add, forward and
backward, in plain NumPy.

Every op sees the input as rows: the last ``normalized_ndim`` axes are one row of ``n`` values.

* layer_norm: ``y = (x - mean) * rstd * w + b`` with ``mean = sum(x) / n``,
  ``rstd = 1 / sqrt(sum((x - mean)^2) / n + eps)`` (the biased variance, as PyTorch).
* rms_norm:   ``y = x * rstd * w`` with ``rstd = 1 / sqrt(sum(x^2) / n + eps)``.
* add_*:      ``s = input + residual`` (rounded to the storage dtype, as ``input + residual``
  would be), then the norm of ``s``; both ``y`` and ``s`` are returned.

Backward, with ``xhat = (x - mean) * rstd`` (rms: ``x * rstd``) and ``g = dy * w``:

* ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` (rms: without the ``mean(g)`` term),
  plus the gradient of the sum output for the add variants;
* ``dw = sum over rows of dy * xhat``, ``db = sum over rows of dy``.

The statistics (``mean``, ``rstd``) have the input's shape with the normalised axes kept as 1
(PyTorch's ``native_layer_norm``), in float32 for float16/bfloat16 inputs and in the input's
dtype otherwise. A row of length 1 or of equal values has variance 0: ``y = b``. A row of
length 0 has mean 0 and variance 0 (``rstd = 1 / sqrt(eps)``).

Large inputs are computed a block of rows at a time on the thread pool; the weight and bias
gradients are summed per block and the blocks' sums added in block order, so the bits do not
depend on the thread count.
"""

from __future__ import annotations

import math

import numpy as np

from ._parallel import _items_per_chunk, run, split


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """float16 is computed in float32 (NumPy rounds float16 arithmetic at every step)."""
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def _as_rows(x: np.ndarray, normalized_ndim: int) -> np.ndarray:
    rows = math.prod(x.shape[:x.ndim - normalized_ndim])
    return np.ascontiguousarray(x).reshape(rows, math.prod(x.shape[x.ndim - normalized_ndim:]))


def _stats_shape(shape: tuple[int, ...], normalized_ndim: int) -> tuple[int, ...]:
    return shape[:len(shape) - normalized_ndim] + (1,) * normalized_ndim


def _chunks(rows: int, cols: int, itemsize: int) -> list[tuple[int, int]]:
    """Blocks of whole rows, sized from the shape alone (so the sums' order is fixed)."""
    return split(rows, _items_per_chunk(rows, max(cols, 1) * itemsize))


# No BLAS in the row blocks: they run on the reference's thread pool, and OpenBLAS threads a
# matrix-vector product from about 10^4 elements on, putting its own threads (which spin while
# waiting) on the cores the pool already uses. On the 2-core CI VM under load that made
# layer_norm_backward (2048 x 1024) take 140 ms instead of 2.7 ms (OPENBLAS_NUM_THREADS=1).
# vecdot is one dot product per row (OpenBLAS threads a dot product only from 10^4 elements);
# the column sums are NumPy's and einsum's own loops.


def _row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The dot product of each row of ``a`` with the same row of ``b`` (or with the vector
    ``b``): NumPy 2's vecdot is one dot product per row, 4x faster than einsum("ij,ij->i")
    (NumPy 1's way) and as deterministic."""
    if hasattr(np, "vecdot"):
        return np.vecdot(a, b)
    return np.einsum("ij,ij->i", a, np.broadcast_to(b, a.shape))


def column_sum(a: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``sum_i a[i, j]`` (with ``weights``: ``sum_i weights[i] a[i, j]``), row after row."""
    if weights is None:
        return np.add.reduce(a, axis=0)
    return np.einsum("i,ij->j", weights, a)


def row_mean(a: np.ndarray) -> np.ndarray:
    """Mean of each row, kept as a column (0 for rows of length 0)."""
    return _row_dot(a, np.ones(a.shape[1], dtype=a.dtype))[:, None] / max(a.shape[1], 1)


def row_mean_of_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _row_dot(a, b)[:, None] / max(a.shape[1], 1)


def _tiled(vector, rows: int):
    """``vector`` repeated as ``rows`` rows: NumPy multiplies two equally shaped arrays in one
    inner loop, but a broadcast row in one inner loop per row (twice the time at 1024 columns)."""
    return None if vector is None else np.tile(vector, (rows, 1))


# ---------------------------------------------------------------------------------------------
# Forward


def _normalise_rows(x, weight, bias, eps, rms, y, mean, rstd):
    """One block of rows: ``x`` in the compute dtype; ``y``, ``mean``, ``rstd`` written.
    ``weight`` and ``bias`` are tiled to at least the block's rows."""
    if rms:
        centred = x
    else:
        mean[:] = row_mean(x)
        centred = np.subtract(x, mean, out=y)
    rstd[:] = 1.0 / np.sqrt(row_mean_of_product(centred, centred) + eps)
    np.multiply(centred, rstd, out=y)  # the one pass that scales rows (a slow broadcast)
    if weight is not None:
        y *= weight[:len(y)]
    if bias is not None:
        y += bias[:len(y)]


def _forward(x, residual, weight, bias, normalized_ndim, eps, rms):
    """(y, s or None, mean or None, rstd) for any of the four forward ops."""
    dtype = x.dtype
    compute = _compute_dtype(dtype)
    source = _as_rows(x, normalized_ndim)
    n_rows, n_cols = source.shape
    if residual is None:
        total = rows = source
    else:  # the sum rounded to the storage dtype, block by block with the rest
        added = _as_rows(residual, normalized_ndim)
        total = np.empty(x.shape, dtype=dtype)
        rows = total.reshape(n_rows, n_cols)
    chunks = _chunks(n_rows, n_cols, compute.itemsize)
    block_rows = max((hi - lo for lo, hi in chunks), default=0)
    w = None if weight is None else _tiled(weight.reshape(-1).astype(compute, copy=False), block_rows)
    b = None if bias is None else _tiled(bias.reshape(-1).astype(compute, copy=False), block_rows)
    y = np.empty((n_rows, n_cols), dtype=compute)
    mean = np.zeros((n_rows, 1), dtype=compute)
    rstd = np.empty((n_rows, 1), dtype=compute)

    def block(lo: int, hi: int) -> None:
        if residual is not None:
            np.add(source[lo:hi], added[lo:hi], out=rows[lo:hi])
        _normalise_rows(rows[lo:hi].astype(compute, copy=False), w, b, eps, rms, y[lo:hi], mean[lo:hi], rstd[lo:hi])

    run([lambda lo=lo, hi=hi: block(lo, hi) for lo, hi in chunks])
    stats = _stats_shape(x.shape, normalized_ndim)
    return (y.reshape(x.shape).astype(dtype, copy=False), None if residual is None else total,
            None if rms else mean.reshape(stats), rstd.reshape(stats))


def layer_norm(input: np.ndarray, weight, bias, *, normalized_ndim: int, eps: float):
    """(y, mean, rstd)."""
    with np.errstate(all="ignore"):
        y, _, mean, rstd = _forward(input, None, weight, bias, normalized_ndim, eps, rms=False)
    return y, mean, rstd


def rms_norm(input: np.ndarray, weight, *, normalized_ndim: int, eps: float):
    """(y, rstd)."""
    with np.errstate(all="ignore"):
        y, _, _, rstd = _forward(input, None, weight, None, normalized_ndim, eps, rms=True)
    return y, rstd


def add_layer_norm(input: np.ndarray, residual: np.ndarray, weight, bias, *, normalized_ndim: int, eps: float):
    """(y, s, mean, rstd) with ``s = input + residual``."""
    with np.errstate(all="ignore"):
        return _forward(input, residual, weight, bias, normalized_ndim, eps, rms=False)


def add_rms_norm(input: np.ndarray, residual: np.ndarray, weight, *, normalized_ndim: int, eps: float):
    """(y, s, rstd) with ``s = input + residual``."""
    with np.errstate(all="ignore"):
        y, total, _, rstd = _forward(input, residual, weight, None, normalized_ndim, eps, rms=True)
    return y, total, rstd


# ---------------------------------------------------------------------------------------------
# Backward


def _gradient_rows(dy, x, mean, rstd, weight, weight_rows, rms, dx, grad_sum):
    """One block of rows (compute dtype): ``dx`` written; returns the block's (dw, db) sums.

    With ``z = x - mean`` (rms: ``x``), ``xhat = z * rstd`` is never formed: ``dw`` sums
    ``dy * z`` weighted by each row's ``rstd`` (a vector-matrix product) and
    ``dx = rstd * (g - mean(g) - z * rstd^2 * mean(g * z))``: as few passes that scale rows
    (NumPy's slowest broadcast) as the formula allows."""
    n = max(x.shape[1], 1)
    z = x if rms else np.subtract(x, mean, out=dx)  # dx's memory holds z until the last steps
    product = dy * z
    dw = column_sum(product, rstd[:, 0])
    db = column_sum(dy)
    g = dy if weight is None else np.multiply(dy, weight_rows[:len(dy)], out=product)
    scale = rstd * rstd * (_row_dot(g, z)[:, None] / n)
    np.multiply(z, scale, out=dx)
    np.subtract(g, dx, out=dx)
    if not rms:
        g_mean = row_mean(dy) if weight is None else _row_dot(dy, weight)[:, None] / n
        dx -= g_mean
    dx *= rstd
    if grad_sum is not None:
        dx += grad_sum
    return dw, db


def _backward(grad_output, grad_sum, x, mean, rstd, weight, normalized_ndim, rms, bias_grad):
    """(dx, dw or None, db or None)."""
    dtype = x.dtype
    compute = _compute_dtype(dtype)
    dy_rows, x_rows = _as_rows(grad_output, normalized_ndim), _as_rows(x, normalized_ndim)
    n_rows, n_cols = x_rows.shape
    sum_rows = None if grad_sum is None else _as_rows(grad_sum, normalized_ndim)
    mean_rows = None if mean is None else mean.reshape(n_rows, 1).astype(compute, copy=False)
    rstd_rows = rstd.reshape(n_rows, 1).astype(compute, copy=False)
    w = None if weight is None else weight.reshape(-1).astype(compute, copy=False)
    dx = np.empty((n_rows, n_cols), dtype=compute)
    chunks = _chunks(n_rows, n_cols, compute.itemsize)
    w_rows = None if w is None else _tiled(w, max((hi - lo for lo, hi in chunks), default=0))
    partial_dw = np.zeros((max(len(chunks), 1), n_cols), dtype=compute)
    partial_db = np.zeros((max(len(chunks), 1), n_cols), dtype=compute)

    def block(index: int, lo: int, hi: int) -> None:
        partial_dw[index], partial_db[index] = _gradient_rows(
            dy_rows[lo:hi].astype(compute, copy=False), x_rows[lo:hi].astype(compute, copy=False),
            None if mean_rows is None else mean_rows[lo:hi], rstd_rows[lo:hi], w, w_rows, rms, dx[lo:hi],
            None if sum_rows is None else sum_rows[lo:hi].astype(compute, copy=False))

    run([lambda i=i, lo=lo, hi=hi: block(i, lo, hi) for i, (lo, hi) in enumerate(chunks)])
    shape = x.shape[x.ndim - normalized_ndim:]
    dw = None if weight is None else partial_dw.sum(axis=0).reshape(shape).astype(weight.dtype, copy=False)
    db = partial_db.sum(axis=0).reshape(shape).astype(dtype, copy=False) if bias_grad else None
    return dx.reshape(x.shape).astype(dtype, copy=False), dw, db


def layer_norm_backward(grad_output, input, mean, rstd, weight, *, normalized_ndim: int, bias_grad: bool):
    """(grad_input, grad_weight or None, grad_bias or None)."""
    with np.errstate(all="ignore"):
        return _backward(grad_output, None, input, mean, rstd, weight, normalized_ndim, False, bias_grad)


def rms_norm_backward(grad_output, input, rstd, weight, *, normalized_ndim: int):
    """(grad_input, grad_weight or None)."""
    with np.errstate(all="ignore"):
        dx, dw, _ = _backward(grad_output, None, input, None, rstd, weight, normalized_ndim, True, False)
    return dx, dw


def add_layer_norm_backward(grad_output, grad_sum, sum, mean, rstd, weight, *, normalized_ndim: int,
                            bias_grad: bool):
    """(grad of input and of residual (the same array), grad_weight or None, grad_bias or None);
    ``grad_sum`` (the gradient of the sum output) may be None."""
    with np.errstate(all="ignore"):
        return _backward(grad_output, grad_sum, sum, mean, rstd, weight, normalized_ndim, False, bias_grad)


def add_rms_norm_backward(grad_output, grad_sum, sum, rstd, weight, *, normalized_ndim: int):
    with np.errstate(all="ignore"):
        dx, dw, _ = _backward(grad_output, grad_sum, sum, None, rstd, weight, normalized_ndim, True, False)
    return dx, dw
