"""Softmax, log-softmax and masked softmax, forward and backward, in plain NumPy.

``dim`` is a non-negative axis here (the public op normalises it). The forward subtracts the
row maximum before exponentiating, so inputs around 1e4 neither overflow nor lose the answer.
Backward takes the forward's output ``y`` (ATen's ``_softmax_backward_data``):

* softmax:     dx = y * (dy - sum(dy * y))
* log_softmax: dx = dy - exp(y) * sum(dy)

Masked softmax treats masked positions as absent: they get probability 0, and a row with no
position kept (or whose kept entries are all -inf) is all zeros instead of 0/0 = NaN. Its
backward is the softmax backward: y = 0 at every masked position, so the gradient is 0 there
and over a fully masked row, whatever ``dy`` is.
"""

from __future__ import annotations

import numpy as np

from ._precision import reference_op


def _shifted(x: np.ndarray, dim: int) -> np.ndarray:
    """``x - max(x)`` along ``dim``. A row that is all -inf shifts by 0 instead of -inf (its
    -inf - -inf would be NaN before the caller decides what such a row means)."""
    m = np.max(x, axis=dim, keepdims=True, initial=-np.inf)  # initial: rows of length 0
    m[np.isneginf(m)] = 0
    return x - m


@reference_op
def softmax(x: np.ndarray, dim: int) -> np.ndarray:
    e = np.exp(_shifted(x, dim))
    # PyTorch's 0/0 = NaN for an all -inf row is kept: only masked_softmax promises zeros.
    return e / np.sum(e, axis=dim, keepdims=True)


@reference_op
def log_softmax(x: np.ndarray, dim: int) -> np.ndarray:
    z = _shifted(x, dim)
    return z - np.log(np.sum(np.exp(z), axis=dim, keepdims=True))


def keep_mask(shape: tuple[int, ...], mask: np.ndarray | None, lengths: np.ndarray | None, dim: int) -> np.ndarray:
    """Boolean array of ``shape``: True where masked_softmax keeps a position. ``mask`` is
    broadcast to ``shape``; ``lengths`` (``shape`` without ``dim``) keeps index j along ``dim``
    while ``j < lengths``. Both may be given: a position must pass both."""
    keep = np.ones(shape, dtype=bool)
    if mask is not None:
        keep &= np.broadcast_to(mask != 0, shape)  # != 0: float16 inputs arrive as float32
    if lengths is not None:
        index = np.arange(shape[dim]).reshape([-1 if a == dim else 1 for a in range(len(shape))])
        keep &= index < np.expand_dims(lengths, dim)
    return keep


@reference_op
def masked_softmax(x: np.ndarray, mask: np.ndarray | None, lengths: np.ndarray | None, dim: int) -> np.ndarray:
    keep = keep_mask(x.shape, mask, lengths, dim)
    e = np.exp(_shifted(np.where(keep, x, -np.inf), dim))
    total = np.sum(e, axis=dim, keepdims=True)
    # total is 0 exactly when nothing finite is kept: such a row is zeros, not 0/0
    return np.where(total > 0, e / np.where(total > 0, total, 1), 0).astype(x.dtype, copy=False)


@reference_op
def softmax_backward(grad_output: np.ndarray, output: np.ndarray, dim: int) -> np.ndarray:
    dot = np.sum(grad_output * output, axis=dim, keepdims=True)
    return output * (grad_output - dot)


@reference_op
def log_softmax_backward(grad_output: np.ndarray, output: np.ndarray, dim: int) -> np.ndarray:
    return grad_output - np.exp(output) * np.sum(grad_output, axis=dim, keepdims=True)
