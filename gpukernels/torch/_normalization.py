"""Layer norm and RMS norm (and their fused residual variants) as PyTorch operators
(``torch.ops.gpukernels.layer_norm``, ``rms_norm``, ``add_layer_norm``, ``add_rms_norm`` and
their backward ops, see ``_library``). Each forward op also returns the statistics (the mean for
layer norm and ``rstd``, non-differentiable outputs, float32 for half-precision inputs) and saves
the normalised input's source (the input, or the residual sum), the statistics and the weight:
the backward recomputes ``xhat`` from them in its one pass instead of saving it.

Autocast (torch's lists): ``layer_norm`` and ``rms_norm`` run in float32 under CUDA autocast and
have no rule on the CPU, where torch's mixed-dtype norms take a lower-precision input with
float32 parameters, compute in float32 and return the input's dtype; ours do the same there
(see ``_mixed_dtype``). The fused residual variants follow the norm they end with.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import normalization as _norm
from ..ops._checks import check_float, check_same
from ._library import FLOAT32, accumulation_dtype, autocast, empty, fresh, fresh_all, op


@op("layer_norm")
def _layer_norm(input: Tensor, normalized_shape: list[int], weight: Tensor | None, bias: Tensor | None,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
    out, mean, rstd = _norm.layer_norm(input, normalized_shape, weight, bias, eps, return_stats=True)
    return fresh(out, input), fresh(mean), fresh(rstd)


@op("rms_norm")
def _rms_norm(input: Tensor, normalized_shape: list[int], weight: Tensor | None,
              eps: float | None) -> tuple[Tensor, Tensor]:
    out, rstd = _norm.rms_norm(input, normalized_shape, weight, eps, return_stats=True)
    return fresh(out, input), fresh(rstd)


@op("add_layer_norm")
def _add_layer_norm(input: Tensor, residual: Tensor, normalized_shape: list[int], weight: Tensor | None,
                    bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    out, total, mean, rstd = _norm.add_layer_norm(input, residual, normalized_shape, weight, bias, eps,
                                                  return_stats=True)
    return fresh(out, input, residual), fresh(total, input, residual), fresh(mean), fresh(rstd)


@op("add_rms_norm")
def _add_rms_norm(input: Tensor, residual: Tensor, normalized_shape: list[int], weight: Tensor | None,
                  eps: float | None) -> tuple[Tensor, Tensor, Tensor]:
    out, total, rstd = _norm.add_rms_norm(input, residual, normalized_shape, weight, eps, return_stats=True)
    return fresh(out, input, residual), fresh(total, input, residual), fresh(rstd)


@op("layer_norm_backward")
def _layer_norm_backward(grad_output: Tensor, input: Tensor, normalized_shape: list[int], mean: Tensor, rstd: Tensor,
                         weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    grads = _norm.layer_norm_backward(grad_output.contiguous(), input, normalized_shape, mean, rstd, weight, bias)
    return fresh_all(tuple(grads), grad_output, input, weight, bias)


@op("rms_norm_backward")
def _rms_norm_backward(grad_output: Tensor, input: Tensor, normalized_shape: list[int], rstd: Tensor,
                       weight: Tensor | None) -> tuple[Tensor, Tensor]:
    grads = _norm.rms_norm_backward(grad_output.contiguous(), input, normalized_shape, rstd, weight)
    return fresh_all(tuple(grads), grad_output, input, weight)


@op("add_layer_norm_backward")
def _add_layer_norm_backward(grad_output: Tensor, grad_sum: Tensor | None, sum: Tensor, normalized_shape: list[int],
                             mean: Tensor, rstd: Tensor, weight: Tensor | None,
                             bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    grad_sum = None if grad_sum is None else grad_sum.contiguous()
    grads = _norm.add_layer_norm_backward(grad_output.contiguous(), grad_sum, sum, normalized_shape, mean, rstd,
                                          weight, bias)
    return fresh_all(tuple(grads), grad_output, grad_sum, sum, weight, bias)


@op("add_rms_norm_backward")
def _add_rms_norm_backward(grad_output: Tensor, grad_sum: Tensor | None, sum: Tensor, normalized_shape: list[int],
                           rstd: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
    grad_sum = None if grad_sum is None else grad_sum.contiguous()
    grads = _norm.add_rms_norm_backward(grad_output.contiguous(), grad_sum, sum, normalized_shape, rstd, weight)
    return fresh_all(tuple(grads), grad_output, grad_sum, sum, weight)


# ---------------------------------------------------------------------------------------------
# Fake implementations


def _fake_stat(input: Tensor, normalized_shape) -> Tensor:
    """A statistic's shape: the input's with the normalised dims kept as 1."""
    kept = input.dim() - len(normalized_shape)
    return empty(input, (*input.shape[:kept], *(1,) * len(normalized_shape)), accumulation_dtype(input))


def _fake_gradient(x: Tensor | None, template: Tensor) -> Tensor:
    return template.new_empty(0) if x is None else empty(x)


@_layer_norm.register_fake
def _(input, normalized_shape, weight, bias, eps):
    return empty(input), _fake_stat(input, normalized_shape), _fake_stat(input, normalized_shape)


@_rms_norm.register_fake
def _(input, normalized_shape, weight, eps):
    return empty(input), _fake_stat(input, normalized_shape)


@_add_layer_norm.register_fake
def _(input, residual, normalized_shape, weight, bias, eps):
    return empty(input), empty(input), _fake_stat(input, normalized_shape), _fake_stat(input, normalized_shape)


@_add_rms_norm.register_fake
def _(input, residual, normalized_shape, weight, eps):
    return empty(input), empty(input), _fake_stat(input, normalized_shape)


@_layer_norm_backward.register_fake
def _(grad_output, input, normalized_shape, mean, rstd, weight, bias):
    return empty(input), _fake_gradient(weight, input), _fake_gradient(bias, input)


@_rms_norm_backward.register_fake
def _(grad_output, input, normalized_shape, rstd, weight):
    return empty(input), _fake_gradient(weight, input)


@_add_layer_norm_backward.register_fake
def _(grad_output, grad_sum, sum, normalized_shape, mean, rstd, weight, bias):
    return empty(sum), _fake_gradient(weight, sum), _fake_gradient(bias, sum)


@_add_rms_norm_backward.register_fake
def _(grad_output, grad_sum, sum, normalized_shape, rstd, weight):
    return empty(sum), _fake_gradient(weight, sum)


# ---------------------------------------------------------------------------------------------
# Autograd: save the source (input or sum), the statistics and the parameters


def _setup(ctx, inputs, output, *, rms: bool, add: bool):
    source = output[1] if add else inputs[0]
    stats = output[2:] if add else output[1:]
    ctx.mark_non_differentiable(*stats)
    weight = inputs[3 if add else 2]
    bias = None if rms else inputs[4 if add else 3]
    ctx.normalized_shape = inputs[2 if add else 1]
    ctx.save_for_backward(source, *stats, weight, bias)


def _gradients(ctx, grad_output, *grads_of_outputs, rms: bool, add: bool):
    source, *stats, weight, bias = ctx.saved_tensors
    shape = ctx.normalized_shape
    if add:
        grad_sum = grads_of_outputs[0]
        backward = _add_rms_norm_backward if rms else _add_layer_norm_backward
        grads = backward(grad_output, grad_sum, source, shape, *stats, weight, *(() if rms else (bias,)))
    else:
        backward = _rms_norm_backward if rms else _layer_norm_backward
        grads = backward(grad_output, source, shape, *stats, weight, *(() if rms else (bias,)))
    dx, dw, db = (*grads, None) if rms else grads
    dw = dw if weight is not None else None
    db = db if bias is not None else None
    if add:  # input, residual, normalized_shape, weight, bias?, eps
        return (dx, dx, None, dw, *(() if rms else (db,)), None)
    return (dx, None, dw, *(() if rms else (db,)), None)


for _op, _rms, _add in ((_layer_norm, False, False), (_rms_norm, True, False), (_add_layer_norm, False, True),
                        (_add_rms_norm, True, True)):
    _op.register_autograd(
        lambda ctx, *grads, _r=_rms, _a=_add: _gradients(ctx, *grads, rms=_r, add=_a),
        setup_context=lambda ctx, inputs, output, _r=_rms, _a=_add: _setup(ctx, inputs, output, rms=_r, add=_a))
    autocast(_op, cuda=FLOAT32)


# ---------------------------------------------------------------------------------------------
# torch.nn.functional's signatures; every check here (none reads the data) runs at trace time


def _mixed_dtype(input: Tensor, *parameters: Tensor | None) -> torch.dtype | None:
    """The dtype to return in when CPU autocast (no rule for the norms there) meets a
    lower-precision input and float32 parameters, which torch's norms accept: they compute in
    float32 with the parameters as they are and return the input's dtype. Ours do the same by
    running on the input cast to float32 (rounding the parameters instead would cost the
    gradients a factor of ten in accuracy, where the backward's terms cancel; and ``eps=None``
    is then float32's epsilon, as torch's float32 math takes it). None otherwise."""
    mixed = (input.device.type == "cpu" and torch.is_autocast_enabled("cpu")
             and input.dtype in (torch.float16, torch.bfloat16)
             and any(p is not None and p.dtype == torch.float32 for p in parameters))
    return input.dtype if mixed else None


def _prepare(input, residual, normalized_shape, weight, bias, eps, rms: bool):
    """(normalized_shape as a list, eps) after the forward's checks."""
    check_float(input, "input")
    shape = _norm.check_normalized_shape(input, normalized_shape)
    if residual is not None:
        check_same("input", input, residual=residual)
    _norm._check_parameter(input, "weight", weight, shape)
    _norm._check_parameter(input, "bias", bias, shape)
    if eps is not None or not rms:
        eps = _norm._check_eps(eps, input, default_machine_eps=False)
    return list(shape), eps


