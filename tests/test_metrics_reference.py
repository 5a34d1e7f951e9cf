"""The NumPy reference of the metric kernels (gpukernels.reference.metrics) against oracles written
from the definitions, and against scikit-learn where it is installed: random inputs and the
adversarial ones (every score tied, all one class, empty classes, ignore_index, odd sizes)."""

from __future__ import annotations

import numpy as np
import pytest

from _metric_oracles import confusion, pairwise_auroc, sigmoid
from gpukernels.ops.metrics import linspace_thresholds
from gpukernels.reference import metrics as ref

SIZES = (1, 2, 7, 257)


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("labels", [1, 3])
def test_label_counts_both_readings(n, labels, rng):
    preds = rng.standard_normal((n, labels)) * 2
    target = rng.integers(0, 2, (n, labels))
    target[0, 0] = -100
    counts = ref.label_counts(preds, target, 0.3, -100)
    assert counts.dtype == np.int64 and counts.shape == (9, labels)
    for j in range(labels):
        kept = target[:, j] != -100
        truth = target[kept, j] == 1
        assert tuple(counts[0:4, j]) == confusion(preds[kept, j] > 0.3, truth)
        assert tuple(counts[4:8, j]) == confusion(sigmoid(preds[kept, j]) > 0.3, truth)
        assert counts[8, j] == ((preds[:, j] < 0) | (preds[:, j] > 1)).sum()


@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("num_classes", [2, 5, 13])
def test_class_counts(n, num_classes, rng):
    scores = rng.standard_normal((n, num_classes))
    target = rng.integers(0, num_classes, n)
    counts = ref.class_counts(scores, target, num_classes, None)
    labels = scores.argmax(1)
    for c in range(num_classes):
        assert counts[0, c] == ((labels == c) & (target == c)).sum()
        assert counts[1, c] == (labels == c).sum()
        assert counts[2, c] == (target == c).sum()


def test_class_counts_ignore_index_inside_the_class_range(rng):
    labels = rng.integers(0, 4, 100)
    target = rng.integers(0, 4, 100)
    counts = ref.class_counts(labels, target, 4, ignore_index=2)
    assert counts[2, 2] == 0  # class 2's samples are ignored as targets
    kept = target != 2
    assert counts[1].sum() == kept.sum()


def _auroc(scores, target):
    counts = ref.roc_area(scores, target, False, None)
    area2, p, n = counts[:, 0]
    return 0.0 if p * n == 0 else area2 / (2 * p * n)


@pytest.mark.parametrize("n", (1, 2, 7, 257, 1000), ids=lambda n: f"N{n}")
@pytest.mark.parametrize("ties", ["distinct", "rounded", "all_equal"])
def test_roc_area_matches_every_pair(n, ties, rng):
    scores = rng.random(n)
    if ties == "rounded":
        scores = np.round(scores, 1)
    elif ties == "all_equal":
        scores = np.full(n, 0.25)
    target = rng.integers(0, 2, n)
    assert _auroc(scores[:, None], target[:, None]) == pytest.approx(pairwise_auroc(scores, target == 1), abs=1e-12)


def test_roc_area_against_scikit_learn(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    scores = np.round(rng.random(500), 2)
    target = rng.integers(0, 2, 500)
    assert _auroc(scores[:, None], target[:, None]) == pytest.approx(metrics.roc_auc_score(target, scores), abs=1e-12)


def test_roc_area_one_vs_rest_and_ignored(rng):
    scores = rng.random((300, 4))
    target = rng.integers(0, 4, 300)
    target[:10] = 9  # out of range: never counted
    counts = ref.roc_area(scores, target, True, ignore_index=3)
    kept = target < 3
    for c in range(3):
        area2, p, n = counts[:, c]
        assert area2 / (2 * p * n) == pytest.approx(pairwise_auroc(scores[kept, c], target[kept] == c))
    assert counts[1, 3] == 0  # class 3 is ignore_index: no positives


@pytest.mark.parametrize("thresholds", [2, 5, 101])
def test_binned_counts_are_counts_at_or_above_each_threshold(thresholds, rng):
    scores = np.round(rng.random((200, 2)), 2).astype(np.float32)  # many scores on a threshold
    target = rng.integers(0, 2, (200, 2))
    grid = linspace_thresholds(thresholds)
    counts = ref.binned_roc_counts(scores, target, grid, False, None)
    assert counts.shape == (2, thresholds + 1, 2)
    for j in range(2):
        for k, threshold in enumerate(grid):
            above = scores[:, j] >= threshold
            assert counts[j, k, 0] == (above & (target[:, j] == 1)).sum()
            assert counts[j, k, 1] == (above & (target[:, j] == 0)).sum()
        assert tuple(counts[j, -1]) == ((target[:, j] == 1).sum(), (target[:, j] == 0).sum())


@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (1000, 3)], ids=lambda s: "x".join(map(str, s)))
def test_regression_sums(shape, rng):
    preds, target = rng.standard_normal(shape), rng.standard_normal(shape) * 3 + 1e3
    sums = ref.regression_sums(preds, target)
    error = preds - target
    np.testing.assert_allclose(sums[0], shape[0])
    np.testing.assert_allclose(sums[1], target.sum(0))
    np.testing.assert_allclose(sums[2], ((target - target.mean(0)) ** 2).sum(0), rtol=1e-10)
    np.testing.assert_allclose(sums[3], (error**2).sum(0))
    np.testing.assert_allclose(sums[4], np.abs(error).sum(0))
    np.testing.assert_allclose(sums[5], (np.abs(error) / np.abs(target)).sum(0))


