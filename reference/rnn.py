"""Recurrent cells (RNN, LSTM, GRU) over whole sequences, forward and backward through time,
in plain NumPy. A single cell step is a sequence of length 1.

Layout (PyTorch's): ``x`` is ``(T, B, I)``, states ``(B, H)``, ``w_ih`` ``(G*H, I)``, ``w_hh``
``(G*H, H)``, biases ``(G*H,)`` with G gate blocks: 1 for RNN, 4 (i, f, g, o) for LSTM, 3
(r, z, n) for GRU. ``w_peep`` is ``(3, H)``: the peephole weights of i, f (which see ``c``) and
o (which sees ``c'``).

Variable lengths: at time ``t`` sequence ``b`` is active when ``t < lengths[b]``; an inactive
step keeps the state and outputs zero, so the final state is the state after the last step
processed (the reverse direction starts each sequence at its own last element).

The forward returns, besides ``(y, h_n, c_n)``, the workspace backward reads, ``(T, B, K*H)``:
  rnn:  [h]                        (K = 1, the state after each step)
  lstm: [i, f, g, o, c, h]         (K = 6, gate activations and the states after each step)
  gru:  [r, z, n, m, h]            (K = 5; m = W_hn h + b_hn, or r*h when linear_before_reset=False)
"""

from __future__ import annotations

import functools

import numpy as np

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
WORKSPACE_BLOCKS = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 6, "gru": 5}


def _low_precision_in_float32(fn):
    """float16 computes in float32 (NumPy's float16 rounds every step); results (None allowed)
    come back in the input's dtype. NumPy's overflow warnings are silenced, as PyTorch is."""

    @functools.wraps(fn)
    def wrapper(*args, **params):
        dtype = next(a.dtype for a in args if isinstance(a, np.ndarray))
        if dtype == np.float16:
            args = tuple(a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args)
        with np.errstate(all="ignore"):
            result = fn(*args, **params)
        return tuple(None if r is None else r.astype(dtype, copy=False) for r in result)

    return wrapper


def sigmoid(a: np.ndarray) -> np.ndarray:
    # 0.5 (1 + tanh(a/2)): the logistic function without exp overflow for large |a|
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _active(lengths, t: int, batch: int) -> np.ndarray | None:
    """(B, 1) bool: which sequences are inside their length at time t; None when all are."""
    if lengths is None:
        return None
    return (np.asarray(lengths) > t).reshape(batch, 1)


def _input_projection(x: np.ndarray, w_ih: np.ndarray, b_ih) -> np.ndarray:
    T, B, _ = x.shape
    gx = x.reshape(T * B, x.shape[2]) @ w_ih.T
    if b_ih is not None:
        gx += b_ih
    return gx.reshape(T, B, w_ih.shape[0])


# ---------------------------------------------------------------------------------------------
# One step of each cell: (h', c', workspace gate blocks)


def _recurrent(h, w_hh, b_hh):
    out = h @ w_hh.T
    if b_hh is not None:
        out += b_hh
    return out


def _rnn_step(cell, gx, h, c, w_hh, b_hh, w_peep, coupled, linear_before_reset):
    a = gx + _recurrent(h, w_hh, b_hh)
    h_new = np.tanh(a) if cell == "rnn_tanh" else np.maximum(a, 0)
    return h_new, None, ()


def _lstm_step(cell, gx, h, c, w_hh, b_hh, w_peep, coupled, linear_before_reset):
    a_i, a_f, a_g, a_o = np.split(gx + _recurrent(h, w_hh, b_hh), 4, axis=1)
    if w_peep is not None:
        a_i = a_i + w_peep[0] * c
        a_f = a_f + w_peep[1] * c
    i = sigmoid(a_i)
    f = 1 - i if coupled else sigmoid(a_f)
    g = np.tanh(a_g)
    c_new = f * c + i * g
    if w_peep is not None:
        a_o = a_o + w_peep[2] * c_new
    o = sigmoid(a_o)
    return o * np.tanh(c_new), c_new, (i, f, g, o)


