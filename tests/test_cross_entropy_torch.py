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


def test_linear_cross_entropy_module_trains_an_lm_head_as_torch_does():
    # The module takes the model's own projection: gradients land on lm_head's parameters.
    torch.manual_seed(3)
    head = torch.nn.Linear(8, 13, dtype=torch.float64)
    twin = torch.nn.Linear(8, 13, dtype=torch.float64)
    twin.load_state_dict(head.state_dict())
    h = torch.randn(7, 8, dtype=torch.float64)
    target = _targets(7, 13)
    loss_fn = gnn.LinearCrossEntropyLoss(label_smoothing=0.2, chunk_size=2)
    ours = loss_fn(h, head.weight, target, head.bias)
    theirs = torch.nn.CrossEntropyLoss(label_smoothing=0.2)(twin(h), target)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(head.weight.grad, twin.weight.grad)
    torch.testing.assert_close(head.bias.grad, twin.bias.grad)
    assert "chunk_size=2" in repr(loss_fn)


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


# ---------------------------------------------------------------------------------------------
# Probability targets that require grad (torch differentiates them)


def _probs(*shape, dtype=torch.float64, device="cpu"):
    return torch.softmax(torch.randn(*shape, dtype=torch.float64), 1 if len(shape) > 1 else 0).to(device, dtype)


@pytest.mark.parametrize("input_grad", [True, False], ids=["input+target", "target-only"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 4), (5,)], ids=lambda s: "N" + "x".join(map(str, s)))
def test_probability_target_gradient_matches_torch_float64(shape, reduction, input_grad):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=input_grad)
    target = _probs(*shape).requires_grad_()
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    options = dict(reduction=reduction, label_smoothing=0.15)
    ours = gnn.CrossEntropyLoss(weight, **options)(x, target)
    theirs = torch.nn.CrossEntropyLoss(weight, **options)(x, target)
    upstream = torch.randn_like(theirs)  # non-uniform for "none"
    leaves = (x, target) if input_grad else (target,)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, leaves, upstream), torch.autograd.grad(theirs, leaves, upstream)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_probability_target_gradcheck():
    x = torch.randn(4, 6, 2, dtype=torch.float64, requires_grad=True)
    target = torch.rand(4, 6, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(6, dtype=torch.float64) + 0.5
    for reduction in ("none", "mean"):
        assert torch.autograd.gradcheck(
            lambda v, t: GF.cross_entropy(v, t, weight, reduction=reduction, label_smoothing=0.3), (x, target))


def _saved_tensors(fn):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = fn()
    return loss, saved


def test_the_forward_saves_the_log_sum_exp_not_a_softmax():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = _probs(6, 5).requires_grad_()
    logits = x * 2  # an intermediate: what is saved keeps it alive
    loss, saved = _saved_tensors(lambda: GF.cross_entropy(logits, target))
    full = [t for t in saved if t.shape == logits.shape]
    rows = [t for t in saved if t.shape == (6,)]
    # the forward's input gradient, the logits and the target (the gradient's formula reads the logits
    # and the log-sum-exp only); no softmax
    assert len(full) == 3 and any(t is logits for t in full) and any(t is target for t in full)
    assert len(rows) == 1 and rows[0].dtype == torch.float64
    torch.testing.assert_close(rows[0], torch.logsumexp(logits, 1))
    _, saved_input_only = _saved_tensors(lambda: GF.cross_entropy(logits, target.detach()))
    assert not any(t is logits for t in saved_input_only)  # the fused forward frees the logits


def test_the_target_gradient_comes_from_the_kept_log_sum_exp(monkeypatch):
    # the backward op receives the forward's log-sum-exp rather than sweeping the rows again
    import gpukernels.torch._cross_entropy as tce_torch

    seen = []
    original = tce_torch._ce.cross_entropy_target_backward
    monkeypatch.setattr(tce_torch._ce, "cross_entropy_target_backward",
                        lambda *a: (seen.append(a[-1]), original(*a))[1])
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    target = _probs(3, 4).requires_grad_()
    GF.cross_entropy(x, target, reduction="sum").backward()
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (3,)
    torch.testing.assert_close(target.grad, -torch.log_softmax(x.detach(), 1))


def test_class_weights_of_class_index_targets_that_require_grad_are_refused():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    index_target = torch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="weight requires grad.*no gradient to the class weights of class-index"):
        GF.cross_entropy(x, index_target, weight)
    with pytest.raises(RuntimeError, match="weight requires grad"):
        GF.nll_loss(x, index_target, weight)
    with pytest.raises(RuntimeError, match="alpha requires grad"):
        GF.focal_loss(x, index_target, alpha=weight)
    with pytest.raises(RuntimeError):  # torch refuses it for class indices too
        TF.cross_entropy(x, index_target, weight).backward()
    with torch.no_grad():  # no graph, nothing to refuse
        GF.cross_entropy(x, _probs(4, 5), weight)


