"""The dense layer's NumPy reference (the oracle and the CPU fallback): forward and every
gradient against PyTorch CPU float64 autograd (F.linear + the activation), the gradients also
against finite differences, float32/float16 computed within their tolerances, what the backward
reads (saved_kind), empty and odd shapes, and the public op on numpy and CPU torch inputs.
Test ids: M<rows>-K<in>-N<out>-<activation>-<dtype>."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpukernels as gk
from _helpers import assert_close
from gpukernels.reference import linear as ref

ACTIVATIONS = (None, "relu", "leaky_relu", "gelu", "gelu_tanh", "sigmoid", "tanh")
SHAPES = ((1, 1, 1), (7, 13, 5), (33, 31, 17))


def torch_layer(x, w, b, activation, negative_slope=0.01):
    """act(F.linear(x, w, b)) with PyTorch's own ops: the comparison."""
    z = F.linear(x, w, b)
    return {
        None: lambda z: z, "relu": F.relu, "leaky_relu": lambda z: F.leaky_relu(z, negative_slope),
        "gelu": F.gelu, "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
        "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    }[activation](z)


def torch_gradients(x, w, b, dy, activation, negative_slope=0.01):
    """(y, dx, dW, db) from PyTorch CPU autograd, in the inputs' dtype."""
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = torch_layer(*leaves, activation, negative_slope)
    y.backward(dy)
    return (y.detach(), *(t.grad for t in leaves))


def layer_inputs(rng, M, K, N, dtype=np.float64):
    x, w, b, dy = (rng.standard_normal(s).astype(dtype) for s in ((M, K), (N, K), (N,), (M, N)))
    return x, w, b, dy


def reference_gradients(x, w, b, dy, activation, negative_slope=0.01):
    kind = ref.saved_kind(activation, negative_slope)
    y, derivative = ref.forward(x, w, b, activation, negative_slope, save=kind == "derivative")
    saved = {"none": None, "output": y, "derivative": derivative}[kind]
    return (y, *ref.backward(dy, x, w, saved, activation, negative_slope))


def _id(M, K, N, act, dtype="float64"):
    return f"M{M}-K{K}-N{N}-{act}-{dtype}"


@pytest.mark.parametrize("M,K,N,activation", [pytest.param(*s, a, id=_id(*s, a)) for s in SHAPES for a in ACTIVATIONS])
def test_float64_matches_torch_autograd(M, K, N, activation, rng):
    x, w, b, dy = layer_inputs(rng, M, K, N)
    got = reference_gradients(x, w, b, dy, activation)
    want = torch_gradients(*(torch.from_numpy(a) for a in (x, w, b, dy)), activation)
    for g, t in zip(got, want):
        assert_close(g, t.numpy(), "float64", "reduction")


@pytest.mark.parametrize("negative_slope", [0.2, -0.3, 0.0])
def test_leaky_relu_slopes_positive_negative_and_zero(negative_slope, rng):
    x, w, b, dy = layer_inputs(rng, 9, 11, 6)
    got = reference_gradients(x, w, b, dy, "leaky_relu", negative_slope)
    want = torch_gradients(*(torch.from_numpy(a) for a in (x, w, b, dy)), "leaky_relu", negative_slope)
    for g, t in zip(got, want):
        assert_close(g, t.numpy(), "float64", "reduction")


def test_what_the_backward_reads():
    assert ref.saved_kind(None) == "none"
    for act in ("sigmoid", "tanh", "relu"):
        assert ref.saved_kind(act) == "output"
    assert ref.saved_kind("leaky_relu", 0.01) == ref.saved_kind("leaky_relu", 0.0) == "output"
    assert ref.saved_kind("leaky_relu", -0.5) == "derivative"  # y > 0 for z < 0 too: y cannot tell
    assert ref.saved_kind("gelu") == ref.saved_kind("gelu_tanh") == "derivative"


@pytest.mark.parametrize("size", [1, 7, 1000, 300_001], ids=lambda n: f"n{n}")  # 300001: uneven pool blocks
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
def test_gelu_forward_saves_the_activation_references_bits(size, dtype, rng):
    """The forward computes gelu and gelu' together (one exp and tail ratio for both): the bits
    are the activation reference's, computed apart, specials and both tails included."""
    from gpukernels.reference import activation

    z = (rng.standard_normal(size) * 6).astype(dtype)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -30.0, 4.5, -9.0], dtype=dtype)[:size]
    z[:len(specials)] = specials
    with np.errstate(all="ignore"):
        y, derivative = ref._gelu_and_derivative(z.reshape(1, -1))
        want_y = activation.forward(z, "gelu")
        want_derivative = activation.backward(np.ones_like(z), z, "gelu")
    assert np.array_equal(y.reshape(-1).view(np.uint8), want_y.view(np.uint8))
    assert np.array_equal(derivative.reshape(-1).view(np.uint8), want_derivative.view(np.uint8))


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_gradients_against_finite_differences(activation, rng):
    M, K, N = 3, 4, 5
    x, w, b, dy = layer_inputs(rng, M, K, N)
    # keep the pre-activations away from relu's kink, where a difference quotient straddles it
    b += np.sign(b) * 0.3
    _, dx, dw, db = reference_gradients(x, w, b, dy, activation)

    def loss(x, w, b):
        y, _ = ref.forward(x, w, b, activation, 0.01)
        return float(np.sum(y * dy))

    h = 1e-6
    for array, grad in ((x, dx), (w, dw), (b, db)):
        numeric = np.zeros_like(array)
        for i in np.ndindex(array.shape):
            saved = array[i]
            array[i] = saved + h
            up = loss(x, w, b)
            array[i] = saved - h
            down = loss(x, w, b)
            array[i] = saved
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_float32_and_float16_compute_in_float32(activation, dtype, rng):
    x, w, b, dy = layer_inputs(rng, 33, 31, 17)
    low = [a.astype(dtype) for a in (x, w, b, dy)]
    got = reference_gradients(*low, activation)
    # the float64 oracle on the same (rounded) inputs, the backward from the rounded output
    exact = reference_gradients(*(a.astype(np.float64) for a in low), activation)
    assert all(g.dtype == np.dtype(dtype) for g in got)
    assert_close(got[0], exact[0], dtype, "reduction")
    saved = {"none": None, "output": got[0].astype(np.float64)}.get(ref.saved_kind(activation))
    if saved is not None:  # backward from the kernel's own rounded output, as autograd does
        exact = (exact[0], *ref.backward(low[3].astype(np.float64), low[0].astype(np.float64),
                                         low[1].astype(np.float64), saved, activation))
    for g, e in zip(got[1:], exact[1:]):
        assert_close(g, e, dtype, "reduction")


