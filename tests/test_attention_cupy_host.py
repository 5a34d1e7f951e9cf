"""The CuPy attention kernels' bodies (attention.cuh) built with g++ and run on the CPU against
the float64 reference: masked softmax rows and their backward on row lengths 1..4097 (aligned
and misaligned rows, fully masked rows, -inf scores, inputs near 1e4), and the additive scores
and their gradients (the reference with identity projections gives d qa and d kb directly)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from _helpers import assert_close
from gpukernels.reference import attention as ref
from gpukernels.tools.verify.host import build

SHIM = Path(__file__).parent / "host" / "attention_host.cpp"


@pytest.fixture(scope="module")
def lib():
    return build(SHIM)


def _buffer(values: np.ndarray, misalign: bool = False) -> np.ndarray:
    """float32 copy of ``values``, 16-byte aligned or deliberately one float off."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    backing = np.empty(flat.size + 8, dtype=np.float32)
    start = (-backing.ctypes.data % 16) // 4 + (1 if misalign else 0)
    out = backing[start:start + flat.size]
    out[...] = flat
    return out.reshape(np.shape(values))


def _p(a):
    return ctypes.c_void_p(a.ctypes.data) if a is not None else ctypes.c_void_p(0)


def _ll(*values):
    return [ctypes.c_longlong(int(v)) for v in values]


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("n", [1, 7, 1000, 4097])
@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
def test_softmax_rows_and_backward(lib, n, masked, misalign, rng):
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
    lse = np.full(rows, np.nan, dtype=np.float32)
    lib.gk_attention_softmax_rows(_p(s), _p(keep_bytes), _p(lse), *_ll(rows, n))
    want_p, want_lse = ref._masked_softmax(s64, keep)
    assert_close(s, want_p, "float32", "reduction")
    assert_close(lse, want_lse, "float32", "reduction")
    if masked:
        assert (s[2] == 0).all() and np.isneginf(lse[2])

    dp = _buffer(rng.standard_normal((rows, n)), misalign)
    want_ds = ref._softmax_backward(dp.astype(np.float64), s.astype(np.float64))
    lib.gk_attention_softmax_backward_rows(_p(s), _p(dp), *_ll(rows, n))
    assert_close(dp, want_ds, "float32", "reduction")


@pytest.mark.parametrize("A", [1, 5, 8, 37])
def test_additive_scores_and_gradients(lib, A, rng):
    B, Tq, Tk = 2, 3, 11
    qa = _buffer(rng.standard_normal((B, Tq, A)))
    kb = _buffer(rng.standard_normal((B, Tk, A)))
    v = _buffer(rng.standard_normal(A))
    de = _buffer(rng.standard_normal((B, Tq, Tk)))
    eye = np.eye(A)
    args64 = dict(w_query=eye, w_keys=eye, v=v.astype(np.float64), kind="additive")

    e = np.full((B, Tq, Tk), np.nan, dtype=np.float32)
    lib.gk_attention_additive_scores(_p(qa), _p(kb), _p(v), _p(e), *_ll(B, Tq, Tk, A))
    assert_close(e, ref.attention_scores(qa.astype(np.float64), kb.astype(np.float64), **args64), "float32",
                 "reduction")

    d_qa = np.full((B, Tq, A), np.nan, dtype=np.float32)
    d_v_rows = np.full((B, Tq, A), np.nan, dtype=np.float32)
    d_kb = np.full((B, Tk, A), np.nan, dtype=np.float32)
    lib.gk_attention_additive_backward_query(_p(qa), _p(kb), _p(v), _p(de), _p(d_qa), _p(d_v_rows),
                                             *_ll(B, Tq, Tk, A))
    lib.gk_attention_additive_backward_keys(_p(qa), _p(kb), _p(v), _p(de), _p(d_kb), *_ll(B, Tq, Tk, A))
    want_dq, want_dk, _, _, _, want_dv = ref.attention_scores_backward(
        de.astype(np.float64), qa.astype(np.float64), kb.astype(np.float64), **args64)
    assert_close(d_qa, want_dq, "float32", "reduction")
    assert_close(d_kb, want_dk, "float32", "reduction")
    assert_close(d_v_rows.sum(axis=(0, 1)), want_dv, "float32", "reduction")


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
