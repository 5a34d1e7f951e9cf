"""The dense layer y = act(x W^T + b), forward and backward, in plain NumPy.

Shapes: ``input`` (M, K), ``weight`` (N, K) as torch.nn.Linear holds it, ``bias`` (N,) or None;
the public op flattens leading dimensions to M. The activation math is the activation family's
(``reference/activation.py``), applied to the pre-activation z = x W^T + b.

What the backward needs besides the inputs ("saved", see ``saved_kind``):

* no activation: nothing (dz = dy);
* sigmoid, tanh, relu, leaky_relu with a slope >= 0: the output y, whose derivative act'(z) is a
  function of y (y (1 - y), (1 - y)(1 + y), [y > 0]): a tensor the next layer keeps anyway;
* gelu, gelu_tanh (and leaky_relu with a negative slope, where y > 0 no longer tells z > 0):
  the derivative act'(z) itself, written by the forward once, so the backward multiplies instead
  of re-evaluating erf/exp (the GPU kernels would do that once per tile of the other operand).

Backward: dz = dy * act'(z), dx = dz W, dW = dz^T x, db = sum over rows of dz.
"""

from __future__ import annotations

import functools
import math

import importlib

import numpy as np

from . import _parallel

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "gelu_tanh", "sigmoid", "tanh")
_OUTPUT_DERIVATIVE = ("sigmoid", "tanh", "relu")  # act'(z) is a function of y = act(z)


def saved_kind(activation: str | None, negative_slope: float = 0.01) -> str:
    """What the backward reads besides the inputs: 'none', 'output' (y) or 'derivative' (act'(z)).

    leaky_relu's output tells z > 0 (y > 0) for any slope >= 0: z = -inf with slope 0 gives
    y = NaN, and NaN > 0 is false as -inf > 0 is, so the gradient is the same. A negative slope
    makes y > 0 for z < 0 too, so then the derivative is saved."""
    if activation is None:
        return "none"
    if activation in _OUTPUT_DERIVATIVE or (activation == "leaky_relu" and negative_slope >= 0):
        return "output"
    return "derivative"


def _act():
    """The activation family's reference, imported on first use: the public ops import this
    module for ``saved_kind`` while ``import gpukernels`` stays free of SciPy."""
    return importlib.import_module(f"{__package__}.activation")


def _activation_forward(z, activation, negative_slope):
    # Flat, as the activation reference works best (and its float32 gelu tail path indexes
    # flat: a 2-D array with |z| > 4 below the threading size raised IndexError there).
    return _act().forward(z.reshape(-1), activation, negative_slope).reshape(z.shape)


def _activation_backward(grad, saved, activation, negative_slope):
    return _act().backward(grad.reshape(-1), saved.reshape(-1), activation, negative_slope).reshape(grad.shape)


def _gelu_and_derivative_float32(z, y, derivative):
    """gelu(z) and gelu'(z) from one exp(-a^2/2) and one tail ratio R(a), a = min(|z|, 15): the
    expensive parts the activation reference's gelu and gelu_backward each compute. Every step is
    theirs, in their order, so the bits are the same as computing the two apart."""
    act = _act()
    a = np.abs(z)
    np.add(z, a, out=y)
    y *= 0.5  # relu(z)
    clamped = np.minimum(a, _parallel.filled_like(a, act._TAIL_CLAMP))
    e = np.empty_like(a)
    act._exp_minus_half_square(clamped, e)
    ratio = np.empty_like(a)
    act._tail_ratio(clamped, ratio)
    tail = np.multiply(e, ratio)
    tail *= clamped
    y -= tail  # z Phi(z) = relu(z) - |z| Phi(-|z|), Phi(-a) = e R
    a *= act.INV_SQRT_2PI
    np.subtract(ratio, a, out=ratio)
    ratio *= e  # W(|z|) = Phi(-|z|) - |z| phi(z)
    np.multiply(ratio, -2.0, out=derivative)
    derivative += 1
    derivative *= np.greater(z, 0)
    derivative += ratio


