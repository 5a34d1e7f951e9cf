"""The CuPy metric backend on the CPU: its entry points with NumPy as the array module and
metrics.cu built with g++ as the launcher (every thread a fiber: shared-memory counters, barriers,
the scan's segment walk, the tree sums), against the NumPy reference: exact counts, sums at the
float32 tolerance; fp32/fp16/bf16 storage, odd sizes, ties across scan segments, ignore_index,
more labels and classes than the shared-memory counters hold."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import DTYPES, assert_close
from _host_buffers import host_runner, storage
from gpukernels.cupy import metrics as cm
from gpukernels.reference import metrics as ref


@pytest.fixture(scope="module")
def run():
    return host_runner(cm.PROGRAM)


def _exact(got, want):
    assert got.dtype == np.int64  # uint64 counters (integer atomics) handed back as int64
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,labels", [(1, 1), (7, 1), (1031, 1), (13, 3), (11, 70)], ids=lambda v: str(v))
def test_label_counts(run, n, labels, dtype, rng):
    preds, preds64 = storage(rng.standard_normal((n, labels)) * 2, dtype)
    target = rng.integers(0, 2, (n, labels))
    target[0, 0] = -100
    _exact(cm.label_counts(preds, target, 0.3, -100, run=run), ref.label_counts(preds64, target, 0.3, -100))


def test_label_counts_of_nothing(run):
    _exact(cm.label_counts(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.int64), 0.5, None, run=run),
           np.zeros((9, 2), np.int64))


@pytest.mark.parametrize("num_classes", [2, 7, 300], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_class_counts_from_scores(run, num_classes, dtype, rng):
    preds, preds64 = storage(rng.standard_normal((53, num_classes)), dtype)
    target = rng.integers(0, num_classes, 53)
    target[4] = num_classes  # out of range: skipped
    _exact(cm.class_counts(preds, target, num_classes, None, run=run),
           ref.class_counts(preds64, target, num_classes, None))


def test_class_counts_from_labels_with_ignore_index(run, rng):
    labels, target = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    _exact(cm.class_counts(labels, target, 5, 3, run=run), ref.class_counts(labels, target, 5, 3))


def test_argmax_keeps_the_first_maximum(run):
    preds = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], np.float32)
    counts = cm.class_counts(preds, np.array([1, 0]), 3, None, run=run)
    assert counts[1].tolist() == [1, 1, 0]  # predicted classes 1 and 0, as torch.argmax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 255, 256, 1000], ids=lambda n: f"N{n}")
def test_roc_area(run, n, dtype, rng):
    preds, preds64 = storage(np.round(rng.random((n, 2)), 2), dtype)
    target = rng.integers(0, 2, (n, 2))
    _exact(cm.roc_area(preds, target, False, None, run=run), ref.roc_area(preds64, target, False, None))


@pytest.mark.parametrize("values", [1, 2, 3])
def test_roc_tie_groups_spanning_many_segments(run, values, rng):
    # 256 threads of ~8 elements each: groups cross many segments, and whole segments lie inside one
    preds = rng.integers(0, values, (2000, 1)).astype(np.float32)
    target = rng.integers(0, 2, (2000, 1))
    _exact(cm.roc_area(preds, target, False, None, run=run), ref.roc_area(preds, target, False, None))


def test_roc_one_vs_rest(run, rng):
    preds = rng.random((200, 4)).astype(np.float32)
    target = rng.integers(0, 4, 200)
    _exact(cm.roc_area(preds, target, True, 1, run=run), ref.roc_area(preds, target, True, 1))


@pytest.mark.parametrize("thresholds", [2, 11, 200])
@pytest.mark.parametrize("one_vs_rest", [False, True], ids=["labels", "one_vs_rest"])
def test_binned_roc_counts(run, thresholds, one_vs_rest, rng):
    values = np.concatenate([np.round(rng.random(301 * 3 - 2), 2), [-0.5, 1.0]]).reshape(301, 3)
    preds = values.astype(np.float32)
    target = rng.integers(0, 3, 301) if one_vs_rest else rng.integers(0, 2, (301, 3))
    _exact(cm.binned_roc_counts(preds, target, thresholds, one_vs_rest, None, run=run),
           ref.binned_roc_counts(preds, target, thresholds, one_vs_rest, None))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,outputs", [(1, 1), (7, 2), (5000, 1), (300, 3)], ids=lambda v: str(v))
def test_regression_sums(run, n, outputs, dtype, rng):
    preds, preds64 = storage(rng.standard_normal((n, outputs)), dtype)
    target, target64 = storage(rng.standard_normal((n, outputs)) * 3 + 10, dtype)
    sums = cm.regression_sums(preds, target, run=run)
    want = ref.regression_sums(preds64, target64)
    assert sums.dtype == np.float64
    np.testing.assert_array_equal(sums[0], want[0])
    assert_close(sums[1:], want[1:], "float32", "reduction")


def test_regression_sums_of_nothing(run):
    sums = cm.regression_sums(np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32), run=run)
    assert sums.shape == (6, 1) and not sums.any()
