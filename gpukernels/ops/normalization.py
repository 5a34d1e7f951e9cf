"""Layer normalisation and RMS normalisation, as ``torch.nn.functional``, with fused residual
variants and ATen-like backward ops.

Forward:

* ``layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)``
* ``rms_norm(input, normalized_shape, weight=None, eps=None)`` (``eps=None``: the machine epsilon
  of the input's dtype, as ``torch.nn.functional.rms_norm``)
* ``add_layer_norm(input, residual, normalized_shape, weight=None, bias=None, eps=1e-5)`` and
  ``add_rms_norm(input, residual, normalized_shape, weight=None, eps=None)``: ``s = input +
  residual`` and its normalisation in one pass, returning ``(normalised, s)`` (the pre-norm
  transformer's residual stream).

With ``return_stats=True`` each also returns the statistics of ONNX ``LayerNormalization``'s
extra outputs: the mean (layer norm only) and the reciprocal standard deviation ``rstd``, shaped
like the input with the normalised dims kept as 1, float32 for float16/bfloat16 inputs.

Backward (the statistics come from the forward, as in ATen's ``native_layer_norm_backward``):

* ``layer_norm_backward(grad_output, input, normalized_shape, mean, rstd, weight=None,
  bias=None)`` -> ``(grad_input, grad_weight, grad_bias)`` (None where there is no weight/bias)
* ``rms_norm_backward(grad_output, input, normalized_shape, rstd, weight=None)`` ->
  ``(grad_input, grad_weight)``
* ``add_layer_norm_backward(grad_output, grad_sum, sum, normalized_shape, mean, rstd,
  weight=None, bias=None)`` -> ``(grad_input, grad_weight, grad_bias)``, where ``grad_input`` is
  the gradient of both ``input`` and ``residual`` and ``grad_sum`` (the gradient of the sum
  output, None when it is not used) is added in the same pass; ``add_rms_norm_backward`` alike.
"""

from __future__ import annotations

import numbers
from typing import Any

from .._dispatch import array_library, call, like
from ._checks import check_float, check_match, check_real_number, check_same, device_name, dtype_name

FAMILY = "normalization"
# rms_norm's default eps: torch takes the epsilon of the type it computes in (its "opmath"
# type), so float16/bfloat16 inputs get float32's, not their own (2^-10 / 2^-7 would change the
# outputs of small-valued rows by up to 0.5 in fp16 and 1.3 in bf16).
MACHINE_EPS = {"float16": 2.0**-23, "bfloat16": 2.0**-23, "float32": 2.0**-23, "float64": 2.0**-52}


def check_normalized_shape(input: Any, normalized_shape: Any) -> tuple[int, ...]:
    """``normalized_shape`` (an int or a sequence of ints) as a tuple equal to ``input``'s
    trailing dims."""
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        normalized_shape = (normalized_shape,)
    try:
        shape = tuple(normalized_shape)
    except TypeError:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {type(normalized_shape).__name__}"
                        ) from None
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in shape):
        raise TypeError(f"normalized_shape must contain ints only, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("normalized_shape must have at least one dim, got ()")
    trailing = tuple(input.shape)[max(0, input.ndim - len(shape)):]
    if input.ndim < len(shape) or trailing != shape:
        raise ValueError(f"normalized_shape {shape} does not match the trailing dims of input's shape "
                         f"{tuple(input.shape)}")
    return shape


def _check_parameter(input: Any, name: str, value: Any, shape: tuple[int, ...]) -> None:
    if value is None:
        return
    check_match("input", input, name, value)
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(value.shape)} but normalized_shape is {shape}; they must match")


def _check_eps(eps: Any, input: Any, default_machine_eps: bool) -> float:
    if eps is None and default_machine_eps:
        return MACHINE_EPS[dtype_name(input)]
    eps = check_real_number(eps, "eps")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return eps


def stats_like(stat: Any, input: Any) -> Any:
    """A statistic as an array of ``input``'s library and device: float64 for float64 inputs,
    float32 otherwise (half-precision statistics would round away what the backward needs)."""
    dtype = "float64" if dtype_name(input) == "float64" else "float32"
    library = array_library(input)
    if library == "torch":
        import torch

        template = input.new_empty((), dtype=getattr(torch, dtype))
    elif library == "cupy":
        import cupy

        with input.device:
            template = cupy.empty((), dtype=dtype)
    else:
        import numpy

        template = numpy.empty((), dtype=dtype)
    return like(stat, template)


def _forward(op: str, input: Any, residual: Any, weight: Any, bias: Any, normalized_shape: Any, eps: Any,
             rms: bool, return_stats: bool):
    check_float(input, "input")
    shape = check_normalized_shape(input, normalized_shape)
    if residual is not None:
        check_same("input", input, residual=residual)
    _check_parameter(input, "weight", weight, shape)
    _check_parameter(input, "bias", bias, shape)
    eps = _check_eps(eps, input, default_machine_eps=rms)
    arrays = (input,) if residual is None else (input, residual)
    arrays += (weight,) if rms else (weight, bias)
    outputs = ((input,) if residual is None else (input, input)) + (None,) * (1 if rms else 2)
    results = call(FAMILY, op, arrays, {"normalized_ndim": len(shape), "eps": eps}, returns_like=outputs)
    n_main = len(outputs) - (1 if rms else 2)
    main = results[:n_main]
    if not return_stats:
        return main[0] if n_main == 1 else main
    return (*main, *(stats_like(s, input) for s in results[n_main:]))


