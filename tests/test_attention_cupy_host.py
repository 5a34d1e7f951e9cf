"""The CuPy attention backend on the CPU: its entry points (the functions the dispatch layer
calls) with NumPy as the array module (NumPy's matmul standing in for cuBLAS) and attention.cu built
with g++ as the launcher, against the float64 reference: scaled dot-product attention (causal,
boolean and additive masks, grouped-query heads, fp32/fp16/bf16) and the encoder-decoder step of
every score kind, forward and backward. Then the kernels through their launch helpers on the edge
cases: row lengths 1..4097 aligned and misaligned, fully masked rows, -inf scores, inputs near 1e4."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import DTYPES, assert_close
from _host_buffers import decode, host_runner, storage
from gpukernels.cupy import attention as cupy_attention
from gpukernels.reference import attention as ref


@pytest.fixture(scope="module")
def run():
    return host_runner(cupy_attention.PROGRAM)


def _make(rng, dtype, *shape, scale=1.0):
    return storage(rng.standard_normal(shape) * scale, dtype)


SDPA_CASES = [
    # (batch dims, Hq, Hk, L, S, E, Ev, mask, causal)
    pytest.param((2,), 2, 2, 7, 11, 16, 16, None, False, id="B2-H2-L7-S11-D16"),
    pytest.param((2,), 2, 2, 9, 5, 8, 12, "bool", False, id="B2-H2-L9-S5-D8-Dv12-bool"),
    pytest.param((1,), 2, 2, 6, 6, 16, 16, "float", True, id="B1-H2-L6-S6-D16-float-causal"),
    pytest.param((2,), 4, 2, 5, 13, 16, 8, None, True, id="B2-Hq4-Hk2-L5-S13-causal-gqa"),
    pytest.param((), 1, 1, 1, 1, 4, 4, None, False, id="L1-S1-D4-rank3"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,hq,hk,L,S,E,Ev,mask_kind,causal", SDPA_CASES)
def test_sdpa_forward_and_backward(run, batch, hq, hk, L, S, E, Ev, mask_kind, causal, dtype, rng):
    (q, q64), (k, k64), (v, v64) = (_make(rng, dtype, *batch, h, n, d) for h, n, d in ((hq, L, E), (hk, S, E),
                                                                                     (hk, S, Ev)))
    mask = None
    if mask_kind == "bool":
        mask = rng.random((L, S)) > 0.4
        mask[1] = False  # a fully masked row
    elif mask_kind == "float":
        mask = rng.standard_normal((L, S)).astype(np.float32)
    groups, scale = hq // hk, (0.3 if mask_kind == "bool" else None)
    kw = dict(is_causal=causal, scale=scale, groups=groups)
    out, lse = cupy_attention.sdpa_forward(q, k, v, mask, run=run, **kw)
    want_out, want_lse = ref.sdpa_forward(q64, k64, v64, mask, **kw)
    assert out.dtype == q.dtype and lse.dtype == np.float32
    assert_close(decode(out), want_out, dtype, "reduction")
    assert_close(lse, want_lse, "float32" if dtype == "float32" else dtype, "reduction")

    do, do64 = _make(rng, dtype, *out.shape)
    grads = cupy_attention.sdpa_backward(do, q, k, v, mask, out, lse, run=run, **kw)
    for got, want, like in zip(grads, ref.sdpa_backward(do64, q64, k64, v64, mask, **kw), (q, k, v)):
        assert got.dtype == like.dtype and got.shape == like.shape
        assert_close(decode(got), want, dtype, "reduction")


def _score_params(rng, kind, dtype, dq, dk, a=5):
    if kind == "general":
        return {"weight": _make(rng, dtype, dq, dk)}
    if kind == "additive":
        return {"w_query": _make(rng, dtype, a, dq), "w_keys": _make(rng, dtype, a, dk), "v": _make(rng, dtype, a)}
    return {}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_rank", [None, 2, 3])
@pytest.mark.parametrize("kind", ["dot", "scaled_dot", "general", "additive"])
def test_encoder_decoder_attention_forward_and_backward(run, kind, mask_rank, dtype, rng):
    B, Tq, Tk, Dq, Dk, Dv = 2, 3, 7, 6, 5 if kind == "general" else 6, 4
    (query, q64), (keys, k64), (values, v64) = (_make(rng, dtype, B, n, d) for n, d in ((Tq, Dq), (Tk, Dk),
                                                                                        (Tk, Dv)))
    params = _score_params(rng, kind, dtype, Dq, Dk)
    p16 = {name: pair[0] for name, pair in params.items()}
    p64 = {name: pair[1] for name, pair in params.items()}
    mask = None
    if mask_rank == 2:
        mask = rng.random((B, Tk)) > 0.3
        mask[1] = False  # a batch entry with every key masked
    elif mask_rank == 3:
        mask = rng.random((B, Tq, Tk)) > 0.3

    scores = cupy_attention.attention_scores(query, keys, kind=kind, run=run, **p16)
    assert_close(decode(scores), ref.attention_scores(q64, k64, kind=kind, **p64), dtype, "reduction")
    context, weights = cupy_attention.attention_forward(query, keys, values, mask, kind=kind, run=run, **p16)
    want_context, want_weights = ref.attention_forward(q64, k64, v64, mask, kind=kind, **p64)
    assert_close(decode(context), want_context, dtype, "reduction")
    assert_close(decode(weights), want_weights, dtype, "reduction")

    (dc, dc64), (dw, dw64) = _make(rng, dtype, B, Tq, Dv), _make(rng, dtype, B, Tq, Tk)
    w64 = decode(weights)
    got = cupy_attention.attention_backward(dc, dw, query, keys, values, weights, kind=kind, run=run, **p16)
    want = ref.attention_backward(dc64, dw64, q64, k64, v64, w64, kind=kind, **p64)
    for index, (g, w) in enumerate(zip(got, want)):
        assert (g is None) == (w is None), f"gradient {index}"
        if w is not None:
            assert g.dtype == query.dtype, f"gradient {index}"
            assert_close(decode(g), w, dtype, "reduction")

    (de, de64) = _make(rng, dtype, B, Tq, Tk)
    got = cupy_attention.attention_scores_backward(de, query, keys, kind=kind, run=run, **p16)
    for g, w in zip(got, ref.attention_scores_backward(de64, q64, k64, kind=kind, **p64)):
        assert (g is None) == (w is None)
        if w is not None:
            assert_close(decode(g), w, dtype, "reduction")


# ---------------------------------------------------------------------------------------------
# The kernels through their launch helpers


def _buffer(values: np.ndarray, misalign: bool = False) -> np.ndarray:
    return storage(values, "float32", misalign)[0]


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("n", [1, 7, 1000, 4097])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_softmax_rows_and_backward(run, n, masked, misalign, rng):
    rows = 5
    scores = rng.standard_normal((rows, n)) * 3
    scores[0] *= 1e4 / 3  # inputs around 1e4
    if n > 2:
        scores[1, 1] = -np.inf  # an additive mask's -inf
    keep = None
    if masked:
        keep = rng.random((rows, n)) > 0.3
        keep[2] = False  # a fully masked row
        keep[3, 0] = True
    s = _buffer(scores, misalign)
    s64 = s.astype(np.float64)
    keep_bytes = None if keep is None else np.ascontiguousarray(keep, dtype=np.uint8)
    lse = run.xp.empty(rows, dtype=np.float32)
    run.launch(cupy_attention.softmax_rows_launch(s, keep_bytes, lse))
    want_p, want_lse = ref._masked_softmax(s64, keep)
    assert_close(s, want_p, "float32", "reduction")
    assert_close(lse, want_lse, "float32", "reduction")
    if masked:
        assert (s[2] == 0).all() and np.isneginf(lse[2])

    dp = _buffer(rng.standard_normal((rows, n)), misalign)
    want_ds = ref._softmax_backward(dp.astype(np.float64), s.astype(np.float64))
    run.launch(cupy_attention.softmax_backward_rows_launch(s, dp))
    assert_close(dp, want_ds, "float32", "reduction")


@pytest.mark.parametrize("A", [1, 5, 8, 37])
def test_additive_scores_and_gradients(run, A, rng):
    B, Tq, Tk = 2, 3, 11
    qa, kb = _buffer(rng.standard_normal((B, Tq, A))), _buffer(rng.standard_normal((B, Tk, A)))
    v, de = _buffer(rng.standard_normal(A)), _buffer(rng.standard_normal((B, Tq, Tk)))
    eye = np.eye(A)
    args64 = dict(w_query=eye, w_keys=eye, v=v.astype(np.float64), kind="additive")
    xp = run.xp

    e = xp.empty((B, Tq, Tk), dtype=np.float32)
    run.launch(cupy_attention.additive_scores_launch(qa, kb, v, e))
    assert_close(e, ref.attention_scores(qa.astype(np.float64), kb.astype(np.float64), **args64), "float32",
                 "reduction")

    d_qa, d_v_rows, d_kb = xp.empty_like(qa), xp.empty_like(qa), xp.empty_like(kb)
    run.launch(cupy_attention.additive_backward_query_launch(qa, kb, v, de, d_qa, d_v_rows))
    run.launch(cupy_attention.additive_backward_keys_launch(qa, kb, v, de, d_kb))
    want_dq, want_dk, _, _, _, want_dv = ref.attention_scores_backward(
        de.astype(np.float64), qa.astype(np.float64), kb.astype(np.float64), **args64)
    assert_close(d_qa, want_dq, "float32", "reduction")
    assert_close(d_kb, want_dk, "float32", "reduction")
    assert_close(d_v_rows.sum(axis=(0, 1)), want_dv, "float32", "reduction")


def test_no_launch_without_work():
    empty = np.empty((0, 4), np.float32)
    assert cupy_attention.softmax_rows_launch(empty, None, np.empty(0, np.float32)) is None
    assert cupy_attention.additive_scores_launch(np.empty((2, 3, 0), np.float32), np.empty((2, 0, 0), np.float32),
                                                 np.empty(0, np.float32), np.empty((2, 3, 0), np.float32)) is None


def test_bfloat16_conversions_of_the_cupy_glue():
    """The cupy module's bfloat16 <-> float32 conversions, run with numpy (same array API)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from gpukernels.cupy.attention import from_float32, to_float32

    values = np.array([1.5, -2.0, 3.0e38, 1e-40, 0.1, np.inf, -np.inf, np.nan, 65504.0, 3.3895e38], dtype=np.float32)
    bf = values.astype(ml_dtypes.bfloat16)  # ml_dtypes rounds to nearest even
    back = to_float32(bf, np)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, bf.astype(np.float32))
    rounded = from_float32(values, bf.dtype, np)
    assert rounded.dtype == bf.dtype
    np.testing.assert_array_equal(rounded.view(np.uint16)[~np.isnan(values)], bf.view(np.uint16)[~np.isnan(values)])
    assert np.isnan(rounded.astype(np.float32)[np.isnan(values)]).all()
    ties = np.array([1.00390625, 1.01171875], dtype=np.float32)  # exactly halfway: to even
    want = ties.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(from_float32(ties, bf.dtype, np).astype(np.float32), want)
