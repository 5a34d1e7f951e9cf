"""Recurrent layers as PyTorch operators (see ``_library``): ``gpukernels::recurrent_layer`` runs
one layer in one direction over a whole sequence (a cell step is a sequence of one) for every
cell (``cell`` = "rnn_tanh", "rnn_relu", "lstm" or "gru") and also returns the workspace (the
gate activations and states of every step) that ``gpukernels::recurrent_layer_backward`` reads
to run back through time in one pass. The workspace is an ordinary output tensor (float32, or
float64 for float64 inputs), so compiled graphs, AOTAutograd and activation checkpointing see
it; it gets no gradient.

Variable lengths travel as an integer tensor and are read inside the op, at run time: reading
them in the wrapper (``.tolist()``) would make them constants of a compiled graph.

Autocast, as torch does (its autocast lists and the dtypes its modules return, checked in
tests/test_torch_autocast.py): on CUDA every RNN, LSTM and GRU layer and cell runs in the
autocast dtype (cuDNN RNNs, ``lstm_cell``, ``gru_cell``, ... are on the lower-precision list).
On the CPU torch runs the LSTM layer (``mkldnn_rnn_layer``) and the Elman RNN (a ``linear``
and a tanh or relu) in the autocast dtype, while its GRU layer and LSTM/GRU cells come out in
the state's dtype promoted with the autocast dtype (the state, float32 unless given otherwise,
meets the lower-precision matmuls in elementwise math): so ours cast the LSTM layer and the RNN
to the autocast dtype and the GRU and the LSTM cell to that promoted dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dispatch import like
from ..ops import rnn as _rnn
from ..reference.rnn import WORKSPACE_BLOCKS
from ._library import LOWER_PRECISION, PROMOTE_WITH_STATE, accumulation_dtype, autocast_inputs, empty, \
    empty_like_inputs, fresh_all, op, present


def _params(cell: str, reverse: bool, lengths: Tensor | None, T: int, B: int, coupled: bool,
            linear_before_reset: bool, heads: int, H: int) -> dict:
    """The backend's keyword options; the lengths are checked (values 1..T) and read here."""
    checked = None if lengths is None else _rnn._check_lengths(lengths, B, T)
    return {"cell": cell, "reverse": reverse, "lengths": checked, "coupled": coupled,
            "linear_before_reset": linear_before_reset, "heads": _rnn.check_heads(heads, H)}


@op("recurrent_layer")
def _layer(cell: str, x: Tensor, h0: Tensor, c0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
           b_hh: Tensor | None, w_peep: Tensor | None, reverse: bool, lengths: Tensor | None, coupled: bool,
           linear_before_reset: bool, heads: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, h_n, c_n, workspace); c_n is an empty placeholder for cells without one. ``w_hh`` has
    the compact multi-head shape ``(G*H, H // heads)`` (see ``gpukernels.ops.rnn``)."""
    params = _params(cell, reverse, lengths, x.shape[0], x.shape[1], coupled, linear_before_reset, heads,
                     h0.shape[1])
    y, h_n, c_n, workspace = _rnn._forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params)
    # The backend's own array (numpy on the CPU path, float16 there for float16 inputs) as a tensor
    # of one dtype per input dtype, so the fake implementation can say what it is.
    workspace = like(workspace, x.new_empty(0, dtype=accumulation_dtype(x)))
    return fresh_all((y, h_n, c_n, workspace), x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep)


@_layer.register_fake
def _(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, reverse, lengths, coupled, linear_before_reset, heads):
    T, B, H = x.shape[0], x.shape[1], h0.shape[1]
    c_n = empty(h0) if c0 is not None else x.new_empty(0)
    return empty(x, (T, B, H)), empty(h0), c_n, empty(x, (T, B, WORKSPACE_BLOCKS[cell] * H), accumulation_dtype(x))


@op("recurrent_layer_backward")
def _layer_backward(cell: str, grad_y: Tensor, grad_h_n: Tensor | None, grad_c_n: Tensor | None, workspace: Tensor,
                    x: Tensor, h0: Tensor, c0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                    b_hh: Tensor | None, w_peep: Tensor | None, reverse: bool, lengths: Tensor | None, coupled: bool,
                    linear_before_reset: bool, heads: int) -> list[Tensor]:
    """The gradients of (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep), an empty placeholder for
    each input that is None."""
    params = _params(cell, reverse, lengths, x.shape[0], x.shape[1], coupled, linear_before_reset, heads,
                     h0.shape[1])
    grads = _rnn._backward(cell, grad_y.contiguous(), grad_h_n, grad_c_n, workspace, x, h0, c0, w_ih, w_hh, b_ih,
                           b_hh, w_peep, params)
    return list(fresh_all(grads, grad_y, grad_h_n, grad_c_n, workspace, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep))


@_layer_backward.register_fake
def _(cell, grad_y, grad_h_n, grad_c_n, workspace, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *options):
    return list(empty_like_inputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep))


