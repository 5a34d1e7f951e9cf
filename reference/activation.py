"""Activations, forward and backward, in plain NumPy (formulas as PyTorch defines them).

Each op is a formula written into ``out`` with in-place ufuncs; ``elementwise`` applies it to
large arrays chunk by chunk on the thread pool. float64 is computed in float64; float32 (and the
float16 that ``reference_op`` widens) in float32, without float64 temporaries. The exact GELU's
normal CDF has a float32 path of its own (SciPy's ``ndtr`` works in double precision, an element
at a time).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from ._parallel import elementwise
from ._precision import reference_op

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_COEFF = 0.044715


# ---------------------------------------------------------------------------------------------
# Forward


def _sigmoid(x, out):
    # exp(-x) overflowing to inf for very negative x gives the right limit: 1 / inf = 0.
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    np.divide(1, out, out=out)  # (np.reciprocal is the slower loop)


def _relu(x, out):
    # np.clip keeps NaN (and -0.0) as torch.relu does, bit for bit, and with scalar bounds it is
    # NumPy's fastest one-pass select (np.maximum against a scalar is 3x slower, against an
    # array of zeros 20% slower: it reads a second array).
    np.clip(x, 0, np.inf, out=out)


def _leaky_relu(x, out, negative_slope):
    np.multiply(x, negative_slope, out=out)
    # For slopes in (0, 1] the larger of x and slope*x is the answer (the smaller for slopes
    # above 1), and np.maximum/np.minimum keep NaN: several times faster than np.where.
    if 0 < negative_slope <= 1:  # (a zero slope would turn +inf into inf * 0 = NaN)
        np.maximum(x, out, out=out)
    elif negative_slope > 1:
        np.minimum(x, out, out=out)
    else:
        np.copyto(out, np.where(x > 0, x, out))


@reference_op
def sigmoid(x: np.ndarray) -> np.ndarray:
    return elementwise(_sigmoid, x)


@reference_op
def tanh(x: np.ndarray) -> np.ndarray:
    return elementwise(np.tanh, x)


@reference_op
def relu(x: np.ndarray) -> np.ndarray:
    return elementwise(_relu, x)


@reference_op
def leaky_relu(x: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    return elementwise(lambda x, out: _leaky_relu(x, out, negative_slope), x)


# ---------------------------------------------------------------------------------------------
# The normal CDF Phi in float32
#
# By symmetry Phi(x) = 1 - Phi(-x), so everything follows from the lower tail Phi(-a), a = |x|:
#
#     Phi(-a) = exp(-a^2 / 2) * R(a),   R(a) = Phi(-a) exp(a^2 / 2) = erfcx(a / sqrt 2) / 2,
#
# a smooth function falling from 1/2 at 0 like 1 / (a sqrt(2 pi)). R is a rational function
# P(a) / Q(a) of degrees 4 and 5: a minimax fit of the relative error (Lawson's reweighted least
# squares on [0, 15]; 1.1e-8 in exact arithmetic). It is evaluated as the same function written
# as a continued fraction (Euclid's algorithm on Q and P, every partial denominator monic and
# linear):
#
#     R(a) = k0 / (a + b0 + k1 / (a + b1 + k2 / (a + b2 + k3 / (a + b3 + k4 / (a + b4)))))
#
# 14 array passes where Horner's P and Q and their quotient take 18 (the exact GELU spends most
# of its time here), and more accurate in float32: 3.4 ulp at most against SciPy's erfcx on 3e7
# points of [0, 15], where Horner's form reaches 4.2 (the sums' rounding included). Each partial
# denominator stays above 0.79 in magnitude on [0, 15]: no pole anywhere a can be. Beyond a = 15
# the factor exp(-a^2/2) is 0 in float32, so a is clamped there. Nothing is subtracted from 1 on the way: Phi(x) keeps full
# relative precision deep in the lower tail, where 0.5 (1 + erf(x / sqrt 2)) is all cancellation.

_TAIL_K = (0.3989451, 0.98522705, 5.591276, -7.7476473, 63.76635)  # k0 .. k4
_TAIL_B = (0.0004823151, -0.27679148, 6.2901106, -4.6770306, 8.3192)  # b0 .. b4
_TAIL_CLAMP = 15.0
_EXACT_SQUARE_FROM = 4.0


def _tail_ratio(a, out):
    """R(a) for float32 ``a`` in [0, 15], the continued fraction evaluated from the inside out."""
    np.add(a, _TAIL_B[-1], out=out)
    for k, b in zip(_TAIL_K[:0:-1], _TAIL_B[-2::-1]):
        np.divide(k, out, out=out)
        out += a
        out += b
    np.divide(_TAIL_K[0], out, out=out)


def _exp_minus_half_square(a, out):
    """``exp(-a^2 / 2)`` for float32 ``a >= 0``, to float32 precision.

    Rounding a*a to float32 changes it by up to a^2 2^-24, which exp turns into a relative error
    of (a^2 / 2) 2^-24: some tens of ulp in the tail. Where that exceeds a few ulp (a > 4, rare
    in practice) a is split as h + l, h holding 12 significant bits so that h*h is exact, and
    exp(-a^2/2) = exp(-h^2/2) exp(-l (a + h) / 2).
    """
    np.multiply(a, a, out=out)
    out *= -0.5
    np.exp(out, out=out)
    far = a > _EXACT_SQUARE_FROM  # a boolean mask: indexes arrays of any rank
    if far.any():
        b = a[far]
        h = (b.view(np.uint32) & np.uint32(0xFFFFF000)).view(np.float32)
        out[far] = np.exp(-0.5 * (h * h)) * np.exp(-0.5 * ((b - h) * (b + h)))


def _gelu_float32(x, out):
    """x Phi(x) = relu(x) - |x| Phi(-|x|): the second term is x Phi(x) for x < 0 and
    -x (1 - Phi(x)) for x > 0."""
    a = np.abs(x)
    np.add(x, a, out=out)
    out *= 0.5  # relu(x) = (x + |x|) / 2 (NaN for x = -inf, as x Phi(x) is in float64)
    np.clip(a, 0, _TAIL_CLAMP, out=a)  # (clip with scalar bounds: faster than np.minimum)
    tail = np.empty_like(a)
    _exp_minus_half_square(a, tail)
    ratio = np.empty_like(a)
    _tail_ratio(a, ratio)
    tail *= ratio
    tail *= a
    out -= tail


def _gelu_backward_float32(grad_output, x, out):
    """d/dx [x Phi(x)] = Phi(x) + x phi(x). On the negative side it is W(a) = Phi(-a) - a phi(a)
    = exp(-a^2/2) (R(a) - a / sqrt(2 pi)) with a = -x, and gelu'(x) + gelu'(-x) = 1 gives the
    positive side: gelu'(x) = W(|x|) + [x > 0] (1 - 2 W(|x|))."""
    a = np.abs(x)
    clamped = np.clip(a, 0, _TAIL_CLAMP)
    w = np.empty_like(a)
    _tail_ratio(clamped, w)
    a *= INV_SQRT_2PI
    w -= a  # a unclamped: W(inf) = 0 * (R - inf) = NaN, as Phi(x) + x phi(x) is in float64
    _exp_minus_half_square(clamped, a)
    w *= a
    positive = np.greater(x, 0)
    np.multiply(w, -2.0, out=out)
    out += 1
    out *= positive
    out += w
    out *= grad_output


