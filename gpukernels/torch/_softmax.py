"""The softmax family as PyTorch operators (``torch.ops.gpukernels.softmax``, ``log_softmax``,
``masked_softmax`` and the backward ops, see ``_library``). Each saves its output only: the
softmax and log-softmax gradients are functions of the output, and so is the masked softmax's
(its output is 0 wherever the mask drops a position, so the softmax backward gives 0 there).

Autocast: torch runs softmax and log_softmax in float32 under CUDA autocast (its fp32 list) and
leaves them in the input's dtype on the CPU; ours and the masked softmax follow the same rule.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..ops import softmax as _sm
from ..ops._checks import check_float
from ._library import FLOAT32, autocast, empty, fresh, op


@op("softmax")
def _softmax(x: Tensor, dim: int) -> Tensor:
    return fresh(_sm.softmax(x, dim), x)


@op("log_softmax")
def _log_softmax(x: Tensor, dim: int) -> Tensor:
    return fresh(_sm.log_softmax(x, dim), x)


@op("masked_softmax")
def _masked_softmax(x: Tensor, mask: Tensor | None, lengths: Tensor | None, dim: int) -> Tensor:
    return fresh(_sm.masked_softmax(x, mask, lengths, dim), x)


@op("softmax_backward")
def _softmax_backward(grad_output: Tensor, output: Tensor, dim: int) -> Tensor:
    return fresh(_sm.softmax_backward(grad_output.contiguous(), output, dim), grad_output, output)


@op("log_softmax_backward")
def _log_softmax_backward(grad_output: Tensor, output: Tensor, dim: int) -> Tensor:
    return fresh(_sm.log_softmax_backward(grad_output.contiguous(), output, dim), grad_output, output)


for _op in (_softmax, _log_softmax, _masked_softmax, _softmax_backward, _log_softmax_backward):
    _op.register_fake(lambda x, *rest: empty(x))
for _op in (_softmax, _log_softmax, _masked_softmax):  # a backward keeps the dtypes its forward saved
    autocast(_op, cuda=FLOAT32)


def _save_output(ctx, inputs, output):
    ctx.dim = inputs[-1]
    ctx.save_for_backward(output)


_softmax.register_autograd(lambda ctx, g: (_softmax_backward(g, *ctx.saved_tensors, ctx.dim), None),
                           setup_context=_save_output)
_log_softmax.register_autograd(lambda ctx, g: (_log_softmax_backward(g, *ctx.saved_tensors, ctx.dim), None),
                               setup_context=_save_output)
_masked_softmax.register_autograd(
    lambda ctx, g: (_softmax_backward(g, *ctx.saved_tensors, ctx.dim), None, None, None), setup_context=_save_output)


def _implicit_dim(name: str, ndim: int, stacklevel: int) -> int:
    """torch.nn.functional's choice for ``dim=None`` (deprecated there, with the same warning):
    0 for 0-, 1- and 3-dimensional inputs, else 1."""
    warnings.warn(f"Implicit dimension choice for {name} has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def _prepare(name: str, input: torch.Tensor, dim, dtype, stacklevel: int):
    """(input, dim in 0..ndim-1), checked here so that a bad ``dim`` fails at trace time too."""
    if dim is None:
        dim = _implicit_dim(name, input.dim(), stacklevel + 1)
    if dtype is not None:  # as in torch: cast the input first, so the result has this dtype
        input = input.to(dtype)
    check_float(input, "x")
    return input, _sm.normalize_dim(dim, input.dim())


def softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None):
    """``torch.nn.functional.softmax``: same arguments, same implicit-dim rule and warning."""
    input, dim = _prepare("softmax", input, dim, dtype, _stacklevel)
    return _softmax(input, dim)


def log_softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: torch.dtype | None = None):
    """``torch.nn.functional.log_softmax``: same arguments, same implicit-dim rule and warning."""
    input, dim = _prepare("log_softmax", input, dim, dtype, _stacklevel)
    return _log_softmax(input, dim)


def masked_softmax(input: torch.Tensor, mask: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                   dim: int = -1) -> torch.Tensor:
    """Softmax over the positions where ``mask`` is True (and ``index < lengths``); dropped
    positions and fully masked rows are 0, with zero gradient. See ``gpukernels.masked_softmax``."""
    check_float(input, "x")
    axis = _sm.normalize_dim(dim, input.dim())
    if mask is not None:
        _sm.check_mask(input, mask)
    if lengths is not None:
        _sm.check_lengths(input, lengths, axis)
    return _masked_softmax(input, mask, lengths, axis)
