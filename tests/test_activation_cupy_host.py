"""The CuPy kernels' per-element code (activation.cuh, gk_math.cuh) built with g++ and run on
the CPU against the float64 reference, for fp32, fp16 and bf16 storage, on aligned and
misaligned buffers (the 128-bit path and the element-by-element tail)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

from _host_buffers import DTYPE_CODES, decode, poisoned_like, ptr, storage
from _helpers import DTYPES, assert_close, shape_id
from gpukernels.cupy.activation import ACTS
from gpukernels.reference import activation as ref
from gpukernels.tools.verify.host import build

SHIM = Path(__file__).parent / "host" / "activation_host.cpp"
SAVES_OUTPUT = ("sigmoid", "tanh")
ACT_CODES = {name: code for code, name in enumerate(ACTS)}
SIZES = [0, 1, 7, 1023, 3 * 5 * 257]


@pytest.fixture(scope="module")
def lib():
    library = build(SHIM)
    for name in ("gk_activation_forward", "gk_activation_backward"):
        getattr(library, name).restype = ctypes.c_int
    return library


CASES = [
    pytest.param(n, dtype, misalign, id=f"{shape_id((n,))}-{dtype}-{'offset' if misalign else 'aligned'}")
    for n in SIZES for dtype in DTYPES for misalign in (False, True)
]


@pytest.mark.parametrize("n,dtype,misalign", CASES)
@pytest.mark.parametrize("act", ACTS)
def test_forward_and_backward(lib, act, n, dtype, misalign, rng):
    x, x64 = storage(rng.standard_normal(n) * 3, dtype, misalign)
    dy, dy64 = storage(rng.standard_normal(n), dtype, misalign)
    y = poisoned_like(x)
    slope = 0.1
    assert lib.gk_activation_forward(ACT_CODES[act], DTYPE_CODES[dtype], ptr(x), ptr(y), n, ctypes.c_float(slope)) == 0
    y64 = decode(y, dtype)
    assert_close(y64, ref.forward(x64, act, slope), dtype)

    saved, saved64 = (y, y64) if act in SAVES_OUTPUT else (x, x64)
    dx = poisoned_like(x)
    code = lib.gk_activation_backward(
        ACT_CODES[act], DTYPE_CODES[dtype], ptr(dy), ptr(saved), ptr(dx), n, ctypes.c_float(slope))
    assert code == 0
    assert_close(decode(dx, dtype), ref.backward(dy64, saved64, act, slope), dtype)


@pytest.mark.parametrize("act", ACTS)
def test_nonfinite_inputs_propagate_as_the_reference(lib, act):
    values = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-8, -40.0, 40.0, 0.3])
    x, x64 = storage(values, "float32", False)
    y = poisoned_like(x)
    lib.gk_activation_forward(ACT_CODES[act], 0, ptr(x), ptr(y), x.size, ctypes.c_float(0.1))
    assert_close(y, ref.forward(x64, act, 0.1), "float32")


@pytest.mark.parametrize("fmt", ["half", "bf16"])
def test_storage_conversions_round_like_torch(lib, fmt, rng):
    # random magnitudes across the whole exponent range, plus ties, subnormals and specials
    values = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * np.float32(2.0) ** rng.integers(-30, 20, 20000),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.9, 65520, 1e-8, 2.0**-24, 2.0**-25,
                  3 * 2.0**-25, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8], dtype=np.float32),
    ]).astype(np.float32)
    bits = np.empty(values.size, np.uint16)
    back = np.empty(values.size, np.float32)
    function = lib.gk_half_round_trip if fmt == "half" else lib.gk_bf16_round_trip
    function(ptr(values), ptr(bits), ptr(back), ctypes.c_longlong(values.size))
    torch_dtype = torch.float16 if fmt == "half" else torch.bfloat16
    expected = torch.from_numpy(values).to(torch_dtype)
    want_back = expected.float().numpy()
    np.testing.assert_array_equal(np.isnan(back), np.isnan(want_back))
    finite = ~np.isnan(want_back)
    np.testing.assert_array_equal(back[finite], want_back[finite])
    want_bits = expected.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits[finite], want_bits[finite])
