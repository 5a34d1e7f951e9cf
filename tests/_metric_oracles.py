"""Independent oracles for the metric tests, written from the definitions (no sorting tricks, no
shared code with the library): they run where scikit-learn is absent (the H200 image), and the
tests check them against scikit-learn where it is present."""

from __future__ import annotations

import numpy as np


def pairwise_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + P(equal) / 2, over every pair; 0 without
    positives or negatives (torchmetrics' convention)."""
    pos, neg = scores[positive], scores[~positive]
    if pos.size == 0 or neg.size == 0:
        return 0.0
    greater = (pos[:, None] > neg[None, :]).sum()
    equal = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * equal) / (pos.size * neg.size))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) of boolean predictions against boolean truth."""
    return (int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & ~truth).sum()),
            int((~pred & truth).sum()))


def divide(a: float, b: float, zero: float = 0.0) -> float:
    return zero if b == 0 else a / b


def per_class(pred_labels: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, 4) tp, fp, tn, fn of each class against the rest."""
    return np.array([confusion(pred_labels == c, target == c) for c in range(num_classes)])


def macro(scores: np.ndarray, present: np.ndarray | None = None) -> float:
    """The mean over classes (over the present ones when given)."""
    if present is not None:
        scores = scores[present]
    return float(scores.mean()) if scores.size else 0.0


def r2(preds: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1 - RSS/TSS per column, from the definition."""
    rss = ((target - preds) ** 2).sum(0)
    tss = ((target - target.mean(0)) ** 2).sum(0)
    return 1 - rss / tss
