"""The Triton attention kernels against the float64 reference: in Triton's interpreter on CPU
tensors here, on the GPU where there is one (same tests). Outputs are NaN-poisoned (conftest)."""

from __future__ import annotations

import math

import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from conftest import HAS_CUDA
from gpukernels.reference import attention as ref

DEVICE = "cuda" if HAS_CUDA else "cpu"
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _mask(rng, kind, shape, dtype):
    if kind == "bool":
        mask = torch.from_numpy(rng.random(shape) > 0.4)
        mask[..., 2, :] = False  # a fully masked query row
        return mask.to(DEVICE)
    if kind == "float":
        return random_tensor(rng, shape, dtype, DEVICE, scale=1.0)
    return None


def _np(x):
    if x is None:
        return None
    return x.cpu().numpy() if x.dtype == torch.bool else as_float64(x)


# (B, Hq, Hk, L, S, E, Ev, mask kind, mask shape, causal)
SDPA_SHAPES = [
    ("B2-H3-L37-S53-D16", 2, 3, 3, 37, 53, 16, 16, None, None, False),
    ("B2-H3-L37-S53-D64-bool", 2, 3, 3, 37, 53, 64, 64, "bool", "LS", False),
    ("B2-H3-L37-S53-D40-Dv24-float", 2, 3, 3, 37, 53, 40, 24, "float", "B1LS", False),
    ("B2-Hq4-Hk2-L53-S37-D16-causal-gqa", 2, 4, 2, 53, 37, 16, 16, None, None, True),
    ("B1-H2-L19-S67-D32-causal", 1, 2, 2, 19, 67, 32, 32, None, None, True),
    ("B1-Hq3-Hk1-L1-S1-D16-gqa", 1, 3, 1, 1, 1, 16, 16, None, None, False),
]
SDPA_CASES = [pytest.param(*case[1:], dtype, id=f"{case[0]}-{SHORT[dtype]}")
              for case in SDPA_SHAPES for dtype in DTYPES]


def _mask_shape(which, B, H, L, S):
    return {"LS": (L, S), "B1LS": (B, 1, L, S), "BHLS": (B, H, L, S)}[which]


@pytest.mark.parametrize("B,hq,hk,L,S,E,Ev,mask_kind,mask_shape,causal,dtype", SDPA_CASES)
def test_sdpa_forward_and_backward(B, hq, hk, L, S, E, Ev, mask_kind, mask_shape, causal, dtype, rng):
    q = random_tensor(rng, (B, hq, L, E), dtype, DEVICE, scale=1.0)
    k = random_tensor(rng, (B, hk, S, E), dtype, DEVICE, scale=1.0)
    v = random_tensor(rng, (B, hk, S, Ev), dtype, DEVICE, scale=1.0)
    mask = _mask(rng, mask_kind, _mask_shape(mask_shape, B, hq, L, S), dtype) if mask_kind else None
    dout = random_tensor(rng, (B, hq, L, Ev), dtype, DEVICE, scale=1.0)
    gqa = hq != hk
    with gk.use_backend("triton"):
        out, lse = gk.scaled_dot_product_attention_forward(q, k, v, mask, is_causal=causal, enable_gqa=gqa)
        grads = gk.scaled_dot_product_attention_backward(dout, q, k, v, out, lse, mask, causal, enable_gqa=gqa)
    assert out.dtype == q.dtype and out.shape == (B, hq, L, Ev) and lse.dtype == torch.float32
    groups = hq // hk
    want_out, want_lse = ref.sdpa_forward(as_float64(q), as_float64(k), as_float64(v), _np(mask), is_causal=causal,
                                          groups=groups)
    assert_close(out, want_out, dtype, "reduction")
    assert_close(lse, want_lse, "float32", "reduction")  # lse is fp32 whatever the storage
    want = ref.sdpa_backward(as_float64(dout), as_float64(q), as_float64(k), as_float64(v), _np(mask),
                             is_causal=causal, groups=groups)
    for name, got, expected in zip(("dq", "dk", "dv"), grads, want):
        assert got.dtype == q.dtype
        assert_close(got, expected, dtype, "reduction"), name
    if mask_kind == "bool":
        assert (out[..., 2, :] == 0).all() and torch.isneginf(lse[..., 2]).all() and (grads[0][..., 2, :] == 0).all()


