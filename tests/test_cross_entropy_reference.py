"""The NumPy cross-entropy family in float64 against PyTorch CPU float64 autograd (cross_entropy,
nll_loss, a torch composite for the focal loss, input @ weight.T + bias for linear + CE) and
central differences; all-ignored batches; the linear + CE's peak memory measured on the CPU.
Test ids: N<shape>-<target kind>-<options>-<reduction>."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import gpukernels as gk
from _helpers import assert_close
from gpukernels.reference import cross_entropy as ref

SHAPES = [(7,), (1, 1), (5, 7), (4, 13, 3), (2, 5, 3, 2)]
REDUCTIONS = ("mean", "sum", "none")


def _class_axis(shape):
    return 1 if len(shape) > 1 else 0


def _targets(rng, shape, probs: bool):
    axis = _class_axis(shape)
    classes = shape[axis]
    if probs:
        p = rng.random(shape) + 0.05
        return p / p.sum(axis=axis, keepdims=True)
    target = rng.integers(0, classes, tuple(s for a, s in enumerate(shape) if a != axis))
    if target.size > 2:
        target.reshape(-1)[1] = -100
    return target


def _torch_loss_and_grad(fn, x, upstream_seed, *args, **kwargs):
    xt = torch.from_numpy(x).requires_grad_()
    loss = fn(xt, *args, **kwargs)
    upstream = torch.from_numpy(np.random.default_rng(upstream_seed).standard_normal(loss.shape))
    (grad,) = torch.autograd.grad(loss, xt, upstream)
    return loss.detach().numpy(), grad.numpy(), upstream.numpy()


CASES = [pytest.param(shape, probs, weighted, smoothing, reduction,
                      id=f"N{'x'.join(map(str, shape))}-{'probs' if probs else 'index'}"
                         f"{'-weight' if weighted else ''}-ls{smoothing}-{reduction}")
         for shape in SHAPES for probs in (False, True) for weighted in (False, True)
         for smoothing in (0.0, 0.3) for reduction in REDUCTIONS]


@pytest.mark.parametrize("shape,probs,weighted,smoothing,reduction", CASES)
def test_cross_entropy_matches_torch_float64(shape, probs, weighted, smoothing, reduction, rng):
    x = rng.standard_normal(shape) * 3
    target = _targets(rng, shape, probs)
    weight = rng.random(shape[_class_axis(shape)]) + 0.5 if weighted else None
    kwargs = dict(reduction=reduction, label_smoothing=smoothing)
    want, want_grad, upstream = _torch_loss_and_grad(
        TF.cross_entropy, x, 1, torch.from_numpy(target), None if weight is None else torch.from_numpy(weight),
        **kwargs)
    assert_close(gk.cross_entropy(x, target, weight, **kwargs), want, "float64")
    assert_close(gk.cross_entropy_backward(upstream, x, target, weight, **kwargs), want_grad, "float64")
    loss, unit_grad = gk.cross_entropy_forward(x, target, weight, **kwargs)
    assert_close(loss, want, "float64")
    axis = _class_axis(shape)
    scaled = unit_grad * (np.expand_dims(upstream, axis) if reduction == "none" else upstream)
    assert_close(scaled, want_grad, "float64")


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N" + "x".join(map(str, s)))
def test_nll_loss_matches_torch_float64(shape, reduction, weighted, rng):
    x = rng.standard_normal(shape)
    target = _targets(rng, shape, False)
    weight = rng.random(shape[_class_axis(shape)]) + 0.5 if weighted else None
    want, want_grad, upstream = _torch_loss_and_grad(
        TF.nll_loss, x, 2, torch.from_numpy(target), None if weight is None else torch.from_numpy(weight),
        reduction=reduction)
    assert_close(gk.nll_loss(x, target, weight, reduction=reduction), want, "float64")
    assert_close(gk.nll_loss_backward(upstream, x, target, weight, reduction=reduction), want_grad, "float64")


def torch_focal_loss(x, target, gamma, alpha, ignore_index=-100, reduction="mean"):
    """The multi-class focal loss as a torch composite (the definition the op implements)."""
    axis = 1 if x.dim() > 1 else 0
    valid = target != ignore_index
    index = torch.where(valid, target, 0)
    log_p = torch.log_softmax(x, axis).gather(axis, index.unsqueeze(axis)).squeeze(axis)
    a = torch.ones(x.shape[axis], dtype=x.dtype) if alpha is None else alpha
    loss = torch.where(valid, -a[index] * (1 - log_p.exp()) ** gamma * log_p, 0.0)
    return {"none": loss, "sum": loss.sum(), "mean": loss.sum() / valid.sum()}[reduction]


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, 7), (4, 6, 3)], ids=lambda s: "N" + "x".join(map(str, s)))
def test_focal_loss_matches_the_torch_composite(shape, reduction, gamma, rng):
    x = rng.standard_normal(shape) * 3
    target = _targets(rng, shape, False)
    alpha = rng.random(shape[1]) + 0.2
    want, want_grad, upstream = _torch_loss_and_grad(torch_focal_loss, x, 3, torch.from_numpy(target), gamma,
                                                     torch.from_numpy(alpha), reduction=reduction)
    assert_close(gk.focal_loss(x, target, gamma, alpha, reduction=reduction), want, "float64")
    assert_close(gk.focal_loss_backward(upstream, x, target, gamma, alpha, reduction=reduction), want_grad, "float64")


def test_focal_loss_with_gamma_zero_is_cross_entropy(rng):
    x = rng.standard_normal((6, 9))
    target = rng.integers(0, 9, 6)
    np.testing.assert_allclose(gk.focal_loss(x, target, 0.0), gk.cross_entropy(x, target), rtol=1e-14)


def test_focal_gradient_stays_finite_for_confident_rows():
    # p_y -> 1: (1 - p)^(gamma - 1) alone would be inf for gamma < 1; the product tends to 0
    x = np.array([[40.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    grad = gk.focal_loss_backward(np.ones(2), x, np.array([0, 2]), 0.5, None, reduction="none")
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("kind", ["cross_entropy", "focal_loss"])
def test_backward_matches_central_differences(kind, rng):
    x = rng.standard_normal((4, 6)) * 2
    target = np.array([0, 5, -100, 2])
    weight = rng.random(6) + 0.5
    upstream = rng.standard_normal(4)
    if kind == "cross_entropy":
        loss = lambda v: gk.cross_entropy(v, target, weight, reduction="none", label_smoothing=0.2)  # noqa: E731
        grad = gk.cross_entropy_backward(upstream, x, target, weight, reduction="none", label_smoothing=0.2)
    else:
        loss = lambda v: gk.focal_loss(v, target, 1.5, weight, reduction="none")  # noqa: E731
        grad = gk.focal_loss_backward(upstream, x, target, 1.5, weight, reduction="none")
    h = 1e-6
    numeric = np.empty_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        numeric[index] = np.sum(upstream * (loss(x + step) - loss(x - step))) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("op", ["cross_entropy", "nll_loss", "focal_loss"])
def test_all_ignored_batch_gives_what_torch_gives(op, rng):
    x = rng.standard_normal((3, 4))
    target = np.full(3, -100)
    torch_op = {"cross_entropy": TF.cross_entropy, "nll_loss": TF.nll_loss,
                "focal_loss": lambda x, t, reduction: torch_focal_loss(x, t, 2.0, None, reduction=reduction)}[op]
    for reduction in REDUCTIONS:
        want = torch_op(torch.from_numpy(x), torch.from_numpy(target), reduction=reduction).numpy()
        got = getattr(gk, op)(x, target, reduction=reduction)
        assert_close(got, want, "float64")
    assert np.isnan(getattr(gk, op)(x, target))  # mean: 0 / 0
    grad = getattr(gk, f"{op}_backward")(np.array(1.0), x, target)
    assert (grad == 0).all()  # torch's gradient of an all-ignored batch: zeros, not 0 * (1 / 0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_low_precision_inputs_compute_in_float32(dtype, rng):
    x = (rng.standard_normal((8, 50)) * 4).astype(dtype)
    target = rng.integers(0, 50, 8)
    want = TF.cross_entropy(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(target)).numpy()
    got = gk.cross_entropy(x, target)
    assert got.dtype == np.dtype(dtype)
    assert_close(got, want, dtype, "reduction")


# ---------------------------------------------------------------------------------------------
# Linear + cross-entropy


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("biased", [False, True], ids=["nobias", "bias"])
def test_linear_cross_entropy_matches_torch_float64(biased, reduction, chunk_size, rng):
    h = rng.standard_normal((2, 7, 8))
    w = rng.standard_normal((13, 8))
    b = rng.standard_normal(13) if biased else None
    target = rng.integers(0, 13, (2, 7))
    target[0, 3] = -100
    ht, wt = torch.from_numpy(h).requires_grad_(), torch.from_numpy(w).requires_grad_()
    bt = None if b is None else torch.from_numpy(b).requires_grad_()
    logits = ht @ wt.T + (0 if bt is None else bt)
    want = TF.cross_entropy(logits.reshape(-1, 13), torch.from_numpy(target).reshape(-1), reduction=reduction,
                            label_smoothing=0.1)
    want = want.reshape(2, 7) if reduction == "none" else want
    upstream = torch.from_numpy(rng.standard_normal(want.shape))
    wanted = [t for t in (ht, wt, bt) if t is not None]
    want_grads = torch.autograd.grad(want, wanted, upstream)
    kwargs = dict(reduction=reduction, label_smoothing=0.1, chunk_size=chunk_size)
    assert_close(gk.linear_cross_entropy(h, w, target, b, **kwargs), want.detach().numpy(), "float64")
    grads = gk.linear_cross_entropy_backward(upstream.numpy(), h, w, target, b, **kwargs)
    assert (grads[2] is None) == (b is None)
    for got, expected in zip([g for g in grads if g is not None], want_grads):
        assert_close(got, expected.numpy(), "float64")
    if reduction != "none":
        loss, *unit = gk.linear_cross_entropy_forward(h, w, target, b, **kwargs)
        for got, expected in zip([g for g in unit if g is not None], want_grads):
            assert_close(got * upstream.numpy(), expected.numpy(), "float64")


def test_linear_cross_entropy_peak_memory_is_a_chunk_of_logits(rng):
    rows, hidden, vocab, chunk = 2048, 64, 4096, 64
    h = rng.standard_normal((rows, hidden)).astype(np.float32)
    w = rng.standard_normal((vocab, hidden)).astype(np.float32) * 0.1
    target = rng.integers(0, vocab, rows)
    logits_bytes = rows * vocab * 4  # 32 MiB: what the unfused composite holds (twice, with its gradient)
    tracemalloc.start()
    try:
        gk.linear_cross_entropy_forward(h, w, target, chunk_size=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = h.nbytes + w.nbytes  # the input and weight gradients
    chunk_bytes = chunk * vocab * 4
    assert peak < outputs + 4 * chunk_bytes + (1 << 20), (peak, logits_bytes)
    assert peak < logits_bytes / 4


def test_automatic_chunk_bounds_the_logits():
    assert ref.chunk_rows(8192, 128256, 2, None) * 128256 * 2 <= ref.LINEAR_CHUNK_BYTES
    assert ref.chunk_rows(8192, 128256, 2, None, 256 << 20) == (256 << 20) // (128256 * 2)
    assert ref.chunk_rows(10, 100, 4, None) == 10
    assert ref.chunk_rows(10, 10**9, 4, None) == 1
    assert ref.chunk_rows(100, 100, 4, 7) == 7


# ---------------------------------------------------------------------------------------------
# The gradient of a probability target (torch differentiates it: the loss is linear in it)


def _torch_target_grad(x, target, weight, upstream_seed, **kwargs):
    tt = torch.from_numpy(target).requires_grad_()
    loss = TF.cross_entropy(torch.from_numpy(x), tt, None if weight is None else torch.from_numpy(weight), **kwargs)
    upstream = torch.from_numpy(np.random.default_rng(upstream_seed).standard_normal(loss.shape))
    (grad,) = torch.autograd.grad(loss, tt, upstream)
    return grad.numpy(), upstream.numpy()


TARGET_CASES = [pytest.param(shape, weighted, smoothing, reduction,
                             id=f"N{'x'.join(map(str, shape))}-probs{'-weight' if weighted else ''}-ls{smoothing}"
                                f"-{reduction}")
                for shape in SHAPES for weighted in (False, True) for smoothing in (0.0, 0.3)
                for reduction in REDUCTIONS]


@pytest.mark.parametrize("shape,weighted,smoothing,reduction", TARGET_CASES)
def test_probability_target_gradient_matches_torch_float64(shape, weighted, smoothing, reduction, rng):
    x = rng.standard_normal(shape) * 3
    target = _targets(rng, shape, probs=True)
    weight = rng.random(shape[_class_axis(shape)]) + 0.5 if weighted else None
    kwargs = dict(reduction=reduction, label_smoothing=smoothing)
    want, upstream = _torch_target_grad(x, target, weight, 4, **kwargs)
    recomputed = gk.cross_entropy_target_backward(upstream, x, target, weight, **kwargs)
    loss, unit_grad, lse = gk.cross_entropy_forward(x, target, weight, compute_logsumexp=True, **kwargs)
    kept = gk.cross_entropy_target_backward(upstream, x, target, weight, logsumexp=lse, **kwargs)
    assert lse.dtype == np.float64 and lse.shape == tuple(s for a, s in enumerate(shape) if a != _class_axis(shape))
    assert_close(recomputed, want, "float64")
    assert_close(kept, want, "float64")
    assert_close(loss, gk.cross_entropy(x, target, weight, **kwargs), "float64")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_probability_target_gradient_matches_central_differences(reduction, rng):
    x = rng.standard_normal((3, 5, 2)) * 2
    target = rng.random((3, 5, 2))  # any float target: the loss is linear in it, probabilities or not
    weight = rng.random(5) + 0.5
    kwargs = dict(reduction=reduction, label_smoothing=0.2)
    upstream = rng.standard_normal((3, 2) if reduction == "none" else ())
    grad = gk.cross_entropy_target_backward(upstream, x, target, weight, **kwargs)
    h = 1e-6
    numeric = np.empty_like(target)
    for index in np.ndindex(target.shape):
        step = np.zeros_like(target)
        step[index] = h
        change = gk.cross_entropy(x, target + step, weight, **kwargs) - gk.cross_entropy(x, target - step, weight,
                                                                                          **kwargs)
        numeric[index] = np.sum(upstream * change) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_probability_target_gradient_in_low_precision(dtype, rng):
    # float16 computes in float32 and keeps the log-sum-exp in float32 (the gradient subtracts logits from it)
    x64 = rng.standard_normal((6, 301)) * 4
    p = rng.random((6, 301))
    t64 = p / p.sum(1, keepdims=True)
    x, target = x64.astype(dtype), t64.astype(dtype)
    want, upstream = _torch_target_grad(x.astype(np.float64), target.astype(np.float64), None, 5, reduction="none")
    _, _, lse = gk.cross_entropy_forward(x, target, compute_logsumexp=True, compute_grad=False, reduction="none")
    assert lse.dtype == np.float32
    for kept in (None, lse):
        got = gk.cross_entropy_target_backward(upstream.astype(dtype), x, target, reduction="none", logsumexp=kept)
        assert got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype, "reduction")


def test_probability_target_gradient_of_an_empty_batch_and_one_class():
    x, target = np.zeros((0, 4)), np.zeros((0, 4))
    assert gk.cross_entropy_target_backward(np.array(1.0), x, target).shape == (0, 4)
    one = np.array([[2.5], [-1.0]])  # log_softmax of a single class is 0: so is the gradient
    assert (gk.cross_entropy_target_backward(np.array(1.0), one, np.ones((2, 1))) == 0).all()


# ---------------------------------------------------------------------------------------------
# The gradient of the class weights of probability targets (torch differentiates them there)


def _torch_weight_grad(x, target, weight, upstream_seed, **kwargs):
    wt = torch.from_numpy(weight).requires_grad_()
    loss = TF.cross_entropy(torch.from_numpy(x), torch.from_numpy(target), wt, **kwargs)
    upstream = torch.from_numpy(np.random.default_rng(upstream_seed).standard_normal(loss.shape))
    (grad,) = torch.autograd.grad(loss, wt, upstream)
    return grad.numpy(), upstream.numpy()


WEIGHT_CASES = [pytest.param(shape, smoothing, reduction,
                             id=f"N{'x'.join(map(str, shape))}-ls{smoothing}-{reduction}")
                for shape in SHAPES + [(301, 7)] for smoothing in (0.0, 0.3) for reduction in REDUCTIONS]


@pytest.mark.parametrize("shape,smoothing,reduction", WEIGHT_CASES)
def test_class_weight_gradient_matches_torch_float64(shape, smoothing, reduction, rng):
    # "mean" divides by the number of rows and spatial positions (torch's divisor for probability
    # targets, whatever the weights); "none" takes a non-uniform upstream gradient
    x = rng.standard_normal(shape) * 3
    target = _targets(rng, shape, probs=True)
    weight = rng.random(shape[_class_axis(shape)]) + 0.5
    kwargs = dict(reduction=reduction, label_smoothing=smoothing)
    want, upstream = _torch_weight_grad(x, target, weight, 6, **kwargs)
    recomputed = gk.cross_entropy_weight_backward(upstream, x, target, weight, **kwargs)
    _, _, lse = gk.cross_entropy_forward(x, target, weight, compute_logsumexp=True, **kwargs)
    kept = gk.cross_entropy_weight_backward(upstream, x, target, weight, logsumexp=lse, **kwargs)
    unweighted = gk.cross_entropy_weight_backward(upstream, x, target, None, logsumexp=lse, **kwargs)
    assert recomputed.shape == (shape[_class_axis(shape)],) and recomputed.dtype == np.float64
    for got in (recomputed, kept, unweighted):  # the weights' values do not enter: the loss is linear in them
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_class_weight_gradient_matches_central_differences(reduction, rng):
    x = rng.standard_normal((3, 5, 2)) * 2
    target = rng.random((3, 5, 2))  # any float target
    weight = rng.random(5) + 0.5
    kwargs = dict(reduction=reduction, label_smoothing=0.2)
    upstream = rng.standard_normal((3, 2) if reduction == "none" else ())
    grad = gk.cross_entropy_weight_backward(upstream, x, target, weight, **kwargs)
    h = 1e-6
    numeric = np.empty_like(weight)
    for c in range(5):
        step = np.zeros_like(weight)
        step[c] = h
        change = gk.cross_entropy(x, target, weight + step, **kwargs) - gk.cross_entropy(x, target, weight - step,
                                                                                          **kwargs)
        numeric[c] = np.sum(upstream * change) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_class_weight_gradient_in_low_precision(dtype, rng):
    x64 = rng.standard_normal((40, 301)) * 4
    p = rng.random((40, 301))
    x, target = x64.astype(dtype), (p / p.sum(1, keepdims=True)).astype(dtype)
    weight = (rng.random(301) + 0.5).astype(dtype)
    want, upstream = _torch_weight_grad(x.astype(np.float64), target.astype(np.float64), weight.astype(np.float64),
                                        7, reduction="none", label_smoothing=0.1)
    _, _, lse = gk.cross_entropy_forward(x, target, weight, compute_logsumexp=True, compute_grad=False,
                                         reduction="none", label_smoothing=0.1)
    for kept in (None, lse):
        got = gk.cross_entropy_weight_backward(upstream.astype(dtype), x, target, weight, reduction="none",
                                               label_smoothing=0.1, logsumexp=kept)
        assert got.dtype == np.dtype(dtype) and got.shape == (301,)
        assert_close(got, want, dtype, "reduction")


def test_class_weight_gradient_over_many_blocks_is_the_same_bits_every_run(monkeypatch, rng):
    # small blocks of rows on the thread pool: the blocks' sums are added in block order
    monkeypatch.setattr(ref, "BLOCK_BYTES", 8 * 13 * 8)
    x = rng.standard_normal((1000, 13))
    target = rng.random((1000, 13))
    upstream = rng.standard_normal(1000)
    runs = [gk.cross_entropy_weight_backward(upstream, x, target, reduction="none").tobytes() for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    want, _ = _torch_weight_grad(x, target, np.ones(13), 0, reduction="none")
    got = gk.cross_entropy_weight_backward(np.random.default_rng(0).standard_normal(1000), x, target,
                                           reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_class_weight_gradient_of_an_empty_batch_and_one_class():
    grad = gk.cross_entropy_weight_backward(np.array(1.0), np.zeros((0, 4)), np.zeros((0, 4)))
    assert grad.shape == (4,) and (grad == 0).all()  # a sum over no rows (mean: 0/0 rows scale by 0, as in torch)
    one = np.array([[2.5], [-1.0]])  # log_softmax of a single class is 0: so is the gradient
    assert (gk.cross_entropy_weight_backward(np.array(1.0), one, np.ones((2, 1))) == 0).all()
