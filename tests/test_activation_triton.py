"""Every Triton activation kernel against the float64 reference: in Triton's interpreter on
CPU tensors here, on the GPU where there is one (same tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _activation_cases import ACTS, SAVES_OUTPUT, SLOPE, backward, forward
from _helpers import DTYPES, SHAPES, as_float64, assert_close, random_tensor, shape_id
from conftest import HAS_CUDA
from gpukernels.reference import activation as ref

DEVICE = "cuda" if HAS_CUDA else "cpu"


def _case_id(shape, dtype):
    return f"{shape_id(shape)}-{dtype}"


CASES = [pytest.param(shape, dtype, id=_case_id(shape, dtype)) for shape in SHAPES for dtype in DTYPES]


@pytest.mark.parametrize("shape,dtype", CASES)
@pytest.mark.parametrize("act", ACTS)
def test_forward_andbackward(act, shape, dtype, rng):
    x = random_tensor(rng, shape, dtype, DEVICE)
    dy = random_tensor(rng, shape, dtype, DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        y = forward(act, x)
        saved = y if act in SAVES_OUTPUT else x
        dx = backward(act, dy, saved)
    assert y.dtype == x.dtype and y.device == x.device and y.shape == x.shape
    assert dx.dtype == x.dtype and dx.shape == x.shape
    x64, dy64, saved64 = as_float64(x), as_float64(dy), as_float64(saved)
    assert_close(y, ref.forward(x64, act, SLOPE), dtype)
    assert_close(dx, ref.backward(dy64, saved64, act, SLOPE), dtype)


@pytest.mark.parametrize("act", ACTS)
def test_nonfinite_inputs_propagate_as_the_reference(act, rng):
    x = random_tensor(rng, (300,), "float32", DEVICE, specials=True)
    dy = random_tensor(rng, (300,), "float32", DEVICE, specials=True)
    with gk.use_backend("triton"):
        y = forward(act, x)
        dx = backward(act, dy, y if act in SAVES_OUTPUT else x)
    x64 = as_float64(x)
    assert_close(y, ref.forward(x64, act, SLOPE), "float32")
    saved64 = as_float64(y) if act in SAVES_OUTPUT else x64
    assert_close(dx, ref.backward(as_float64(dy), saved64, act, SLOPE), "float32")


@pytest.mark.parametrize("act", ACTS)
def test_non_contiguous_input(act, rng):
    base = random_tensor(rng, (65, 33), "float32", DEVICE)
    x = base.t()  # a transposed view: not contiguous
    assert not x.is_contiguous()
    with gk.use_backend("triton"):
        y = forward(act, x)
    assert y.shape == x.shape
    assert_close(y, ref.forward(as_float64(x), act, SLOPE), "float32")


def test_tanh_keeps_relative_precision_near_zero():
    # 2*sigmoid(2x)-1 or (1-e)/(1+e) would lose every digit here; the series must not.
    x = torch.tensor([1e-30, -1e-20, 1e-8, -3e-5, 0.01, 0.2499, 0.2501], dtype=torch.float32, device=DEVICE)
    with gk.use_backend("triton"):
        y = gk.tanh(x)
    want = np.tanh(as_float64(x))
    np.testing.assert_allclose(as_float64(y), want, rtol=2e-7, atol=0)


def test_offset_view_is_correct(rng):
    # a view one element into its storage: the pointer is not 16-byte aligned
    base = random_tensor(rng, (1025,), "float16", DEVICE)
    x = base[1:]
    with gk.use_backend("triton"):
        y = gk.gelu(x)
    assert_close(y, ref.gelu(as_float64(x)), "float16")


def test_float64_is_rejected_with_the_supported_dtypes():
    x = torch.ones(4, dtype=torch.float64, device=DEVICE)
    with gk.use_backend("triton"), pytest.raises(TypeError, match="float64.*supported: float16, bfloat16, float32"):
        gk.sigmoid(x)