def layer_norm(input: Any, normalized_shape: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5, *,
               return_stats: bool = False):
    """``(input - mean) / sqrt(var + eps) * weight + bias`` over the trailing
    ``normalized_shape`` dims; with ``return_stats``: ``(output, mean, rstd)``."""
    return _forward("layer_norm", input, None, weight, bias, normalized_shape, eps, False, return_stats)


def rms_norm(input: Any, normalized_shape: Any, weight: Any = None, eps: float | None = None, *,
             return_stats: bool = False):
    """``input / sqrt(mean(input^2) + eps) * weight``; with ``return_stats``: ``(output, rstd)``."""
    return _forward("rms_norm", input, None, weight, None, normalized_shape, eps, True, return_stats)


def add_layer_norm(input: Any, residual: Any, normalized_shape: Any, weight: Any = None, bias: Any = None,
                   eps: float = 1e-5, *, return_stats: bool = False):
    """``(layer_norm(input + residual), input + residual)`` in one pass (with ``return_stats``:
    ``(output, sum, mean, rstd)``)."""
    return _forward("add_layer_norm", input, residual, weight, bias, normalized_shape, eps, False, return_stats)


def add_rms_norm(input: Any, residual: Any, normalized_shape: Any, weight: Any = None, eps: float | None = None, *,
                 return_stats: bool = False):
    """``(rms_norm(input + residual), input + residual)`` in one pass (with ``return_stats``:
    ``(output, sum, rstd)``)."""
    return _forward("add_rms_norm", input, residual, weight, None, normalized_shape, eps, True, return_stats)


# ---------------------------------------------------------------------------------------------
# Backward


def _check_stat(input: Any, name: str, stat: Any, shape: tuple[int, ...]) -> None:
    want = tuple(input.shape)[:input.ndim - len(shape)]
    check_float(stat, name)
    if array_library(stat) != array_library(input):
        raise TypeError(f"{name} is a {array_library(stat)} array but input is a {array_library(input)} array")
    if device_name(stat) != device_name(input):
        raise ValueError(f"{name} is on {device_name(stat)} but input is on {device_name(input)}")
    got = tuple(stat.shape)
    if got not in (want + (1,) * len(shape), want):  # as the forward returns it, or without the 1s
        raise ValueError(f"{name} has shape {got} but must be input's shape with the normalized dims as 1, "
                         f"{want + (1,) * len(shape)}")


def _backward(op: str, grad_output: Any, grad_sum: Any, input: Any, normalized_shape: Any, mean: Any, rstd: Any,
              weight: Any, bias: Any, rms: bool):
    input_name = "input" if grad_sum is None and not op.startswith("add_") else "sum"
    check_float(input, input_name)
    check_float(grad_output, "grad_output")
    check_same(input_name, input, grad_output=grad_output)
    if grad_sum is not None:
        check_same(input_name, input, grad_sum=grad_sum)
    shape = check_normalized_shape(input, normalized_shape)
    _check_parameter(input, "weight", weight, shape)
    _check_parameter(input, "bias", bias, shape)
    for name, stat in (("mean", mean), ("rstd", rstd)):
        if stat is not None or name == "rstd":
            _check_stat(input, name, stat, shape)
    params = {"normalized_ndim": len(shape)}
    arrays = (grad_output,) + ((grad_sum,) if op.startswith("add_") else ()) + (input,)
    arrays += ((rstd,) if rms else (mean, rstd)) + (weight,)
    outputs = (grad_output, weight)
    if not rms:
        params["bias_grad"] = bias is not None
        outputs += (bias,)
    return call(FAMILY, op, arrays, params, returns_like=outputs)


def layer_norm_backward(grad_output: Any, input: Any, normalized_shape: Any, mean: Any, rstd: Any,
                        weight: Any = None, bias: Any = None):
    """``(grad_input, grad_weight, grad_bias)``; the last two are None without weight/bias."""
    if mean is None:
        raise TypeError("mean must be an array (layer_norm(..., return_stats=True) returns it), got None")
    return _backward("layer_norm_backward", grad_output, None, input, normalized_shape, mean, rstd, weight, bias,
                     False)


def rms_norm_backward(grad_output: Any, input: Any, normalized_shape: Any, rstd: Any, weight: Any = None):
    """``(grad_input, grad_weight)``; ``grad_weight`` is None without a weight."""
    return _backward("rms_norm_backward", grad_output, None, input, normalized_shape, None, rstd, weight, None, True)


def add_layer_norm_backward(grad_output: Any, grad_sum: Any, sum: Any, normalized_shape: Any, mean: Any, rstd: Any,
                            weight: Any = None, bias: Any = None):
    """``(grad_input, grad_weight, grad_bias)``: ``grad_input`` is the gradient of both ``input`` and
    ``residual``, ``grad_sum`` (may be None) the gradient arriving at the sum output."""
    if mean is None:
        raise TypeError("mean must be an array (add_layer_norm(..., return_stats=True) returns it), got None")
    return _backward("add_layer_norm_backward", grad_output, grad_sum, sum, normalized_shape, mean, rstd, weight, bias,
                     False)


def add_rms_norm_backward(grad_output: Any, grad_sum: Any, sum: Any, normalized_shape: Any, rstd: Any,
                          weight: Any = None):
    """``(grad_input, grad_weight)``; see ``add_layer_norm_backward``."""
    return _backward("add_rms_norm_backward", grad_output, grad_sum, sum, normalized_shape, None, rstd, weight, None,
                     True)


__all__ = [
    "layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm",
    "layer_norm_backward", "rms_norm_backward", "add_layer_norm_backward", "add_rms_norm_backward",
]
