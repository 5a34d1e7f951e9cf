"""The activations by name, through the public API, for tests that loop over all of them."""

from __future__ import annotations

import gpukernels as gk

ACTS = ("sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu_tanh")
SAVES_OUTPUT = ("sigmoid", "tanh")
SLOPE = 0.1  # leaky_relu's negative_slope in these tests


def forward(act: str, x):
    if act == "leaky_relu":
        return gk.leaky_relu(x, SLOPE)
    if act.startswith("gelu"):
        return gk.gelu(x, "tanh" if act == "gelu_tanh" else "none")
    return getattr(gk, act)(x)


def backward(act: str, grad_output, saved):
    """``saved`` is the forward's output for sigmoid and tanh, its input otherwise."""
    if act == "leaky_relu":
        return gk.leaky_relu_backward(grad_output, saved, SLOPE)
    if act.startswith("gelu"):
        return gk.gelu_backward(grad_output, saved, "tanh" if act == "gelu_tanh" else "none")
    return getattr(gk, f"{act}_backward")(grad_output, saved)
