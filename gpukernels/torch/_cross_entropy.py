"""The cross-entropy family as PyTorch operators (``torch.ops.gpukernels.cross_entropy``,
``focal_loss``, ``nll_loss``, ``linear_cross_entropy``, their backward ops and
``cross_entropy_target_backward``, see ``_library``).

Cross-entropy and focal loss compute the input gradient in the forward kernel when the input
requires grad (the loss as the last consumer of the logits): the op returns it as a second,
non-differentiable output (``compute_grad=True``), saved for backward instead of the logits;
backward multiplies it by the upstream gradient (per row for ``reduction="none"``, so a
non-uniform upstream gradient is exact). Without ``compute_grad`` (an input that does not require
grad, or grad mode off) the kernel does no gradient work, and should a gradient still be asked
for (a direct call of the op), backward runs the backward op on the saved logits.

Probability targets get their gradient, as in torch, and so do their class weights: when the
target or the weight requires grad the forward kernel also keeps each row's log-sum-exp
(``compute_logsumexp=True``: one float per row, not the softmax), and backward runs
``cross_entropy_target_backward`` / ``cross_entropy_weight_backward`` (a deterministic column sum)
on the logits and it. Class-index targets have no gradient, nor do their class weights, nor the
weights of ``nll_loss`` and the focal loss's ``alpha``: the functions here refuse such a weight
that requires grad with a RuntimeError, as torch refuses it for class indices and ``nll_loss``.

The linear + cross-entropy returns its three gradients the same way for "mean" and "sum"; for
"none" a row's share of the weight gradient depends on its upstream gradient, so backward
recomputes the logits chunk by chunk instead (``linear_cross_entropy_backward``).

Checks: the wrappers run every check that does not read the data (shapes, dtypes, options), so
a bad call fails at trace time under ``torch.compile``; the class indices are checked against
the class count inside the ops, when they run.

Autocast (torch's lists): ``cross_entropy`` and ``nll_loss`` run in float32 on the CPU and on
CUDA (on CUDA torch's cross-entropy is a float32 log_softmax followed by a float32 nll_loss), and
so does the focal loss (a softmax loss alike). ``linear_cross_entropy`` stands for
``cross_entropy(linear(input, weight, bias), target)``: its inputs go to the autocast dtype, as
``linear``'s do, and its loss comes out in float32, as ``cross_entropy``'s does.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import _reduction

from ..ops import cross_entropy as _ce
from ._library import FLOAT32, LOWER_PRECISION, autocast, autocast_inputs, empty, fresh, fresh_all, op


def _grad_or_placeholder(grad, input: Tensor) -> Tensor:
    """An op returns tensors only: an empty placeholder where no gradient was computed."""
    return input.new_empty(0) if grad is None else fresh(grad, input)


@op("cross_entropy")
def _cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str,
                   label_smoothing: float, compute_grad: bool,
                   compute_logsumexp: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, input gradient for an upstream gradient of 1, row log-sum-exp), the last two empty
    placeholders unless ``compute_grad`` / ``compute_logsumexp`` (probability targets only)."""
    loss, grad, *lse = _ce.cross_entropy_forward(input, target, weight, ignore_index, reduction, label_smoothing,
                                                 compute_grad=compute_grad, compute_logsumexp=compute_logsumexp)
    return (fresh(loss, input, target, weight), _grad_or_placeholder(grad, input),
            _grad_or_placeholder(next(iter(lse), None), input))


@op("cross_entropy_target_backward")
def _cross_entropy_target_backward(grad_output: Tensor, input: Tensor, target: Tensor, weight: Tensor | None,
                                   ignore_index: int, reduction: str, label_smoothing: float,
                                   logsumexp: Tensor | None) -> Tensor:
    return fresh(_ce.cross_entropy_target_backward(grad_output.to(input.dtype).contiguous(), input, target, weight,
                                                   ignore_index, reduction, label_smoothing, logsumexp),
                 grad_output, input, target)


