"""LayerNorm and RMSNorm, drop-in for torch.nn.LayerNorm and torch.nn.RMSNorm: they are those
classes (same constructor, parameters, initialisation, ``state_dict`` and repr) with the forward
running our kernels."""

from __future__ import annotations

import torch

from .. import _normalization as F


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True)``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)


__all__ = ["LayerNorm", "RMSNorm"]
