"""Regression metrics from the (6, M) float64 sums of ``ops.metrics.regression_sums``:
rows n, sum(target), sum((target - mean)^2), sum((pred - target)^2), sum(|pred - target|),
sum(|pred - target| / max(|target|, eps)).

The spread of the targets is kept as a centred sum of squares and merged with Chan's formula,
not as sum(target^2) - sum(target)^2 / n (torchmetrics' form), which loses every digit when the
targets are large and close together (e.g. 1e4 +- 1 in float32)."""

from __future__ import annotations

import warnings
import numbers
from typing import Any

from . import _arrays as A

MULTIOUTPUTS = ("uniform_average", "raw_values", "variance_weighted")
_NEAR_ZERO = 1e-4  # torchmetrics: rss or tss within 1e-4 of 0 counts as 0 (torch.isclose atol)


def merge(a: Any, b: Any) -> Any:
    """The sums of two sets of observations, from the sums of each (Chan et al.'s update of the
    centred sum of squares)."""
    n = a[0] + b[0]
    mean_a = A.safe_divide(a[1], a[0])
    mean_b = A.safe_divide(b[1], b[0])
    delta = mean_b - mean_a
    m2 = a[2] + b[2] + A.safe_divide(delta * delta * a[0] * b[0], n)
    return A.stack([n, a[1] + b[1], m2, a[3] + b[3], a[4] + b[4], a[5] + b[5]])


def mse_value(sums: Any, squared: bool) -> Any:
    mse = sums[3].sum() / sums[0].sum()  # no samples: 0/0 = NaN, as torchmetrics
    return mse if squared else A.sqrt(mse)


def mean_absolute_error_value(sums: Any) -> Any:
    return sums[4].sum() / sums[0].sum()


def mape_value(sums: Any) -> Any:
    return sums[5].sum() / sums[0].sum()


def check_r2_arguments(adjusted: Any, multioutput: Any) -> None:
    if multioutput not in MULTIOUTPUTS:
        raise ValueError(f"multioutput must be one of {', '.join(map(repr, MULTIOUTPUTS))}, got {multioutput!r}")
    if isinstance(adjusted, bool) or not isinstance(adjusted, numbers.Integral) or adjusted < 0:
        raise ValueError(f"adjusted must be an integer >= 0 (the number of regressors), got {adjusted!r}")


def r2_value(sums: Any, num_obs: int, adjusted: int, multioutput: str) -> Any:
    """torchmetrics' R2: 1 - rss / tss per output; 1 where both are ~0, 0 where only tss is."""
    check_r2_arguments(adjusted, multioutput)
    if num_obs < 2:
        raise ValueError(f"r2_score needs at least two samples, got {num_obs}")
    tss, rss = sums[2], sums[3]
    has_rss, has_tss = abs(rss) > _NEAR_ZERO, abs(tss) > _NEAR_ZERO
    raw = A.where(has_rss & has_tss, 1 - A.safe_divide(rss, tss), tss * 0 + 1.0)
    raw = A.where(has_rss & ~has_tss, 0.0, raw)
    if multioutput == "raw_values":
        r2 = raw
    elif multioutput == "uniform_average":
        r2 = raw.mean()
    else:
        r2 = (A.safe_divide(tss, tss.sum()) * raw).sum()
    if adjusted == 0:
        return r2
    if adjusted >= num_obs - 1:
        warnings.warn(f"adjusted={adjusted} leaves no degrees of freedom with {num_obs} samples; "
                      "returning the unadjusted R2 (as torchmetrics)", UserWarning, stacklevel=3)
        return r2
    return 1 - (1 - r2) * (num_obs - 1) / (num_obs - adjusted - 1)
