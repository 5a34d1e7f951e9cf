"""Argument checks and input normalisation shared by the functional metrics and the metric
classes.

Argument and shape checks run on the host before any kernel (a rejected call launches nothing).
Checks of the *values* (NaN predictions, targets out of range) need the data: they are counted
on the device (``problems``), and the functional metrics raise on them (one host sync, as
torchmetrics' ``validate_args=True`` costs) while the classes add them up in ``update`` and raise
in ``compute``, so ``update`` never waits for the GPU."""

from __future__ import annotations

import numbers
from typing import Any

from ..ops._checks import check_array, device_name, dtype_name
from ..ops.softmax import INTEGER_DTYPES
from . import _arrays as A

TASKS = ("binary", "multiclass", "multilabel")
AVERAGES = ("micro", "macro", "weighted", "none")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
TARGET_DTYPES = (*INTEGER_DTYPES, "bool")


def check_task(task: Any) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    return task


def check_count(value: Any, name: str, minimum: int = 2) -> int:
    if value is None:
        raise ValueError(f"{name} is required (an integer >= {minimum}) for this task")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a float in [0, 1], got {type(threshold).__name__}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a float in [0, 1], got {threshold}")
    return float(threshold)


def check_average(average: Any, allowed: tuple[str, ...] = AVERAGES) -> str:
    average = "none" if average is None else average
    if average not in allowed:
        raise ValueError(f"average must be one of {', '.join(map(repr, allowed))} (or None), got {average!r}")
    return average


def check_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be None or an integer, got {type(ignore_index).__name__}")
    return int(ignore_index)


def check_zero_division(zero_division: Any) -> float:
    if zero_division not in (0, 1) or isinstance(zero_division, bool):
        raise ValueError(f"zero_division must be 0 or 1, got {zero_division!r}")
    return float(zero_division)


def check_thresholds(thresholds: Any) -> int | None:
    """None (exact AUROC) or the number of linearly spaced thresholds (binned AUROC)."""
    if thresholds is None:
        return None
    if isinstance(thresholds, bool) or not isinstance(thresholds, numbers.Integral):
        raise TypeError("thresholds must be None (exact) or an integer > 1 (that many thresholds from 0 to 1); "
                        f"got {type(thresholds).__name__} (lists and tensors of thresholds are not supported)")
    if thresholds < 2:
        raise ValueError(f"thresholds must be an integer > 1, got {thresholds}")
    return int(thresholds)


def _check_pair(preds: Any, target: Any) -> None:
    check_array(preds, "preds")
    check_array(target, "target")
    if A.array_library(preds) != A.array_library(target):
        raise TypeError(f"target is a {A.array_library(target)} array but preds is a {A.array_library(preds)} array; "
                        "pass arrays of one library")
    if device_name(target) != device_name(preds):
        raise ValueError(f"target is on {device_name(target)} but preds is on {device_name(preds)}")


def _check_target_dtype(target: Any) -> None:
    if dtype_name(target) not in TARGET_DTYPES:
        raise TypeError(f"target has dtype {dtype_name(target)}; class targets must be integers (or bool), "
                        f"one of {', '.join(TARGET_DTYPES)}")


def _check_preds_dtype(preds: Any, allow_int: bool = True) -> None:
    allowed = (*FLOAT_DTYPES, *TARGET_DTYPES) if allow_int else FLOAT_DTYPES
    if dtype_name(preds) not in allowed:
        raise TypeError(f"preds has dtype {dtype_name(preds)}; supported dtypes are {', '.join(allowed)}")


def _same_shape(preds: Any, target: Any) -> None:
    if tuple(preds.shape) != tuple(target.shape):
        raise ValueError(f"preds has shape {tuple(preds.shape)} but target has shape {tuple(target.shape)}; "
                         "they must match")


# ---------------------------------------------------------------------------------------------
# Normalised inputs: (preds, target) as the kernels take them


def binary_inputs(preds: Any, target: Any, *, allow_int: bool = True) -> tuple[Any, Any]:
    """(preds (M, 1), target (M, 1) int64) from equally shaped (N, ...) arrays."""
    _check_pair(preds, target)
    _check_preds_dtype(preds, allow_int)
    _check_target_dtype(target)
    _same_shape(preds, target)
    return preds.reshape(-1, 1), A.int64(target).reshape(-1, 1)


