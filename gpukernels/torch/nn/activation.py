"""Activation modules, drop-in for torch.nn.Sigmoid, Tanh, ReLU, LeakyReLU and GELU."""

from __future__ import annotations

import torch

from .. import _activation as F


class Sigmoid(torch.nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.sigmoid(input)


class Tanh(torch.nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.tanh(input)


class ReLU(torch.nn.Module):
    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, inplace=self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class LeakyReLU(torch.nn.Module):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(input, self.negative_slope, self.inplace)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}" + (", inplace=True" if self.inplace else "")


class GELU(torch.nn.Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.gelu(input, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


__all__ = ["Sigmoid", "Tanh", "ReLU", "LeakyReLU", "GELU"]
