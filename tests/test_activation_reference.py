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


# ---------------------------------------------------------------------------------------------
# The float32 path: computed in float32 (no float64 temporaries), accurate to float32 precision

ULP = 2.0**-23  # float32's spacing at 1: relative errors below are in these units
TINY = float(np.finfo(np.float32).tiny)


def _every_range():
    """float32 inputs from the far lower tail (Phi underflows below -14) to where Phi rounds to 1,
    densely, plus the edges."""
    dense = np.linspace(-16.0, 8.0, 2_000_001, dtype=np.float32)
    edges = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, -13.5, -14.0, -14.1, -15.0, 5.4, 6.0], np.float32)
    return np.concatenate([dense, edges])


def test_float32_normal_cdf_has_float32_precision_over_the_whole_range():
    """Relative error against SciPy's float64 ndtr within a few float32 ulp everywhere Phi is a
    normal float32, tails included (0.5 (1 + erf(x / sqrt 2)) in float32 has no correct digit
    below x = -6), and within a few denormal steps where Phi underflows."""
    from scipy.special import ndtr

    x = _every_range()
    got = ref.normal_cdf(x)
    assert got.dtype == np.float32
    want = ndtr(x.astype(np.float64))
    normal = want >= TINY
    relative = np.abs(got[normal] - want[normal]) / want[normal]
    assert relative.max() <= 8 * ULP, f"max relative error {relative.max() / ULP:.1f} ulp at x = {x[normal][relative.argmax()]}"
    assert np.abs(got[~normal] - want[~normal]).max() <= 8 * 2.0**-149


def test_float32_gelu_and_gradient_have_float32_precision_over_the_whole_range():
    x = _every_range()
    x64 = x.astype(np.float64)
    y, y64 = ref.gelu(x), ref.gelu(x64)
    assert y.dtype == np.float32
    big = np.abs(y64) >= TINY
    relative = np.abs(y[big] - y64[big]) / np.abs(y64[big])
    assert relative.max() <= 16 * ULP, f"gelu: {relative.max() / ULP:.1f} ulp at x = {x[big][relative.argmax()]}"
    ones = np.ones_like(x)
    g, g64 = ref.gelu_backward(ones, x), ref.gelu_backward(ones.astype(np.float64), x64)
    assert g.dtype == np.float32
    # gelu' crosses 0 at x = -0.75: there only an absolute bound means anything
    assert np.abs(g - g64).max() <= 4 * ULP
    away = (np.abs(g64) >= TINY) & ((x < -1.5) | (x > 0))
    relative = np.abs(g[away] - g64[away]) / np.abs(g64[away])
    assert relative.max() <= 16 * ULP, f"gelu': {relative.max() / ULP:.1f} ulp at x = {x[away][relative.argmax()]}"


@pytest.mark.parametrize("name", CASES)
def test_float32_nonfinite_inputs_as_in_float64(name):
    forward, backward, _ = CASES[name]
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -30.0, 30.0, -3.0, 3.0])
    dy = np.linspace(0.5, 2.0, x.size)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)
    y32, y64 = forward(x32), forward(x)
    assert_close(y32, y64, "float32")
    assert_close(backward(dy32, x32, y32), backward(dy, x, y32.astype(np.float64)), "float32")


@pytest.mark.parametrize("slope", [0.0, 0.01, 1.0, 2.5, -0.5])
def test_leaky_relu_float32_every_kind_of_slope(slope, rng):
    x = np.concatenate([rng.standard_normal(50) * 3, [np.nan, np.inf, -np.inf, 0.0, -0.0]]).astype(np.float32)
    dy = rng.standard_normal(x.size).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    yt = F.leaky_relu(xt, slope)
    (gt,) = torch.autograd.grad(yt, xt, torch.from_numpy(dy))
    assert_close(ref.leaky_relu(x, slope), yt.detach().numpy(), "float32")
    assert_close(ref.leaky_relu_backward(dy, x, slope), gt.numpy(), "float32")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["relu", "leaky_relu"])
def test_nonfinite_gradients_through_relu_like_backward_match_aten(name, dtype, rng):
    """relu_backward selects: 0 where x <= 0 even when the gradient there is inf or NaN."""
    x = np.repeat([np.nan, np.inf, -np.inf, 0.0, -0.0, -2.0, 2.0], 3).astype(dtype)
    dy = np.tile([np.nan, np.inf, -np.inf], 7).astype(dtype)
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    if name == "relu":
        want, got = torch.ops.aten.threshold_backward(dyt, xt, 0), ref.relu_backward(dy, x)
    else:
        want, got = torch.ops.aten.leaky_relu_backward(dyt, xt, 0.2, False), ref.leaky_relu_backward(dy, x, 0.2)
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_is_torch_relu_bit_for_bit(dtype, rng):
    """relu is one np.clip(x, 0, inf): the same bits as torch.relu, signed zeros and NaN payloads
    (either sign) included, on arrays large enough for the thread pool's chunks."""
    x = (rng.standard_normal(300_007) * 3).astype(dtype)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(dtype).tiny, -np.finfo(dtype).tiny,
                         np.finfo(dtype).smallest_subnormal, -np.finfo(dtype).smallest_subnormal], dtype)
    x[:specials.size] = specials
    x[-specials.size:] = specials
    got, want = ref.relu(x), torch.relu(torch.from_numpy(x)).numpy()
    assert np.array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("shape", [(2, 3), (4, 1, 5), (3, 257)], ids=lambda s: "x".join(map(str, s)))
def test_float32_gelu_on_arrays_of_any_rank_with_tail_values(shape, rng):
    """The tail correction (|x| > 4) once indexed flat positions into an n-d array: an
    IndexError or the wrong elements. Same values as the flat call, and float32-accurate."""
    x = (rng.standard_normal(shape) * 6).astype(np.float32)
    x.reshape(-1)[:2] = [5.0, -6.5]
    for op, args in (("gelu", (x,)), ("gelu_backward", (np.ones_like(x), x))):
        got = getattr(ref, op)(*args)
        flat = getattr(ref, op)(*(a.reshape(-1) for a in args)).reshape(shape)
        assert got.shape == shape and np.array_equal(got, flat), op
        assert_close(got, getattr(ref, op)(*(a.astype(np.float64) for a in args)), "float32")
