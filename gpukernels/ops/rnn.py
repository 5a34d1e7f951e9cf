"""Recurrent cells and layers (RNN, LSTM, GRU), forward and backward, with PyTorch's gate
orders, formulas, argument names and shapes.

* RNN:  ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, ``act`` = tanh or relu.
* LSTM (gates i, f, g, o): ``c' = f*c + i*g``, ``h' = o*tanh(c')``. Options: peepholes
  (``w_peep`` of shape ``(3, H)``: i and f see ``c``, o sees ``c'``) and a coupled input/forget
  gate (``f = 1 - i``; the f rows of the weights are then unused and get zero gradients).
* GRU (gates r, z, n): ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``, ``h' = (1-z)*n + z*h``;
  ``linear_before_reset=False`` is the original form ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)``.

Multi-head (block-diagonal) recurrent weights, as FlashRNN offers: ``heads`` (default 1, PyTorch's
layer) splits the hidden units into ``heads`` groups of ``H // heads`` that see only their own
group's state. ``w_hh`` then holds just the diagonal blocks, shape ``(G*H, H // heads)``: row ``r``
(gate ``r // H``, unit ``u = r % H``) belongs to head ``u // (H // heads)`` and multiplies only that
head's slice of ``h``. ``heads=1`` is ``(G*H, H)``, PyTorch's layout. Every backend takes the compact
weight as it is (the ``heads`` parameter) and runs the recurrent products head by head, at
``heads`` times fewer FLOPs than the dense block-diagonal matrix; the w_hh gradient comes back
compact. Where a kernel cannot use blocks that small it expands them itself and says so
(``gpukernels._rnn_driver.block_diagonal``: the Triton forward step below 16 units a head, the
opt-in persistent Triton kernels).

Cells take ``x`` of shape ``(B, I)`` and states ``(B, H)``; layers take ``x`` of shape
``(T, B, I)`` (time first) and return ``y`` of shape ``(T, B, H)`` with the final state(s).
A cell is a layer of one step and runs the same kernels.

The forward of every backend also produces a workspace, ``(T, B, K*H)``, that backward reads
(layout in ``gpukernels.reference.rnn``); the Triton and CuPy backends keep it, and the
recurrent state, in fp32 whatever the storage dtype. The public ``*_backward`` functions
recompute the forward to get it; the autograd Functions (``gpukernels.torch``) keep it instead.

Backward functions return the gradient of every input, in this order (None where the input
was None): cells and layers alike,
  rnn / gru:  ``(grad_x, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)``
  lstm:       ``(grad_x, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_peep)``
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._dispatch import array_library, call
from ._checks import check_choice, check_float, check_match

NONLINEARITIES = ("tanh", "relu")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


# ---------------------------------------------------------------------------------------------
# Argument checks (before anything runs)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _expect_shape(x: Any, name: str, shape: tuple[int, ...], meaning: str) -> None:
    if _shape(x) != shape:
        raise ValueError(f"{name} must have shape {shape} ({meaning}), got {_shape(x)}")


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def _check_lengths(lengths: Any, batch: int, steps: int) -> tuple[int, ...] | None:
    """``lengths`` as a tuple of Python ints, each in 1..steps, one per sequence."""
    if lengths is None:
        return None
    library = array_library(lengths)
    if library == "torch":
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex:
            raise TypeError(f"lengths must hold integers, got dtype {str(lengths.dtype).removeprefix('torch.')}")
        values = [int(v) for v in lengths.detach().cpu().reshape(-1).tolist()]
        ndim = lengths.dim()
    else:
        array = lengths.get() if library == "cupy" else np.asarray(lengths)
        if array.dtype.kind not in "iu" and not (array.size == 0 and array.dtype.kind == "f"):
            raise TypeError(f"lengths must hold integers, got dtype {array.dtype}")
        values, ndim = [int(v) for v in array.reshape(-1)], array.ndim
    if ndim != 1 or len(values) != batch:
        raise ValueError(f"lengths must be one length per sequence, shape ({batch},), got {len(values)} values")
    bad = [v for v in values if not 1 <= v <= steps]
    if bad:
        raise ValueError(f"lengths must lie in 1..{steps} (the sequence length of x), got {bad[0]}")
    return tuple(values)


def check_heads(heads: Any, hidden_size: int) -> int:
    """``heads`` as an int that divides ``hidden_size`` (each head owns ``hidden_size // heads`` units)."""
    if isinstance(heads, (bool, np.bool_)) or not isinstance(heads, (int, np.integer)):
        raise TypeError(f"heads must be an int, got {type(heads).__name__}")
    if heads < 1 or hidden_size % heads:
        raise ValueError(f"heads must be a positive divisor of hidden_size={hidden_size}, got heads={heads}")
    return int(heads)


def _check_weights(cell: str, x: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any, w_peep: Any, heads: Any = 1
                   ) -> tuple[int, int]:
    """Shapes, dtypes and devices of the weights against ``x``; returns (hidden size H, heads)."""
    G = GATES[cell]
    check_float(w_hh, "w_hh")
    check_match("x", x, "w_hh", w_hh)
    columns = "hidden_size" if heads == 1 else "hidden_size // heads"
    # H comes from the rows: the columns are one head's units (all of them when heads=1).
    if len(w_hh.shape) != 2 or w_hh.shape[0] % G:
        raise ValueError(f"w_hh must have shape ({G}*hidden_size, {columns}), got {_shape(w_hh)}")
    H = int(w_hh.shape[0]) // G
    heads = check_heads(heads, H)
    if int(w_hh.shape[1]) * heads != H:
        raise ValueError(f"w_hh must have shape ({G}*hidden_size, {columns}) = ({G * H}, {H // heads}) for "
                         f"hidden_size={H} and heads={heads}, got {_shape(w_hh)}")
    check_match("x", x, "w_ih", w_ih)
    _expect_shape(w_ih, "w_ih", (G * H, int(x.shape[-1])), f"{G}*hidden_size, input_size")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_match("x", x, name, b)
            _expect_shape(b, name, (G * H,), f"{G}*hidden_size")
    if w_peep is not None:
        check_match("x", x, "w_peep", w_peep)
        _expect_shape(w_peep, "w_peep", (3, H), "peephole weights of the i, f and o gates")
    return H, heads


def _check_state(x: Any, state: Any, name: str, batch: int, H: int) -> None:
    check_match("x", x, name, state)
    _expect_shape(state, name, (batch, H), "batch, hidden_size")


def _zeros(like: Any, shape: tuple[int, ...]) -> Any:
    """Zeros in the library, device and dtype of ``like``."""
    library = array_library(like)
    if library == "torch":
        import torch

        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    if library == "cupy":
        import cupy

        return cupy.zeros(shape, dtype=like.dtype)
    return np.zeros(shape, dtype=like.dtype)


def _zeros_like_state(x: Any, batch: int, H: int) -> Any:
    """A zero initial state in the library, device and dtype of ``x``."""
    return _zeros(x, (batch, H))


def _cell_name(kind: str, nonlinearity: str) -> str:
    if kind == "rnn":
        return "rnn_" + check_choice(nonlinearity, "nonlinearity", NONLINEARITIES)
    return kind


def _prepare(cell: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, rank: int, reverse=False, lengths=None,
             coupled=False, linear_before_reset=True, heads=1):
    """Checks every argument; returns (h0, c0, params) with absent initial states as zeros."""
    check_float(x, "x")
    if len(x.shape) != rank:
        layout = "(seq_len, batch, input_size)" if rank == 3 else "(batch, input_size)"
        raise ValueError(f"x must be {rank}-D {layout}, got shape {_shape(x)}")
    H, heads = _check_weights(cell, x, w_ih, w_hh, b_ih, b_hh, w_peep, heads)
    batch = int(x.shape[-2])
    state_names = ("h0", "c0") if rank == 3 else ("hx", "cx")
    h0 = _zeros_like_state(x, batch, H) if h0 is None else h0
    _check_state(x, h0, state_names[0], batch, H)
    if cell == "lstm":
        c0 = _zeros_like_state(x, batch, H) if c0 is None else c0
        _check_state(x, c0, state_names[1], batch, H)
    params = {
        "cell": cell,
        "reverse": _check_bool(reverse, "reverse"),
        "lengths": _check_lengths(lengths, batch, int(x.shape[0])) if rank == 3 else None,
        "coupled": _check_bool(coupled, "coupled"),
        "linear_before_reset": _check_bool(linear_before_reset, "linear_before_reset"),
        "heads": heads,
    }
    return h0, c0, params


def _check_grad(grad: Any, name: str, like_name: str, like: Any) -> Any:
    if grad is not None:
        check_match(like_name, like, name, grad, shape=True)
    return grad


# ---------------------------------------------------------------------------------------------
# The layer ops every public function goes through. ``_forward`` also returns the workspace
# that ``_backward`` reads (the autograd Functions keep it between the passes).


def _forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params):
    """(y, h_n, c_n, workspace). The workspace is left as the backend made it (its own array
    type and dtype: the Triton one is fp32 whatever the storage), since only a backward reads it;
    the rest comes back as the caller's arrays, like every op's results."""
    arrays = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep)
    return call("rnn", "layer_forward", arrays, params, returns_like=(x, x, x, None))


