"""Metric kernels through CuPy: metrics.cu around the per-element math of metrics.cuh. The host
code (arrays, grids, argument packing) runs against a Runner, so the CPU tests run it with NumPy
and the g++ build of metrics.cu; counts come back int64, sums float64, as from every backend."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ._module import CUDA_TYPES, Launch, NvrtcProgram, Runner, cuda_type, flag, grid_for, on_gpu
from ._stream import on_callers_stream

_NO_IGNORE = -1  # ignore_index=None: negative targets never count anyway
SCAN_THREADS = 256  # roc_scan's block: its shared arrays are this long (metrics.cu)
SUM_THREADS = 256
ROWS_PER_SUM_BLOCK = 4096


def _expressions() -> tuple[str, ...]:
    scores = tuple(CUDA_TYPES.values())
    return (
        *(f"label_counts<{t}>" for t in scores),
        *(f"class_counts<{t}, false>" for t in scores), "class_counts<long long, true>",
        "roc_scan<float>",  # scores are sorted as float32
        *(f"binned_counts<{t}, {flag(o)}>" for t in scores for o in (False, True)),
        *(f"regression_partials<{t}>" for t in scores),
    )


# Gathers and scalar loops, no 16-byte chunks: no 128-bit loads to expect.
PROGRAM = NvrtcProgram("metrics.cu", _expressions(), expect_load_bits=None)


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


def _ignore(ignore_index: int | None) -> np.int64:
    return np.int64(_NO_IGNORE if ignore_index is None else ignore_index)


def _floats(xp, x):
    """Scores the kernels read: fp32/fp16/bf16 as they are, float64 (numpy callers) as float32."""
    return x if str(x.dtype) in CUDA_TYPES else x.astype(xp.float32)


# ---------------------------------------------------------------------------------------------
# Launch descriptions (host code the CPU tests run)


def label_counts_launch(preds, target, counts, threshold: float, logit_threshold: float, ignore_index) -> Launch:
    n_rows, n_labels = preds.shape
    return Launch(f"label_counts<{cuda_type(preds, 'preds')}>", grid_for(preds.size), (256,),
                  (preds, target, counts, np.int64(n_rows), np.int64(n_labels), np.float32(threshold),
                   np.float32(logit_threshold), _ignore(ignore_index)))


def class_counts_launch(preds, target, counts, num_classes: int, ignore_index) -> Launch:
    labels = preds.ndim == 1
    ptype = "long long" if labels else cuda_type(preds, "preds")
    return Launch(f"class_counts<{ptype}, {flag(labels)}>", grid_for(target.shape[0]), (256,),
                  (preds, target, counts, np.int64(target.shape[0]), np.int64(num_classes), _ignore(ignore_index)))


def roc_scan_launch(scores, labels, out) -> Launch:
    columns, n = scores.shape
    return Launch(f"roc_scan<{cuda_type(scores, 'preds')}>", (columns,), (SCAN_THREADS,),
                  (scores, labels, out, np.int64(n)))


def binned_counts_launch(preds, target, thresholds, counts, one_vs_rest: bool, ignore_index) -> Launch:
    n_rows, columns = preds.shape
    return Launch(f"binned_counts<{cuda_type(preds, 'preds')}, {flag(one_vs_rest)}>", grid_for(preds.size), (256,),
                  (preds, target, thresholds, counts, np.int64(n_rows), np.int64(columns),
                   np.int64(thresholds.shape[0]), _ignore(ignore_index)))


def regression_launch(preds, target, partials, chunk: int, epsilon: float) -> Launch:
    n_rows, outputs = preds.shape
    blocks = partials.shape[1]
    return Launch(f"regression_partials<{cuda_type(preds, 'preds')}>", (blocks, outputs), (SUM_THREADS,),
                  (preds, target, partials, np.int64(n_rows), np.int64(outputs), np.int64(chunk), np.float32(epsilon)))


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


def _label_counts(run: Runner, preds, target, threshold, ignore_index):
    from gpukernels.reference.metrics import float32_below, logit

    xp = run.xp
    preds, target = xp.ascontiguousarray(_floats(xp, preds)), xp.ascontiguousarray(target, dtype=xp.int64)
    counts = xp.zeros((9, preds.shape[1]), dtype=xp.uint64)
    if preds.size:
        run.launch(label_counts_launch(preds, target, counts, threshold, float32_below(logit(threshold)),
                                       ignore_index))
    return counts.astype(xp.int64)


def _class_counts(run: Runner, preds, target, num_classes, ignore_index):
    xp = run.xp
    preds = xp.ascontiguousarray(preds, dtype=xp.int64) if preds.ndim == 1 else xp.ascontiguousarray(_floats(xp, preds))
    target = xp.ascontiguousarray(target, dtype=xp.int64)
    counts = xp.zeros((3, num_classes), dtype=xp.uint64)
    if target.shape[0]:
        run.launch(class_counts_launch(preds, target, counts, num_classes, ignore_index))
    return counts.astype(xp.int64)


def column_labels(xp, target, columns: int, one_vs_rest: bool, ignore_index) -> object:
    """uint8 (N, columns): 1 positive, 0 negative, 2 not counted."""
    ignore = int(_ignore(ignore_index))
    if one_vs_rest:
        kept = ((target >= 0) & (target < columns) & (target != ignore))[:, None]
        positive = target[:, None] == xp.arange(columns)
    else:
        kept = (target >= 0) & (target < 2) & (target != ignore)
        positive = target == 1
    return xp.where(kept, positive.astype(xp.uint8), xp.uint8(2))


def _roc_area(run: Runner, preds, target, one_vs_rest, ignore_index):
    """One sort per column (the library's argsort, descending), then one scan block per column."""
    xp = run.xp
    # sorted as float32 (exact for fp16/bf16, and CuPy cannot negate or sort bfloat16 itself)
    preds = preds.astype(xp.float32)
    n, columns = preds.shape
    labels = column_labels(xp, target, columns, one_vs_rest, ignore_index)
    order = xp.argsort(-preds.T, axis=1)
    scores = xp.ascontiguousarray(xp.take_along_axis(preds.T, order, 1))
    labels = xp.ascontiguousarray(xp.take_along_axis(labels.T, order, 1))
    out = xp.zeros((3, columns), dtype=xp.int64)
    if n and columns:
        run.launch(roc_scan_launch(scores, labels, out))
    return out


def _binned_roc_counts(run: Runner, preds, target, thresholds, one_vs_rest, ignore_index):
    from gpukernels.ops.metrics import linspace_thresholds

    xp = run.xp
    preds, target = xp.ascontiguousarray(_floats(xp, preds)), xp.ascontiguousarray(target, dtype=xp.int64)
    grid = xp.asarray(linspace_thresholds(thresholds))
    n_rows, columns = preds.shape
    hist = xp.zeros((columns, thresholds + 1, 2), dtype=xp.uint64)
    if preds.size:
        run.launch(binned_counts_launch(preds, target, grid, hist, one_vs_rest, ignore_index))
    hist = hist.astype(xp.int64)
    at_least = xp.cumsum(hist[:, :thresholds][:, ::-1], axis=1)[:, ::-1]  # >= threshold k: bins k..T-1
    return xp.concatenate([at_least, hist.sum(1)[:, None]], axis=1)


def _regression_sums(run: Runner, preds, target):
    from gpukernels.reference.metrics import MAPE_EPSILON, merge_partials

    xp = run.xp
    if preds.dtype != target.dtype or str(preds.dtype) not in CUDA_TYPES:
        preds, target = preds.astype(xp.float32), target.astype(xp.float32)
    preds, target = xp.ascontiguousarray(preds), xp.ascontiguousarray(target)
    n_rows, outputs = preds.shape
    blocks = max(1, -(-n_rows // ROWS_PER_SUM_BLOCK))
    partials = xp.zeros((6, blocks, outputs), dtype=xp.float32)
    if preds.size:
        run.launch(regression_launch(preds, target, partials, ROWS_PER_SUM_BLOCK, MAPE_EPSILON))
    return xp.stack(merge_partials(partials.astype(xp.float64)))


@on_callers_stream
def label_counts(preds, target, threshold: float, ignore_index, *, run: Runner | None = None):
    return _label_counts(run or on_gpu(PROGRAM), preds, target, threshold, ignore_index)


@on_callers_stream
def class_counts(preds, target, num_classes: int, ignore_index, *, run: Runner | None = None):
    return _class_counts(run or on_gpu(PROGRAM), preds, target, num_classes, ignore_index)


@on_callers_stream
def roc_area(preds, target, one_vs_rest: bool, ignore_index, *, run: Runner | None = None):
    return _roc_area(run or on_gpu(PROGRAM), preds, target, one_vs_rest, ignore_index)


@on_callers_stream
def binned_roc_counts(preds, target, thresholds: int, one_vs_rest: bool, ignore_index, *, run: Runner | None = None):
    return _binned_roc_counts(run or on_gpu(PROGRAM), preds, target, thresholds, one_vs_rest, ignore_index)


@on_callers_stream
def regression_sums(preds, target, *, run: Runner | None = None):
    return _regression_sums(run or on_gpu(PROGRAM), preds, target)
