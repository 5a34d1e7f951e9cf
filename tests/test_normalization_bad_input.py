"""Bad input to the normalisation family gets a TypeError or ValueError naming the argument,
before any backend runs (nothing is launched or written)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import _dispatch


@pytest.fixture(autouse=True)
def nothing_may_run(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a backend was called for rejected input")

    monkeypatch.setattr(_dispatch, "implementation", lambda *a: refuse)


X = np.ones((4, 3, 5), np.float32)
W = np.ones((3, 5), np.float32)


@pytest.mark.parametrize("shape", [(4,), (3,), (4, 5), (2, 4, 3, 5)], ids=str)
def test_normalized_shape_must_match_the_trailing_dims(shape):
    with pytest.raises(ValueError, match=r"normalized_shape .* does not match the trailing dims of input's shape"):
        gk.layer_norm(X, shape)


@pytest.mark.parametrize("value,error", [((), ValueError), (2.0, TypeError), ((5.0,), TypeError), ("5", TypeError),
                                         ((True,), TypeError)], ids=repr)
def test_normalized_shape_must_be_ints(value, error):
    with pytest.raises(error, match="normalized_shape"):
        gk.rms_norm(X, value)


def test_weight_and_bias_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"weight has shape \(5,\) but normalized_shape is \(3, 5\)"):
        gk.layer_norm(X, (3, 5), np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"bias has shape \(3, 4\)"):
        gk.layer_norm(X, (3, 5), W, np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="weight has shape"):
        gk.rms_norm(X, 5, np.ones(4, np.float32))


def test_mixed_dtypes_libraries_and_devices():
    with pytest.raises(TypeError, match="weight has dtype float64 but input has dtype float32"):
        gk.layer_norm(X, (3, 5), W.astype(np.float64))
    with pytest.raises(TypeError, match="bias is a torch array but input is a numpy array"):
        gk.layer_norm(X, (3, 5), W, torch.ones(3, 5))
    with pytest.raises(TypeError, match="residual has dtype float16"):
        gk.add_layer_norm(X, X.astype(np.float16), (3, 5))
    with pytest.raises(ValueError, match=r"residual has shape \(4, 3, 1\)"):
        gk.add_rms_norm(X, X[..., :1], (3, 5))
    meta = torch.ones(3, 5, device="meta")
    with pytest.raises(ValueError, match="weight is on meta but input is on cpu"):
        gk.layer_norm(torch.ones(4, 3, 5), (3, 5), meta)


def test_input_dtype_and_type():
    with pytest.raises(TypeError, match="input has dtype int32"):
        gk.layer_norm(np.ones((2, 3), np.int32), 3)
    with pytest.raises(TypeError, match="input must be a numpy array"):
        gk.rms_norm([[1.0, 2.0]], 2)


@pytest.mark.parametrize("eps,error", [(-1.0, ValueError), ("1e-5", TypeError), (float("nan"), ValueError)],
                         ids=repr)
def test_eps(eps, error):
    with pytest.raises(error, match="eps"):
        gk.layer_norm(X, 5, eps=eps)


def test_backward_checks_its_statistics_and_gradients():
    mean = np.zeros((4, 1, 1), np.float32)
    with pytest.raises(ValueError, match=r"rstd has shape \(4, 1\) but must be input's shape"):
        gk.layer_norm_backward(X, X, (3, 5), mean, np.ones((4, 1), np.float32))
    with pytest.raises(TypeError, match="mean must be an array"):
        gk.layer_norm_backward(X, X, (3, 5), None, mean)
    with pytest.raises(ValueError, match=r"grad_output has shape \(4, 3\)"):
        gk.rms_norm_backward(X[..., 0], X, 5, np.ones((4, 3, 1), np.float32))
    with pytest.raises(TypeError, match="grad_sum has dtype float64 but sum has dtype float32"):
        gk.add_rms_norm_backward(X, X.astype(np.float64), X, 5, np.ones((4, 3, 1), np.float32))
    with pytest.raises(TypeError, match="rstd is a torch array but input is a numpy array"):
        gk.rms_norm_backward(X, X, 5, torch.ones(4, 3, 1))