@pytest.mark.parametrize("E", [16, 128, 256])
def test_sdpa_every_head_dim_tier(E, rng):
    """Each tile-size tier of the launch heuristic on a small problem (fp16 and fp32)."""
    for dtype in ("float16", "float32"):
        q, k, v = (random_tensor(rng, (1, 1, 21, E), dtype, DEVICE, scale=1.0) for _ in range(3))
        dout = random_tensor(rng, (1, 1, 21, E), dtype, DEVICE, scale=1.0)
        with gk.use_backend("triton"):
            out, lse = gk.scaled_dot_product_attention_forward(q, k, v, is_causal=True)
            grads = gk.scaled_dot_product_attention_backward(dout, q, k, v, out, lse, None, True)
        args = [as_float64(x) for x in (q, k, v)]
        assert_close(out, ref.sdpa_forward(*args, is_causal=True)[0], dtype, "reduction")
        for got, want in zip(grads, ref.sdpa_backward(as_float64(dout), *args, is_causal=True)):
            assert_close(got, want, dtype, "reduction")


def test_sdpa_non_contiguous_inputs_and_explicit_scale(rng):
    base = random_tensor(rng, (2, 29, 3, 16), "float32", DEVICE, scale=1.0)
    q = base.transpose(1, 2)  # (B, H, L, E) view of a (B, L, H, E) tensor, as models make them
    k = random_tensor(rng, (2, 3, 16, 31), "float32", DEVICE, scale=1.0).transpose(-1, -2)
    v = random_tensor(rng, (2, 3, 31, 8), "float32", DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        out = gk.scaled_dot_product_attention(q, k, v, scale=0.7)
    assert_close(out, ref.sdpa_forward(as_float64(q), as_float64(k), as_float64(v), scale=0.7)[0], "float32",
                 "reduction")


def test_sdpa_large_inputs_stay_finite(rng):
    q, k, v = (random_tensor(rng, (1, 2, 17, 16), "float32", DEVICE, scale=1e4) for _ in range(3))
    with gk.use_backend("triton"):
        out = gk.scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all()
    assert_close(out, ref.sdpa_forward(as_float64(q), as_float64(k), as_float64(v))[0], "float32", "reduction")


@pytest.mark.parametrize("L,S", [(0, 5), (5, 0)])
def test_sdpa_empty_lengths(L, S, rng):
    q = random_tensor(rng, (1, 2, L, 16), "float32", DEVICE)
    k, v = (random_tensor(rng, (1, 2, S, 16), "float32", DEVICE) for _ in range(2))
    with gk.use_backend("triton"):
        out, lse = gk.scaled_dot_product_attention_forward(q, k, v)
        grads = gk.scaled_dot_product_attention_backward(torch.ones_like(out), q, k, v, out, lse)
    assert out.shape == (1, 2, L, 16) and (out == 0).all()
    assert all((g == 0).all() and g.shape == x.shape for g, x in zip(grads, (q, k, v)))


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention

KINDS = ("dot", "scaled_dot", "general", "additive")


def _score_params(rng, kind, dq, dk, a, dtype):
    if kind == "general":
        return {"weight": random_tensor(rng, (dq, dk), dtype, DEVICE, scale=0.3)}
    if kind == "additive":
        return {"w_query": random_tensor(rng, (a, dq), dtype, DEVICE, scale=0.3),
                "w_keys": random_tensor(rng, (a, dk), dtype, DEVICE, scale=0.3),
                "v": random_tensor(rng, (a,), dtype, DEVICE, scale=1.0)}
    return {}


# (id, B, Tq, Tk, Dk, Dq for general/additive, Dv, A, mask shape)
ENC_DEC_SHAPES = [
    ("B2-Tq5-Tk37-Dk24-Dv40-A20-maskBTk", 2, 5, 37, 24, 12, 40, 20, "BTk"),
    ("B2-Tq1-Tk45-Dk40-Dv70-A19-maskBTqTk", 2, 1, 45, 40, 17, 70, 19, "BTqTk"),
    ("B1-Tq19-Tk1-Dk16-Dv8-A5", 1, 19, 1, 16, 16, 8, 5, None),
]
# Every dtype on the first shape; the others (one decoder step, a single key) in fp32, to keep
# the interpreter's time in check.
ENC_DEC_CASES = [pytest.param(kind, *shape[1:], dtype, id=f"{shape[0]}-{kind}-{SHORT[dtype]}")
                 for index, shape in enumerate(ENC_DEC_SHAPES) for kind in KINDS
                 for dtype in (DTYPES if index == 0 else ("float32",))]


@pytest.mark.parametrize("kind,B,Tq,Tk,Dk,Dq,Dv,A,mask_shape,dtype", ENC_DEC_CASES)
def test_encoder_decoder_attention_forward_and_backward(kind, B, Tq, Tk, Dk, Dq, Dv, A, mask_shape, dtype, rng):
    Dq = Dk if kind in ("dot", "scaled_dot") else Dq
    scale = 1.0 / math.sqrt(Dk)  # keep unscaled dot scores moderate, as trained models do
    query = random_tensor(rng, (B, Tq, Dq), dtype, DEVICE, scale=1.0)
    keys = random_tensor(rng, (B, Tk, Dk), dtype, DEVICE, scale=scale if kind == "dot" else 1.0)
    values = random_tensor(rng, (B, Tk, Dv), dtype, DEVICE, scale=1.0)
    params = _score_params(rng, kind, Dq, Dk, A, dtype)
    mask = None
    if mask_shape == "BTk":
        mask = torch.from_numpy(rng.random((B, Tk)) > 0.3)
        mask[-1] = False  # a fully masked batch row
    elif mask_shape == "BTqTk":
        mask = torch.from_numpy(rng.random((B, Tq, Tk)) > 0.3)
        mask[0, -1] = False
    mask = None if mask is None else mask.to(DEVICE)
    g_context = random_tensor(rng, (B, Tq, Dv), dtype, DEVICE, scale=1.0)
    g_weights = random_tensor(rng, (B, Tq, Tk), dtype, DEVICE, scale=1.0)
    g_scores = random_tensor(rng, (B, Tq, Tk), dtype, DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        scores = gk.attention_scores(query, keys, kind, **params)
        score_grads = gk.attention_scores_backward(g_scores, query, keys, kind, **params)
        context, weights = gk.attention(query, keys, values, kind, mask, **params)
        grads = gk.attention_backward(g_context, g_weights, query, keys, values, weights, kind, **params)
        grads_no_dw = gk.attention_backward(g_context, None, query, keys, values, weights, kind, **params)

    p64 = {name: as_float64(x) for name, x in params.items()}
    args = (as_float64(query), as_float64(keys))
    assert_close(scores, ref.attention_scores(*args, kind=kind, **p64), dtype, "reduction")
    names = ("query", "keys", "weight", "w_query", "w_keys", "v")
    for name, got, want in zip(names, score_grads, ref.attention_scores_backward(as_float64(g_scores), *args,
                                                                                 kind=kind, **p64)):
        assert (got is None) == (want is None), name
        if got is not None:
            assert got.dtype == query.dtype
            assert_close(got, want, dtype, "reduction")

    want_context, want_weights = ref.attention_forward(*args, as_float64(values), _np(mask), kind=kind, **p64)
    assert_close(context, want_context, dtype, "reduction")
    assert_close(weights, want_weights, dtype, "reduction")
    if mask_shape == "BTk":
        assert (weights[-1] == 0).all() and (context[-1] == 0).all()
    # The backward takes the weights the forward stored (in the storage dtype), as the autograd
    # Function passes them: the reference gets the same weights.
    names = ("query", "keys", "values", "weight", "w_query", "w_keys", "v")
    for g_w, result in ((g_weights, grads), (None, grads_no_dw)):
        want = ref.attention_backward(as_float64(g_context), None if g_w is None else as_float64(g_w), *args,
                                      as_float64(values), as_float64(weights), kind=kind, **p64)
        for name, got, expected in zip(names, result, want):
            assert (got is None) == (expected is None), name
            if got is not None:
                assert_close(got, expected, dtype, "reduction")


def test_additive_kernels_allocate_no_hidden_tensor(rng, monkeypatch):
    """Every buffer the triton additive path allocates is O(B T A) or O(B Tq Tk), never B Tq Tk A."""
    B, Tq, Tk, D, A = 2, 9, 33, 8, 24
    query, keys, values = (random_tensor(rng, (B, t, D), "float32", DEVICE) for t in (Tq, Tk, Tk))
    params = _score_params(rng, "additive", D, D, A, "float32")
    sizes = []
    real_empty = torch.empty

    def counting_empty(*shape, **kwargs):
        out = real_empty(*shape, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch, "empty", counting_empty)
    with gk.use_backend("triton"):
        context, weights = gk.attention(query, keys, values, "additive", None, **params)
        gk.attention_backward(torch.ones_like(context), None, query, keys, values, weights, "additive", **params)
    assert sizes and max(sizes) < B * Tq * Tk * A // 4


def test_encoder_decoder_non_contiguous_inputs(rng):
    keys = random_tensor(rng, (16, 2, 23), "float32", DEVICE, scale=0.3).permute(1, 2, 0)  # (B, Tk, Dk) view
    query = random_tensor(rng, (2, 16, 4), "float32", DEVICE).transpose(1, 2)
    values = random_tensor(rng, (2, 6, 23), "float32", DEVICE).transpose(1, 2)
    assert not (keys.is_contiguous() or query.is_contiguous() or values.is_contiguous())
    dc = random_tensor(rng, (2, 6, 4), "float32", DEVICE).transpose(1, 2)
    with gk.use_backend("triton"):
        context, weights = gk.attention(query, keys, values, "scaled_dot")
        grads = gk.attention_backward(dc, None, query, keys, values, weights, "scaled_dot")
    args = [as_float64(x) for x in (query, keys, values)]
    want_c, want_w = ref.attention_forward(*args, kind="scaled_dot")
    assert_close(context, want_c, "float32", "reduction")
    for got, want in zip(grads, ref.attention_backward(as_float64(dc), None, *args, as_float64(weights),
                                                       kind="scaled_dot")):
        if want is not None:
            assert_close(got, want, "float32", "reduction")


def test_compile_gate_covers_every_sdpa_tile_config():
    """Each (padded head dim, storage dtype) the launcher can meet maps to tiles the gate compiles."""
    from gpukernels.triton import attention as tri

    compiled = {(c.name, c.tags["d"], c.tags["block_m"], c.tags.get("block_n"), c.num_warps)
                for c in tri.compile_cases() if c.name.startswith("sdpa")}
    for head_dim in range(1, 257):
        block_d = tri.padded_head_dim(head_dim)
        assert block_d in tri.HEAD_DIMS
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            blocks = tri.sdpa_blocks(block_d, block_d, dtype.itemsize)
            for kernel in ("sdpa_forward", "sdpa_backward_dq", "sdpa_backward_dkdv"):
                key = (kernel, str(block_d), str(blocks.block_m), str(blocks.block_n), blocks.num_warps)
                assert key in compiled, key
            assert ("sdpa_backward_delta", str(block_d), str(blocks.block_m), None, blocks.num_warps) in compiled
