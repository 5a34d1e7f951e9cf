"""Recurrent layers as autograd Functions: one Function runs one layer in one direction over a
whole sequence (a cell step is a sequence of one); forward keeps the workspace (the gate
activations and states of every step) for backward, which runs back through time in one pass.
CPU tensors run the NumPy reference, CUDA tensors the Triton kernels (``gpukernels._dispatch``).
"""

from __future__ import annotations

import torch

from ..ops import rnn as _rnn


class _Layer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params):
        cell = params["cell"]
        y, h_n, c_n, workspace = _rnn._forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params)
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep)
        ctx.workspace = workspace  # the backend's own array (numpy on the CPU path), not a graph input
        ctx.params = params
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, grad_y, grad_h_n, grad_c_n):
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep = ctx.saved_tensors
        params, workspace = ctx.params, ctx.workspace
        grads = _rnn._backward(params["cell"], grad_y.contiguous(), grad_h_n, grad_c_n, workspace, x, h0, c0,
                               w_ih, w_hh, b_ih, b_hh, w_peep, params)
        return (*grads, None)


def _apply(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, rank, **options):
    h0, c0, params = _rnn._prepare(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, rank=rank, **options)
    if rank == 2:
        x = x.unsqueeze(0)
    return _Layer.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params)


def rnn_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", reverse=False, lengths=None):
    """Differentiable :func:`gpukernels.rnn_layer` -> ``(y, h_n)``."""
    y, h_n, _ = _apply(_rnn._cell_name("rnn", nonlinearity), input, h0, None, w_ih, w_hh, b_ih, b_hh, None,
                       rank=3, reverse=reverse, lengths=lengths)
    return y, h_n


def lstm_layer(input, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, w_peep=None, coupled=False, reverse=False,
               lengths=None):
    """Differentiable :func:`gpukernels.lstm_layer` -> ``(y, h_n, c_n)``."""
    return _apply("lstm", input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, rank=3, coupled=coupled,
                  reverse=reverse, lengths=lengths)


def gru_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, linear_before_reset=True, reverse=False,
              lengths=None):
    """Differentiable :func:`gpukernels.gru_layer` -> ``(y, h_n)``."""
    y, h_n, _ = _apply("gru", input, h0, None, w_ih, w_hh, b_ih, b_hh, None, rank=3,
                       linear_before_reset=linear_before_reset, reverse=reverse, lengths=lengths)
    return y, h_n


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh"):
    _, h, _ = _apply(_rnn._cell_name("rnn", nonlinearity), input, hx, None, w_ih, w_hh, b_ih, b_hh, None, rank=2)
    return h


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, *, w_peep=None, coupled=False):
    _, h, c = _apply("lstm", input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_peep, rank=2, coupled=coupled)
    return h, c


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, linear_before_reset=True):
    _, h, _ = _apply("gru", input, hx, None, w_ih, w_hh, b_ih, b_hh, None, rank=2,
                     linear_before_reset=linear_before_reset)
    return h


__all__ = ["rnn_layer", "lstm_layer", "gru_layer", "rnn_cell", "lstm_cell", "gru_cell"]
