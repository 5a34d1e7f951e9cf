"""Bad input to the cross-entropy family: a TypeError/ValueError naming the argument, raised
before any backend runs (the backends are replaced by functions that fail the test if called)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import _dispatch


@pytest.fixture(autouse=True)
def no_backend_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a backend ran on rejected input")

    monkeypatch.setattr(_dispatch, "implementation", lambda *a: refuse)


X = np.zeros((4, 5), np.float32) + 0.5
T = np.array([0, 1, 4, -100])
P = np.full((4, 5), 0.2, np.float32)  # probability targets
ONE = np.ones((), np.float32)


@pytest.mark.parametrize("call,error,match", [
    (lambda: gk.cross_entropy(X, np.array([0, 1, 5, 2])), ValueError, "target holds class index 5"),
    (lambda: gk.cross_entropy(X, np.array([0, -1, 2, 2])), ValueError, "target holds class index -1"),
    (lambda: gk.cross_entropy(X, np.array([0, 1, 2, 3]), ignore_index=3), None, None),
    (lambda: gk.cross_entropy(X, T.astype(np.float32)), TypeError, "target has floating-point dtype float32"),
    (lambda: gk.nll_loss(X, X), TypeError, "target has floating-point dtype"),
    (lambda: gk.focal_loss(X, X), TypeError, "target has floating-point dtype"),
    (lambda: gk.cross_entropy(X, T[:3]), ValueError, r"target has shape \(3,\)"),
    (lambda: gk.cross_entropy(X, np.zeros((4, 6), np.float32)), TypeError, "target has floating-point"),
    (lambda: gk.cross_entropy(X, X.astype(np.float64)), TypeError, "target has dtype float64 but input"),
    (lambda: gk.cross_entropy(X, T, reduction="avg"), ValueError, "reduction must be one of"),
    (lambda: gk.nll_loss(X, T, reduction="batchmean"), ValueError, "reduction must be one of"),
    (lambda: gk.cross_entropy(X, T, label_smoothing=1.5), ValueError, "label_smoothing must be between"),
    (lambda: gk.cross_entropy(X, T, weight=np.ones(4, np.float32)), ValueError, r"weight has shape \(4,\)"),
    (lambda: gk.cross_entropy(X, T, weight=np.ones(5, np.float64)), TypeError, "weight has dtype float64"),
    (lambda: gk.focal_loss(X, T, alpha=np.ones(3, np.float32)), ValueError, r"alpha has shape \(3,\)"),
    (lambda: gk.focal_loss(X, T, gamma=-1.0), ValueError, "gamma must be >= 0"),
    (lambda: gk.cross_entropy(X, T, ignore_index=1.5), TypeError, "ignore_index must be an integer"),
    (lambda: gk.cross_entropy(X.astype(np.int32), T), TypeError, "input has dtype int32"),
    (lambda: gk.cross_entropy(np.float32(1.0), T), TypeError, "input must be"),
    (lambda: gk.cross_entropy(np.array(1.0, np.float32), np.array(0)), ValueError, "input must have a class dim"),
    (lambda: gk.cross_entropy(X, torch.from_numpy(T)), TypeError, "target is a torch array but input is a numpy"),
    (lambda: gk.cross_entropy_backward(np.ones(4, np.float32), X, T), ValueError, r"grad_output has shape \(4,\)"),
    (lambda: gk.cross_entropy_backward(np.ones(3, np.float32), X, T, reduction="none"), ValueError,
     "grad_output has shape"),
    (lambda: gk.cross_entropy_backward(np.array(1.0), X, T), TypeError, "grad_output has dtype float64"),
    (lambda: gk.linear_cross_entropy(X, np.ones((7, 4), np.float32), T), ValueError, r"weight has shape \(7, 4\)"),
    (lambda: gk.linear_cross_entropy(X, np.ones((7, 5), np.float32), T, bias=np.ones(6, np.float32)), ValueError,
     r"bias has shape \(6,\)"),
    (lambda: gk.linear_cross_entropy(X, np.ones((4, 5), np.float32), T), ValueError, "target holds class index 4"),
    (lambda: gk.linear_cross_entropy(X, np.ones((7, 5), np.float32), T, chunk_size=0), ValueError,
     "chunk_size must be >= 1"),
    (lambda: gk.linear_cross_entropy_forward(X, np.ones((7, 5), np.float32), T, reduction="none"), ValueError,
     "compute_grad=True needs reduction"),
    # the gradient of a probability target
    (lambda: gk.cross_entropy_target_backward(ONE, X, P, logsumexp=np.zeros(4, np.float32)), None, None),
    (lambda: gk.cross_entropy_target_backward(ONE, X, T), TypeError, "class indices, which have no gradient"),
    (lambda: gk.cross_entropy_forward(X, T, compute_logsumexp=True), ValueError,
     "compute_logsumexp=True needs probability targets"),
    (lambda: gk.cross_entropy_target_backward(np.ones(4, np.float32), X, P), ValueError,
     r"grad_output has shape \(4,\)"),
    (lambda: gk.cross_entropy_target_backward(ONE, X, P, logsumexp=np.zeros(3, np.float32)), ValueError,
     r"logsumexp has shape \(3,\)"),
    (lambda: gk.cross_entropy_target_backward(ONE, X, P, logsumexp=np.zeros(4, np.float16)), TypeError,
     "logsumexp has dtype float16; supported dtypes are float32"),
    (lambda: gk.cross_entropy_target_backward(ONE, X, P, logsumexp=torch.zeros(4)), TypeError,
     "logsumexp is a torch array but input is a numpy"),
    (lambda: gk.cross_entropy_target_backward(ONE, X, P, label_smoothing=-0.1), ValueError,
     "label_smoothing must be between"),
    (lambda: gk.cross_entropy_target_backward(ONE, X, P, weight=np.ones(5, np.float64)), TypeError,
     "weight has dtype float64"),
    # the gradient of the class weights of probability targets: the same checks
    (lambda: gk.cross_entropy_weight_backward(ONE, X, P, logsumexp=np.zeros(4, np.float32)), None, None),
    (lambda: gk.cross_entropy_weight_backward(ONE, X, T, np.ones(5, np.float32)), TypeError,
     "class indices, which have no gradient \\(nor have their class weights\\); cross_entropy_weight_backward"),
    (lambda: gk.cross_entropy_weight_backward(np.ones(4, np.float32), X, P), ValueError,
     r"grad_output has shape \(4,\)"),
    (lambda: gk.cross_entropy_weight_backward(ONE, X, P, logsumexp=np.zeros(5, np.float32)), ValueError,
     r"logsumexp has shape \(5,\)"),
    (lambda: gk.cross_entropy_weight_backward(ONE, X, P, np.ones(4, np.float32)), ValueError,
     r"weight has shape \(4,\) but must be \(5,\)"),
    (lambda: gk.cross_entropy_weight_backward(ONE, X, P, reduction="avg"), ValueError, "reduction"),
    (lambda: gk.cross_entropy_weight_backward(ONE, X, P[:, :4]), TypeError, "target has floating-point dtype"),
], ids=lambda v: "" if callable(v) else str(v)[:40])
def test_rejected_before_any_backend_runs(call, error, match):
    if error is None:  # accepted: the backend (refusing) is reached
        with pytest.raises(AssertionError, match="a backend ran"):
            call()
        return
    with pytest.raises(error, match=match):
        call()
