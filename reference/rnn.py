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


def _steps(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _active(lengths, t: int, batch: int) -> np.ndarray | None:
    """(B, 1) bool: which sequences are inside their length at time t; None when all are."""
    if lengths is None:
        return None
    return (np.asarray(lengths) > t).reshape(batch, 1)


def _input_projection(x: np.ndarray, w_ih: np.ndarray, bias) -> np.ndarray:
    T, B, _ = x.shape
    gx = x.reshape(T * B, x.shape[2]) @ w_ih.T
    if bias is not None:
        gx += bias
    return gx.reshape(T, B, w_ih.shape[0])


# ---------------------------------------------------------------------------------------------
# One step of each cell, written into this step's workspace row ``ws`` (B, K*H): the gates and
# the new states land where backward reads them. ``gx`` already holds the biases that add to
# the input projection (b_ih, and b_hh where it adds outside a product); ``w_hh_t`` is w_hh
# transposed into a contiguous array once per layer, which BLAS multiplies fastest.


def _blocks(ws: np.ndarray, H: int, count: int) -> list[np.ndarray]:
    return [ws[:, k * H:(k + 1) * H] for k in range(count)]


@functools.lru_cache(maxsize=32)
def _sigmoid_via_tanh(pattern: str, H: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) for gate blocks named by ``pattern`` ('s' sigmoid, 't' tanh): with them
    ``tanh(scale a) * scale + shift`` is sigmoid(a) = (1 + tanh(a/2)) / 2 on 's' blocks (no exp
    overflow for large |a|) and tanh(a) on 't' blocks: every gate of a step in four calls."""
    scale = np.repeat([0.5 if p == "s" else 1.0 for p in pattern], H).astype(dtype)
    shift = np.repeat([0.5 if p == "s" else 0.0 for p in pattern], H).astype(dtype)
    return scale, shift


def _gate_derivatives(y: np.ndarray, pattern: str) -> np.ndarray:
    """The derivatives of the gate nonlinearities of ``pattern`` from their outputs ``y``, all
    blocks in three calls: (1 - y)(y + shift), shift 0 on 's' blocks (sigmoid' = y (1 - y))
    and 1 on 't' blocks (tanh' = (1 - y)(1 + y), which unlike 1 - y^2 does not cancel)."""
    shift = _derivative_shift(pattern, y.shape[1] // len(pattern), y.dtype)
    derivative = np.subtract(1, y)
    derivative *= y + shift
    return derivative


@functools.lru_cache(maxsize=32)
def _derivative_shift(pattern: str, H: int, dtype: np.dtype) -> np.ndarray:
    return np.repeat([1.0 if p == "t" else 0.0 for p in pattern], H).astype(dtype)


def _activate(a: np.ndarray, pattern: str) -> None:
    """The gate nonlinearities of ``pattern`` (see _sigmoid_via_tanh), in place on ``a``."""
    scale, shift = _sigmoid_via_tanh(pattern, a.shape[1] // len(pattern), a.dtype)
    a *= scale
    np.tanh(a, out=a)
    a *= scale
    a += shift


def _rnn_step(cell, gx, h, c, w_hh_t, b_hh, w_peep, coupled, linear_before_reset, ws):
    (h_new,) = _blocks(ws, h.shape[1], 1)
    np.matmul(h, w_hh_t, out=h_new)
    h_new += gx
    if cell == "rnn_tanh":
        np.tanh(h_new, out=h_new)
    else:
        np.maximum(h_new, 0, out=h_new)
    return h_new, None


def _lstm_step(cell, gx, h, c, w_hh_t, b_hh, w_peep, coupled, linear_before_reset, ws):
    H = h.shape[1]
    i, f, g, o, c_new, h_new = _blocks(ws, H, 6)
    a = np.matmul(h, w_hh_t)  # the gate pre-activations, then (in place) the gates
    a += gx
    if w_peep is None:  # (on this contiguous array: faster than on the workspace's strided view)
        _activate(a, "ssts")
    else:  # i and f see c, o sees c': o waits for c'
        a[:, :H] += w_peep[0] * c
        a[:, H:2 * H] += w_peep[1] * c
        _activate(a[:, :3 * H], "sst")
    ws[:, :4 * H] = a
    if coupled:
        np.subtract(1, i, out=f)
    np.multiply(f, c, out=c_new)  # c' = f c + i g
    c_new += i * g
    if w_peep is not None:
        o += w_peep[2] * c_new
        _activate(o, "s")
    np.tanh(c_new, out=h_new)  # h' = o tanh(c')
    h_new *= o
    return h_new, c_new


def _gru_step(cell, gx, h, c, w_hh_t, b_hh, w_peep, coupled, linear_before_reset, ws):
    H = h.shape[1]
    r, z, n, m, h_new = _blocks(ws, H, 5)
    x_rz, x_n = gx[:, :2 * H], gx[:, 2 * H:]
    if linear_before_reset:
        hh = h @ w_hh_t  # W_h{r,z,n} h (+ b_hn: b_hr, b_hz are in gx)
        np.add(x_rz, hh[:, :2 * H], out=ws[:, :2 * H])
        _activate(ws[:, :2 * H], "ss")
        np.copyto(m, hh[:, 2 * H:])
        if b_hh is not None:
            m += b_hh[2 * H:]
        np.multiply(r, m, out=n)  # n = tanh(x_n + r (W_hn h + b_hn))
    else:  # the original GRU: the reset gate scales h before the matmul
        np.matmul(h, w_hh_t[:, :2 * H], out=ws[:, :2 * H])
        ws[:, :2 * H] += x_rz
        _activate(ws[:, :2 * H], "ss")
        np.multiply(r, h, out=m)
        np.matmul(m, w_hh_t[:, 2 * H:], out=n)
        if b_hh is not None:
            n += b_hh[2 * H:]
    n += x_n
    np.tanh(n, out=n)
    np.subtract(h, n, out=h_new)  # h' = (1 - z) n + z h = n + z (h - n)
    h_new *= z
    h_new += n
    return h_new, None


_STEP = {"rnn_tanh": _rnn_step, "rnn_relu": _rnn_step, "lstm": _lstm_step, "gru": _gru_step}


def _projection_biases(cell, b_ih, b_hh, H):
    """The biases that add to the input projection: b_ih, and b_hh except the GRU's b_hn (which
    adds inside r * (W_hn h + b_hn), or inside the matmul of the original GRU)."""
    if b_hh is None:
        return b_ih
    if cell == "gru":
        b_hh = np.concatenate([b_hh[:2 * H], np.zeros(H, dtype=b_hh.dtype)])
    return b_hh if b_ih is None else b_ih + b_hh


# ---------------------------------------------------------------------------------------------
# Whole sequences


@_low_precision_in_float32
def layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, cell: str, reverse: bool = False,
                  lengths=None, coupled: bool = False, linear_before_reset: bool = True):
    """(y, h_n, c_n or None, workspace) for one layer in one direction."""
    T, B, _ = x.shape
    H = h0.shape[1]
    gx = _input_projection(x, w_ih, _projection_biases(cell, b_ih, b_hh, H))
    w_hh_t = np.ascontiguousarray(w_hh.T)
    y = np.zeros((T, B, H), dtype=gx.dtype)
    workspace = np.zeros((T, B, WORKSPACE_BLOCKS[cell] * H), dtype=gx.dtype)
    h, c = h0.astype(gx.dtype, copy=False), None if c0 is None else c0.astype(gx.dtype, copy=False)
    for t in _steps(T, reverse):
        ws = workspace[t]
        h_new, c_new = _STEP[cell](cell, gx[t], h, c, w_hh_t, b_hh, w_peep, coupled, linear_before_reset, ws)
        active = _active(lengths, t, B)
        if active is None:
            h, c = h_new, c_new
            y[t] = h_new
        else:  # an inactive sequence keeps its state: the workspace holds the state after the step
            y[t] = np.where(active, h_new, 0)
            np.copyto(h_new, np.where(active, h_new, h))
            if c is not None:
                np.copyto(c_new, np.where(active, c_new, c))
            h, c = h_new, c_new
    return y, h.copy(), None if c is None else c.copy(), workspace


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
            parts_x, dh_direct, dc_prev = (da,), None, None
            parts_h = parts_x
        elif cell == "lstm":  # written straight into d_gx[t]: about 18 NumPy calls a step
            i, f, g, o, c_new = (ws[:, k * H:(k + 1) * H] for k in range(5))
            c_prev = c_before[t]
            d = d_gx[t]  # first the gradients of the gate outputs, then of their pre-activations
            d_i, d_f, d_g, d_o = (d[:, k * H:(k + 1) * H] for k in range(4))
            tc = np.tanh(c_new)
            np.multiply(dh_t, tc, out=d_o)
            dc_t = np.multiply(tc, tc)
            np.subtract(1, dc_t, out=dc_t)
            dc_t *= o
            dc_t *= dh_t
            dc_t += dc  # dc_t = dc + dh_t o (1 - tanh(c')^2)
            if w_peep is not None:
                dc_t += d_o * (o * (1 - o)) * w_peep[2]
            np.multiply(dc_t, g, out=d_i)
            np.multiply(dc_t, i, out=d_g)
            if coupled:  # f = 1 - i: its gradient reaches i
                d_i -= dc_t * c_prev
                d_f.fill(0)
            else:
                np.multiply(dc_t, c_prev, out=d_f)
            d *= _gate_derivatives(ws[:, :4 * H], "ssts")
            dc_prev = np.multiply(dc_t, f)
            if w_peep is not None:
                dc_prev += d_i * w_peep[0]
                dc_prev += d_f * w_peep[1]
            parts_x = parts_h = None
            dh_direct = None
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

        if parts_x is not None:
            d_gx[t] = np.concatenate(parts_x, axis=1)
        if d_gh is not d_gx:
            d_gh[t] = np.concatenate(parts_h, axis=1)
        if active is not None:  # an inactive step passes the state's gradient through unchanged
            d_gx[t] *= active
            if d_gh is not d_gx:
                d_gh[t] *= active
        recurrent_rows = w_hh[:2 * H] if cell == "gru" and not linear_before_reset else w_hh
        dh_new = d_gh[t][:, :recurrent_rows.shape[0]] @ recurrent_rows
        if dh_direct is not None:
            dh_new += dh_direct
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
    grad_b_hh = None if b_hh is None else (
        grad_b_ih.copy() if d_gh is d_gx and grad_b_ih is not None else d_gh.sum(axis=(0, 1)))
    grad_w_peep = None
    if cell == "lstm" and w_peep is not None:
        da_i, da_f, da_o = d_gx[:, :, :H], d_gx[:, :, H:2 * H], d_gx[:, :, 3 * H:]
        c_after = workspace[:, :, 4 * H:5 * H]
        grad_w_peep = np.stack([(da_i * c_before).sum(axis=(0, 1)), (da_f * c_before).sum(axis=(0, 1)),
                                (da_o * c_after).sum(axis=(0, 1))])
    return grad_x, dh, dc, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_peep
