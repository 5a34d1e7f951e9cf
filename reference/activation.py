"""Activations, forward and backward, in plain NumPy (formulas as PyTorch defines them)."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from ._precision import reference_op

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_COEFF = 0.044715


@reference_op
def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-x) overflowing to inf for very negative x gives the right limit: 1 / inf = 0.
    y = np.negative(x)
    np.exp(y, out=y)
    y += 1
    return np.reciprocal(y, out=y)


@reference_op
def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


@reference_op
def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, x.dtype.type(0))  # np.maximum keeps NaN, as torch.relu does


@reference_op
def leaky_relu(x: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    y = x * x.dtype.type(negative_slope)
    # For slopes in (0, 1] the larger of x and slope*x is the answer (the smaller for slopes
    # above 1), and np.maximum/np.minimum keep NaN: several times faster than np.where.
    if 0 < negative_slope <= 1:  # (a zero slope would turn +inf into inf * 0 = NaN)
        return np.maximum(x, y, out=y)
    if negative_slope > 1:
        return np.minimum(x, y, out=y)
    return np.where(x > 0, x, y)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    # ndtr is Phi itself; 0.5 (1 + erf(x / sqrt 2)) would cancel for negative x.
    return ndtr(x)


def _gelu_tanh_gate(x: np.ndarray) -> np.ndarray:
    """0.5 (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), written as sigmoid(2u): the
    same number without the cancellation of 1 + tanh(u) for negative u."""
    return sigmoid(2 * x.dtype.type(SQRT_2_OVER_PI) * (x + x.dtype.type(GELU_TANH_COEFF) * x * x * x))


@reference_op
def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    y = _gelu_tanh_gate(x) if approximate == "tanh" else _normal_cdf(x)
    y *= x
    return y


@reference_op
def sigmoid_backward(grad_output: np.ndarray, output: np.ndarray) -> np.ndarray:
    return grad_output * output * (1 - output)


@reference_op
def tanh_backward(grad_output: np.ndarray, output: np.ndarray) -> np.ndarray:
    return grad_output * ((1 - output) * (1 + output))  # 1 - y*y cancels near |y| = 1


@reference_op
def relu_backward(grad_output: np.ndarray, x: np.ndarray) -> np.ndarray:
    # ATen's threshold_backward: zero where x <= 0, so a NaN input lets the gradient through.
    return np.where(x <= 0, grad_output.dtype.type(0), grad_output)


@reference_op
def leaky_relu_backward(grad_output: np.ndarray, x: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    return np.where(x > 0, grad_output, grad_output * grad_output.dtype.type(negative_slope))


@reference_op
def gelu_backward(grad_output: np.ndarray, x: np.ndarray, approximate: str = "none") -> np.ndarray:
    if approximate == "tanh":
        # d/dx [x s] with s = sigmoid(2u): s + 2 x s (1 - s) du/dx
        s = _gelu_tanh_gate(x)
        du_dx = x.dtype.type(SQRT_2_OVER_PI) * (1 + 3 * x.dtype.type(GELU_TANH_COEFF) * x * x)
        return grad_output * (s + 2 * x * s * (1 - s) * du_dx)
    pdf = x.dtype.type(INV_SQRT_2PI) * np.exp(-0.5 * x * x)
    return grad_output * (_normal_cdf(x) + x * pdf)


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
