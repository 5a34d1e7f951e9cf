"""Cross-entropy losses, drop-in for torch.nn.CrossEntropyLoss and torch.nn.NLLLoss: they are
torch's own loss base classes (same constructor arguments, the legacy ``size_average``/``reduce``
with torch's warning, ``weight`` a buffer, so ``state_dict`` moves unchanged) whose forward runs
our ops. FocalLoss is the multi-class focal loss (``alpha`` a buffer like ``weight``).
LinearCrossEntropyLoss is the last layer and the loss in one: it takes the hidden states and the
output projection's weight, so the (N, V) logits are never built."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _WeightedLoss

from .. import _cross_entropy as F


class CrossEntropyLoss(_WeightedLoss):
    __constants__ = ["ignore_index", "reduction", "label_smoothing"]

    def __init__(self, weight: torch.Tensor | None = None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(_WeightedLoss):
    __constants__ = ["ignore_index", "reduction"]

    def __init__(self, weight: torch.Tensor | None = None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean") -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class FocalLoss(torch.nn.Module):
    """``-alpha[y] (1 - p_y)^gamma log p_y`` with ``p = softmax(input)`` over the class dim."""

    __constants__ = ["gamma", "ignore_index", "reduction"]

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", alpha)
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.focal_loss(input, target, gamma=self.gamma, alpha=self.alpha, ignore_index=self.ignore_index,
                            reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class LinearCrossEntropyLoss(torch.nn.Module):
    """``cross_entropy(input @ weight.T + bias, target)`` computed a chunk of rows at a time.

    The projection belongs to the model (typically its ``lm_head``), so ``forward`` takes its
    ``weight`` and ``bias`` as arguments, in ``F.linear``'s order: ``loss(hidden, lm_head.weight,
    target, lm_head.bias)``. Class-index targets only."""

    __constants__ = ["ignore_index", "reduction", "label_smoothing", "chunk_size"]

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.chunk_size = chunk_size

    def forward(self, input: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear_cross_entropy(input, weight, target, bias, ignore_index=self.ignore_index,
                                      reduction=self.reduction, label_smoothing=self.label_smoothing,
                                      chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, chunk_size={self.chunk_size}")


__all__ = ["CrossEntropyLoss", "NLLLoss", "FocalLoss", "LinearCrossEntropyLoss"]
