"""gpukernels.torch: autograd Functions and nn modules against torch.nn, every gradient, on the
reference (CPU tensors) and on the Triton kernels (interpreter here, GPU where there is one)."""

from __future__ import annotations

import pytest
import torch

import gpukernels as gk
import gpukernels.torch.functional as GF
import gpukernels.torch.nn as gnn
from _helpers import DTYPES, as_float64, assert_close, torch_dtype
from conftest import DEVICE
from gpukernels.reference import activation as ref

MODULES = [
    (gnn.Sigmoid(), torch.nn.Sigmoid()),
    (gnn.Tanh(), torch.nn.Tanh()),
    (gnn.ReLU(), torch.nn.ReLU()),
    (gnn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
    (gnn.GELU(), torch.nn.GELU()),
    (gnn.GELU(approximate="tanh"), torch.nn.GELU(approximate="tanh")),
]
MODULE_IDS = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu_tanh"]


@pytest.mark.parametrize("ours,theirs", MODULES, ids=MODULE_IDS)
def test_module_matches_torch_nn_float64(ours, theirs):
    x = (torch.randn(9, 13, dtype=torch.float64) * 3).requires_grad_()
    upstream = torch.randn(9, 13, dtype=torch.float64)
    y = ours(x)
    (g,) = torch.autograd.grad(y, x, upstream)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = theirs(x_ref)
    (g_ref,) = torch.autograd.grad(y_ref, x_ref, upstream)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ours,theirs", MODULES, ids=MODULE_IDS)
def test_gradcheck(ours, theirs):
    x = (torch.randn(20, dtype=torch.float64) * 2 + 0.05).requires_grad_()
    assert torch.autograd.gradcheck(ours, (x,))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ours,act", [(m[0], name) for m, name in zip(MODULES, MODULE_IDS)], ids=MODULE_IDS)
def test_module_on_triton_matches_the_reference(ours, act, dtype):
    x = (torch.randn(5, 301, device=DEVICE) * 3).to(torch_dtype(dtype)).requires_grad_()
    upstream = torch.randn(5, 301, device=DEVICE).to(torch_dtype(dtype))
    with gk.use_backend("triton"):
        y = ours(x)
        (g,) = torch.autograd.grad(y, x, upstream)
    assert y.dtype == x.dtype and g.dtype == x.dtype
    slope = 0.2  # the LeakyReLU above
    x64, upstream64 = as_float64(x), as_float64(upstream)
    assert_close(y, ref.forward(x64, act, slope), dtype)
    # sigmoid and tanh differentiate through their saved (rounded) output, as torch does
    saved64 = as_float64(y) if act in ("sigmoid", "tanh") else x64
    assert_close(g, ref.backward(upstream64, saved64, act, slope), dtype)


@pytest.mark.parametrize("ours,theirs", [(gnn.ReLU(inplace=True), torch.nn.ReLU(inplace=True)),
                                         (gnn.LeakyReLU(0.1, inplace=True), torch.nn.LeakyReLU(0.1, inplace=True))],
                         ids=["relu", "leaky_relu"])
def test_inplace_modules_match_torch(ours, theirs):
    base = torch.randn(50, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(50, dtype=torch.float64)
    x = base * 1.0  # a non-leaf, as in-place activations need
    y = ours(x)
    assert y is x  # modified in place, like torch
    (g,) = torch.autograd.grad(y, base, upstream)
    base_ref = base.detach().clone().requires_grad_()
    x_ref = base_ref * 1.0
    (g_ref,) = torch.autograd.grad(theirs(x_ref), base_ref, upstream)
    torch.testing.assert_close(x.detach(), x_ref.detach())
    torch.testing.assert_close(g, g_ref)


def test_inplace_with_negative_slope_is_rejected():
    with pytest.raises(ValueError, match="negative_slope >= 0"):
        GF.leaky_relu(torch.randn(3), -0.5, inplace=True)


def test_state_dict_and_repr_match_torch():
    assert gnn.GELU("tanh").state_dict().keys() == torch.nn.GELU("tanh").state_dict().keys()
    assert repr(gnn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(gnn.GELU(approximate="tanh")) == "GELU(approximate='tanh')"


def test_bad_approximation_is_rejected_before_running():
    with pytest.raises(ValueError, match="approximate must be one of"):
        GF.gelu(torch.randn(2), approximate="fast")


def test_outputs_are_poisoned_before_each_test():
    # the conftest fixture is what makes unwritten output elements visible; make sure it works
    assert torch.isnan(torch.empty(8)).all()
