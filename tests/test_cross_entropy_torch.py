"""gpukernels.torch cross-entropy family: the autograd Functions and the CrossEntropyLoss /
NLLLoss / FocalLoss modules against torch.nn in float64 (the reference, CPU tensors), gradcheck,
the legacy size_average/reduce arguments, state_dict compatibility, and the linear + CE
gradients for every reduction; the same through the Triton kernels (interpreter here)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import gpukernels as gk
import gpukernels.torch.functional as GF
import gpukernels.torch.nn as gnn
from _helpers import assert_close
from conftest import DEVICE

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered:RuntimeWarning")


def _targets(n=6, c=5, extra=()):
    target = torch.randint(0, c, (n, *extra))
    target.view(-1)[0] = -100
    return target


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("extra", [(), (3,)], ids=["N6xC5", "N6xC5x3"])
def test_modules_match_torch_nn_float64(extra, reduction):
    x = torch.randn(6, 5, *extra, dtype=torch.float64, requires_grad=True)
    target = _targets(extra=extra)
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    pairs = [(gnn.CrossEntropyLoss(weight, reduction=reduction, label_smoothing=0.1),
              torch.nn.CrossEntropyLoss(weight, reduction=reduction, label_smoothing=0.1)),
             (gnn.NLLLoss(weight, reduction=reduction), torch.nn.NLLLoss(weight, reduction=reduction))]
    for ours, theirs in pairs:
        a, b = ours(x, target), theirs(x, target)
        upstream = torch.randn_like(a)
        (ga,), (gb,) = torch.autograd.grad(a, x, upstream), torch.autograd.grad(b, x, upstream)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        ours.load_state_dict(theirs.state_dict())


def test_probability_targets_under_autograd():
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(torch.randn(4, 7, dtype=torch.float64), 1)
    a, b = GF.cross_entropy(x, probs, label_smoothing=0.2), TF.cross_entropy(x, probs, label_smoothing=0.2)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0])


def test_legacy_size_average_and_reduce_follow_torch():
    x = torch.randn(4, 3, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 1])
    with pytest.warns(UserWarning):
        ours = gnn.CrossEntropyLoss(size_average=False)
    assert ours.reduction == "sum"
    torch.testing.assert_close(ours(x, target), TF.cross_entropy(x, target, reduction="sum"))
    with pytest.warns(UserWarning):
        torch.testing.assert_close(GF.nll_loss(x, target, reduce=False), TF.nll_loss(x, target, reduction="none"))


def test_gradcheck():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 5, -100, 2])
    alpha = torch.rand(6, dtype=torch.float64) + 0.2
    assert torch.autograd.gradcheck(lambda v: GF.cross_entropy(v, target, label_smoothing=0.3, reduction="none"), (x,))
    assert torch.autograd.gradcheck(lambda v: GF.focal_loss(v, target, 1.5, alpha), (x,))
    assert torch.autograd.gradcheck(lambda v: GF.nll_loss(v, target, reduction="sum"), (x,))


def test_focal_module_and_alpha_buffer():
    alpha = torch.rand(5, dtype=torch.float64)
    module = gnn.FocalLoss(gamma=3.0, alpha=alpha, reduction="sum")
    assert "alpha" in module.state_dict() and "gamma=3.0" in repr(module)
    x, target = torch.randn(6, 5, dtype=torch.float64), _targets()
    torch.testing.assert_close(module(x, target), gk.focal_loss(x, target, 3.0, alpha, reduction="sum"))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_cross_entropy_gradients(reduction):
    h = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, requires_grad=True)
    target = _targets(2, 11, (5,))
    ours = GF.linear_cross_entropy(h, w, target, b, reduction=reduction, label_smoothing=0.1, chunk_size=3)
    theirs = TF.cross_entropy((h @ w.T + b).reshape(-1, 11), target.reshape(-1), reduction=reduction,
                              label_smoothing=0.1)
    theirs = theirs.reshape(2, 5) if reduction == "none" else theirs
    upstream = torch.randn_like(theirs)
    for a, c in zip(torch.autograd.grad(ours, (h, w, b), upstream), torch.autograd.grad(theirs, (h, w, b), upstream)):
        torch.testing.assert_close(a, c)


def test_linear_cross_entropy_only_weight_requires_grad():
    h = torch.randn(6, 4, dtype=torch.float64)
    w = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 9, (6,))
    (g,) = torch.autograd.grad(GF.linear_cross_entropy(h, w, target), (w,))
    w2 = w.detach().clone().requires_grad_()
    (want,) = torch.autograd.grad(TF.cross_entropy(h @ w2.T, target), (w2,))
    torch.testing.assert_close(g, want)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_modules_on_the_triton_kernels(dtype):
    torch_dtype = getattr(torch, dtype)
    x = (torch.randn(8, 33, device=DEVICE) * 2).to(torch_dtype).requires_grad_()
    target = torch.randint(0, 33, (8,), device=DEVICE)
    target[3] = -100
    weight = (torch.rand(33, device=DEVICE) + 0.5).to(torch_dtype)
    with gk.use_backend("triton"):
        loss = gnn.CrossEntropyLoss(weight, label_smoothing=0.1)(x, target)
        loss.backward()
    x64 = x.detach().double().cpu().requires_grad_()
    want = TF.cross_entropy(x64, target.cpu(), weight.double().cpu(), label_smoothing=0.1)
    want.backward()
    assert loss.dtype == torch_dtype
    assert_close(loss, want.detach().numpy(), dtype, "reduction")
    assert_close(x.grad, x64.grad.numpy(), dtype, "reduction")
