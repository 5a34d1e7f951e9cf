"""Softmax family as autograd Functions. Each saves its output only: the softmax and
log-softmax gradients are functions of the output, and so is the masked softmax's (its output
is 0 wherever the mask drops a position, so the softmax backward gives 0 there)."""

from __future__ import annotations

import warnings

import torch

from ..ops import softmax as _sm


class _OutputSaving(torch.autograd.Function):
    """softmax and log_softmax: backward reads only the output (ATen's convention)."""

    @staticmethod
    def forward(ctx, x, dim, op):
        y = getattr(_sm, op)(x, dim)
        ctx.save_for_backward(y)
        ctx.dim, ctx.op = dim, op
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return getattr(_sm, f"{ctx.op}_backward")(grad_output.contiguous(), y, ctx.dim), None, None


class _MaskedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, lengths, dim):
        y = _sm.masked_softmax(x, mask, lengths, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return _sm.masked_softmax_backward(grad_output.contiguous(), y, ctx.dim), None, None, None


def _implicit_dim(name: str, ndim: int, stacklevel: int) -> int:
    """torch.nn.functional's choice for ``dim=None`` (deprecated there, with the same warning):
    0 for 0-, 1- and 3-dimensional inputs, else 1."""
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def _prepare(name: str, input: torch.Tensor, dim, dtype, stacklevel: int):
    if dim is None:
        dim = _implicit_dim(name, input.dim(), stacklevel + 1)
    if dtype is not None:  # as in torch: cast the input first, so the result has this dtype
        input = input.to(dtype)
    return input, dim


def softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None):
    """``torch.nn.functional.softmax``: same arguments, same implicit-dim rule and warning."""
    input, dim = _prepare("softmax", input, dim, dtype, _stacklevel)
    return _OutputSaving.apply(input, dim, "softmax")


def log_softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: torch.dtype | None = None):
    """``torch.nn.functional.log_softmax``: same arguments, same implicit-dim rule and warning."""
    input, dim = _prepare("log_softmax", input, dim, dtype, _stacklevel)
    return _OutputSaving.apply(input, dim, "log_softmax")


def masked_softmax(input: torch.Tensor, mask: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                   dim: int = -1) -> torch.Tensor:
    """Softmax over the positions where ``mask`` is True (and ``index < lengths``); dropped
    positions and fully masked rows are 0, with zero gradient. See ``gpukernels.masked_softmax``."""
    return _MaskedSoftmax.apply(input, mask, lengths, dim)
