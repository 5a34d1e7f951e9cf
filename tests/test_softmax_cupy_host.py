"""The CuPy softmax kernels' row code (softmax.cuh) built with g++ and run on the CPU, every
thread of a row block in turn (tests/host/softmax_host.cpp), against the float64 reference:
fp32/fp16/bf16 storage, aligned rows (128-bit path) and misaligned ones (element path)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

from _host_buffers import DTYPE_CODES, decode, poisoned_like, ptr, storage
from _helpers import DTYPES, assert_close
from gpukernels.cupy.softmax import threads_for
from gpukernels.reference import softmax as ref
from gpukernels.tools.verify.host import build

SHIM = Path(__file__).parent / "host" / "softmax_host.cpp"
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


@pytest.fixture(scope="module")
def lib():
    library = build(SHIM)
    p, i64, i32 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int
    library.gk_softmax_forward.argtypes = (i32, i32, p, p, p, p, i64, i64, i32, i32)
    library.gk_softmax_backward.argtypes = (i32, i32, p, p, p, i64, i64, i32)
    library.gk_softmax_forward.restype = library.gk_softmax_backward.restype = i32
    return library


def _forward(lib, x, dtype, log, keep=None, lengths=None, masked=False, nthreads=None):
    rows, cols = x.shape
    y = poisoned_like(x)
    nthreads = nthreads or threads_for(cols, ITEMSIZE[dtype])
    code = lib.gk_softmax_forward(DTYPE_CODES[dtype], int(log), ptr(x), ptr(keep), ptr(lengths), ptr(y),
                                  rows, cols, int(masked), nthreads)
    assert code == 0
    return y


def _backward(lib, dy, y, dtype, log, nthreads=None):
    rows, cols = y.shape
    dx = poisoned_like(y)
    nthreads = nthreads or threads_for(cols, ITEMSIZE[dtype])
    assert lib.gk_softmax_backward(DTYPE_CODES[dtype], int(log), ptr(dy), ptr(y), ptr(dx), rows, cols, nthreads) == 0
    return dx


CASES = [
    pytest.param(cols, dtype, misalign, id=f"R3-C{cols}-{dtype}-{'offset' if misalign else 'aligned'}")
    for cols in (1, 7, 1000, 4097) for dtype in DTYPES for misalign in (False, True)
]


@pytest.mark.parametrize("cols,dtype,misalign", CASES)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_forward_and_backward(lib, log, cols, dtype, misalign, rng):
    x, x64 = storage(rng.standard_normal((3, cols)) * 3, dtype, misalign)
    dy, dy64 = storage(rng.standard_normal((3, cols)), dtype, misalign)
    name = "log_softmax" if log else "softmax"
    y = _forward(lib, x, dtype, log)
    y64 = decode(y, dtype)
    assert_close(y64, getattr(ref, name)(x64, 1), dtype, "reduction")
    dx = _backward(lib, dy, y, dtype, log)
    assert_close(decode(dx, dtype), getattr(ref, f"{name}_backward")(dy64, y64, 1), dtype, "reduction")


@pytest.mark.parametrize("nthreads", [32, 64, 1024])
def test_any_block_size_gives_the_same_rows(lib, nthreads, rng):
    # threads that get no chunk at all (1024 threads, 250 chunks) must merge as empty stats
    x, x64 = storage(rng.standard_normal((2, 1000)) * 5, "float32", False)
    dy, dy64 = storage(rng.standard_normal((2, 1000)), "float32", False)
    y = _forward(lib, x, "float32", False, nthreads=nthreads)
    assert_close(y, ref.softmax(x64, 1), "float32", "reduction")
    dx = _backward(lib, dy, y, "float32", False, nthreads=nthreads)
    assert_close(dx, ref.softmax_backward(dy64, y.astype(np.float64), 1), "float32", "reduction")


def test_long_row(lib, rng):
    x, x64 = storage(rng.standard_normal((1, 2**16 + 3)) * 4, "float32", False)
    for log, name in ((False, "softmax"), (True, "log_softmax")):
        assert_close(_forward(lib, x, "float32", log), getattr(ref, name)(x64, 1), "float32", "reduction")


@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_around_1e4(lib, dtype, rng):
    x, x64 = storage(rng.standard_normal((4, 333)) * 1e4, dtype, False)
    for log, name in ((False, "softmax"), (True, "log_softmax")):
        y = decode(_forward(lib, x, dtype, log), dtype)
        assert np.isfinite(y).all()
        assert_close(y, getattr(ref, name)(x64, 1), dtype, "reduction")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", (7, 4097), ids=lambda c: f"R4-C{c}")
def test_masked_with_a_mask_and_lengths(lib, cols, dtype, rng):
    x, x64 = storage(rng.standard_normal((4, cols)) * 1e4, dtype, False)
    dy, dy64 = storage(rng.standard_normal((4, cols)), dtype, False)
    keep = (rng.random((4, cols)) > 0.5).astype(np.uint8)
    keep[1] = 0  # fully masked by the mask
    lengths = np.array([cols, cols, 0, cols // 2 + 1], dtype=np.int64)  # row 2 fully masked by its length
    y = _forward(lib, x, dtype, False, keep=keep, lengths=lengths, masked=True)
    kept = (keep != 0) & (np.arange(cols)[None, :] < lengths[:, None])
    y64 = decode(y, dtype)
    assert_close(y64, ref.masked_softmax(x64, kept, None, 1), dtype, "reduction")
    assert (y64[1] == 0).all() and (y64[2] == 0).all() and (y64[~kept] == 0).all()
    dx64 = decode(_backward(lib, dy, y, dtype, False), dtype)
    assert (dx64[~kept] == 0).all()
    assert_close(dx64, ref.softmax_backward(dy64, y64, 1), dtype, "reduction")


def test_masked_rows_of_minus_infinity_are_zero_unmasked_ones_nan(lib):
    x, x64 = storage(np.array([[-np.inf, -np.inf, -np.inf], [1.0, -np.inf, 2.0]]), "float32", False)
    masked = _forward(lib, x, "float32", False, masked=True)
    np.testing.assert_array_equal(masked[0], 0)
    assert_close(masked, ref.masked_softmax(x64, None, None, 1), "float32", "reduction")
    assert np.isnan(_forward(lib, x, "float32", False)[0]).all()


def test_special_values_follow_torch(lib):
    values = np.array([[-np.inf, 0.0, 1.0], [np.inf, 1.0, 2.0], [np.nan, 1.0, 2.0], [2.0, np.inf, 1.0]])
    x, x64 = storage(values, "float32", False)
    for log, name in ((False, "softmax"), (True, "log_softmax")):
        want = getattr(torch, name)(torch.from_numpy(x64), 1).numpy()
        assert_close(_forward(lib, x, "float32", log), want, "float32", "reduction")


def test_block_sizes_the_launcher_picks():
    assert threads_for(1, 4) == 32
    assert threads_for(4096, 4) == 256  # 1024 chunks of 4 floats, 4 per thread
    assert threads_for(4097, 4) == 512  # one chunk more rounds up to the next power of two
    assert threads_for(2**20, 2) == 1024
    assert all(threads_for(n, s) % 32 == 0 for n in (1, 7, 999, 10**6) for s in (2, 4))


def test_harness_rejects_block_sizes_the_kernel_cannot_merge(lib):
    x = np.ones((1, 4), np.float32)
    y = np.empty_like(x)
    assert lib.gk_softmax_forward(0, 0, ptr(x), ptr(None), ptr(None), ptr(y), 1, 4, 0, 48) == 2