def test_output_mask_skips_gradients(rng):
    x, w, b, dy = layer_inputs(rng, 4, 3, 2)
    dx, dw, db = ref.backward(dy, x, w, None, None, 0.01, output_mask=(False, True, False))
    assert dx is None and db is None and dw.shape == (2, 3)


@pytest.mark.parametrize("M,K,N", [pytest.param(*s, id=f"M{s[0]}-K{s[1]}-N{s[2]}") for s in [(0, 3, 4), (5, 0, 4), (5, 3, 0)]])
def test_empty_dimensions(M, K, N, rng):
    x, w, b, dy = layer_inputs(rng, M, K, N)
    y, dx, dw, db = reference_gradients(x, w, b, dy, "gelu")
    assert y.shape == (M, N) and dx.shape == (M, K) and dw.shape == (N, K) and db.shape == (N,)
    if K == 0:  # y = act(b): every row is gelu(bias)
        np.testing.assert_allclose(y, np.broadcast_to(F.gelu(torch.from_numpy(b)).numpy(), (M, N)))
    if M == 0:
        assert not dw.any() and not db.any()


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_public_op_on_cpu_arrays_uses_the_reference(library, rng):
    x, w, b, dy = (a.astype(np.float32) for a in layer_inputs(rng, 2 * 3, 5, 4))
    x3 = x.reshape(2, 3, 5)
    args = (x3, w, b) if library == "numpy" else tuple(torch.from_numpy(a) for a in (x3, w, b))
    y, saved = gk.linear(*args, activation="gelu", return_saved=True)
    assert type(y) is type(args[0]) and tuple(y.shape) == (2, 3, 4) and tuple(saved.shape) == (2, 3, 4)
    want_y, want_derivative = ref.forward(x, w, b, "gelu", 0.01, save=True)
    assert_close(np.asarray(y).reshape(6, 4), want_y, "float32", "reduction")
    grad_output = dy.reshape(2, 3, 4) if library == "numpy" else torch.from_numpy(dy.reshape(2, 3, 4))
    dx, dw, db = gk.linear_backward(grad_output, args[0], args[1], saved, activation="gelu")
    want = ref.backward(dy, x, w, want_derivative, "gelu", 0.01)
    assert tuple(dx.shape) == (2, 3, 5)
    for g, e in zip((np.asarray(dx).reshape(6, 5), dw, db), want):
        assert_close(g, e, "float32", "reduction")


def test_one_dimensional_input_as_in_f_linear(rng):
    x, w, b, _ = layer_inputs(rng, 1, 5, 3)
    y = gk.linear(torch.from_numpy(x[0]), torch.from_numpy(w), torch.from_numpy(b), activation="tanh")
    assert y.shape == (3,)
    assert_close(y, torch.tanh(F.linear(*(torch.from_numpy(a) for a in (x[0], w, b)))).numpy(), "float64", "reduction")
