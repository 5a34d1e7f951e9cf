"""The fused dense layer as an autograd Function: ``linear(input, weight, bias=None, *,
activation=None, negative_slope=0.01)`` = act(F.linear(input, weight, bias)).

It saves the input, the weight and what the backward's activation derivative needs (see
gpukernels/ops/linear.py): the output for sigmoid, tanh, relu and leaky_relu (slope >= 0), the
derivative act'(z) for gelu and gelu_tanh, nothing without an activation. The backward skips the
gradients autograd does not need (ATen's ``output_mask``)."""

from __future__ import annotations

import torch

from ..ops import linear as _lin


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, activation, negative_slope):
        output, saved = _lin.linear(input, weight, bias, activation=activation, negative_slope=negative_slope,
                                    return_saved=True)
        ctx.save_for_backward(input, weight, saved)
        ctx.activation, ctx.negative_slope, ctx.has_bias = activation, negative_slope, bias is not None
        return output

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, saved = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = (needs[0], needs[1], needs[2] and ctx.has_bias)
        if not any(mask):
            return None, None, None, None, None
        grad_input, grad_weight, grad_bias = _lin.linear_backward(
            grad_output.contiguous(), input, weight, saved, activation=ctx.activation,
            negative_slope=ctx.negative_slope, output_mask=mask)
        return grad_input, grad_weight, grad_bias, None, None


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           activation: str | None = None, negative_slope: float = 0.01) -> torch.Tensor:
    """``torch.nn.functional.linear`` followed by ``activation``, in one fused op."""
    return _Linear.apply(input, weight, bias, activation, negative_slope)
