"""torchmetrics' functional classification and regression metrics, with its names, arguments,
defaults and semantics, on numpy arrays, torch tensors (CPU or CUDA) and cupy arrays.

Each classification metric is one kernel pass that builds integer confusion counts (tp, fp, tn, fn
per class) and a few divisions on them; exact AUROC is one sort and one scan kernel; binned AUROC
(``thresholds=int``) one counting pass. Regression metrics are one pass of deterministic sums.
Results are 0-d arrays (1-d for ``average="none"`` / ``multioutput="raw_values"``) of the
inputs' library and device: float32 for torch (as torchmetrics), float64 for numpy and cupy.

Defaults as torchmetrics: ``accuracy(task=...)``, ``precision``, ``recall`` and ``f1_score``
average "micro", while ``multiclass_*`` and ``multilabel_*`` average "macro"; ``auroc``
averages "macro". Float scores outside [0, 1] are logits (sigmoid, or softmax for multiclass
AUROC); binary scores are positive when ``score > threshold``. Not supported: ``top_k`` other
than 1, ``multidim_average="samplewise"``, AUROC ``max_fpr`` and thresholds given as a list or
tensor.

``validate_args=True`` (the default) rejects NaN scores and out-of-range targets with a
ValueError, at the cost of one host sync; argument and shape errors are always raised, before
any kernel runs.
"""

from __future__ import annotations

from typing import Any

from .. import ops
from . import _arrays as A
from . import _classification as C
from . import _inputs as I
from ._regression import check_r2_arguments, mean_absolute_error_value, mape_value, mse_value, r2_value

# ---------------------------------------------------------------------------------------------
# Statistics with their checks


def _validated(preds, target, classes: int, ignore_index, validate_args: bool) -> None:
    if validate_args:
        I.raise_problems(I.problems(preds, target, classes=classes, ignore_index=ignore_index))


def binary_stats(preds, target, threshold=0.5, ignore_index=None, validate_args=True):
    threshold, ignore_index = I.check_threshold(threshold), I.check_ignore_index(ignore_index)
    preds, target = I.binary_inputs(preds, target)
    _validated(preds, target, 2, ignore_index, validate_args)
    return C.label_stats(preds, target, threshold, ignore_index)


def multilabel_stats(preds, target, num_labels, threshold=0.5, ignore_index=None, validate_args=True):
    num_labels = I.check_count(num_labels, "num_labels")
    threshold, ignore_index = I.check_threshold(threshold), I.check_ignore_index(ignore_index)
    preds, target = I.multilabel_inputs(preds, target, num_labels)
    _validated(preds, target, 2, ignore_index, validate_args)
    return C.label_stats(preds, target, threshold, ignore_index)


def multiclass_stats(preds, target, num_classes, ignore_index=None, validate_args=True):
    num_classes = I.check_count(num_classes, "num_classes")
    ignore_index = I.check_ignore_index(ignore_index)
    preds, target = I.multiclass_inputs(preds, target, num_classes)
    _validated(preds, target, num_classes, ignore_index, validate_args)
    return C.class_stats(preds, target, num_classes, ignore_index)


def _top_k(top_k: Any) -> None:
    if top_k != 1:
        raise ValueError(f"top_k must be 1 (top-k metrics are not implemented), got {top_k!r}")


def _multidim(multidim_average: Any) -> None:
    if multidim_average != "global":
        raise ValueError(f"multidim_average must be 'global' ('samplewise' is not implemented), got {multidim_average!r}")


# ---------------------------------------------------------------------------------------------
# Accuracy, precision, recall, F1: one function family generated per metric


def _binary(reduce, preds, target, threshold, multidim_average, ignore_index, validate_args):
    _multidim(multidim_average)
    stats = binary_stats(preds, target, threshold, ignore_index, validate_args)
    return A.result(reduce(stats, "binary", False), preds)


def _multiclass(reduce, preds, target, num_classes, average, top_k, multidim_average, ignore_index, validate_args):
    average = I.check_average(average)
    _top_k(top_k)
    _multidim(multidim_average)
    stats = multiclass_stats(preds, target, num_classes, ignore_index, validate_args)
    return A.result(reduce(stats, average, False), preds)


def _multilabel(reduce, preds, target, num_labels, threshold, average, multidim_average, ignore_index, validate_args):
    average = I.check_average(average)
    _multidim(multidim_average)
    stats = multilabel_stats(preds, target, num_labels, threshold, ignore_index, validate_args)
    return A.result(reduce(stats, average, True), preds)