def test_linear_cross_entropy_refuses_probability_targets():
    h, w = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(TypeError, match="target has floating-point dtype float32 but linear_cross_entropy needs "
                                        "class indices"):
        GF.linear_cross_entropy(h, w, torch.softmax(torch.randn(4, 5), 1).requires_grad_())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_probability_target_gradient_on_the_triton_kernels(dtype):
    torch_dtype = getattr(torch, dtype)
    x = (torch.randn(5, 3, 33, device=DEVICE) * 2).to(torch_dtype).requires_grad_()
    target = _probs(5, 3, 33, dtype=torch_dtype, device=DEVICE).requires_grad_()
    weight = (torch.rand(3, device=DEVICE) + 0.5).to(torch_dtype)
    upstream = torch.randn(5, 33, device=DEVICE).to(torch_dtype)
    with gk.use_backend("triton"):
        loss = gnn.CrossEntropyLoss(weight, label_smoothing=0.1, reduction="none")(x, target)
        loss.backward(upstream)
    x64, t64 = (a.detach().double().cpu().requires_grad_() for a in (x, target))
    want = TF.cross_entropy(x64, t64, weight.double().cpu(), label_smoothing=0.1, reduction="none")
    want.backward(upstream.double().cpu())
    assert_close(loss, want.detach().numpy(), dtype, "reduction")
    assert_close(x.grad, x64.grad.numpy(), dtype, "reduction")
    assert target.grad.dtype == torch_dtype
    assert_close(target.grad, t64.grad.numpy(), dtype, "reduction")


def test_probability_target_gradient_under_torch_compile():
    compiled = torch.compile(lambda v, t: GF.cross_entropy(v, t, reduction="none", label_smoothing=0.1),
                             fullgraph=True)
    x = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 5, 2, dtype=torch.float64, requires_grad=True)
    loss = compiled(x, target)
    upstream = torch.randn_like(loss)
    want = TF.cross_entropy(x, target, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(loss, want)
    for a, b in zip(torch.autograd.grad(loss, (x, target), upstream), torch.autograd.grad(want, (x, target), upstream)):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# Class weights that require grad, with probability targets (torch differentiates them)


@pytest.mark.parametrize("leaves", ["weight", "weight+input", "all"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, 5), (3, 5, 4), (2, 5, 3, 2), (5,)], ids=lambda s: "N" + "x".join(map(str, s)))
def test_class_weight_gradient_matches_torch_float64(shape, reduction, leaves):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=leaves != "weight")
    target = _probs(*shape).requires_grad_(leaves == "all")
    weight = torch.nn.Parameter(torch.rand(5, dtype=torch.float64) + 0.5)
    options = dict(reduction=reduction, label_smoothing=0.15)
    ours = gnn.CrossEntropyLoss(weight, **options)(x, target)
    theirs = torch.nn.CrossEntropyLoss(weight, **options)(x, target)
    upstream = torch.randn_like(theirs)  # non-uniform for "none"
    wanted = [t for t in (weight, x, target) if t.requires_grad]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, wanted, upstream), torch.autograd.grad(theirs, wanted, upstream)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_class_weight_gradcheck_and_a_training_step():
    x = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
    target = torch.rand(4, 6, 3, dtype=torch.float64)
    weight = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(
            lambda v, w: GF.cross_entropy(v, target, w, reduction=reduction, label_smoothing=0.3), (x, weight))
    # the module's weight as a Parameter: .backward() fills its .grad as torch's does
    ours, theirs = gnn.CrossEntropyLoss(torch.nn.Parameter(weight.detach().clone())), torch.nn.CrossEntropyLoss(
        torch.nn.Parameter(weight.detach().clone()))
    ours(x.detach(), target).backward()
    theirs(x.detach(), target).backward()
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-10, atol=1e-12)


def test_the_class_weight_gradient_comes_from_the_kept_log_sum_exp(monkeypatch):
    import gpukernels.torch._cross_entropy as tce_torch

    seen = []
    original = tce_torch._ce.cross_entropy_weight_backward
    monkeypatch.setattr(tce_torch._ce, "cross_entropy_weight_backward",
                        lambda *a: (seen.append(a[-1]), original(*a))[1])
    x = torch.randn(3, 4, dtype=torch.float64)
    target = _probs(3, 4)
    weight = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    GF.cross_entropy(x, target, weight, reduction="sum").backward()
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (3,)
    torch.testing.assert_close(weight.grad, -(target * torch.log_softmax(x, 1)).sum(0))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_class_weight_gradient_on_the_triton_kernels(dtype):
    torch_dtype = getattr(torch, dtype)
    x = (torch.randn(5, 3, 33, device=DEVICE) * 2).to(torch_dtype).requires_grad_()
    target = _probs(5, 3, 33, dtype=torch_dtype, device=DEVICE)
    weight = (torch.rand(3, device=DEVICE) + 0.5).to(torch_dtype).requires_grad_()
    upstream = torch.randn(5, 33, device=DEVICE).to(torch_dtype)
    with gk.use_backend("triton"):
        loss = gnn.CrossEntropyLoss(weight, label_smoothing=0.1, reduction="none")(x, target)
        loss.backward(upstream)
    x64, w64 = (a.detach().double().cpu().requires_grad_() for a in (x, weight))
    want = TF.cross_entropy(x64, target.double().cpu(), w64, label_smoothing=0.1, reduction="none")
    want.backward(upstream.double().cpu())
    assert_close(x.grad, x64.grad.numpy(), dtype, "reduction")
    assert weight.grad.dtype == torch_dtype and weight.grad.shape == (3,)
    assert_close(weight.grad, w64.grad.numpy(), dtype, "reduction")


def test_class_weight_gradient_under_torch_compile():
    compiled = torch.compile(lambda v, t, w: GF.cross_entropy(v, t, w, reduction="mean", label_smoothing=0.1),
                             fullgraph=True)
    x = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 5, 2, dtype=torch.float64)
    weight = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()
    loss = compiled(x, target, weight)
    want = TF.cross_entropy(x, target, weight, reduction="mean", label_smoothing=0.1)
    torch.testing.assert_close(loss, want)
    for a, b in zip(torch.autograd.grad(loss, (x, weight)), torch.autograd.grad(want, (x, weight))):
        torch.testing.assert_close(a, b)
