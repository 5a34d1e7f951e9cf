"""Elementwise losses with PyTorch's names, arguments, defaults and reductions:
``mse_loss``, ``l1_loss``, ``huber_loss``, ``smooth_l1_loss``, ``binary_cross_entropy``,
``binary_cross_entropy_with_logits`` (``torch.nn.functional``) and ``sigmoid_focal_loss``
(``torchvision.ops``, whose default reduction is ``"none"``). The formulas are in
``gpukernels/reference/loss.py``.

Backward ops follow ATen's ``*_backward`` (ATen has no ``l1_loss_backward``; ours is named so):
the gradient of the (reduced) loss for the input, given the upstream gradient (a 0-d array for
``"mean"``/``"sum"``, the loss's shape for ``"none"``). ``loss_backward`` gives the gradient for
the target too (PyTorch differentiates every target here); ``weight`` and ``pos_weight`` are
constants, as in PyTorch, which refuses to differentiate them.

Shapes: ``target`` must have ``input``'s shape. PyTorch broadcasts a differently shaped target
for mse/l1/huber/smooth_l1 with a warning ("this will likely lead to incorrect results") and
rejects it for the BCE losses; we reject it for all, with a ValueError naming both shapes.
``weight`` (and ``pos_weight``, usually one value per class on the last dim) may be any shape
that broadcasts to ``input``'s, as in PyTorch. ``target`` and the weights share ``input``'s
array library, device and dtype.

``binary_cross_entropy`` checks, as PyTorch does, that every input and target lies in [0, 1]
(a ValueError otherwise; NaN fails the check). On a GPU this reads both arrays once more and
waits for the answer before the loss kernel launches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._dispatch import array_library, call
from ._checks import check_choice, check_float, check_match, check_real_number

REDUCTIONS = ("none", "mean", "sum")
NEEDS = ("input", "target", "both")


# ---------------------------------------------------------------------------------------------
# Checks


def _check_pair(input: Any, target: Any) -> None:
    check_float(input, "input")
    check_match("input", input, "target", target, shape=True)


def _check_weight(input: Any, weight: Any, name: str) -> None:
    if weight is None:
        return
    check_match("input", input, name, weight)
    shape = tuple(input.shape)
    try:
        broadcast = np.broadcast_shapes(tuple(weight.shape), shape)
    except ValueError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(f"{name} has shape {tuple(weight.shape)}, which does not broadcast to input's shape {shape}")


def _check_unit_interval(x: Any, name: str) -> None:
    """Every value of ``x`` in [0, 1], as torch's binary_cross_entropy demands (NaN fails)."""
    torch_tensor = array_library(x) == "torch"
    if (x.numel() if torch_tensor else x.size) == 0:
        return
    if torch_tensor:
        low, high = (float(v) for v in x.aminmax())  # one pass over the data
    else:
        low, high = float(x.min()), float(x.max())
    if not (low >= 0.0 and high <= 1.0):
        raise ValueError(f"all elements of {name} should be between 0 and 1 (found values in [{low}, {high}])")


def _reduction(reduction: Any) -> str:
    return check_choice(reduction, "reduction", REDUCTIONS)


def _check_grad_output(grad_output: Any, input: Any, reduction: str) -> None:
    check_float(grad_output, "grad_output")
    check_match("input", input, "grad_output", grad_output)
    want = tuple(input.shape) if reduction == "none" else ()
    if tuple(grad_output.shape) != want:
        raise ValueError(f"grad_output has shape {tuple(grad_output.shape)}; with reduction={reduction!r} it must "
                         f"have shape {want}")


# ---------------------------------------------------------------------------------------------
# The two entry points every loss goes through


def _forward(loss: str, input, target, weight, pos_weight, reduction: str, p1: float = 0.0, p2: float = 0.0):
    return call("loss", "loss_forward", (input, target, weight, pos_weight),
                {"loss": loss, "reduction": reduction, "p1": p1, "p2": p2})


