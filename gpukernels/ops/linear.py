"""The fused dense layer: ``linear(input, weight, bias=None, *, activation=None)`` is
``act(F.linear(input, weight, bias))`` in one op, and ``linear_backward`` its gradients.

Shapes as ``torch.nn.functional.linear``: ``input`` (..., in_features), ``weight``
(out_features, in_features), ``bias`` (out_features,) -> (..., out_features). ``activation`` is
None or one of "relu", "leaky_relu" (with ``negative_slope``), "gelu", "gelu_tanh" (gelu with
approximate="tanh"), "sigmoid", "tanh", with the activation family's formulas.

The backward (ATen's ``linear_backward``, plus the activation) takes what the forward saved,
``saved``: nothing without an activation; the output y for sigmoid, tanh, relu and leaky_relu
with a slope >= 0 (their derivative is a function of y); the derivative act'(z) of the
pre-activation for gelu, gelu_tanh and leaky_relu with a negative slope. ``linear(...,
return_saved=True)`` returns ``(output, saved)``; ``saved_kind`` says which it is.
``output_mask`` (grad input, grad weight, grad bias) skips the gradients not needed: None there.
"""

from __future__ import annotations

import math
from typing import Any

from .._dispatch import call
from ..reference.linear import ACTIVATIONS, saved_kind
from ._checks import check_choice, check_float, check_match, check_real_number

FAMILY = "linear"


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in x.shape)


def _check_activation(activation: Any, negative_slope: Any) -> float:
    if activation is not None:
        check_choice(activation, "activation", ACTIVATIONS)
    return check_real_number(negative_slope, "negative_slope")


def _check_layer(input: Any, weight: Any, bias: Any) -> tuple[int, int]:
    """(in_features, out_features) after checking the three arrays against each other."""
    check_float(input, "input")
    check_match("input", input, "weight", weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {_shape(weight)}")
    out_features, in_features = _shape(weight)
    if input.ndim < 1 or _shape(input)[-1] != in_features:
        raise ValueError(f"input has shape {_shape(input)}, whose last dimension must be in_features = {in_features} "
                         f"(weight has shape {_shape(weight)})")
    if bias is not None:
        check_match("input", input, "bias", bias)
        if _shape(bias) != (out_features,):
            raise ValueError(f"bias has shape {_shape(bias)} but must be (out_features,) = ({out_features},)")
    return in_features, out_features


def _rows(x: Any, features: int) -> Any:
    """``x`` as a 2-D (rows, features) array (leading dimensions flattened; a view where possible)."""
    return x.reshape(math.prod(_shape(x)[:-1]), features)  # not -1: there may be no rows


def linear(input: Any, weight: Any, bias: Any = None, *, activation: str | None = None,
           negative_slope: float = 0.01, return_saved: bool = False) -> Any:
    """``act(input @ weight.T + bias)``; with ``return_saved`` also what ``linear_backward`` reads."""
    negative_slope = _check_activation(activation, negative_slope)
    in_features, out_features = _check_layer(input, weight, bias)
    kind = saved_kind(activation, negative_slope)
    rows = _rows(input, in_features)
    out_shape = (*_shape(input)[:-1], out_features)
    params = {"activation": activation, "negative_slope": negative_slope,
              "save": return_saved and kind == "derivative"}
    output, derivative = call(FAMILY, "forward", (rows, weight, bias), params, returns_like=(rows, rows))
    output = output.reshape(out_shape)
    if not return_saved:
        return output
    if kind == "none":
        return output, None
    return output, output if kind == "output" else derivative.reshape(out_shape)


def linear_backward(grad_output: Any, input: Any, weight: Any, saved: Any = None, *, activation: str | None = None,
                    negative_slope: float = 0.01, output_mask: tuple[bool, bool, bool] = (True, True, True)) -> tuple:
    """(grad_input, grad_weight, grad_bias) of ``linear``; ``saved`` as the module docstring says."""
    negative_slope = _check_activation(activation, negative_slope)
    in_features, out_features = _check_layer(input, weight, None)
    check_match("input", input, "grad_output", grad_output)
    want = (*_shape(input)[:-1], out_features)
    if _shape(grad_output) != want:
        raise ValueError(f"grad_output has shape {_shape(grad_output)} but the layer's output has shape {want}")
    kind = saved_kind(activation, negative_slope)
    if kind == "none":
        saved = None
    elif saved is None:
        what = "output" if kind == "output" else "activation derivative"
        raise ValueError(f"saved is required for activation={activation!r}: pass the forward's {what} "
                         "(linear(..., return_saved=True) returns it)")
    else:
        check_match("grad_output", grad_output, "saved", saved, shape=True)
    if len(output_mask) != 3:
        raise ValueError(f"output_mask must hold 3 booleans (grad input, weight, bias), got {output_mask!r}")
    mask = tuple(bool(m) for m in output_mask)
    arrays = (_rows(grad_output, out_features), _rows(input, in_features), weight,
              None if saved is None else _rows(saved, out_features))
    params = {"activation": activation, "negative_slope": negative_slope, "output_mask": mask}
    grad_input, grad_weight, grad_bias = call(FAMILY, "backward", arrays, params,
                                              returns_like=(arrays[1], weight, weight))
    if grad_input is not None:
        grad_input = grad_input.reshape(_shape(input))
    return grad_input, grad_weight, grad_bias


__all__ = ["linear", "linear_backward", "saved_kind"]
