"""gpukernels.metrics' functional API (torchmetrics' names, arguments, defaults) on the NumPy
backend, numpy and torch CPU inputs: against oracles written from the definitions and against
scikit-learn where it is installed; adversarial inputs (all one class, empty classes, ties,
ignore_index, logits); bad input rejected with errors naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels.metrics as M
from _metric_oracles import confusion, divide, macro, pairwise_auroc, per_class, r2, sigmoid

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def value(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Binary


@pytest.mark.parametrize("n", [1, 7, 1000], ids=lambda n: f"N{n}")
@pytest.mark.parametrize("kind", ["probs", "logits"])
def test_binary_metrics(n, kind, rng):
    scores = rng.random(n) if kind == "probs" else rng.standard_normal(n) * 3
    target = rng.integers(0, 2, n)
    probs = scores if kind == "probs" else sigmoid(scores)
    tp, fp, tn, fn = confusion(probs > 0.5, target == 1)
    assert value(M.binary_accuracy(scores, target)) == pytest.approx((tp + tn) / n)
    assert value(M.binary_precision(scores, target)) == pytest.approx(divide(tp, tp + fp))
    assert value(M.binary_recall(scores, target)) == pytest.approx(divide(tp, tp + fn))
    assert value(M.binary_f1_score(scores, target)) == pytest.approx(divide(2 * tp, 2 * tp + fp + fn))
    assert value(M.binary_auroc(scores, target)) == pytest.approx(pairwise_auroc(probs, target == 1))
    for name in ("accuracy", "precision", "recall", "f1_score", "auroc"):
        assert value(getattr(M, name)(scores, target, task="binary")) == \
            pytest.approx(value(getattr(M, f"binary_{name}")(scores, target)))


def test_binary_against_scikit_learn(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    scores, target = np.round(rng.random(500), 2), rng.integers(0, 2, 500)
    hard = scores > 0.5
    assert value(M.binary_accuracy(scores, target)) == pytest.approx(metrics.accuracy_score(target, hard))
    assert value(M.binary_precision(scores, target)) == pytest.approx(metrics.precision_score(target, hard))
    assert value(M.binary_recall(scores, target)) == pytest.approx(metrics.recall_score(target, hard))
    assert value(M.binary_f1_score(scores, target)) == pytest.approx(metrics.f1_score(target, hard))
    assert value(M.binary_auroc(scores, target)) == pytest.approx(metrics.roc_auc_score(target, scores))


def test_threshold_is_strict_and_integer_preds_are_labels():
    scores = np.array([0.5, 0.50001, 0.2, 0.9])
    target = np.array([1, 1, 0, 0])
    assert value(M.binary_recall(scores, target)) == 0.5  # 0.5 > 0.5 is False, as torchmetrics
    labels = np.array([1, 0, 0, 1])
    assert value(M.binary_accuracy(labels, target, threshold=1.0)) == 0.5  # labels ignore the threshold


@pytest.mark.parametrize("cls", [0, 1])
def test_all_one_class(cls, rng):
    scores, target = rng.random(50), np.full(50, cls)
    assert value(M.binary_auroc(scores, target)) == 0.0  # torchmetrics: no positives (negatives) -> 0
    tp, fp, tn, fn = confusion(scores > 0.5, target == 1)
    assert value(M.binary_precision(scores, target)) == divide(tp, tp + fp)
    assert value(M.binary_recall(scores, target, zero_division=1)) == divide(tp, tp + fn, 1.0)


def test_ignore_index(rng):
    scores, target = rng.random(100), rng.integers(0, 2, 100)
    target[::3] = -1
    kept = target != -1
    assert value(M.binary_accuracy(scores, target, ignore_index=-1)) == \
        pytest.approx(value(M.binary_accuracy(scores[kept], target[kept])))
    assert value(M.binary_auroc(scores, target, ignore_index=-1)) == \
        pytest.approx(pairwise_auroc(scores[kept], target[kept] == 1))


def test_every_score_ignored_gives_zero_counts():
    assert value(M.binary_accuracy(np.array([0.2, 0.8]), np.array([-1, -1]), ignore_index=-1)) == 0.0


def test_binned_auroc_matches_torchmetrics_doc_example():
    # torchmetrics' binary_roc docstring: thresholds=5 gives fpr [0, .5, .5, .5, 1], tpr [0, 0, 1, 1, 1]
    preds, target = np.array([0, 0.5, 0.7, 0.8]), np.array([0, 1, 1, 0])
    fpr, tpr = np.array([0, 0.5, 0.5, 0.5, 1]), np.array([0, 0, 1, 1, 1])
    assert value(M.binary_auroc(preds, target, thresholds=5)) == pytest.approx(np.trapezoid(tpr, fpr))
    assert value(M.binary_auroc(preds, target)) == pytest.approx(0.5)


def test_binned_auroc_converges_to_exact(rng):
    scores, target = rng.random(2000), rng.integers(0, 2, 2000)
    exact = value(M.binary_auroc(scores, target))
    assert value(M.binary_auroc(scores, target, thresholds=2001)) == pytest.approx(exact, abs=2e-3)


# ---------------------------------------------------------------------------------------------
# Multiclass


def _multiclass_oracle(scores, target, num_classes):
    stats = per_class(scores.argmax(1), target, num_classes).astype(float)
    tp, fp, tn, fn = stats.T
    present = tp + fp + fn > 0
    recall = np.array([divide(a, a + b) for a, b in zip(tp, fn)])
    precision = np.array([divide(a, a + b) for a, b in zip(tp, fp)])
    f1 = np.array([divide(2 * a, 2 * a + b + c) for a, b, c in zip(tp, fp, fn)])
    support = tp + fn
    return {
        "accuracy": {"micro": tp.sum() / (tp + fn).sum(), "macro": macro(recall, present),
                     "weighted": (recall * support).sum() / support.sum(), "none": recall},
        "precision": {"micro": tp.sum() / (tp + fp).sum(), "macro": macro(precision, present),
                      "weighted": (precision * support).sum() / support.sum(), "none": precision},
        "f1_score": {"macro": macro(f1, present), "weighted": (f1 * support).sum() / support.sum(), "none": f1},
    }


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", "none"])
@pytest.mark.parametrize("num_classes", [2, 5, 11])
def test_multiclass_metrics(average, num_classes, rng):
    scores = rng.standard_normal((300, num_classes)).astype(np.float32)
    target = rng.integers(0, num_classes, 300)
    target[target == num_classes - 1] = 0  # an empty class: no target, maybe predicted
    oracle = _multiclass_oracle(scores, target, num_classes)
    for name, by_average in oracle.items():
        if average in by_average:
            got = getattr(M, f"multiclass_{name}")(scores, target, num_classes, average=average)
            np.testing.assert_allclose(value(got), by_average[average], rtol=1e-12, atol=1e-12)


def test_multiclass_defaults_macro_but_task_defaults_micro(rng):
    scores, target = rng.standard_normal((200, 4)), rng.integers(0, 4, 200)
    oracle = _multiclass_oracle(scores, target, 4)["accuracy"]
    assert value(M.multiclass_accuracy(scores, target, 4)) == pytest.approx(oracle["macro"])
    assert value(M.accuracy(scores, target, task="multiclass", num_classes=4)) == pytest.approx(oracle["micro"])


def test_multiclass_against_scikit_learn(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    scores, target = rng.standard_normal((400, 6)), rng.integers(0, 6, 400)
    labels = scores.argmax(1)
    for average in ("micro", "macro", "weighted"):
        assert value(M.multiclass_precision(scores, target, 6, average=average)) == \
            pytest.approx(metrics.precision_score(target, labels, average=average))
        assert value(M.multiclass_recall(scores, target, 6, average=average)) == \
            pytest.approx(metrics.recall_score(target, labels, average=average))
        assert value(M.multiclass_f1_score(scores, target, 6, average=average)) == \
            pytest.approx(metrics.f1_score(target, labels, average=average))
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    for average in ("macro", "weighted"):
        assert value(M.multiclass_auroc(scores, target, 6, average=average)) == \
            pytest.approx(metrics.roc_auc_score(target, probs, multi_class="ovr", average=average))


def test_multiclass_integer_labels_and_extra_dims(rng):
    scores = rng.standard_normal((20, 3, 5))  # (N, C, d): d joins the batch
    target = rng.integers(0, 3, (20, 5))
    flat_scores = np.moveaxis(scores, 1, -1).reshape(-1, 3)
    expected = value(M.multiclass_accuracy(flat_scores, target.reshape(-1), 3))
    assert value(M.multiclass_accuracy(scores, target, 3)) == pytest.approx(expected)
    labels = scores.argmax(1)
    assert value(M.multiclass_accuracy(labels, target, 3)) == pytest.approx(expected)


def test_multiclass_auroc_one_vs_rest(rng):
    scores = rng.random((300, 4))
    probs = scores / scores.sum(1, keepdims=True)  # inside [0, 1]: used as they are
    target = rng.integers(0, 4, 300)
    each = np.array([pairwise_auroc(probs[:, c], target == c) for c in range(4)])
    np.testing.assert_allclose(value(M.multiclass_auroc(probs, target, 4, average="none")), each, rtol=1e-12)
    support = np.bincount(target, minlength=4)
    assert value(M.multiclass_auroc(probs, target, 4, average="weighted")) == \
        pytest.approx((each * support).sum() / support.sum())


# ---------------------------------------------------------------------------------------------
# Multilabel


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", "none"])
def test_multilabel_metrics(average, rng):
    scores, target = rng.random((120, 4)), rng.integers(0, 2, (120, 4))
    target[:, 3] = 0  # a label with no positives
    stats = np.array([confusion(scores[:, j] > 0.5, target[:, j] == 1) for j in range(4)], dtype=float)
    tp, fp, tn, fn = stats.T
    accuracy = (tp + tn) / (tp + fp + tn + fn)
    recall = np.array([divide(a, a + b) for a, b in zip(tp, fn)])
    support = tp + fn
    expected_accuracy = {"micro": (tp + tn).sum() / stats.sum(), "macro": accuracy.mean(),
                         "weighted": (accuracy * support).sum() / support.sum(), "none": accuracy}[average]
    expected_recall = {"micro": tp.sum() / (tp + fn).sum(), "macro": recall.mean(),
                       "weighted": (recall * support).sum() / support.sum(), "none": recall}[average]
    np.testing.assert_allclose(value(M.multilabel_accuracy(scores, target, 4, average=average)), expected_accuracy)
    np.testing.assert_allclose(value(M.multilabel_recall(scores, target, 4, average=average)), expected_recall)
    aurocs = np.array([pairwise_auroc(scores[:, j], target[:, j] == 1) for j in range(4)])
    expected_auroc = {"micro": pairwise_auroc(scores.reshape(-1), target.reshape(-1) == 1), "macro": aurocs.mean(),
                      "weighted": (aurocs * support).sum() / support.sum(), "none": aurocs}[average]
    np.testing.assert_allclose(value(M.multilabel_auroc(scores, target, 4, average=average)), expected_auroc)


# ---------------------------------------------------------------------------------------------
# Regression


@pytest.mark.parametrize("n", [2, 7, 4099], ids=lambda n: f"N{n}")
def test_regression_metrics(n, rng):
    preds, target = rng.standard_normal(n), rng.standard_normal(n) * 2
    error = preds - target
    assert value(M.mean_squared_error(preds, target)) == pytest.approx((error**2).mean())
    assert value(M.mean_squared_error(preds, target, squared=False)) == pytest.approx(np.sqrt((error**2).mean()))
    assert value(M.mean_absolute_error(preds, target)) == pytest.approx(np.abs(error).mean())
    assert value(M.mean_absolute_percentage_error(preds, target)) == \
        pytest.approx((np.abs(error) / np.maximum(np.abs(target), 1.17e-06)).mean())
    assert value(M.r2_score(preds, target)) == pytest.approx(r2(preds[:, None], target[:, None])[0])


def test_r2_multioutput_and_adjusted(rng):
    preds, target = rng.standard_normal((50, 3)), rng.standard_normal((50, 3)) * np.array([1, 2, 3])
    raw = r2(preds, target)
    np.testing.assert_allclose(value(M.r2_score(preds, target, multioutput="raw_values")), raw)
    assert value(M.r2_score(preds, target)) == pytest.approx(raw.mean())
    tss = ((target - target.mean(0)) ** 2).sum(0)
    assert value(M.r2_score(preds, target, multioutput="variance_weighted")) == pytest.approx((raw * tss).sum() / tss.sum())
    assert value(M.r2_score(preds[:, 0], target[:, 0], adjusted=3)) == \
        pytest.approx(1 - (1 - raw[0]) * 49 / (50 - 3 - 1))


def test_regression_against_scikit_learn(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    preds, target = rng.standard_normal((100, 2)), rng.standard_normal((100, 2))
    assert value(M.mean_squared_error(preds, target)) == pytest.approx(metrics.mean_squared_error(target, preds))
    assert value(M.mean_absolute_error(preds, target)) == pytest.approx(metrics.mean_absolute_error(target, preds))
    assert value(M.mean_absolute_percentage_error(preds, target)) == \
        pytest.approx(metrics.mean_absolute_percentage_error(target, preds))
    for multioutput in ("raw_values", "uniform_average", "variance_weighted"):
        np.testing.assert_allclose(value(M.r2_score(preds, target, multioutput=multioutput)),
                                   metrics.r2_score(target, preds, multioutput=multioutput))


def test_r2_of_large_close_targets_keeps_its_digits(rng):
    """The centred sums: 1e4 +- 1 targets in float32 keep R2 (sum(t^2) - sum(t)^2/n would not)."""
    target = (1e4 + rng.standard_normal(10_000)).astype(np.float32)
    preds = (target + 0.1 * rng.standard_normal(10_000)).astype(np.float32)
    want = r2(preds.astype(np.float64)[:, None], target.astype(np.float64)[:, None])[0]
    assert value(M.r2_score(preds, target)) == pytest.approx(want, abs=1e-5)


def test_constant_targets_follow_torchmetrics():
    target = np.ones(5)
    assert value(M.r2_score(target.copy(), target)) == 1.0  # rss ~ 0 and tss ~ 0
    assert value(M.r2_score(target + 1, target)) == 0.0  # tss ~ 0 only


# ---------------------------------------------------------------------------------------------
# Results: the caller's library; torch gives float32 like torchmetrics


def test_torch_inputs_give_torch_results(rng):
    scores = torch.from_numpy(rng.random(30)).float()
    target = torch.from_numpy(rng.integers(0, 2, 30))
    for out in (M.binary_accuracy(scores, target), M.binary_auroc(scores, target),
                M.mean_squared_error(scores, scores * 2)):
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == ()
    none = M.multiclass_recall(torch.randn(30, 3), torch.from_numpy(rng.integers(0, 3, 30)), 3, average="none")
    assert none.shape == (3,)
    assert isinstance(M.binary_accuracy(scores.numpy(), target.numpy()), np.ndarray)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_nan_predictions_are_rejected():
    scores, target = np.array([0.1, np.nan, 0.7]), np.array([0, 1, 1])
    for fn in (M.binary_accuracy, M.binary_auroc, M.binary_f1_score):
        with pytest.raises(ValueError, match="preds contains NaN"):
            fn(scores, target)
    with pytest.raises(ValueError, match="preds contains NaN"):
        M.multiclass_auroc(np.array([[0.1, np.nan], [0.2, 0.3]]), np.array([0, 1]), 2)


@pytest.mark.parametrize("call,match", [
    (lambda: M.accuracy(np.ones(3), np.ones(3, int), task="ternary"), "task must be one of"),
    (lambda: M.accuracy(np.ones((3, 2)), np.ones(3, int), task="multiclass"), "num_classes is required"),
    (lambda: M.multiclass_accuracy(np.ones((3, 2)), np.ones(3, int), 2, average="mean"), "average must be one of"),
    (lambda: M.multiclass_auroc(np.ones((3, 2)), np.ones(3, int), 2, average="micro"), "average must be one of"),
    (lambda: M.binary_accuracy(np.ones(3), np.array([0, 1, 2])), "target holds values outside"),
    (lambda: M.multiclass_accuracy(np.ones((3, 2)), np.array([0, 1, 2]), 2), "target holds values outside"),
    (lambda: M.multiclass_accuracy(np.array([0, 5, 1]), np.array([0, 1, 1]), 2), "integer preds hold labels"),
    (lambda: M.binary_accuracy(np.ones(3), np.ones(4, int)), "preds has shape"),
    (lambda: M.multiclass_accuracy(np.ones((3, 4)), np.ones(3, int), 3), "num_classes = 3"),
    (lambda: M.binary_accuracy(np.ones(3), np.ones(3, int), threshold=1.5), "threshold must be"),
    (lambda: M.binary_auroc(np.ones(3), np.ones(3, int), thresholds=1), "thresholds must be"),
    (lambda: M.binary_auroc(np.ones(3), np.ones(3, int), max_fpr=0.5), "max_fpr"),
    (lambda: M.multiclass_accuracy(np.ones((3, 2)), np.ones(3, int), 2, top_k=2), "top_k"),
    (lambda: M.r2_score(np.ones(1), np.ones(1)), "at least two samples"),
    (lambda: M.r2_score(np.ones(3), np.ones(3), multioutput="mean"), "multioutput must be"),
    (lambda: M.r2_score(np.ones(3), np.ones(3), adjusted=-1), "adjusted must be"),
    (lambda: M.mean_squared_error(np.ones(3), np.ones(4)), "preds has shape"),
])
def test_bad_arguments_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call,match", [
    (lambda: M.binary_accuracy(np.ones(3), np.ones(3)), "target has dtype float64"),
    (lambda: M.binary_accuracy([0.1, 0.2], np.ones(2, int)), "preds must be a numpy array"),
    (lambda: M.binary_accuracy(np.ones(3), torch.ones(3, dtype=torch.int64)), "target is a torch array"),
    (lambda: M.mean_squared_error(np.ones(3, int), np.ones(3)), "preds has dtype int64"),
    (lambda: M.multiclass_accuracy(np.ones((3, 2)), np.ones(3, int), num_classes=2.0), "num_classes must be an integer"),
])
def test_bad_types_raise_type_errors(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_validate_args_false_skips_the_value_checks():
    # out-of-range targets are then skipped by the kernels, never written out of bounds
    out = M.multiclass_accuracy(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 7]), 2, average="micro",
                                validate_args=False)
    assert value(out) == 1.0
