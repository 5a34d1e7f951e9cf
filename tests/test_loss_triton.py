"""Every Triton loss kernel against the float64 reference, through the public API: forward
(per-element and reduced), backward for input and target in one pass, fp32/fp16/bf16, odd sizes,
broadcast weights, the many-partials path of the reduction, and bitwise repeatability. In
Triton's interpreter on CPU tensors here, on the GPU where there is one (same tests).
Test ids: N<shape>-<dtype>."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, torch_dtype
from _loss_cases import CASE_IDS, CASES, REDUCTIONS
from _gpu_math import DIRECTIONS, gpu_approximations
from conftest import DEVICE, HAS_CUDA
from gpukernels.ops.loss import loss_backward
from gpukernels.triton import loss as tloss

SHAPES = [(1,), (7,), (3, 5, 11), (2, 1031)]

# The interpreter evaluates masked-off lanes too (padding values through log and exp), and NumPy
# warns about them; those lanes are never stored or added.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered:RuntimeWarning")


def _rounded(case, rng, shape, dtype, **draw):
    """Inputs in ``dtype`` on DEVICE, and the same values in float64 on the CPU (the oracle's)."""
    x, t, weights = case.draw(rng, shape, **draw)
    cast = lambda a: a.to(device=DEVICE, dtype=torch_dtype(dtype))  # noqa: E731
    ours = (cast(x), cast(t), {k: cast(v) for k, v in weights.items()})
    exact = lambda a: torch.from_numpy(as_float64(a))  # noqa: E731
    return ours, (exact(ours[0]), exact(ours[1]), {k: exact(v) for k, v in ours[2].items()})


def _grads(case, g, x, t, reduction, weights):
    return loss_backward(case.loss, g, x, t, weights.get("weight"), weights.get("pos_weight"), reduction=reduction,
                         p1=case.p1, p2=case.p2, need="both")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N" + "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_and_backward(case, shape, dtype, reduction, rng):
    (x, t, w), (x64, t64, w64) = _rounded(case, rng, shape, dtype)
    g64 = torch.from_numpy(np.asarray(rng.standard_normal(shape if reduction == "none" else ()) + 0.5))
    g = g64.to(device=DEVICE, dtype=torch_dtype(dtype))
    with gk.use_backend("triton"):
        out = case.ours(x, t, reduction, w)
        gx, gt = _grads(case, g, x, t, reduction, w)
    kind = "pointwise" if reduction == "none" else "reduction"
    assert out.dtype == x.dtype and out.device == x.device
    assert out.shape == (x.shape if reduction == "none" else ())
    assert_close(out, case.ours(x64, t64, reduction, w64), dtype, kind)
    want_gx, want_gt = _grads(case, torch.from_numpy(as_float64(g)), x64, t64, reduction, w64)
    assert gx.dtype == x.dtype and gt.dtype == x.dtype
    # The gradients are differences (sigmoid(x) - t, x - t): where the two nearly cancel, fp32
    # rounding of the operands (torch's as much as ours) is relative error 1e-6 and more, so
    # they are held to the fp32 tolerance of a reduction.
    assert_close(gx, want_gx, dtype, "reduction")
    assert_close(gt, want_gt, dtype, "reduction")


@pytest.mark.parametrize("need", ["input", "target"])
@pytest.mark.parametrize("case", CASES[::3], ids=CASE_IDS[::3])
def test_backward_for_one_of_input_and_target(case, need, rng):
    (x, t, w), (x64, t64, w64) = _rounded(case, rng, (5, 13), "float32")
    g = torch.tensor(0.7, device=DEVICE)
    with gk.use_backend("triton"):
        got = loss_backward(case.loss, g, x, t, w.get("weight"), w.get("pos_weight"), reduction="mean", p1=case.p1,
                            p2=case.p2, need=need)
    want = _grads(case, torch.tensor(0.7, dtype=torch.float64), x64, t64, "mean", w64)[need == "target"]
    assert_close(got, want, "float32", "reduction")  # differences that may cancel, as above


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("bce-w", "bcelogits-w-pw", "focal")],
                         ids=lambda c: c.id)
