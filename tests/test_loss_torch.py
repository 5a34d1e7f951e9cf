"""gpukernels.torch losses: the autograd Functions and the drop-in modules against torch.nn, every
gradient (input and target), on the reference (CPU tensors) and on the Triton kernels
(interpreter here, GPU where there is one)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

import gpukernels as gk
import gpukernels.torch.functional as GF
import gpukernels.torch.nn as gnn
from _helpers import DTYPES, as_float64, assert_close, torch_dtype
from _loss_cases import REDUCTIONS, torchvision_sigmoid_focal_loss
from conftest import DEVICE

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered:RuntimeWarning")

# (ours, theirs, constructor keywords, inputs are probabilities)
MODULES = [
    (gnn.MSELoss, torch.nn.MSELoss, {}, False),
    (gnn.L1Loss, torch.nn.L1Loss, {}, False),
    (gnn.HuberLoss, torch.nn.HuberLoss, {"delta": 0.4}, False),
    (gnn.SmoothL1Loss, torch.nn.SmoothL1Loss, {"beta": 0.4}, False),
    (gnn.SmoothL1Loss, torch.nn.SmoothL1Loss, {"beta": 0.0}, False),
    (gnn.BCELoss, torch.nn.BCELoss, {"weight": torch.rand(6, dtype=torch.float64) + 0.5}, True),
    (gnn.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss,
     {"weight": torch.rand(6, dtype=torch.float64) + 0.5, "pos_weight": torch.rand(6, dtype=torch.float64) * 3}, False),
]
MODULE_IDS = ["MSELoss", "L1Loss", "HuberLoss", "SmoothL1Loss", "SmoothL1Loss-beta0", "BCELoss", "BCEWithLogitsLoss"]


def _inputs(prob: bool, dtype=torch.float64, device="cpu"):
    x = torch.rand(4, 5, 6, dtype=torch.float64) * 0.9 + 0.05 if prob else torch.randn(4, 5, 6, dtype=torch.float64) * 2
    t = torch.rand(4, 5, 6, dtype=torch.float64)
    return x.to(device, dtype).requires_grad_(), t.to(device, dtype).requires_grad_()


def _grads_of(module, x, t, upstream):
    out = module(x, t)
    return (out, *torch.autograd.grad(out, (x, t), upstream))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ours,theirs,kwargs,prob", MODULES, ids=MODULE_IDS)
def test_module_matches_torch_nn_float64(ours, theirs, kwargs, prob, reduction):
    x, t = _inputs(prob)
    upstream = torch.randn(x.shape if reduction == "none" else (), dtype=torch.float64)
    got = _grads_of(ours(reduction=reduction, **kwargs), x, t, upstream)
    want = _grads_of(theirs(reduction=reduction, **kwargs), x, t, upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ours,theirs,kwargs,prob", MODULES, ids=MODULE_IDS)
def test_module_on_the_triton_kernels(ours, theirs, kwargs, prob, dtype):
    x, t = _inputs(prob, torch_dtype(dtype), DEVICE)
    cast = {k: v.to(DEVICE, torch_dtype(dtype)) for k, v in kwargs.items() if torch.is_tensor(v)}
    module = ours(**{**kwargs, **cast})
    with gk.use_backend("triton"):
        out, gx, gt = _grads_of(module, x, t, torch.tensor(1.0, device=DEVICE, dtype=torch_dtype(dtype)))
    exact = {k: torch.from_numpy(as_float64(v)) if torch.is_tensor(v) else v for k, v in {**kwargs, **cast}.items()}
    x64, t64 = (torch.from_numpy(as_float64(a.detach())).requires_grad_() for a in (x, t))
    want = _grads_of(theirs(**exact), x64, t64, torch.tensor(1.0, dtype=torch.float64))
    assert out.dtype == x.dtype and gx.dtype == x.dtype
    for g, w in zip((out, gx, gt), want):
        assert_close(g, w.detach(), dtype, "reduction")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 1.5), (0.7, 0.0)])
def test_sigmoid_focal_loss_matches_torchvisions_formula(alpha, gamma, reduction):
    x, t = _inputs(False)
    upstream = torch.randn(x.shape if reduction == "none" else (), dtype=torch.float64)
    got = _grads_of(gnn.SigmoidFocalLoss(alpha, gamma, reduction), x, t, upstream)
    want = _grads_of(lambda a, b: torchvision_sigmoid_focal_loss(a, b, alpha, gamma, reduction), x, t, upstream)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert GF.sigmoid_focal_loss(x, t).shape == x.shape  # torchvision's default reduction is "none"


@pytest.mark.parametrize("fn", [GF.mse_loss, GF.l1_loss, GF.huber_loss, GF.smooth_l1_loss,
                                GF.binary_cross_entropy_with_logits, GF.sigmoid_focal_loss],
                         ids=lambda f: f.__name__)
def test_gradcheck_input_and_target(fn):
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    t = torch.rand(3, 7, dtype=torch.float64, requires_grad=True)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(lambda a, b: fn(a, b, reduction=reduction), (x, t))


def test_gradcheck_bce():
    x = (torch.rand(3, 7, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    t = torch.rand(3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.rand(7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: GF.binary_cross_entropy(a, b, w), (x, t))


def test_only_the_gradients_asked_for():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, dtype=torch.float64)
    GF.mse_loss(x, t).backward()
    assert x.grad is not None and t.grad is None
    x = torch.randn(5, dtype=torch.float64)
    t = torch.randn(5, dtype=torch.float64, requires_grad=True)
    GF.l1_loss(x, t).backward()
    torch.testing.assert_close(t.grad, -torch.sign(x - t.detach()) / 5)


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_weights_that_require_grad_are_refused_as_torch_does(name):
    x, t = torch.randn(3, 4), torch.rand(3, 4)
    w = torch.rand(4, requires_grad=True)
    with pytest.raises(ValueError, match=f"not differentiable with respect to {name}"):
        GF.binary_cross_entropy_with_logits(x, t, **{name: w})
    with pytest.raises(RuntimeError, match="not differentiable"):
        F.binary_cross_entropy_with_logits(x, t, **{name: w})


def test_state_dict_moves_between_ours_and_torchs():
    pos_weight = torch.rand(6)
    theirs = torch.nn.BCEWithLogitsLoss(weight=torch.rand(6), pos_weight=pos_weight)
    ours = gnn.BCEWithLogitsLoss(weight=torch.zeros(6), pos_weight=torch.zeros(6))
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys() == {"weight", "pos_weight"}
    x, t = torch.randn(2, 6), torch.rand(2, 6)
    torch.testing.assert_close(ours(x, t), theirs(x, t))
    assert pickle.loads(pickle.dumps(gnn.HuberLoss(delta=0.3))).delta == 0.3


def test_legacy_size_average_and_reduce_map_to_reduction_as_in_torch():
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        ours = gnn.MSELoss(size_average=False)
    with pytest.warns(UserWarning):
        theirs = torch.nn.MSELoss(size_average=False)
    assert ours.reduction == theirs.reduction == "sum"
    assert repr(gnn.L1Loss()) == "L1Loss(reduction='mean')"
