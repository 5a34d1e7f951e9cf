"""Metric statistics in plain NumPy: the oracle of the metric kernels and their CPU fallback.

Each function here is one pass of a kernel: it turns predictions and targets into a few counts
or sums, and ``gpukernels.metrics`` does the tiny arithmetic on them (precision = tp / (tp + fp),
...). The counts are integers (int64) and the sums float64, so they add up exactly across
batches and processes.

* ``label_counts``: binary and multilabel inputs, ``(N, L)`` scores and ``{0, 1}`` targets.
  Rows 0-3 are tp, fp, tn, fn per label with the scores taken as probabilities
  (``pred > threshold``), rows 4-7 the same with the scores taken as logits
  (``sigmoid(pred) > threshold``), row 8 how many scores lie outside [0, 1]. torchmetrics picks
  the logit reading when any score lies outside [0, 1]; counting both ways keeps it one pass.
* ``class_counts``: multiclass, ``(N, C)`` scores (argmax, first maximum wins, as torch.argmax)
  or ``(N,)`` labels. Rows: tp, how often each class was predicted, how often it was the target.
* ``roc_area``: exact AUROC of each column, as twice the Mann-Whitney statistic with ties counted
  half (scikit-learn's trapezoidal ROC area), plus the positives and negatives.
* ``binned_roc_counts``: for each threshold, the positives and negatives scored ``>=`` it.
* ``regression_sums``: per output, n, sum(target), sum((target - mean)^2), sum((pred - target)^2),
  sum(|pred - target|), sum(|pred - target| / max(|target|, eps)).

Targets equal to ``ignore_index`` (None: nothing ignored) and targets out of range do not count;
the public functions reject out-of-range targets before this runs.
"""

from __future__ import annotations

import numpy as np

MAPE_EPSILON = 1.17e-06  # torchmetrics' clamp of |target| in mean_absolute_percentage_error


def _kept(target: np.ndarray, low: int, high: int, ignore_index: int | None) -> np.ndarray:
    """True where a target counts: inside [low, high) and not ``ignore_index``."""
    keep = (target >= low) & (target < high)
    if ignore_index is not None:
        keep &= target != ignore_index
    return keep


