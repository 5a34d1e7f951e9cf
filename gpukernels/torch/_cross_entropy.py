"""Cross-entropy family as autograd Functions, one small Function per op.

Cross-entropy and focal loss compute the input gradient in the forward kernel when the input
requires grad (the loss as the last consumer of the logits), into a buffer of their own, saved
for backward instead of the logits; backward multiplies it by the upstream gradient (per row for
``reduction="none"``, so a non-uniform upstream gradient is exact). An input that does not
require grad gets no gradient kernel work at all. Targets and class weights get no gradient
(as for torch's class-index targets; probability targets are treated as constants too).

The linear + cross-entropy saves its three gradients the same way for "mean" and "sum"; for
"none" a row's share of the weight gradient depends on its upstream gradient, so backward
recomputes the logits chunk by chunk instead.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn import _reduction

from ..ops import cross_entropy as _ce


def _unit_gradient_times(grad: torch.Tensor, grad_output: torch.Tensor, reduction: str, axis: int) -> torch.Tensor:
    """``grad`` (the gradient for an upstream gradient of 1) times the actual upstream gradient."""
    if reduction == "none":
        grad_output = grad_output.unsqueeze(axis)
    return grad * grad_output.to(grad.dtype)


class _FusedRowLoss(torch.autograd.Function):
    """cross_entropy ("cross_entropy_forward", class weights ``weight``) and focal_loss
    ("focal_loss_forward", class weights ``alpha``)."""

    @staticmethod
    def forward(ctx, input, target, weight, forward_name, arguments, grad_enabled):
        # needs_input_grad says True under torch.no_grad() too: the caller's grad mode decides
        compute_grad = ctx.needs_input_grad[0] and grad_enabled
        weight_name = "alpha" if forward_name == "focal_loss_forward" else "weight"
        loss, grad = getattr(_ce, forward_name)(input, target, compute_grad=compute_grad, **{weight_name: weight},
                                                **arguments)
        ctx.reduction, ctx.axis = arguments["reduction"], _ce.class_axis(input)
        ctx.save_for_backward(grad if compute_grad else None)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None, None
        return _unit_gradient_times(grad, grad_output, ctx.reduction, ctx.axis), None, None, None, None, None


class _NllLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction):
        loss = _ce.nll_loss(input, target, weight, ignore_index, reduction)
        ctx.save_for_backward(input, target, weight)
        ctx.ignore_index, ctx.reduction = ignore_index, reduction
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, target, weight = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            grad = _ce.nll_loss_backward(grad_output.to(input.dtype).contiguous(), input, target, weight,
                                         ctx.ignore_index, ctx.reduction)
        return grad, None, None, None, None


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, target, bias, arguments, grad_enabled):
        ctx.reduction = arguments["reduction"]
        ctx.arguments = arguments
        wanted = grad_enabled and any(ctx.needs_input_grad[i] for i in (0, 1, 3))
        if wanted and ctx.reduction != "none":
            loss, *grads = _ce.linear_cross_entropy_forward(input, weight, target, bias, compute_grad=True,
                                                            **arguments)
            ctx.save_for_backward(*grads)
            ctx.saved_gradients = True
        else:
            loss = _ce.linear_cross_entropy(input, weight, target, bias, **arguments)
            ctx.save_for_backward(input, weight, target, bias)
            ctx.saved_gradients = False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if ctx.saved_gradients:
            grads = [None if g is None else g * grad_output.to(g.dtype) for g in ctx.saved_tensors]
        else:
            input, weight, target, bias = ctx.saved_tensors
            grads = _ce.linear_cross_entropy_backward(grad_output.to(input.dtype).contiguous(), input, weight, target,
                                                      bias, **ctx.arguments)
        grad_input, grad_weight, grad_bias = grads
        needs = ctx.needs_input_grad
        return (grad_input if needs[0] else None, grad_weight if needs[1] else None, None,
                grad_bias if needs[3] else None, None, None)


def _legacy(size_average, reduce, reduction: str) -> str:
    """torch's rule for the deprecated ``size_average``/``reduce`` arguments (with its warning)."""
    if size_average is not None or reduce is not None:
        return _reduction.legacy_get_string(size_average, reduce)
    return reduction


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average=None, ignore_index: int = -100, reduce=None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """``torch.nn.functional.cross_entropy``: same arguments (legacy ones included)."""
    arguments = dict(ignore_index=ignore_index, reduction=_legacy(size_average, reduce, reduction),
                     label_smoothing=label_smoothing)
    return _FusedRowLoss.apply(input, target, weight, "cross_entropy_forward", arguments, torch.is_grad_enabled())


def nll_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, size_average=None,
             ignore_index: int = -100, reduce=None, reduction: str = "mean") -> torch.Tensor:
    """``torch.nn.functional.nll_loss``: same arguments (legacy ones included)."""
    return _NllLoss.apply(input, target, weight, ignore_index, _legacy(size_average, reduce, reduction))


def focal_loss(input: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: torch.Tensor | None = None,
               ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Multi-class focal loss on softmax probabilities (see ``gpukernels.focal_loss``)."""
    arguments = dict(gamma=gamma, ignore_index=ignore_index, reduction=reduction)
    return _FusedRowLoss.apply(input, target, alpha, "focal_loss_forward", arguments, torch.is_grad_enabled())


def linear_cross_entropy(input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         bias: torch.Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                         label_smoothing: float = 0.0, chunk_size: int | None = None) -> torch.Tensor:
    """``cross_entropy(input @ weight.T + bias, target)`` without materialising the logits."""
    arguments = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                     chunk_size=chunk_size)
    return _LinearCrossEntropy.apply(input, weight, target, bias, arguments, torch.is_grad_enabled())