def _in(dtype: torch.dtype | None, *tensors: Tensor | None) -> tuple:
    """``tensors`` cast to ``dtype`` (None: unchanged)."""
    return tuple(t if dtype is None or t is None else t.to(dtype) for t in tensors)


def layer_norm(input: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``torch.nn.functional.layer_norm``: same arguments and result."""
    out_dtype = _mixed_dtype(input, weight, bias)
    (input,) = _in(torch.float32 if out_dtype else None, input)
    shape, eps = _prepare(input, None, normalized_shape, weight, bias, eps, False)
    return _in(out_dtype, _layer_norm(input, shape, weight, bias, eps)[0])[0]


def rms_norm(input: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
             eps: float | None = None) -> torch.Tensor:
    """``torch.nn.functional.rms_norm``: same arguments (``eps=None``: the dtype's epsilon)."""
    out_dtype = _mixed_dtype(input, weight)
    (input,) = _in(torch.float32 if out_dtype else None, input)
    shape, eps = _prepare(input, None, normalized_shape, weight, None, eps, True)
    return _in(out_dtype, _rms_norm(input, shape, weight, eps)[0])[0]


def add_layer_norm(input: torch.Tensor, residual: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(layer_norm(input + residual), input + residual)``, fused, differentiable in both outputs."""
    out_dtype = _mixed_dtype(input, weight, bias)
    input, residual = _in(torch.float32 if out_dtype else None, input, residual)
    shape, eps = _prepare(input, residual, normalized_shape, weight, bias, eps, False)
    return _in(out_dtype, *_add_layer_norm(input, residual, shape, weight, bias, eps)[:2])


def add_rms_norm(input: torch.Tensor, residual: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
                 eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(input + residual), input + residual)``, fused, differentiable in both outputs."""
    out_dtype = _mixed_dtype(input, weight)
    input, residual = _in(torch.float32 if out_dtype else None, input, residual)
    shape, eps = _prepare(input, residual, normalized_shape, weight, None, eps, True)
    return _in(out_dtype, *_add_rms_norm(input, residual, shape, weight, eps)[:2])
