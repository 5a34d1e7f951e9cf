"""The CuPy activation backend on the CPU: its entry points (gpukernels.cupy.activation.forward /
backward, the very functions the dispatch layer calls) with NumPy as the array module and
activation.cu built with g++ as the launcher, so the launch glue (dtype -> template, grid, block,
packed scalars) and the kernels run as on the GPU. fp32, fp16 and bf16 storage, aligned and
misaligned buffers (the 128-bit path and the element-by-element tail), against the float64
reference."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import DTYPES, assert_close, shape_id
from _host_buffers import decode, host_library, host_runner, ptr, storage
from gpukernels.cupy import _module
from gpukernels.cupy import activation as cupy_activation
from gpukernels.reference import activation as ref

SHIM = Path(__file__).parent / "host" / "activation_host.cpp"
SIZES = [0, 1, 7, 1023, 3 * 5 * 257]


@pytest.fixture(scope="module")
def run():
    return host_runner(cupy_activation.PROGRAM)


CASES = [
    pytest.param(n, dtype, misalign, id=f"{shape_id((n,))}-{dtype}-{'offset' if misalign else 'aligned'}")
    for n in SIZES for dtype in DTYPES for misalign in (False, True)
]


@pytest.mark.parametrize("n,dtype,misalign", CASES)
@pytest.mark.parametrize("act", cupy_activation.ACTS)
def test_forward_and_backward(run, act, n, dtype, misalign, rng):
    x, x64 = storage(rng.standard_normal(n) * 3, dtype, misalign)
    dy, dy64 = storage(rng.standard_normal(n), dtype, misalign)
    slope = 0.1
    y = cupy_activation.forward(x, act, slope, run=run)
    assert y.dtype == x.dtype and y.shape == x.shape
    y64 = decode(y)
    assert_close(y64, ref.forward(x64, act, slope), dtype)

    saved, saved64 = (y, y64) if act in cupy_activation.SAVES_OUTPUT else (x, x64)
    dx = cupy_activation.backward(dy, saved, act, slope, run=run)
    assert_close(decode(dx), ref.backward(dy64, saved64, act, slope), dtype)


@pytest.mark.parametrize("act", cupy_activation.ACTS)
def test_nonfinite_inputs_propagate_as_the_reference(run, act):
    x, x64 = storage(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-8, -40.0, 40.0, 0.3]), "float32")
    assert_close(cupy_activation.forward(x, act, 0.1, run=run), ref.forward(x64, act, 0.1), "float32")


def test_grid_stride_loop_covers_more_chunks_than_threads(run, monkeypatch, rng):
    monkeypatch.setattr(_module, "_MAX_BLOCKS", 2)  # 512 threads for 964 chunks: each thread loops
    x, x64 = storage(rng.standard_normal(3 * 5 * 257), "float32")
    spec = cupy_activation.activation_launch("forward", "gelu", {"x": x}, np.empty_like(x), 0.0)
    assert spec.grid == (2,) and spec.block == (_module.THREADS,)
    assert_close(cupy_activation.forward(x, "gelu", run=run), ref.forward(x64, "gelu", 0.0), "float32")


def test_launch_geometry():
    x = np.empty(4097, np.float16)
    spec = cupy_activation.activation_launch("backward", "tanh", {"grad_output": x, "output": x}, x, 0.0)
    assert spec.kernel == "activation_backward<gk::Tanh, gk::half>"
    assert spec.grid == (3,)  # 513 chunks of 8 halves, 256 threads a block
    assert spec.block == (256,)
    assert spec.args[3] == 4097 and type(spec.args[3]) is np.int64 and type(spec.args[4]) is np.float32
    empty = np.empty(0, np.float32)
    assert _module.grid_for(10**12) == (65535,) and _module.grid_for(0) == (1,)
    assert cupy_activation.activation_launch("forward", "relu", {"x": empty}, empty, 0.0).args[2] == 0


def test_unsupported_dtype_is_named(run):
    with pytest.raises(TypeError, match="x has dtype float64"):
        cupy_activation.forward(np.ones(3), "relu", run=run)


@pytest.fixture(scope="module")
def conversions():
    return host_library(SHIM)


@pytest.mark.parametrize("fmt", ["half", "bf16"])
def test_storage_conversions_round_like_torch(conversions, fmt, rng):
    # random magnitudes across the whole exponent range, plus ties, subnormals and specials
    values = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(2.0) ** rng.integers(-30, 20, 20000),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.9, 65520, 1e-8, 2.0**-24, 2.0**-25,
                  3 * 2.0**-25, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8], dtype=np.float32),
    ]).astype(np.float32)
    bits = np.empty(values.size, np.uint16)
    back = np.empty(values.size, np.float32)
    function = conversions.gk_half_round_trip if fmt == "half" else conversions.gk_bf16_round_trip
    function(ptr(values), ptr(bits), ptr(back), ctypes.c_longlong(values.size))
    torch_dtype = torch.float16 if fmt == "half" else torch.bfloat16
    expected = torch.from_numpy(values).to(torch_dtype)
    want_back = expected.float().numpy()
    np.testing.assert_array_equal(np.isnan(back), np.isnan(want_back))
    finite = ~np.isnan(want_back)
    np.testing.assert_array_equal(back[finite], want_back[finite])
    want_bits = expected.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits[finite], want_bits[finite])
