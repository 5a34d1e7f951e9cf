"""Cross-entropy, NLL, multi-class focal loss and the fused linear + cross-entropy, with the
names, arguments, defaults, shapes and reductions of ``torch.nn.functional``.

* ``cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
  label_smoothing=0.0)``: ``input`` is ``(C,)``, ``(N, C)`` or ``(N, C, d1, ...)``; ``target``
  holds class indices (an integer array of ``input``'s shape without the class dim) or class
  probabilities (a float array of ``input``'s shape, where ``ignore_index`` does not apply).
* ``nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean")`` on
  log-probabilities, the same shapes (class indices only).
* ``focal_loss(input, target, gamma=2.0, alpha=None, ignore_index=-100, reduction="mean")``:
  ``-alpha_y (1 - p_y)^gamma log p_y`` with ``p = softmax(input)`` over the class dim; ``alpha``
  a per-class weight array or None. torch has no multi-class focal loss: "mean" here divides by
  the number of rows not ignored (alpha weighs rows, it does not renormalise).
* ``linear_cross_entropy(input, weight, target, bias=None, ignore_index=-100,
  reduction="mean", label_smoothing=0.0, chunk_size=None)``:
  ``cross_entropy(input @ weight.T + bias, target)`` for ``input`` ``(..., H)``, ``weight``
  ``(V, H)``, never holding more than ``chunk_size`` rows of the ``(N, V)`` logits (chosen from
  the sizes when None).

"mean" divides by the summed class weights of the targets that are not ignored (torch's rule);
a batch whose every target is ignored gives 0/0 = NaN, as torch does. Backward functions take
the upstream gradient first (``cross_entropy_backward(grad_output, input, target, ...)``,
``nll_loss_backward``, ``focal_loss_backward``, ``linear_cross_entropy_backward``) and return
the gradient w.r.t. ``input`` (and, for linear + cross-entropy, ``weight`` and ``bias``).
``cross_entropy_target_backward`` returns the gradient w.r.t. a probability ``target``
(``-(1 - label_smoothing) * weight * log_softmax(input)`` scaled as the input's), from the
row log-sum-exp that ``cross_entropy_forward(..., compute_logsumexp=True)`` hands back, or
recomputing it; ``cross_entropy_weight_backward`` (same arguments) the gradient w.r.t. the
class weights of probability targets, a deterministic two-stage column sum. Class-index targets
get no gradient, nor do their class weights (torch refuses a weight that requires grad there).

Every check runs before any backend does; class-index targets are checked against the class
count, which reads the targets on the host (one device synchronisation on a GPU).
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

from .._dispatch import array_library, call
from ._checks import check_array, check_choice, check_float, check_match, check_real_number, device_name, dtype_name
from .attention import _float32_template

REDUCTIONS = ("none", "mean", "sum")
INDEX_DTYPES = ("int8", "int16", "int32", "int64", "uint8")
FLOAT_TARGET_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ---------------------------------------------------------------------------------------------
# Layout: the class dim last, everything else flattened into rows


def _library_module(x: Any):
    return sys.modules[type(x).__module__.split(".")[0]]


def _moveaxis(x: Any, source: int, destination: int) -> Any:
    if array_library(x) == "torch":
        return x.movedim(source, destination)
    return _library_module(x).moveaxis(x, source, destination)


def class_axis(input: Any) -> int:
    return 1 if input.ndim >= 2 else 0


def as_rows(x: Any, axis: int) -> Any:
    """``x`` with ``axis`` moved last, as ``[rows, x.shape[axis]]`` (copied only where needed)."""
    moved = _moveaxis(x, axis, -1)
    return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])


def from_rows(rows: Any, shape: tuple[int, ...], axis: int) -> Any:
    """The inverse of ``as_rows`` for an array of ``shape``."""
    moved = tuple(s for a, s in enumerate(shape) if a != axis) + (shape[axis],)
    return _moveaxis(rows.reshape(moved), -1, axis)


# ---------------------------------------------------------------------------------------------
# Checks


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


def _check_reduction(reduction: Any) -> str:
    return check_choice(reduction, "reduction", REDUCTIONS)


def _check_smoothing(label_smoothing: Any) -> float:
    value = check_real_number(label_smoothing, "label_smoothing")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {value}")
    return value


def _check_class_weight(input: Any, weight: Any, name: str, classes: int) -> None:
    if weight is None:
        return
    check_match("input", input, name, weight)
    if tuple(weight.shape) != (classes,):
        raise ValueError(f"{name} has shape {tuple(weight.shape)} but must be ({classes},), one per class")


def _index_shape(input: Any) -> tuple[int, ...]:
    axis = class_axis(input)
    return tuple(s for a, s in enumerate(input.shape) if a != axis)


def _check_index_target(target: Any, want: tuple[int, ...], classes: int, ignore_index: int, op: str,
                        of: str, values: bool = True) -> None:
    """``target`` holds class indices in ``[0, classes)`` (or ``ignore_index``) of shape ``want``
    (the indices themselves are read only if ``values``)."""
    dtype = dtype_name(target)
    if dtype not in INDEX_DTYPES:
        kind = "floating-point " if dtype in FLOAT_TARGET_DTYPES else ""
        raise TypeError(f"target has {kind}dtype {dtype} but {op} needs class indices here "
                        f"(supported dtypes: {', '.join(INDEX_DTYPES)})")
    if tuple(target.shape) != want:
        raise ValueError(f"target has shape {tuple(target.shape)} but {of} needs class indices of shape {want}")
    if not values:
        return
    counted = target[target != ignore_index]
    outside = (counted < 0) | (counted >= classes)
    if counted.shape[0] and bool(outside.any()):
        bad = counted[outside][:1].tolist()
        raise ValueError(f"target holds class index {bad[0]}, outside [0, {classes}) and not ignore_index "
                         f"({ignore_index})")


def _check_input(input: Any) -> None:
    check_float(input, "input")
    if input.ndim == 0:
        raise ValueError("input must have a class dim: shape (C,), (N, C) or (N, C, d1, ...), got a 0-d array")


def _check_target_library(input: Any, target: Any) -> None:
    check_array(target, "target")
    if array_library(target) != array_library(input):
        raise TypeError(f"target is a {array_library(target)} array but input is a {array_library(input)} array; "
                        "pass arrays of one library")
    if device_name(target) != device_name(input):
        raise ValueError(f"target is on {device_name(target)} but input is on {device_name(input)}")


def _is_probability_target(input: Any, target: Any) -> bool:
    return dtype_name(target) in FLOAT_TARGET_DTYPES and tuple(target.shape) == tuple(input.shape)


def _check_grad_output(grad_output: Any, input: Any, reduction: str, none_shape: tuple[int, ...]) -> None:
    check_match("input", input, "grad_output", grad_output)
    want = none_shape if reduction == "none" else ()
    if tuple(grad_output.shape) != want:
        raise ValueError(f"grad_output has shape {tuple(grad_output.shape)} but reduction={reduction!r} gives a loss "
                         f"of shape {want}")


class _Rows:
    """A checked call, laid out as rows: what every backend receives."""

    def __init__(self, input, target, probs: bool):
        self.shape = tuple(input.shape)
        self.axis = class_axis(input)
        self.input = as_rows(input, self.axis)
        self.target = as_rows(target, self.axis) if probs else target.reshape(-1)
        self.none_shape = _index_shape(input)

    def loss(self, loss, reduction: str):
        return loss.reshape(self.none_shape) if reduction == "none" and loss is not None else loss

    def grad(self, grad):
        return None if grad is None else from_rows(grad, self.shape, self.axis)

    def upstream(self, grad_output, reduction: str):
        return grad_output.reshape(-1) if grad_output is not None and reduction == "none" else grad_output


def check_row_options(kind_name: str, input, target, weight, weight_name: str, ignore_index, reduction,
                      allow_probs: bool, values: bool = True):
    """``(probs, ignore_index, reduction)`` after every check of a cross-entropy-like call; the
    only one that reads data (class indices in range) runs only if ``values`` (the torch wrappers
    leave it to the op, so that the rest runs at trace time under ``torch.compile``)."""
    _check_input(input)
    _check_target_library(input, target)
    ignore_index = _check_int(ignore_index, "ignore_index")
    reduction = _check_reduction(reduction)
    probs = allow_probs and _is_probability_target(input, target)
    if probs:
        check_match("input", input, "target", target, shape=True)
    else:
        _check_index_target(target, _index_shape(input), input.shape[class_axis(input)], ignore_index, kind_name,
                            f"input {tuple(input.shape)} (its shape without the class dim {class_axis(input)})",
                            values)
    _check_class_weight(input, weight, weight_name, input.shape[class_axis(input)])
    return probs, ignore_index, reduction


def _prepare(kind_name: str, input, target, weight, weight_name: str, ignore_index, reduction, allow_probs: bool):
    probs, ignore_index, reduction = check_row_options(kind_name, input, target, weight, weight_name, ignore_index,
                                                       reduction, allow_probs)
    return _Rows(input, target, probs), probs, ignore_index, reduction


def _run(family_op: str, rows: _Rows, weight, grad_output, params: dict):
    """(loss, gradient w.r.t. input, row log-sum-exp in the loss's "none" shape), each None
    unless asked for; the log-sum-exp float32 (float64 for float64 input) whatever the storage."""
    templates = (rows.input, rows.input)
    if family_op == "cross_entropy_rows":  # nll_loss_rows has no log-sum-exp
        templates += (_float32_template(rows.input),)
    loss, grad, *lse = call("cross_entropy", family_op, (rows.input, rows.target, weight, grad_output), params,
                            returns_like=templates)
    return rows.loss(loss, params["reduction"]), rows.grad(grad), rows.loss(next(iter(lse), None), "none")


# ---------------------------------------------------------------------------------------------
# Cross-entropy


def _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, grad_output, compute_loss,
                   compute_grad, compute_logsumexp=False):
    rows, probs, ignore_index, reduction = _prepare("cross_entropy", input, target, weight, "weight", ignore_index,
                                                    reduction, allow_probs=True)
    smoothing = _check_smoothing(label_smoothing)
    if compute_logsumexp and not probs:
        raise ValueError("compute_logsumexp=True needs probability targets (a float target of input's shape): the "
                         "log-sum-exp is kept for the target's gradient, and class-index targets have none")
    if grad_output is not None:
        _check_grad_output(grad_output, input, reduction, rows.none_shape)
    params = dict(kind="probs" if probs else "index", reduction=reduction, ignore_index=ignore_index,
                  label_smoothing=smoothing, compute_loss=compute_loss, compute_grad=compute_grad,
                  compute_logsumexp=compute_logsumexp)
    return _run("cross_entropy_rows", rows, weight, rows.upstream(grad_output, reduction), params)


def cross_entropy(input: Any, target: Any, weight: Any = None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Any:
    """``torch.nn.functional.cross_entropy``: log-softmax over the class dim, then the (weighted,
    smoothed) negative log-likelihood of the targets, reduced."""
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, None, True, False)[0]


def cross_entropy_forward(input: Any, target: Any, weight: Any = None, ignore_index: int = -100,
                          reduction: str = "mean", label_smoothing: float = 0.0, compute_grad: bool = True,
                          compute_logsumexp: bool = False):
    """``(loss, grad_input for grad_output = 1)`` from one kernel (None for the gradient unless
    ``compute_grad``): the loss as the last consumer of the logits. For "none" the gradient is
    that of every row's own loss; multiply row r by the upstream ``grad_output[r]``.
    ``compute_logsumexp`` (probability targets only) adds a third result, the row log-sum-exp
    (the loss's "none" shape, float32, float64 for float64 input), which
    ``cross_entropy_target_backward`` takes instead of sweeping the rows again."""
    loss, grad, lse = _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, None, True,
                                     bool(compute_grad), bool(compute_logsumexp))
    return (loss, grad, lse) if compute_logsumexp else (loss, grad)


def cross_entropy_backward(grad_output: Any, input: Any, target: Any, weight: Any = None, ignore_index: int = -100,
                           reduction: str = "mean", label_smoothing: float = 0.0) -> Any:
    """Gradient of ``cross_entropy`` w.r.t. ``input`` (``softmax * sum(q) - q`` scaled)."""
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, grad_output, False, True)[1]


def _check_logsumexp(logsumexp: Any, input: Any, none_shape: tuple[int, ...]) -> None:
    """The log-sum-exp as ``cross_entropy_forward`` returns it: input's library and device,
    float64 for float64 input and float32 otherwise, the loss's "none" shape."""
    check_array(logsumexp, "logsumexp")
    if array_library(logsumexp) != array_library(input):
        raise TypeError(f"logsumexp is a {array_library(logsumexp)} array but input is a {array_library(input)} "
                        "array; pass arrays of one library")
    if device_name(logsumexp) != device_name(input):
        raise ValueError(f"logsumexp is on {device_name(logsumexp)} but input is on {device_name(input)}")
    check_float(logsumexp, "logsumexp", ("float64",) if dtype_name(input) == "float64" else ("float32",))
    if tuple(logsumexp.shape) != none_shape:
        raise ValueError(f"logsumexp has shape {tuple(logsumexp.shape)} but input {tuple(input.shape)} has rows of "
                         f"shape {none_shape} (its shape without the class dim)")


def _probability_backward(op_name: str, grad_output, input, target, weight, ignore_index, reduction,
                          label_smoothing, logsumexp):
    """(rows, flat log-sum-exp or None, reduction, smoothing) of a probability-target backward
    call, after every check; class-index targets are refused."""
    probs, ignore_index, reduction = check_row_options(op_name, input, target, weight, "weight", ignore_index,
                                                       reduction, allow_probs=True, values=False)
    if not probs:
        raise TypeError(f"target has dtype {dtype_name(target)} and shape {tuple(target.shape)}: class indices, "
                        f"which have no gradient (nor have their class weights); {op_name} needs probability "
                        f"targets (a float array of input's shape {tuple(input.shape)})")
    smoothing = _check_smoothing(label_smoothing)
    rows = _Rows(input, target, probs=True)
    _check_grad_output(grad_output, input, reduction, rows.none_shape)
    if logsumexp is not None:
        _check_logsumexp(logsumexp, input, rows.none_shape)
        logsumexp = logsumexp.reshape(-1)
    return rows, logsumexp, reduction, smoothing


def cross_entropy_target_backward(grad_output: Any, input: Any, target: Any, weight: Any = None,
                                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                                  logsumexp: Any = None) -> Any:
    """Gradient of ``cross_entropy`` w.r.t. a probability ``target``:
    ``-(1 - label_smoothing) * weight[c] * log_softmax(input)[c]`` times the upstream gradient
    (over the number of rows for "mean", torch's divisor for probability targets). ``logsumexp``
    is the row log-sum-exp from ``cross_entropy_forward(..., compute_logsumexp=True)``; None
    recomputes it (one more sweep over the logits). Class-index targets have no gradient: a
    TypeError."""
    rows, logsumexp, reduction, smoothing = _probability_backward(
        "cross_entropy_target_backward", grad_output, input, target, weight, ignore_index, reduction,
        label_smoothing, logsumexp)
    grad = call("cross_entropy", "cross_entropy_target_rows",
                (rows.input, logsumexp, weight, rows.upstream(grad_output, reduction)),
                dict(reduction=reduction, label_smoothing=smoothing), returns_like=rows.input)
    return rows.grad(grad)


def cross_entropy_weight_backward(grad_output: Any, input: Any, target: Any, weight: Any = None,
                                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                                  logsumexp: Any = None) -> Any:
    """Gradient of ``cross_entropy`` with probability targets w.r.t. the class weights ``[C]``
    (input's dtype): ``-sum_r g_r ((1 - s) t_rc + s / C) log_softmax(input)_rc`` with ``g_r`` the
    upstream gradient (over the number of rows for "mean"), summed over every row and spatial
    position in a fixed order (the same bits every run). The arguments are
    ``cross_entropy_target_backward``'s; ``weight``'s values do not enter (the loss is linear in
    it) and it may be None. Class-index targets: a TypeError (torch gives the weights no
    gradient there either)."""
    rows, logsumexp, reduction, smoothing = _probability_backward(
        "cross_entropy_weight_backward", grad_output, input, target, weight, ignore_index, reduction,
        label_smoothing, logsumexp)
    return call("cross_entropy", "cross_entropy_weight_rows",
                (rows.input, rows.target, logsumexp, rows.upstream(grad_output, reduction)),
                dict(reduction=reduction, label_smoothing=smoothing), returns_like=rows.input)


# ---------------------------------------------------------------------------------------------
# NLL


def _nll(input, target, weight, ignore_index, reduction, grad_output, compute_loss, compute_grad):
    rows, _, ignore_index, reduction = _prepare("nll_loss", input, target, weight, "weight", ignore_index, reduction,
                                                allow_probs=False)
    if grad_output is not None:
        _check_grad_output(grad_output, input, reduction, rows.none_shape)
    params = dict(reduction=reduction, ignore_index=ignore_index, compute_loss=compute_loss, compute_grad=compute_grad)
    return _run("nll_loss_rows", rows, weight, rows.upstream(grad_output, reduction), params)


def nll_loss(input: Any, target: Any, weight: Any = None, ignore_index: int = -100, reduction: str = "mean") -> Any:
    """``torch.nn.functional.nll_loss``: ``-weight[y] * input[y]`` over the class dim, reduced."""
    return _nll(input, target, weight, ignore_index, reduction, None, True, False)[0]


def nll_loss_backward(grad_output: Any, input: Any, target: Any, weight: Any = None, ignore_index: int = -100,
                      reduction: str = "mean") -> Any:
    """Gradient of ``nll_loss`` w.r.t. ``input``: ``-weight[y] * grad_output`` at the target, 0 elsewhere."""
    return _nll(input, target, weight, ignore_index, reduction, grad_output, False, True)[1]


# ---------------------------------------------------------------------------------------------
# Multi-class focal loss


def _focal(input, target, gamma, alpha, ignore_index, reduction, grad_output, compute_loss, compute_grad):
    rows, _, ignore_index, reduction = _prepare("focal_loss", input, target, alpha, "alpha", ignore_index, reduction,
                                                allow_probs=False)
    gamma = check_real_number(gamma, "gamma")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if grad_output is not None:
        _check_grad_output(grad_output, input, reduction, rows.none_shape)
    params = dict(kind="focal", reduction=reduction, ignore_index=ignore_index, gamma=gamma,
                  compute_loss=compute_loss, compute_grad=compute_grad)
    return _run("cross_entropy_rows", rows, alpha, rows.upstream(grad_output, reduction), params)


def focal_loss(input: Any, target: Any, gamma: float = 2.0, alpha: Any = None, ignore_index: int = -100,
               reduction: str = "mean") -> Any:
    """Multi-class focal loss ``-alpha[y] (1 - p_y)^gamma log p_y``, ``p = softmax(input)``."""
    return _focal(input, target, gamma, alpha, ignore_index, reduction, None, True, False)[0]


def focal_loss_forward(input: Any, target: Any, gamma: float = 2.0, alpha: Any = None, ignore_index: int = -100,
                       reduction: str = "mean", compute_grad: bool = True):
    """``(loss, grad_input for grad_output = 1)`` from one kernel, as ``cross_entropy_forward``."""
    return _focal(input, target, gamma, alpha, ignore_index, reduction, None, True, bool(compute_grad))[:2]


def focal_loss_backward(grad_output: Any, input: Any, target: Any, gamma: float = 2.0, alpha: Any = None,
                        ignore_index: int = -100, reduction: str = "mean") -> Any:
    """Gradient of ``focal_loss`` w.r.t. ``input``."""
    return _focal(input, target, gamma, alpha, ignore_index, reduction, grad_output, False, True)[1]


# ---------------------------------------------------------------------------------------------
# Linear + cross-entropy


def check_linear_options(input, weight, target, bias, ignore_index, reduction, label_smoothing, chunk_size,
                         values: bool = True):
    """``(ignore_index, reduction, label_smoothing, loss shape for "none")`` after every check of a
    linear + cross-entropy call (the class indices read only if ``values``, see
    ``check_row_options``)."""
    check_float(input, "input")
    if input.ndim < 1:
        raise ValueError("input must have a feature dim: shape (..., H), got a 0-d array")
    check_match("input", input, "weight", weight)
    hidden = input.shape[-1]
    if weight.ndim != 2 or weight.shape[1] != hidden:
        raise ValueError(f"weight has shape {tuple(weight.shape)} but must be (V, {hidden}) for input "
                         f"{tuple(input.shape)}")
    vocab = weight.shape[0]
    if bias is not None:
        check_match("input", input, "bias", bias)
        if tuple(bias.shape) != (vocab,):
            raise ValueError(f"bias has shape {tuple(bias.shape)} but must be ({vocab},)")
    _check_target_library(input, target)
    ignore_index = _check_int(ignore_index, "ignore_index")
    reduction = _check_reduction(reduction)
    smoothing = _check_smoothing(label_smoothing)
    if chunk_size is not None and (_check_int(chunk_size, "chunk_size") < 1):
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    none_shape = tuple(input.shape[:-1])  # the logits are (..., V), the class dim last
    _check_index_target(target, none_shape, vocab, ignore_index, "linear_cross_entropy",
                        f"input {tuple(input.shape)} (its shape without the feature dim)", values)
    return ignore_index, reduction, smoothing, none_shape


def _linear(input, weight, target, bias, ignore_index, reduction, label_smoothing, chunk_size, grad_output,
            compute_loss, compute_grad):
    ignore_index, reduction, smoothing, none_shape = check_linear_options(
        input, weight, target, bias, ignore_index, reduction, label_smoothing, chunk_size)
    hidden = input.shape[-1]
    if grad_output is not None:
        _check_grad_output(grad_output, input, reduction, none_shape)
        if reduction == "none":
            grad_output = grad_output.reshape(-1)
    rows = input.reshape(math.prod(none_shape), hidden)
    params = dict(reduction=reduction, ignore_index=ignore_index, label_smoothing=smoothing,
                  compute_loss=compute_loss, compute_grad=compute_grad, chunk_size=chunk_size)
    loss, grad_input, grad_weight, grad_bias = call(
        "cross_entropy", "linear_cross_entropy_rows", (rows, weight, target.reshape(-1), bias, grad_output), params,
        returns_like=(input, input, weight, bias))
    if loss is not None and reduction == "none":
        loss = loss.reshape(none_shape)
    if grad_input is not None:
        grad_input = grad_input.reshape(input.shape)
    return loss, grad_input, grad_weight, grad_bias


def linear_cross_entropy(input: Any, weight: Any, target: Any, bias: Any = None, ignore_index: int = -100,
                         reduction: str = "mean", label_smoothing: float = 0.0, chunk_size: int | None = None) -> Any:
    """``cross_entropy(input @ weight.T + bias, target, ...)`` without the ``(N, V)`` logits."""
    return _linear(input, weight, target, bias, ignore_index, reduction, label_smoothing, chunk_size, None, True,
                   False)[0]


def linear_cross_entropy_forward(input: Any, weight: Any, target: Any, bias: Any = None, ignore_index: int = -100,
                                 reduction: str = "mean", label_smoothing: float = 0.0,
                                 chunk_size: int | None = None, compute_grad: bool = True):
    """``(loss, grad_input, grad_weight, grad_bias)`` for ``grad_output = 1`` in one sweep over
    the chunks ("mean"/"sum" only: for "none" a row's share of the weight gradient depends on
    its upstream gradient, so those gradients come from ``linear_cross_entropy_backward``)."""
    if compute_grad and reduction == "none":
        raise ValueError("compute_grad=True needs reduction 'mean' or 'sum': with 'none' the weight gradient "
                         "depends on the upstream gradient; call linear_cross_entropy_backward")
    return _linear(input, weight, target, bias, ignore_index, reduction, label_smoothing, chunk_size, None, True,
                   bool(compute_grad))


def linear_cross_entropy_backward(grad_output: Any, input: Any, weight: Any, target: Any, bias: Any = None,
                                  ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                                  chunk_size: int | None = None):
    """``(grad_input, grad_weight, grad_bias)`` (grad_bias None without a bias), recomputing the
    logits chunk by chunk."""
    return _linear(input, weight, target, bias, ignore_index, reduction, label_smoothing, chunk_size, grad_output,
                   False, True)[1:]


__all__ = [
    "cross_entropy", "cross_entropy_forward", "cross_entropy_backward", "cross_entropy_target_backward",
    "cross_entropy_weight_backward", "nll_loss",
    "nll_loss_backward",
    "focal_loss", "focal_loss_forward", "focal_loss_backward", "linear_cross_entropy",
    "linear_cross_entropy_forward", "linear_cross_entropy_backward",
]
