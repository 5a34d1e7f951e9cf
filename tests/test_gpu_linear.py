"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy dense-layer kernels on the device against
the float64 reference through the public API (every activation and dtype, odd and issue-sized
shapes), fp32 products exact by default and tf32 only where torch allows it, bitwise
reproducible gradients, the autotuner's choice among the gated tiles, and the modules on CUDA.
Test ids: M<rows>-K<in>-N<out>-<activation>-<dtype>."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from gpukernels.reference import linear as ref

pytestmark = pytest.mark.gpu

ACTIVATIONS = (None, "relu", "leaky_relu", "gelu", "gelu_tanh", "sigmoid", "tanh")
SHAPES = ((1, 1, 1), (37, 29, 23), (257, 1027, 515), (2048, 4096, 1024))


def _layer(rng, M, K, N, dtype):
    x = random_tensor(rng, (M, K), dtype, "cuda", scale=1.0)
    w = random_tensor(rng, (N, K), dtype, "cuda", scale=1.0 / np.sqrt(K))
    b = random_tensor(rng, (N,), dtype, "cuda", scale=0.5)
    dy = random_tensor(rng, (M, N), dtype, "cuda", scale=1.0)
    return x, w, b, dy


def _skip_unless(backend: str, dtype: str) -> None:
    if backend == "cupy":
        pytest.importorskip("cupy")
        if dtype == "bfloat16":
            pytest.importorskip("ml_dtypes", reason="cupy represents bfloat16 through ml_dtypes")


def _run(backend, x, w, b, dy, activation):
    with gk.use_backend(backend):
        y, saved = gk.linear(x, w, b, activation=activation, return_saved=True)
        grads = gk.linear_backward(dy, x, w, saved, activation=activation)
    return y, saved, grads


def _check(x, w, b, dy, activation, dtype, y, saved, grads, tolerance_dtype=None):
    tol = tolerance_dtype or dtype
    x64, w64, b64, dy64 = (as_float64(t) for t in (x, w, b, dy))
    want_y, _ = ref.forward(x64, w64, b64, activation)
    assert y.is_cuda and y.dtype == x.dtype
    assert_close(y, want_y, tol, "reduction")
    saved64 = None if saved is None else as_float64(saved)
    for got, expected in zip(grads, ref.backward(dy64, x64, w64, saved64, activation)):
        assert_close(got, expected, tol, "reduction")


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("M,K,N", [pytest.param(*s, id=f"M{s[0]}-K{s[1]}-N{s[2]}") for s in SHAPES])
def test_kernels_on_the_device(backend, M, K, N, activation, dtype, rng):
    _skip_unless(backend, dtype)
    x, w, b, dy = _layer(rng, M, K, N, dtype)
    y, saved, grads = _run(backend, x, w, b, dy, activation)
    _check(x, w, b, dy, activation, dtype, y, saved, grads)


@pytest.mark.parametrize("M,K,N", [pytest.param(*s, id=f"M{s[0]}-K{s[1]}-N{s[2]}") for s in [(8192, 1024, 4096)]])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_an_issue_sized_layer_against_torch(M, K, N, dtype, rng):
    x, w, b, dy = _layer(rng, M, K, N, dtype)
    with gk.use_backend("triton"):
        y = gk.linear(x, w, b, activation="gelu")
    want = F.gelu(F.linear(x.double(), w.double(), b.double()))
    assert_close(y, want.cpu().numpy(), dtype, "reduction")


def test_fp32_is_exact_by_default_and_tf32_only_when_allowed(rng):
    x, w, b, dy = _layer(rng, 512, 2048, 384, "float32")
    want, _ = ref.forward(as_float64(x), as_float64(w), as_float64(b), "gelu")
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with gk.use_backend("triton"):
            exact = gk.linear(x, w, b, activation="gelu")
        torch.backends.cuda.matmul.allow_tf32 = True
        with gk.use_backend("triton"):
            tf32 = gk.linear(x, w, b, activation="gelu")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert_close(exact, want, "float32", "reduction")  # 1e-5: no tf32 rounding in there
    err = np.linalg.norm(as_float64(tf32) - want) / np.linalg.norm(want)
    # tf32's 10-bit mantissa shows: rounding both operands to it gives 2.9e-4 here (emulated with
    # round-to-nearest on the CPU; 7.7e-4 if the hardware truncated), so the bound is 1e-3.
    assert 1e-5 < err < 1e-3


@pytest.mark.parametrize("backend", ["triton", "cupy"])
def test_gradients_are_bitwise_reproducible(backend, rng):
    _skip_unless(backend, "float32")
    x, w, b, dy = _layer(rng, 4099, 257, 131, "float32")
    first = _run(backend, x, w, b, dy, "sigmoid")[2]
    second = _run(backend, x, w, b, dy, "sigmoid")[2]
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_the_tuner_picks_a_gated_tile(rng):
    from gpukernels.triton import linear as kernels

    x, w, b, _ = _layer(rng, 1024, 512, 768, "bfloat16")
    with gk.use_backend("triton"):
        gk.linear(x, w, b, activation="relu")
    best = kernels.linear_forward_kernel.best_config
    tile = (best.kwargs["BLOCK_M"], best.kwargs["BLOCK_N"], best.kwargs["BLOCK_K"], best.num_warps, best.num_stages)
    assert tile in {tuple(c) for c in kernels.configs_for(2)}


def test_modules_on_cuda(rng):
    from gpukernels.torch import nn as gknn

    torch.manual_seed(0)
    ours = gknn.MLP(64, [64, 64], 10, activation="gelu", device="cuda")
    x = torch.randn(33, 64, device="cuda", requires_grad=True)
    y = ours(x)
    h = x
    for layer in ours.layers[:2]:
        h = h + F.gelu(F.linear(h, layer.weight, layer.bias))
    want = F.linear(h, ours.layers[2].weight, ours.layers[2].bias)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters())
