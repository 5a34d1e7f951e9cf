"""The stateful metrics: update over batches then compute equals the functional metric of all the
data; reset; value checks raised at compute (update never syncs); calling the metric returns the
batch's value. Numpy and torch CPU state (the Triton-backend state runs in test_metrics_gpu.py
and, in the interpreter, below for one metric of each kind)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
import gpukernels.metrics as M

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def value(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


def _batches(rng, kind, sizes=(17, 1, 64)):
    # logits with a value outside [0, 1] in every batch: torchmetrics (and we) decide per batch
    # whether scores are logits, so a batch of one score in [0, 1] would be read differently
    for n in sizes:
        if kind == "binary":
            yield np.r_[3.0, rng.standard_normal(n - 1) * 2], rng.integers(0, 2, n)
        elif kind == "multiclass":
            scores = rng.standard_normal((n, 4))
            scores[0, 0] = 3.0
            yield scores, rng.integers(0, 4, n)
        elif kind == "multilabel":
            yield rng.random((n, 3)), rng.integers(0, 2, (n, 3))
        else:
            yield rng.standard_normal((n, 2)), rng.standard_normal((n, 2)) * 3 + 100


CLASSIFICATION = [
    (M.Accuracy, M.accuracy, {}), (M.Precision, M.precision, {"average": "macro"}),
    (M.Recall, M.recall, {"average": "weighted"}), (M.F1Score, M.f1_score, {"average": "none"}),
    (M.AUROC, M.auroc, {}), (M.AUROC, M.auroc, {"thresholds": 20}),
]


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("cls,fn,kwargs", CLASSIFICATION, ids=lambda v: getattr(v, "__name__", None))
def test_accumulated_equals_functional_on_all_data(cls, fn, kwargs, task, rng):
    sizes = {"num_classes": 4} if task == "multiclass" else {"num_labels": 3} if task == "multilabel" else {}
    batches = list(_batches(rng, task))
    metric = cls(task=task, **sizes, **kwargs)
    for preds, target in batches:
        metric.update(preds, target)
    preds, target = (np.concatenate(parts) for parts in zip(*batches))
    want = fn(preds, target, task=task, **sizes, **kwargs)
    np.testing.assert_allclose(value(metric.compute()), value(want), rtol=1e-12)
    metric.reset()
    preds, target = batches[0]
    metric.update(preds, target)
    np.testing.assert_allclose(value(metric.compute()), value(fn(preds, target, task=task, **sizes, **kwargs)),
                               rtol=1e-12)


@pytest.mark.parametrize("cls,fn,kwargs", [
    (M.MeanSquaredError, M.mean_squared_error, {}), (M.MeanSquaredError, M.mean_squared_error, {"squared": False}),
    (M.MeanAbsoluteError, M.mean_absolute_error, {}),
    (M.MeanAbsolutePercentageError, M.mean_absolute_percentage_error, {}),
    (M.R2Score, M.r2_score, {}),
], ids=lambda v: getattr(v, "__name__", None))
def test_regression_accumulates(cls, fn, kwargs, rng):
    batches = list(_batches(rng, "regression"))
    extra = {"num_outputs": 2} if cls is M.R2Score else {}
    metric = cls(**kwargs, **extra)
    for preds, target in batches:
        metric.update(preds, target)
    preds, target = (np.concatenate(parts) for parts in zip(*batches))
    np.testing.assert_allclose(value(metric.compute()), value(fn(preds, target, **kwargs)), rtol=1e-10)


def test_r2_adjusted_and_shape_check(rng):
    metric = M.R2Score(adjusted=2)
    preds, target = rng.standard_normal(40), rng.standard_normal(40)
    metric.update(preds[:15], target[:15])
    metric.update(preds[15:], target[15:])
    assert value(metric.compute()) == pytest.approx(value(M.r2_score(preds, target, adjusted=2)))
    with pytest.raises(ValueError, match="num_outputs=1"):
        metric.update(np.ones((3, 2)), np.ones((3, 2)))


def test_calling_returns_the_batch_value_and_accumulates(rng):
    metric = M.Accuracy(task="binary")
    (p1, t1), (p2, t2) = _batches(rng, "binary", (30, 40))
    assert value(metric(p1, t1)) == pytest.approx(value(M.binary_accuracy(p1, t1)))
    assert value(metric(p2, t2)) == pytest.approx(value(M.binary_accuracy(p2, t2)))
    assert value(metric.compute()) == pytest.approx(value(M.binary_accuracy(np.r_[p1, p2], np.r_[t1, t2])))


def test_value_problems_surface_at_compute():
    metric = M.Accuracy(task="multiclass", num_classes=3)
    metric.update(np.array([[0.1, 0.2, 0.7]]), np.array([5]))  # no error yet: update does not sync
    with pytest.raises(ValueError, match="target holds values outside"):
        metric.compute()
    auroc = M.AUROC(task="binary")
    auroc.update(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="preds contains NaN"):
        auroc.compute()


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="task must be one of"):
        M.Accuracy(task="regression")
    with pytest.raises(ValueError, match="num_classes is required"):
        M.F1Score(task="multiclass")
    with pytest.raises(ValueError, match="average must be one of"):
        M.AUROC(task="multiclass", num_classes=3, average="micro")
    with pytest.raises(RuntimeError, match="before any update"):
        M.MeanSquaredError().compute()


def test_torch_state_stays_torch_on_the_triton_backend(rng):
    metric = M.F1Score(task="multiclass", num_classes=4, average="macro")
    auroc = M.AUROC(task="multiclass", num_classes=4)
    mse = M.MeanSquaredError()
    with gk.use_backend("triton"):
        for preds, target in _batches(rng, "multiclass"):
            p, t = torch.from_numpy(preds).float(), torch.from_numpy(target)
            metric.update(p, t)
            auroc.update(p, t)
            mse.update(p, p * 0.5)
        results = [metric.compute(), auroc.compute(), mse.compute()]
    for out in results:
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32


@pytest.mark.parametrize("thresholds", [None, 25])
def test_auroc_reads_logits_batch_by_batch_as_torchmetrics(thresholds, rng):
    probs, logits = rng.random(40), rng.standard_normal(60) * 3
    t1, t2 = rng.integers(0, 2, 40), rng.integers(0, 2, 60)
    metric = M.AUROC(task="binary", thresholds=thresholds)
    metric.update(probs, t1)  # inside [0, 1]: scores as they are
    metric.update(logits, t2)  # outside: this batch goes through the sigmoid
    want = M.binary_auroc(np.r_[probs, 1 / (1 + np.exp(-logits))], np.r_[t1, t2], thresholds=thresholds)
    assert value(metric.compute()) == pytest.approx(value(want), abs=1e-12)
