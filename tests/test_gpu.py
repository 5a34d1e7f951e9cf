"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy kernels on the device against the
float64 reference, through the public API, on every dtype and odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _activation_cases import ACTS, SAVES_OUTPUT, SLOPE, backward, forward
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from gpukernels.reference import activation as ref

pytestmark = pytest.mark.gpu

SIZES = (1, 7, 1023, 2**20 + 3)


def _to_library(t: torch.Tensor, backend: str):
    if backend == "cupy":
        import cupy

        return cupy.from_dlpack(t)
    return t


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_kernels_on_the_device(backend, act, dtype, n, rng):
    if backend == "cupy":
        pytest.importorskip("cupy")
        if dtype == "bfloat16":
            pytest.importorskip("ml_dtypes", reason="cupy represents bfloat16 through ml_dtypes")
    x = random_tensor(rng, (n,), dtype, "cuda")
    dy = random_tensor(rng, (n,), dtype, "cuda", scale=1.0)
    with gk.use_backend(backend):
        y = forward(act, _to_library(x, backend))
        saved = y if act in SAVES_OUTPUT else _to_library(x, backend)
        dx = backward(act, _to_library(dy, backend), saved)
    assert_close(y, ref.forward(as_float64(x), act, SLOPE), dtype)
    assert_close(dx, ref.backward(as_float64(dy), as_float64(saved), act, SLOPE), dtype)


def test_automatic_dispatch_of_cuda_tensors_uses_triton():
    x = torch.randn(1000, device="cuda")
    y = gk.sigmoid(x)
    assert y.is_cuda
    np.testing.assert_allclose(y.cpu().numpy(), torch.sigmoid(x).cpu().numpy(), rtol=1e-6, atol=1e-7)
