"""Attention as PyTorch operators (see ``_library``).

``gpukernels::scaled_dot_product_attention`` returns the output and the row log-sum-exp (O(L)
per head, no L x S buffer), both saved with the inputs; its backward op recomputes the
probabilities tile by tile. ``gpukernels::attention`` (the encoder-decoder step) saves its
inputs and the weights it returns (an output anyway); ``gpukernels::attention_scores`` its
inputs. Their backward ops return the gradient of every tensor input, the score function's
parameters included (an empty placeholder for a parameter ``kind`` does not use).

Autocast: torch's scaled_dot_product_attention is on its lower-precision list on the CPU and on
CUDA, and so is ours; the encoder-decoder attention and its scores (matmuls and a softmax, which
torch has no single op for) follow the same rule, as their matmuls would.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import attention as _attn
from ._library import LOWER_PRECISION, accumulation_dtype, autocast, autocast_inputs, empty, empty_like_inputs, \
    fresh, fresh_all, op, present


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention


@op("scaled_dot_product_attention")
def _sdpa(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, is_causal: bool,
          scale: float | None, enable_gqa: bool) -> tuple[Tensor, Tensor]:
    out, lse = _attn.scaled_dot_product_attention_forward(query, key, value, attn_mask, 0.0, is_causal,
                                                          scale=scale, enable_gqa=enable_gqa)
    return fresh_all((out, lse), query, key, value, attn_mask)


@_sdpa.register_fake
def _(query, key, value, attn_mask, is_causal, scale, enable_gqa):
    rows = tuple(query.shape[:-1])
    return empty(query, (*rows, value.shape[-1])), empty(query, rows, accumulation_dtype(query))


@op("scaled_dot_product_attention_backward")
def _sdpa_backward(grad_output: Tensor, query: Tensor, key: Tensor, value: Tensor, output: Tensor, logsumexp: Tensor,
                   attn_mask: Tensor | None, is_causal: bool, scale: float | None,
                   enable_gqa: bool) -> tuple[Tensor, Tensor, Tensor]:
    # No .contiguous() on grad_output: the kernels read any strides, and a broadcast gradient
    # (from .sum()) would otherwise become a full (..., L, Ev) copy.
    grads = _attn.scaled_dot_product_attention_backward(grad_output, query, key, value, output, logsumexp, attn_mask,
                                                        is_causal, scale=scale, enable_gqa=enable_gqa)
    return fresh_all(grads, grad_output, query, key, value, output, logsumexp, attn_mask)


@_sdpa_backward.register_fake
def _(grad_output, query, key, value, output, logsumexp, attn_mask, is_causal, scale, enable_gqa):
    return empty(query), empty(key), empty(value)


def _sdpa_setup(ctx, inputs, output):
    query, key, value, attn_mask, *options = inputs
    ctx.save_for_backward(query, key, value, attn_mask, *output)
    ctx.options = options
    ctx.mark_non_differentiable(output[1])


def _sdpa_grad(ctx, grad_output, _grad_logsumexp):
    query, key, value, attn_mask, out, lse = ctx.saved_tensors
    dq, dk, dv = _sdpa_backward(grad_output, query, key, value, out, lse, attn_mask, *ctx.options)
    return dq, dk, dv, None, None, None, None


_sdpa.register_autograd(_sdpa_grad, setup_context=_sdpa_setup)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention`` (``dropout_p`` must be 0; a float
    ``attn_mask`` gets no gradient, so one that requires grad is rejected)."""
    if attn_mask is not None and attn_mask.requires_grad:
        raise ValueError("attn_mask requires grad, but gradients with respect to attn_mask are not computed; "
                         "pass attn_mask.detach() or use torch.nn.functional.scaled_dot_product_attention")
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p={dropout_p}: dropout is not implemented, dropout_p must be 0.0")
    # Cast here as the op's autocast rule would, so the dtype checks see what the op will get.
    query, key, value, attn_mask = autocast_inputs(_AUTOCAST, query, key, value, attn_mask)
    _attn._check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return _sdpa(query, key, value, attn_mask, is_causal, None if scale is None else float(scale), enable_gqa)[0]


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention


def _scores_shape(query, keys):
    return query.shape[0], query.shape[1], keys.shape[1]


@op("attention_scores")
def _scores(query: Tensor, keys: Tensor, kind: str, weight: Tensor | None, w_query: Tensor | None,
            w_keys: Tensor | None, v: Tensor | None) -> Tensor:
    return fresh(_attn.attention_scores(query, keys, kind, weight, w_query, w_keys, v), query, keys)


@_scores.register_fake
def _(query, keys, kind, weight, w_query, w_keys, v):
    return empty(query, _scores_shape(query, keys))


@op("attention_scores_backward")
def _scores_backward(grad_scores: Tensor, query: Tensor, keys: Tensor, kind: str, weight: Tensor | None,
                     w_query: Tensor | None, w_keys: Tensor | None, v: Tensor | None) -> list[Tensor]:
    grads = _attn.attention_scores_backward(grad_scores.contiguous(), query, keys, kind, weight, w_query, w_keys, v)
    return list(fresh_all(grads, grad_scores, query, keys, weight, w_query, w_keys, v))