@op("cross_entropy_weight_backward")
def _cross_entropy_weight_backward(grad_output: Tensor, input: Tensor, target: Tensor, weight: Tensor | None,
                                   ignore_index: int, reduction: str, label_smoothing: float,
                                   logsumexp: Tensor | None) -> Tensor:
    return fresh(_ce.cross_entropy_weight_backward(grad_output.to(input.dtype).contiguous(), input, target, weight,
                                                   ignore_index, reduction, label_smoothing, logsumexp),
                 grad_output, input, target, weight)


@op("focal_loss")
def _focal_loss(input: Tensor, target: Tensor, alpha: Tensor | None, gamma: float, ignore_index: int,
                reduction: str, compute_grad: bool) -> tuple[Tensor, Tensor]:
    loss, grad = _ce.focal_loss_forward(input, target, gamma, alpha, ignore_index, reduction,
                                        compute_grad=compute_grad)
    return fresh(loss, input, target, alpha), _grad_or_placeholder(grad, input)


@op("cross_entropy_backward")
def _cross_entropy_backward(grad_output: Tensor, input: Tensor, target: Tensor, weight: Tensor | None,
                            ignore_index: int, reduction: str, label_smoothing: float) -> Tensor:
    return fresh(_ce.cross_entropy_backward(grad_output.to(input.dtype).contiguous(), input, target, weight,
                                            ignore_index, reduction, label_smoothing), grad_output, input)


@op("focal_loss_backward")
def _focal_loss_backward(grad_output: Tensor, input: Tensor, target: Tensor, alpha: Tensor | None, gamma: float,
                         ignore_index: int, reduction: str) -> Tensor:
    return fresh(_ce.focal_loss_backward(grad_output.to(input.dtype).contiguous(), input, target, gamma, alpha,
                                         ignore_index, reduction), grad_output, input)


@op("nll_loss")
def _nll_loss(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str) -> Tensor:
    return fresh(_ce.nll_loss(input, target, weight, ignore_index, reduction), input, target, weight)


@op("nll_loss_backward")
def _nll_loss_backward(grad_output: Tensor, input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                       reduction: str) -> Tensor:
    return fresh(_ce.nll_loss_backward(grad_output.to(input.dtype).contiguous(), input, target, weight, ignore_index,
                                       reduction), grad_output, input)