def _gelu_and_derivative_float64(z, y, derivative):
    """z Phi(z) and Phi(z) + z phi(z), with one Phi (the activation reference's steps)."""
    act = _act()
    cdf = act.ndtr(z)
    np.multiply(z, cdf, out=y)
    np.multiply(z, z, out=derivative)
    derivative *= -0.5
    np.exp(derivative, out=derivative)
    derivative *= act.INV_SQRT_2PI
    derivative *= z
    derivative += cdf


def _gelu_and_derivative(z):
    """(gelu(z), gelu'(z)) for float32/float64 ``z``, block by block on the thread pool: each
    block's exp and tail ratio serve both results while the block is in cache."""
    formula = _gelu_and_derivative_float32 if z.dtype == np.float32 else _gelu_and_derivative_float64
    flat = z.reshape(-1)
    y, derivative = np.empty_like(flat), np.empty_like(flat)
    step = _parallel._items_per_chunk(flat.size, flat.itemsize)
    if flat.size * flat.itemsize < _parallel.PARALLEL_MIN_BYTES:
        step = max(flat.size, 1)
    _parallel.run([lambda lo=lo, hi=hi: formula(flat[lo:hi], y[lo:hi], derivative[lo:hi])
                   for lo, hi in _parallel.split(flat.size, step)])
    return y.reshape(z.shape), derivative.reshape(z.shape)


def _float16_in_float32(fn):
    """float16 arrays computed in float32 and the array results rounded to float16 once (None
    results pass through); NumPy's overflow/invalid warnings silenced as PyTorch's are."""

    @functools.wraps(fn)
    def wrapper(*args, **params):
        with np.errstate(all="ignore"):
            dtype = next(a.dtype for a in args if isinstance(a, np.ndarray))
            if dtype != np.float16:
                return fn(*args, **params)
            widened = (a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in args)
            result = fn(*widened, **params)
        return tuple(None if r is None else r.astype(dtype) for r in result)

    return wrapper


def preactivation(input: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """z = x W^T + b (BLAS in the inputs' dtype, on the pool; the bias added in place)."""
    rows = input.reshape(math.prod(input.shape[:-1]), input.shape[-1])  # (-1 cannot be inferred when K = 0)
    z = _parallel.matmul(rows, weight.T).reshape(*input.shape[:-1], weight.shape[0])
    if bias is not None:
        z += bias
    return z


@_float16_in_float32
def forward(input: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, activation: str | None = None,
            negative_slope: float = 0.01, save: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(y, act'(z) or None): the derivative only when ``save`` and ``saved_kind`` asks for it."""
    z = preactivation(input, weight, bias)
    if activation is None:
        return z, None
    if save and activation == "gelu":
        return _gelu_and_derivative(z)
    y = _activation_forward(z, activation, negative_slope)
    if not save or saved_kind(activation, negative_slope) != "derivative":
        return y, None
    return y, _activation_backward(np.ones_like(z), z, activation, negative_slope)


def grad_preactivation(grad_output: np.ndarray, saved: np.ndarray | None, activation: str | None,
                       negative_slope: float) -> np.ndarray:
    """dz = dy * act'(z), from what ``saved_kind`` says the forward saved."""
    kind = saved_kind(activation, negative_slope)
    if kind == "none":
        return grad_output
    if kind == "output":
        return _activation_backward(grad_output, saved, activation, negative_slope)
    return grad_output * saved


@_float16_in_float32
def backward(grad_output: np.ndarray, input: np.ndarray, weight: np.ndarray, saved: np.ndarray | None,
             activation: str | None = None, negative_slope: float = 0.01,
             output_mask: tuple[bool, bool, bool] = (True, True, True)):
    """(grad_input, grad_weight, grad_bias), None where ``output_mask`` says not needed."""
    dz = grad_preactivation(grad_output, saved, activation, negative_slope)
    grad_input = _parallel.matmul(dz, weight) if output_mask[0] else None
    grad_weight = _parallel.matmul(dz.T, input) if output_mask[1] else None
    # The column sums as a vector-matrix product: BLAS adds in blocks (NumPy's sum over axis 0
    # adds the rows one after another, an error growing with M).
    with _parallel.one_blas_thread():
        grad_bias = np.matmul(np.ones(dz.shape[0], dtype=dz.dtype), dz) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias
