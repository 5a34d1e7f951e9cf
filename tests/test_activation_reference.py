"""The NumPy reference in float64 against PyTorch CPU autograd and central differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_close
from gpukernels.reference import activation as ref

# name -> (reference forward, reference backward(dy, x, y), torch forward)
CASES = {
    "sigmoid": (ref.sigmoid, lambda dy, x, y: ref.sigmoid_backward(dy, y), torch.sigmoid),
    "tanh": (ref.tanh, lambda dy, x, y: ref.tanh_backward(dy, y), torch.tanh),
    "relu": (ref.relu, lambda dy, x, y: ref.relu_backward(dy, x), torch.relu),
    "leaky_relu": (
        lambda x: ref.leaky_relu(x, 0.2),
        lambda dy, x, y: ref.leaky_relu_backward(dy, x, 0.2),
        lambda x: F.leaky_relu(x, 0.2),
    ),
    "gelu": (ref.gelu, lambda dy, x, y: ref.gelu_backward(dy, x), F.gelu),
    "gelu_tanh": (
        lambda x: ref.gelu(x, "tanh"),
        lambda dy, x, y: ref.gelu_backward(dy, x, "tanh"),
        lambda x: F.gelu(x, approximate="tanh"),
    ),
}


def _torch_forward_backward(fn, x: np.ndarray, dy: np.ndarray):
    xt = torch.from_numpy(x).requires_grad_()
    yt = fn(xt)
    (gt,) = torch.autograd.grad(yt, xt, torch.from_numpy(dy))
    return yt.detach().numpy(), gt.numpy()


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_autograd_float64(name, rng):
    forward, backward, torch_fn = CASES[name]
    x = rng.standard_normal((17, 31)) * 4
    dy = rng.standard_normal(x.shape)
    y = forward(x)
    y_torch, g_torch = _torch_forward_backward(torch_fn, x, dy)
    assert y.dtype == np.float64
    assert_close(y, y_torch, "float64")
    assert_close(backward(dy, x, y), g_torch, "float64")


@pytest.mark.parametrize("name", CASES)
def test_nonfinite_inputs_match_torch(name):
    forward, backward, torch_fn = CASES[name]
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-300, -30.0, 30.0])
    dy = np.linspace(0.5, 2.0, x.size)
    y = forward(x)
    y_torch, g_torch = _torch_forward_backward(torch_fn, x, dy)
    assert_close(y, y_torch, "float64")
    assert_close(backward(dy, x, y), g_torch, "float64")


@pytest.mark.parametrize("name", CASES)
def test_backward_matches_central_differences(name, rng):
    forward, backward, _ = CASES[name]
    # keep clear of relu's kink at 0, where the derivative is a convention, not a limit
    x = rng.standard_normal(200) * 3
    x = np.where(np.abs(x) < 1e-3, 0.5, x)
    dy = rng.standard_normal(x.shape)
    h = 1e-6
    numeric = dy * (forward(x + h) - forward(x - h)) / (2 * h)
    np.testing.assert_allclose(backward(dy, x, forward(x)), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("name", CASES)
def test_keeps_dtype_and_rounds_once(name, dtype, rng):
    forward, backward, _ = CASES[name]
    x = (rng.standard_normal(1000) * 3).astype(dtype)
    dy = rng.standard_normal(1000).astype(dtype)
    y = forward(x)
    assert y.dtype == dtype
    name_of = np.dtype(dtype).name
    assert_close(y, forward(x.astype(np.float64)), name_of)
    g = backward(dy, x, y)
    assert g.dtype == dtype
    y64 = forward(x.astype(np.float64))
    # sigmoid/tanh backward read y, which is itself rounded: compare with the same rounded y
    assert_close(g, backward(dy.astype(np.float64), x.astype(np.float64), y.astype(np.float64)), name_of)
    assert y64.dtype == np.float64


@pytest.mark.parametrize("slope", [0.0, 0.01, 1.0, 2.5, -0.5])
def test_leaky_relu_every_kind_of_slope_matches_torch(slope, rng):
    # the reference picks max/min/where by the slope's range: every branch against torch
    x = np.concatenate([rng.standard_normal(50) * 3, [np.nan, np.inf, -np.inf, 0.0, -0.0]])
    want = F.leaky_relu(torch.from_numpy(x), slope).numpy()
    assert_close(ref.leaky_relu(x, slope), want, "float64")
