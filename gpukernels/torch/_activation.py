"""Activations as PyTorch operators (``torch.ops.gpukernels.<act>`` and ``<act>_backward``,
see ``_library``), each saving the least its backward needs: sigmoid and tanh their output,
relu and leaky_relu (slope >= 0) their output too, since its sign is the input's, gelu and a
leaky_relu with a negative slope their input. None has an autocast rule: torch runs these in
their inputs' dtype under autocast, and so do we."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops._checks import check_choice, check_real_number
from ..ops import activation as _act
from ._library import empty, fresh, op


@op("sigmoid")
def _sigmoid(x: Tensor) -> Tensor:
    return fresh(_act.sigmoid(x), x)


@op("tanh")
def _tanh(x: Tensor) -> Tensor:
    return fresh(_act.tanh(x), x)


@op("relu")
def _relu(x: Tensor) -> Tensor:
    return fresh(_act.relu(x), x)


@op("leaky_relu")
def _leaky_relu(x: Tensor, negative_slope: float) -> Tensor:
    return fresh(_act.leaky_relu(x, negative_slope), x)


@op("gelu")
def _gelu(x: Tensor, approximate: str) -> Tensor:
    return fresh(_act.gelu(x, approximate), x)


@op("sigmoid_backward")
def _sigmoid_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    return fresh(_act.sigmoid_backward(grad_output.contiguous(), output), grad_output, output)


@op("tanh_backward")
def _tanh_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    return fresh(_act.tanh_backward(grad_output.contiguous(), output), grad_output, output)


@op("relu_backward")
def _relu_backward(grad_output: Tensor, saved: Tensor) -> Tensor:
    return fresh(_act.relu_backward(grad_output.contiguous(), saved), grad_output, saved)


@op("leaky_relu_backward")
def _leaky_relu_backward(grad_output: Tensor, saved: Tensor, negative_slope: float) -> Tensor:
    return fresh(_act.leaky_relu_backward(grad_output.contiguous(), saved, negative_slope), grad_output, saved)


@op("gelu_backward")
def _gelu_backward(grad_output: Tensor, x: Tensor, approximate: str) -> Tensor:
    return fresh(_act.gelu_backward(grad_output.contiguous(), x, approximate), grad_output, x)


for _op in (_sigmoid, _tanh, _relu, _leaky_relu, _gelu, _sigmoid_backward, _tanh_backward, _relu_backward,
            _leaky_relu_backward, _gelu_backward):
    _op.register_fake(lambda x, *rest: empty(x))


def _save_output(ctx, inputs, output):
    ctx.save_for_backward(output)


def _save_output_if_sign_kept(ctx, inputs, output):
    """relu and leaky_relu with slope >= 0: the output has the input's sign (and is NaN where it
    is), so it tells backward the same; saving it lets ``inplace=True`` overwrite the input."""
    x, *slope = inputs
    ctx.negative_slope = slope[0] if slope else 0.0
    ctx.save_for_backward(output if ctx.negative_slope >= 0 else x)


def _save_input(ctx, inputs, output):
    x, *options = inputs
    ctx.options = options
    ctx.save_for_backward(x)


_sigmoid.register_autograd(lambda ctx, g: _sigmoid_backward(g, *ctx.saved_tensors), setup_context=_save_output)
_tanh.register_autograd(lambda ctx, g: _tanh_backward(g, *ctx.saved_tensors), setup_context=_save_output)
_relu.register_autograd(lambda ctx, g: _relu_backward(g, *ctx.saved_tensors), setup_context=_save_output_if_sign_kept)
_leaky_relu.register_autograd(
    lambda ctx, g: (_leaky_relu_backward(g, *ctx.saved_tensors, ctx.negative_slope), None),
    setup_context=_save_output_if_sign_kept)
_gelu.register_autograd(lambda ctx, g: (_gelu_backward(g, *ctx.saved_tensors, *ctx.options), None),
                        setup_context=_save_input)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    return _sigmoid(input)


def tanh(input: torch.Tensor) -> torch.Tensor:
    return _tanh(input)


def _check_inplace(negative_slope: float, inplace: bool) -> None:
    if inplace and negative_slope < 0:
        raise ValueError("inplace=True needs negative_slope >= 0: backward reads the output in place of the input")


def _in_place(input: torch.Tensor, output: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``output``, written into ``input`` for ``inplace=True`` (the op itself never writes its
    input, so compiled graphs see an ordinary copy_)."""
    return input.copy_(output) if inplace else output


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return _in_place(input, _relu(input), inplace)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    slope = check_real_number(negative_slope, "negative_slope")
    _check_inplace(slope, inplace)
    return _in_place(input, _leaky_relu(input, slope), inplace)


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    check_choice(approximate, "approximate", _act.GELU_APPROXIMATIONS)
    return _gelu(input, approximate)
