"""Cross-entropy, NLL and multi-class focal loss, and the fused linear + cross-entropy, in NumPy.

Every op here sees rows: ``input`` is ``[R, C]`` (the public op moved the class dim last and
flattened the rest), ``target`` is ``[R]`` class indices or ``[R, C]`` probabilities. With
``lse`` the row's log-sum-exp and ``p = exp(x - lse)`` its softmax, every loss of the family is

    loss_r = sum_k q_k (lse - x_k)            (cross-entropy, any target)

with per-class target weights ``q`` (``w`` the class weights, ``s`` the label smoothing):

* class index y:    q_k = (1 - s) w_y [k == y] + (s / C) w_k      (0 on an ignored row)
* probabilities t:  q_k = w_k ((1 - s) t_k + s / C)

and its gradient is ``dloss_r/dx_k = p_k sum(q) - q_k``. The focal loss is
``-alpha_y (1 - p_y)^gamma log p_y``; with ``G`` its derivative by ``log p_y`` the gradient is
``G ([k == y] - p_k)``, the same shape: ``p_k Q - c [k == y]`` with ``Q = c = -G``.

Reductions follow torch: "mean" divides the summed loss by the summed weights of the targets
(``w_y`` over rows that are not ignored; torch's ``nll_loss``), by R for probability targets,
and (our choice for focal, where torch has no op) by the number of rows not ignored. A batch in
which every row is ignored has a zero denominator: mean is 0/0 = NaN, as in torch.

The gradient of a row is scaled by ``grad_output`` (per row for "none") over the denominator
(by 0 when the denominator is 0: an all-ignored batch has a zero gradient, as in torch).

Probability targets get a gradient too (torch gives one): ``loss_r`` is linear in ``t`` with
``dloss_r/dt_k = (1 - s) w_k (lse - x_k) = -(1 - s) w_k log_softmax(x)_k``, scaled per row as
above. It needs the logits and the row's log-sum-exp only, which the forward can hand back
(``compute_logsumexp``) so that the backward does not sweep the row twice. The class weights of
probability targets get one too (torch gives it; "mean" divides by R whatever the weights, so
the loss is linear in them): with ``g_r`` the row's scale,

    dloss/dw_k = sum_r g_r ((1 - s) t_rk + s / C) (lse_r - x_rk)

a sum over rows per column, made block by block and the blocks' sums added in block order (the
same bits every run). Class-index targets give the weights none (torch refuses one there).
Large inputs run a block of rows at a time on the thread pool (``_parallel``).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from ._parallel import matmul, one_blas_thread, run, split

# A block of rows holds about this many bytes of logits (their exp is made in place of a copy).
BLOCK_BYTES = 1 << 20
# Bytes of logits the linear + cross-entropy makes at once unless told (chunk x V), on the CPU
# (the GPU backends' budget is larger: gpukernels._cross_entropy_driver.GPU_CHUNK_BYTES).
LINEAR_CHUNK_BYTES = 32 << 20  # not much smaller: OpenBLAS ran (256 x V) @ (V x H) 3x slower than 512 rows


def _widen(a):
    return a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == np.float16 else a


def loss_op(fn: Callable | None = None, *, wide_results: tuple[int, ...] = ()) -> Callable:
    """Compute float16 in float32 (NumPy's float16 arithmetic rounds at every step), rounding the
    results once, except those at ``wide_results`` (a log-sum-exp stays float32: the backward
    subtracts logits from it); integer targets pass unchanged; silence NumPy on non-finite values."""
    if fn is None:
        return functools.partial(loss_op, wide_results=wide_results)

    @functools.wraps(fn)
    def wrapper(*args, **params):
        dtype = next(a.dtype for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f")
        # BLAS on the calling thread: the row blocks already share the cores on the pool, and
        # OpenBLAS's own threads would spin on one of them after every call (_parallel.matmul)
        with np.errstate(all="ignore"), one_blas_thread():
            result = fn(*map(_widen, args), **params)
        if dtype != np.float16:
            return result
        narrow = lambda r: r if r is None else np.asarray(r).astype(dtype)  # noqa: E731
        if not isinstance(result, tuple):
            return narrow(result)
        return tuple(r if i in wide_results else narrow(r) for i, r in enumerate(result))

    return wrapper


# ---------------------------------------------------------------------------------------------
# Per-row coefficients, from the targets alone


def _valid_and_index(target: np.ndarray, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows that count, and their targets with ignored ones replaced by class 0 (a safe gather)."""
    valid = target != ignore_index
    return valid, np.where(valid, target, 0).astype(np.intp)


def denominators(kind: str, target: np.ndarray, weight: np.ndarray | None, ignore_index: int, dtype) -> np.ndarray:
    """What each row adds to the denominator of "mean"."""
    if kind == "probs":
        return np.ones(target.shape[0], dtype)
    valid, index = _valid_and_index(target, ignore_index)
    if kind == "index" and weight is not None:
        return np.where(valid, weight[index], 0).astype(dtype)
    return valid.astype(dtype)


def row_scales(grad_output, denominator: np.ndarray, reduction: str, rows: int, dtype) -> np.ndarray:
    """What multiplies each row's gradient: the upstream gradient over the mean's denominator."""
    g = np.ones((), dtype) if grad_output is None else np.asarray(grad_output, dtype)
    if reduction == "mean":  # an all-ignored batch: every row's gradient is 0, as in torch (not 0 * inf)
        total = denominator.sum()
        g = g / total if total != 0 else np.zeros_like(g)
    return np.broadcast_to(g, (rows,)).astype(dtype)


def reduce(loss: np.ndarray, denominator: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        return loss
    total = loss.sum()
    return np.asarray(total / denominator.sum() if reduction == "mean" else total, loss.dtype)


# ---------------------------------------------------------------------------------------------
# One block of rows: loss and (optionally) gradient from one exp of the logits


def _log_sum_exp(x: np.ndarray, work: np.ndarray) -> np.ndarray:
    """Row log-sum-exp of ``x``; leaves ``exp(x - lse)``, the softmax, in ``work``."""
    m = np.max(x, axis=1, initial=-np.inf)
    m[~np.isfinite(m)] = 0  # a row of -inf (or containing +inf) shifts by 0, as torch's would NaN
    np.subtract(x, m[:, None], out=work)
    np.exp(work, out=work)
    total = np.dot(work, np.ones(x.shape[1], x.dtype))  # BLAS row sums: 3x NumPy's pairwise sum
    work /= total[:, None]
    return m + np.log(total)


def _block(kind, x, target, weight, scale, out_loss, out_grad, ignore_index, smoothing, gamma, out_lse=None):
    """Loss, gradient and log-sum-exp of a block of rows (each output None if not wanted).
    ``out_grad`` may be ``x`` itself (the linear + CE's chunk of logits): every read of ``x``
    comes before the softmax is written over it."""
    rows, classes = x.shape
    ones = np.ones(classes, x.dtype)
    w = ones if weight is None else weight
    if kind == "probs":
        q = target * (1 - smoothing) + smoothing / classes
        q *= w
        qx = np.einsum("rk,rk->r", q, x)
    else:
        valid, index = _valid_and_index(target, ignore_index)
        x_y = np.take_along_axis(x, index[:, None], 1)[:, 0]
        wx = np.dot(x, w) if kind == "index" and smoothing else None
    p = np.empty_like(x) if out_grad is None else out_grad
    lse = _log_sum_exp(x, p)
    if out_lse is not None:
        out_lse[...] = lse
    if kind == "probs":
        q_sum = np.dot(q, ones)
        loss = q_sum * lse - qx
        c_y = None
    else:
        w_y = np.where(valid, w[index], 0)
        if kind == "index":
            loss = np.where(valid, (1 - smoothing) * w_y * (lse - x_y), 0)  # ignored rows: 0 whatever x
            q_sum = (1 - smoothing) * w_y
            if smoothing:
                w_sum = w.sum()
                loss += np.where(valid, smoothing / classes * (w_sum * lse - wx), 0)
                q_sum += np.where(valid, smoothing / classes * w_sum, 0)
            c_y = (1 - smoothing) * w_y
        else:  # focal
            log_p = np.where(valid, x_y - lse, 0)
            one_minus = -np.expm1(log_p)  # 1 - p_y, exact for p_y near 1
            modulator = one_minus ** gamma if gamma else np.ones_like(one_minus)
            loss = -w_y * modulator * log_p
            # d loss / d log p_y; (1 - p)^(gamma - 1) p written as modulator * p / (1 - p), 0 at p = 1
            ratio = np.divide(np.exp(log_p), one_minus, out=np.zeros_like(one_minus), where=one_minus > 0)
            g = -w_y * (modulator - gamma * modulator * ratio * log_p)
            q_sum = c_y = -g
    if out_loss is not None:
        out_loss[...] = loss
    if out_grad is None:
        return
    out_grad *= (q_sum * scale)[:, None]
    if kind == "probs":
        out_grad -= q * scale[:, None]
        return
    np.subtract.at(out_grad, (np.arange(rows), index), c_y * scale)
    if kind == "index" and smoothing:
        out_grad -= np.where(valid, smoothing / classes * scale, 0)[:, None] * w


def _block_rows(x) -> int:
    return max(1, BLOCK_BYTES // max(1, x.shape[1] * x.itemsize))


def _piece(a, lo, hi):
    return None if a is None else a[lo:hi]


def _rows(kind, x, target, weight, scale, want_loss, want_grad, ignore_index, smoothing, gamma, grad_into=None,
          want_lse=False):
    """Per-row losses, the gradient (into ``grad_into`` when given: it may be ``x``) and the row
    log-sum-exps (each None unless wanted)."""
    rows = x.shape[0]
    loss = np.empty(rows, x.dtype) if want_loss else None
    grad = (np.empty_like(x) if grad_into is None else grad_into) if want_grad else None
    lse = np.empty(rows, x.dtype) if want_lse else None
    run([lambda lo=lo, hi=hi: _block(kind, x[lo:hi], target[lo:hi], weight, scale[lo:hi], _piece(loss, lo, hi),
                                     _piece(grad, lo, hi), ignore_index, smoothing, gamma, _piece(lse, lo, hi))
         for lo, hi in split(rows, _block_rows(x))])
    return loss, grad, lse


@loss_op(wide_results=(2,))
def cross_entropy_rows(input, target, weight, grad_output, *, kind: str, reduction: str, ignore_index: int = -100,
                       label_smoothing: float = 0.0, gamma: float = 0.0, compute_loss: bool = True,
                       compute_grad: bool = False, compute_logsumexp: bool = False):
    """(loss reduced as asked or None, gradient w.r.t. ``input`` or None, row log-sum-exp or
    None). ``kind`` is "index", "probs" or "focal" (``weight`` is then alpha); ``grad_output``
    None means ones."""
    rows = input.shape[0]
    denominator = denominators(kind, target, weight, ignore_index, input.dtype)
    scale = row_scales(grad_output, denominator, reduction, rows, input.dtype)
    loss, grad, lse = _rows(kind, input, target, weight, scale, compute_loss, compute_grad, ignore_index,
                            label_smoothing, gamma, want_lse=compute_logsumexp)
    return (None if loss is None else reduce(loss, denominator, reduction)), grad, lse


def _target_block(x, lse, weight, scale, smoothing, out):
    """``(1 - s) w_k (lse - x_k)`` times the row's scale, into ``out`` (which first holds the
    softmax ``_log_sum_exp`` leaves behind when ``lse`` must be made here)."""
    if lse is None:
        lse = _log_sum_exp(x, out)
    np.subtract(lse[:, None], x, out=out)
    out *= scale[:, None] * (1 - smoothing)
    if weight is not None:
        out *= weight


@loss_op
def cross_entropy_target_rows(input, logsumexp, weight, grad_output, *, reduction: str, label_smoothing: float = 0.0):
    """Gradient of the probability-target cross-entropy w.r.t. the target ``[R, C]``, from the
    logits and (when the forward kept it; None recomputes it) the row log-sum-exp."""
    rows = input.shape[0]
    scale = row_scales(grad_output, np.ones(rows, input.dtype), reduction, rows, input.dtype)  # "mean": over R
    lse = None if logsumexp is None else np.asarray(logsumexp, input.dtype)
    grad = np.empty_like(input)
    run([lambda lo=lo, hi=hi: _target_block(input[lo:hi], _piece(lse, lo, hi), weight, scale[lo:hi], label_smoothing,
                                            grad[lo:hi])
         for lo, hi in split(rows, _block_rows(input))])
    return grad


def _weight_block(x, target, lse, scale, smoothing, work):
    """A block's share of the class weights' gradient, ``sum_r g_r t'_rk (lse_r - x_rk)``, with
    ``work`` (the block's shape) as scratch; ``lse`` None: made here."""
    classes = x.shape[1]
    if lse is None:
        lse = _log_sum_exp(x, work)
    np.subtract(lse[:, None], x, out=work)
    smoothed = target * (1 - smoothing)
    smoothed += smoothing / classes
    work *= smoothed
    return scale @ work  # the rows' sum weighted by their scales, one BLAS call


@loss_op
def cross_entropy_weight_rows(input, target, logsumexp, grad_output, *, reduction: str,
                              label_smoothing: float = 0.0):
    """Gradient of the probability-target cross-entropy w.r.t. the class weights ``[C]``, from the
    logits, the targets ``[R, C]`` and (when the forward kept it; None recomputes it) the row
    log-sum-exp. The weights' values do not enter: the loss is linear in them."""
    rows, classes = input.shape
    scale = row_scales(grad_output, np.ones(rows, input.dtype), reduction, rows, input.dtype)  # "mean": over R
    lse = None if logsumexp is None else np.asarray(logsumexp, input.dtype)
    blocks = split(rows, _block_rows(input))
    partial = np.zeros((len(blocks), classes), input.dtype)

    def block(i, lo, hi):
        partial[i] = _weight_block(input[lo:hi], target[lo:hi], _piece(lse, lo, hi), scale[lo:hi], label_smoothing,
                                   np.empty_like(input[lo:hi]))

    run([lambda i=i, lo=lo, hi=hi: block(i, lo, hi) for i, (lo, hi) in enumerate(blocks)])
    return partial.sum(axis=0)  # block order fixed by the rows, not by which thread finished first


@loss_op
def nll_loss_rows(input, target, weight, grad_output, *, reduction: str, ignore_index: int = -100,
                  compute_loss: bool = True, compute_grad: bool = False):
    """``-w_y input[r, y]``: a gather forward, a scatter backward."""
    rows = input.shape[0]
    denominator = denominators("index", target, weight, ignore_index, input.dtype)
    valid, index = _valid_and_index(target, ignore_index)
    w_y = denominator  # w_y on rows that count, 0 on ignored ones
    loss = None
    if compute_loss:
        loss = reduce(-w_y * np.take_along_axis(input, index[:, None], 1)[:, 0], denominator, reduction)
    grad = None
    if compute_grad:
        scale = row_scales(grad_output, denominator, reduction, rows, input.dtype)
        grad = np.zeros_like(input)
        grad[np.arange(rows), index] = -w_y * scale
    return loss, grad


# ---------------------------------------------------------------------------------------------
# Linear + cross-entropy: logits a chunk of rows at a time


def chunk_rows(rows: int, vocab: int, itemsize: int, chunk_size: int | None, budget: int = LINEAR_CHUNK_BYTES) -> int:
    """Rows per chunk: ``chunk_size`` if given, else as many as keep a chunk's logits within
    ``budget`` bytes."""
    if chunk_size:
        return int(chunk_size)
    return max(1, min(rows, budget // max(1, vocab * itemsize)))


@loss_op
def linear_cross_entropy_rows(input, weight, target, bias, grad_output, *, reduction: str, ignore_index: int = -100,
                              label_smoothing: float = 0.0, compute_loss: bool = True, compute_grad: bool = False,
                              chunk_size: int | None = None):
    """``cross_entropy(input @ weight.T + bias, target)`` and the gradients for input, weight and
    bias, the ``[R, V]`` logits made ``chunk`` rows at a time and dropped after each chunk."""
    rows, vocab = input.shape[0], weight.shape[0]
    denominator = denominators("index", target, None, ignore_index, input.dtype)
    scale = row_scales(grad_output, denominator, reduction, rows, input.dtype)
    loss = np.empty(rows, input.dtype) if compute_loss else None
    grads = [np.empty_like(input), np.zeros_like(weight), None if bias is None else np.zeros_like(bias)]
    for lo, hi in split(rows, chunk_rows(rows, vocab, input.itemsize, chunk_size)):
        logits = matmul(input[lo:hi], weight.T)
        if bias is not None:
            logits += bias
        # the logit gradient replaces the chunk's logits (nothing else reads them)
        chunk_loss, dlogits, _ = _rows("index", logits, target[lo:hi], None, scale[lo:hi], compute_loss, compute_grad,
                                    ignore_index, label_smoothing, 0.0, grad_into=logits)
        del logits
        if compute_loss:
            loss[lo:hi] = chunk_loss
        if compute_grad:
            matmul(dlogits, weight, out=grads[0][lo:hi])
            grads[1] += matmul(dlogits.T, input[lo:hi])
            if bias is not None:
                grads[2] += dlogits.sum(axis=0)
    reduced = None if loss is None else reduce(loss, denominator, reduction)
    return (reduced, *grads) if compute_grad else (reduced, None, None, None)