def multilabel_inputs(preds: Any, target: Any, num_labels: int, *, allow_int: bool = True) -> tuple[Any, Any]:
    """(preds (M, L), target (M, L) int64) from (N, L, ...) arrays (extra dims join the batch)."""
    _check_pair(preds, target)
    _check_preds_dtype(preds, allow_int)
    _check_target_dtype(target)
    _same_shape(preds, target)
    if preds.ndim < 2 or preds.shape[1] != num_labels:
        raise ValueError(f"preds must have shape (N, num_labels, ...) with num_labels={num_labels}, "
                         f"got {tuple(preds.shape)}")
    preds = A.moveaxis(preds, 1, -1).reshape(-1, num_labels)
    target = A.moveaxis(A.int64(target), 1, -1).reshape(-1, num_labels)
    return preds, target


def multiclass_inputs(preds: Any, target: Any, num_classes: int, *, scores_only: bool = False) -> tuple[Any, Any]:
    """(preds, target (M,) int64): preds (M, C) scores from (N, C, ...), or (M,) int64 labels
    from (N, ...) integer preds of the target's shape."""
    _check_pair(preds, target)
    _check_target_dtype(target)
    _check_preds_dtype(preds, allow_int=not scores_only)
    target_flat = A.int64(target).reshape(-1)
    if preds.ndim == target.ndim + 1:
        if not A.is_floating(preds):
            raise TypeError(f"preds of shape (N, C, ...) must hold float scores, got dtype {dtype_name(preds)}")
        if preds.shape[1] != num_classes or tuple(preds.shape[2:]) != tuple(target.shape[1:]) \
                or preds.shape[0] != target.shape[0]:
            raise ValueError(f"preds has shape {tuple(preds.shape)} and target {tuple(target.shape)}: expected preds "
                             f"(N, C, ...) with C = num_classes = {num_classes} and target (N, ...)")
        return A.moveaxis(preds, 1, -1).reshape(-1, num_classes), target_flat
    if scores_only:
        raise ValueError(f"preds must have shape (N, C, ...) with C = num_classes = {num_classes} and target (N, ...); "
                         f"got preds {tuple(preds.shape)} and target {tuple(target.shape)}")
    if preds.ndim == target.ndim:
        _same_shape(preds, target)
        if A.is_floating(preds):
            raise TypeError("preds of the target's shape must be integer class labels; float scores need shape (N, C, ...)")
        return A.int64(preds).reshape(-1), target_flat
    raise ValueError(f"preds has shape {tuple(preds.shape)} and target {tuple(target.shape)}: expected preds (N, C, ...) "
                     "scores or (N, ...) labels with target (N, ...)")


def regression_inputs(preds: Any, target: Any) -> None:
    _check_pair(preds, target)
    for name, x in (("preds", preds), ("target", target)):
        if dtype_name(x) not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {dtype_name(x)}; supported dtypes are {', '.join(FLOAT_DTYPES)}")
    _same_shape(preds, target)


# ---------------------------------------------------------------------------------------------
# Value checks, counted on the device


def _kept(target: Any, ignore_index: int | None) -> Any:
    return target == target if ignore_index is None else target != ignore_index


def problems(preds: Any, target: Any, *, classes: int, ignore_index: int | None) -> list[tuple[Any, str]]:
    """[(0-d int64 count, what is wrong)] for normalised inputs: NaN scores, targets outside
    [0, classes) that are not ``ignore_index``, integer labels outside [0, classes)."""
    kept = _kept(target, ignore_index)
    bad_target = kept & ((target < 0) | (target >= classes))
    allowed = "{0, 1}" if classes == 2 else f"[0, {classes})"
    found = [(A.count_true(bad_target), f"target holds values outside {allowed}"
              + ("" if ignore_index is None else f" other than ignore_index={ignore_index}"))]
    if A.is_floating(preds):
        found.append((A.count_true(preds != preds), "preds contains NaN; metrics are undefined for NaN scores"))
    else:
        found.append((A.count_true((preds < 0) | (preds >= classes)), f"integer preds hold labels outside {allowed}"))
    return found


def raise_problems(found: list[tuple[Any, str]]) -> None:
    """Raise ValueError for the first problem counted (a host sync)."""
    for count, message in found:
        if int(count) > 0:
            raise ValueError(f"{message} ({int(count)} element(s))")


def outside_unit_interval(preds: Any, kept: Any) -> Any:
    """0-d bool on the device: any kept score outside [0, 1] (torchmetrics then reads the
    scores as logits)."""
    return (((preds < 0) | (preds > 1)) & kept).any()


def kept_rows(target: Any, ignore_index: int | None) -> Any:
    return _kept(target, ignore_index)
