"""The metric kernels compiled on a GPU (skipped without one): large inputs against the NumPy
reference (exact counts), bitwise-repeatable sums, and metric classes whose ``update`` makes no
host sync (torch's sync debug mode turns any sync into an error)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
import gpukernels.metrics as M
from gpukernels.ops import metrics as ops
from gpukernels.reference import metrics as ref

pytestmark = pytest.mark.gpu


def _cuda(a):
    return torch.from_numpy(a).cuda()


def test_large_counts_match_the_reference(rng):
    n = 1 << 20
    scores = rng.standard_normal((n, 1)).astype(np.float32)
    target = rng.integers(0, 2, (n, 1))
    got = ops.label_counts(_cuda(scores), _cuda(target), 0.5, None)
    np.testing.assert_array_equal(got.cpu().numpy(), ref.label_counts(scores, target, 0.5, None))
    for classes in (10, 5000):  # one-hot tiles, then scattered atomics
        class_scores = rng.standard_normal((n // 64, classes)).astype(np.float32)
        class_target = rng.integers(0, classes, n // 64)
        got = ops.class_counts(_cuda(class_scores), _cuda(class_target), classes, None)
        np.testing.assert_array_equal(got.cpu().numpy(), ref.class_counts(class_scores, class_target, classes, None))


def test_large_auroc_with_ties_matches_the_reference(rng):
    n = 1 << 20
    scores = np.round(rng.random((n, 1)), 3).astype(np.float32)  # about 1000 samples per tie group
    target = rng.integers(0, 2, (n, 1))
    got = ops.roc_area(_cuda(scores), _cuda(target), False, None)
    np.testing.assert_array_equal(got.cpu().numpy(), ref.roc_area(scores, target, False, None))
    binned = ops.binned_roc_counts(_cuda(scores), _cuda(target), 100, False, None)
    np.testing.assert_array_equal(binned.cpu().numpy(), ref.binned_roc_counts(scores, target, 100, False, None))


def test_regression_sums_repeat_bitwise_and_match(rng):
    n = 1 << 24
    preds = torch.randn(n, 1, device="cuda")
    target = torch.randn(n, 1, device="cuda") * 2 + 5
    first = ops.regression_sums(preds, target)
    assert torch.equal(first, ops.regression_sums(preds, target))
    want = ref.regression_sums(preds.cpu().double().numpy(), target.cpu().double().numpy())
    np.testing.assert_allclose(first.cpu().numpy(), want, rtol=1e-5)


def test_update_never_syncs_with_the_host(rng):
    metrics = [M.Accuracy(task="multiclass", num_classes=10), M.F1Score(task="binary"),
               M.AUROC(task="binary"), M.AUROC(task="binary", thresholds=50), M.MeanSquaredError(), M.R2Score()]
    batches = [(torch.randn(4096, device="cuda"), torch.randint(0, 2, (4096,), device="cuda")) for _ in range(3)]
    classes = [(torch.randn(4096, 10, device="cuda"), torch.randint(0, 10, (4096,), device="cuda")) for _ in range(3)]

    def update_all(i):
        metrics[0].update(*classes[i])
        for metric in metrics[1:4]:
            metric.update(*batches[i])
        metrics[4].update(batches[i][0], batches[i][0] * 0.5)
        metrics[5].update(batches[i][0], batches[i][0] * 0.5 + 1)

    update_all(0)  # first calls: compile kernels and copy the thresholds once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        update_all(1)
        update_all(2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for metric in metrics:
        assert torch.isfinite(metric.compute()).all()


def test_functional_metrics_on_cuda_match_numpy(rng):
    scores = rng.standard_normal((5000, 6)).astype(np.float32)
    target = rng.integers(0, 6, 5000)
    # softmax rounding may move a score across a bin edge: a binned AUROC may move by ~1e-5
    for call, rtol in ((lambda p, t: M.multiclass_f1_score(p, t, 6), 1e-6),
                       (lambda p, t: M.multiclass_auroc(p, t, 6), 1e-5),
                       (lambda p, t: M.multiclass_auroc(p, t, 6, thresholds=64), 1e-3)):
        got = call(_cuda(scores), _cuda(target))
        assert got.is_cuda
        with gk.use_backend("numpy"):
            want = call(scores, target)
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=rtol)
