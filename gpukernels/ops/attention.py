"""Attention: PyTorch's scaled dot-product attention, and the encoder-decoder attention step.

``scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
is_causal=False, *, scale=None, enable_gqa=False)`` is ``F.scaled_dot_product_attention``:
query (..., Hq, L, E), key (..., Hk, S, E), value (..., Hk, S, Ev) -> (..., Hq, L, Ev);
``attn_mask`` broadcastable to (..., Hq, L, S), boolean (True = the position takes part) or of
the query's dtype (added to the scores); ``is_causal`` keeps key j for query i when j <= i (top-
left aligned, also for L != S); ``scale`` defaults to 1/sqrt(E); ``enable_gqa`` lets Hk divide Hq
(query head h reads key/value head h // (Hq / Hk)). A query row with no position left gives
zeros, and zero gradients, as PyTorch's math backend on CPU does. Dropout is not implemented:
``dropout_p`` is there so positional calls match PyTorch, and must be 0.

The encoder-decoder step (Bahdanau / Luong; PyTorch has no such op) for decoder states
``query`` s (B, Tq, Dq), encoder ``keys`` h (B, Tk, Dk) and ``values`` (B, Tk, Dv; often the
same tensor as ``keys``):

    e_ij = a(s_i, h_j),  alpha_ij = softmax_j(e_ij) over the unmasked j,  c_i = sum_j alpha_ij v_j

with the score function ``a`` chosen by ``kind``:

    "dot"         s . h                         (Dq == Dk)
    "scaled_dot"  s . h / sqrt(Dk)              (Dq == Dk)
    "general"     s^T W h                       weight W: (Dq, Dk)
    "additive"    v^T tanh(W_q s + W_k h)       w_query W_q: (A, Dq), w_keys W_k: (A, Dk), v: (A,)

(W_q and W_k are laid out as ``nn.Linear(D, A).weight``.) ``mask`` is boolean, (B, Tk) or
(B, Tq, Tk), True = the encoder position takes part; a row with nothing left gives zero weights
and a zero context. ``attention`` returns ``(context (B, Tq, Dv), weights (B, Tq, Tk))``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._dispatch import array_library, call
from ._checks import check_array, check_choice, check_float, check_match, check_real_number, dtype_name

SCORE_KINDS = ("dot", "scaled_dot", "general", "additive")
FAMILY = "attention"


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in x.shape)


def _run(op: str, arrays: tuple, params: dict, templates: tuple) -> tuple:
    """Like ``_dispatch.call``, but each result comes back shaped like its own template (the
    log-sum-exp stays float32 whatever the storage dtype). A None template passes None."""
    return call(FAMILY, op, arrays, params, returns_like=templates)


def _float32_template(x: Any) -> Any:
    """An empty float32 (float64 for float64 inputs) array of the library and device of ``x``."""
    name = "float64" if dtype_name(x) == "float64" else "float32"
    library = array_library(x)
    if library == "torch":
        import torch

        return x.new_empty(0, dtype=getattr(torch, name))
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(x.device.id):
            return cupy.empty(0, dtype=name)
    return np.empty(0, dtype=name)


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention


def _check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> int:
    """Validate the arguments of scaled_dot_product_attention; return the GQA group size."""
    check_float(query, "query")
    check_match("query", query, "key", key)
    check_match("query", query, "value", value)
    q, k, v = _shape(query), _shape(key), _shape(value)
    for name, shape in (("query", q), ("key", k), ("value", v)):
        if len(shape) < 2:
            raise ValueError(f"{name} must have at least 2 dims (..., length, features), got shape {shape}")
    if not len(q) == len(k) == len(v):
        raise ValueError(f"query, key and value must have the same number of dims, got shapes {q}, {k} and {v}")
    if k[-1] != q[-1]:
        raise ValueError(f"key has shape {k} but query has shape {q}: their last dims (E) must match")
    if v[:-1] != k[:-1]:
        raise ValueError(f"value has shape {v} but key has shape {k}: all dims but the last must match")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be a bool, got {type(enable_gqa).__name__}")
    groups = 1
    if q[:-2] != k[:-2]:
        heads_match = len(q) >= 3 and q[:-3] == k[:-3] and k[-3] > 0 and q[-3] % k[-3] == 0
        if not (enable_gqa and heads_match):
            hint = " (with enable_gqa=True the key/value heads (dim -3) must divide the query heads)" if enable_gqa \
                else " (pass enable_gqa=True for grouped-query attention)"
            raise ValueError(f"query has shape {q} but key has shape {k}: their leading dims must match{hint}")
        groups = q[-3] // k[-3]
    if check_real_number(dropout_p, "dropout_p") != 0.0:
        raise ValueError(f"dropout_p={dropout_p}: dropout is not implemented, dropout_p must be 0.0")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if scale is not None:
        check_real_number(scale, "scale")
    if attn_mask is not None:
        if is_causal:
            raise ValueError("pass either attn_mask or is_causal=True, not both (as in PyTorch)")
        check_array(attn_mask, "attn_mask")
        if dtype_name(attn_mask) != "bool":
            if dtype_name(attn_mask) != dtype_name(query):
                raise TypeError(
                    f"attn_mask has dtype {dtype_name(attn_mask)}; it must be bool or the query's dtype "
                    f"({dtype_name(query)})")
        check_match_device("query", query, "attn_mask", attn_mask)
        scores = (*q[:-1], k[-2])
        try:
            if np.broadcast_shapes(_shape(attn_mask), scores) != scores:
                raise ValueError
        except ValueError:
            raise ValueError(f"attn_mask has shape {_shape(attn_mask)}, which does not broadcast to the scores' "
                             f"shape {scores} (..., L, S)") from None
    return groups


def check_match_device(reference_name: str, reference: Any, name: str, x: Any) -> None:
    """Same library and device (any dtype)."""
    if array_library(x) != array_library(reference):
        raise TypeError(f"{name} is a {array_library(x)} array but {reference_name} is a "
                        f"{array_library(reference)} array; pass arrays of one library")
    from ._checks import device_name

    if device_name(x) != device_name(reference):
        raise ValueError(f"{name} is on {device_name(x)} but {reference_name} is on {device_name(reference)}")


def scaled_dot_product_attention_forward(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *,
                                         scale=None, enable_gqa=False):
    """``(output, logsumexp)``: the attention output and the row log-sum-exp of the scaled,
    masked scores (..., Hq, L), float32 (-inf for rows with no position left); the backward
    recomputes the probabilities from it."""
    groups = _check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    params = {"is_causal": is_causal, "scale": None if scale is None else float(scale), "groups": groups}
    return _run("sdpa_forward", (query, key, value, attn_mask), params, (query, _float32_template(query)))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *,
                                 scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` (see the module docstring)."""
    return scaled_dot_product_attention_forward(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                                                enable_gqa=enable_gqa)[0]


