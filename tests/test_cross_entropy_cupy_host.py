"""The CuPy cross-entropy backend on the CPU: its entry points with NumPy as the array module and
cross_entropy.cu built with g++ as the launcher (every thread of a row block a fiber: the block
merge, shuffles, shared memory and barriers run as on the GPU), against the float64 reference:
every target kind, fp32/fp16/bf16 storage, odd widths, block sizes with idle threads, the
linear + cross-entropy's chunk loop (the gradient written over each chunk's logits)."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import DTYPES, assert_close
from _host_buffers import decode, host_runner, storage
from gpukernels.cupy import cross_entropy as cce
from gpukernels.reference import cross_entropy as ref


@pytest.fixture(scope="module")
def run():
    return host_runner(cce.PROGRAM)


def _labels(rng, rows, cols):
    labels = rng.integers(0, cols, rows)
    if rows > 2:
        labels[1] = -100
    return labels


def _both(run, kind, x, x64, target, target64, weight, weight64, dtype, upstream, **kwargs):
    got = cce.cross_entropy_rows(x, target, weight, None, kind=kind, compute_grad=True, run=run, **kwargs)
    want = ref.cross_entropy_rows(x64, target64, weight64, None, kind=kind, compute_grad=True, **kwargs)
    back = cce.cross_entropy_rows(x, target, weight, upstream.astype(np.float32), kind=kind, compute_loss=False,
                                  compute_grad=True, run=run, **kwargs)[1]
    want_back = ref.cross_entropy_rows(x64, target64, weight64, upstream, kind=kind, compute_loss=False,
                                       compute_grad=True, **kwargs)[1]
    assert_close(got[0], want[0], dtype, "reduction")
    assert got[1].dtype == x.dtype
    assert_close(decode(got[1]), want[1], dtype, "reduction")
    assert_close(decode(back), want_back, dtype, "reduction")


CASES = [pytest.param(rows, cols, dtype, misalign, id=f"R{rows}-C{cols}-{dtype}-{'offset' if misalign else 'aligned'}")
         for rows, cols in ((1, 2), (3, 7), (4, 1000), (2, 4099)) for dtype in DTYPES for misalign in (False, True)]


@pytest.mark.parametrize("rows,cols,dtype,misalign", CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_indices_with_weights_and_smoothing(run, rows, cols, dtype, misalign, reduction, rng):
    # aligned rows of 1000 take the 128-bit path for every full chunk; offset ones never do
    x, x64 = storage(rng.standard_normal((rows, cols)) * 3, dtype, misalign)
    w, w64 = storage(rng.random(cols) + 0.5, dtype)
    labels = _labels(rng, rows, cols)
    upstream = rng.standard_normal(rows if reduction == "none" else ())
    _both(run, "index", x, x64, labels, labels, w, w64, dtype, upstream, reduction=reduction, label_smoothing=0.2)
    _both(run, "index", x, x64, labels, labels, None, None, dtype, upstream, reduction=reduction)


@pytest.mark.parametrize("dtype", DTYPES)
def test_probability_targets(run, dtype, rng):
    x, x64 = storage(rng.standard_normal((5, 301)) * 3, dtype)
    p = rng.random((5, 301))
    probs, probs64 = storage(p / p.sum(1, keepdims=True), dtype)
    w, w64 = storage(rng.random(301) + 0.5, dtype)
    _both(run, "probs", x, x64, probs, probs64, w, w64, dtype, rng.standard_normal(()), reduction="mean",
          label_smoothing=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_loss(run, gamma, dtype, rng):
    x, x64 = storage(rng.standard_normal((6, 37)) * 3, dtype)
    a, a64 = storage(rng.random(37) + 0.2, dtype)
    labels = _labels(rng, 6, 37)
    _both(run, "focal", x, x64, labels, labels, a, a64, dtype, rng.standard_normal(6), reduction="none", gamma=gamma)


@pytest.mark.parametrize("nthreads", [32, 64, 1024])
def test_any_block_size_gives_the_same_rows(run, monkeypatch, nthreads, rng):
    # 1024 threads on 300 columns: most threads see nothing and must merge as empty statistics
    monkeypatch.setattr(cce, "threads_for", lambda n_cols, itemsize: nthreads)
    x, x64 = storage(rng.standard_normal((3, 300)) * 5, "float32")
    labels = _labels(rng, 3, 300)
    _both(run, "index", x, x64, labels, labels, None, None, "float32", rng.standard_normal(()), reduction="sum",
          label_smoothing=0.3)


def test_more_rows_than_blocks_loop_over_rows(run, monkeypatch, rng):
    monkeypatch.setattr(cce, "_MAX_GRID", 2)
    x, x64 = storage(rng.standard_normal((5, 33)), "float16")
    labels = _labels(rng, 5, 33)
    _both(run, "index", x, x64, labels, labels, None, None, "float16", rng.standard_normal(5), reduction="none")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nll_loss(run, dtype, rng):
    x, x64 = storage(rng.standard_normal((6, 9)), dtype)
    w, w64 = storage(rng.random(9) + 0.5, dtype)
    upstream, upstream64 = storage(np.array(2.0), dtype)
    labels = _labels(rng, 6, 9)
    got = cce.nll_loss_rows(x, labels, w, upstream, reduction="mean", compute_grad=True, run=run)
    want = ref.nll_loss_rows(x64, labels, w64, upstream64, reduction="mean", compute_grad=True)
    assert got[0].dtype == x.dtype and got[1].dtype == x.dtype
    assert_close(decode(got[0]), want[0], dtype, "reduction")
    assert_close(decode(got[1]), want[1], dtype, "reduction")


def test_bfloat16_losses_come_back_in_bfloat16_and_linear_refuses_it(run, rng):
    x, x64 = storage(rng.standard_normal((4, 9)), "bfloat16")
    labels = _labels(rng, 4, 9)
    loss = cce.cross_entropy_rows(x, labels, None, None, kind="index", reduction="sum", run=run)[0]
    assert loss.dtype == x.dtype  # made here: the dispatch layer's cast cannot make ml_dtypes' bfloat16
    assert_close(decode(loss), ref.cross_entropy_rows(x64, labels, None, None, kind="index", reduction="sum")[0],
                 "bfloat16", "reduction")
    w, _ = storage(rng.standard_normal((5, 9)), "bfloat16")
    with pytest.raises(TypeError, match="bfloat16.*no bfloat16 matmul"):
        cce.linear_cross_entropy_rows(x, w, labels, None, None, reduction="mean", run=run)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_linear_cross_entropy_chunks(run, dtype, reduction, rng):
    h, h64 = storage(rng.standard_normal((9, 16)), dtype)
    w, w64 = storage(rng.standard_normal((37, 16)) * 0.5, dtype)
    b, b64 = storage(rng.standard_normal(37) * 0.5, dtype)
    labels = _labels(rng, 9, 37)
    upstream = rng.standard_normal(9 if reduction == "none" else ())
    kwargs = dict(reduction=reduction, label_smoothing=0.1, chunk_size=4)
    loss = cce.linear_cross_entropy_rows(h, w, labels, b, None, run=run, **kwargs)[0]
    grads = cce.linear_cross_entropy_rows(h, w, labels, b, upstream.astype(np.float32), compute_loss=False,
                                          compute_grad=True, run=run, **kwargs)[1:]
    want = ref.linear_cross_entropy_rows(h64, w64, labels, b64, None, **kwargs)[0]
    want_grads = ref.linear_cross_entropy_rows(h64, w64, labels, b64, upstream, compute_loss=False,
                                               compute_grad=True, **kwargs)[1:]
    assert_close(loss, want, dtype, "reduction")
    for got, expected in zip(grads, want_grads):
        assert_close(decode(got), expected, dtype, "reduction")


def test_launch_arguments():
    x = np.empty((10, 4097), np.float32)
    scale = np.ones(1, np.float32)
    spec = cce.rows_launch(x, np.zeros(10, np.int64), None, scale, None, x, kind="index", ignore_index=-100,
                           label_smoothing=0.0, gamma=0.0)
    assert spec.kernel == "cross_entropy_rows<float, 0>" and spec.grid == (10,) and spec.block == (512,)
    assert spec.args[2] == 0 and spec.args[3] == 0 and spec.args[5] == 0 and spec.args[6] == 0
    assert spec.args[8] == 0  # no log-sum-exp kept
    lse = np.empty(10, np.float32)
    spec = cce.target_grad_launch(x, lse, None, np.ones(10, np.float32), x, label_smoothing=0.1)
    assert spec.kernel == "cross_entropy_target_grad<float>" and spec.grid == (10,) and spec.block == (512,)
    assert spec.args[1] is lse and spec.args[2] == 0 and spec.args[4] == 1
    assert cce.threads_for(1, 4) == 32 and cce.threads_for(4096, 4) == 256 and cce.threads_for(10**6, 2) == 1024


# ---------------------------------------------------------------------------------------------
# The gradient of a probability target: the log-sum-exp the forward keeps, or the block recomputing it


def _target_grads(run, x, probs, w, upstream, **kwargs):
    """(loss, lse, target gradient from the kept lse, target gradient recomputing it) on the host build."""
    loss, _, lse = cce.cross_entropy_rows(x, probs, w, None, kind="probs", compute_logsumexp=True, run=run, **kwargs)
    reduction, smoothing = kwargs["reduction"], kwargs.get("label_smoothing", 0.0)
    kept = cce.cross_entropy_target_rows(x, lse, w, upstream, reduction=reduction, label_smoothing=smoothing, run=run)
    recomputed = cce.cross_entropy_target_rows(x, None, w, upstream, reduction=reduction, label_smoothing=smoothing,
                                               run=run)
    return loss, lse, kept, recomputed


@pytest.mark.parametrize("rows,cols,dtype,misalign", CASES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_probability_target_gradient(run, rows, cols, dtype, misalign, reduction, rng):
    x, x64 = storage(rng.standard_normal((rows, cols)) * 3, dtype, misalign)
    p = rng.random((rows, cols))
    probs, probs64 = storage(p / p.sum(1, keepdims=True), dtype, misalign)
    w, w64 = storage(rng.random(cols) + 0.5, dtype)
    upstream = rng.standard_normal(rows if reduction == "none" else ())
    kwargs = dict(reduction=reduction, label_smoothing=0.2)
    loss, lse, kept, recomputed = _target_grads(run, x, probs, w, upstream.astype(np.float32), **kwargs)
    want_loss, _, want_lse = ref.cross_entropy_rows(x64, probs64, w64, None, kind="probs", compute_logsumexp=True,
                                                    **kwargs)
    want = ref.cross_entropy_target_rows(x64, want_lse, w64, upstream, reduction=reduction, label_smoothing=0.2)
    assert lse.dtype == np.float32
    assert_close(lse, want_lse, "float32", "reduction")
    assert_close(loss, want_loss, dtype, "reduction")
    for got in (kept, recomputed):
        assert got.dtype == x.dtype
        assert_close(decode(got), want, dtype, "reduction")


@pytest.mark.parametrize("nthreads", [32, 1024])
def test_target_gradient_with_any_block_size(run, monkeypatch, nthreads, rng):
    monkeypatch.setattr(cce, "threads_for", lambda n_cols, itemsize: nthreads)
    monkeypatch.setattr(cce, "_MAX_GRID", 2)  # and more rows than blocks
    x, x64 = storage(rng.standard_normal((5, 300)) * 5, "float32")
    p = rng.random((5, 300))
    probs, probs64 = storage(p / p.sum(1, keepdims=True), "float32")
    upstream = rng.standard_normal(5)
    _, _, kept, recomputed = _target_grads(run, x, probs, None, upstream.astype(np.float32), reduction="none")
    want = ref.cross_entropy_target_rows(x64, None, None, upstream, reduction="none")
    for got in (kept, recomputed):
        assert_close(decode(got), want, "float32", "reduction")


# ---------------------------------------------------------------------------------------------
# The gradient of the class weights of probability targets: two-stage column sum


@pytest.mark.parametrize("rows,cols,dtype,misalign", CASES + [pytest.param(300, 37, "float16", False,
                                                                             id="R300-C37-float16-aligned")])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_weight_gradient(run, rows, cols, dtype, misalign, reduction, rng):
    x, x64 = storage(rng.standard_normal((rows, cols)) * 3, dtype, misalign)
    p = rng.random((rows, cols))
    probs, probs64 = storage(p / p.sum(1, keepdims=True), dtype, misalign)
    upstream = rng.standard_normal(rows if reduction == "none" else ())
    kwargs = dict(reduction=reduction, label_smoothing=0.2)
    _, _, lse = cce.cross_entropy_rows(x, probs, None, None, kind="probs", compute_loss=False,
                                       compute_logsumexp=True, run=run, **kwargs)
    want = ref.cross_entropy_weight_rows(x64, probs64, None, upstream, **kwargs)
    for kept in (lse, None):
        got = cce.cross_entropy_weight_rows(x, probs, kept, upstream.astype(np.float32), run=run, **kwargs)
        assert got.dtype == x.dtype and got.shape == (cols,)
        assert_close(decode(got), want, dtype, "reduction")


@pytest.mark.parametrize("cols,misalign", [(70, False), (72, False), (72, True)],
                         ids=["C70-aligned", "C72-aligned", "C72-offset"])
def test_class_weight_gradient_over_many_row_blocks_and_grid_strides(run, monkeypatch, cols, misalign, rng):
    # 7 row blocks of 8 rows through a grid of 2 in y, and 1 thread block of 32 threads striding over
    # the column chunks; 72 float32 columns take the 128-bit path (aligned), 70 and offset ones do not
    monkeypatch.setattr(cce, "WEIGHT_ROWS_PER_BLOCK", 8)
    monkeypatch.setattr(cce, "_MAX_GRID_Y", 2)
    real_launch = cce.weight_partial_launch

    def one_block_wide(*args, **kwargs):
        spec = real_launch(*args, **kwargs)
        return cce.Launch(spec.kernel, (1, spec.grid[1]), (32,), spec.args)

    monkeypatch.setattr(cce, "weight_partial_launch", one_block_wide)
    x, x64 = storage(rng.standard_normal((53, cols)) * 4, "float32", misalign)
    probs, probs64 = storage(rng.random((53, cols)), "float32", misalign)
    upstream = rng.standard_normal(53)
    want = ref.cross_entropy_weight_rows(x64, probs64, None, upstream, reduction="none", label_smoothing=0.1)
    runs = [cce.cross_entropy_weight_rows(x, probs, None, upstream.astype(np.float32), reduction="none",
                                          label_smoothing=0.1, run=run) for _ in range(2)]
    assert_close(runs[0], want, "float32", "reduction")
    assert runs[0].tobytes() == runs[1].tobytes()  # the same bits every run


@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")  # "mean" of no rows: 1 / 0
def test_class_weight_gradient_of_an_empty_batch_and_zero_classes(run):
    got = cce.cross_entropy_weight_rows(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32), None,
                                        np.ones((), np.float32), reduction="mean", run=run)
    assert got.shape == (5,) and (got == 0).all()  # stage 2 alone writes the zeros of an empty sum
    got = cce.cross_entropy_weight_rows(np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float32), None,
                                        np.ones((), np.float32), reduction="sum", run=run)
    assert got.shape == (0,)


def test_class_weight_launch_arguments():
    x = np.zeros((600, 1000), np.float32)
    lse, scale = np.zeros(600, np.float32), np.ones(1, np.float32)
    partial = np.zeros((cce.weight_row_blocks(600), 1000), np.float32)
    spec = cce.weight_partial_launch(x, x, lse, scale, partial, label_smoothing=0.1)
    # 250 chunks of 4 float32 columns: 256 threads, one block wide; 3 blocks of 256 rows
    assert spec.kernel == "cross_entropy_weight_partial<float>" and spec.block == (256,) and spec.grid == (1, 3)
    assert spec.args[2] is lse and spec.args[4] == 0 and spec.args[5] is partial and spec.args[8] == 256
    half = np.zeros((600, 1000), np.float16)  # 8 columns a chunk: 125 chunks, 128 threads
    assert cce.weight_partial_launch(half, half, lse, scale, partial, label_smoothing=0.1).block == (128,)
    spec = cce.weight_sum_launch(np.zeros((3, 5000), np.float32), np.zeros(5000, np.float16))
    assert spec.kernel == "cross_entropy_weight_sum<gk::half>" and spec.grid == (5,) and spec.block == (256,)
    assert spec.args[2] == 3 and spec.args[3] == 5000
    tall = np.zeros((65536 * 256 + 1, 1), np.float32)  # more row blocks than grid y holds: the kernel strides
    assert cce.weight_partial_launch(tall, tall, None, scale, None, label_smoothing=0.0).grid == (1, 65535)
    assert cce._chunk_threads(1) == 32 and cce._chunk_threads(33) == 64 and cce._chunk_threads(10**6) == 256
