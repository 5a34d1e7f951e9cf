"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy softmax kernels on the device against
the float64 reference, through the public API, for every dtype, rows of 1..2^20+3 columns,
masks and every backward."""

from __future__ import annotations

import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, assert_softmax_backward_close, random_tensor, skip_unless_backend
from gpukernels.reference import softmax as ref

pytestmark = pytest.mark.gpu

SHAPES = ((5, 1), (9, 7), (33, 1000), (3, 4097), (4, 70000), (2, 2**20 + 3))


def _to_library(t: torch.Tensor, backend: str):
    if backend == "cupy":
        import cupy

        return cupy.from_dlpack(t.contiguous())
    return t


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"R{s[0]}-C{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_kernels_on_the_device(backend, name, dtype, shape, rng):
    skip_unless_backend(backend, dtype)
    # Large logits test the max shift; fp16 stops at 65504 and log-softmax outputs reach about
    # twice the logits' spread below 0, so fp16 gets the largest scale whose outputs stay finite
    # (at 1e4 the 33 x 1000 case rounds outputs to -inf while the float64 reference is finite).
    big = 2e3 if dtype == "float16" else 1e4
    x = random_tensor(rng, shape, dtype, "cuda", scale=big if shape[1] == 1000 else 3.0)
    dy = random_tensor(rng, shape, dtype, "cuda", scale=1.0)
    with gk.use_backend(backend):
        y = getattr(gk, name)(_to_library(x, backend), -1)
        dx = getattr(gk, f"{name}_backward")(_to_library(dy, backend), y, -1)
    assert_close(y, getattr(ref, name)(as_float64(x), 1), dtype, "reduction")
    assert_softmax_backward_close(dx, as_float64(dy), as_float64(y), name, dtype)


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_every_dim_on_the_device(backend, dim, rng):
    skip_unless_backend(backend, "float32")
    x = random_tensor(rng, (17, 33, 65), "float32", "cuda")
    with gk.use_backend(backend):
        y = gk.softmax(_to_library(x, backend), dim)
    assert_close(y, ref.softmax(as_float64(x), dim), "float32", "reduction")


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("cols", (7, 4097, 70000), ids=lambda c: f"R6-C{c}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_softmax_on_the_device(backend, dtype, cols, rng):
    skip_unless_backend(backend, dtype)
    x = random_tensor(rng, (6, cols), dtype, "cuda", scale=1e4)
    dy = random_tensor(rng, (6, cols), dtype, "cuda", scale=1.0)
    keep = torch.rand(6, cols, device="cuda") > 0.5
    keep[1] = False
    lengths = torch.tensor([cols, cols, 0, 1, cols // 2, cols + 3], device="cuda")
    with gk.use_backend(backend):
        y = gk.masked_softmax(_to_library(x, backend), _to_library(keep, backend), _to_library(lengths, backend))
        dx = gk.masked_softmax_backward(_to_library(dy, backend), y)
    kept = (keep & (torch.arange(cols, device="cuda") < lengths[:, None])).cpu().numpy()
    y64, dx64 = as_float64(y), as_float64(dx)
    assert (y64[~kept] == 0).all() and (dx64[~kept] == 0).all()
    assert (y64[1] == 0).all() and (y64[2] == 0).all()
    assert_close(y64, ref.masked_softmax(as_float64(x), kept, None, 1), dtype, "reduction")
    assert_softmax_backward_close(dx, as_float64(dy), y64, "softmax", dtype)


def test_automatic_dispatch_of_cuda_tensors_uses_triton():
    x = torch.randn(64, 1000, device="cuda")
    y = gk.softmax(x)
    assert y.is_cuda
    torch.testing.assert_close(y, torch.softmax(x, -1), rtol=1e-5, atol=1e-7)


def test_modules_train_on_the_device():
    import gpukernels.torch.nn as gnn

    x = torch.randn(8, 513, device="cuda", requires_grad=True)
    upstream = torch.randn(8, 513, device="cuda")
    (g,) = torch.autograd.grad(gnn.LogSoftmax(dim=1)(x), x, upstream)
    x_ref = x.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(torch.log_softmax(x_ref, 1), x_ref, upstream)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)
