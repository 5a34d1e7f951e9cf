"""Every Triton activation kernel against the float64 reference at DESIGN.md's tolerances: in
Triton's interpreter on CPU tensors here, compiled on the GPU where there is one (same tests,
same tolerances). Without a GPU the fp32 kernels also run with the GPU's approximate exp and
division emulated (tests/_gpu_math.py), so the compiled path's error budget is tested too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _activation_cases import ACTS, SAVES_OUTPUT, SLOPE, backward, forward
from _gpu_math import DIRECTIONS, gpu_approximations
from _helpers import DTYPES, NORM_TOL, SHAPES, as_float64, assert_close, random_tensor, shape_id
from conftest import DEVICE, HAS_CUDA
from gpukernels.reference import activation as ref


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


TANH_NEAR_ZERO = [1e-30, -1e-20, 1e-8, -3e-5, 0.01, 0.2499, 0.2501, 0.26, -0.2666, 0.3]


def _assert_relative(got, want, bound):
    relative = np.abs(as_float64(got) - want) / np.abs(want)
    assert relative.max() <= bound, f"relative error {relative.max():.3g} > {bound} at {want[np.argmax(relative)]!r}"


def test_tanh_keeps_relative_precision_near_zero():
    # 2*sigmoid(2x)-1 or (1-e)/(1+e) would lose every digit here; the series must not. The bound
    # is DESIGN.md's fp32 pointwise tolerance, held per element: near 0 an absolute tolerance
    # would let any answer through.
    x = torch.tensor(TANH_NEAR_ZERO, dtype=torch.float32, device=DEVICE)
    with gk.use_backend("triton"):
        y = gk.tanh(x)
    _assert_relative(y, np.tanh(as_float64(x)), NORM_TOL["float32"]["pointwise"])


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


# ---------------------------------------------------------------------------------------------
# The GPU's approximate fp32 math, emulated: ex2.approx for exp, div.full for division (see
# tests/_gpu_math.py). On a GPU the tests above run the compiled kernels themselves.


def _sweep(rng):
    """Every regime of every activation: a fine grid over +-40, random normals, tanh's series edge."""
    values = np.concatenate([np.linspace(-40.0, 40.0, 8001), rng.standard_normal(4000) * 3, TANH_NEAR_ZERO])
    return torch.from_numpy(values).float()


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU the tests above run the compiled kernels, not an emulation")
@pytest.mark.parametrize("direction", list(DIRECTIONS))
@pytest.mark.parametrize("act", ACTS)
def test_fp32_holds_the_tolerances_with_the_gpus_approximate_math(act, direction, rng):
    x = _sweep(rng)
    dy = random_tensor(rng, tuple(x.shape), "float32", scale=1.0)
    with gpu_approximations(*DIRECTIONS[direction]), gk.use_backend("triton"):
        y = forward(act, x)
        saved = y if act in SAVES_OUTPUT else x
        dx = backward(act, dy, saved)
    x64 = as_float64(x)
    assert_close(y, ref.forward(x64, act, SLOPE), "float32")
    assert_close(dx, ref.backward(as_float64(dy), as_float64(saved), act, SLOPE), "float32")
    if act == "tanh":  # and per element, relative, as the near-zero test above asks
        nonzero = x64 != 0
        _assert_relative(y[torch.from_numpy(nonzero)], np.tanh(x64[nonzero]), NORM_TOL["float32"]["pointwise"])


@pytest.mark.skipif(HAS_CUDA, reason="the emulation patches Triton's interpreter")
def test_the_emulation_puts_the_gpus_errors_in():
    x = torch.linspace(-8.0, 8.0, 1001)
    with gk.use_backend("triton"):
        exact = gk.sigmoid(x)
        with gpu_approximations(-1, 1):  # exp(-x) low and the quotient high: sigmoid too large
            high = gk.sigmoid(x)
        after = gk.sigmoid(x)
    assert torch.equal(after, exact)  # restored on exit
    relative = ((high.double() - exact.double()) / exact.double()).abs()
    assert (relative > 0).sum() > 900
    # ex2's 2^-22 and div.full's 2 ulp, plus up to 8 * 2^-24 from rounding the argument
    assert 2.0**-23 < relative.max().item() < 2.0**-22 + 8 * 2.0**-24 + 2.0**-22
