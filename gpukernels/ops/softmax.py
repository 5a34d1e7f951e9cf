"""Softmax, log-softmax and masked softmax, with PyTorch's names, arguments and formulas.

Forward: ``softmax(x, dim)``, ``log_softmax(x, dim)`` along any ``dim`` (a 0-d input is a row
of one, as in PyTorch). Backward follows ATen's ``_softmax_backward_data`` /
``_log_softmax_backward_data``: it takes the upstream gradient and the forward's *output*.

Masked softmax: ``masked_softmax(x, mask=None, lengths=None, dim=-1)``.

* ``mask`` is boolean, broadcastable to ``x``, and **True means keep**: the same convention as
  the boolean ``attn_mask`` of ``torch.nn.functional.scaled_dot_product_attention`` (True =
  takes part in attention), and the opposite of ``key_padding_mask`` in
  ``torch.nn.MultiheadAttention`` (True = ignore).
* ``lengths`` is an integer array of ``x``'s shape without ``dim``; index ``j`` along ``dim``
  is kept while ``j < lengths`` (so ``lengths <= 0`` masks the whole row).
* Masked positions get probability 0. A row with nothing kept is all zeros, never NaN, and its
  gradient is zero. The backward is ``softmax_backward`` of the masked output (exact, since the
  output is 0 wherever the mask is False).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .._dispatch import array_library, call
from ._checks import check_array, check_float, check_same, device_name, dtype_name

INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def normalize_dim(dim: Any, ndim: int, name: str = "dim", of: str = "x") -> int:
    """``dim`` as an axis in ``0..ndim-1``; a 0-d array has the one axis 0 (or -1)."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(dim).__name__}")
    rank = max(ndim, 1)
    if not -rank <= dim < rank:
        raise ValueError(f"{name} {dim} out of range for {of} with {ndim} dimension(s) (expected {-rank}..{rank - 1})")
    return int(dim) % rank


def _check_companion(x: Any, name: str, value: Any) -> None:
    """``value`` is an array of ``x``'s library on ``x``'s device (its dtype is checked apart)."""
    check_array(value, name)
    if array_library(value) != array_library(x):
        raise TypeError(f"{name} is a {array_library(value)} array but x is a {array_library(x)} array; "
                        "pass arrays of one library")
    if device_name(value) != device_name(x):
        raise ValueError(f"{name} is on {device_name(value)} but x is on {device_name(x)}")


def check_mask(x: Any, mask: Any) -> None:
    _check_companion(x, "mask", mask)
    if dtype_name(mask) != "bool":
        raise TypeError(f"mask has dtype {dtype_name(mask)}; masked_softmax needs a boolean mask (True = keep)")
    shape = tuple(x.shape)
    try:
        broadcast = np.broadcast_shapes(tuple(mask.shape), shape)
    except ValueError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, which does not broadcast to x's shape {shape}")


def check_lengths(x: Any, lengths: Any, dim: int) -> None:
    _check_companion(x, "lengths", lengths)
    if dtype_name(lengths) not in INTEGER_DTYPES:
        raise TypeError(f"lengths has dtype {dtype_name(lengths)}; supported dtypes are {', '.join(INTEGER_DTYPES)}")
    want = tuple(s for a, s in enumerate(x.shape) if a != dim)
    if tuple(lengths.shape) != want:
        raise ValueError(f"lengths has shape {tuple(lengths.shape)} but must be x's shape without dim {dim}, {want}")


def _forward(op: str, x: Any, dim: int) -> Any:
    """Dispatch ``op``; a 0-d input runs as a row of one and comes back 0-d."""
    if x.ndim == 0:
        return call("softmax", op, (x.reshape(1),), {"dim": 0}).reshape(())
    return call("softmax", op, (x,), {"dim": dim})


def softmax(x: Any, dim: int = -1) -> Any:
    """``exp(x - max) / sum(exp(x - max))`` along ``dim``."""
    check_float(x, "x")
    return _forward("softmax", x, normalize_dim(dim, x.ndim))


def log_softmax(x: Any, dim: int = -1) -> Any:
    """``(x - max) - log(sum(exp(x - max)))`` along ``dim``."""
    check_float(x, "x")
    return _forward("log_softmax", x, normalize_dim(dim, x.ndim))


def masked_softmax(x: Any, mask: Any = None, lengths: Any = None, dim: int = -1) -> Any:
    """Softmax over the kept positions of each row (see the module docstring for the mask
    convention); masked positions and fully masked rows are 0."""
    check_float(x, "x")
    axis = normalize_dim(dim, x.ndim)
    if mask is not None:
        check_mask(x, mask)
    if lengths is not None:
        check_lengths(x, lengths, axis)
    if x.ndim == 0:
        return call("softmax", "masked_softmax", (x.reshape(1), mask, lengths), {"dim": 0}).reshape(())
    return call("softmax", "masked_softmax", (x, mask, lengths), {"dim": axis})


def _backward(op: str, grad_output: Any, output: Any, dim: int) -> Any:
    check_float(grad_output, "grad_output")
    check_same("grad_output", grad_output, output=output)
    axis = normalize_dim(dim, grad_output.ndim, of="grad_output")
    if grad_output.ndim == 0:
        return call("softmax", op, (grad_output.reshape(1), output.reshape(1)), {"dim": 0}).reshape(())
    return call("softmax", op, (grad_output, output), {"dim": axis})


def softmax_backward(grad_output: Any, output: Any, dim: int) -> Any:
    """``y * (grad_output - sum(grad_output * y))`` along ``dim``, ``output`` being ``y``."""
    return _backward("softmax_backward", grad_output, output, dim)


def log_softmax_backward(grad_output: Any, output: Any, dim: int) -> Any:
    """``grad_output - exp(y) * sum(grad_output)`` along ``dim``, ``output`` being ``y``."""
    return _backward("log_softmax_backward", grad_output, output, dim)


def masked_softmax_backward(grad_output: Any, output: Any, dim: int = -1) -> Any:
    """The softmax backward of the masked output: 0 at masked positions and on fully masked
    rows, since ``y`` is 0 there."""
    return _backward("softmax_backward", grad_output, output, dim)


__all__ = [
    "softmax", "log_softmax", "masked_softmax",
    "softmax_backward", "log_softmax_backward", "masked_softmax_backward",
]
