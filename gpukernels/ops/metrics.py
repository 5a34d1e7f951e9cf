"""The metric kernels behind ``gpukernels.metrics``: one pass from predictions and targets to
integer counts or float64 sums, dispatched like every op (numpy reference, Triton, CuPy).

These are the building blocks; ``gpukernels.metrics`` (torchmetrics' names and semantics) checks
the arguments, calls them, and does the tiny arithmetic on their results. Each returns its counts
(int64) or sums (float64) as an array of the caller's library and device, whatever the inputs'
dtype. Shapes are already normalised here (the public functions reshape):

* ``label_counts(preds (N, L) float, target (N, L) int64, threshold, ignore_index)`` -> (9, L)
* ``class_counts(preds (N, C) float or (N,) int64, target (N,) int64, num_classes, ignore_index)`` -> (3, C)
* ``roc_area(preds (N, L) float, target, one_vs_rest, ignore_index)`` -> (3, L)
* ``binned_roc_counts(preds (N, L) float, target, thresholds: int, one_vs_rest, ignore_index)`` -> (L, T+1, 2),
  the thresholds being ``linspace_thresholds(thresholds)``
* ``regression_sums(preds (N, M) float, target (N, M) float, rows)`` -> (6, M); ``rows``: the
  rows the caller reads. The NumPy reference computes only those (the others NaN); the GPU
  kernels compute all six in their one pass anyway.

The meaning of every row is in ``gpukernels.reference.metrics``. ``ignore_index=None`` ignores
nothing; targets outside the valid range are skipped (never written out of bounds), and the public
functions reject them first.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .._dispatch import array_library, call, select_backend


def namespace(x: Any) -> Any:
    """The array module of ``x``: numpy (for numpy scalars too), torch or cupy."""
    library = array_library(x)
    if library == "numpy" or isinstance(x, (np.generic, bool, int, float)):
        return np
    return sys.modules[library]


def empty_of(x: Any, dtype: str) -> Any:
    """A 0-d array of ``dtype`` ('int64', 'float64', ...) in ``x``'s library and on its device:
    the template the dispatch converts results to."""
    library = array_library(x)
    if library == "torch":
        import torch

        return torch.empty((), dtype=getattr(torch, dtype), device=x.device)
    xp = namespace(x)
    if library == "cupy":
        with x.device:
            return xp.empty((), dtype=dtype)
    return xp.empty((), dtype=dtype)


def as_dtype(x: Any, dtype: str) -> Any:
    """``x`` cast to ``dtype`` (no copy when it already has it)."""
    if array_library(x) == "torch":
        import torch

        return x.to(getattr(torch, dtype))
    return x.astype(dtype, copy=False)


def _ignore(ignore_index: int | None) -> int | None:
    return None if ignore_index is None else int(ignore_index)


def label_counts(preds: Any, target: Any, threshold: float, ignore_index: int | None) -> Any:
    return call("metrics", "label_counts", (preds, target),
                {"threshold": float(threshold), "ignore_index": _ignore(ignore_index)},
                returns_like=empty_of(preds, "int64"))


def class_counts(preds: Any, target: Any, num_classes: int, ignore_index: int | None) -> Any:
    return call("metrics", "class_counts", (preds, target),
                {"num_classes": int(num_classes), "ignore_index": _ignore(ignore_index)},
                returns_like=empty_of(preds, "int64"))


def roc_area(preds: Any, target: Any, one_vs_rest: bool, ignore_index: int | None) -> Any:
    return call("metrics", "roc_area", (preds, target),
                {"one_vs_rest": bool(one_vs_rest), "ignore_index": _ignore(ignore_index)},
                returns_like=empty_of(preds, "int64"))


def linspace_thresholds(count: int) -> np.ndarray:
    """torchmetrics' ``thresholds=count``: ``torch.linspace(0, 1, count)`` in float32 (torch's
    own rounding when torch is here, so the bins agree with torchmetrics to the bit)."""
    try:
        import torch
    except ImportError:
        return np.linspace(0.0, 1.0, count).astype(np.float32)
    return torch.linspace(0.0, 1.0, count, dtype=torch.float32).numpy()


def binned_roc_counts(preds: Any, target: Any, thresholds: int, one_vs_rest: bool, ignore_index: int | None) -> Any:
    return call("metrics", "binned_roc_counts", (preds, target),
                {"thresholds": int(thresholds), "one_vs_rest": bool(one_vs_rest), "ignore_index": _ignore(ignore_index)},
                returns_like=empty_of(preds, "int64"))


REGRESSION_ROWS = (0, 1, 2, 3, 4, 5)


def regression_sums(preds: Any, target: Any, rows: tuple[int, ...] = REGRESSION_ROWS) -> Any:
    # On the CPU every row is a pass or more over the inputs: the reference skips the rows not
    # read (mean_squared_error needs 2 of the 6). A GPU kernel's cost is its one read of the inputs.
    params = {"rows": tuple(rows)} if select_backend(preds) == "numpy" and tuple(rows) != REGRESSION_ROWS else {}
    return call("metrics", "regression_sums", (preds, target), params, returns_like=empty_of(preds, "float64"))


__all__ = ["label_counts", "class_counts", "roc_area", "binned_roc_counts", "regression_sums"]
