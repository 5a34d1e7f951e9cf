"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy kernels on the device against the
float64 reference, through the public API, on every dtype and odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _activation_cases import ACTS, SAVES_OUTPUT, SLOPE, backward, forward
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from gpukernels import _dispatch
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
    assert _dispatch.select_backend(x) == "triton"
    y = gk.sigmoid(x)
    assert y.is_cuda
    assert_close(y, ref.sigmoid(as_float64(x)), "float32")  # DESIGN.md's tolerance, as in the interpreter


def test_compiled_triton_refuses_cpu_tensors_and_takes_numpy_through_the_gpu(rng):
    assert not _dispatch.triton_interpreting()  # the suite compiles Triton on a GPU
    x = torch.randn(100)
    with gk.use_backend("triton"), pytest.raises(gk.BackendUnavailableError, match="x is a CPU torch tensor"):
        gk.sigmoid(x)
    values = rng.standard_normal(100).astype(np.float32)
    with gk.use_backend("triton"):
        y = gk.sigmoid(values)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert_close(y, ref.sigmoid(values.astype(np.float64)), "float32")
