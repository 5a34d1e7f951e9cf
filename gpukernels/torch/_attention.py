"""Attention as autograd Functions.

Scaled dot-product attention saves its inputs, its output and the row log-sum-exp (O(L) per
head, no L x S buffer); backward recomputes the probabilities tile by tile. The encoder-decoder
step saves its inputs and the weights it returns (they are an output anyway); the score
function's parameters get their gradients from ``attention_backward``.
"""

from __future__ import annotations

import torch

from ..ops import attention as _attn


def _grad(g):
    return None if g is None else g.contiguous()


class _ScaledDotProductAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, attn_mask, is_causal, scale, enable_gqa):
        out, lse = _attn.scaled_dot_product_attention_forward(query, key, value, attn_mask, 0.0, is_causal,
                                                              scale=scale, enable_gqa=enable_gqa)
        ctx.save_for_backward(query, key, value, attn_mask, out, lse)
        ctx.options = (is_causal, scale, enable_gqa)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, attn_mask, out, lse = ctx.saved_tensors
        is_causal, scale, enable_gqa = ctx.options
        # No .contiguous(): the kernels read any strides, and a broadcast gradient (from .sum())
        # would otherwise become a full (..., L, Ev) copy.
        dq, dk, dv = _attn.scaled_dot_product_attention_backward(
            grad_output, query, key, value, out, lse, attn_mask, is_causal, scale=scale, enable_gqa=enable_gqa)
        return dq, dk, dv, None, None, None, None


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention`` (``dropout_p`` must be 0; a float
    ``attn_mask`` gets no gradient, so one that requires grad is rejected)."""
    if attn_mask is not None and attn_mask.requires_grad:
        raise ValueError("attn_mask requires grad, but gradients with respect to attn_mask are not computed; "
                         "pass attn_mask.detach() or use torch.nn.functional.scaled_dot_product_attention")
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p={dropout_p}: dropout is not implemented, dropout_p must be 0.0")
    return _ScaledDotProductAttention.apply(query, key, value, attn_mask, is_causal, scale, enable_gqa)


class _AttentionScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, keys, weight, w_query, w_keys, v, kind):
        ctx.save_for_backward(query, keys, weight, w_query, w_keys, v)
        ctx.kind = kind
        return _attn.attention_scores(query, keys, kind, weight, w_query, w_keys, v)

    @staticmethod
    def backward(ctx, grad_scores):
        grads = _attn.attention_scores_backward(grad_scores.contiguous(), *ctx.saved_tensors[:2], ctx.kind,
                                                *ctx.saved_tensors[2:])
        return (*grads, None)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, keys, values, mask, weight, w_query, w_keys, v, kind):
        context, weights = _attn.attention(query, keys, values, kind, mask, weight, w_query, w_keys, v)
        ctx.save_for_backward(query, keys, values, weights, weight, w_query, w_keys, v)
        ctx.kind = kind
        ctx.set_materialize_grads(False)  # a None grad_weights skips its term
        return context, weights

    @staticmethod
    def backward(ctx, grad_context, grad_weights):
        query, keys, values, weights, weight, w_query, w_keys, v = ctx.saved_tensors
        if grad_context is None:
            grad_context = torch.zeros((*query.shape[:2], values.shape[2]), dtype=query.dtype, device=query.device)
        dq, dk, dvalues, dweight, dwq, dwk, dv = _attn.attention_backward(
            _grad(grad_context), _grad(grad_weights), query, keys, values, weights, ctx.kind, weight, w_query,
            w_keys, v)
        return dq, dk, dvalues, None, dweight, dwq, dwk, dv, None


def attention_scores(query, keys, kind="dot", weight=None, w_query=None, w_keys=None, v=None):
    """Differentiable ``gpukernels.attention_scores`` (argument meanings in ``gpukernels.ops.attention``)."""
    return _AttentionScores.apply(query, keys, weight, w_query, w_keys, v, kind)


def attention(query, keys, values, kind="dot", mask=None, weight=None, w_query=None, w_keys=None, v=None):
    """Differentiable ``gpukernels.attention``: ``(context, weights)``; both may carry gradients."""
    return _Attention.apply(query, keys, values, mask, weight, w_query, w_keys, v, kind)
