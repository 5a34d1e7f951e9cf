"""Bad arguments to the attention ops raise TypeError/ValueError naming the argument, before any
backend is chosen (so also when the backend could not run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from conftest import DEVICE


def _qkv(L=4, S=5, E=8, Ev=8, hq=2, hk=2, dtype=torch.float32):
    return torch.randn(1, hq, L, E, dtype=dtype), torch.randn(1, hk, S, E, dtype=dtype), torch.randn(1, hk, S, Ev,
                                                                                                     dtype=dtype)


@pytest.mark.parametrize("change,error,match", [
    (lambda q, k, v: (q, k[..., :7], v), ValueError, "key has shape"),
    (lambda q, k, v: (q, k, v[..., :4, :]), ValueError, "value has shape"),
    (lambda q, k, v: (q, k[0], v[0]), ValueError, "same number of dims"),
    (lambda q, k, v: (q[0, 0, 0], k, v), ValueError, "query must have at least 2 dims"),
    (lambda q, k, v: (q, k.double(), v), TypeError, "key has dtype float64"),
    (lambda q, k, v: (q.int(), k, v), TypeError, "query has dtype int32"),
    (lambda q, k, v: (q, k.numpy(), v), TypeError, "key is a numpy array"),
    (lambda q, k, v: (q, k[:, :1], v[:, :1]), ValueError, "enable_gqa=True"),
], ids=["E", "S", "rank", "1d", "dtype", "int", "library", "heads"])
def test_sdpa_shapes_dtypes_and_libraries(change, error, match):
    with pytest.raises(error, match=match):
        gk.scaled_dot_product_attention(*change(*_qkv()))


def test_sdpa_grouped_query_heads_must_divide():
    q, k, v = _qkv(hq=3, hk=2)
    with pytest.raises(ValueError, match="must divide the query heads"):
        gk.scaled_dot_product_attention(q, k, v, enable_gqa=True)


@pytest.mark.parametrize("mask,error,match", [
    (torch.ones(4, 5, dtype=torch.int64), TypeError, "attn_mask has dtype int64"),
    (torch.ones(4, 5, dtype=torch.float64), TypeError, "attn_mask has dtype float64"),
    (torch.ones(4, 6, dtype=torch.bool), ValueError, "does not broadcast"),
    (torch.ones(3, 1, 4, 5, dtype=torch.bool), ValueError, "does not broadcast"),
    (np.ones((4, 5), dtype=bool), TypeError, "attn_mask is a numpy array"),
    ([[True] * 5] * 4, TypeError, "attn_mask must be"),
], ids=["int", "float64", "S", "batch", "library", "list"])
def test_sdpa_masks(mask, error, match):
    with pytest.raises(error, match=match):
        gk.scaled_dot_product_attention(*_qkv(), attn_mask=mask)


def test_sdpa_options():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="not both"):
        gk.scaled_dot_product_attention(q, k, v, torch.ones(4, 5, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="dropout_p"):
        gk.scaled_dot_product_attention(q, k, v, None, 0.1)
    with pytest.raises(TypeError, match="scale"):
        gk.scaled_dot_product_attention(q, k, v, scale="0.5")
    with pytest.raises(TypeError, match="is_causal"):
        gk.scaled_dot_product_attention(q, k, v, is_causal=1)


def test_sdpa_backward_checks_saved_tensors():
    q, k, v = _qkv()
    out, lse = gk.scaled_dot_product_attention_forward(q, k, v)
    with pytest.raises(ValueError, match="grad_output has shape"):
        gk.scaled_dot_product_attention_backward(out[..., :3, :], q, k, v, out, lse)
    with pytest.raises(ValueError, match="logsumexp has shape"):
        gk.scaled_dot_product_attention_backward(out, q, k, v, out, lse[..., :2])
    with pytest.raises(TypeError, match="logsumexp has dtype"):
        gk.scaled_dot_product_attention_backward(out, q, k, v, out, lse.half())


def test_triton_backend_names_the_unsupported_dtype():
    q, k, v = (t.to(DEVICE) for t in _qkv(dtype=torch.float64))
    with gk.use_backend("triton"), pytest.raises(TypeError, match="float64.*supported: float16, bfloat16, float32"):
        gk.scaled_dot_product_attention(q, k, v)


def _enc_dec(B=2, Tq=3, Tk=5, Dq=4, Dk=4, Dv=6):
    return torch.randn(B, Tq, Dq), torch.randn(B, Tk, Dk), torch.randn(B, Tk, Dv)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"kind": "bilinear"}, ValueError, "kind must be one of"),
    ({"kind": "general"}, ValueError, "needs weight"),
    ({"kind": "general", "weight": torch.randn(4, 5)}, ValueError, "weight has shape"),
    ({"kind": "dot", "weight": torch.randn(4, 4)}, ValueError, "weight is not used"),
    ({"kind": "additive", "w_query": torch.randn(3, 4), "w_keys": torch.randn(3, 4)}, ValueError, "v is missing"),
    ({"kind": "additive", "w_query": torch.randn(3, 4), "w_keys": torch.randn(2, 4), "v": torch.randn(3)},
     ValueError, "w_keys has shape"),
    ({"kind": "additive", "w_query": torch.randn(3, 5), "w_keys": torch.randn(3, 4), "v": torch.randn(3)},
     ValueError, "w_query has shape"),
    ({"kind": "additive", "w_query": torch.randn(3, 4), "w_keys": torch.randn(3, 4), "v": torch.randn(4)},
     ValueError, "v has shape"),
    ({"mask": torch.ones(2, 5)}, TypeError, "mask has dtype float32"),
    ({"mask": torch.ones(2, 4, dtype=torch.bool)}, ValueError, "mask has shape"),
    ({"mask": torch.ones(2, 2, 5, dtype=torch.bool)}, ValueError, "mask has shape"),
], ids=["kind", "no-weight", "weight-shape", "unused-weight", "no-v", "w_keys", "w_query", "v", "mask-dtype",
        "mask-Tk", "mask-Tq"])
def test_attention_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        gk.attention(*_enc_dec(), **kwargs)


def test_attention_shapes():
    query, keys, values = _enc_dec()
    with pytest.raises(ValueError, match="values has shape"):
        gk.attention(query, keys, values[:, :4])
    with pytest.raises(ValueError, match="keys must be"):
        gk.attention(query, keys[:1], values[:1])
    with pytest.raises(ValueError, match="equal feature size"):
        gk.attention(query, keys[..., :3], values)
    with pytest.raises(ValueError, match="query must be"):
        gk.attention_scores(query[0], keys)
    with pytest.raises(ValueError, match="grad_scores has shape"):
        gk.attention_scores_backward(torch.ones(2, 3, 4), query, keys)
    with pytest.raises(ValueError, match="weights has shape"):
        gk.attention_backward(torch.ones(2, 3, 6), None, query, keys, values, torch.ones(2, 3, 4))