def _gru_step(cell, gx, h, c, w_hh, b_hh, w_peep, coupled, linear_before_reset):
    H = h.shape[1]
    x_r, x_z, x_n = np.split(gx, 3, axis=1)
    if linear_before_reset:
        h_r, h_z, h_n = np.split(_recurrent(h, w_hh, b_hh), 3, axis=1)
        r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
        m = h_n
        n = np.tanh(x_n + r * h_n)
    else:  # the original GRU: the reset gate scales h before the matmul
        h_r, h_z = np.split(_recurrent(h, w_hh[:2 * H], None if b_hh is None else b_hh[:2 * H]), 2, axis=1)
        r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
        m = r * h
        n = np.tanh(x_n + _recurrent(m, w_hh[2 * H:], None if b_hh is None else b_hh[2 * H:]))
    return (1 - z) * n + z * h, None, (r, z, n, m)


_STEP = {"rnn_tanh": _rnn_step, "rnn_relu": _rnn_step, "lstm": _lstm_step, "gru": _gru_step}


# ---------------------------------------------------------------------------------------------
# Whole sequences


@_low_precision_in_float32
def layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, cell: str, reverse: bool = False,
                  lengths=None, coupled: bool = False, linear_before_reset: bool = True):
    """(y, h_n, c_n or None, workspace) for one layer in one direction."""
    T, B, _ = x.shape
    H = h0.shape[1]
    gx = _input_projection(x, w_ih, b_ih)
    y = np.zeros((T, B, H), dtype=gx.dtype)
    workspace = np.zeros((T, B, WORKSPACE_BLOCKS[cell] * H), dtype=gx.dtype)
    h, c = h0, c0
    for t in _steps(T, reverse):
        h_new, c_new, gates = _STEP[cell](cell, gx[t], h, c, w_hh, b_hh, w_peep, coupled, linear_before_reset)
        active = _active(lengths, t, B)
        if active is None:
            h, c, y[t] = h_new, c_new, h_new
        else:
            h = np.where(active, h_new, h)
            c = None if c is None else np.where(active, c_new, c)
            y[t] = np.where(active, h_new, 0)
        for k, block in enumerate((*gates, *([] if c is None else [c]), h)):
            workspace[t, :, k * H:(k + 1) * H] = block
    return y, h, c, workspace


def _states_before(workspace: np.ndarray, block: int, initial: np.ndarray, H: int, reverse: bool) -> np.ndarray:
    """(T, B, H): the state each step started from (block ``block`` of the previous step)."""
    after = workspace[:, :, block * H:(block + 1) * H]
    before = np.empty_like(after)
    if before.shape[0] == 0:
        return before
    if reverse:
        before[-1], before[:-1] = initial, after[1:]
    else:
        before[0], before[1:] = initial, after[:-1]
    return before


