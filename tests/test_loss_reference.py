"""The NumPy loss reference in float64 against PyTorch CPU (forward and autograd, for the input
and the target), central differences, and the special values PyTorch defines (BCE's log clamp,
smooth L1 with beta = 0, empty inputs); float32/float16 computed in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import assert_close
from _loss_cases import CASE_IDS, CASES, REDUCTIONS, torch_grads
from gpukernels.ops.loss import loss_backward
from gpukernels.reference import loss as ref

SHAPES = [(1,), (7,), (3, 5, 11), (2, 257)]


def _grads(case, g, x, t, reduction, weights):
    return loss_backward(case.loss, g, x, t, weights.get("weight"), weights.get("pos_weight"), reduction=reduction,
                         p1=case.p1, p2=case.p2, need="both")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N" + "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_torch_autograd_float64(case, reduction, shape, rng):
    x, t, weights = case.draw(rng, shape)
    upstream = torch.from_numpy(rng.standard_normal(shape if reduction == "none" else ()))
    want, want_gx, want_gt = torch_grads(case, x, t, reduction, weights, upstream)
    numpy_weights = {k: v.numpy() for k, v in weights.items()}
    got = case.ours(x.numpy(), t.numpy(), reduction, numpy_weights)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    assert_close(got, want, "float64")
    gx, gt = _grads(case, upstream.numpy(), x.numpy(), t.numpy(), reduction, numpy_weights)
    assert_close(gx, want_gx, "float64")
    assert_close(gt, want_gt, "float64")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hard_targets(case, rng):
    x, t, weights = case.draw(rng, (4, 33), hard_targets=True)
    upstream = torch.from_numpy(rng.standard_normal((4, 33)))
    want, want_gx, want_gt = torch_grads(case, x, t, "none", weights, upstream)
    assert_close(case.ours(x, t, "none", weights), want, "float64")  # torch CPU tensors run the reference
    gx, gt = _grads(case, upstream, x, t, "none", weights)
    assert_close(gx, want_gx, "float64")
    assert_close(gt, want_gt, "float64")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_central_differences(case, rng):
    x, t, weights = case.draw(rng, (3, 4))
    x, t = x.numpy(), t.numpy()
    numpy_weights = {k: v.numpy() for k, v in weights.items()}
    gx, gt = _grads(case, np.asarray(1.0), x, t, "sum", numpy_weights)
    step = 1e-6
    for value, grad in ((x, gx), (t, gt)):
        numeric = np.empty_like(value)
        for i in np.ndindex(value.shape):
            saved = value[i]
            value[i] = saved + step
            up = case.ours(x, t, "sum", numpy_weights)
            value[i] = saved - step
            down = case.ours(x, t, "sum", numpy_weights)
            value[i] = saved
            numeric[i] = (up - down) / (2 * step)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.0])
def test_smooth_l1_is_huber_over_beta_and_differs_from_huber_unless_beta_is_1(beta, rng):
    x, t = rng.standard_normal(200) * 2, rng.standard_normal(200) * 2
    smooth = gk.smooth_l1_loss(x, t, "none", beta=beta)
    if beta == 0:
        np.testing.assert_array_equal(smooth, gk.l1_loss(x, t, "none"))
        assert_close(ref.loss_backward(np.ones(200), x, t, None, None, loss="l1", reduction="none"),
                     np.sign(x - t), "float64")
        return
    huber = gk.huber_loss(x, t, "none", delta=beta)
    assert_close(smooth, huber / beta, "float64")
    assert np.array_equal(smooth, huber) == (beta == 1.0)


def test_smooth_l1_beta_0_gradient_is_the_sign_with_0_at_equality():
    x = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    g = gk.smooth_l1_loss_backward(torch.ones(3, dtype=torch.float64), x, t, "none", beta=0.0)
    np.testing.assert_array_equal(g.numpy(), [0.0, 1.0, -1.0])


def test_bce_clamps_each_log_at_minus_100_as_torch():
    x = torch.tensor([0.0, 1.0, 0.0, 1.0, 1e-50], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    want = torch.nn.functional.binary_cross_entropy(x, t, reduction="none")
    got = gk.binary_cross_entropy(x, t, reduction="none")
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert got[0] == 100.0 and got[2] == 0.0
    xr = x.clone().requires_grad_()
    (want_g,) = torch.autograd.grad(torch.nn.functional.binary_cross_entropy(xr, t, reduction="sum"), xr)
    got_g = gk.binary_cross_entropy_backward(torch.tensor(1.0, dtype=torch.float64), x, t, reduction="sum")
    np.testing.assert_allclose(got_g.numpy(), want_g.numpy(), rtol=1e-12)


def test_bce_with_logits_is_stable_for_large_logits():
    x = torch.tensor([-1000.0, -80.0, 80.0, 1000.0], dtype=torch.float64)
    t = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    got = gk.binary_cross_entropy_with_logits(x, t, reduction="none")
    np.testing.assert_allclose(got.numpy(), [1000.0, 80.0, 80.0, 1000.0])
    focal = gk.sigmoid_focal_loss(x, t)
    assert torch.isfinite(focal).all()


@pytest.mark.parametrize("reduction,want", [("none", (0,)), ("sum", 0.0), ("mean", np.nan)])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_empty_input(case, reduction, want):
    x, t = np.empty((0,), np.float32), np.empty((0,), np.float32)
    weights = {k: np.ones((0,) if k == "weight" else (1,), np.float32) for k in case.weights}
    got = case.ours(x, t, reduction, weights)
    assert got.dtype == np.float32
    if reduction == "none":
        assert got.shape == (0,)
    else:
        np.testing.assert_array_equal(got, want)
    torch_got = case.reference(torch.from_numpy(x), torch.from_numpy(t), reduction,
                               {k: torch.from_numpy(v) for k, v in weights.items()})
    np.testing.assert_array_equal(got, torch_got.numpy())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_low_precision_runs_in_float32(case, dtype, rng):
    x, t, weights = case.draw(rng, (5, 67))
    want = case.ours(x, t, "mean", weights)  # float64
    cast = lambda a: a.numpy().astype(dtype)  # noqa: E731
    got = case.ours(cast(x), cast(t), "mean", {k: cast(v) for k, v in weights.items()})
    assert got.dtype == np.dtype(dtype)
    rounded = case.ours(*(torch.from_numpy(cast(a)).double() for a in (x, t)), "mean",
                        {k: torch.from_numpy(cast(v)).double() for k, v in weights.items()})
    assert_close(got, rounded, dtype, "reduction")


def test_large_inputs_go_through_the_thread_pool_with_the_same_result(rng):
    x, t = rng.standard_normal(1 << 20).astype(np.float32), rng.standard_normal(1 << 20).astype(np.float32)
    whole = ref.elementwise_loss("huber", x, t, None, None, 0.5, 0.0)
    np.testing.assert_array_equal(gk.huber_loss(x, t, "none", delta=0.5), whole)
    assert_close(gk.huber_loss(x, t, "sum", delta=0.5), whole.astype(np.float64).sum(), "float32", "reduction")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_large_float32_inputs_summed_chunk_by_chunk_match_float64(case, rng):
    """Over 2^19 elements the reduced losses are summed a chunk at a time on the pool; the
    gradients are written chunk by chunk: both still match the float64 reference."""
    x, t, weights = case.draw(rng, (3, 174763))  # several chunks, the last one short
    as32 = lambda a: a.numpy().astype(np.float32)  # noqa: E731
    x32, t32, w32 = as32(x), as32(t), {k: as32(v) for k, v in weights.items()}
    exact = [a.astype(np.float64) for a in (x32, t32)]
    w64 = {k: v.astype(np.float64) for k, v in w32.items()}
    for reduction in ("mean", "sum"):
        got = case.ours(x32, t32, reduction, w32)
        assert got.dtype == np.float32
        assert_close(got, case.ours(*exact, reduction, w64), "float32", "reduction")
    g = np.asarray(0.7, np.float32)
    got_gx, got_gt = _grads(case, g, x32, t32, "mean", w32)
    want_gx, want_gt = _grads(case, g.astype(np.float64), *exact, "mean", w64)
    assert_close(got_gx, want_gx, "float32")
    assert_close(got_gt, want_gt, "float32")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_same_bits_for_every_thread_count(case, dtype, monkeypatch, rng):
    x, t, weights = case.draw(rng, (7, 57143))  # 400 001 elements: several uneven chunks
    x, t = x.numpy().astype(dtype), t.numpy().astype(dtype)
    x.reshape(-1)[:3] = [np.nan, np.inf, -np.inf] if case.loss not in ("bce",) else [0.0, 1.0, 0.5]
    weights = {k: v.numpy().astype(dtype) for k, v in weights.items()}
    g = rng.standard_normal(x.shape).astype(dtype)
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setenv("GPUKERNELS_NUM_THREADS", str(threads))
        got = [case.ours(x, t, reduction, weights) for reduction in REDUCTIONS]
        got += _grads(case, g, x, t, "none", weights) + _grads(case, np.asarray(g[0, 0]), x, t, "mean", weights)
        results.append([np.ascontiguousarray(a).view(np.uint8) for a in got])
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other, strict=True))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_zero_dimensional_input(case, rng):
    x, t, weights = case.draw(rng, ())
    upstream = torch.tensor(0.8, dtype=torch.float64)
    want, want_gx, want_gt = torch_grads(case, x, t, "none", weights, upstream)
    got = case.ours(x.numpy(), t.numpy(), "none", {k: v.numpy() for k, v in weights.items()})
    assert got.shape == ()
    assert_close(got, want, "float64")
    gx, gt = _grads(case, upstream, x, t, "none", weights)
    assert gx.shape == gt.shape == ()
    assert_close(gx, want_gx, "float64")
    assert_close(gt, want_gt, "float64")