def _by_task(family: dict, task, preds, target, threshold, num_classes, num_labels, average, multidim_average,
             top_k, ignore_index, validate_args, **extra):
    task = I.check_task(task)
    if task == "binary":
        return family["binary"](preds, target, threshold=threshold, multidim_average=multidim_average,
                                ignore_index=ignore_index, validate_args=validate_args, **extra)
    if task == "multiclass":
        return family["multiclass"](preds, target, num_classes=I.check_count(num_classes, "num_classes"),
                                    average=average, top_k=top_k, multidim_average=multidim_average,
                                    ignore_index=ignore_index, validate_args=validate_args, **extra)
    return family["multilabel"](preds, target, num_labels=I.check_count(num_labels, "num_labels"), threshold=threshold,
                                average=average, multidim_average=multidim_average, ignore_index=ignore_index,
                                validate_args=validate_args, **extra)


def binary_accuracy(preds, target, threshold=0.5, multidim_average="global", ignore_index=None, validate_args=True):
    """(tp + tn) / all of binary predictions (``score > threshold``) against 0/1 targets."""
    return _binary(C.accuracy_reduce, preds, target, threshold, multidim_average, ignore_index, validate_args)


def multiclass_accuracy(preds, target, num_classes, average="macro", top_k=1, multidim_average="global",
                        ignore_index=None, validate_args=True):
    """Per-class recall tp / (tp + fn), averaged ("micro": the fraction of samples right)."""
    return _multiclass(C.accuracy_reduce, preds, target, num_classes, average, top_k, multidim_average,
                       ignore_index, validate_args)


def multilabel_accuracy(preds, target, num_labels, threshold=0.5, average="macro", multidim_average="global",
                        ignore_index=None, validate_args=True):
    """(tp + tn) / all per label, averaged."""
    return _multilabel(C.accuracy_reduce, preds, target, num_labels, threshold, average, multidim_average,
                       ignore_index, validate_args)


def _precision_recall(stat: str):
    def reduce_with(zero_division):
        return lambda stats, average, multilabel: C.precision_recall_reduce(stat, stats, average, multilabel,
                                                                             zero_division)
    return reduce_with


def binary_precision(preds, target, threshold=0.5, multidim_average="global", ignore_index=None, validate_args=True,
                     zero_division=0):
    """tp / (tp + fp); ``zero_division`` when nothing is predicted positive."""
    reduce = _precision_recall("precision")(I.check_zero_division(zero_division))
    return _binary(reduce, preds, target, threshold, multidim_average, ignore_index, validate_args)


def multiclass_precision(preds, target, num_classes, average="macro", top_k=1, multidim_average="global",
                         ignore_index=None, validate_args=True, zero_division=0):
    reduce = _precision_recall("precision")(I.check_zero_division(zero_division))
    return _multiclass(reduce, preds, target, num_classes, average, top_k, multidim_average, ignore_index,
                       validate_args)


def multilabel_precision(preds, target, num_labels, threshold=0.5, average="macro", multidim_average="global",
                         ignore_index=None, validate_args=True, zero_division=0):
    reduce = _precision_recall("precision")(I.check_zero_division(zero_division))
    return _multilabel(reduce, preds, target, num_labels, threshold, average, multidim_average, ignore_index,
                       validate_args)


def binary_recall(preds, target, threshold=0.5, multidim_average="global", ignore_index=None, validate_args=True,
                  zero_division=0):
    """tp / (tp + fn); ``zero_division`` when there are no positives."""
    reduce = _precision_recall("recall")(I.check_zero_division(zero_division))
    return _binary(reduce, preds, target, threshold, multidim_average, ignore_index, validate_args)


def multiclass_recall(preds, target, num_classes, average="macro", top_k=1, multidim_average="global",
                      ignore_index=None, validate_args=True, zero_division=0):
    reduce = _precision_recall("recall")(I.check_zero_division(zero_division))
    return _multiclass(reduce, preds, target, num_classes, average, top_k, multidim_average, ignore_index,
                       validate_args)


def multilabel_recall(preds, target, num_labels, threshold=0.5, average="macro", multidim_average="global",
                      ignore_index=None, validate_args=True, zero_division=0):
    reduce = _precision_recall("recall")(I.check_zero_division(zero_division))
    return _multilabel(reduce, preds, target, num_labels, threshold, average, multidim_average, ignore_index,
                       validate_args)


def _f1(zero_division):
    return lambda stats, average, multilabel: C.f1_reduce(stats, average, multilabel, zero_division)


def binary_f1_score(preds, target, threshold=0.5, multidim_average="global", ignore_index=None, validate_args=True,
                    zero_division=0):
    """2 tp / (2 tp + fp + fn)."""
    return _binary(_f1(I.check_zero_division(zero_division)), preds, target, threshold, multidim_average,
                   ignore_index, validate_args)