@op("linear_cross_entropy")
def _linear_cross_entropy(input: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None, ignore_index: int,
                          reduction: str, label_smoothing: float, chunk_size: int | None,
                          compute_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, grad input, grad weight, grad bias) for an upstream gradient of 1, the gradients
    empty placeholders unless ``compute_grad`` (and for a missing bias)."""
    arguments = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                     chunk_size=chunk_size)
    if compute_grad:
        loss, *grads = _ce.linear_cross_entropy_forward(input, weight, target, bias, compute_grad=True, **arguments)
    else:
        loss, grads = _ce.linear_cross_entropy(input, weight, target, bias, **arguments), (None, None, None)
    return (fresh(loss, input, weight, bias), *fresh_all(tuple(grads), input, weight, bias))


@op("linear_cross_entropy_backward")
def _linear_cross_entropy_backward(grad_output: Tensor, input: Tensor, weight: Tensor, target: Tensor,
                                   bias: Tensor | None, ignore_index: int, reduction: str, label_smoothing: float,
                                   chunk_size: int | None) -> tuple[Tensor, Tensor, Tensor]:
    grads = _ce.linear_cross_entropy_backward(grad_output.to(input.dtype).contiguous(), input, weight, target, bias,
                                              ignore_index, reduction, label_smoothing, chunk_size)
    return fresh_all(tuple(grads), grad_output, input, weight, bias)


# ---------------------------------------------------------------------------------------------
# Fake implementations: shapes and dtypes only (the loss in the input's dtype)


def _loss_shape(input: Tensor, reduction: str, class_dim_last: bool = False) -> tuple:
    if reduction != "none":
        return ()
    if class_dim_last:
        return tuple(input.shape[:-1])
    axis = _ce.class_axis(input)
    return tuple(s for a, s in enumerate(input.shape) if a != axis)


def _fake_gradient(x: Tensor | None, wanted: bool, template: Tensor) -> Tensor:
    return empty(x) if wanted and x is not None else template.new_empty(0)


@_cross_entropy.register_fake
def _(input, target, weight, ignore_index, reduction, label_smoothing, compute_grad, compute_logsumexp=False):
    lse_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    lse = empty(input, _loss_shape(input, "none"), lse_dtype) if compute_logsumexp else input.new_empty(0)
    return empty(input, _loss_shape(input, reduction)), _fake_gradient(input, compute_grad, input), lse


@_focal_loss.register_fake
def _(input, target, alpha, gamma, ignore_index, reduction, compute_grad):
    return empty(input, _loss_shape(input, reduction)), _fake_gradient(input, compute_grad, input)


@_nll_loss.register_fake
def _(input, target, weight, ignore_index, reduction):
    return empty(input, _loss_shape(input, reduction))


for _op in (_cross_entropy_backward, _focal_loss_backward, _nll_loss_backward):
    _op.register_fake(lambda grad_output, input, *rest: empty(input))
_cross_entropy_target_backward.register_fake(lambda grad_output, input, target, *rest: empty(target))
_cross_entropy_weight_backward.register_fake(
    lambda grad_output, input, *rest: empty(input, (input.shape[_ce.class_axis(input)],)))


@_linear_cross_entropy.register_fake
def _(input, weight, target, bias, ignore_index, reduction, label_smoothing, chunk_size, compute_grad):
    return (empty(input, _loss_shape(input, reduction, class_dim_last=True)),
            *(_fake_gradient(x, compute_grad, input) for x in (input, weight, bias)))


@_linear_cross_entropy_backward.register_fake
def _(grad_output, input, weight, target, bias, ignore_index, reduction, label_smoothing, chunk_size):
    return tuple(_fake_gradient(x, True, input) for x in (input, weight, bias))


# ---------------------------------------------------------------------------------------------
# Autograd


def _unit_gradient_times(grad: Tensor, grad_output: Tensor, reduction: str, axis: int) -> Tensor:
    """``grad`` (the gradient for an upstream gradient of 1) times the actual upstream gradient."""
    if reduction == "none":
        grad_output = grad_output.unsqueeze(axis)
    return grad * grad_output.to(grad.dtype)


def _once_differentiable() -> None:
    """A gradient saved by the forward kernel is a constant to autograd: differentiating the
    backward (``create_graph=True``, which runs it with grad mode on) would silently miss its
    dependence on the inputs, so it is refused, as ``torch.autograd.function.once_differentiable``
    refuses (the backward ops refuse alike: they have no autograd formula)."""
    if torch.is_grad_enabled():
        raise RuntimeError("gpukernels cross_entropy, focal_loss and linear_cross_entropy are differentiable once: "
                           "their backward reuses the gradient the forward kernel computed, so create_graph=True "
                           "(double backward) is not supported")


def _fused_setup(has_logsumexp_flag: bool):
    """setup_context for cross_entropy and focal_loss: save the forward's gradient, or (without
    one) the logits; the logits and the row log-sum-exp too when a probability target or its
    class weights want a gradient. ``has_logsumexp_flag``: the op ends with cross_entropy's
    ``compute_logsumexp`` argument (focal_loss has none)."""

    def setup(ctx, inputs, output):
        kept_logsumexp = has_logsumexp_flag and inputs[7]
        input, target, weights, *options, compute_grad = inputs[:7]
        grad, *lse = output[1:]
        ctx.mark_non_differentiable(*output[1:])
        ctx.options, ctx.compute_grad = tuple(options), compute_grad
        ctx.reduction = next(o for o in options if isinstance(o, str))  # the only string option of either op
        ctx.axis = _ce.class_axis(input)
        # the logits stay alive only where backward reads them: no forward gradient, or the target's
        # or the class weights' (probability targets only)
        wants_target = len(output) == 3 and target.is_floating_point() and (
            target.requires_grad or (weights is not None and weights.requires_grad))
        ctx.save_for_backward(grad if compute_grad else None, input if wants_target or not compute_grad else None,
                              target, weights, lse[0] if kept_logsumexp else None)

    return setup


def _fused_gradients(backward_op, target_backward_op=None, weight_backward_op=None):
    def gradients(ctx, grad_output, *_grads_of_outputs):
        grad, input, target, weights, lse = ctx.saved_tensors
        grad_input = grad_target = grad_weight = None
        if ctx.needs_input_grad[0]:
            if ctx.compute_grad:
                _once_differentiable()
                grad_input = _unit_gradient_times(grad, grad_output, ctx.reduction, ctx.axis)
            else:
                grad_input = backward_op(grad_output, input, target, weights, *ctx.options)
        if ctx.needs_input_grad[1] and target_backward_op is not None and target.is_floating_point():
            grad_target = target_backward_op(grad_output, input, target, weights, *ctx.options, lse)
        if ctx.needs_input_grad[2] and weight_backward_op is not None and target.is_floating_point():
            grad_weight = weight_backward_op(grad_output, input, target, weights, *ctx.options, lse)
        return (grad_input, grad_target, grad_weight) + (None,) * (len(ctx.needs_input_grad) - 3)

    return gradients


_cross_entropy.register_autograd(_fused_gradients(_cross_entropy_backward, _cross_entropy_target_backward,
                                                  _cross_entropy_weight_backward),
                                 setup_context=_fused_setup(has_logsumexp_flag=True))
_focal_loss.register_autograd(_fused_gradients(_focal_loss_backward),
                              setup_context=_fused_setup(has_logsumexp_flag=False))


def _nll_setup(ctx, inputs, output):
    input, target, weight, ignore_index, reduction = inputs
    ctx.options = (ignore_index, reduction)
    ctx.save_for_backward(input, target, weight)


def _nll_gradients(ctx, grad_output):
    grad = _nll_loss_backward(grad_output, *ctx.saved_tensors, *ctx.options) if ctx.needs_input_grad[0] else None
    return grad, None, None, None, None


_nll_loss.register_autograd(_nll_gradients, setup_context=_nll_setup)


def _linear_setup(ctx, inputs, output):
    input, weight, target, bias, *options, compute_grad = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.options, ctx.saved_gradients, ctx.has_bias = tuple(options), compute_grad, bias is not None
    ctx.save_for_backward(*(output[1:] if compute_grad else (input, weight, target, bias)))


def _linear_gradients(ctx, grad_output, *_grads_of_grads):
    needs = ctx.needs_input_grad
    if not (needs[0] or needs[1] or needs[3]):
        return (None,) * 9
    if ctx.saved_gradients:
        _once_differentiable()
        grads = tuple(g * grad_output.to(g.dtype) for g in ctx.saved_tensors)
    else:
        grads = _linear_cross_entropy_backward(grad_output, *ctx.saved_tensors, *ctx.options)
    grad_input, grad_weight, grad_bias = grads
    return (grad_input if needs[0] else None, grad_weight if needs[1] else None, None,
            grad_bias if needs[3] and ctx.has_bias else None, None, None, None, None, None)


_linear_cross_entropy.register_autograd(_linear_gradients, setup_context=_linear_setup)

_ROW_AUTOCAST = {"cpu": FLOAT32, "cuda": FLOAT32}
_LINEAR_AUTOCAST = {"cpu": LOWER_PRECISION, "cuda": LOWER_PRECISION}
for _op in (_cross_entropy, _focal_loss, _nll_loss):
    autocast(_op, **_ROW_AUTOCAST)
autocast(_linear_cross_entropy, **_LINEAR_AUTOCAST)


# ---------------------------------------------------------------------------------------------
# torch.nn.functional's signatures; the checks that do not read the data run here (trace time)


def _legacy(size_average, reduce, reduction: str) -> str:
    """torch's rule for the deprecated ``size_average``/``reduce`` arguments (with its warning)."""
    if size_average is not None or reduce is not None:
        return _reduction.legacy_get_string(size_average, reduce)
    return reduction


