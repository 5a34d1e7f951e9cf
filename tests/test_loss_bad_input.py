"""Bad input to the loss family gets a TypeError or ValueError naming the argument, before any
backend runs (nothing launched, nothing written)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from gpukernels import _dispatch

REGRESSION = [gk.mse_loss, gk.l1_loss, gk.huber_loss, gk.smooth_l1_loss]
ALL = REGRESSION + [gk.binary_cross_entropy, gk.binary_cross_entropy_with_logits, gk.sigmoid_focal_loss]
BACKWARD = [gk.mse_loss_backward, gk.l1_loss_backward, gk.huber_loss_backward, gk.smooth_l1_loss_backward,
            gk.binary_cross_entropy_backward, gk.binary_cross_entropy_with_logits_backward,
            gk.sigmoid_focal_loss_backward]
name = lambda f: f.__name__  # noqa: E731


@pytest.fixture(autouse=True)
def nothing_may_run(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a backend was called for rejected input")

    monkeypatch.setattr(_dispatch, "implementation", lambda *a: refuse)


def _pair(shape=(3, 4), dtype=np.float32):
    return np.full(shape, 0.5, dtype), np.full(shape, 0.25, dtype)


@pytest.mark.parametrize("op", ALL, ids=name)
def test_target_shape_must_match(op):
    x, _ = _pair()
    with pytest.raises(ValueError, match=r"target has shape \(4,\) but input has shape \(3, 4\)"):
        op(x, np.full((4,), 0.5, np.float32))


@pytest.mark.parametrize("op", ALL, ids=name)
def test_unknown_reduction(op):
    with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum', got 'average'"):
        op(*_pair(), reduction="average")


@pytest.mark.parametrize("op", ALL, ids=name)
def test_dtype_mix(op):
    x, t = _pair()
    with pytest.raises(TypeError, match="target has dtype float64 but input has dtype float32"):
        op(x, t.astype(np.float64))


@pytest.mark.parametrize("op", ALL, ids=name)
def test_integer_input(op):
    with pytest.raises(TypeError, match="input has dtype int64; supported dtypes are"):
        op(np.ones(3, np.int64), np.ones(3, np.int64))


@pytest.mark.parametrize("op", ALL, ids=name)
def test_mixed_libraries(op):
    x, t = _pair()
    with pytest.raises(TypeError, match="target is a torch array but input is a numpy array"):
        op(x, torch.from_numpy(t))


@pytest.mark.parametrize("op", ALL, ids=name)
def test_not_an_array(op):
    with pytest.raises(TypeError, match="input must be a numpy array, torch tensor or cupy array, got list"):
        op([0.5], np.ones(1, np.float32))


@pytest.mark.parametrize("which", ["input", "target"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_bce_values_outside_0_1(which, value):
    x, t = _pair()
    (x if which == "input" else t)[1, 2] = value
    with pytest.raises(ValueError, match=f"all elements of {which} should be between 0 and 1"):
        gk.binary_cross_entropy(torch.from_numpy(x), torch.from_numpy(t))


@pytest.mark.parametrize("op,weight", [(gk.binary_cross_entropy, "weight"),
                                       (gk.binary_cross_entropy_with_logits, "weight"),
                                       (gk.binary_cross_entropy_with_logits, "pos_weight")])
def test_weights_must_broadcast_and_match(op, weight):
    x, t = _pair()
    with pytest.raises(ValueError, match=rf"{weight} has shape \(3,\), which does not broadcast to input's shape \(3, 4\)"):
        op(x, t, **{weight: np.ones(3, np.float32)})
    with pytest.raises(TypeError, match=f"{weight} has dtype float16 but input has dtype float32"):
        op(x, t, **{weight: np.ones(4, np.float16)})


@pytest.mark.parametrize("delta", [0.0, -1.0])
def test_huber_delta_must_be_positive(delta):
    with pytest.raises(ValueError, match="huber_loss needs delta > 0"):
        gk.huber_loss(*_pair(), delta=delta)
    with pytest.raises(TypeError, match="delta must be a real number, got str"):
        gk.huber_loss(*_pair(), delta="1")


def test_smooth_l1_beta_must_not_be_negative():
    with pytest.raises(ValueError, match="smooth_l1_loss needs beta >= 0"):
        gk.smooth_l1_loss(*_pair(), beta=-0.5)


def test_focal_parameters_are_numbers():
    with pytest.raises(TypeError, match="gamma must be a real number, got NoneType"):
        gk.sigmoid_focal_loss(*_pair(), gamma=None)


@pytest.mark.parametrize("op", BACKWARD, ids=name)
def test_backward_grad_output_shape_follows_the_reduction(op):
    x, t = _pair()
    with pytest.raises(ValueError, match=r"grad_output has shape \(3, 4\); with reduction='mean' it must have shape \(\)"):
        op(np.ones((3, 4), np.float32), x, t, reduction="mean")
    with pytest.raises(ValueError, match=r"grad_output has shape \(\); with reduction='none' it must have shape \(3, 4\)"):
        op(np.ones((), np.float32), x, t, reduction="none")
    with pytest.raises(TypeError, match="grad_output has dtype float64 but input has dtype float32"):
        op(np.ones((), np.float64), x, t, reduction="sum")