def multiclass_f1_score(preds, target, num_classes, average="macro", top_k=1, multidim_average="global",
                        ignore_index=None, validate_args=True, zero_division=0):
    return _multiclass(_f1(I.check_zero_division(zero_division)), preds, target, num_classes, average, top_k,
                       multidim_average, ignore_index, validate_args)


def multilabel_f1_score(preds, target, num_labels, threshold=0.5, average="macro", multidim_average="global",
                        ignore_index=None, validate_args=True, zero_division=0):
    return _multilabel(_f1(I.check_zero_division(zero_division)), preds, target, num_labels, threshold, average,
                       multidim_average, ignore_index, validate_args)


_ACCURACY = {"binary": binary_accuracy, "multiclass": multiclass_accuracy, "multilabel": multilabel_accuracy}
_PRECISION = {"binary": binary_precision, "multiclass": multiclass_precision, "multilabel": multilabel_precision}
_RECALL = {"binary": binary_recall, "multiclass": multiclass_recall, "multilabel": multilabel_recall}
_F1 = {"binary": binary_f1_score, "multiclass": multiclass_f1_score, "multilabel": multilabel_f1_score}


def accuracy(preds, target, task, threshold=0.5, num_classes=None, num_labels=None, average="micro",
             multidim_average="global", top_k=1, ignore_index=None, validate_args=True):
    return _by_task(_ACCURACY, task, preds, target, threshold, num_classes, num_labels, average, multidim_average,
                    top_k, ignore_index, validate_args)


def precision(preds, target, task, threshold=0.5, num_classes=None, num_labels=None, average="micro",
              multidim_average="global", top_k=1, ignore_index=None, validate_args=True, zero_division=0):
    return _by_task(_PRECISION, task, preds, target, threshold, num_classes, num_labels, average, multidim_average,
                    top_k, ignore_index, validate_args, zero_division=zero_division)


def recall(preds, target, task, threshold=0.5, num_classes=None, num_labels=None, average="micro",
           multidim_average="global", top_k=1, ignore_index=None, validate_args=True, zero_division=0):
    return _by_task(_RECALL, task, preds, target, threshold, num_classes, num_labels, average, multidim_average,
                    top_k, ignore_index, validate_args, zero_division=zero_division)


def f1_score(preds, target, task, threshold=0.5, num_classes=None, num_labels=None, average="micro",
             multidim_average="global", top_k=1, ignore_index=None, validate_args=True, zero_division=0):
    return _by_task(_F1, task, preds, target, threshold, num_classes, num_labels, average, multidim_average,
                    top_k, ignore_index, validate_args, zero_division=zero_division)


# ---------------------------------------------------------------------------------------------
# AUROC


def binary_auroc_state(preds, target, thresholds=None, ignore_index=None, validate_args=True):
    thresholds, ignore_index = I.check_thresholds(thresholds), I.check_ignore_index(ignore_index)
    preds, target = I.binary_inputs(preds, target, allow_int=False)
    _validated(preds, target, 2, ignore_index, validate_args)
    scores = C.auroc_scores(preds, target, multiclass=False, ignore_index=ignore_index)
    return C.auroc_state(scores, target, thresholds, one_vs_rest=False, ignore_index=ignore_index)


def multiclass_auroc_state(preds, target, num_classes, thresholds=None, ignore_index=None, validate_args=True):
    num_classes = I.check_count(num_classes, "num_classes")
    thresholds, ignore_index = I.check_thresholds(thresholds), I.check_ignore_index(ignore_index)
    preds, target = I.multiclass_inputs(preds, target, num_classes, scores_only=True)
    _validated(preds, target, num_classes, ignore_index, validate_args)
    scores = C.auroc_scores(preds, target, multiclass=True, ignore_index=ignore_index)
    return C.auroc_state(scores, target, thresholds, one_vs_rest=True, ignore_index=ignore_index)


def multilabel_auroc_state(preds, target, num_labels, thresholds=None, ignore_index=None, validate_args=True,
                           micro=False):
    num_labels = I.check_count(num_labels, "num_labels")
    thresholds, ignore_index = I.check_thresholds(thresholds), I.check_ignore_index(ignore_index)
    preds, target = I.multilabel_inputs(preds, target, num_labels, allow_int=False)
    _validated(preds, target, 2, ignore_index, validate_args)
    if micro:  # every (sample, label) pair is one binary sample
        preds, target = preds.reshape(-1, 1), target.reshape(-1, 1)
    scores = C.auroc_scores(preds, target, multiclass=False, ignore_index=ignore_index)
    return C.auroc_state(scores, target, thresholds, one_vs_rest=False, ignore_index=ignore_index)