def test_many_partial_sums(case, dtype, rng):
    """More than BLOCKS_PER_PARTIAL blocks: each program adds 16 blocks, stage two many partials."""
    block = tloss.elementwise_launch(torch_dtype(dtype)).block
    n = 2 * tloss.BLOCKS_PER_PARTIAL * block + 37
    assert tloss.blocks_per_program(n, block, True) == tloss.BLOCKS_PER_PARTIAL
    (x, t, w), (x64, t64, w64) = _rounded(case, rng, (n,), dtype)
    for reduction in ("mean",) if dtype == "float16" else ("sum", "mean"):  # a float16 sum overflows here
        with gk.use_backend("triton"):
            got = case.ours(x, t, reduction, w)
        assert_close(got, case.ours(x64, t64, reduction, w64), dtype, "reduction")


@pytest.mark.parametrize("weight_shape", [(11,), (1, 11), (3, 1, 11), (3, 5, 1)], ids=lambda s: "W" + "x".join(map(str, s)))
def test_broadcast_weights(weight_shape, rng):
    x = torch.randn(3, 5, 11, device=DEVICE)
    t = torch.rand(3, 5, 11, device=DEVICE)
    w = torch.rand(weight_shape, device=DEVICE) + 0.5
    pw = torch.rand(11, device=DEVICE) * 3
    exact = lambda a: torch.from_numpy(as_float64(a))  # noqa: E731
    with gk.use_backend("triton"):
        out = gk.binary_cross_entropy_with_logits(x, t, w, "none", pos_weight=pw)
        grad = gk.binary_cross_entropy_with_logits_backward(torch.ones_like(out), x, t, w, pw, "none")
        bce = gk.binary_cross_entropy(torch.sigmoid(x), t, w, "sum")
    want = torch.nn.functional.binary_cross_entropy_with_logits(exact(x), exact(t), exact(w), pos_weight=exact(pw),
                                                               reduction="none")
    assert_close(out, want, "float32")
    xr = exact(x).requires_grad_()
    (want_g,) = torch.autograd.grad(torch.nn.functional.binary_cross_entropy_with_logits(
        xr, exact(t), exact(w), pos_weight=exact(pw), reduction="sum"), xr)
    assert_close(grad, want_g, "float32")
    assert_close(bce, torch.nn.functional.binary_cross_entropy(exact(torch.sigmoid(x)), exact(t), exact(w),
                                                               reduction="sum"), "float32", "reduction")


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_same_bits_every_run(reduction, rng):
    """Deterministic reduction: no atomics, partials added in a fixed order."""
    x = torch.from_numpy(rng.standard_normal(70_001).astype(np.float32)).to(DEVICE)
    t = torch.from_numpy(rng.random(70_001).astype(np.float32)).to(DEVICE)
    runs = []
    for _ in range(2):
        with gk.use_backend("triton"):
            out = gk.sigmoid_focal_loss(x, t, reduction=reduction)
            g = torch.ones_like(out)
            grad = gk.sigmoid_focal_loss_backward(g, x, t, reduction=reduction)
        runs.append((out.cpu().numpy().tobytes(), grad.cpu().numpy().tobytes()))
    assert runs[0] == runs[1]


def test_non_finite_values_propagate_as_in_torch():
    x = torch.tensor([1.0, float("nan"), 2.0, float("inf")], device=DEVICE)
    t = torch.tensor([0.5, 0.5, float("nan"), 1.0], device=DEVICE)
    with gk.use_backend("triton"):
        for op, theirs in ((gk.mse_loss, torch.nn.functional.mse_loss), (gk.l1_loss, torch.nn.functional.l1_loss),
                           (gk.huber_loss, torch.nn.functional.huber_loss)):
            got = op(x, t, "none")
            want = theirs(x.cpu().double(), t.cpu().double(), reduction="none")
            assert_close(got, want, "float32")
            assert torch.isnan(op(x, t, "sum"))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_empty_input_launches_nothing(case):
    x = torch.empty(0, 3, device=DEVICE)
    weights = {k: torch.ones(3, device=DEVICE) for k in case.weights}
    with gk.use_backend("triton"):
        assert case.ours(x, x, "none", weights).shape == (0, 3)
        assert torch.isnan(case.ours(x, x, "mean", weights))
        assert case.ours(x, x, "sum", weights) == 0
        gx, gt = _grads(case, torch.tensor(1.0, device=DEVICE), x, x, "mean", weights)
        assert gx.shape == gt.shape == (0, 3)