def loss_backward(loss: str, grad_output: Any, input: Any, target: Any, weight: Any = None, pos_weight: Any = None,
                  reduction: str = "mean", p1: float = 0.0, p2: float = 0.0, need: str = "input") -> Any:
    """The gradient of ``loss`` (a name of ``reference.loss.LOSSES``) for the input, the target or
    both (``need``), in one pass. Called by the ``*_backward`` ops and the autograd Functions,
    after the forward's checks (repeated here for the arrays it adds)."""
    reduction = _reduction(reduction)
    _check_pair(input, target)
    _check_grad_output(grad_output, input, reduction)
    _check_weight(input, weight, "weight")
    _check_weight(input, pos_weight, "pos_weight")
    check_choice(need, "need", NEEDS)
    return call("loss", "loss_backward", (grad_output, input, target, weight, pos_weight),
                {"loss": loss, "reduction": reduction, "p1": p1, "p2": p2, "need": need},
                returns_like=(input, target) if need == "both" else None)


# ---------------------------------------------------------------------------------------------
# Parameters


def _delta(delta: Any) -> float:
    delta = check_real_number(delta, "delta")
    if not delta > 0:
        raise ValueError(f"huber_loss needs delta > 0, got {delta}")
    return delta


def _smooth_l1(beta: Any) -> tuple[str, float]:
    """(loss, beta): beta = 0 is the L1 loss, as torch.nn.functional.smooth_l1_loss computes it."""
    beta = check_real_number(beta, "beta")
    if not beta >= 0:
        raise ValueError(f"smooth_l1_loss needs beta >= 0, got {beta}")
    return ("l1", 0.0) if beta == 0 else ("smooth_l1", beta)


def _regression(input, target, reduction):
    _check_pair(input, target)
    return _reduction(reduction)


def _bce(input, target, weight, reduction, check_range: bool):
    _check_pair(input, target)
    _check_weight(input, weight, "weight")
    reduction = _reduction(reduction)
    if check_range:
        _check_unit_interval(input, "input")
        _check_unit_interval(target, "target")
    return reduction


# ---------------------------------------------------------------------------------------------
# Forward


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Any:
    """``(input - target)^2``, reduced."""
    return _forward("mse", input, target, None, None, _regression(input, target, reduction))


def l1_loss(input: Any, target: Any, reduction: str = "mean") -> Any:
    """``|input - target|`` (the mean absolute error with ``reduction="mean"``)."""
    return _forward("l1", input, target, None, None, _regression(input, target, reduction))


def huber_loss(input: Any, target: Any, reduction: str = "mean", delta: float = 1.0) -> Any:
    """``0.5 d^2`` where ``|d| < delta``, else ``delta (|d| - 0.5 delta)``, ``d = input - target``."""
    reduction = _regression(input, target, reduction)
    return _forward("huber", input, target, None, None, reduction, _delta(delta))


