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

from ._parallel import PARALLEL_MIN_BYTES, _items_per_chunk, filled_like, run, split
from ._precision import reference_op

LOSSES = ("mse", "l1", "huber", "smooth_l1", "bce", "bce_logits", "focal")
BCE_LOG_FLOOR = -100.0  # torch clamps each log of binary_cross_entropy here (log 0 = -inf otherwise)
# ATen's floor for x (1 - x) in the BCE gradient: 1e-12 as a float32 constant (ATen's is one)
BCE_EPSILON = float(np.float32(1e-12))


def _softplus(x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return np.maximum(x, filled_like(x, 0)) + np.log1p(np.exp(-np.abs(x)))


def _select(positive, a, b):
    """a where ``positive`` (a 0/1 float array) is 1, b where it is 0: a * positive + b * (1 -
    positive), exact for finite a and b (the other term adds 0). np.where on a random mask costs
    as much as twenty arithmetic passes (branch mispredictions)."""
    return a * positive + b * (1 - positive)


def _sigmoid(x):
    """1 / (1 + exp(-x)); exp overflowing to inf for very negative x gives the limit 0. (SciPy's
    expit is several times slower on float32.)"""
    out = np.negative(x)
    np.exp(out, out=out)
    out += 1
    return np.divide(1, out, out=out)


def _sigmoid_pair(x):
    """(sigmoid(x), 1 - sigmoid(x)), each without cancellation: with e = exp(-|x|), the larger
    is 1 / (1 + e), the smaller e / (1 + e)."""
    e = np.exp(-np.abs(x))
    big = 1 / (1 + e)
    small = e * big
    positive = (x >= 0).astype(x.dtype)
    return _select(positive, big, small), _select(positive, small, big)


def _bce_logits(x, t, pw):
    """(1 - t) x + (1 + (pw - 1) t) softplus(-x), written as a sum of terms >= 0 for t in [0, 1]
    (the kernels' form; the plain one cancels for x < 0): (1 - t) x where x >= 0, pw t |x| where
    x < 0, plus (1 + (pw - 1) t) log1p(exp(-|x|)). The first two as (1 - t) max(x, 0) + pw t
    max(-x, 0): one of the two maxima is 0, no select needed."""
    pw_t = t if pw is None else pw * t
    log_weight = 1 if pw is None else 1 + (pw - 1) * t
    positive_part = np.maximum(x, filled_like(x, 0))
    negative_part = positive_part - x  # max(-x, 0), exactly
    linear = (1 - t) * positive_part
    linear += pw_t * negative_part
    softplus_tail = np.abs(x)
    np.negative(softplus_tail, out=softplus_tail)
    np.exp(softplus_tail, out=softplus_tail)
    np.log1p(softplus_tail, out=softplus_tail)
    if pw is not None:
        softplus_tail *= log_weight
    linear += softplus_tail
    return linear


def _focal_terms(x, t, alpha, gamma):
    """(alpha_t, ce, m = 1 - p_t, m^gamma, p, 1 - p) of the focal loss."""
    p, q = _sigmoid_pair(x)
    ce = _bce_logits(x, t, None)
    m = p * (1 - t) + q * t  # 1 - p_t as a sum of non-negative terms (no 1 - p_t cancellation)
    alpha_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else np.ones_like(x)
    return alpha_t, ce, m, m ** gamma, p, q


def _pow_derivative(m, gamma):
    """d(m^gamma)/dm = gamma m^(gamma - 1), 0 when gamma = 0 (as torch's pow backward)."""
    if gamma == 0:
        return np.zeros_like(m)
    return gamma * m ** (gamma - 1)


def loss_factors(loss, x, t, pw, p1, p2):
    """The per-element loss before ``weight`` as ``factor_scale(loss, p1) * a * b`` (``b`` None
    where it is that times ``a``): a reduction sums a product in one pass
    (:func:`_sum_of_products`), cheaper than a multiply and then a sum, and scales the sum."""
    if loss in ("mse", "huber", "smooth_l1"):
        d = x - t
        if loss == "mse":
            return d, d
        # c = clip(d, -delta, delta) (the gradient): c (d - c / 2) is d^2 / 2 inside and
        # delta (|d| - delta / 2) outside (c and d share their sign), without a select (NaN
        # stays NaN); as 2 (c / 2) (d - c / 2), halving c in place. Smooth L1 is Huber / beta.
        half_c = np.clip(d, -p1, p1)
        half_c *= 0.5
        d -= half_c
        return half_c, d
    return _elementwise_loss(loss, x, t, pw, p1, p2), None


def factor_scale(loss, p1):
    """The constant factor of :func:`loss_factors`' product (1 for most losses)."""
    return {"huber": 2, "smooth_l1": 2 / p1 if p1 else 1}.get(loss, 1)


def elementwise_loss(loss, x, t, w, pw, p1, p2):
    """The per-element loss (``w``/``pw`` arrays of x's shape, or None)."""
    a, b = loss_factors(loss, x, t, pw, p1, p2)
    out = a if b is None else np.multiply(a, b, out=b)
    scale = factor_scale(loss, p1)
    if scale != 1:
        out *= scale
    return out if w is None else np.multiply(out, w, out=out)


def _elementwise_loss(loss, x, t, pw, p1, p2):
    """The losses that are no product, before ``weight``."""
    d = x - t
    if loss == "l1":
        out = np.abs(d)
    elif loss == "bce":
        floor = filled_like(x, BCE_LOG_FLOOR)
        log_x = np.maximum(np.log(x), floor)
        log_1mx = np.maximum(np.log1p(-x), floor)
        out = -(t * log_x + (1 - t) * log_1mx)
    elif loss == "bce_logits":
        out = _bce_logits(x, t, pw)
    elif loss == "focal":
        alpha_t, ce, _, m_gamma, _, _ = _focal_terms(x, t, p1, p2)
        out = alpha_t * ce * m_gamma
    else:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return out


DIFFERENCE_LOSSES = ("mse", "l1", "huber", "smooth_l1")  # functions of d = x - t alone, no weights


def _difference_gradient(loss, x, t, p1, g, out, sign=1):
    """``sign * g * d loss / d input`` for the losses of d = x - t, written into ``out`` in place:
    d, its clip or sign, then the upstream gradient ``g``, without a temporary per step. The exact
    constant factors (mse's 2, the target's -1) ride on a 0-d ``g``: mse's gradient is then two
    passes over memory, (x - t) and one multiply."""
    d = np.subtract(x, t, out=out)
    if loss == "l1":
        np.sign(d, out=d)
    elif loss in ("huber", "smooth_l1"):
        np.clip(d, -p1, p1, out=d)  # d inside [-delta, delta], +-delta outside; NaN stays NaN
        if loss == "smooth_l1":
            d /= p1
    factor = sign * (2 if loss == "mse" else 1)
    if g.ndim == 0:
        d *= g * factor
        return d
    if factor != 1:
        d *= factor
    d *= g
    return d


def grad_input(loss, x, t, w, pw, p1, p2):
    """d loss / d input per element, for a unit upstream gradient."""
    if loss in DIFFERENCE_LOSSES:
        return _difference_gradient(loss, x, t, p1, np.ones((), x.dtype), np.empty_like(x))
    if loss == "bce":
        g = (x - t) / np.maximum((1 - x) * x, filled_like(x, BCE_EPSILON))
    elif loss == "bce_logits":
        p = _sigmoid(x)
        g = p - t if pw is None else p * (1 + (pw - 1) * t) - pw * t
    elif loss == "focal":
        alpha_t, ce, m, m_gamma, p, q = _focal_terms(x, t, p1, p2)
        g = alpha_t * ((p - t) * m_gamma + ce * _pow_derivative(m, p2) * p * q * (1 - 2 * t))
    else:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return g if w is None else g * w


def grad_target(loss, x, t, w, pw, p1, p2):
    """d loss / d target per element, for a unit upstream gradient."""
    if loss in DIFFERENCE_LOSSES:
        return _difference_gradient(loss, x, t, p1, np.ones((), x.dtype), np.empty_like(x), sign=-1)
    if loss == "bce":
        g = np.log1p(-x) - np.log(x)  # -logit(x)
    elif loss == "bce_logits":
        g = -x if pw is None else pw * _softplus(-x) - _softplus(x)
    elif loss == "focal":
        alpha, gamma = p1, p2
        alpha_t, ce, m, m_gamma, p, q = _focal_terms(x, t, alpha, gamma)
        g = alpha_t * (-x * m_gamma + ce * _pow_derivative(m, gamma) * (1 - 2 * p))
        if alpha >= 0:  # alpha_t depends on t too
            g += (2 * alpha - 1) * ce * m_gamma
    else:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return g if w is None else g * w


def _full(a, shape, dtype):
    """``a`` broadcast to ``shape``, contiguous (np.ascontiguousarray makes a 0-d array 1-d: the
    reshape keeps it 0-d); None stays None."""
    return None if a is None else np.ascontiguousarray(np.broadcast_to(a, shape), dtype=dtype).reshape(shape)


def _operands(input, target, weight, pos_weight):
    """The four operands as contiguous arrays of input's shape (weights broadcast), or None."""
    shape, dtype = input.shape, input.dtype
    return [_full(input, shape, dtype), _full(target, shape, dtype), _full(weight, shape, dtype),
            _full(pos_weight, shape, dtype)]


def _chunks(first):
    """[lo, hi) ranges of the flattened arrays: one for small inputs, else chunks whose bounds
    depend on the size alone (never on the thread count, so neither do the results)."""
    if first.size * first.itemsize < PARALLEL_MIN_BYTES:
        return [(0, first.size)]
    return split(first.size, _items_per_chunk(first.size, first.itemsize))


def _on_chunks(formula, arrays, n_out=1):
    """``n_out`` arrays of the arrays' shape, filled by ``formula(*arrays, outs=...)`` for arrays
    of one shape (None entries passed through), a chunk of elements at a time on the thread pool
    for large inputs: the formula's temporaries stay in cache and the chunks run in parallel."""
    first = arrays[0]
    outs = tuple(np.empty(first.shape, first.dtype) for _ in range(n_out))
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    flat_outs = [o.reshape(-1) for o in outs]

    def chunk(lo, hi):
        formula(*(None if a is None else a[lo:hi] for a in flat), outs=[o[lo:hi] for o in flat_outs])

    run([lambda lo=lo, hi=hi: chunk(lo, hi) for lo, hi in _chunks(first)])
    return outs


SUM_COLUMNS = 4096  # a chunk's sum: columns of this many elements, each summed down its rows


def _sum_of_products(a, b, w):
    """The sum of ``a * b * w`` over one chunk (``b``, ``w`` None for 1). The elements as rows
    of SUM_COLUMNS: each column summed down the rows (einsum's sum of products where there is a
    product: a multiply and a sum in one pass, twice as fast as np.multiply then np.sum; a
    vectorised add across columns where there is not), then the columns pairwise by np.sum, the
    elements past the last full row after. The order depends on the chunk's length alone."""
    if w is not None:
        b = w if b is None else b * w
    full = a.size - a.size % SUM_COLUMNS
    rows = a[:full].reshape(-1, SUM_COLUMNS)
    if b is None:
        columns, rest = np.sum(rows, axis=0), np.sum(a[full:])
    else:
        columns = np.einsum("ij,ij->j", rows, b[:full].reshape(-1, SUM_COLUMNS))
        rest = np.sum(a[full:] * b[full:])
    return np.sum(columns, dtype=a.dtype) + rest


def _sum_on_chunks(formula, arrays):
    """The sum of ``formula(*arrays)`` (a product, as :func:`_sum_of_products` takes it) over all
    elements, without storing the values: each chunk summed while in cache, then the chunk sums
    in chunk order (one chunk for small inputs)."""
    first = arrays[0]
    flat = [None if a is None else a.reshape(-1) for a in arrays]
    bounds = _chunks(first)
    sums = np.empty(len(bounds), first.dtype)

    def chunk(k, lo, hi):
        sums[k] = _sum_of_products(*formula(*(None if a is None else a[lo:hi] for a in flat)))

    run([lambda k=k, lo=lo, hi=hi: chunk(k, lo, hi) for k, (lo, hi) in enumerate(bounds)])
    return np.sum(sums, dtype=first.dtype)


def _reduce(total, size, dtype, reduction):
    """The "sum" or "mean" of ``size`` values summing to ``total``, as a 0-d array."""
    if reduction == "sum":
        return np.asarray(total, dtype=dtype)
    return np.asarray(total / dtype.type(size) if size else np.nan, dtype=dtype)


@reference_op
def loss_forward(input: np.ndarray, target: np.ndarray, weight, pos_weight, *, loss: str, reduction: str,
                 p1: float = 0.0, p2: float = 0.0) -> np.ndarray:
    arrays = _operands(input, target, weight, pos_weight)
    if reduction == "none":
        def fill(x, t, w, pw, outs):
            outs[0][...] = elementwise_loss(loss, x, t, w, pw, p1, p2)

        return _on_chunks(fill, arrays)[0]

    def factors(x, t, w, pw):
        return (*loss_factors(loss, x, t, pw, p1, p2), w)

    total = _sum_on_chunks(factors, arrays) * input.dtype.type(factor_scale(loss, p1))
    return _reduce(total, input.size, input.dtype, reduction)


@reference_op
def loss_backward(grad_output: np.ndarray, input: np.ndarray, target: np.ndarray, weight, pos_weight, *,
                  loss: str, reduction: str, p1: float = 0.0, p2: float = 0.0, need: str = "input"):
    """The gradient for the input ("input"), the target ("target") or both, as a tuple ("both")."""
    arrays = _operands(input, target, weight, pos_weight)
    dtype = input.dtype
    if reduction == "none":
        arrays.append(_full(grad_output, input.shape, dtype))
        scale = None
    else:  # the reduced loss's scalar gradient, the same for every element (1/n for the mean)
        scale = grad_output.astype(dtype) / (dtype.type(input.size) if reduction == "mean" else 1)
    wanted = ("input", "target") if need == "both" else (need,)

    formulas = {"input": grad_input, "target": grad_target}

    def grads(x, t, w, pw, g=None, *, outs):
        g = scale if g is None else g
        for k, out in zip(wanted, outs, strict=True):
            if loss in DIFFERENCE_LOSSES:
                _difference_gradient(loss, x, t, p1, g, out, sign=-1 if k == "target" else 1)
            else:
                np.multiply(formulas[k](loss, x, t, w, pw, p1, p2), g, out=out)

    results = _on_chunks(grads, arrays, n_out=len(wanted))
    return results if need == "both" else results[0]