def _gelu_float64(x, out):
    np.multiply(x, ndtr(x), out=out)  # ndtr is Phi itself; 0.5 (1 + erf(x/sqrt 2)) cancels for x < 0


def _gelu_backward_float64(grad_output, x, out):
    pdf = np.multiply(x, x)
    pdf *= -0.5
    np.exp(pdf, out=pdf)
    pdf *= INV_SQRT_2PI
    pdf *= x
    pdf += ndtr(x)
    np.multiply(grad_output, pdf, out=out)


def _gelu_tanh(x, out):
    """0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), written as x sigmoid(2u)
    = x / (1 + exp(-2u)): the same number without the cancellation of 1 + tanh(u) for u < 0."""
    np.multiply(x, x, out=out)
    out *= -2 * SQRT_2_OVER_PI * GELU_TANH_COEFF
    out -= 2 * SQRT_2_OVER_PI
    out *= x  # -2u
    np.exp(out, out=out)
    out += 1
    np.divide(x, out, out=out)


def _gelu_tanh_backward(grad_output, x, out):
    """d/dx [x s] with s = sigmoid(2u) = 1 / (1 + exp(-2u)): s + 2 x s (1 - s) du/dx."""
    x2 = np.multiply(x, x)
    e = np.multiply(x2, -2 * SQRT_2_OVER_PI * GELU_TANH_COEFF)
    e -= 2 * SQRT_2_OVER_PI
    e *= x
    np.exp(e, out=e)  # exp(-2u)
    s = np.add(e, 1)
    np.reciprocal(s, out=s)
    np.subtract(1, s, out=e)
    e *= s
    e *= x
    x2 *= 6 * SQRT_2_OVER_PI * GELU_TANH_COEFF  # 2 du/dx = 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    x2 += 2 * SQRT_2_OVER_PI
    e *= x2
    e += s
    np.multiply(grad_output, e, out=out)


@reference_op
def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    if approximate == "tanh":
        return elementwise(_gelu_tanh, x)
    return elementwise(_gelu_float32 if x.dtype == np.float32 else _gelu_float64, x)


