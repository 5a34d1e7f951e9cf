"""The elementwise loss cases every loss test file runs: our op, the PyTorch float64 formula it
must match, how its inputs are drawn, and the parameters its backward takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

import gpukernels as gk

REDUCTIONS = ("none", "mean", "sum")


def torchvision_sigmoid_focal_loss(inputs, targets, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"):
    """``torchvision.ops.sigmoid_focal_loss`` as its documentation defines it, in torch ops
    (torchvision is not a dependency): autograd through it is the gradient to match."""
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


@dataclass(frozen=True)
class LossCase:
    id: str
    loss: str  # the formula's name in gpukernels.reference.loss
    op: Callable  # ours, (input, target, reduction=..., **params)
    theirs: Callable  # torch's, same call
    inputs: str = "real"  # "real": normal values; "prob": probabilities in (0, 1)
    params: dict = field(default_factory=dict)  # scalar keyword arguments of both ops
    weights: tuple[str, ...] = ()  # tensor keyword arguments: "weight" (per element), "pos_weight" (per class)
    p1: float = 0.0  # the backward's parameters
    p2: float = 0.0

    def draw(self, rng, shape, dtype=torch.float64, device="cpu", hard_targets=False):
        """(input, target, {weight name: tensor}) with fresh random values, never zeros."""
        if self.inputs == "prob":
            x = rng.uniform(0.02, 0.98, shape)
        else:
            x = rng.standard_normal(shape) * 2.0
        t = rng.integers(0, 2, shape).astype(np.float64) if hard_targets else rng.uniform(0.0, 1.0, shape)
        if self.loss in ("mse", "l1", "huber", "smooth_l1"):
            t = rng.standard_normal(shape) * 2.0
        as_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64)).to(device=device, dtype=dtype)  # noqa: E731
        weights = {}
        if "weight" in self.weights:
            weights["weight"] = as_tensor(rng.uniform(0.5, 2.0, shape))
        if "pos_weight" in self.weights:
            weights["pos_weight"] = as_tensor(rng.uniform(0.5, 3.0, shape[-1:]))  # one per class (last dim)
        return as_tensor(x), as_tensor(t), weights

    def ours(self, x, t, reduction, weights):
        return self.op(x, t, reduction=reduction, **self.params, **weights)

    def reference(self, x, t, reduction, weights):
        return self.theirs(x, t, reduction=reduction, **self.params, **weights)


CASES = (
    LossCase("mse", "mse", gk.mse_loss, F.mse_loss),
    LossCase("l1", "l1", gk.l1_loss, F.l1_loss),
    LossCase("huber-d1", "huber", gk.huber_loss, F.huber_loss, params={"delta": 1.0}, p1=1.0),
    LossCase("huber-d0.3", "huber", gk.huber_loss, F.huber_loss, params={"delta": 0.3}, p1=0.3),
    LossCase("smoothl1-b1", "smooth_l1", gk.smooth_l1_loss, F.smooth_l1_loss, params={"beta": 1.0}, p1=1.0),
    LossCase("smoothl1-b0.3", "smooth_l1", gk.smooth_l1_loss, F.smooth_l1_loss, params={"beta": 0.3}, p1=0.3),
    LossCase("smoothl1-b0", "l1", gk.smooth_l1_loss, F.smooth_l1_loss, params={"beta": 0.0}),
    LossCase("bce", "bce", gk.binary_cross_entropy, F.binary_cross_entropy, inputs="prob"),
    LossCase("bce-w", "bce", gk.binary_cross_entropy, F.binary_cross_entropy, inputs="prob", weights=("weight",)),
    LossCase("bcelogits", "bce_logits", gk.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
    LossCase("bcelogits-w-pw", "bce_logits", gk.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits,
             weights=("weight", "pos_weight")),
    LossCase("focal", "focal", gk.sigmoid_focal_loss, torchvision_sigmoid_focal_loss,
             params={"alpha": 0.25, "gamma": 2.0}, p1=0.25, p2=2.0),
    LossCase("focal-a-1-g1.5", "focal", gk.sigmoid_focal_loss, torchvision_sigmoid_focal_loss,
             params={"alpha": -1.0, "gamma": 1.5}, p1=-1.0, p2=1.5),
    LossCase("focal-a0.6-g0", "focal", gk.sigmoid_focal_loss, torchvision_sigmoid_focal_loss,
             params={"alpha": 0.6, "gamma": 0.0}, p1=0.6, p2=0.0),
)
CASE_IDS = [c.id for c in CASES]


def torch_grads(case: LossCase, x, t, reduction, weights, upstream):
    """(loss, grad input, grad target) from PyTorch autograd through ``case.theirs``."""
    xr = x.detach().clone().requires_grad_()
    tr = t.detach().clone().requires_grad_()
    out = case.reference(xr, tr, reduction, weights)
    gx, gt = torch.autograd.grad(out, (xr, tr), upstream)
    return out.detach(), gx, gt
