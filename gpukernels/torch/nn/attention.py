"""Attention modules for seq2seq decoders (PyTorch has none): Bahdanau's additive attention
and Luong's dot / scaled-dot / general attention, each one fused ``gpukernels.attention`` call.

Both take the decoder state(s) ``query`` (B, Dq) for one step or (B, Tq, Dq) for several, the
encoder outputs ``keys`` (B, Tk, Dk), optional ``values`` (B, Tk, Dv; default: ``keys``) and an
optional boolean ``mask`` (B, Tk) or (B, Tq, Tk), True where the encoder position takes part
(e.g. ``arange(Tk) < lengths[:, None]``), and return ``(context, weights)`` with the query's
leading shape: (B, Dv) and (B, Tk) for one step.
"""

from __future__ import annotations

import math

import torch

from .. import _attention as F


def _step(module_forward):
    """Accept a single decoder step (B, Dq) as well as (B, Tq, Dq)."""

    def forward(self, query, keys, values=None, mask=None):
        single = query.dim() == 2
        if single:
            query = query[:, None, :]
            if mask is not None and mask.dim() == 3:
                raise ValueError(f"mask has shape {tuple(mask.shape)}; with a (B, Dq) query it must be (B, Tk)")
        context, weights = module_forward(self, query, keys, keys if values is None else values, mask)
        return (context[:, 0], weights[:, 0]) if single else (context, weights)

    forward.__doc__ = module_forward.__doc__
    return forward


class AdditiveAttention(torch.nn.Module):
    """Bahdanau attention: ``e_ij = v . tanh(W_q s_i + W_k h_j)``.

    Parameters: ``query_proj.weight`` W_q (attention_size, query_size) and ``key_proj.weight``
    W_k (attention_size, key_size), both bias-free ``nn.Linear`` layers (a bias on either side
    adds a constant inside the tanh that the other projection can learn only through the data, so
    the textbook form has none), and ``v`` (attention_size,). The [B, Tq, Tk, attention_size]
    tensor of the eager formulation is never formed.
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.query_size, self.key_size, self.attention_size = query_size, key_size, attention_size
        self.query_proj = torch.nn.Linear(query_size, attention_size, bias=False, **factory)
        self.key_proj = torch.nn.Linear(key_size, attention_size, bias=False, **factory)
        self.v = torch.nn.Parameter(torch.empty(attention_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.query_proj.reset_parameters()
        self.key_proj.reset_parameters()
        bound = 1.0 / math.sqrt(self.attention_size)
        torch.nn.init.uniform_(self.v, -bound, bound)

    @_step
    def forward(self, query, keys, values, mask):
        """(context, weights) for decoder state(s) ``query`` over encoder ``keys``/``values``."""
        return F.attention(query, keys, values, "additive", mask, w_query=self.query_proj.weight,
                           w_keys=self.key_proj.weight, v=self.v)

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, key_size={self.key_size}, attention_size={self.attention_size}"


class DotAttention(torch.nn.Module):
    """Luong attention with ``kind`` "dot" (``s . h``), "scaled_dot" (``s . h / sqrt(key_size)``)
    or "general" (``s^T W h``, parameter ``weight`` W of shape (query_size, key_size)).
    "dot" and "scaled_dot" have no parameters and need query_size == key_size.
    """

    KINDS = ("dot", "scaled_dot", "general")

    def __init__(self, query_size: int, key_size: int | None = None, kind: str = "dot", device=None, dtype=None):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, self.KINDS))}, got {kind!r}")
        key_size = query_size if key_size is None else key_size
        if kind != "general" and key_size != query_size:
            raise ValueError(f"kind={kind!r} needs query_size == key_size, got {query_size} and {key_size}")
        self.query_size, self.key_size, self.kind = query_size, key_size, kind
        if kind == "general":
            self.weight = torch.nn.Parameter(torch.empty(query_size, key_size, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            bound = 1.0 / math.sqrt(self.key_size)
            torch.nn.init.uniform_(self.weight, -bound, bound)

    @_step
    def forward(self, query, keys, values, mask):
        """(context, weights) for decoder state(s) ``query`` over encoder ``keys``/``values``."""
        return F.attention(query, keys, values, self.kind, mask, weight=self.weight)

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, key_size={self.key_size}, kind={self.kind!r}"