def _confusion(hard: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> list[np.ndarray]:
    return [(hard & positive).sum(0), (hard & negative).sum(0), (~hard & negative).sum(0), (~hard & positive).sum(0)]


def label_counts(preds: np.ndarray, target: np.ndarray, threshold: float, ignore_index: int | None) -> np.ndarray:
    """int64 (9, L) counts of ``(N, L)`` scores against ``(N, L)`` targets (see the module doc)."""
    scores = preds.astype(np.float64, copy=False)
    keep = _kept(target, 0, 2, ignore_index)
    positive = keep & (target == 1)
    negative = keep & (target == 0)
    with np.errstate(over="ignore"):
        as_logits = 1.0 / (1.0 + np.exp(-scores)) > threshold
    rows = [*_confusion(scores > threshold, positive, negative), *_confusion(as_logits, positive, negative),
            ((scores < 0) | (scores > 1)).sum(0)]
    return np.stack(rows).astype(np.int64).reshape(9, preds.shape[1])


def class_counts(preds: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """int64 (3, C): tp, predicted and target counts per class of ``(N, C)`` scores or ``(N,)`` labels."""
    labels = preds.argmax(1) if preds.ndim == 2 else preds.astype(np.int64)
    keep = _kept(target, 0, num_classes, ignore_index) & (labels >= 0) & (labels < num_classes)
    t, p = target[keep].astype(np.int64), labels[keep].astype(np.int64)
    return np.stack([np.bincount(t[p == t], minlength=num_classes), np.bincount(p, minlength=num_classes),
                     np.bincount(t, minlength=num_classes)]).astype(np.int64)


def _column_labels(target: np.ndarray, columns: int, one_vs_rest: bool, ignore_index: int | None) -> np.ndarray:
    """int8 (N, columns): 1 positive, 0 negative, -1 not counted. ``one_vs_rest``: ``target``
    holds class indices (N,) and column c's positives are the samples of class c."""
    if one_vs_rest:
        keep = _kept(target, 0, columns, ignore_index)[:, None]
        positive = target[:, None] == np.arange(columns)
    else:
        keep = _kept(target, 0, 2, ignore_index)
        positive = target == 1
    return np.where(keep, positive.astype(np.int8), np.int8(-1))


def roc_area(preds: np.ndarray, target: np.ndarray, one_vs_rest: bool, ignore_index: int | None) -> np.ndarray:
    """int64 (3, L): twice the ROC area times P*N, P and N, per column of the ``(N, L)`` scores.

    In descending score order, a negative scores below every positive before its tie group and
    level with the positives of its group: it adds TP(before group) + TP(group)/2 to the
    Mann-Whitney count. Summed over elements, with exclusive prefix counts TPx, FPx and their
    values TPs, FPs at the start of the element's tie group, twice the count is

        sum over negatives of (TPs + TPx) + sum over positives of (FPx - FPs),

    which needs only values known at the group's start: one sort and one forward scan."""
    n, columns = preds.shape
    labels = _column_labels(target, columns, one_vs_rest, ignore_index)
    order = np.argsort(-preds.astype(np.float64), axis=0, kind="stable")
    scores = np.take_along_axis(preds, order, 0)
    labels = np.take_along_axis(labels, order, 0)
    positive, negative = (labels == 1).astype(np.int64), (labels == 0).astype(np.int64)
    tp_before = np.cumsum(positive, 0) - positive
    fp_before = np.cumsum(negative, 0) - negative
    starts = np.ones(scores.shape, dtype=bool)
    starts[1:] = scores[1:] != scores[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n)[:, None], 0), axis=0)
    tp_start = np.take_along_axis(tp_before, group_start, 0)
    fp_start = np.take_along_axis(fp_before, group_start, 0)
    area2 = (negative * (tp_start + tp_before) + positive * (fp_before - fp_start)).sum(0)
    return np.stack([area2, positive.sum(0), negative.sum(0)]).astype(np.int64).reshape(3, columns)


def binned_roc_counts(preds: np.ndarray, target: np.ndarray, thresholds: np.ndarray, one_vs_rest: bool,
                      ignore_index: int | None) -> np.ndarray:
    """int64 (L, T, 2): per column and threshold, the positives and the negatives scored ``>=``
    the threshold (``thresholds`` ascending), and (L, 2) totals in ``[:, -1]`` of a (L, T+1, 2)
    array: the last entry is (P, N)."""
    n, columns = preds.shape
    labels = _column_labels(target, columns, one_vs_rest, ignore_index)
    t = len(thresholds)
    # the number of thresholds <= score, minus one: the highest threshold the score reaches
    bins = np.searchsorted(thresholds, preds, side="right") - 1
    out = np.zeros((columns, t + 1, 2), dtype=np.int64)
    flat = np.where(bins >= 0, bins, t) + (t + 1) * np.arange(columns)  # below every threshold: bin t
    for kind in (0, 1):  # 0 positives, 1 negatives
        chosen = labels == (1 - kind)
        out[:, :, kind] = np.bincount(flat[chosen], minlength=columns * (t + 1)).reshape(columns, t + 1)
    totals = out.sum(1)
    out[:, :t] = np.cumsum(out[:, :t][:, ::-1], axis=1)[:, ::-1]  # >= threshold: the bins above it
    out[:, t] = totals
    return out


def regression_sums(preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """float64 (6, M) per output column of ``(N, M)`` arrays (see the module doc)."""
    p, t = preds.astype(np.float64), target.astype(np.float64)
    n = t.shape[0]
    mean = t.mean(0) if n else np.zeros(t.shape[1])
    error = np.abs(p - t)
    return np.stack([
        np.full(t.shape[1], float(n)), t.sum(0), ((t - mean) ** 2).sum(0), (error * error).sum(0), error.sum(0),
        (error / np.maximum(np.abs(t), MAPE_EPSILON)).sum(0),
    ])
