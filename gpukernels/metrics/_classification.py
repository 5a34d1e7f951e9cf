"""The classification statistics (per-class tp, fp, tn, fn; AUROC areas) from the kernels, and
torchmetrics' reductions of them. Shared by the functional metrics and the metric classes: a
class's ``update`` adds statistics, its ``compute`` reduces them exactly as the function does."""

from __future__ import annotations

from typing import Any

from .. import ops
from ..ops.activation import sigmoid
from ..ops.softmax import softmax
from . import _arrays as A
from ._inputs import kept_rows, outside_unit_interval

# ---------------------------------------------------------------------------------------------
# Statistics: (4, K) int64 rows tp, fp, tn, fn per class or label


def label_stats(preds: Any, target: Any, threshold: float, ignore_index: int | None) -> Any:
    """(4, L) for binary (L = 1) and multilabel inputs, normalised to (M, L)."""
    if not A.is_floating(preds):  # labels 0/1: 1 > 0.5 >= 0 whatever the threshold
        preds, threshold = A.float32(preds), 0.5
    counts = ops.metrics.label_counts(preds, target, threshold, ignore_index)
    as_logits = counts[8].sum() > 0  # torchmetrics: any score outside [0, 1] means logits
    return A.where(as_logits, counts[4:8], counts[0:4])


def class_stats(preds: Any, target: Any, num_classes: int, ignore_index: int | None) -> Any:
    """(4, C) for multiclass inputs: tp, fp, tn, fn of each class against the rest."""
    counts = ops.metrics.class_counts(preds, target, num_classes, ignore_index)
    tp, predicted, actual = counts[0], counts[1], counts[2]
    fp, fn = predicted - tp, actual - tp
    tn = actual.sum() - tp - fp - fn
    return A.stack([tp, fp, tn, fn])


# ---------------------------------------------------------------------------------------------
# torchmetrics' reductions (average="binary" is the binary task's)


def _weighted(score: Any, stats: Any, average: str, multilabel: bool) -> Any:
    """torchmetrics' ``_adjust_weights_safe_divide``: 'none' as is, 'weighted' by support,
    'macro' the plain mean, leaving out (multiclass only) classes absent from preds and target."""
    if average == "none":
        return score
    tp, fp, _, fn = (A.float64(s) for s in stats)
    if average == "weighted":
        weights = tp + fn
    else:
        weights = A.where(tp + fp + fn == 0, 0.0, tp * 0 + 1.0) if not multilabel else tp * 0 + 1.0
    return A.safe_divide((weights * score).sum(), weights.sum())


def accuracy_reduce(stats: Any, average: str, multilabel: bool) -> Any:
    tp, fp, tn, fn = stats
    if average == "binary":
        return A.safe_divide(tp + tn, tp + tn + fp + fn)[0]
    if average == "micro":
        if multilabel:
            return A.safe_divide((tp + tn).sum(), (tp + tn + fp + fn).sum())
        return A.safe_divide(tp.sum(), (tp + fn).sum())
    score = A.safe_divide(tp + tn, tp + tn + fp + fn) if multilabel else A.safe_divide(tp, tp + fn)
    return _weighted(score, stats, average, multilabel)


def precision_recall_reduce(stat: str, stats: Any, average: str, multilabel: bool, zero_division: float) -> Any:
    tp, fp, _, fn = stats
    other = fp if stat == "precision" else fn
    if average == "binary":
        return A.safe_divide(tp, tp + other, zero_division)[0]
    if average == "micro":
        return A.safe_divide(tp.sum(), (tp + other).sum(), zero_division)
    return _weighted(A.safe_divide(tp, tp + other, zero_division), stats, average, multilabel)


def f1_reduce(stats: Any, average: str, multilabel: bool, zero_division: float) -> Any:
    tp, fp, _, fn = stats
    if average == "binary":
        return A.safe_divide(2 * tp, 2 * tp + fn + fp, zero_division)[0]
    if average == "micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
        return A.safe_divide(2 * tp, 2 * tp + fn + fp, zero_division)
    return _weighted(A.safe_divide(2 * tp, 2 * tp + fn + fp, zero_division), stats, average, multilabel)


# ---------------------------------------------------------------------------------------------
# AUROC


def auroc_scores(preds: Any, target: Any, *, multiclass: bool, ignore_index: int | None) -> Any:
    """The scores AUROC ranks: torchmetrics reads scores with any kept value outside [0, 1] as
    logits and applies sigmoid (softmax over the classes for multiclass). Decided on the device
    (a ``where``), so no host sync; the transform keeps float32's saturation ties as torchmetrics'."""
    kept = kept_rows(target, ignore_index)
    outside = outside_unit_interval(preds, kept[:, None] if multiclass else kept)
    squash = (lambda: softmax(preds, dim=1)) if multiclass else (lambda: sigmoid(preds))
    if A.on_host(preds):  # deciding costs no sync here: transform only when needed
        return squash() if bool(outside) else preds
    return A.where(outside, squash(), preds)


def auroc_state(preds: Any, target: Any, thresholds: int | None, *, one_vs_rest: bool,
                ignore_index: int | None) -> Any:
    """Exact: (3, L) int64 twice-area, positives, negatives. Binned: (L, T+1, 2) int64 counts."""
    if thresholds is None:
        return ops.metrics.roc_area(preds, target, one_vs_rest, ignore_index)
    return ops.metrics.binned_roc_counts(preds, target, thresholds, one_vs_rest, ignore_index)


def auroc_per_column(state: Any, binned: bool) -> tuple[Any, Any]:
    """(AUROC of each column, positives of each column) from ``auroc_state``. A column without
    positives or without negatives scores 0, as torchmetrics' ROC (zero rates) gives."""
    if not binned:
        area2, positives, negatives = (A.float64(s) for s in state)
        pairs = positives * negatives
        return A.safe_divide(area2, 2 * pairs), positives
    counts = A.float64(state)
    tps, fps = counts[:, :-1, 0], counts[:, :-1, 1]  # thresholds ascending
    positives, negatives = counts[:, -1, 0], counts[:, -1, 1]
    tpr, fpr = A.safe_divide(tps, positives[:, None]), A.safe_divide(fps, negatives[:, None])
    # trapezoids between neighbouring thresholds; fpr falls as the threshold rises
    area = ((fpr[:, :-1] - fpr[:, 1:]) * (tpr[:, :-1] + tpr[:, 1:]) / 2).sum(1)
    return area, positives


def auroc_reduce(scores: Any, support: Any, average: str) -> Any:
    if average == "none":
        return scores
    if average == "weighted":
        return A.safe_divide((scores * support).sum(), support.sum())
    return scores.mean()
