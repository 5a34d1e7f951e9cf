"""The softmax backward's tolerance where the output is nearly one-hot (tests/_helpers.py's
``assert_softmax_backward_close``, used by the GPU tests): an fp32 backward computed as well as
fp32 allows must pass it where a bound relative to |dx| fails, and a wrong gradient must not."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import NORM_TOL, assert_softmax_backward_close
from gpukernels.reference import softmax as ref


def _nearly_one_hot_logits(rng, cols: int = 70000):
    """(logits, dy): 6 rows of logits at scale 1e4 with half the entries masked, as the GPU masked-softmax test
    draws them, each row's runner-up then placed 5-12 below its maximum: a share of 6e-6..7e-3,
    the ill-conditioned case that 10% of such draws hit by chance."""
    x = (rng.standard_normal((6, cols)) * 1e4).astype(np.float32).astype(np.float64)
    x[rng.random((6, cols)) <= 0.5] = -np.inf
    for row, gap in zip(x, rng.uniform(5.0, 12.0, size=6)):
        kept = np.flatnonzero(np.isfinite(row))
        top = kept[np.argmax(row[kept])]
        runner_up = kept[0] if kept[0] != top else kept[1]
        row[runner_up] = row[top] - gap
    return x, rng.standard_normal((6, cols)).astype(np.float32)


def _fp32_backward(name, dy, y):
    """The backward in fp32 throughout, its row sum accumulated one element after another (the
    least accurate order a kernel could use)."""
    if name == "log_softmax":
        total = np.cumsum(dy, axis=-1, dtype=np.float32)[:, -1:]
        return dy - np.exp(y) * total
    total = np.cumsum(dy * y, axis=-1, dtype=np.float32)[:, -1:]
    return y * (dy - total)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_an_fp32_backward_passes_where_a_bound_relative_to_dx_cannot(name):
    rng = np.random.default_rng(20261130)
    x, dy = _nearly_one_hot_logits(rng)
    y = getattr(ref, name)(x, -1).astype(np.float32)  # masked entries: 0, or -inf for log_softmax
    dx = _fp32_backward(name, dy, y)
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    want = getattr(ref, f"{name}_backward")(dy64, y64, -1)
    assert_softmax_backward_close(dx, dy64, y64, name, "float32")
    if name == "softmax":  # the plain bound the GPU test used to apply fails on these rows
        assert np.linalg.norm(dx - want) / np.linalg.norm(want) > NORM_TOL["float32"]["reduction"]


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_a_wrong_gradient_fails(name):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 333)) * 3.0
    y = getattr(ref, name)(x, -1)
    dy = rng.standard_normal((5, 333))
    dx = getattr(ref, f"{name}_backward")(dy, y, -1)
    assert_softmax_backward_close(dx, dy, y, name, "float32")
    wrong = dx.copy()
    wrong[2, 17] += 1e-3 * np.abs(dx).max()
    with pytest.raises(AssertionError, match="backward: error"):
        assert_softmax_backward_close(wrong, dy, y, name, "float32")
    with pytest.raises(AssertionError):
        assert_softmax_backward_close(np.full_like(dx, np.nan), dy, y, name, "float32")
