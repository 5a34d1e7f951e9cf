"""The CuPy dense-layer backend on the CPU: its entry points with NumPy as the array module (so
``xp.matmul`` stands where cuBLAS runs on the GPU) and linear.cu built with g++ as the launcher,
against the float64 reference: every activation and dtype, aligned and misaligned storage, the
bias gradient's column blocks and grid-stride loop, empty shapes, and the bitwise-reproducible
bias gradient. Test ids: M<rows>-K<in>-N<out>-<activation>-<dtype>."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import DTYPES, assert_close
from _host_buffers import decode, host_runner, storage
from gpukernels.cupy import linear as cupy_linear
from gpukernels.reference import linear as ref

ACTIVATIONS = (None, "relu", "leaky_relu", "gelu", "gelu_tanh", "sigmoid", "tanh")


@pytest.fixture(scope="module")
def run():
    return host_runner(cupy_linear.PROGRAM)


def _layer(rng, M, K, N, dtype, misalign=False):
    return (storage(rng.standard_normal((M, K)), dtype, misalign),
            storage(rng.standard_normal((N, K)) / np.sqrt(max(K, 1)), dtype, misalign),
            storage(rng.standard_normal(N) * 0.5, dtype, misalign),
            storage(rng.standard_normal((M, N)), dtype, misalign))


def _run_and_check(run, rng, M, K, N, activation, dtype, misalign=False, negative_slope=0.01, with_bias=True):
    (x, x64), (w, w64), (b, b64), (dy, dy64) = _layer(rng, M, K, N, dtype, misalign)
    if not with_bias:
        b = b64 = None
    kind = ref.saved_kind(activation, negative_slope)
    y, d = cupy_linear.forward(x, w, b, activation, negative_slope, kind == "derivative", run=run)
    assert y.dtype == x.dtype and y.shape == (M, N)
    want_y, _ = ref.forward(x64, w64, b64, activation, negative_slope)
    assert_close(decode(y), want_y, dtype, "reduction")
    saved = {"none": None, "output": y, "derivative": d}[kind]
    grads = cupy_linear.backward(dy, x, w, saved, activation, negative_slope, (True, True, with_bias), run=run)
    want = ref.backward(dy64, x64, w64, None if saved is None else decode(saved), activation, negative_slope,
                        (True, True, with_bias))
    for got, expected in zip(grads, want):
        if expected is None:
            assert got is None
        else:
            assert got.dtype == x.dtype
            assert_close(decode(got), expected, dtype, "reduction")
    return grads


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "offset"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_every_activation_and_dtype(run, activation, dtype, misalign, rng):
    _run_and_check(run, rng, 37, 29, 67, activation, dtype, misalign)  # 67 columns: three column blocks


@pytest.mark.parametrize("M,K,N", [pytest.param(*s, id=f"M{s[0]}-K{s[1]}-N{s[2]}") for s in [(1, 1, 1), (0, 5, 3), (4, 0, 3), (4, 5, 0)]])
def test_odd_and_empty_shapes(run, M, K, N, rng):
    _run_and_check(run, rng, M, K, N, "gelu", "float32")


def test_without_bias_and_with_a_negative_slope(run, rng):
    _run_and_check(run, rng, 9, 7, 5, "leaky_relu", "float32", negative_slope=-0.25, with_bias=False)


def test_more_columns_than_blocks_loop_over_columns(run, monkeypatch, rng):
    monkeypatch.setattr(cupy_linear, "_MAX_COLUMN_BLOCKS", 2)
    dy = np.ones((3, 100), np.float32)
    assert cupy_linear.backward_launch(dy, None, dy, None, None, "none", 0.0).grid == (2,)
    _run_and_check(run, rng, 11, 6, 100, "sigmoid", "float32")


def test_bias_gradient_is_bitwise_reproducible(run, rng):
    first = _run_and_check(run, rng, 50, 8, 40, "gelu", "float32")
    second = _run_and_check(run, np.random.default_rng(20261124), 50, 8, 40, "gelu", "float32")
    again = _run_and_check(run, np.random.default_rng(20261124), 50, 8, 40, "gelu", "float32")
    assert np.array_equal(second[2], again[2]) and first[2].shape == (40,)


def test_every_name_expression_is_a_launchable_kernel(run):
    for name in cupy_linear.PROGRAM.name_expressions:
        assert run.launch.__self__.signature(name)  # each instantiation compiled and registered
