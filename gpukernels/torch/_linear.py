"""The fused dense layer as PyTorch operators (``torch.ops.gpukernels.linear`` and
``linear_backward``, see ``_library``): ``linear(input, weight, bias=None, *, activation=None,
negative_slope=0.01)`` = act(F.linear(input, weight, bias)).

It saves the input, the weight and what the backward's activation derivative needs (see
gpukernels/ops/linear.py): the output for sigmoid, tanh, relu and leaky_relu (slope >= 0), the
derivative act'(z) for gelu and gelu_tanh (the forward op's second, non-differentiable output),
nothing without an activation. The backward skips the gradients autograd does not need (ATen's
``output_mask``).

Autocast: torch's ``linear`` is a lower-precision op on the CPU and on CUDA and the activations
have no rule, so the fused layer runs in the autocast dtype on both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import linear as _lin
from ..reference.linear import saved_kind
from ._library import LOWER_PRECISION, autocast, autocast_inputs, empty, fresh, fresh_all, op

_AUTOCAST = {"cpu": LOWER_PRECISION, "cuda": LOWER_PRECISION}


@op("linear")
def _linear(input: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None,
            negative_slope: float, save: bool) -> tuple[Tensor, Tensor]:
    """(output, act'(z) where a backward will need it (``save``), else an empty placeholder).
    Without ``save`` (inference, no_grad) the derivative is neither computed nor written."""
    output, saved = _lin.linear(input, weight, bias, activation=activation, negative_slope=negative_slope,
                                return_saved=True) if save else (_lin.linear(
                                    input, weight, bias, activation=activation, negative_slope=negative_slope), None)
    derivative = saved if save and saved_kind(activation, negative_slope) == "derivative" else None
    return fresh(output, input, weight, bias), *fresh_all((derivative,), input, weight, bias)


@op("linear_backward")
def _linear_backward(grad_output: Tensor, input: Tensor, weight: Tensor, saved: Tensor | None,
                     activation: str | None, negative_slope: float, need_input: bool, need_weight: bool,
                     need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(grad input, grad weight, grad bias), an empty placeholder for each one not asked for."""
    grads = _lin.linear_backward(grad_output.contiguous(), input, weight, saved, activation=activation,
                                 negative_slope=negative_slope, output_mask=(need_input, need_weight, need_bias))
    return fresh_all(tuple(grads), grad_output, input, weight, saved)


@_linear.register_fake
def _(input, weight, bias, activation, negative_slope, save):
    output = empty(input, (*input.shape[:-1], weight.shape[0]))
    derivative = empty(output) if save and saved_kind(activation, negative_slope) == "derivative" else input.new_empty(0)
    return output, derivative


@_linear_backward.register_fake
def _(grad_output, input, weight, saved, activation, negative_slope, need_input, need_weight, need_bias):
    return (empty(input) if need_input else input.new_empty(0),
            empty(weight) if need_weight else input.new_empty(0),
            empty(weight, (weight.shape[0],)) if need_bias else input.new_empty(0))


def _setup(ctx, inputs, output):
    input, weight, bias, activation, negative_slope, _save = inputs
    kind = saved_kind(activation, negative_slope)
    ctx.mark_non_differentiable(output[1])
    saved = output[0] if kind == "output" else output[1] if kind == "derivative" else None
    ctx.save_for_backward(input, weight, saved)
    ctx.activation, ctx.negative_slope, ctx.has_bias = activation, negative_slope, bias is not None


def _gradients(ctx, grad_output, _grad_of_derivative):
    input, weight, saved = ctx.saved_tensors
    needs = ctx.needs_input_grad
    mask = (needs[0], needs[1], needs[2] and ctx.has_bias)
    if not any(mask):
        return None, None, None, None, None, None
    grads = _linear_backward(grad_output, input, weight, saved, ctx.activation, ctx.negative_slope, *mask)
    return (*(g if wanted else None for g, wanted in zip(grads, mask, strict=True)), None, None, None)


_linear.register_autograd(_gradients, setup_context=_setup)
autocast(_linear, **_AUTOCAST)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           activation: str | None = None, negative_slope: float = 0.01) -> torch.Tensor:
    """``torch.nn.functional.linear`` followed by ``activation``, in one fused op."""
    negative_slope = _lin._check_activation(activation, negative_slope)
    _lin._check_layer(*autocast_inputs(_AUTOCAST, input, weight, bias))  # the dtypes the op will see
    # Keep act'(z) only when a backward can follow: grad mode on and a differentiable operand.
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias))
    return _linear(input, weight, bias, activation, negative_slope, save)[0]