def scaled_dot_product_attention_backward(grad_output, query, key, value, output, logsumexp, attn_mask=None,
                                          is_causal=False, *, scale=None, enable_gqa=False):
    """``(grad_query, grad_key, grad_value)`` given the forward's ``output`` and ``logsumexp``."""
    groups = _check_sdpa(query, key, value, attn_mask, 0.0, is_causal, scale, enable_gqa)
    out_shape = (*_shape(query)[:-1], _shape(value)[-1])
    check_match("query", query, "grad_output", grad_output)
    check_match("query", query, "output", output)
    for name, x in (("grad_output", grad_output), ("output", output)):
        if _shape(x) != out_shape:
            raise ValueError(f"{name} has shape {_shape(x)} but the attention output has shape {out_shape}")
    check_float(logsumexp, "logsumexp", ("float32", "float64"))
    if _shape(logsumexp) != out_shape[:-1]:
        raise ValueError(f"logsumexp has shape {_shape(logsumexp)}; expected {out_shape[:-1]}")
    params = {"is_causal": is_causal, "scale": None if scale is None else float(scale), "groups": groups}
    return _run("sdpa_backward", (grad_output, query, key, value, attn_mask, output, logsumexp), params,
                (query, key, value))


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention


def _check_scores(query, keys, kind, weight, w_query, w_keys, v) -> None:
    check_choice(kind, "kind", SCORE_KINDS)
    check_float(query, "query")
    check_match("query", query, "keys", keys)
    q, k = _shape(query), _shape(keys)
    if len(q) != 3:
        raise ValueError(f"query must be (batch, query length, query features), got shape {q}")
    if len(k) != 3 or k[0] != q[0]:
        raise ValueError(f"keys must be (batch, key length, key features) with query's batch {q[0]}, got shape {k}")
    given = {"weight": weight, "w_query": w_query, "w_keys": w_keys, "v": v}
    needed = {"general": ("weight",), "additive": ("w_query", "w_keys", "v")}.get(kind, ())
    for name, x in given.items():
        if name in needed and x is None:
            raise ValueError(f"kind={kind!r} needs {', '.join(needed)}; {name} is missing")
        if name not in needed and x is not None:
            raise ValueError(f"{name} is not used by kind={kind!r} (weight: 'general'; w_query, w_keys, v: 'additive')")
        if x is not None:
            check_match("query", query, name, x)
    if kind in ("dot", "scaled_dot") and q[2] != k[2]:
        raise ValueError(f"kind={kind!r} needs query and keys of equal feature size, got shapes {q} and {k}")
    if kind == "general" and _shape(weight) != (q[2], k[2]):
        raise ValueError(f"weight has shape {_shape(weight)}; kind='general' needs (query features, key features) "
                         f"= {(q[2], k[2])}")
    if kind == "additive":
        wq, wk, vv = _shape(w_query), _shape(w_keys), _shape(v)
        if len(wq) != 2 or wq[1] != q[2]:
            raise ValueError(f"w_query has shape {wq}; expected (attention size, {q[2]})")
        if wk != (wq[0], k[2]):
            raise ValueError(f"w_keys has shape {wk}; expected (attention size, {k[2]}) = {(wq[0], k[2])}")
        if vv != (wq[0],):
            raise ValueError(f"v has shape {vv}; expected (attention size,) = {(wq[0],)}")


