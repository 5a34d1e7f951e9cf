"""Every Triton metric kernel against the NumPy reference, counts exactly and sums at DESIGN.md's
tolerances: fp32/fp16/bf16 scores, odd sizes (1, primes, empty), every launch the heuristics pick
(column tiles, one-hot and scattered class counts, chunks of the AUROC scan), ties across scan
chunks, ignore_index. In Triton's interpreter on CPU tensors here, compiled on a GPU (same tests).
Test ids: N<rows>-L<columns>-<dtype>."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
import gpukernels.metrics as M
from _helpers import DTYPES, as_float64, assert_close, torch_dtype
from conftest import DEVICE
from gpukernels.ops import metrics as ops
from gpukernels.reference import metrics as ref
from gpukernels.triton import metrics as tm

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered:RuntimeWarning")


def scores(rng, shape, dtype, scale=2.0):
    return torch.from_numpy(rng.standard_normal(shape) * scale).to(device=DEVICE, dtype=torch_dtype(dtype))


def ints(rng, low, high, shape):
    return torch.from_numpy(rng.integers(low, high, shape)).to(DEVICE)


def triton(op, *args, **kwargs):
    with gk.use_backend("triton"):
        return op(*args, **kwargs)


def exact(counts, preds, target, name, *args):
    """The kernel's int64 counts equal the reference's on the values the kernel read."""
    assert counts.dtype == torch.int64  # the kernels' atomics are integer atomics
    want = getattr(ref, name)(as_float64(preds) if preds.is_floating_point() else preds.cpu().numpy(),
                              target.cpu().numpy(), *args)
    np.testing.assert_array_equal(counts.cpu().numpy(), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,labels", [(0, 1), (1, 1), (7, 1), (4099, 1), (13, 3), (97, 70)],
                         ids=lambda v: str(v))
def test_label_counts(n, labels, dtype, rng):
    preds = scores(rng, (n, labels), dtype)
    target = ints(rng, 0, 2, (n, labels))
    if n:
        target[0, 0] = -100
    counts = triton(ops.label_counts, preds, target, 0.3, -100)
    exact(counts, preds, target, "label_counts", 0.3, -100)


@pytest.mark.parametrize("num_classes", [2, 5, 1000, 1500], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_class_counts_from_scores(num_classes, dtype, rng):
    n = 37
    preds = scores(rng, (n, num_classes), dtype)
    preds[3] = preds[3].max()  # a row of ties: the first maximum wins, as torch.argmax
    target = ints(rng, 0, num_classes, n)
    target[5] = num_classes  # out of range (validate_args=False): skipped, never written out of bounds
    counts = triton(ops.class_counts, preds, target, num_classes, None)
    exact(counts, preds, target, "class_counts", num_classes, None)
    assert counts[1].sum() == n - 1


@pytest.mark.parametrize("num_classes", [3, 2000], ids=lambda c: f"C{c}")
def test_class_counts_from_labels(num_classes, rng):
    labels = ints(rng, 0, num_classes, 211)
    target = ints(rng, 0, num_classes, 211)
    counts = triton(ops.class_counts, labels, target, num_classes, int(target[0]))
    exact(counts, labels, target, "class_counts", num_classes, int(target[0]))


def test_class_launches_cover_both_paths():
    assert tm.class_launch(1024).one_hot and not tm.class_launch(1025).one_hot


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 1023, 1024, 2500], ids=lambda n: f"N{n}")
def test_roc_area(n, dtype, rng):
    preds = torch.from_numpy(np.round(rng.random((n, 2)), 2)).to(device=DEVICE, dtype=torch_dtype(dtype))
    target = ints(rng, 0, 2, (n, 2))
    counts = triton(ops.roc_area, preds, target, False, None)
    exact(counts, preds, target, "roc_area", False, None)


def test_roc_tie_groups_that_span_scan_chunks(rng):
    # three values only: every tie group spans several 1024-element chunks of the scan
    n = 3 * tm.SCAN_BLOCK + 17
    preds = torch.from_numpy(rng.integers(0, 3, (n, 1)).astype(np.float32)).to(DEVICE)
    target = ints(rng, 0, 2, (n, 1))
    counts = triton(ops.roc_area, preds, target, False, None)
    exact(counts, preds, target, "roc_area", False, None)


def test_roc_one_vs_rest_with_ignore_index(rng):
    preds = scores(rng, (300, 5), "float32")
    target = ints(rng, 0, 5, 300)
    counts = triton(ops.roc_area, preds, target, True, 2)
    exact(counts, preds, target, "roc_area", True, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("thresholds", [2, 11, 200])
@pytest.mark.parametrize("one_vs_rest", [False, True], ids=["labels", "one_vs_rest"])
def test_binned_roc_counts(thresholds, one_vs_rest, dtype, rng):
    n, columns = 301, 3
    # scores on the thresholds themselves, and below 0 / above 1
    values = np.concatenate([np.round(rng.random(n * columns - 2), 2), [-0.5, 1.0]])
    preds = torch.from_numpy(values.reshape(n, columns)).to(device=DEVICE, dtype=torch_dtype(dtype))
    target = ints(rng, 0, columns, n) if one_vs_rest else ints(rng, 0, 2, (n, columns))
    counts = triton(ops.binned_roc_counts, preds, target, thresholds, one_vs_rest, None)
    want = ref.binned_roc_counts(as_float64(preds).astype(np.float32), target.cpu().numpy(), thresholds,
                                 one_vs_rest, None)
    np.testing.assert_array_equal(counts.cpu().numpy(), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,outputs", [(1, 1), (7, 1), (4099, 1), (1000, 3), (33, 70)], ids=lambda v: str(v))
def test_regression_sums(n, outputs, dtype, rng):
    preds = scores(rng, (n, outputs), dtype)
    target = scores(rng, (n, outputs), dtype, scale=3.0) + 10
    sums = triton(ops.regression_sums, preds, target)
    assert sums.dtype == torch.float64
    want = ref.regression_sums(as_float64(preds), as_float64(target))
    np.testing.assert_array_equal(sums[0].cpu().numpy(), want[0])
    # fp32 sums of the stored values: the storage dtype does not matter here, the math is fp32
    assert_close(sums[1:], want[1:], "float32", "reduction")


def test_regression_sums_are_the_same_bits_twice(rng):
    preds, target = scores(rng, (50_001, 1), "float32"), scores(rng, (50_001, 1), "float32")
    first = triton(ops.regression_sums, preds, target)
    second = triton(ops.regression_sums, preds, target)
    assert torch.equal(first, second)


def test_regression_of_nothing():
    empty = torch.zeros((0, 2), device=DEVICE)
    sums = triton(ops.regression_sums, empty, empty)
    assert sums.shape == (6, 2) and not sums.any()


# ---------------------------------------------------------------------------------------------
# The public metrics end to end on the Triton backend agree with the NumPy backend


@pytest.mark.parametrize("call", [
    lambda p, t, l, r: M.binary_f1_score(p[:, 0], t[:, 0]),
    lambda p, t, l, r: M.binary_auroc(p[:, 0], t[:, 0]),
    lambda p, t, l, r: M.binary_auroc(p[:, 0], t[:, 0], thresholds=50),
    lambda p, t, l, r: M.multilabel_precision(p, t, 4, average="weighted"),
    lambda p, t, l, r: M.multilabel_auroc(p, t, 4, average="micro"),
    lambda p, t, l, r: M.multiclass_accuracy(p, l, 4, average="macro", ignore_index=1),
    lambda p, t, l, r: M.multiclass_auroc(p, l, 4, average="weighted"),
    lambda p, t, l, r: M.r2_score(p, r, multioutput="raw_values"),
    lambda p, t, l, r: M.mean_absolute_percentage_error(p, r),
], ids=["binary_f1", "binary_auroc", "binned_auroc", "multilabel_precision", "multilabel_auroc_micro",
        "multiclass_accuracy", "multiclass_auroc", "r2", "mape"])
def test_public_metrics_match_the_numpy_backend(call, rng):
    p = scores(rng, (157, 4), "float32")
    t, l = ints(rng, 0, 2, (157, 4)), ints(rng, 0, 4, 157)
    r = p + scores(rng, (157, 4), "float32", scale=0.5)
    got = triton(call, p, t, l, r)
    with gk.use_backend("numpy"):
        want = call(p.cpu(), t.cpu(), l.cpu(), r.cpu())
    assert got.device == p.device and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