@_low_precision_in_float32
def layer_backward(grad_y, grad_h_n, grad_c_n, workspace, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *,
                   cell: str, reverse: bool = False, lengths=None, coupled: bool = False,
                   linear_before_reset: bool = True):
    """Gradients (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep) of one layer, back through time.

    Per step only the pointwise cell derivative and ``dgates @ w_hh``; the weight gradients are
    one matmul each over all steps at the end.
    """
    T, B, _ = x.shape
    H = h0.shape[1]
    G = GATES[cell]
    dtype = workspace.dtype
    blocks = WORKSPACE_BLOCKS[cell]
    h_before = _states_before(workspace, blocks - 1, h0, H, reverse)
    c_before = _states_before(workspace, 4, c0, H, reverse) if cell == "lstm" else None
    d_gx = np.zeros((T, B, G * H), dtype=dtype)  # gradient of the input projection
    d_gh = d_gx if cell != "gru" else np.zeros((T, B, G * H), dtype=dtype)  # of the recurrent one
    dh = np.zeros((B, H), dtype=dtype) if grad_h_n is None else grad_h_n.astype(dtype, copy=True)
    dc = None
    if cell == "lstm":
        dc = np.zeros((B, H), dtype=dtype) if grad_c_n is None else grad_c_n.astype(dtype, copy=True)

    for t in reversed(_steps(T, reverse)):
        active = _active(lengths, t, B)
        ws = workspace[t]
        h_prev = h_before[t]
        dh_t = dh + (grad_y[t] if active is None else np.where(active, grad_y[t], 0))
        if cell in ("rnn_tanh", "rnn_relu"):
            h_new = ws[:, :H]
            da = dh_t * (1 - h_new * h_new) if cell == "rnn_tanh" else np.where(h_new > 0, dh_t, 0)
            parts_x, dh_direct, dc_prev = (da,), 0.0, None
            parts_h = parts_x
        elif cell == "lstm":
            i, f, g, o, c_new = (ws[:, k * H:(k + 1) * H] for k in range(5))
            c_prev = c_before[t]
            tc = np.tanh(c_new)
            da_o = dh_t * tc * o * (1 - o)
            dc_t = dc + dh_t * o * (1 - tc * tc)
            if w_peep is not None:
                dc_t = dc_t + da_o * w_peep[2]
            da_g = dc_t * i * (1 - g * g)
            di = dc_t * g
            if coupled:  # f = 1 - i
                di = di - dc_t * c_prev
                da_f = np.zeros_like(di)
            else:
                da_f = dc_t * c_prev * f * (1 - f)
            da_i = di * i * (1 - i)
            dc_prev = dc_t * f
            if w_peep is not None:
                dc_prev = dc_prev + da_i * w_peep[0] + da_f * w_peep[1]
            parts_x = parts_h = (da_i, da_f, da_g, da_o)
            dh_direct = 0.0
        else:  # gru
            r, z, n, m = (ws[:, k * H:(k + 1) * H] for k in range(4))
            dh_direct = dh_t * z
            da_z = dh_t * (h_prev - n) * z * (1 - z)
            da_n = dh_t * (1 - z) * (1 - n * n)
            if linear_before_reset:
                da_r = da_n * m * r * (1 - r)
                parts_h = (da_r, da_z, da_n * r)
            else:
                d_rh = da_n @ w_hh[2 * H:]
                da_r = d_rh * h_prev * r * (1 - r)
                dh_direct = dh_direct + d_rh * r
                parts_h = (da_r, da_z, da_n)
            parts_x, dc_prev = (da_r, da_z, da_n), None

        d_gx[t] = np.concatenate(parts_x, axis=1)
        if d_gh is not d_gx:
            d_gh[t] = np.concatenate(parts_h, axis=1)
        if active is not None:  # an inactive step passes the state's gradient through unchanged
            d_gx[t] *= active
            if d_gh is not d_gx:
                d_gh[t] *= active
        recurrent_rows = w_hh[:2 * H] if cell == "gru" and not linear_before_reset else w_hh
        dh_new = dh_direct + d_gh[t][:, :recurrent_rows.shape[0]] @ recurrent_rows
        if active is not None:
            dh_new = np.where(active, dh_new, dh)
            if dc is not None:
                dc_prev = np.where(active, dc_prev, dc)
        dh, dc = dh_new, dc_prev

    flat = lambda a: a.reshape(T * B, a.shape[2])  # noqa: E731
    grad_x = (flat(d_gx) @ w_ih).reshape(x.shape)
    grad_w_ih = flat(d_gx).T @ flat(x)
    if cell == "gru" and not linear_before_reset:
        m_all = workspace[:, :, 3 * H:4 * H]
        grad_w_hh = np.concatenate([flat(d_gh[:, :, :2 * H]).T @ flat(h_before),
                                    flat(d_gh[:, :, 2 * H:]).T @ flat(m_all)], axis=0)
    else:
        grad_w_hh = flat(d_gh).T @ flat(h_before)
    grad_b_ih = None if b_ih is None else d_gx.sum(axis=(0, 1))
    grad_b_hh = None if b_hh is None else d_gh.sum(axis=(0, 1))
    grad_w_peep = None
    if cell == "lstm" and w_peep is not None:
        da_i, da_f, da_o = d_gx[:, :, :H], d_gx[:, :, H:2 * H], d_gx[:, :, 3 * H:]
        c_after = workspace[:, :, 4 * H:5 * H]
        grad_w_peep = np.stack([(da_i * c_before).sum(axis=(0, 1)), (da_f * c_before).sum(axis=(0, 1)),
                                (da_o * c_after).sum(axis=(0, 1))])
    return grad_x, dh, dc, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_peep