def _backward(cell, grad_y, grad_h_n, grad_c_n, workspace, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params):
    arrays = (grad_y, grad_h_n, grad_c_n, workspace, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep)
    return call("rnn", "layer_backward", arrays, params, returns_like=x)


def _layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, **options):
    h0, c0, params = _prepare(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, rank=3, **options)
    y, h_n, c_n, _ = _forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params)
    return (y, h_n, c_n) if cell == "lstm" else (y, h_n)


def _layer_backward(cell, grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, **options):
    h0, c0, params = _prepare(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, rank=3, **options)
    T, B = int(x.shape[0]), int(x.shape[1])
    H = int(h0.shape[1])
    check_float(grad_y, "grad_y")
    check_match("x", x, "grad_y", grad_y)
    _expect_shape(grad_y, "grad_y", (T, B, H), "seq_len, batch, hidden_size")
    _check_grad(grad_h_n, "grad_h_n", "h0", h0)
    _check_grad(grad_c_n, "grad_c_n", "c0", c0)
    *_, workspace = _forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params)
    grads = _backward(cell, grad_y, grad_h_n, grad_c_n, workspace, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, params)
    return grads if cell == "lstm" else grads[:2] + grads[3:7]


def _step(x):
    return x[None]


# ---------------------------------------------------------------------------------------------
# Cells


