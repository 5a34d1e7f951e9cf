"""Bad input to the softmax family gets a TypeError or ValueError naming the argument, before
any backend runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import _dispatch


@pytest.fixture(autouse=True)
def nothing_may_run(monkeypatch):
    """A rejected call must not reach any backend."""
    def refuse(*args, **kwargs):
        raise AssertionError("a backend was called for rejected input")

    monkeypatch.setattr(_dispatch, "implementation", lambda *a: refuse)


FORWARD = [gk.softmax, gk.log_softmax, gk.masked_softmax]
BACKWARD = [gk.softmax_backward, gk.log_softmax_backward, gk.masked_softmax_backward]


@pytest.mark.parametrize("op", FORWARD, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dim", [2, -3, 10])
def test_dim_out_of_range(op, dim):
    with pytest.raises(ValueError, match=rf"dim {dim} out of range for x with 2 dimension\(s\) \(expected -2\.\.1\)"):
        op(np.ones((2, 3), np.float32), dim=dim)


@pytest.mark.parametrize("op", BACKWARD, ids=lambda f: f.__name__)
def test_backward_dim_out_of_range(op):
    g = torch.ones(2, 3)
    with pytest.raises(ValueError, match="dim 2 out of range for grad_output"):
        op(g, g, 2)


@pytest.mark.parametrize("dim", [1.0, "1", None, True])
def test_dim_must_be_an_integer(dim):
    with pytest.raises(TypeError, match="dim must be an integer"):
        gk.softmax(np.ones((2, 3), np.float32), dim)


def test_zero_dimensional_input_allows_dim_0_and_minus_1_only():
    with pytest.raises(ValueError, match=r"dim 1 out of range .* \(expected -1\.\.0\)"):
        gk.softmax(np.ones((), np.float32), 1)


@pytest.mark.parametrize("op", FORWARD, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad,error,pattern", [
    (np.arange(4), TypeError, "x has dtype int64; supported dtypes are float16, bfloat16, float32, float64"),
    (torch.ones(3, dtype=torch.bool), TypeError, "x has dtype bool"),
    ([1.0, 2.0], TypeError, "x must be a numpy array, torch tensor or cupy array, got list"),
])
def test_forward_rejects_non_float_arrays(op, bad, error, pattern):
    with pytest.raises(error, match=pattern):
        op(bad)


@pytest.mark.parametrize("op", BACKWARD, ids=lambda f: f.__name__)
def test_backward_rejects_mismatches(op):
    with pytest.raises(ValueError, match=r"output has shape \(4,\) but grad_output has shape \(3,\)"):
        op(np.ones(3, np.float32), np.ones(4, np.float32), 0)
    with pytest.raises(TypeError, match="output has dtype float64 but grad_output has dtype float32"):
        op(np.ones(3, np.float32), np.ones(3, np.float64), 0)
    with pytest.raises(TypeError, match="output is a torch array but grad_output is a numpy array"):
        op(np.ones(3, np.float32), torch.ones(3), 0)


@pytest.mark.parametrize("mask,pattern", [
    (torch.ones(2, 3), "mask has dtype float32; masked_softmax needs a boolean mask"),
    (torch.ones(2, 3, dtype=torch.uint8), "mask has dtype uint8"),
])
def test_mask_of_the_wrong_dtype(mask, pattern):
    with pytest.raises(TypeError, match=pattern):
        gk.masked_softmax(torch.ones(2, 3), mask)


@pytest.mark.parametrize("shape", [(2,), (2, 2), (4, 2, 3), (2, 3, 1)])
def test_mask_that_does_not_broadcast_to_x(shape):
    with pytest.raises(ValueError, match=rf"mask has shape {tuple(shape)!r}".replace("(", r"\(").replace(")", r"\)")
                       + r", which does not broadcast to x's shape \(2, 3\)"):
        gk.masked_softmax(torch.ones(2, 3), torch.ones(shape, dtype=torch.bool))


def test_mask_from_another_library():
    with pytest.raises(TypeError, match="mask is a numpy array but x is a torch array"):
        gk.masked_softmax(torch.ones(2, 3), np.ones((2, 3), bool))


def test_lengths_of_the_wrong_dtype_or_shape():
    x = torch.ones(2, 5, 3)
    with pytest.raises(TypeError, match="lengths has dtype float32"):
        gk.masked_softmax(x, lengths=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"lengths has shape \(2, 5\) but must be x's shape without dim 1, \(2, 3\)"):
        gk.masked_softmax(x, lengths=torch.ones(2, 5, dtype=torch.int64), dim=1)
    with pytest.raises(TypeError, match="mask must be a numpy array"):
        gk.masked_softmax(x, mask=[True])
