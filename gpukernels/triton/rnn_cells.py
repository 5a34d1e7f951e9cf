"""The forward cells of the recurrent kernels, from the gates' pre-activations to the workspace
row a step writes: shared by the per-step kernel (``rnn.py``) and the persistent one
(``rnn_persistent.py``), which differ only in where the recurrent products and the state come
from. Workspace rows (K blocks of H per batch row, see ``_rnn_driver``): RNN h; LSTM i, f, g, o,
c, h; GRU r, z, n, m = W_hn h + b_hn, h. A padded step (``active`` false) keeps the state."""

from __future__ import annotations

import triton
import triton.language as tl

from .activation import _tanh


@triton.jit
def rnn_cell(a, h_prev, active, relu, ws_tile, tile_mask):
    """tanh (or relu) of the pre-activation; stores h, returns it."""
    h_new = tl.where(relu != 0, tl.where(a < 0, 0.0, a), _tanh(a))
    tl.store(ws_tile, tl.where(active, h_new, h_prev).to(ws_tile.dtype.element_ty), mask=tile_mask)
    return h_new


@triton.jit
def lstm_cell(a_i, a_f, a_g, a_o, p_i, p_f, p_o, c_prev, h_prev, active, coupled, ws_tile, H, tile_mask):
    """Gates i, f, g, o with peepholes p_* (i and f see c, o sees the new c; zeros without
    them) and, ``coupled``, f = 1 - i; stores the gates, c and h, returns h."""
    dtype = ws_tile.dtype.element_ty
    i = tl.sigmoid(a_i + p_i * c_prev)
    f = tl.where(coupled != 0, 1.0 - i, tl.sigmoid(a_f + p_f * c_prev))
    g = _tanh(a_g)
    c_new = f * c_prev + i * g
    o = tl.sigmoid(a_o + p_o * c_new)
    h_new = o * _tanh(c_new)
    tl.store(ws_tile, i.to(dtype), mask=tile_mask)
    tl.store(ws_tile + H, f.to(dtype), mask=tile_mask)
    tl.store(ws_tile + 2 * H, g.to(dtype), mask=tile_mask)
    tl.store(ws_tile + 3 * H, o.to(dtype), mask=tile_mask)
    tl.store(ws_tile + 4 * H, tl.where(active, c_new, c_prev).to(dtype), mask=tile_mask)
    tl.store(ws_tile + 5 * H, tl.where(active, h_new, h_prev).to(dtype), mask=tile_mask)
    return h_new


@triton.jit
def gru_cell(a_r, a_z, m, x_n, h_prev, active, ws_tile, H, tile_mask):
    """GRU with the reset gate applied after the product (torch's): n = tanh(x_n + r m), where
    m = W_hn h + b_hn; stores r, z, n, m and h, returns h. (The persistent kernel keeps its own
    copy of these lines: called from there, its narrowest fp32/fp16 tiles spill 8-16 bytes.)"""
    dtype = ws_tile.dtype.element_ty
    r = tl.sigmoid(a_r)
    z = tl.sigmoid(a_z)
    n = _tanh(x_n + r * m)
    h_new = (1.0 - z) * n + z * h_prev
    tl.store(ws_tile, r.to(dtype), mask=tile_mask)
    tl.store(ws_tile + H, z.to(dtype), mask=tile_mask)
    tl.store(ws_tile + 2 * H, n.to(dtype), mask=tile_mask)
    tl.store(ws_tile + 3 * H, m.to(dtype), mask=tile_mask)
    tl.store(ws_tile + 4 * H, tl.where(active, h_new, h_prev).to(dtype), mask=tile_mask)
    return h_new