def test_non_contiguous_inputs(rng):
    x = torch.randn(9, 7, device=DEVICE).t()
    t = torch.randn(7, 9, device=DEVICE)
    with gk.use_backend("triton"):
        out = gk.smooth_l1_loss(x, t, "none", beta=0.5)
        grad = gk.smooth_l1_loss_backward(torch.ones(7, 9, device=DEVICE), x, t, "none", beta=0.5)
    exact = lambda a: torch.from_numpy(as_float64(a))  # noqa: E731
    assert_close(out, torch.nn.functional.smooth_l1_loss(exact(x), exact(t), reduction="none", beta=0.5), "float32")
    assert_close(grad, gk.smooth_l1_loss_backward(torch.ones(7, 9, dtype=torch.float64), exact(x), exact(t), "none",
                                                  beta=0.5), "float32")


def test_launch_heuristic():
    assert tloss.blocks_per_program(10**6, 1024, reduce=False) == 1
    assert tloss.blocks_per_program(16 * 1024, 1024, reduce=True) == 1
    assert tloss.blocks_per_program(16 * 1024 + 1, 1024, reduce=True) == tloss.BLOCKS_PER_PARTIAL


def test_every_thread_holds_eight_elements():
    assert tloss.loss_launch(torch.float32) == (1024, 4)
    assert tloss.loss_launch(torch.float16) == tloss.loss_launch(torch.bfloat16) == (2048, 8)


# The GPU's approximate fp32 math, emulated (ex2.approx for exp, div.full for division; see
# tests/_gpu_math.py; log is libdevice's, correctly rounded to an ulp). On a GPU the tests above
# run the compiled kernels themselves.


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU the tests above run the compiled kernels, not an emulation")
@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fp32_holds_the_tolerances_with_the_gpus_approximate_math(case, direction, rng):
    n = 4001
    x, t, weights = case.draw(rng, (n,))
    if case.inputs == "real":  # every regime: a fine grid over +-30 (logits deep in both tails)
        x = torch.linspace(-30.0, 30.0, n, dtype=torch.float64)
    x, t = x.float(), t.float()
    weights = {k: v.float() for k, v in weights.items()}
    g = torch.ones(n)
    with gpu_approximations(*DIRECTIONS[direction]), gk.use_backend("triton"):
        out = case.ours(x, t, "none", weights)
        total = case.ours(x, t, "sum", weights)
        gx, gt = _grads(case, g, x, t, "none", weights)
    exact = lambda a: torch.from_numpy(as_float64(a))  # noqa: E731
    x64, t64, w64 = exact(x), exact(t), {k: exact(v) for k, v in weights.items()}
    assert_close(out, case.ours(x64, t64, "none", w64), "float32", "pointwise")
    assert_close(total, case.ours(x64, t64, "sum", w64), "float32", "reduction")
    want_gx, want_gt = _grads(case, exact(g), x64, t64, "none", w64)
    assert_close(gx, want_gx, "float32", "reduction")
    assert_close(gt, want_gt, "float32", "reduction")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_zero_dimensional_input(reduction):
    x, t = torch.tensor(0.3, device=DEVICE), torch.tensor(-1.2, device=DEVICE)
    g = torch.tensor(0.5, device=DEVICE)
    with gk.use_backend("triton"):
        out = gk.huber_loss(x, t, reduction, delta=0.5)
        grad = gk.huber_loss_backward(g, x, t, reduction, delta=0.5)
    assert out.shape == grad.shape == ()
    assert_close(out, torch.nn.functional.huber_loss(x.cpu().double(), t.cpu().double(), reduction=reduction,
                                                     delta=0.5), "float32")
    assert_close(grad, gk.huber_loss_backward(g.cpu().double(), x.cpu().double(), t.cpu().double(), reduction,
                                              delta=0.5), "float32")
