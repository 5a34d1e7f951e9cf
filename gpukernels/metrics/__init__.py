"""torchmetrics-style metrics on our kernels: the functional metrics (``gpukernels.metrics.accuracy``,
``binary_auroc``, ``r2_score``, ...) and the stateful classes (``Accuracy``, ``AUROC``,
``MeanSquaredError``, ...) with ``update`` / ``compute`` / ``reset``. Swap
``from torchmetrics.functional import accuracy`` for ``from gpukernels.metrics import accuracy``."""

from ._metric import (
    AUROC, F1Score, MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredError, Metric, Precision, R2Score,
    Recall, Accuracy,
)
from .functional import *  # noqa: F403 - the functional metrics are this package's API
from .functional import __all__ as _functional

__all__ = [
    *_functional, "Metric", "Accuracy", "Precision", "Recall", "F1Score", "AUROC", "MeanSquaredError",
    "MeanAbsoluteError", "MeanAbsolutePercentageError", "R2Score",
]