@_scores_backward.register_fake
def _(grad_scores, query, keys, kind, weight, w_query, w_keys, v):
    return list(empty_like_inputs(query, keys, weight, w_query, w_keys, v))


def _scores_setup(ctx, inputs, output):
    query, keys, kind, *parameters = inputs
    ctx.kind = kind
    ctx.save_for_backward(query, keys, *parameters)


def _scores_grad(ctx, grad_scores):
    query, keys, *parameters = ctx.saved_tensors
    grads = _scores_backward(grad_scores, query, keys, ctx.kind, *parameters)
    dq, dk, *dparameters = present(tuple(grads), (query, keys, *parameters))
    return dq, dk, None, *dparameters


_scores.register_autograd(_scores_grad, setup_context=_scores_setup)


@op("attention")
def _attention(query: Tensor, keys: Tensor, values: Tensor, kind: str, mask: Tensor | None, weight: Tensor | None,
               w_query: Tensor | None, w_keys: Tensor | None, v: Tensor | None) -> tuple[Tensor, Tensor]:
    context, weights = _attn.attention(query, keys, values, kind, mask, weight, w_query, w_keys, v)
    return fresh_all((context, weights), query, keys, values)


@_attention.register_fake
def _(query, keys, values, kind, mask, weight, w_query, w_keys, v):
    b, tq, tk = _scores_shape(query, keys)
    return empty(query, (b, tq, values.shape[2])), empty(query, (b, tq, tk))


@op("attention_backward")
def _attention_backward(grad_context: Tensor, grad_weights: Tensor | None, query: Tensor, keys: Tensor,
                        values: Tensor, weights: Tensor, kind: str, weight: Tensor | None, w_query: Tensor | None,
                        w_keys: Tensor | None, v: Tensor | None) -> list[Tensor]:
    grad_weights = None if grad_weights is None else grad_weights.contiguous()
    grads = _attn.attention_backward(grad_context.contiguous(), grad_weights, query, keys, values, weights, kind,
                                     weight, w_query, w_keys, v)
    return list(fresh_all(grads, grad_context, grad_weights, query, keys, values, weights, weight, w_query, w_keys, v))


@_attention_backward.register_fake
def _(grad_context, grad_weights, query, keys, values, weights, kind, weight, w_query, w_keys, v):
    return list(empty_like_inputs(query, keys, values, weight, w_query, w_keys, v))


def _attention_setup(ctx, inputs, output):
    query, keys, values, kind, mask, *parameters = inputs
    ctx.kind = kind
    ctx.save_for_backward(query, keys, values, output[1], *parameters)


def _attention_grad(ctx, grad_context, grad_weights):
    query, keys, values, weights, *parameters = ctx.saved_tensors
    if grad_context is None:  # only the weights reach the loss
        grad_context = torch.zeros_like(query[..., :1].expand(*query.shape[:2], values.shape[2]))
    grads = _attention_backward(grad_context, grad_weights, query, keys, values, weights, ctx.kind, *parameters)
    dq, dk, dvalues, *dparameters = present(tuple(grads), (query, keys, values, *parameters))
    return dq, dk, dvalues, None, None, *dparameters


_attention.register_autograd(_attention_grad, setup_context=_attention_setup)

# Forward ops only: a backward runs in the dtypes its forward saved, whatever autocast says when
# ``loss.backward()`` is called (torch's own backward ops are on no autocast list either).
_AUTOCAST = {"cpu": LOWER_PRECISION, "cuda": LOWER_PRECISION}
for _op in (_sdpa, _scores, _attention):
    autocast(_op, **_AUTOCAST)


def attention_scores(query, keys, kind="dot", weight=None, w_query=None, w_keys=None, v=None):
    """Differentiable ``gpukernels.attention_scores`` (argument meanings in ``gpukernels.ops.attention``)."""
    query, keys, weight, w_query, w_keys, v = autocast_inputs(_AUTOCAST, query, keys, weight, w_query, w_keys, v)
    _attn._check_scores(query, keys, kind, weight, w_query, w_keys, v)
    return _scores(query, keys, kind, weight, w_query, w_keys, v)


def attention(query, keys, values, kind="dot", mask=None, weight=None, w_query=None, w_keys=None, v=None):
    """Differentiable ``gpukernels.attention``: ``(context, weights)``; both may carry gradients."""
    query, keys, values, weight, w_query, w_keys, v = autocast_inputs(_AUTOCAST, query, keys, values, weight,
                                                                      w_query, w_keys, v)
    _attn._check_scores(query, keys, kind, weight, w_query, w_keys, v)
    _attn._check_values_and_mask(query, keys, values, mask)
    return _attention(query, keys, values, kind, mask, weight, w_query, w_keys, v)
