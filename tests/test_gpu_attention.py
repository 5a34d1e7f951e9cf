"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy attention kernels on the device against
the float64 reference, at sizes the interpreter cannot reach, and the memory claims: the fused
SDPA allocates O(N) beyond its inputs and outputs, the additive path no [B, Tq, Tk, A] tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from gpukernels.reference import attention as ref

pytestmark = pytest.mark.gpu

SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _library(t, backend):
    if backend == "cupy" and t is not None:
        import cupy

        return cupy.from_dlpack(t)
    return t


def _skip_cupy(backend, dtype):
    if backend == "cupy":
        pytest.importorskip("cupy")
        if dtype == "bfloat16":
            pytest.importorskip("ml_dtypes", reason="cupy represents bfloat16 through ml_dtypes")


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=[SHORT[d] for d in DTYPES])
@pytest.mark.parametrize("L,S,E,hq,hk,mask_kind,causal", [
    (256, 384, 64, 4, 4, None, False),
    (300, 200, 128, 8, 2, None, True),
    (129, 1000, 40, 2, 2, "bool", False),
    (64, 64, 256, 2, 1, "float", False),
], ids=["L256-S384-D64", "L300-S200-D128-causal-gqa", "L129-S1000-D40-bool", "L64-S64-D256-float-gqa"])
def test_sdpa_on_the_device(backend, dtype, L, S, E, hq, hk, mask_kind, causal, rng):
    _skip_cupy(backend, dtype)
    q = random_tensor(rng, (2, hq, L, E), dtype, "cuda", scale=1.0)
    k = random_tensor(rng, (2, hk, S, E), dtype, "cuda", scale=1.0)
    v = random_tensor(rng, (2, hk, S, E), dtype, "cuda", scale=1.0)
    dout = random_tensor(rng, (2, hq, L, E), dtype, "cuda", scale=1.0)
    mask = None
    if mask_kind == "bool":
        mask = torch.from_numpy(rng.random((L, S)) > 0.5).cuda()
        mask[3] = False
    elif mask_kind == "float":
        mask = random_tensor(rng, (2, 1, L, S), dtype, "cuda", scale=1.0)
    gqa = hq != hk
    args = [_library(x, backend) for x in (q, k, v)]
    with gk.use_backend(backend):
        out, lse = gk.scaled_dot_product_attention_forward(*args, _library(mask, backend), is_causal=causal,
                                                           enable_gqa=gqa)
        grads = gk.scaled_dot_product_attention_backward(_library(dout, backend), *args, out, lse,
                                                         _library(mask, backend), causal, enable_gqa=gqa)
    mask_np = None if mask is None else (mask.cpu().numpy() if mask.dtype == torch.bool else as_float64(mask))
    args64 = [as_float64(x) for x in (q, k, v)]
    want_out, want_lse = ref.sdpa_forward(*args64, mask_np, is_causal=causal, groups=hq // hk)
    assert_close(out, want_out, dtype, "reduction")
    assert_close(lse, want_lse, "float32", "reduction")
    want = ref.sdpa_backward(as_float64(dout), *args64, mask_np, is_causal=causal, groups=hq // hk)
    for got, expected in zip(grads, want):
        assert_close(got, expected, dtype, "reduction")


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=[SHORT[d] for d in DTYPES])
@pytest.mark.parametrize("kind", ["dot", "scaled_dot", "general", "additive"])
def test_encoder_decoder_attention_on_the_device(backend, dtype, kind, rng):
    _skip_cupy(backend, dtype)
    B, Tq, Tk, Dk, Dv, A = 8, 3, 777, 96, 130, 70
    Dq = Dk if kind in ("dot", "scaled_dot") else 50
    query = random_tensor(rng, (B, Tq, Dq), dtype, "cuda", scale=1.0)
    keys = random_tensor(rng, (B, Tk, Dk), dtype, "cuda", scale=0.1 if kind == "dot" else 1.0)
    values = random_tensor(rng, (B, Tk, Dv), dtype, "cuda", scale=1.0)
    params = {}
    if kind == "general":
        params = {"weight": random_tensor(rng, (Dq, Dk), dtype, "cuda", scale=0.1)}
    elif kind == "additive":
        params = {"w_query": random_tensor(rng, (A, Dq), dtype, "cuda", scale=0.1),
                  "w_keys": random_tensor(rng, (A, Dk), dtype, "cuda", scale=0.1),
                  "v": random_tensor(rng, (A,), dtype, "cuda", scale=1.0)}
    mask = (torch.arange(Tk, device="cuda")[None, :] < torch.randint(0, Tk, (B, 1), device="cuda"))
    g_context = random_tensor(rng, (B, Tq, Dv), dtype, "cuda", scale=1.0)
    g_weights = random_tensor(rng, (B, Tq, Tk), dtype, "cuda", scale=1.0)
    lib = {name: _library(x, backend) for name, x in params.items()}
    with gk.use_backend(backend):
        context, weights = gk.attention(*(_library(x, backend) for x in (query, keys, values)), kind,
                                        _library(mask, backend), **lib)
        grads = gk.attention_backward(_library(g_context, backend), _library(g_weights, backend),
                                      *(_library(x, backend) for x in (query, keys, values)), weights, kind, **lib)
    p64 = {name: as_float64(x) for name, x in params.items()}
    args64 = (as_float64(query), as_float64(keys), as_float64(values))
    want_c, want_w = ref.attention_forward(*args64, mask.cpu().numpy(), kind=kind, **p64)
    assert_close(context, want_c, dtype, "reduction")
    assert_close(weights, want_w, dtype, "reduction")
    want = ref.attention_backward(as_float64(g_context), as_float64(g_weights), *args64, as_float64(weights),
                                  kind=kind, **p64)
    for got, expected in zip(grads, want):
        assert (got is None) == (expected is None)
        if got is not None:
            assert_close(got, expected, dtype, "reduction")


def test_fused_sdpa_extra_memory_is_linear_in_n(rng):
    """Forward and backward allocate outputs, gradients and O(N) row statistics, no N x N."""
    from gpukernels.torch.functional import scaled_dot_product_attention

    B, H, N, d = 1, 2, 8192, 64
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    tensors = B * H * N * d * 2  # one q-sized fp16 tensor
    assert extra < 8 * tensors + 16 * B * H * N  # out, grad, dq, dk, dv, ... plus fp32 row stats
    assert extra < B * H * N * N // 8  # far below one N x N fp16 score matrix


def test_additive_attention_allocates_no_hidden_tensor(rng):
    from gpukernels.torch.functional import attention

    B, Tq, Tk, D, A = 16, 8, 2048, 256, 256
    kw = {"device": "cuda", "dtype": torch.float16, "requires_grad": True}
    query, keys, values = torch.randn(B, Tq, D, **kw), torch.randn(B, Tk, D, **kw), torch.randn(B, Tk, D, **kw)
    w_query, w_keys, v = torch.randn(A, D, **kw), torch.randn(A, D, **kw), torch.randn(A, **kw)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    context, _ = attention(query, keys, values, "additive", None, w_query=w_query, w_keys=w_keys, v=v)
    context.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < B * Tq * Tk * A * 2 // 8  # the [B, Tq, Tk, A] fp16 hidden tensor would be 8x this
    assert np.isfinite(as_float64(context)).all()