def binary_auroc(preds, target, max_fpr=None, thresholds=None, ignore_index=None, validate_args=True):
    """Area under the ROC curve of scores against 0/1 targets. ``thresholds=None``: exact, ties
    counted as scikit-learn's ``roc_auc_score``; an int: that many thresholds from 0 to 1."""
    _no_max_fpr(max_fpr)
    state = binary_auroc_state(preds, target, thresholds, ignore_index, validate_args)
    scores, _ = C.auroc_per_column(state, thresholds is not None)
    return A.result(scores[0], preds)


def multiclass_auroc(preds, target, num_classes, average="macro", thresholds=None, ignore_index=None,
                     validate_args=True):
    """One-vs-rest AUROC of each class, averaged ("weighted": by each class's support)."""
    average = I.check_average(average, ("macro", "weighted", "none"))
    state = multiclass_auroc_state(preds, target, num_classes, thresholds, ignore_index, validate_args)
    scores, support = C.auroc_per_column(state, thresholds is not None)
    return A.result(C.auroc_reduce(scores, support, average), preds)


def multilabel_auroc(preds, target, num_labels, average="macro", thresholds=None, ignore_index=None,
                     validate_args=True):
    """AUROC of each label, averaged ("micro": all (sample, label) pairs as one binary problem)."""
    average = I.check_average(average)
    state = multilabel_auroc_state(preds, target, num_labels, thresholds, ignore_index, validate_args,
                                   micro=average == "micro")
    scores, support = C.auroc_per_column(state, thresholds is not None)
    if average == "micro":
        return A.result(scores[0], preds)
    return A.result(C.auroc_reduce(scores, support, average), preds)


def _no_max_fpr(max_fpr) -> None:
    if max_fpr is not None:
        raise ValueError(f"max_fpr (partial AUROC) is not implemented; pass None, got {max_fpr!r}")


def auroc(preds, target, task, thresholds=None, num_classes=None, num_labels=None, average="macro", max_fpr=None,
          ignore_index=None, validate_args=True):
    task = I.check_task(task)
    if task == "binary":
        return binary_auroc(preds, target, max_fpr, thresholds, ignore_index, validate_args)
    _no_max_fpr(max_fpr)
    if task == "multiclass":
        return multiclass_auroc(preds, target, I.check_count(num_classes, "num_classes"), average, thresholds,
                                ignore_index, validate_args)
    return multilabel_auroc(preds, target, I.check_count(num_labels, "num_labels"), average, thresholds,
                            ignore_index, validate_args)


# ---------------------------------------------------------------------------------------------
# Regression


def _flat_sums(preds, target, row):
    """n and the sum in ``row`` of ``regression_sums`` (the rows a mean of errors reads)."""
    I.regression_inputs(preds, target)
    return ops.metrics.regression_sums(preds.reshape(-1, 1), target.reshape(-1, 1), (0, row))


def mean_squared_error(preds, target, squared=True):
    """mean((preds - target)^2); its square root (RMSE) with ``squared=False``."""
    if not isinstance(squared, bool):
        raise TypeError(f"squared must be a bool, got {type(squared).__name__}")
    return A.result(mse_value(_flat_sums(preds, target, 3), squared), preds)


def mean_absolute_error(preds, target):
    """mean(|preds - target|)."""
    return A.result(mean_absolute_error_value(_flat_sums(preds, target, 4)), preds)


def mean_absolute_percentage_error(preds, target):
    """mean(|preds - target| / max(|target|, 1.17e-06)), a fraction (not per cent), as torchmetrics."""
    return A.result(mape_value(_flat_sums(preds, target, 5)), preds)


def r2_score(preds, target, adjusted=0, multioutput="uniform_average"):
    """1 - RSS / TSS per output of (N,) or (N, M) arrays, averaged as ``multioutput`` says
    ("uniform_average", "raw_values", "variance_weighted"); ``adjusted`` = number of regressors."""
    I.regression_inputs(preds, target)
    check_r2_arguments(adjusted, multioutput)
    if preds.ndim not in (1, 2):
        raise ValueError(f"preds must have shape (N,) or (N, M), got {tuple(preds.shape)}")
    columns = (preds.reshape(-1, 1), target.reshape(-1, 1)) if preds.ndim == 1 else (preds, target)
    sums = ops.metrics.regression_sums(*columns, (0, 2, 3))  # n, TSS, RSS
    return A.result(r2_value(sums, int(preds.shape[0]), adjusted, multioutput), preds)


__all__ = [
    "accuracy", "precision", "recall", "f1_score", "auroc",
    "binary_accuracy", "multiclass_accuracy", "multilabel_accuracy",
    "binary_precision", "multiclass_precision", "multilabel_precision",
    "binary_recall", "multiclass_recall", "multilabel_recall",
    "binary_f1_score", "multiclass_f1_score", "multilabel_f1_score",
    "binary_auroc", "multiclass_auroc", "multilabel_auroc",
    "mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error", "r2_score",
]