def rnn_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity: str = "tanh", heads: int = 1):
    """One Elman RNN step: ``h' = act(x @ w_ih.T + b_ih + hx @ w_hh.T + b_hh)``; hx=None is zeros."""
    cell = _cell_name("rnn", nonlinearity)
    hx, _, params = _prepare(cell, x, hx, None, w_ih, w_hh, b_ih, b_hh, None, rank=2, heads=heads)
    y, h, _, _ = _forward(cell, _step(x), hx, None, w_ih, w_hh, b_ih, b_hh, None, params)
    return h


def lstm_cell(x, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, *, w_peep=None, coupled: bool = False, heads: int = 1):
    """One LSTM step -> ``(h', c')``; hx/cx None are zeros."""
    hx, cx, params = _prepare("lstm", x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_peep, rank=2, coupled=coupled,
                              heads=heads)
    _, h, c, _ = _forward("lstm", _step(x), hx, cx, w_ih, w_hh, b_ih, b_hh, w_peep, params)
    return h, c


def gru_cell(x, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, linear_before_reset: bool = True, heads: int = 1):
    """One GRU step -> ``h'``; hx None is zeros."""
    hx, _, params = _prepare("gru", x, hx, None, w_ih, w_hh, b_ih, b_hh, None, rank=2,
                             linear_before_reset=linear_before_reset, heads=heads)
    _, h, _, _ = _forward("gru", _step(x), hx, None, w_ih, w_hh, b_ih, b_hh, None, params)
    return h


def _cell_backward(cell, grad_h, grad_c, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_peep, **options):
    hx, cx, params = _prepare(cell, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_peep, rank=2, **options)
    check_float(grad_h, "grad_h")
    _check_grad(grad_h, "grad_h", "hx", hx)
    _check_grad(grad_c, "grad_c", "cx", cx)
    args = (_step(x), hx, cx, w_ih, w_hh, b_ih, b_hh, w_peep)
    *_, workspace = _forward(cell, *args, params)
    grads = _backward(cell, _step(grad_h), None, grad_c, workspace, *args, params)
    grads = (grads[0][0],) + tuple(grads[1:])
    return grads if cell == "lstm" else grads[:2] + grads[3:7]


