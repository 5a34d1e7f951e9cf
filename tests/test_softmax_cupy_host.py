"""The CuPy softmax backend on the CPU: its entry points (the functions the dispatch layer calls)
with NumPy as the array module and softmax.cu built with g++ as the launcher, every thread of a row
block a fiber, so the block merge (warp shuffles, shared memory, barriers), the launch glue (rows
and block size, dtype -> template, packed arguments) and the row code run as on the GPU, against
the float64 reference: fp32/fp16/bf16 storage, aligned rows (128-bit path) and misaligned ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import DTYPES, assert_close
from _host_buffers import decode, host_runner, storage
from gpukernels.cupy import softmax as cupy_softmax
from gpukernels.cupy.softmax import threads_for
from gpukernels.reference import softmax as ref
from gpukernels.tools.verify.host import HostLaunchError


@pytest.fixture(scope="module")
def run():
    return host_runner(cupy_softmax.PROGRAM)



CASES = [
    pytest.param(cols, dtype, misalign, id=f"R3-C{cols}-{dtype}-{'offset' if misalign else 'aligned'}")
    for cols in (1, 7, 1000, 4097) for dtype in DTYPES for misalign in (False, True)
]


@pytest.mark.parametrize("cols,dtype,misalign", CASES)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_forward_and_backward(run, log, cols, dtype, misalign, rng):
    x, x64 = storage(rng.standard_normal((3, cols)) * 3, dtype, misalign)
    dy, dy64 = storage(rng.standard_normal((3, cols)), dtype, misalign)
    name = "log_softmax" if log else "softmax"
    y = getattr(cupy_softmax, name)(x, 1, run=run)
    assert y.dtype == x.dtype
    y64 = decode(y)
    assert_close(y64, getattr(ref, name)(x64, 1), dtype, "reduction")
    dx = getattr(cupy_softmax, f"{name}_backward")(dy, y, 1, run=run)
    assert_close(decode(dx), getattr(ref, f"{name}_backward")(dy64, y64, 1), dtype, "reduction")


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_any_dim_of_a_3d_input(run, dim, rng):
    x, x64 = storage(rng.standard_normal((3, 5, 7)) * 3, "float32")
    dy, dy64 = storage(rng.standard_normal((3, 5, 7)), "float32")
    y = cupy_softmax.softmax(x, dim, run=run)
    assert_close(y, ref.softmax(x64, dim), "float32", "reduction")
    dx = cupy_softmax.softmax_backward(dy, y, dim, run=run)
    assert_close(dx, ref.softmax_backward(dy64, decode(y), dim), "float32", "reduction")


@pytest.mark.parametrize("nthreads", [32, 64, 1024])
def test_any_block_size_gives_the_same_rows(run, monkeypatch, nthreads, rng):
    # threads that get no chunk at all (1024 threads, 250 chunks) must merge as empty stats
    monkeypatch.setattr(cupy_softmax, "threads_for", lambda n_cols, itemsize: nthreads)
    x, x64 = storage(rng.standard_normal((2, 1000)) * 5, "float32")
    dy, dy64 = storage(rng.standard_normal((2, 1000)), "float32")
    y = cupy_softmax.softmax(x, 1, run=run)
    assert_close(y, ref.softmax(x64, 1), "float32", "reduction")
    dx = cupy_softmax.softmax_backward(dy, y, 1, run=run)
    assert_close(dx, ref.softmax_backward(dy64, decode(y), 1), "float32", "reduction")


def test_more_rows_than_blocks_loop_over_rows(run, monkeypatch, rng):
    monkeypatch.setattr(cupy_softmax, "_MAX_GRID", 2)
    x, x64 = storage(rng.standard_normal((5, 33)), "float16")
    assert cupy_softmax.forward_launch(x, None, None, x, log=True, masked=False).grid == (2,)
    assert_close(cupy_softmax.log_softmax(x, 1, run=run), ref.log_softmax(x64, 1), "float16", "reduction")


def test_block_sizes_that_are_not_whole_warps_fail_the_launch(run, monkeypatch):
    monkeypatch.setattr(cupy_softmax, "threads_for", lambda n_cols, itemsize: 48)
    with pytest.raises(HostLaunchError, match="not an active lane"):
        cupy_softmax.softmax(np.ones((1, 4), np.float32), 1, run=run)


def test_long_row(run, rng):
    x, x64 = storage(rng.standard_normal((1, 2**16 + 3)) * 4, "float32")
    for name in ("softmax", "log_softmax"):
        assert_close(getattr(cupy_softmax, name)(x, 1, run=run), getattr(ref, name)(x64, 1), "float32", "reduction")


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_around_1e4(run, dtype, rng):
    x, x64 = storage(rng.standard_normal((4, 333)) * 1e4, dtype)
    for name in ("softmax", "log_softmax"):
        y = decode(getattr(cupy_softmax, name)(x, 1, run=run))
        assert np.isfinite(y).all()
        assert_close(y, getattr(ref, name)(x64, 1), dtype, "reduction")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", (7, 4097), ids=lambda c: f"R4-C{c}")
def test_masked_with_a_mask_and_lengths(run, cols, dtype, rng):
    x, x64 = storage(rng.standard_normal((4, cols)) * 1e4, dtype)
    dy, dy64 = storage(rng.standard_normal((4, cols)), dtype)
    keep = rng.random((4, cols)) > 0.5
    keep[1] = False  # fully masked by the mask
    lengths = np.array([cols, cols, 0, cols // 2 + 1], dtype=np.int64)  # row 2 fully masked by its length
    y = cupy_softmax.masked_softmax(x, keep, lengths, 1, run=run)
    kept = keep & (np.arange(cols)[None, :] < lengths[:, None])
    y64 = decode(y)
    assert_close(y64, ref.masked_softmax(x64, kept, None, 1), dtype, "reduction")
    assert (y64[1] == 0).all() and (y64[2] == 0).all() and (y64[~kept] == 0).all()
    dx64 = decode(cupy_softmax.softmax_backward(dy, y, 1, run=run))
    assert (dx64[~kept] == 0).all()
    assert_close(dx64, ref.softmax_backward(dy64, y64, 1), dtype, "reduction")


def test_masked_over_a_leading_dim_with_a_broadcast_mask(run, rng):
    x, x64 = storage(rng.standard_normal((6, 3, 5)), "bfloat16")
    keep = rng.random((6, 1, 5)) > 0.3  # broadcast over the middle axis
    lengths = np.array([[6, 2, 0, 6, 1], [3, 6, 6, 4, 5], [6, 6, 6, 6, 6]], dtype=np.int64)  # per (1, 2) position
    y = cupy_softmax.masked_softmax(x, keep, lengths, 0, run=run)
    kept = np.broadcast_to(keep, x.shape) & (np.arange(6)[:, None, None] < lengths[None])
    assert_close(y, ref.masked_softmax(x64, kept, None, 0), "bfloat16", "reduction")


def test_masked_rows_of_minus_infinity_are_zero_unmasked_ones_nan(run):
    x, x64 = storage(np.array([[-np.inf, -np.inf, -np.inf], [1.0, -np.inf, 2.0]]), "float32")
    masked = cupy_softmax.masked_softmax(x, None, None, 1, run=run)
    np.testing.assert_array_equal(masked[0], 0)
    assert_close(masked, ref.masked_softmax(x64, None, None, 1), "float32", "reduction")
    assert np.isnan(cupy_softmax.softmax(x, 1, run=run)[0]).all()


def test_special_values_follow_torch(run):
    values = np.array([[-np.inf, 0.0, 1.0], [np.inf, 1.0, 2.0], [np.nan, 1.0, 2.0], [2.0, np.inf, 1.0]])
    x, x64 = storage(values, "float32")
    for name in ("softmax", "log_softmax"):
        want = getattr(torch, name)(torch.from_numpy(x64), 1).numpy()
        assert_close(getattr(cupy_softmax, name)(x, 1, run=run), want, "float32", "reduction")


def test_empty_rows_and_columns_launch_nothing(run):
    for shape in ((0, 5), (4, 0)):
        y = cupy_softmax.softmax(np.ones(shape, np.float16), 1, run=run)
        assert y.shape == shape and y.dtype == np.float16


def test_block_sizes_the_launcher_picks():
    assert threads_for(1, 4) == 32
    assert threads_for(4096, 4) == 256  # 1024 chunks of 4 floats, 4 per thread
    assert threads_for(4097, 4) == 512  # one chunk more rounds up to the next power of two
    assert threads_for(2**20, 2) == 1024
    assert all(threads_for(n, s) % 32 == 0 for n in (1, 7, 999, 10**6) for s in (2, 4))
    rows = np.empty((10, 4097), np.float32)
    spec = cupy_softmax.forward_launch(rows, None, None, rows, log=False, masked=True)
    assert spec.kernel == "softmax_forward<float, false>" and spec.grid == (10,) and spec.block == (512,)
    assert spec.args[1] == 0 and spec.args[2] == 0  # null mask and lengths