def test_regression_sums_of_nothing():
    sums = ref.regression_sums(np.zeros((0, 2)), np.zeros((0, 2)))
    assert sums.shape == (6, 2) and not sums.any()


# ---------------------------------------------------------------------------------------------
# Large inputs: tiles of rows on the thread pool (reference/_parallel.py), as the CPU fallback runs

BIG = 100_003  # float32 scores and int64 targets: several uneven tiles of rows


@pytest.mark.parametrize("ignore_index", [None, 0, 1, -100])
@pytest.mark.parametrize("labels", [1, 3])
def test_label_counts_in_tiles(labels, ignore_index, rng):
    preds = (rng.standard_normal((BIG, labels)) * 0.7 + 0.5).astype(np.float32)
    target = rng.integers(0, 2, (BIG, labels))
    target[::97] = -100
    target[5::101] = 7  # out of range: never counted
    counts = ref.label_counts(preds, target, 0.3, ignore_index)
    limit = ref.float32_below(ref.logit(0.3))
    for j in range(labels):
        kept = (target[:, j] >= 0) & (target[:, j] < 2) & (target[:, j] != ignore_index)
        truth = target[kept, j] == 1
        assert tuple(counts[0:4, j]) == confusion(preds[kept, j] > 0.3, truth)
        assert tuple(counts[4:8, j]) == confusion(preds[kept, j] > limit, truth)
        assert counts[8, j] == ((preds[:, j] < 0) | (preds[:, j] > 1)).sum()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_class_counts_in_tiles(dtype, rng):
    scores = rng.standard_normal((BIG, 5)).astype(dtype)
    scores[::7, 3] = scores[::7, 1]  # ties: the first maximum wins, as torch.argmax
    target = rng.integers(0, 5, BIG)
    counts = ref.class_counts(scores, target, 5, None)
    labels = scores.astype(np.float64).argmax(1)
    np.testing.assert_array_equal(counts[0], np.bincount(target[labels == target], minlength=5))
    np.testing.assert_array_equal(counts[1], np.bincount(labels, minlength=5))
    np.testing.assert_array_equal(counts[2], np.bincount(target, minlength=5))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_sums_in_tiles(outputs, dtype, rng):
    target = (rng.standard_normal((BIG, outputs)) * 3 + 100).astype(dtype)
    preds = (target + rng.standard_normal((BIG, outputs))).astype(dtype)
    sums = ref.regression_sums(preds, target)
    p, t = preds.astype(np.float64), target.astype(np.float64)
    error = p - t
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_array_equal(sums[0], BIG)
    np.testing.assert_allclose(sums[1], t.sum(0), rtol=rtol)
    np.testing.assert_allclose(sums[2], ((t - t.mean(0)) ** 2).sum(0), rtol=rtol * 10)
    np.testing.assert_allclose(sums[3], (error**2).sum(0), rtol=rtol)
    np.testing.assert_allclose(sums[4], np.abs(error).sum(0), rtol=rtol)
    np.testing.assert_allclose(sums[5], (np.abs(error) / np.abs(t)).sum(0), rtol=rtol)


@pytest.mark.parametrize("rows", [(0, 3), (0, 4), (0, 5), (0, 2, 3)], ids=lambda r: "rows" + "".join(map(str, r)))
def test_regression_sums_of_some_rows(rows, rng):
    preds, target = rng.standard_normal((BIG, 2)), rng.standard_normal((BIG, 2))
    some, every = ref.regression_sums(preds, target, rows), ref.regression_sums(preds, target)
    np.testing.assert_array_equal(some[list(rows)], every[list(rows)])
    skipped = [r for r in range(6) if r not in rows and not (r == 1 and 2 in rows) and not (r == 4 and 5 in rows)]
    assert np.isnan(some[skipped]).all()


def _bits_per_thread_count(monkeypatch, compute) -> list[bytes]:
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setenv("GPUKERNELS_NUM_THREADS", str(threads))
        results.append(np.ascontiguousarray(compute()).tobytes())
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_bits_for_every_thread_count(dtype, monkeypatch, rng):
    scores = rng.standard_normal((BIG, 3)).astype(dtype)
    labels = rng.integers(0, 3, (BIG, 3))
    target = (rng.standard_normal((BIG, 2)) * 5 + 1e3).astype(dtype)
    preds = (target + rng.standard_normal((BIG, 2))).astype(dtype)
    for compute in (lambda: ref.label_counts(scores, labels % 2, 0.5, None),
                    lambda: ref.class_counts(scores, labels[:, 0], 3, None),
                    lambda: ref.regression_sums(preds, target)):
        first, *others = _bits_per_thread_count(monkeypatch, compute)
        assert all(other == first for other in others), "the result changed with the thread count"
