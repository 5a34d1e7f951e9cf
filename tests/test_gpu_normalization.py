"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy normalisation kernels on the device
against the float64 reference, through the public API, every dtype, rows of 1..70000 columns,
every backward, and the same bits twice at the benchmark's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, skip_unless_backend, torch_dtype
from _normalization_cases import OPS, check_outputs, expected, inputs, run_op, source_of

pytestmark = pytest.mark.gpu

SHAPES = ((5, 1), (9, 7), (33, 1000), (3, 4097), (4, 70000))


def _maker(backend: str, dtype: str):
    def make(values):
        t = torch.from_numpy(np.asarray(values)).to(device="cuda", dtype=torch_dtype(dtype))
        if backend == "cupy":
            import cupy

            return cupy.from_dlpack(t)
        return t

    return make


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"R{s[0]}-C{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_kernels_on_the_device(backend, op, dtype, shape, rng):
    skip_unless_backend(backend, dtype)
    a, a64 = inputs(rng, shape, 1, _maker(backend, dtype))
    with gk.use_backend(backend):
        got = run_op(op, a["x"], a["r"], a["w"], a["b"], a["dy"], a["ds"], (shape[1],))
    want = expected(op, a64["x"], a64["r"], a64["w"], a64["b"], a64["dy"], a64["ds"], 1, source_of(op, got, a["x"]))
    check_outputs(op, got, want, dtype)


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("op", OPS)
def test_gradients_are_bitwise_repeatable_at_the_benchmark_size(backend, op, rng):
    skip_unless_backend(backend, "bfloat16")
    a, _ = inputs(rng, (8192, 4096), 1, _maker(backend, "bfloat16"))
    runs = []
    for _ in range(2):
        with gk.use_backend(backend):
            got = run_op(op, a["x"], a["r"], a["w"], a["b"], a["dy"], a["ds"], (4096,))
        runs.append([torch.as_tensor(t, device="cuda").view(torch.uint8).cpu().numpy().tobytes()
                     for t in got.values() if t is not None])
    assert runs[0] == runs[1]
