"""The CuPy normalisation backend on the CPU: its entry points with NumPy as the array module and
normalization.cu built with g++ as the launcher (every thread of a row block a fiber), so the
block merges, the partial-row reduction and the launch glue run as on the GPU, against the
float64 reference: fp32/fp16/bf16 storage, aligned rows (128-bit paths) and misaligned ones."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import DTYPES, assert_close
from _host_buffers import decode, host_runner, storage
from _normalization_cases import OPS, check_outputs, expected, is_add, is_rms
from gpukernels.cupy import normalization as cn
from gpukernels.tools.verify.host import HostLaunchError


@pytest.fixture(scope="module")
def run():
    return host_runner(cn.PROGRAM)


def _run(run, op, arrays, normalized_ndim, affine=True):
    rms, add = is_rms(op), is_add(op)
    w = arrays["w"] if affine else None
    b = arrays["b"] if affine and not rms else None
    y, s, mean, rstd = cn._forward(run, arrays["x"], arrays["r"] if add else None, w, b, normalized_ndim, 1e-5, rms)
    dx, dw, db = cn._backward(run, arrays["dy"], arrays["ds"] if add else None, s if add else arrays["x"], mean, rstd,
                              w, normalized_ndim, rms, b is not None)
    return {"y": y, "s": s, "mean": mean, "rstd": rstd, "dx": dx, "dw": dw, "db": db}


def _case(run, op, shape, normalized_ndim, dtype, misalign, rng, affine=True):
    trailing = shape[len(shape) - normalized_ndim:]
    values = {"x": rng.standard_normal(shape) * 3 + 0.5, "r": rng.standard_normal(shape),
              "w": rng.standard_normal(trailing) + 1, "b": rng.standard_normal(trailing),
              "dy": rng.standard_normal(shape), "ds": rng.standard_normal(shape)}
    arrays, exact = {}, {}
    for key, v in values.items():
        arrays[key], exact[key] = storage(v, dtype, misalign and key in ("x", "r", "dy", "ds"))
    got = _run(run, op, arrays, normalized_ndim, affine)
    assert got["y"].dtype == arrays["x"].dtype
    source = decode(got["s"]) if is_add(op) else exact["x"]
    want = expected(op, exact["x"], exact["r"], exact["w"] if affine else None, exact["b"] if affine else None,
                    exact["dy"], exact["ds"], normalized_ndim, source)
    check_outputs(op, {k: None if v is None else decode(v) if k not in ("mean", "rstd") else v for k, v in got.items()},
                  want, dtype)
    return got


CASES = [pytest.param(cols, dtype, misalign, id=f"R3-C{cols}-{dtype}-{'offset' if misalign else 'aligned'}")
         for cols in (1, 7, 1000, 4097) for dtype in DTYPES for misalign in (False, True)]


@pytest.mark.parametrize("cols,dtype,misalign", CASES)
@pytest.mark.parametrize("op", OPS)
def test_forward_and_backward(run, op, cols, dtype, misalign, rng):
    _case(run, op, (3, cols), 1, dtype, misalign, rng)


@pytest.mark.parametrize("op", OPS)
def test_several_normalized_dims_without_affine(run, op, rng):
    _case(run, op, (2, 3, 4, 5), 2, "float32", False, rng, affine=False)


def test_long_row(run, rng):
    _case(run, "add_layer_norm", (2, 70000), 1, "float32", False, rng)


@pytest.mark.parametrize("nthreads", [32, 64, 1024])
def test_any_block_size_gives_the_same_rows(run, monkeypatch, nthreads, rng):
    # threads with no chunk at all (1024 threads, 250 chunks) merge as empty moments
    monkeypatch.setattr(cn, "threads_for", lambda n_cols, itemsize: nthreads)
    _case(run, "layer_norm", (2, 1000), 1, "float32", False, rng)


def test_more_rows_than_blocks_share_partial_rows(run, monkeypatch, rng):
    monkeypatch.setattr(cn, "MAX_BACKWARD_BLOCKS", 3)
    monkeypatch.setattr(cn, "_MAX_GRID", 2)
    got = _case(run, "layer_norm", (11, 33), 1, "float16", False, rng)
    assert got["dw"].shape == (33,)


def test_gradients_are_bitwise_repeatable(run, rng):
    x, _ = storage(rng.standard_normal((40, 300)), "float32")
    dy, _ = storage(rng.standard_normal((40, 300)), "float32")
    w, _ = storage(rng.standard_normal(300), "float32")
    runs = []
    for _ in range(2):
        y, _, mean, rstd = cn._forward(run, x, None, w, w, 1, 1e-5, False)
        runs.append([a.tobytes() for a in cn._backward(run, dy, None, x, mean, rstd, w, 1, False, True)])
    assert runs[0] == runs[1]


def test_zero_variance_rows_give_the_bias(run):
    x, _ = storage(np.full((2, 9), 3.0), "float32")
    b, b64 = storage(np.arange(9.0), "float32")
    y, _, mean, rstd = cn._forward(run, x, None, None, b, 1, 1e-5, False)
    np.testing.assert_array_equal(y, np.broadcast_to(b, (2, 9)))
    assert (mean == 3.0).all() and np.allclose(rstd, 1 / np.sqrt(1e-5))


def test_empty_batches_and_rows_of_length_0_launch_nothing(run):
    for shape in ((0, 5), (4, 0)):
        x = np.ones(shape, np.float16)
        w = np.ones(shape[-1], np.float16)
        y, s, mean, rstd = cn._forward(run, x, x, w, w, 1, 1e-5, False)
        assert y.shape == shape and y.dtype == np.float16 and rstd.shape == (shape[0], 1)
        dx, dw, db = cn._backward(run, x, x, s, mean, rstd, w, 1, False, True)
        assert dx.shape == shape and (dw == 0).all() and (db == 0).all()


def test_block_sizes_that_are_not_whole_warps_fail_the_launch(run, monkeypatch):
    monkeypatch.setattr(cn, "threads_for", lambda n_cols, itemsize: 48)
    with pytest.raises(HostLaunchError, match="not an active lane"):
        cn._forward(run, np.ones((1, 4), np.float32), None, None, None, 1, 1e-5, False)


def test_launches_the_host_code_builds():
    rows = np.empty((10, 4096), np.float32)
    stats = np.empty(10, np.float32)
    spec = cn.forward_launch(rows, None, None, None, rows, None, None, stats, 1e-5, rms=True)
    assert spec.kernel == "norm_forward<float, true>" and spec.grid == (10,) and spec.block == (256,)
    assert spec.args[1] == 0 and spec.args[6] == 0 and isinstance(spec.args[-1], np.float32)
    part = np.empty((512, 4096), np.float32)
    spec = cn.backward_launch(rows, None, rows, None, stats, stats, rows, part, None, rms=False)
    assert spec.grid == (10,) and spec.args[-3] == 0
    assert cn.backward_blocks(10**6) == cn.MAX_BACKWARD_BLOCKS
    assert cn.column_sum_launch(part, np.empty(4096, np.float32)).grid == (4,)  # 1024 quads of columns


def test_stats_are_float32_for_half_inputs(run, rng):
    x, x64 = storage(rng.standard_normal((3, 17)), "bfloat16")
    _, _, mean, rstd = cn._forward(run, x, None, None, None, 1, 1e-5, False)
    assert mean.dtype == np.float32 and rstd.dtype == np.float32
    assert_close(mean, x64.mean(axis=1, keepdims=True), "float32", "reduction")


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "offset"])
@pytest.mark.parametrize("op", OPS)
def test_rows_longer_than_the_register_cache_are_swept_twice(run, monkeypatch, op, misalign, rng):
    # 32 threads and 1000 bf16 values: 125 chunks > 4 per thread, so the forward re-reads the row
    # (or, for the residual variants, the sum each thread stored)
    monkeypatch.setattr(cn, "threads_for", lambda n_cols, itemsize: 32)
    _case(run, op, (3, 1000), 1, "bfloat16", misalign, rng)
