"""Elementwise losses, forward and backward, in plain NumPy: MSE, L1, Huber, SmoothL1, binary
cross-entropy (on probabilities and on logits) and torchvision's sigmoid focal loss.

Every loss is ``l(x, t)`` per element (times ``weight`` where the loss takes one), then a
reduction: ``"none"`` (the per-element losses), ``"sum"`` or ``"mean"`` (the sum over the
element count; NaN for an empty input, as in PyTorch). The formulas are PyTorch's:

* mse:         (x - t)^2
* l1:          |x - t|
* huber:       0.5 d^2 if |d| < delta else delta (|d| - 0.5 delta),      d = x - t
* smooth_l1:   0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta        (beta = 0 is l1: the ops
               layer sends it there, as torch.nn.functional does)
* bce:         -w (t max(log x, -100) + (1 - t) max(log(1 - x), -100))
* bce_logits:  w ((1 - t) x + (1 + (pw - 1) t) softplus(-x))            (pw: pos_weight)
* focal:       alpha_t ce (1 - p_t)^gamma, p = sigmoid(x), ce = softplus(x) - t x,
               p_t = p t + (1 - p)(1 - t), alpha_t = alpha t + (1 - alpha)(1 - t) (1 when alpha < 0)

Backward returns the gradient of the reduced loss for the input and/or the target (``need``:
"input", "target" or "both"), ``grad_output`` being a 0-d array for "mean"/"sum". The weights
(``weight``, ``pos_weight``) are constants, as in PyTorch, which does not differentiate them.

``p1`` is the loss's first parameter (delta, beta or alpha), ``p2`` its second (gamma).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ._parallel import PARALLEL_MIN_BYTES, _items_per_chunk, run, split
from ._precision import reference_op

LOSSES = ("mse", "l1", "huber", "smooth_l1", "bce", "bce_logits", "focal")
BCE_LOG_FLOOR = -100.0  # torch clamps each log of binary_cross_entropy here (log 0 = -inf otherwise)
BCE_EPSILON = 1e-12  # ATen's floor for x (1 - x) in the BCE gradient


def _softplus(x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _sigmoid_pair(x):
    """(sigmoid(x), 1 - sigmoid(x)), each without cancellation."""
    return expit(x), expit(-x)


def _focal_terms(x, t, alpha, gamma):
    """(alpha_t, ce, m = 1 - p_t, m^gamma, p, 1 - p) of the focal loss."""
    p, q = _sigmoid_pair(x)
    ce = _softplus(x) - t * x
    m = p * (1 - t) + q * t  # 1 - p_t as a sum of non-negative terms (no 1 - p_t cancellation)
    alpha_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else np.ones_like(x)
    return alpha_t, ce, m, m ** gamma, p, q


def _pow_derivative(m, gamma):
    """d(m^gamma)/dm = gamma m^(gamma - 1), 0 when gamma = 0 (as torch's pow backward)."""
    if gamma == 0:
        return np.zeros_like(m)
    return gamma * m ** (gamma - 1)


def elementwise_loss(loss, x, t, w, pw, p1, p2):
    """The per-element loss (``w``/``pw`` arrays of x's shape, or None)."""
    d = x - t
    if loss == "mse":
        out = d * d
    elif loss == "l1":
        out = np.abs(d)
    elif loss == "huber":
        a = np.abs(d)
        out = np.where(a < p1, 0.5 * d * d, p1 * (a - 0.5 * p1))
    elif loss == "smooth_l1":
        a = np.abs(d)
        out = np.where(a < p1, 0.5 * d * d / p1, a - 0.5 * p1)
    elif loss == "bce":
        log_x = np.maximum(np.log(x), BCE_LOG_FLOOR)
        log_1mx = np.maximum(np.log1p(-x), BCE_LOG_FLOOR)
        out = -(t * log_x + (1 - t) * log_1mx)
    elif loss == "bce_logits":
        log_weight = 1 if pw is None else 1 + (pw - 1) * t
        out = (1 - t) * x + log_weight * _softplus(-x)
    elif loss == "focal":
        alpha_t, ce, _, m_gamma, _, _ = _focal_terms(x, t, p1, p2)
        out = alpha_t * ce * m_gamma
    else:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return out if w is None else out * w


def elementwise_grads(loss, x, t, w, pw, p1, p2):
    """(d loss / dx, d loss / dt) per element, for a unit upstream gradient."""
    d = x - t
    if loss == "mse":
        dx = 2 * d
        dt = -dx
    elif loss == "l1":
        dx = np.sign(d)
        dt = -dx
    elif loss == "huber":
        dx = np.clip(d, -p1, p1)  # d inside [-delta, delta], +-delta outside; NaN stays NaN
        dt = -dx
    elif loss == "smooth_l1":
        dx = np.where(d < -p1, -1.0, np.where(d > p1, 1.0, d / p1)).astype(x.dtype)
        dt = -dx
    elif loss == "bce":
        dx = (x - t) / np.maximum((1 - x) * x, BCE_EPSILON)
        dt = np.log1p(-x) - np.log(x)  # -logit(x)
    elif loss == "bce_logits":
        p, _ = _sigmoid_pair(x)
        if pw is None:
            dx = p - t
            dt = -x
        else:
            dx = p * (1 + (pw - 1) * t) - pw * t
            dt = pw * _softplus(-x) - _softplus(x)
    elif loss == "focal":
        alpha, gamma = p1, p2
        alpha_t, ce, m, m_gamma, p, q = _focal_terms(x, t, alpha, gamma)
        dm = _pow_derivative(m, gamma)
        dx = alpha_t * ((p - t) * m_gamma + ce * dm * p * q * (1 - 2 * t))
        dt = alpha_t * (-x * m_gamma + ce * dm * (1 - 2 * p))
        if alpha >= 0:
            dt = dt + (2 * alpha - 1) * ce * m_gamma
    else:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if w is not None:
        dx, dt = dx * w, dt * w
    return dx, dt


def _full(a, shape, dtype):
    return None if a is None else np.ascontiguousarray(np.broadcast_to(a, shape), dtype=dtype)


def _operands(input, target, weight, pos_weight):
    """The four operands as contiguous arrays of input's shape (weights broadcast), or None."""
    shape, dtype = input.shape, input.dtype
    return [np.ascontiguousarray(input), np.ascontiguousarray(target, dtype=dtype), _full(weight, shape, dtype),
            _full(pos_weight, shape, dtype)]


def _on_chunks(formula, arrays, n_out=1):
    """``formula(*arrays)`` (an array, or a tuple of ``n_out``) for arrays of one shape (None
    entries passed through), computed a chunk of elements at a time on the thread pool for large
    inputs: the formula's temporaries stay in cache and the chunks run in parallel."""
    first = arrays[0]
    outs = tuple(np.empty(first.shape, first.dtype) for _ in range(n_out))
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    flat_outs = [o.reshape(-1) for o in outs]

    def chunk(lo, hi):
        results = formula(*(None if a is None else a[lo:hi] for a in flat))
        for out, result in zip(flat_outs, results if n_out > 1 else (results,)):
            out[lo:hi] = result

    if first.size * first.itemsize < PARALLEL_MIN_BYTES:
        chunk(0, first.size)
    else:
        step = _items_per_chunk(first.size, first.itemsize)
        run([lambda lo=lo, hi=hi: chunk(lo, hi) for lo, hi in split(first.size, step)])
    return outs if n_out > 1 else outs[0]


def _reduce(values, reduction):
    if reduction == "none":
        return values
    total = np.sum(values, dtype=values.dtype)
    if reduction == "sum":
        return np.asarray(total)
    return np.asarray(total / values.dtype.type(values.size) if values.size else np.nan, dtype=values.dtype)


@reference_op
def loss_forward(input: np.ndarray, target: np.ndarray, weight, pos_weight, *, loss: str, reduction: str,
                 p1: float = 0.0, p2: float = 0.0) -> np.ndarray:
    arrays = _operands(input, target, weight, pos_weight)
    values = _on_chunks(lambda x, t, w, pw: elementwise_loss(loss, x, t, w, pw, p1, p2), arrays)
    return _reduce(values, reduction)


@reference_op
def loss_backward(grad_output: np.ndarray, input: np.ndarray, target: np.ndarray, weight, pos_weight, *,
                  loss: str, reduction: str, p1: float = 0.0, p2: float = 0.0, need: str = "input"):
    """The gradient for the input ("input"), the target ("target") or both, as a tuple ("both")."""
    arrays = _operands(input, target, weight, pos_weight)
    dtype = input.dtype
    if reduction == "none":
        upstream = np.ascontiguousarray(np.broadcast_to(grad_output, input.shape), dtype=dtype)
    else:  # the reduced loss's scalar gradient, spread over the elements (1/n for the mean)
        scale = grad_output.astype(dtype) / (dtype.type(input.size) if reduction == "mean" else 1)
        upstream = np.broadcast_to(scale, input.shape)
    arrays.append(np.ascontiguousarray(upstream))

    def grads(x, t, w, pw, g):
        dx, dt = elementwise_grads(loss, x, t, w, pw, p1, p2)
        return dx * g, dt * g

    dx, dt = _on_chunks(grads, arrays, n_out=2)
    return {"input": dx, "target": dt, "both": (dx, dt)}[need]
