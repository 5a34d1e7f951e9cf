"""Bad input to the dense layer: TypeError/ValueError naming the argument, raised before any
backend runs (so nothing is written), on every path of the public ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk


def _layer(dtype=np.float32):
    return np.ones((4, 3), dtype), np.ones((2, 3), dtype), np.ones(2, dtype)


@pytest.mark.parametrize("change,error,match", [
    (lambda x, w, b: (np.ones((4, 5), np.float32), w, b), ValueError, "in_features"),
    (lambda x, w, b: (x, np.ones((2, 3, 1), np.float32), b), ValueError, "weight must be 2-D"),
    (lambda x, w, b: (x, w, np.ones(3, np.float32)), ValueError, "bias has shape"),
    (lambda x, w, b: (x, w.astype(np.float64), b), TypeError, "weight has dtype"),
    (lambda x, w, b: (x, w, b.astype(np.float16)), TypeError, "bias has dtype"),
    (lambda x, w, b: (x.astype(np.int32), w, b), TypeError, "input has dtype"),
    (lambda x, w, b: (x, torch.from_numpy(w), b), TypeError, "weight is a torch array"),
    (lambda x, w, b: ([[1.0]], w, b), TypeError, "input must be"),
    (lambda x, w, b: (np.ones((), np.float32), w, b), ValueError, "in_features"),
], ids=["in_features", "weight_rank", "bias_shape", "weight_dtype", "bias_dtype", "int_input", "mixed_libraries",
        "list_input", "scalar_input"])
def test_forward_rejects(change, error, match):
    with pytest.raises(error, match=match):
        gk.linear(*change(*_layer()))


def test_unknown_activation_and_slope():
    with pytest.raises(ValueError, match="activation must be one of"):
        gk.linear(*_layer(), activation="swish")
    with pytest.raises(TypeError, match="negative_slope"):
        gk.linear(*_layer(), activation="leaky_relu", negative_slope="0.1")


def test_mixed_devices_are_named():
    x, w, b = (torch.from_numpy(a) for a in _layer())
    meta = torch.ones(2, device="meta")
    with pytest.raises(ValueError, match="bias is on meta but input is on cpu"):
        gk.linear(x, w, meta)


def test_backward_rejects():
    x, w, _ = _layer()
    dy = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="grad_output has shape"):
        gk.linear_backward(np.ones((4, 3), np.float32), x, w, None)
    with pytest.raises(ValueError, match="saved is required for activation='gelu'"):
        gk.linear_backward(dy, x, w, None, activation="gelu")
    with pytest.raises(ValueError, match="saved has shape"):
        gk.linear_backward(dy, x, w, np.ones((4, 3), np.float32), activation="sigmoid")
    with pytest.raises(TypeError, match="grad_output has dtype"):
        gk.linear_backward(dy.astype(np.float64), x, w, None)
    with pytest.raises(ValueError, match="output_mask"):
        gk.linear_backward(dy, x, w, None, output_mask=(True, True))


def test_nothing_is_written_when_rejected():
    x, w, b = (torch.from_numpy(a) for a in _layer())
    before = [t.clone() for t in (x, w, b)]
    with pytest.raises(ValueError):
        gk.linear(x, w, torch.ones(5), activation="relu")
    assert all(torch.equal(a, c) for a, c in zip(before, (x, w, b)))
