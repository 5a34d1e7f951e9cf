"""Softmax modules, drop-in for torch.nn.Softmax and torch.nn.LogSoftmax (``dim=None`` picks
the dimension as torch.nn does, with its deprecation warning)."""

from __future__ import annotations

import torch

from .. import _softmax as F


class _OverDim(torch.nn.Module):
    __constants__ = ["dim"]

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def __setstate__(self, state):
        super().__setstate__(state)
        if not hasattr(self, "dim"):  # modules pickled before dim existed, as torch.nn allows
            self.dim = None

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_OverDim):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.softmax(input, self.dim, _stacklevel=5)


class LogSoftmax(_OverDim):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(input, self.dim, _stacklevel=5)


__all__ = ["Softmax", "LogSoftmax"]
