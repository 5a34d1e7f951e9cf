"""The CuPy loss backend on the CPU: its entry points (what the dispatch layer calls) with NumPy
as the array module and loss.cu built with g++ as the launcher, every thread a fiber, so the chunk
bodies, the block sums of the two-stage reduction (shuffles, shared memory, barriers) and the
launch glue (grids, template, packed arguments) run as on the GPU, against the float64 reference:
fp32/fp16/bf16 storage, aligned buffers (128-bit path) and misaligned ones, all reductions."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import DTYPES, assert_close
from _host_buffers import decode, host_runner, storage
from _loss_cases import CASE_IDS, CASES, REDUCTIONS
from gpukernels.cupy import loss as cupy_loss
from gpukernels.reference import loss as ref


@pytest.fixture(scope="module")
def run():
    return host_runner(cupy_loss.PROGRAM)


def _buffers(case, rng, shape, dtype, misalign=False):
    x, t, weights = case.draw(rng, shape)
    x, x64 = storage(x.numpy(), dtype, misalign)
    t, t64 = storage(t.numpy(), dtype, misalign)
    w = {k: storage(np.broadcast_to(v.numpy(), shape).copy(), dtype, misalign) for k, v in weights.items()}
    return (x, t, w.get("weight", (None,))[0], w.get("pos_weight", (None,))[0]), \
        (x64, t64, w.get("weight", (None, None))[1], w.get("pos_weight", (None, None))[1])


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "offset"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_and_backward(run, case, dtype, reduction, misalign, rng):
    shape = (3, 37)
    ours, exact = _buffers(case, rng, shape, dtype, misalign)
    params = {"loss": case.loss, "reduction": reduction, "p1": case.p1, "p2": case.p2}
    out = cupy_loss.loss_forward(*ours, **params, run=run)
    assert out.dtype == ours[0].dtype and out.shape == (shape if reduction == "none" else ())
    kind = "pointwise" if reduction == "none" else "reduction"
    assert_close(decode(out), ref.loss_forward(*exact, **params), dtype, kind)
    g, g64 = storage(rng.standard_normal(shape if reduction == "none" else ()) + 0.5, dtype, misalign)
    dx, dt = cupy_loss.loss_backward(g, *ours, **params, need="both", run=run)
    want_dx, want_dt = ref.loss_backward(g64, *exact, **params, need="both")
    # differences that may cancel (sigmoid(x) - t): the reduction tolerance, as in the Triton tests
    assert_close(decode(dx), want_dx, dtype, "reduction")
    assert_close(decode(dt), want_dt, dtype, "reduction")


@pytest.mark.parametrize("need", ["input", "target"])
def test_one_gradient_leaves_the_other_unlaunched(run, need, rng):
    case = next(c for c in CASES if c.id == "focal")
    ours, exact = _buffers(case, rng, (70,), "float32")
    params = {"loss": "focal", "reduction": "sum", "p1": 0.25, "p2": 2.0}
    g = np.array(1.5, np.float32)
    got = cupy_loss.loss_backward(g, *ours, **params, need=need, run=run)
    assert_close(got, ref.loss_backward(np.float64(1.5), *exact, **params, need=need), "float32", "reduction")
    spec = cupy_loss.backward_launch(*ours, g, got if need == "input" else None, got if need == "target" else None,
                                     **params)
    null = lambda a: isinstance(a, np.uint64) and a == 0  # noqa: E731
    assert null(spec.args[5]) == (need == "target") and null(spec.args[6]) == (need == "input")


def test_reduction_over_many_blocks_is_deterministic(run, monkeypatch, rng):
    """More chunks than threads of the capped grid: each thread adds several chunks, the sum
    block adds every partial; the same bits twice."""
    monkeypatch.setattr(cupy_loss, "PARTIAL_BLOCKS", 7)  # one 4-wide load per thread and a tail of 3
    case = next(c for c in CASES if c.id == "bcelogits-w-pw")
    ours, exact = _buffers(case, rng, (4 * 7 * 256 * 4 + 5,), "float32")
    params = {"loss": "bce_logits", "reduction": "mean", "p1": 0.0, "p2": 0.0}
    assert cupy_loss.partial_blocks(ours[0].size, 4) == 7
    first = cupy_loss.loss_forward(*ours, **params, run=run)
    assert_close(first, ref.loss_forward(*exact, **params), "float32", "reduction")
    assert first.tobytes() == cupy_loss.loss_forward(*ours, **params, run=run).tobytes()


@pytest.mark.parametrize("reduction,want", [("sum", 0.0), ("mean", np.nan)])
def test_empty_input_launches_nothing(run, reduction, want):
    empty = np.empty((0, 4), np.float16)
    out = cupy_loss.loss_forward(empty, empty, None, None, loss="mse", reduction=reduction, run=run)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, want)
    dx = cupy_loss.loss_backward(np.ones((), np.float16), empty, empty, None, None, loss="mse", reduction=reduction,
                                 run=run)
    assert dx.shape == (0, 4)


def test_launch_shapes():
    x = np.empty(10**7, np.float32)
    partial = np.empty(cupy_loss.partial_blocks(x.size, 4), np.float32)
    assert partial.size == cupy_loss.PARTIAL_BLOCKS  # 2.5M chunks fill the capped grid
    specs = cupy_loss.forward_launches(x, x, None, None, np.empty((), np.float32), partial, loss="focal",
                                       reduction="mean", p1=0.25, p2=2.0)
    assert [s.kernel for s in specs] == ["loss_forward_partial<gk::Focal, float>", "loss_sum<float>"]
    assert specs[0].grid == (cupy_loss.PARTIAL_BLOCKS,) and specs[1].block == (cupy_loss.SUM_THREADS,)
    assert specs[1].args[3] == np.float32(1e-7)
    assert cupy_loss.partial_blocks(100, 2) == 1