def rnn_cell_backward(grad_h, x, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity: str = "tanh",
                      heads: int = 1):
    """Gradients ``(grad_x, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)`` of rnn_cell."""
    return _cell_backward(_cell_name("rnn", nonlinearity), grad_h, None, x, hx, None, w_ih, w_hh, b_ih, b_hh, None,
                          heads=heads)


def lstm_cell_backward(grad_h, grad_c, x, hx, cx, w_ih, w_hh, b_ih=None, b_hh=None, *, w_peep=None,
                       coupled: bool = False, heads: int = 1):
    """Gradients ``(grad_x, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh,
    grad_w_peep)`` of lstm_cell; ``grad_c`` None means c' does not reach the loss."""
    return _cell_backward("lstm", grad_h, grad_c, x, hx, cx, w_ih, w_hh, b_ih, b_hh, w_peep, coupled=coupled,
                          heads=heads)


def gru_cell_backward(grad_h, x, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, linear_before_reset: bool = True,
                      heads: int = 1):
    """Gradients ``(grad_x, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)`` of gru_cell."""
    return _cell_backward("gru", grad_h, None, x, hx, None, w_ih, w_hh, b_ih, b_hh, None,
                          linear_before_reset=linear_before_reset, heads=heads)


# ---------------------------------------------------------------------------------------------
# Layers


def rnn_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity: str = "tanh", reverse: bool = False,
              lengths=None, heads: int = 1):
    """A whole sequence ``x (T, B, I)`` -> ``(y (T, B, H), h_n (B, H))``."""
    return _layer(_cell_name("rnn", nonlinearity), x, h0, None, w_ih, w_hh, b_ih, b_hh, None,
                  reverse=reverse, lengths=lengths, heads=heads)


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, w_peep=None, coupled: bool = False,
               reverse: bool = False, lengths=None, heads: int = 1):
    """A whole sequence -> ``(y, h_n, c_n)``. With ``lengths``, padded steps keep the state and
    output zeros; final states are taken at each sequence's own length."""
    return _layer("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, coupled=coupled, reverse=reverse,
                  lengths=lengths, heads=heads)


def gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, linear_before_reset: bool = True, reverse: bool = False,
              lengths=None, heads: int = 1):
    """A whole sequence -> ``(y, h_n)``."""
    return _layer("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, linear_before_reset=linear_before_reset,
                  reverse=reverse, lengths=lengths, heads=heads)


def rnn_layer_backward(grad_y, grad_h_n, x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity: str = "tanh",
                       reverse: bool = False, lengths=None, heads: int = 1):
    """``(grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)``; grad_h_n may be None."""
    return _layer_backward(_cell_name("rnn", nonlinearity), grad_y, grad_h_n, None, x, h0, None, w_ih, w_hh,
                           b_ih, b_hh, None, reverse=reverse, lengths=lengths, heads=heads)


def lstm_layer_backward(grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, w_peep=None,
                        coupled: bool = False, reverse: bool = False, lengths=None, heads: int = 1):
    """``(grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_peep)``."""
    return _layer_backward("lstm", grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep,
                           coupled=coupled, reverse=reverse, lengths=lengths, heads=heads)


def gru_layer_backward(grad_y, grad_h_n, x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *,
                       linear_before_reset: bool = True, reverse: bool = False, lengths=None, heads: int = 1):
    """``(grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)``; grad_h_n may be None."""
    return _layer_backward("gru", grad_y, grad_h_n, None, x, h0, None, w_ih, w_hh, b_ih, b_hh, None,
                           linear_before_reset=linear_before_reset, reverse=reverse, lengths=lengths,
                           heads=heads)


__all__ = [
    "rnn_cell", "lstm_cell", "gru_cell", "rnn_cell_backward", "lstm_cell_backward", "gru_cell_backward",
    "rnn_layer", "lstm_layer", "gru_layer", "rnn_layer_backward", "lstm_layer_backward", "gru_layer_backward",
]
