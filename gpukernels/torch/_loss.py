"""Elementwise losses as autograd Functions, one per op, called as ``torch.nn.functional``'s
(and ``torchvision.ops.sigmoid_focal_loss``).

Each Function saves input, target and the weights (the gradients are functions of them) and its
backward makes one pass for every gradient asked for: the input's, the target's (PyTorch
differentiates the target of every one of these losses) or both at once. ``weight`` and
``pos_weight`` get no gradient; like PyTorch we refuse them when they require one.
"""

from __future__ import annotations

import torch

from ..ops import loss as _loss
from ..ops.loss import _smooth_l1


def _save(ctx, loss: str, reduction: str, input, target, weight=None, pos_weight=None, p1=0.0, p2=0.0) -> None:
    ctx.loss, ctx.reduction, ctx.p1, ctx.p2 = loss, reduction, p1, p2
    ctx.save_for_backward(input, target, weight, pos_weight)


def _grads(ctx, grad_output) -> tuple:
    """(grad input, grad target), None where autograd does not need one."""
    x, t, weight, pos_weight = ctx.saved_tensors
    need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_x or need_t):
        return None, None
    need = "both" if need_x and need_t else "input" if need_x else "target"
    grads = _loss.loss_backward(ctx.loss, grad_output.contiguous(), x, t, weight, pos_weight,
                                reduction=ctx.reduction, p1=ctx.p1, p2=ctx.p2, need=need)
    if need == "both":
        return grads
    return (grads, None) if need_x else (None, grads)


def _constant(weight, name: str, op: str) -> None:
    if weight is not None and weight.requires_grad:
        raise ValueError(f"{op} is not differentiable with respect to {name} (as in torch); pass {name} detached")


class _MSELoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, reduction):
        _save(ctx, "mse", reduction, input, target)
        return _loss.mse_loss(input, target, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        return (*_grads(ctx, grad_output), None)


class _L1Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, reduction):
        _save(ctx, "l1", reduction, input, target)
        return _loss.l1_loss(input, target, reduction)

    @staticmethod
    def backward(ctx, grad_output):
        return (*_grads(ctx, grad_output), None)


class _HuberLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, reduction, delta):
        out = _loss.huber_loss(input, target, reduction, delta)
        _save(ctx, "huber", reduction, input, target, p1=float(delta))
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return (*_grads(ctx, grad_output), None, None)


class _SmoothL1Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, reduction, beta):
        out = _loss.smooth_l1_loss(input, target, reduction, beta)
        loss, beta = _smooth_l1(beta)  # beta = 0 is the L1 loss, its gradient included
        _save(ctx, loss, reduction, input, target, p1=beta)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return (*_grads(ctx, grad_output), None, None)


class _BCELoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, reduction):
        out = _loss.binary_cross_entropy(input, target, weight, reduction)
        _save(ctx, "bce", reduction, input, target, weight)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return (*_grads(ctx, grad_output), None, None)


class _BCEWithLogitsLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, reduction, pos_weight):
        out = _loss.binary_cross_entropy_with_logits(input, target, weight, reduction, pos_weight)
        _save(ctx, "bce_logits", reduction, input, target, weight, pos_weight)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return (*_grads(ctx, grad_output), None, None, None)


class _SigmoidFocalLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, targets, alpha, gamma, reduction):
        out = _loss.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction)
        _save(ctx, "focal", reduction, inputs, targets, p1=float(alpha), p2=float(gamma))
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return (*_grads(ctx, grad_output), None, None, None)


# ---------------------------------------------------------------------------------------------
# torch.nn.functional's signatures (size_average/reduce are long deprecated there: not taken)


def mse_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return _MSELoss.apply(input, target, reduction)


def l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return _L1Loss.apply(input, target, reduction)


def huber_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean", delta: float = 1.0) -> torch.Tensor:
    return _HuberLoss.apply(input, target, reduction, delta)


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
                   beta: float = 1.0) -> torch.Tensor:
    return _SmoothL1Loss.apply(input, target, reduction, beta)


def binary_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                         reduction: str = "mean") -> torch.Tensor:
    _constant(weight, "weight", "binary_cross_entropy")
    return _BCELoss.apply(input, target, weight, reduction)


def binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                                     reduction: str = "mean", pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    _constant(weight, "weight", "binary_cross_entropy_with_logits")
    _constant(pos_weight, "pos_weight", "binary_cross_entropy_with_logits")
    return _BCEWithLogitsLoss.apply(input, target, weight, reduction, pos_weight)


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> torch.Tensor:
    """``torchvision.ops.sigmoid_focal_loss`` (note its default reduction, ``"none"``)."""
    return _SigmoidFocalLoss.apply(inputs, targets, alpha, gamma, reduction)
