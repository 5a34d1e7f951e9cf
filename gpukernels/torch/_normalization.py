"""Layer norm and RMS norm (and their fused residual variants) as autograd Functions. Each saves
the normalised input's source (the input, or the residual sum), the statistics and the weight:
the backward recomputes ``xhat`` from them in its one pass instead of saving it."""

from __future__ import annotations

import torch

from ..ops import normalization as _norm


class _Norm(torch.autograd.Function):
    """All four ops: ``residual`` None or not (add_*), ``rms`` or layer norm."""

    @staticmethod
    def forward(ctx, input, residual, weight, bias, normalized_shape, eps, rms):
        if residual is None:
            op = _norm.rms_norm if rms else _norm.layer_norm
            args = (input,)
        else:
            op = _norm.add_rms_norm if rms else _norm.add_layer_norm
            args = (input, residual)
        if rms:
            results = op(*args, normalized_shape, weight, eps, return_stats=True)
            mean, rstd = None, results[-1]
        else:
            results = op(*args, normalized_shape, weight, bias, eps, return_stats=True)
            mean, rstd = results[-2:]
        outputs = results[:len(args)]
        source = input if residual is None else outputs[1]
        ctx.save_for_backward(source, mean, rstd, weight, bias)
        ctx.normalized_shape, ctx.rms, ctx.add = normalized_shape, rms, residual is not None
        return outputs[0] if residual is None else outputs

    @staticmethod
    def backward(ctx, grad_output, grad_sum=None):
        source, mean, rstd, weight, bias = ctx.saved_tensors
        shape, dy = ctx.normalized_shape, grad_output.contiguous()
        if ctx.add:
            ds = None if grad_sum is None else grad_sum.contiguous()
            if ctx.rms:
                dx, dw = _norm.add_rms_norm_backward(dy, ds, source, shape, rstd, weight)
                db = None
            else:
                dx, dw, db = _norm.add_layer_norm_backward(dy, ds, source, shape, mean, rstd, weight, bias)
        elif ctx.rms:
            dx, dw = _norm.rms_norm_backward(dy, source, shape, rstd, weight)
            db = None
        else:
            dx, dw, db = _norm.layer_norm_backward(dy, source, shape, mean, rstd, weight, bias)
        return dx, (dx if ctx.add else None), dw, db, None, None, None


def _shape(normalized_shape) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def layer_norm(input: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``torch.nn.functional.layer_norm``: same arguments and result."""
    return _Norm.apply(input, None, weight, bias, _shape(normalized_shape), eps, False)


def rms_norm(input: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
             eps: float | None = None) -> torch.Tensor:
    """``torch.nn.functional.rms_norm``: same arguments (``eps=None``: the dtype's epsilon)."""
    return _Norm.apply(input, None, weight, None, _shape(normalized_shape), eps, True)


def add_layer_norm(input: torch.Tensor, residual: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(layer_norm(input + residual), input + residual)``, fused, differentiable in both outputs."""
    return _Norm.apply(input, residual, weight, bias, _shape(normalized_shape), eps, False)


def add_rms_norm(input: torch.Tensor, residual: torch.Tensor, normalized_shape, weight: torch.Tensor | None = None,
                 eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(input + residual), input + residual)``, fused, differentiable in both outputs."""
    return _Norm.apply(input, residual, weight, None, _shape(normalized_shape), eps, True)
