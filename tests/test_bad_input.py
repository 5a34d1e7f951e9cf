"""Bad input gets a TypeError or ValueError naming the argument, before anything runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import _dispatch

FORWARD = [gk.sigmoid, gk.tanh, gk.relu, gk.leaky_relu, gk.gelu]
BACKWARD = [gk.sigmoid_backward, gk.tanh_backward, gk.relu_backward, gk.leaky_relu_backward, gk.gelu_backward]


@pytest.fixture(autouse=True)
def nothing_may_run(monkeypatch):
    """A rejected call must not reach any backend."""
    def refuse(*args, **kwargs):
        raise AssertionError("a backend was called for rejected input")

    monkeypatch.setattr(_dispatch, "implementation", lambda *a: refuse)


@pytest.mark.parametrize("op", FORWARD, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad,pattern", [
    (np.arange(4), "x has dtype int64; supported dtypes are float16, bfloat16, float32, float64"),
    (torch.arange(4), "x has dtype int64"),
    (np.ones(3, np.complex64), "x has dtype complex64"),
    (torch.ones(3, dtype=torch.bool), "x has dtype bool"),
    ("abc", "x must be a numpy array, torch tensor or cupy array, got str"),
    ([1.0, 2.0], "got list"),
    (None, "got NoneType"),
])
def test_forward_rejects_non_float_arrays(op, bad, pattern):
    with pytest.raises(TypeError, match=pattern):
        op(bad)


@pytest.mark.parametrize("op", BACKWARD, ids=lambda f: f.__name__)
def test_backward_rejects_mixed_libraries(op):
    with pytest.raises(TypeError, match="is a torch array but grad_output is a numpy array"):
        op(np.ones(3, np.float32), torch.ones(3))


@pytest.mark.parametrize("op", BACKWARD, ids=lambda f: f.__name__)
def test_backward_rejects_mismatched_shapes_and_dtypes(op):
    with pytest.raises(ValueError, match=r"has shape \(4,\) but grad_output has shape \(3,\)"):
        op(np.ones(3, np.float32), np.ones(4, np.float32))
    with pytest.raises(TypeError, match="has dtype float64 but grad_output has dtype float32"):
        op(np.ones(3, np.float32), np.ones(3, np.float64))


def test_backward_names_what_was_saved():
    with pytest.raises(ValueError, match="output has shape"):
        gk.sigmoid_backward(np.ones(3, np.float32), np.ones(2, np.float32))
    with pytest.raises(ValueError, match="x has shape"):
        gk.gelu_backward(np.ones(3, np.float32), np.ones(2, np.float32))


@pytest.mark.parametrize("value", ["exact", "TANH", None, 1])
def test_gelu_rejects_unknown_approximation(value):
    with pytest.raises(ValueError, match="approximate must be one of 'none', 'tanh'"):
        gk.gelu(np.ones(2, np.float32), approximate=value)
    with pytest.raises(ValueError, match="approximate must be one of"):
        gk.gelu_backward(np.ones(2, np.float32), np.ones(2, np.float32), approximate=value)


@pytest.mark.parametrize("value", ["0.1", None, True, 1j])
def test_leaky_relu_rejects_non_real_slopes(value):
    with pytest.raises(TypeError, match="negative_slope must be a real number"):
        gk.leaky_relu(np.ones(2, np.float32), negative_slope=value)
