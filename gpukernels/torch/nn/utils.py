"""``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_`` on the fused kernels: one
reduction launch for the norm of all gradients together, one launch scaling them all."""

from __future__ import annotations

from typing import Iterable

import torch

from ...ops import optim as F


def _grads(parameters: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """Scale the gradients of ``parameters`` in place so that their ``norm_type``-norm, taken
    over all of them as one vector, is at most ``max_norm``; return that norm (before
    clipping). As torch's: the factor is ``min(1, max_norm / (norm + 1e-6))``, a non-finite
    norm raises RuntimeError with ``error_if_nonfinite``, and no gradient gives a norm of 0.
    ``foreach`` is accepted for compatibility; the kernels are always multi-tensor."""
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    return F.clip_grad_norm_(grads, float(max_norm), float(norm_type), error_if_nonfinite)


def clip_grad_value_(parameters: torch.Tensor | Iterable[torch.Tensor], clip_value: float,
                     foreach: bool | None = None) -> None:
    """Clamp every gradient element of ``parameters`` into ``[-clip_value, clip_value]``."""
    grads = _grads(parameters)
    if grads:
        F.clip_grad_value_(grads, float(clip_value))


__all__ = ["clip_grad_norm_", "clip_grad_value_"]
