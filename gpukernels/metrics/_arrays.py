"""The few array operations the metric arithmetic needs, written once for numpy, torch and cupy
(they spell dtypes, ``where`` and ``sqrt`` the same way but casts and reshapes differently). All
of it stays on the inputs' device: nothing here copies to the host."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._dispatch import array_library
from ..ops.metrics import as_dtype, empty_of, namespace


def is_torch(x: Any) -> bool:
    return array_library(x) == "torch"


def float64(x: Any) -> Any:
    return as_dtype(x, "float64")


def int64(x: Any) -> Any:
    return as_dtype(x, "int64")


def float32(x: Any) -> Any:
    return as_dtype(x, "float32")


def is_floating(x: Any) -> bool:
    return str(x.dtype).removeprefix("torch.") in ("float16", "bfloat16", "float32", "float64")


def where(condition: Any, a: Any, b: Any) -> Any:
    # torch.where takes Python scalars as they are (no host-to-device copy, so no sync)
    xp = namespace(next((x for x in (condition, a, b) if array_library(x) is not None), condition))
    return xp.where(condition, a, b)


def safe_divide(numerator: Any, denominator: Any, zero_division: float = 0.0) -> Any:
    """``numerator / denominator``, ``zero_division`` where the denominator is 0 (torchmetrics'
    ``_safe_divide``), in float64."""
    numerator, denominator = float64(numerator), float64(denominator)
    zero = denominator == 0
    return where(zero, zero_division, numerator / where(zero, 1.0, denominator))


def sqrt(x: Any) -> Any:
    return namespace(x).sqrt(x)


def zeros(like: Any, shape: tuple[int, ...], dtype: str) -> Any:
    """Zeros of ``shape`` and ``dtype`` in ``like``'s library and on its device."""
    template = empty_of(like, dtype)
    if is_torch(like):
        return namespace(like).zeros(shape, dtype=template.dtype, device=template.device)
    xp = namespace(like)
    if array_library(like) == "cupy":
        with like.device:
            return xp.zeros(shape, dtype=dtype)
    return xp.zeros(shape, dtype=dtype)


def stack(arrays: list[Any]) -> Any:
    return namespace(arrays[0]).stack(arrays)


def concat(arrays: list[Any], axis: int = 0) -> Any:
    xp = namespace(arrays[0])
    return xp.cat(arrays, axis) if is_torch(arrays[0]) else xp.concatenate(arrays, axis)


def moveaxis(x: Any, source: int, destination: int) -> Any:
    return x.movedim(source, destination) if is_torch(x) else namespace(x).moveaxis(x, source, destination)


def result(value: Any, like: Any) -> Any:
    """A metric's value as the caller gets it: float32 for torch (torchmetrics' dtype), float64
    for numpy and cupy (scikit-learn's)."""
    if is_torch(like):
        return float32(value)
    if array_library(like) == "cupy":
        return float64(value)
    return np.asarray(value, dtype=np.float64)  # a 0-d array, not a NumPy scalar


def on_host(x: Any) -> bool:
    """Numpy arrays and CPU tensors: reading a value back costs no device sync."""
    library = array_library(x)
    return library == "numpy" or library == "torch" and x.device.type == "cpu"


def count_true(x: Any) -> Any:
    """How many elements of ``x`` are true, as a 0-d int64 array on ``x``'s device (no sync)."""
    return int64(x).sum()
