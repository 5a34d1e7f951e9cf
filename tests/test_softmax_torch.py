"""gpukernels.torch softmax: autograd Functions and the Softmax/LogSoftmax modules against
torch.nn, every gradient, on the reference (CPU tensors) and on the Triton kernels
(interpreter here, GPU where there is one)."""

from __future__ import annotations

import pickle

import pytest
import torch

import gpukernels as gk
import gpukernels.torch.functional as GF
import gpukernels.torch.nn as gnn
from _helpers import DTYPES, as_float64, assert_close, torch_dtype
from conftest import DEVICE
from gpukernels.reference import softmax as ref

MODULES = [(gnn.Softmax, torch.nn.Softmax), (gnn.LogSoftmax, torch.nn.LogSoftmax)]
MODULE_IDS = ["Softmax", "LogSoftmax"]

# The interpreter evaluates masked-off lanes (rows past the end) too and NumPy warns about them.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("ours,theirs", MODULES, ids=MODULE_IDS)
def test_module_matches_torch_nn_float64(ours, theirs, dim):
    x = (torch.randn(4, 5, 6, dtype=torch.float64) * 1e4).requires_grad_()
    upstream = torch.randn(4, 5, 6, dtype=torch.float64)
    y = ours(dim)(x)
    (g,) = torch.autograd.grad(y, x, upstream)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = theirs(dim)(x_ref)
    (g_ref,) = torch.autograd.grad(y_ref, x_ref, upstream)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn", [GF.softmax, GF.log_softmax], ids=["softmax", "log_softmax"])
def test_gradcheck(fn):
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fn(t, 1), (x,))
    assert torch.autograd.gradcheck(lambda t: fn(t, 0), (x,))


def test_masked_softmax_gradcheck_and_zero_gradient_on_masked_rows():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 6) > 0.4
    mask[1] = False
    mask[2, 0] = True
    assert torch.autograd.gradcheck(lambda t: GF.masked_softmax(t, mask), (x,))
    y = GF.masked_softmax(x, mask)
    (g,) = torch.autograd.grad(y, x, torch.randn(4, 6, dtype=torch.float64))
    assert (g[~mask] == 0).all() and (g[1] == 0).all()
    lengths = torch.tensor([6, 0, 3, 1])
    assert torch.autograd.gradcheck(lambda t: GF.masked_softmax(t, lengths=lengths), (x,))


@pytest.mark.parametrize("ndim,implicit", [(1, 0), (2, 1), (3, 0), (4, 1)])
@pytest.mark.parametrize("ours,theirs", MODULES, ids=MODULE_IDS)
def test_implicit_dim_matches_torch_and_warns(ours, theirs, ndim, implicit):
    x = torch.randn(*[3] * ndim, dtype=torch.float64)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        y = ours()(x)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        y_ref = theirs()(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(y, theirs(implicit)(x))


def test_functional_dtype_argument_casts_first_like_torch():
    x = torch.randn(3, 5, dtype=torch.float32)
    y = GF.softmax(x, 1, dtype=torch.float64)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, torch.nn.functional.softmax(x, 1, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_triton_autograd_matches_the_reference(name, dtype):
    x = (torch.randn(5, 301, device=DEVICE) * 3).to(torch_dtype(dtype)).requires_grad_()
    upstream = torch.randn(5, 301, device=DEVICE).to(torch_dtype(dtype))
    with gk.use_backend("triton"):
        y = getattr(GF, name)(x, -1)
        (g,) = torch.autograd.grad(y, x, upstream)
    assert y.dtype == x.dtype and g.dtype == x.dtype
    assert_close(y, getattr(ref, name)(as_float64(x), 1), dtype, "reduction")
    # the gradient comes from the saved (rounded) output, as in torch
    assert_close(g, getattr(ref, f"{name}_backward")(as_float64(upstream), as_float64(y), 1), dtype, "reduction")


def test_triton_masked_softmax_autograd():
    x = torch.randn(6, 40, device=DEVICE).requires_grad_()
    mask = torch.rand(6, 40, device=DEVICE) > 0.5
    mask[3] = False
    upstream = torch.randn(6, 40, device=DEVICE)
    with gk.use_backend("triton"):
        y = GF.masked_softmax(x, mask)
        (g,) = torch.autograd.grad(y, x, upstream)
    assert not torch.isnan(g).any() and (g[~mask] == 0).all()
    assert_close(g, ref.softmax_backward(as_float64(upstream), as_float64(y), 1), "float32", "reduction")


def test_non_contiguous_upstream_gradient():
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 7, dtype=torch.float64).t()  # not contiguous
    (g,) = torch.autograd.grad(GF.softmax(x, 0), x, upstream)
    x_ref = x.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(torch.softmax(x_ref, 0), x_ref, upstream)
    torch.testing.assert_close(g, g_ref)


def test_repr_state_dict_and_pickle_match_torch():
    assert repr(gnn.Softmax(dim=1)) == repr(torch.nn.Softmax(dim=1)) == "Softmax(dim=1)"
    assert repr(gnn.LogSoftmax()) == "LogSoftmax(dim=None)"
    assert gnn.Softmax(1).state_dict().keys() == torch.nn.Softmax(1).state_dict().keys()
    restored = pickle.loads(pickle.dumps(gnn.LogSoftmax(dim=-1)))
    assert restored.dim == -1


def test_bad_dim_is_rejected_before_running():
    with pytest.raises(ValueError, match="dim 2 out of range"):
        GF.softmax(torch.randn(2, 3), 2)