def _setup(ctx, inputs, output):
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *options = inputs
    ctx.cell, ctx.options, ctx.has_c = cell, options, c0 is not None
    ctx.save_for_backward(output[3], x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep)
    ctx.mark_non_differentiable(output[3])
    # Unused outputs' gradients stay None instead of zeros: autograd would otherwise fill a
    # zero gradient for the workspace (T x B x 6H for an LSTM: 4.9 MB and 1.2 ms of fill at
    # B=16, H=128, T=100 on the CPU) on every backward, and torch's parallel fill leaves its
    # OpenMP threads spinning on the core the reference's pool then needs.
    ctx.set_materialize_grads(False)


def _gradients(ctx, grad_y, grad_h_n, grad_c_n, _grad_workspace):
    workspace, *inputs = ctx.saved_tensors
    if grad_y is None:  # only the final state was used
        x, h0 = inputs[0], inputs[1]
        grad_y = x.new_zeros((x.shape[0], x.shape[1], h0.shape[1]))
    grads = _layer_backward(ctx.cell, grad_y, grad_h_n, grad_c_n if ctx.has_c else None, workspace, *inputs,
                            *ctx.options)
    return (None, *present(tuple(grads), tuple(inputs)), None, None, None, None, None)


_layer.register_autograd(_gradients, setup_context=_setup)


# (cell kind, is a cell step) -> {device type: policy}; see the module docstring.
_AUTOCAST = {
    ("lstm", False): {"cpu": LOWER_PRECISION, "cuda": LOWER_PRECISION},
    ("lstm", True): {"cpu": PROMOTE_WITH_STATE, "cuda": LOWER_PRECISION},
    ("gru", False): {"cpu": PROMOTE_WITH_STATE, "cuda": LOWER_PRECISION},
    ("gru", True): {"cpu": PROMOTE_WITH_STATE, "cuda": LOWER_PRECISION},
    ("rnn", False): {"cpu": LOWER_PRECISION, "cuda": LOWER_PRECISION},
    ("rnn", True): {"cpu": LOWER_PRECISION, "cuda": LOWER_PRECISION},
}


def _lengths_tensor(lengths, batch: int) -> Tensor | None:
    """``lengths`` (a tensor, array or sequence of ints) as a tensor for the op, its kind and
    shape checked here (at trace time); its values are read inside the op."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths.tolist() if hasattr(lengths, "tolist") else list(lengths))
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integers, got dtype {str(lengths.dtype).removeprefix('torch.')}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must be one length per sequence, shape ({batch},), got {lengths.numel()} values")
    return lengths


def _apply(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, rank, reverse=False, lengths=None, **options):
    policies = _AUTOCAST[(cell.split("_")[0], rank == 2)]
    state = x if h0 is None else h0  # torch's zero state has the input's dtype
    state, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep = autocast_inputs(policies, state, x, h0, c0, w_ih, w_hh, b_ih,
                                                                       b_hh, w_peep)
    h0, c0, params = _rnn._prepare(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, rank=rank, reverse=reverse,
                                   **options)
    if rank == 2:
        x = x.unsqueeze(0)
    lengths = _lengths_tensor(lengths, x.shape[1]) if rank == 3 else None
    y, h_n, c_n, _ = _layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params["reverse"], lengths,
                            params["coupled"], params["linear_before_reset"], params["heads"])
    return y, h_n, (c_n if cell == "lstm" else None)


def rnn_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", reverse=False, lengths=None,
              heads=1):
    """Differentiable :func:`gpukernels.rnn_layer` -> ``(y, h_n)``."""
    y, h_n, _ = _apply(_rnn._cell_name("rnn", nonlinearity), input, h0, None, w_ih, w_hh, b_ih, b_hh, None,
                       rank=3, reverse=reverse, lengths=lengths, heads=heads)
    return y, h_n


def lstm_layer(input, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, w_peep=None, coupled=False, reverse=False,
               lengths=None, heads=1):
    """Differentiable :func:`gpukernels.lstm_layer` -> ``(y, h_n, c_n)``."""
    return _apply("lstm", input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, rank=3, coupled=coupled,
                  reverse=reverse, lengths=lengths, heads=heads)


def gru_layer(input, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, linear_before_reset=True, reverse=False,
              lengths=None, heads=1):
    """Differentiable :func:`gpukernels.gru_layer` -> ``(y, h_n)``."""
    y, h_n, _ = _apply("gru", input, h0, None, w_ih, w_hh, b_ih, b_hh, None, rank=3,
                       linear_before_reset=linear_before_reset, reverse=reverse, lengths=lengths, heads=heads)
    return y, h_n


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", heads=1):
    _, h, _ = _apply(_rnn._cell_name("rnn", nonlinearity), input, hx, None, w_ih, w_hh, b_ih, b_hh, None, rank=2,
                     heads=heads)
    return h


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, *, w_peep=None, coupled=False, heads=1):
    _, h, c = _apply("lstm", input, hx, cx, w_ih, w_hh, b_ih, b_hh, w_peep, rank=2, coupled=coupled, heads=heads)
    return h, c


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, linear_before_reset=True, heads=1):
    _, h, _ = _apply("gru", input, hx, None, w_ih, w_hh, b_ih, b_hh, None, rank=2,
                     linear_before_reset=linear_before_reset, heads=heads)
    return h


__all__ = ["rnn_layer", "lstm_layer", "gru_layer", "rnn_cell", "lstm_cell", "gru_cell"]