def _check_values_and_mask(query, keys, values, mask) -> None:
    check_match("query", query, "values", values)
    k, val = _shape(keys), _shape(values)
    if len(val) != 3 or val[:2] != k[:2]:
        raise ValueError(f"values has shape {val} but keys has shape {k}: (batch, key length) must match")
    if mask is not None:
        check_array(mask, "mask")
        if dtype_name(mask) != "bool":
            raise TypeError(f"mask has dtype {dtype_name(mask)}; it must be bool (True = the position takes part)")
        check_match_device("query", query, "mask", mask)
        b, tq, tk = _shape(query)[0], _shape(query)[1], k[1]
        if _shape(mask) not in ((b, tk), (b, tq, tk)):
            raise ValueError(f"mask has shape {_shape(mask)}; expected (batch, key length) = {(b, tk)} or "
                             f"(batch, query length, key length) = {(b, tq, tk)}")


def attention_scores(query, keys, kind="dot", weight=None, w_query=None, w_keys=None, v=None):
    """The alignment scores ``e`` (B, Tq, Tk) for ``kind`` (see the module docstring)."""
    _check_scores(query, keys, kind, weight, w_query, w_keys, v)
    return _run("attention_scores", (query, keys, weight, w_query, w_keys, v), {"kind": kind}, (query,))[0]


def attention_scores_backward(grad_scores, query, keys, kind="dot", weight=None, w_query=None, w_keys=None, v=None):
    """Gradients of ``(query, keys, weight, w_query, w_keys, v)`` from ``grad_scores``; None
    for the parameters ``kind`` does not use."""
    _check_scores(query, keys, kind, weight, w_query, w_keys, v)
    check_match("query", query, "grad_scores", grad_scores)
    expected = (_shape(query)[0], _shape(query)[1], _shape(keys)[1])
    if _shape(grad_scores) != expected:
        raise ValueError(f"grad_scores has shape {_shape(grad_scores)}; expected {expected}")
    return _run("attention_scores_backward", (grad_scores, query, keys, weight, w_query, w_keys, v), {"kind": kind},
                (query, keys, weight, w_query, w_keys, v))


def attention(query, keys, values, kind="dot", mask=None, weight=None, w_query=None, w_keys=None, v=None):
    """One encoder-decoder attention step: ``(context (B, Tq, Dv), weights (B, Tq, Tk))``."""
    _check_scores(query, keys, kind, weight, w_query, w_keys, v)
    _check_values_and_mask(query, keys, values, mask)
    return _run("attention_forward", (query, keys, values, mask, weight, w_query, w_keys, v), {"kind": kind},
                (query, query))


def attention_backward(grad_context, grad_weights, query, keys, values, weights, kind="dot", weight=None,
                       w_query=None, w_keys=None, v=None):
    """Gradients of ``(query, keys, values, weight, w_query, w_keys, v)`` (None for the
    parameters ``kind`` does not use) given the forward's ``weights``; ``grad_weights`` may be
    None when the weights did not reach the loss."""
    _check_scores(query, keys, kind, weight, w_query, w_keys, v)
    _check_values_and_mask(query, keys, values, None)
    b, tq, tk = _shape(query)[0], _shape(query)[1], _shape(keys)[1]
    for name, x, shape in (("grad_context", grad_context, (b, tq, _shape(values)[2])),
                           ("weights", weights, (b, tq, tk)), ("grad_weights", grad_weights, (b, tq, tk))):
        if x is None and name == "grad_weights":
            continue
        check_match("query", query, name, x)
        if _shape(x) != shape:
            raise ValueError(f"{name} has shape {_shape(x)}; expected {shape}")
    return _run("attention_backward", (grad_context, grad_weights, query, keys, values, weights, weight, w_query,
                                       w_keys, v), {"kind": kind}, (query, keys, values, weight, w_query, w_keys, v))


__all__ = [
    "scaled_dot_product_attention", "scaled_dot_product_attention_forward", "scaled_dot_product_attention_backward",
    "attention_scores", "attention_scores_backward", "attention", "attention_backward",
]
