"""Argument checks shared by every public op. They run before any backend is chosen, so a
rejected call launches nothing and writes nothing."""

from __future__ import annotations

import numbers
from typing import Any

from .._dispatch import array_library

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def dtype_name(x: Any) -> str:
    """'float32', 'bfloat16', ... for numpy, torch and cupy arrays alike."""
    return str(x.dtype).removeprefix("torch.")


def device_name(x: Any) -> str:
    library = array_library(x)
    if library == "torch":
        return str(x.device)
    if library == "cupy":
        return f"cuda:{x.device.id}"
    return "cpu"


def check_array(x: Any, name: str) -> Any:
    if array_library(x) is None:
        raise TypeError(f"{name} must be a numpy array, torch tensor or cupy array, got {type(x).__name__}")
    return x


def check_float(x: Any, name: str, dtypes: tuple[str, ...] = FLOAT_DTYPES) -> Any:
    """``x`` is an array of one of ``dtypes`` (floating point by default)."""
    check_array(x, name)
    dtype = dtype_name(x)
    if dtype not in dtypes:
        raise TypeError(f"{name} has dtype {dtype}; supported dtypes are {', '.join(dtypes)}")
    return x


def check_same(reference_name: str, reference: Any, **others: Any) -> None:
    """Every array in ``others`` has the library, device, dtype and shape of ``reference``."""
    for name, x in others.items():
        check_match(reference_name, reference, name, x, shape=True)


def check_match(reference_name: str, reference: Any, name: str, x: Any, *, shape: bool = False) -> None:
    """``x`` comes from the same array library, device and dtype as ``reference`` (and shape)."""
    check_array(x, name)
    if (type(x) is type(reference) and x.dtype == reference.dtype  # the common case, in a few
            and getattr(x, "device", None) == getattr(reference, "device", None)  # attribute reads
            and (not shape or x.shape == reference.shape)):
        return
    ref_lib, lib = array_library(reference), array_library(x)
    if lib != ref_lib:
        raise TypeError(f"{name} is a {lib} array but {reference_name} is a {ref_lib} array; pass arrays of one library")
    if device_name(x) != device_name(reference):
        raise ValueError(f"{name} is on {device_name(x)} but {reference_name} is on {device_name(reference)}")
    if dtype_name(x) != dtype_name(reference):
        raise TypeError(f"{name} has dtype {dtype_name(x)} but {reference_name} has dtype {dtype_name(reference)}")
    if shape and tuple(x.shape) != tuple(reference.shape):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} but {reference_name} has shape {tuple(reference.shape)}; they must match"
        )


def check_real_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