def _wants_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _refuse_weight_grad(op_name: str, weight: Tensor | None, name: str = "weight") -> None:
    """A class weight that requires grad would silently get none: refused, as torch refuses it
    for class-index targets and nll_loss (probability targets differentiate it: not called there)."""
    if _wants_grad(weight):
        raise RuntimeError(f"{name} requires grad, but gpukernels {op_name} gives no gradient to the class weights "
                           f"of class-index targets; pass {name}.detach() (torch's nll_loss and class-index "
                           "cross_entropy refuse such a weight too)")


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average=None, ignore_index: int = -100, reduce=None, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """``torch.nn.functional.cross_entropy``: same arguments (legacy ones included)."""
    checked = autocast_inputs(_ROW_AUTOCAST, input, target, weight)  # the dtypes the op will see
    probs, ignore_index, reduction = _ce.check_row_options("cross_entropy", *checked, "weight", ignore_index,
                                                           _legacy(size_average, reduce, reduction), True,
                                                           values=False)
    label_smoothing = _ce._check_smoothing(label_smoothing)
    if not probs:
        _refuse_weight_grad("cross_entropy", weight)
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, _wants_grad(input),
                          probs and _wants_grad(target, weight))[0]


def nll_loss(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, size_average=None,
             ignore_index: int = -100, reduce=None, reduction: str = "mean") -> torch.Tensor:
    """``torch.nn.functional.nll_loss``: same arguments (legacy ones included)."""
    checked = autocast_inputs(_ROW_AUTOCAST, input, target, weight)
    _, ignore_index, reduction = _ce.check_row_options("nll_loss", *checked, "weight", ignore_index,
                                                       _legacy(size_average, reduce, reduction), False, values=False)
    _refuse_weight_grad("nll_loss", weight)
    return _nll_loss(input, target, weight, ignore_index, reduction)


