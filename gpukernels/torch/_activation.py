"""Activations as autograd Functions: one ``torch.autograd.Function`` per op, each saving the least
its backward needs (sigmoid and tanh their output, relu, leaky_relu and gelu their input)."""

from __future__ import annotations

import torch

from ..ops._checks import check_choice, check_real_number
from ..ops import activation as _act


class _OutputSaving(torch.autograd.Function):
    """sigmoid and tanh: the derivative is a function of the output, so only y is saved."""

    @staticmethod
    def forward(ctx, x, op):
        y = getattr(_act, op)(x)
        ctx.save_for_backward(y)
        ctx.op = op
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return getattr(_act, f"{ctx.op}_backward")(grad_output.contiguous(), y), None


class _LeakyReLU(torch.autograd.Function):
    """ReLU is the slope-0 case. In place, the input is overwritten by the output, which
    backward then reads instead: for a slope >= 0 both have the same sign, so the mask agrees."""

    @staticmethod
    def forward(ctx, x, negative_slope, inplace):
        y = _act.leaky_relu(x, negative_slope) if negative_slope else _act.relu(x)
        if inplace:
            ctx.mark_dirty(x)
            y = x.copy_(y)
        ctx.save_for_backward(y if inplace else x)
        ctx.negative_slope = negative_slope
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (saved,) = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        if ctx.negative_slope:
            grad = _act.leaky_relu_backward(grad_output, saved, ctx.negative_slope)
        else:
            grad = _act.relu_backward(grad_output, saved)
        return grad, None, None


class _GELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, approximate):
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return _act.gelu(x, approximate)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return _act.gelu_backward(grad_output.contiguous(), x, ctx.approximate), None


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    return _OutputSaving.apply(input, "sigmoid")


def tanh(input: torch.Tensor) -> torch.Tensor:
    return _OutputSaving.apply(input, "tanh")


def _check_inplace(input: torch.Tensor, negative_slope: float, inplace: bool) -> None:
    if inplace and negative_slope < 0:
        raise ValueError("inplace=True needs negative_slope >= 0: backward reads the output in place of the input")


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _LeakyReLU.apply(input, 0.0, inplace)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    slope = check_real_number(negative_slope, "negative_slope")
    _check_inplace(input, slope, inplace)
    return _LeakyReLU.apply(input, slope, inplace)


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    check_choice(approximate, "approximate", _act.GELU_APPROXIMATIONS)
    return _GELU.apply(input, approximate)


