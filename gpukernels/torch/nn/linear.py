"""Dense layers: ``Linear``, drop-in for torch.nn.Linear with a fused activation, and ``MLP``,
the chapter's multi-layer network a = f(W a_prev + b) built from them."""

from __future__ import annotations

from typing import Sequence

import torch

from .. import _linear as F


class Linear(torch.nn.Linear):
    """torch.nn.Linear (same arguments, parameters, initialisation and ``state_dict``) whose
    forward is gpukernels' fused ``act(x W^T + b)``; ``activation=None`` is torch's layer."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 activation: str | None = None, negative_slope: float = 0.01) -> None:
        from ...ops.linear import _check_activation

        _check_activation(activation, negative_slope)  # reject a bad name before allocating anything
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.activation = activation
        self.negative_slope = negative_slope

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias, activation=self.activation,
                        negative_slope=self.negative_slope)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.activation is not None:
            text += f", activation={self.activation!r}"
            if self.activation == "leaky_relu":
                text += f", negative_slope={self.negative_slope}"
        return text


class MLP(torch.nn.Module):
    """A stack of fused dense layers: ``in_features -> hidden_features[0] -> ... -> out_features``.

    Every hidden layer is ``Linear(..., activation=activation)``; with ``residual`` a hidden layer
    whose input and output widths agree adds its input back (h + f(W h + b)), the cure the chapter
    names for vanishing gradients in deep stacks. With ``norm`` each hidden layer reads its input
    through a LayerNorm first (pre-norm: h + f(W LN(h) + b)). ``out_features`` (optional) adds a
    final Linear without activation. Submodules: ``layers`` (a ModuleList of Linear) and, with
    ``norm``, ``norms`` (one LayerNorm per hidden layer)."""

    def __init__(self, in_features: int, hidden_features: int | Sequence[int], out_features: int | None = None, *,
                 activation: str | None = "gelu", negative_slope: float = 0.01, bias: bool = True,
                 residual: bool = True, norm: bool = False, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        hidden = [hidden_features] if isinstance(hidden_features, int) else list(hidden_features)
        if not hidden:
            raise ValueError("hidden_features must name at least one hidden layer width")
        widths = [in_features, *hidden]
        factory = {"device": device, "dtype": dtype}
        self.layers = torch.nn.ModuleList(
            Linear(a, b, bias, activation=activation, negative_slope=negative_slope, **factory)
            for a, b in zip(widths[:-1], widths[1:]))
        if out_features is not None:
            self.layers.append(Linear(widths[-1], out_features, bias, **factory))
        self.hidden_count = len(hidden)
        self.residual = residual
        self.norms = None
        if norm:
            # h12norm's module; imported only here so that an MLP without norm needs nothing of it
            from .normalization import LayerNorm

            self.norms = torch.nn.ModuleList(LayerNorm(w, eps=eps, **factory) for w in widths[:-1])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        h = input
        for i, layer in enumerate(self.layers):
            if i >= self.hidden_count:  # the output layer: plain
                h = layer(h)
                continue
            out = layer(h if self.norms is None else self.norms[i](h))
            h = h + out if self.residual and out.shape == h.shape else out
        return h


__all__ = ["Linear", "MLP"]
