"""Elementwise losses as PyTorch operators (``torch.ops.gpukernels.mse_loss``, ``l1_loss``,
``huber_loss``, ``smooth_l1_loss``, ``binary_cross_entropy``, ``binary_cross_entropy_with_logits``,
``sigmoid_focal_loss``, and one ``elementwise_loss_backward`` for all, see ``_library``), called
as ``torch.nn.functional``'s (and ``torchvision.ops.sigmoid_focal_loss``).

Each forward saves input, target and the weights (the gradients are functions of them); the
backward op makes one pass for every gradient asked for: the input's, the target's (PyTorch
differentiates the target of every one of these losses) or both at once. ``weight`` and
``pos_weight`` get no gradient; like PyTorch we refuse them when they require one.

Checks: the wrappers check what does not depend on the data (shapes, dtypes, the reduction,
delta, beta), so a bad option fails at trace time under ``torch.compile``; the ops check the
data: ``binary_cross_entropy``'s inputs and targets must lie in [0, 1], which reads them, so it
runs when the op runs (as in torch).

Autocast (torch's lists, aten/src/ATen/autocast_mode.cpp): every one of these losses is a
float32 op on the CPU and on CUDA, except ``binary_cross_entropy``, which torch bans under CUDA
autocast (an error that points to the logits form) and runs in float32 under CPU autocast. The
sigmoid focal loss is torchvision's composite around ``binary_cross_entropy_with_logits``
(float32), so its loss comes out in float32 as well.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import loss as _loss
from ._library import FLOAT32, autocast, autocast_inputs, empty, fresh, fresh_all, op, present

# The kernel's name for each loss (``reference.loss.LOSSES``), keyed by our op's name.
_KERNEL = {"mse_loss": "mse", "l1_loss": "l1", "huber_loss": "huber", "smooth_l1_loss": "smooth_l1",
           "binary_cross_entropy": "bce", "binary_cross_entropy_with_logits": "bce_logits",
           "sigmoid_focal_loss": "focal"}


@op("mse_loss")
def _mse(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    return fresh(_loss.mse_loss(input, target, reduction), input, target)


@op("l1_loss")
def _l1(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    return fresh(_loss.l1_loss(input, target, reduction), input, target)


@op("huber_loss")
def _huber(input: Tensor, target: Tensor, reduction: str, delta: float) -> Tensor:
    return fresh(_loss.huber_loss(input, target, reduction, delta), input, target)


@op("smooth_l1_loss")
def _smooth_l1(input: Tensor, target: Tensor, reduction: str, beta: float) -> Tensor:
    return fresh(_loss.smooth_l1_loss(input, target, reduction, beta), input, target)


@op("binary_cross_entropy")
def _bce(input: Tensor, target: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    # checks that input and target lie in [0, 1]: a read of the data, so here and not in the wrapper
    return fresh(_loss.binary_cross_entropy(input, target, weight, reduction), input, target, weight)


@op("binary_cross_entropy_with_logits")
def _bce_logits(input: Tensor, target: Tensor, weight: Tensor | None, pos_weight: Tensor | None,
                reduction: str) -> Tensor:
    return fresh(_loss.binary_cross_entropy_with_logits(input, target, weight, reduction, pos_weight),
                 input, target, weight, pos_weight)


@op("sigmoid_focal_loss")
def _focal(inputs: Tensor, targets: Tensor, alpha: float, gamma: float, reduction: str) -> Tensor:
    return fresh(_loss.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction), inputs, targets)


@op("elementwise_loss_backward")
def _loss_backward(loss: str, grad_output: Tensor, input: Tensor, target: Tensor, weight: Tensor | None,
                   pos_weight: Tensor | None, reduction: str, p1: float, p2: float, need_input: bool,
                   need_target: bool) -> tuple[Tensor, Tensor]:
    """(grad input, grad target) of ``loss`` (a name of ``reference.loss.LOSSES``); an empty
    placeholder for a gradient not asked for."""
    need = "both" if need_input and need_target else "input" if need_input else "target"
    grads = _loss.loss_backward(loss, grad_output.contiguous(), input, target, weight, pos_weight,
                                reduction=reduction, p1=p1, p2=p2, need=need)
    grads = grads if need == "both" else (grads, None) if need == "input" else (None, grads)
    return fresh_all(grads, grad_output, input, target, weight, pos_weight)


def _fake_loss(input, target, *args):
    reduction = next(a for a in args if isinstance(a, str))
    return empty(input, () if reduction != "none" else None)


for _op in (_mse, _l1, _huber, _smooth_l1, _bce, _bce_logits, _focal):
    _op.register_fake(_fake_loss)


@_loss_backward.register_fake
def _(loss, grad_output, input, target, weight, pos_weight, reduction, p1, p2, need_input, need_target):
    return (empty(input) if need_input else input.new_empty(0)), (empty(target) if need_target else target.new_empty(0))


# Autograd: every forward saves (input, target, weight, pos_weight) and the kernel's parameters.


def _setup(ctx, name: str, input, target, weight=None, pos_weight=None, reduction="mean", p1=0.0, p2=0.0) -> None:
    ctx.loss, ctx.reduction, ctx.p1, ctx.p2 = _KERNEL[name], reduction, float(p1), float(p2)
    if name == "smooth_l1_loss":  # beta = 0 is the L1 loss, its gradient included
        ctx.loss, ctx.p1 = _loss._smooth_l1(p1)
    ctx.save_for_backward(input, target, weight, pos_weight)


def _gradients(ctx, grad_output) -> tuple:
    """(grad input, grad target), None where autograd does not need one."""
    x, t, weight, pos_weight = ctx.saved_tensors
    need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_t):
        return None, None
    grads = _loss_backward(ctx.loss, grad_output, x, t, weight, pos_weight, ctx.reduction, ctx.p1, ctx.p2,
                           need_x, need_t)
    return present(grads, (x if need_x else None, t if need_t else None))


# The parameters' names in the kernel's terms (torchvision names the focal loss's tensors in plural).
_KERNEL_ARGUMENT = {"delta": "p1", "beta": "p1", "alpha": "p1", "gamma": "p2", "inputs": "input", "targets": "target"}


def _setup_context(custom):
    """``setup_context`` for the forward op ``custom``: its arguments passed to ``_setup`` by name."""
    schema = custom._opoverload._schema
    names = [_KERNEL_ARGUMENT.get(a.name, a.name) for a in schema.arguments]
    op_name = schema.name.split("::")[1]
    return lambda ctx, inputs, output: _setup(ctx, op_name, **dict(zip(names, inputs, strict=True)))


for _op in (_mse, _l1, _huber, _smooth_l1, _bce, _bce_logits, _focal):
    _arity = len(_op._opoverload._schema.arguments)
    _op.register_autograd(lambda ctx, g, _n=_arity: (*_gradients(ctx, g), *(None,) * (_n - 2)),
                          setup_context=_setup_context(_op))

_FLOAT32 = {"cpu": FLOAT32, "cuda": FLOAT32}
_BCE_AUTOCAST = {"cpu": FLOAT32}  # and refused on CUDA, below
for _op in (_mse, _l1, _huber, _smooth_l1, _bce_logits, _focal):
    autocast(_op, **_FLOAT32)
autocast(_bce, **_BCE_AUTOCAST)


def _refuse_bce_under_cuda_autocast(_keyset, *args):
    raise RuntimeError(
        "gpukernels binary_cross_entropy (torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss too) is "
        "unsafe to autocast, as torch says: a sigmoid before it in float16 rounds probabilities to 0 or 1. Use "
        "binary_cross_entropy_with_logits / BCEWithLogitsLoss, which fuse the sigmoid and are safe under autocast.")


# torch bans binary_cross_entropy under CUDA autocast; our op's autocast kernel does the same.
_ban_library = torch.library.Library("gpukernels", "IMPL")
_ban_library.impl("binary_cross_entropy", _refuse_bce_under_cuda_autocast, "AutocastCUDA", with_keyset=True)


# ---------------------------------------------------------------------------------------------
# torch.nn.functional's signatures (size_average/reduce are long deprecated there: not taken).
# The checks here do not read the data: they run at trace time under torch.compile.


def _check(input, target, reduction, weight=None, pos_weight=None, policies=_FLOAT32) -> str:
    # the dtype checks see the tensors as the op's autocast rule will cast them
    input, target, weight, pos_weight = autocast_inputs(policies, input, target, weight, pos_weight)
    _loss._check_pair(input, target)
    _loss._check_weight(input, weight, "weight")
    _loss._check_weight(input, pos_weight, "pos_weight")
    return _loss._reduction(reduction)


def _constant(weight, name: str, op: str) -> None:
    if weight is not None and weight.requires_grad:
        raise ValueError(f"{op} is not differentiable with respect to {name} (as in torch); pass {name} detached")


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return _mse(input, target, _check(input, target, reduction))


def l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return _l1(input, target, _check(input, target, reduction))


def huber_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean", delta: float = 1.0) -> torch.Tensor:
    return _huber(input, target, _check(input, target, reduction), _loss._delta(delta))


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                   beta: float = 1.0) -> torch.Tensor:
    reduction = _check(input, target, reduction)
    _loss._smooth_l1(beta)
    return _smooth_l1(input, target, reduction, float(beta))


def binary_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                         reduction: str = "mean") -> torch.Tensor:
    _constant(weight, "weight", "binary_cross_entropy")
    return _bce(input, target, weight, _check(input, target, reduction, weight, policies=_BCE_AUTOCAST))


def binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                                     reduction: str = "mean", pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    _constant(weight, "weight", "binary_cross_entropy_with_logits")
    _constant(pos_weight, "pos_weight", "binary_cross_entropy_with_logits")
    return _bce_logits(input, target, weight, pos_weight, _check(input, target, reduction, weight, pos_weight))


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> torch.Tensor:
    """``torchvision.ops.sigmoid_focal_loss`` (note its default reduction, ``"none"``)."""
    reduction = _check(inputs, targets, reduction)
    alpha, gamma = _loss._focal(alpha, gamma)
    return _focal(inputs, targets, alpha, gamma, reduction)