def focal_loss(input: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: torch.Tensor | None = None,
               ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Multi-class focal loss on softmax probabilities (see ``gpukernels.focal_loss``)."""
    checked = autocast_inputs(_ROW_AUTOCAST, input, target, alpha)
    _, ignore_index, reduction = _ce.check_row_options("focal_loss", *checked, "alpha", ignore_index, reduction, False,
                                                       values=False)
    gamma = _ce.check_real_number(gamma, "gamma")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    _refuse_weight_grad("focal_loss", alpha, "alpha")
    return _focal_loss(input, target, alpha, gamma, ignore_index, reduction, _wants_grad(input))[0]


def linear_cross_entropy(input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         bias: torch.Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                         label_smoothing: float = 0.0, chunk_size: int | None = None) -> torch.Tensor:
    """``cross_entropy(input @ weight.T + bias, target)`` without materialising the logits."""
    checked = autocast_inputs(_LINEAR_AUTOCAST, input, weight, target, bias)
    ignore_index, reduction, label_smoothing, _ = _ce.check_linear_options(
        *checked, ignore_index, reduction, label_smoothing, chunk_size, values=False)
    compute_grad = reduction != "none" and _wants_grad(input, weight, bias)
    loss = _linear_cross_entropy(input, weight, target, bias, ignore_index, reduction, label_smoothing, chunk_size,
                                 compute_grad)[0]
    if torch.is_autocast_enabled(input.device.type) and loss.dtype in (torch.float16, torch.bfloat16):
        loss = loss.float()  # as cross_entropy's float32 rule gives it after linear's lower-precision one
    return loss