# ---------------------------------------------------------------------------------------------
# Backward


def _sigmoid_backward(grad_output, y, out):
    np.subtract(1, y, out=out)
    out *= y
    out *= grad_output


def _tanh_backward(grad_output, y, out):
    np.subtract(1, y, out=out)
    out *= 1 + y  # (1 - y)(1 + y): 1 - y*y cancels near |y| = 1
    out *= grad_output


def _relu_backward(grad_output, x, out):
    """ATen's threshold_backward: 0 where x <= 0 (so a NaN input lets the gradient through),
    the gradient elsewhere, inf and NaN gradients included. A select, done on the bits: the
    gradient's bits ANDed with all ones (keep) or all zeros (0.0): a multiply by 0/1 would turn
    inf * 0 into NaN, and np.where on a random mask is several times slower.
    The comparison is written straight into the output as integers (no bool temporary to widen).
    ``x <= 0`` rather than ``x > 0``: a NaN x must keep the gradient, and NaN compares false."""
    bits = out.view(np.dtype(f"i{out.itemsize}"))
    np.less_equal(x, 0, out=bits)  # 1 where the gradient is dropped, 0 where it is kept
    bits -= 1  # 0 (drop) or all ones (keep)
    bits &= grad_output.view(bits.dtype)


def _leaky_relu_backward(grad_output, x, out, negative_slope):
    # grad * (1 if x > 0 else slope) = grad * (slope + (1 - slope) [x > 0]); NaN x takes the slope
    np.greater(x, 0, out=out)  # [x > 0] as 0.0 / 1.0, written as floats (no bool temporary)
    out *= 1.0 - negative_slope
    out += negative_slope
    out *= grad_output


@reference_op
def sigmoid_backward(grad_output: np.ndarray, output: np.ndarray) -> np.ndarray:
    return elementwise(_sigmoid_backward, grad_output, output)


@reference_op
def tanh_backward(grad_output: np.ndarray, output: np.ndarray) -> np.ndarray:
    return elementwise(_tanh_backward, grad_output, output)


@reference_op
def relu_backward(grad_output: np.ndarray, x: np.ndarray) -> np.ndarray:
    return elementwise(_relu_backward, grad_output, x)


@reference_op
def leaky_relu_backward(grad_output: np.ndarray, x: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    return elementwise(lambda g, x, out: _leaky_relu_backward(g, x, out, negative_slope), grad_output, x)


@reference_op
def gelu_backward(grad_output: np.ndarray, x: np.ndarray, approximate: str = "none") -> np.ndarray:
    if approximate == "tanh":
        return elementwise(_gelu_tanh_backward, grad_output, x)
    exact = _gelu_backward_float32 if x.dtype == np.float32 else _gelu_backward_float64
    return elementwise(exact, grad_output, x)


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x), the standard normal CDF: SciPy's ndtr in float64, the float32 path for float32
    (what the exact GELU uses; exposed so its accuracy can be checked against float64)."""
    if x.dtype != np.float32:
        return ndtr(x)
    with np.errstate(all="ignore"):
        a = np.minimum(np.abs(x), _TAIL_CLAMP)
        lower = np.empty_like(a)
        _exp_minus_half_square(a, lower)
        ratio = np.empty_like(a)
        _tail_ratio(a, ratio)
        lower *= ratio  # Phi(-|x|)
        return np.where(x > 0, 1 - lower, lower)


# The dispatch layer calls one forward and one backward per family, the activation by name.
_FORWARD = {
    "sigmoid": lambda x, slope: sigmoid(x),
    "tanh": lambda x, slope: tanh(x),
    "relu": lambda x, slope: relu(x),
    "leaky_relu": leaky_relu,
    "gelu": lambda x, slope: gelu(x, "none"),
    "gelu_tanh": lambda x, slope: gelu(x, "tanh"),
}
_BACKWARD = {
    "sigmoid": lambda g, y, slope: sigmoid_backward(g, y),
    "tanh": lambda g, y, slope: tanh_backward(g, y),
    "relu": lambda g, x, slope: relu_backward(g, x),
    "leaky_relu": leaky_relu_backward,
    "gelu": lambda g, x, slope: gelu_backward(g, x, "none"),
    "gelu_tanh": lambda g, x, slope: gelu_backward(g, x, "tanh"),
}


def forward(x: np.ndarray, act: str, negative_slope: float = 0.0) -> np.ndarray:
    return _FORWARD[act](x, negative_slope)


def backward(grad_output: np.ndarray, saved: np.ndarray, act: str, negative_slope: float = 0.0) -> np.ndarray:
    return _BACKWARD[act](grad_output, saved, negative_slope)