def smooth_l1_loss(input: Any, target: Any, reduction: str = "mean", beta: float = 1.0) -> Any:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 beta``; ``beta = 0`` is ``l1_loss``.
    Huber with ``delta = beta`` divided by ``beta``: the same function only when ``beta = 1``."""
    reduction = _regression(input, target, reduction)
    loss, beta = _smooth_l1(beta)
    return _forward(loss, input, target, None, None, reduction, beta)


def binary_cross_entropy(input: Any, target: Any, weight: Any = None, reduction: str = "mean") -> Any:
    """``-weight (t log x + (1 - t) log(1 - x))`` of probabilities ``x``, each log clamped at
    -100 as in PyTorch (so ``x = 0`` or ``1`` gives 100, not inf)."""
    reduction = _bce(input, target, weight, reduction, check_range=True)
    return _forward("bce", input, target, weight, None, reduction)


def binary_cross_entropy_with_logits(input: Any, target: Any, weight: Any = None, reduction: str = "mean",
                                     pos_weight: Any = None) -> Any:
    """BCE of ``sigmoid(input)`` in the stable form ``(1 - t) x + (1 + (pos_weight - 1) t)
    softplus(-x)``, times ``weight``; ``pos_weight`` weighs the positive term (one value per
    class on the last dim, broadcast as in PyTorch)."""
    reduction = _bce(input, target, weight, reduction, check_range=False)
    _check_weight(input, pos_weight, "pos_weight")
    return _forward("bce_logits", input, target, weight, pos_weight, reduction)


def _focal(alpha: Any, gamma: Any) -> tuple[float, float]:
    return check_real_number(alpha, "alpha"), check_real_number(gamma, "gamma")


def sigmoid_focal_loss(inputs: Any, targets: Any, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> Any:
    """``torchvision.ops.sigmoid_focal_loss``: ``alpha_t * ce * (1 - p_t)^gamma`` with
    ``p = sigmoid(inputs)``, ``ce`` the BCE of the logits, ``p_t = p t + (1 - p)(1 - t)`` and
    ``alpha_t = alpha t + (1 - alpha)(1 - t)`` (no weighting when ``alpha < 0``)."""
    _check_pair(inputs, targets)
    reduction = _reduction(reduction)
    return _forward("focal", inputs, targets, None, None, reduction, *_focal(alpha, gamma))


# ---------------------------------------------------------------------------------------------
# Backward (ATen's names; the gradient for the input)


def mse_loss_backward(grad_output: Any, input: Any, target: Any, reduction: str = "mean") -> Any:
    return loss_backward("mse", grad_output, input, target, reduction=reduction)


def l1_loss_backward(grad_output: Any, input: Any, target: Any, reduction: str = "mean") -> Any:
    """``sign(input - target)`` times the upstream gradient (0 where they are equal, as torch)."""
    return loss_backward("l1", grad_output, input, target, reduction=reduction)


def huber_loss_backward(grad_output: Any, input: Any, target: Any, reduction: str = "mean",
                        delta: float = 1.0) -> Any:
    return loss_backward("huber", grad_output, input, target, reduction=reduction, p1=_delta(delta))


def smooth_l1_loss_backward(grad_output: Any, input: Any, target: Any, reduction: str = "mean",
                            beta: float = 1.0) -> Any:
    loss, beta = _smooth_l1(beta)
    return loss_backward(loss, grad_output, input, target, reduction=reduction, p1=beta)


def binary_cross_entropy_backward(grad_output: Any, input: Any, target: Any, weight: Any = None,
                                  reduction: str = "mean") -> Any:
    """``weight (x - t) / max(x (1 - x), 1e-12)`` times the upstream gradient (ATen's floor)."""
    return loss_backward("bce", grad_output, input, target, weight, reduction=reduction)


def binary_cross_entropy_with_logits_backward(grad_output: Any, input: Any, target: Any, weight: Any = None,
                                              pos_weight: Any = None, reduction: str = "mean") -> Any:
    """``weight (sigmoid(x) (1 + (pos_weight - 1) t) - pos_weight t)`` times the upstream gradient."""
    return loss_backward("bce_logits", grad_output, input, target, weight, pos_weight, reduction=reduction)


def sigmoid_focal_loss_backward(grad_output: Any, inputs: Any, targets: Any, alpha: float = 0.25,
                                gamma: float = 2.0, reduction: str = "none") -> Any:
    """The gradient of ``sigmoid_focal_loss`` for ``inputs`` (what autograd gives through
    torchvision's composite)."""
    alpha, gamma = _focal(alpha, gamma)
    return loss_backward("focal", grad_output, inputs, targets, reduction=reduction, p1=alpha, p2=gamma)


__all__ = [
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "sigmoid_focal_loss",
    "mse_loss_backward", "l1_loss_backward", "huber_loss_backward", "smooth_l1_loss_backward",
    "binary_cross_entropy_backward", "binary_cross_entropy_with_logits_backward", "sigmoid_focal_loss_backward",
]
