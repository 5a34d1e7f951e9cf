"""Activations and their backward ops, with PyTorch's names, arguments and formulas.

Forward: ``y = f(x)``. Backward (ATen's ``*_backward``) takes the upstream gradient and what
the forward saved: the output ``y`` for sigmoid and tanh (their derivatives are functions of
``y``), the input ``x`` for relu, leaky_relu and gelu.
"""

from __future__ import annotations

from typing import Any

from .._dispatch import call
from ._checks import check_choice, check_float, check_real_number, check_same

GELU_APPROXIMATIONS = ("none", "tanh")
# Activations that save their output for backward (their derivative is a function of y).
SAVES_OUTPUT = ("sigmoid", "tanh")


def _forward(act: str, x: Any, negative_slope: float = 0.0) -> Any:
    check_float(x, "x")
    return call("activation", "forward", (x,), {"act": act, "negative_slope": negative_slope})


def _backward(act: str, grad_output: Any, saved: Any, negative_slope: float = 0.0) -> Any:
    check_float(grad_output, "grad_output")
    check_same("grad_output", grad_output, **{"output" if act in SAVES_OUTPUT else "x": saved})
    return call("activation", "backward", (grad_output, saved), {"act": act, "negative_slope": negative_slope})


def _gelu_act(approximate: str) -> str:
    return "gelu_tanh" if check_choice(approximate, "approximate", GELU_APPROXIMATIONS) == "tanh" else "gelu"


def sigmoid(x: Any) -> Any:
    """``1 / (1 + exp(-x))``."""
    return _forward("sigmoid", x)


def tanh(x: Any) -> Any:
    return _forward("tanh", x)


def relu(x: Any) -> Any:
    """``max(x, 0)``; NaN stays NaN, as in PyTorch."""
    return _forward("relu", x)


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Any:
    """``x if x > 0 else negative_slope * x``."""
    return _forward("leaky_relu", x, check_real_number(negative_slope, "negative_slope"))


def gelu(x: Any, approximate: str = "none") -> Any:
    """``x * Phi(x)`` with the exact normal CDF (``approximate='none'``) or PyTorch's tanh
    approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return _forward(_gelu_act(approximate), x)


def sigmoid_backward(grad_output: Any, output: Any) -> Any:
    """``grad_output * y * (1 - y)`` where ``output`` is ``y = sigmoid(x)``."""
    return _backward("sigmoid", grad_output, output)


def tanh_backward(grad_output: Any, output: Any) -> Any:
    """``grad_output * (1 - y^2)`` where ``output`` is ``y = tanh(x)``."""
    return _backward("tanh", grad_output, output)


def relu_backward(grad_output: Any, x: Any) -> Any:
    """``0 where x <= 0 else grad_output`` (ATen's threshold_backward at 0)."""
    return _backward("relu", grad_output, x)


def leaky_relu_backward(grad_output: Any, x: Any, negative_slope: float = 0.01) -> Any:
    return _backward("leaky_relu", grad_output, x, check_real_number(negative_slope, "negative_slope"))


def gelu_backward(grad_output: Any, x: Any, approximate: str = "none") -> Any:
    return _backward(_gelu_act(approximate), grad_output, x)


__all__ = [
    "sigmoid", "tanh", "relu", "leaky_relu", "gelu",
    "sigmoid_backward", "tanh_backward", "relu_backward", "leaky_relu_backward", "gelu_backward",
]
