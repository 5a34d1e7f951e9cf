"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy attention kernels on the device against
the float64 reference, at sizes the interpreter cannot reach (launches past the 65535 programs
of grid axes 1 and 2 included), and the memory claims, each bound computed from the shapes: the
fused SDPA holds its outputs, gradients and fp32 row statistics and nothing else, the additive
path its projections and score-sized buffers, never the [B, Tq, Tk, A] tensor."""

from __future__ import annotations

import math

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


def _relative(got, want) -> float:
    got, want = got.double(), want.double()
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("L,S,E,hq,hk,causal", [
    (1024, 1024, 64, 8, 8, False),
    (1024, 1024, 128, 8, 2, True),
    (1040, 1008, 128, 4, 4, False),
    (512, 512, 256, 2, 1, True),
], ids=["L1024-D64", "L1024-D128-causal-gqa", "L1040-S1008-D128", "L512-D256-causal-gqa"])
def test_sdpa_matches_torch_sdpa(dtype, L, S, E, hq, hk, causal, rng):
    """Ours against torch's ``F.scaled_dot_product_attention`` (its fastest backend for these
    inputs: flash on an sm_80/sm_90 GPU) at typical training shapes, where the launch heuristic
    takes the larger tiles (and on an sm_90 GPU the tensor descriptors and 128-row tiles): the
    output and every gradient within the dtype's tolerance of torch's, and no further from the
    float64 reference than twice torch's own error (or the tolerance)."""
    import torch.nn.functional as F

    from gpukernels.torch.functional import scaled_dot_product_attention
    from gpukernels.triton import attention as tri

    tolerance = {"float16": 1e-3, "bfloat16": 1e-2}[dtype]
    q = random_tensor(rng, (2, hq, L, E), dtype, "cuda", scale=1.0).requires_grad_()
    k = random_tensor(rng, (2, hk, S, E), dtype, "cuda", scale=1.0).requires_grad_()
    v = random_tensor(rng, (2, hk, S, E), dtype, "cuda", scale=1.0).requires_grad_()
    dout = random_tensor(rng, (2, hq, L, E), dtype, "cuda", scale=1.0)
    gqa = hq != hk
    with gk.use_backend("triton"):
        ours = scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        ours_grads = torch.autograd.grad(ours, (q, k, v), dout)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    theirs_grads = torch.autograd.grad(theirs, (q, k, v), dout)
    args64 = [as_float64(x.detach()) for x in (q, k, v)]
    want = (ref.sdpa_forward(*args64, is_causal=causal, groups=hq // hk)[0],
            *ref.sdpa_backward(as_float64(dout), *args64, is_causal=causal, groups=hq // hk))
    for name, a, b, w in zip(("out", "dq", "dk", "dv"), (ours, *ours_grads), (theirs, *theirs_grads), want):
        w = torch.from_numpy(w)
        assert _relative(a, b) <= tolerance, (name, _relative(a, b))
        assert _relative(a.cpu(), w) <= max(tolerance, 2 * _relative(b.cpu(), w)), (name, _relative(a.cpu(), w))
    if torch.cuda.get_device_capability() == (9, 0):  # the launch took sm_90's configuration
        assert tri.device_arch(q) == 90
        assert tri.sdpa_blocks(tri.padded_head_dim(E), tri.padded_head_dim(E), 2, True, 90, causal).tma


def test_sdpa_tensor_descriptors_leave_the_callers_allocator_in_place(rng):
    """On sm_90 the kernels build their TMA descriptors in global scratch: from the caller's
    ``triton.set_allocator`` when there is one (used, and still set afterwards), else from
    torch's caching allocator for the launch only (none set afterwards)."""
    import triton
    from triton.runtime import _allocation

    from gpukernels.triton import attention as tri

    q = random_tensor(rng, (1, 2, 256, 64), "float16", "cuda", scale=1.0)
    if tri.device_arch(q) != 90:
        pytest.skip("tensor descriptors are the sm_90 path; this GPU takes the pointer loads")
    asked = []

    def allocator(size, alignment, stream):
        asked.append(size)
        return torch.empty(size, dtype=torch.int8, device="cuda")

    previous = _allocation._allocator.get()  # whatever an earlier test or torch set: put back
    try:
        triton.set_allocator(_allocation.NullAllocator())
        with gk.use_backend("triton"):
            want = gk.scaled_dot_product_attention(q, q, q, is_causal=True)
        assert isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        triton.set_allocator(allocator)
        with gk.use_backend("triton"):
            got = gk.scaled_dot_product_attention(q, q, q, is_causal=True)
        assert asked and _allocation._allocator.get() is allocator
    finally:
        triton.set_allocator(previous)
    assert torch.equal(got, want)


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


def _peak_extra_bytes(step) -> int:
    """Peak device memory ``step`` allocates beyond what is allocated when it starts, measured
    on a second run (the first compiles the kernels and makes cuBLAS's workspace)."""
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak


SLACK = 64 * 1024  # the caching allocator's 512-byte rounding of the few small buffers, with room


def test_fused_sdpa_holds_its_outputs_gradients_and_row_statistics_only(rng):
    """Forward and backward peak at what the op must hold: the output and its fp32 log-sum-exp,
    dQ, dK, dV and the fp32 row term delta. An fp32 copy of K (twice a K) or any N x N buffer
    would break the bound."""
    from gpukernels.torch.functional import scaled_dot_product_attention

    B, H, N, d = 1, 2, 8192, 64
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, N, d, device="cuda", dtype=torch.float16)

    def step():
        out = scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.autograd.grad(out, (q, k, v), grad)

    tensor, rows = B * H * N * d * 2, B * H * N * 4  # one (N, d) fp16 tensor; one fp32 per query row
    must_hold = (tensor + rows) + 3 * tensor + rows  # out + lse, dq + dk + dv, delta
    assert _peak_extra_bytes(step) <= must_hold + _descriptor_scratch(q, N, B * H, d) + SLACK


def _descriptor_scratch(q, N: int, heads: int, d: int) -> int:
    """Global scratch of the TMA descriptors the kernels build on sm_90, for one launch at a
    time (it is freed after each): 128 bytes per descriptor per program; the forward builds 3
    (Q, K, V), dQ 4 (Q, dO, K, V), dK/dV 4 (K, V, Q, dO)."""
    from gpukernels.triton import attention as tri

    blocks = tri.sdpa_blocks(d, d, q.element_size(), True, tri.device_arch(q), True)
    if not blocks.tma:
        return 0
    programs = {3: -(-N // blocks.block_m) * heads, 4: max(-(-N // blocks.block_m), -(-N // blocks.for_dkdv().block_n))
                * heads}
    return max(128 * count * n for count, n in programs.items())


def test_additive_attention_holds_no_hidden_tensor(rng):
    """Forward and backward of the additive step peak below what the design holds, summed from
    the shapes: the outputs, the fp32 projections [B, T, A] and their gradients, score-sized
    fp32 buffers, the input gradients and small partial sums; far below the [B, Tq, Tk, A] fp16
    hidden tensor (512 MiB here)."""
    from gpukernels.torch.functional import attention

    B, Tq, Tk, D, A = 16, 32, 2048, 256, 256
    kw = {"device": "cuda", "dtype": torch.float16, "requires_grad": True}
    query, keys, values = torch.randn(B, Tq, D, **kw), torch.randn(B, Tk, D, **kw), torch.randn(B, Tk, D, **kw)
    w_query, w_keys = torch.randn(A, D, **kw) / math.sqrt(D), torch.randn(A, D, **kw) / math.sqrt(D)
    v = torch.randn(A, **kw)
    inputs = (query, keys, values, w_query, w_keys, v)
    g_context = torch.randn(B, Tq, D, device="cuda", dtype=torch.float16)

    def step():
        context, _ = attention(query, keys, values, "additive", None, w_query=w_query, w_keys=w_keys, v=v)
        return torch.autograd.grad(context, inputs, g_context)

    outputs = B * Tq * D * 2 + B * Tq * Tk * 2  # context, weights
    scores = B * Tq * Tk * 4  # the fp32 scores, then dE
    projections = B * (Tq + Tk) * A * (4 + 2)  # qp, kp (fp32) and their gradients (fp16)
    input_grads = sum(x.numel() * 2 for x in inputs)
    partial_sums = B * math.ceil(Tk / 32) * (Tq + A) * 4  # row terms, dv parts
    must_hold = outputs + scores + projections + input_grads + partial_sums
    hidden = B * Tq * Tk * A * 2
    assert must_hold < hidden // 4
    assert _peak_extra_bytes(step) <= must_hold + SLACK


def test_launches_past_65535_heads_and_batch_rows(rng):
    """Z * Hq = 131074 query heads and Z * Hk = 65537 key/value heads (SDPA), B = 65537 batch
    rows (encoder-decoder, one decoder step and a block of two), at tiny lengths: more programs
    than grid axes 1 and 2 hold, against the reference."""
    q = random_tensor(rng, (65537, 2, 2, 16), "float32", "cuda", scale=1.0)
    k, v = (random_tensor(rng, (65537, 1, 3, 16), "float32", "cuda", scale=1.0) for _ in range(2))
    dout = random_tensor(rng, (65537, 2, 2, 16), "float32", "cuda", scale=1.0)
    with gk.use_backend("triton"):
        out, lse = gk.scaled_dot_product_attention_forward(q, k, v, enable_gqa=True)
        grads = gk.scaled_dot_product_attention_backward(dout, q, k, v, out, lse, enable_gqa=True)
    args64 = [as_float64(x) for x in (q, k, v)]
    assert_close(out, ref.sdpa_forward(*args64, groups=2)[0], "float32", "reduction")
    for got, want in zip(grads, ref.sdpa_backward(as_float64(dout), *args64, groups=2)):
        assert_close(got, want, "float32", "reduction")
    for Tq in (1, 2):
        B, Tk, D, A = 65537, 3, 16, 8
        query, keys, values = (random_tensor(rng, (B, t, D), "float32", "cuda", scale=1.0) for t in (Tq, Tk, Tk))
        params = {"w_query": random_tensor(rng, (A, D), "float32", "cuda", scale=0.3),
                  "w_keys": random_tensor(rng, (A, D), "float32", "cuda", scale=0.3),
                  "v": random_tensor(rng, (A,), "float32", "cuda", scale=1.0)}
        g_context = random_tensor(rng, (B, Tq, D), "float32", "cuda", scale=1.0)
        with gk.use_backend("triton"):
            context, weights = gk.attention(query, keys, values, "additive", **params)
            grads = gk.attention_backward(g_context, None, query, keys, values, weights, "additive", **params)
        p64 = {name: as_float64(x) for name, x in params.items()}
        args64 = (as_float64(query), as_float64(keys), as_float64(values))
        want_c, want_w = ref.attention_forward(*args64, kind="additive", **p64)
        assert_close(context, want_c, "float32", "reduction")
        assert_close(weights, want_w, "float32", "reduction")
        want = ref.attention_backward(as_float64(g_context), None, *args64, as_float64(weights), kind="additive",
                                      **p64)
        for got, expected in zip(grads, want):
            if expected is not None:
                assert_close(got, expected, "float32", "reduction")
