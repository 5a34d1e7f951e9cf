"""Recurrent cells (RNN, LSTM, GRU) over whole sequences, forward and backward through time,
in plain NumPy. A single cell step is a sequence of length 1.

Layout (PyTorch's): ``x`` is ``(T, B, I)``, states ``(B, H)``, ``w_ih`` ``(G*H, I)``, ``w_hh``
``(G*H, H)``, biases ``(G*H,)`` with G gate blocks: 1 for RNN, 4 (i, f, g, o) for LSTM, 3
(r, z, n) for GRU. ``w_peep`` is ``(3, H)``: the peephole weights of i, f (which see ``c``) and
o (which sees ``c'``).

Multi-head recurrent weights (``heads > 1``, see ``gpukernels.ops.rnn``): ``w_hh`` is the compact
``(G*H, H // heads)``, only the diagonal blocks, and every product with it runs head by head (one
batched ``np.matmul`` over views, see "The recurrent products" below): the dense block-diagonal
matrix is never formed, and the products cost ``heads`` times fewer multiply-adds.

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
import threading

import numpy as np

from . import _parallel

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


# ---------------------------------------------------------------------------------------------
# How the CPU runs a layer. A step of B x H is tiny (16 x 128 x 512 for an LSTM step's matmul:
# 28 us on one core), so what counts is the number of NumPy calls per step (each 1-3 us) and
# where the second core goes:
# * OpenBLAS's own threads gain nothing on such products and, while they spin-wait for work, cost
#   up to milliseconds per call when the cores are shared (measured: 3.9 ms instead of 28 us on a
#   busy 2-core VM). The layer runs its BLAS calls on the calling thread instead (_parallel.one_blas_thread)
#   and puts the second core to work itself: the time loop runs as one stage of a pipeline over
#   chunks of steps, beside the large products that do not depend on it (the input projection
#   ahead of the forward loop, the input and weight gradients behind the backward one).
# * Everything that does not depend on the recursion is computed before the loop for a whole
#   chunk at once (one call per chunk instead of one per step), so a backward step is 6-7 calls.


@functools.lru_cache(maxsize=1)
def _keep_freed_layer_buffers() -> None:
    """A layer allocates and frees 10-15 MB of buffers per call (at B=16, H=128, T=100). glibc
    returns freed memory at the top of the heap beyond its trim threshold to the system (8 MiB
    once reference/_parallel.py has raised the thresholds), so every call faulted fresh zeroed
    pages back in: 30-50% of a forward's time on one core. Freeing one 30 MiB block, as the
    first large NumPy array freed in a process does, moves the mmap threshold to 30 MiB (glibc
    moves it up to 32 MiB) and the trim threshold to 60 MiB. Done once, at the first layer."""
    block = np.empty(30 << 20, dtype=np.uint8)
    del block


# A layer's steps are cut into this many chunks (fewer when T is smaller): a function of T alone,
# so every thread count computes the same chunks in the same order and gives the same bits.
PIPELINE_CHUNKS = 8


def _chunks(T: int, reverse: bool) -> list[slice]:
    """Ranges of steps in the order the forward loop visits them."""
    ranges = [slice(lo, hi) for lo, hi in _parallel.split(T, max(1, -(-T // PIPELINE_CHUNKS)))]
    return ranges[::-1] if reverse else ranges


# Below this many multiply-adds in the input projection a layer runs its stages one after
# another on the calling thread (a pool hand-off costs tens of microseconds: a cell step is less).
PIPELINE_MIN_WORK = 1 << 21


def _worth_a_pipeline(T: int, B: int, GH: int, I: int) -> bool:
    return T > 1 and T * B * GH * I >= PIPELINE_MIN_WORK


def _pipeline(stages, parallel: bool) -> None:
    """Run ``stages``, (work, chunks, after) triples: ``work(k)`` for each chunk index k of
    ``chunks`` in order, each once stage ``after`` (an earlier stage, or None) has finished chunk
    k. On the pool (when ``parallel``) threads take the stages in order as they become free, so
    one thread runs them one after another and two run two side by side; a stage only waits for
    earlier ones, which some thread already runs. A failing stage releases those after it."""
    finished = [{k: threading.Event() for k in chunks} for _, chunks, _ in stages]
    failed = threading.Event()

    def task(s):
        work, chunks, after = stages[s]

        def run_stage():
            try:
                for k in chunks:
                    if after is not None:
                        finished[after][k].wait()
                    if failed.is_set():
                        return
                    work(k)
                    finished[s][k].set()
            except BaseException:
                failed.set()
                raise
            finally:
                for event in finished[s].values():
                    event.set()
        return run_stage

    tasks = [task(s) for s in range(len(stages))]
    if parallel:
        _parallel.run(tasks)
    else:
        for run_stage in tasks:
            run_stage()


def _active_mask(lengths, T: int, B: int) -> np.ndarray | None:
    """(T, B, 1) bool: which sequences are inside their length at each step; None when all are."""
    if lengths is None:
        return None
    return (np.arange(T)[:, None] < np.asarray(lengths)[None, :]).reshape(T, B, 1)


# ---------------------------------------------------------------------------------------------
# One forward step of each cell, written into this step's workspace row ``ws`` (B, K*H): the
# gates and the new states land where backward reads them. ``gx`` already holds the biases that
# add to the input projection (b_ih, and b_hh where it adds outside a product); ``w_hh_t`` is
# _forward_weight's (w_hh transposed into a contiguous array once per layer, which BLAS
# multiplies fastest, or its transposed diagonal blocks);
# ``scratch`` holds the step's temporaries, allocated once per layer.


def _blocks(ws: np.ndarray, H: int, count: int) -> list[np.ndarray]:
    return [ws[..., k * H:(k + 1) * H] for k in range(count)]


@functools.lru_cache(maxsize=32)
def _sigmoid_via_tanh(pattern: str, H: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) for gate blocks named by ``pattern`` ('s' sigmoid, 't' tanh): with them
    ``tanh(scale a) * scale + shift`` is sigmoid(a) = (1 + tanh(a/2)) / 2 on 's' blocks (no exp
    overflow for large |a|) and tanh(a) on 't' blocks: every gate of a step in four calls."""
    scale = np.repeat([0.5 if p == "s" else 1.0 for p in pattern], H).astype(dtype)
    shift = np.repeat([0.5 if p == "s" else 0.0 for p in pattern], H).astype(dtype)
    return scale, shift


def _activate(a: np.ndarray, pattern: str, out: np.ndarray | None = None) -> None:
    """The gate nonlinearities of ``pattern`` (see _sigmoid_via_tanh) of ``a`` (overwritten) into
    ``out`` (default: ``a``)."""
    scale, shift = _sigmoid_via_tanh(pattern, a.shape[-1] // len(pattern), a.dtype)
    a *= scale
    np.tanh(a, out=a)
    a *= scale
    np.add(a, shift, out=a if out is None else out)


@functools.lru_cache(maxsize=32)
def _derivative_shift(pattern: str, H: int, dtype: np.dtype) -> np.ndarray:
    return np.repeat([1.0 if p == "t" else 0.0 for p in pattern], H).astype(dtype)


def _gate_derivatives(y: np.ndarray, pattern: str, out: np.ndarray) -> np.ndarray:
    """The derivatives of the gate nonlinearities of ``pattern`` from their outputs ``y``, all
    blocks in three calls: (1 - y)(y + shift), shift 0 on 's' blocks (sigmoid' = y (1 - y))
    and 1 on 't' blocks (tanh' = (1 - y)(1 + y), which unlike 1 - y^2 does not cancel)."""
    shift = _derivative_shift(pattern, y.shape[-1] // len(pattern), y.dtype)
    np.subtract(1, y, out=out)
    out *= y + shift
    return out


# ---------------------------------------------------------------------------------------------
# The recurrent products. heads=1: one matmul with PyTorch's dense w_hh (today's calls, exactly).
# heads > 1: each head's product is its own, one batched np.matmul over a stack of views per
# product (no dense matrix, heads times fewer multiply-adds). Measured on one core at B=16,
# H=128 (LSTM step, heads 1/2/4): the forward product 20/11/7 us (heads=1: the LSTM's gate-major
# (4, H, H) product), the backward 26/13/8 us; a Python loop over the heads was slower (forward
# 13 us at heads=2, 12 at 4). Backward gathers its
# gate gradients head-major first (one copy of B*G*H): one product over K = G*size per head then
# beats a product per gate and head summed afterwards (13 vs 15 us at heads=2).


def _forward_weight(w_hh: np.ndarray, gates: int, heads: int) -> np.ndarray:
    """What the forward products multiply the state by: w_hh^T ``(H, G*H)`` when heads=1; else
    the transposed diagonal blocks ``(G, heads, size, size)`` (block [g, j] takes head j's slice
    of h to gate g's units of head j)."""
    if heads == 1:
        return np.ascontiguousarray(w_hh.T)
    size = w_hh.shape[1]
    return np.ascontiguousarray(w_hh.reshape(gates, heads, size, size).transpose(0, 1, 3, 2))


def _heads_of(a: np.ndarray, heads: int, gates: int = 0) -> np.ndarray:
    """A view of ``a`` (B, H) as (heads, B, size); of ``a`` (B, gates*H) as (gates, heads, B, size)."""
    B, size = a.shape[0], a.shape[1] // (heads * max(gates, 1))
    if not gates:
        return a.reshape(B, heads, size).transpose(1, 0, 2)
    return a.reshape(B, gates, heads, size).transpose(1, 2, 0, 3)


def _times_w_hh(h: np.ndarray, w: np.ndarray, out: np.ndarray, first: int = 0, last: int | None = None) -> None:
    """``out`` (B, G'*H) = h @ w_hh[rows of gates first..last]^T, ``w`` from _forward_weight."""
    if w.ndim == 2:
        H = h.shape[1]
        np.matmul(h, w if first == 0 and last is None else w[:, first * H:None if last is None else last * H],
                  out=out)
        return
    blocks = w[first:last]
    np.matmul(_heads_of(h, w.shape[1]), blocks, out=_heads_of(out, w.shape[1], len(blocks)))


def _backward_weight(w_hh: np.ndarray, gates: int, heads: int) -> np.ndarray:
    """What ``dgates @ w_hh`` multiplies by: w_hh itself when heads=1; else head j's rows, gate by
    gate, as ``(heads, G*size, size)``."""
    if heads == 1:
        return w_hh
    size = w_hh.shape[1]
    return np.ascontiguousarray(w_hh.reshape(gates, heads, size, size).transpose(1, 0, 2, 3)).reshape(
        heads, gates * size, size)


def _grad_times_w_hh(d: np.ndarray, w: np.ndarray, out: np.ndarray, gathered: np.ndarray | None,
                     first: int = 0, last: int | None = None) -> None:
    """``out`` (B, H) = d @ w_hh[rows of gates first..last], ``d`` being those gates' gradients
    (B, G'*H) and ``w`` from _backward_weight; ``gathered`` (heads, B, G*size) is scratch."""
    if w.ndim == 2:
        H = out.shape[1]
        np.matmul(d, w if first == 0 and last is None else w[first * H:None if last is None else last * H], out=out)
        return
    heads, size = w.shape[0], w.shape[2]
    rows = w[:, first * size:None if last is None else last * size]
    gates = rows.shape[1] // size
    head_major = gathered[:, :, :gates * size]  # (heads, B, G'*size): head j's gate gradients, gate-major
    np.copyto(head_major.reshape(heads, d.shape[0], gates, size), _heads_of(d, heads, gates).transpose(1, 2, 0, 3))
    np.matmul(head_major, rows, out=_heads_of(out, heads))


def _weight_gradient(d: np.ndarray, h: np.ndarray, heads: int) -> np.ndarray:
    """The w_hh gradient ``d^T @ h`` of gate gradients ``d`` (rows, G'*H) and states ``h``
    (rows, H): dense when heads=1, else compact (G'*H, size), each block from its own head."""
    if heads == 1:
        return d.T @ h
    rows, H = h.shape
    size = H // heads
    gates = d.shape[1] // H
    blocks = np.matmul(d.reshape(rows, gates, heads, size).transpose(1, 2, 3, 0),
                       h.reshape(rows, heads, size).transpose(1, 0, 2))  # (gates, heads, size, size)
    return blocks.reshape(gates * H, size)


def _rnn_step(cell, gx, h, c, w_hh_t, b_hh, w_peep, coupled, linear_before_reset, ws, scratch):
    (h_new,) = _blocks(ws, h.shape[1], 1)
    _times_w_hh(h, w_hh_t, h_new)
    h_new += gx
    if cell == "rnn_tanh":
        np.tanh(h_new, out=h_new)
    else:
        np.maximum(h_new, 0, out=h_new)
    return h_new, None


def _gru_step(cell, gx, h, c, w_hh_t, b_hh, w_peep, coupled, linear_before_reset, ws, scratch):
    H = h.shape[1]
    (hh,) = scratch
    r, z, n, m, h_new = _blocks(ws, H, 5)
    x_rz, x_n = gx[:, :2 * H], gx[:, 2 * H:]
    if linear_before_reset:
        _times_w_hh(h, w_hh_t, hh)  # W_h{r,z,n} h (+ b_hn: b_hr, b_hz are in gx)
        hh[:, :2 * H] += x_rz
        _activate(hh[:, :2 * H], "ss", out=ws[:, :2 * H])
        np.copyto(m, hh[:, 2 * H:])
        if b_hh is not None:
            m += b_hh[2 * H:]
        np.multiply(r, m, out=n)  # n = tanh(x_n + r (W_hn h + b_hn))
    else:  # the original GRU: the reset gate scales h before the matmul
        _times_w_hh(h, w_hh_t, ws[:, :2 * H], 0, 2)
        ws[:, :2 * H] += x_rz
        _activate(ws[:, :2 * H], "ss")
        np.multiply(r, h, out=m)
        _times_w_hh(m, w_hh_t, n, 2)
        if b_hh is not None:
            n += b_hh[2 * H:]
    n += x_n
    np.tanh(n, out=n)
    np.subtract(h, n, out=h_new)  # h' = (1 - z) n + z h = n + z (h - n)
    h_new *= z
    h_new += n
    return h_new, None


_STEP = {"rnn_tanh": _rnn_step, "rnn_relu": _rnn_step, "gru": _gru_step}  # the LSTM: _lstm_forward


def _step_scratch(cell: str, B: int, H: int, dtype) -> tuple[np.ndarray, ...]:
    if cell == "gru":
        return (np.empty((B, 3 * H), dtype),)
    return ()


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
                  lengths=None, coupled: bool = False, linear_before_reset: bool = True, heads: int = 1):
    """(y, h_n, c_n or None, workspace) for one layer in one direction (``w_hh`` compact when
    ``heads > 1``).

    Two pipeline stages over chunks of steps: the input projection of a chunk (one matmul),
    then the time loop through it.
    """
    _keep_freed_layer_buffers()
    if cell == "lstm":
        return _lstm_forward(x, h0, c0, w_ih, w_hh, _projection_biases(cell, b_ih, b_hh, h0.shape[1]), w_peep,
                             reverse=reverse, active=_active_mask(lengths, *x.shape[:2]), coupled=coupled,
                             heads=heads)
    T, B, I = x.shape
    H = h0.shape[1]
    G, K = GATES[cell], WORKSPACE_BLOCKS[cell]
    dtype = np.result_type(x, w_ih)
    bias = _projection_biases(cell, b_ih, b_hh, H)
    gx = np.empty((T, B, G * H), dtype=dtype)
    w_hh_t = _forward_weight(w_hh, G, heads)
    workspace = np.empty((T, B, K * H), dtype=dtype)
    scratch = _step_scratch(cell, B, H, dtype)
    active = _active_mask(lengths, T, B)
    state = [h0.astype(dtype, copy=False)]
    chunks = _chunks(T, reverse)

    def project(k):
        s = chunks[k]
        rows = (s.stop - s.start) * B
        np.matmul(x[s].reshape(rows, I), w_ih.T, out=gx[s].reshape(rows, G * H))
        if bias is not None:
            gx[s] += bias

    def recur(k):
        step = _STEP[cell]
        (h,) = state
        steps = range(T)[chunks[k]]
        for t in (steps[::-1] if reverse else steps):
            h_new, _ = step(cell, gx[t], h, None, w_hh_t, b_hh, w_peep, coupled, linear_before_reset, workspace[t],
                            scratch)
            if active is not None:  # an inactive sequence keeps its state (the workspace holds it)
                np.copyto(h_new, h, where=~active[t])
            h = h_new
        state[:] = (h,)

    every = range(len(chunks))
    with _parallel.one_blas_thread():
        _pipeline([(project, every, None), (recur, every, 0)], _worth_a_pipeline(T, B, G * H, I))
    h_after = workspace[:, :, (K - 1) * H:]
    y = h_after.copy() if active is None else np.where(active, h_after, 0).astype(dtype, copy=False)
    return y, state[0].copy(), None, workspace


# The LSTM's forward works gate-major: its gate pre-activations are (4, B, H), gate by gate, in
# the order i, f, o, g (sigmoids first), so that every block a step touches is one contiguous
# array (a (B, H) column block of a (B, 4H) row layout is B strided rows: 2-3x the time per call)
# and the recurrent product is four 16 x 128 x 128 products, which OpenBLAS runs faster than one
# 16 x 128 x 512. Each finished chunk is then copied into the workspace's layout.
# The sigmoid gates' pre-activations arrive halved (the rows of w_ih, w_hh, the biases and the
# peepholes halved once per call; halving is exact), so one tanh over all four blocks
# gives tanh(a/2) there, and sigmoid(a) = tanh(a/2)/2 + 1/2 (halving is exact in binary).
_LSTM_GATE_MAJOR = (0, 1, 3, 2)  # i, f, o, g: the rows of PyTorch's i, f, g, o blocks in that order
_LSTM_HALVED = np.array([0.5, 0.5, 0.5, 1.0])  # per gate-major block: sigmoid blocks are halved


def _lstm_gate_major(w: np.ndarray, H: int, dtype) -> np.ndarray:
    """w_hh (4H, H) or w_ih (4H, I) as the four transposed gate blocks (4, H or I, H) that
    multiply h or x, in gate-major order with the sigmoid rows halved: one pass over the weight.
    (A transposed view would save the copy but multiplies 2.7x slower in these small products.)"""
    blocks = w.reshape(4, H, w.shape[1])
    out = np.empty((4, w.shape[1], H), dtype=dtype)
    for gate, (source, factor) in enumerate(zip(_LSTM_GATE_MAJOR, _LSTM_HALVED)):
        np.multiply(blocks[source].T, factor, out=out[gate])
    return out


def _lstm_heads_gate_major(w_hh: np.ndarray, heads: int, dtype) -> np.ndarray:
    """The compact w_hh (4H, size) of heads > 1 as _lstm_gate_major orders and halves it, per
    head: (4, heads, size, size), block [gate, j] multiplying head j's slice of h."""
    size = w_hh.shape[1]
    blocks = w_hh.reshape(4, heads, size, size)
    out = np.empty((4, heads, size, size), dtype=dtype)
    for gate, (source, factor) in enumerate(zip(_LSTM_GATE_MAJOR, _LSTM_HALVED)):
        np.multiply(blocks[source].transpose(0, 2, 1), factor, out=out[gate])
    return out


def _lstm_forward(x, h0, c0, w_ih, w_hh, bias, w_peep, *, reverse, active, coupled, heads=1):
    T, B, I = x.shape
    H = h0.shape[1]
    dtype = np.result_type(x, w_ih)
    # (4, H, H), or per head (4, heads, size, size)
    w_hh4 = _lstm_gate_major(w_hh, H, dtype) if heads == 1 else _lstm_heads_gate_major(w_hh, heads, dtype)
    w_ih4 = _lstm_gate_major(w_ih, H, dtype)  # (4, I, H)
    if bias is not None:  # gate-major and halved like the weights' rows: (4, 1, H)
        bias = (bias.reshape(4, H)[list(_LSTM_GATE_MAJOR)] * _LSTM_HALVED[:, None]).astype(dtype)[:, None, :]
    peep = None
    if w_peep is not None:  # i and f see c (halved like their rows), o sees c' (likewise)
        peep = (w_peep[:2] * 0.5).reshape(2, 1, H).astype(dtype), (w_peep[2] * 0.5).astype(dtype)
    gx = np.empty((4, T, B, H), dtype=dtype)  # the input projection, gate-major
    gates = np.empty((T, 4, B, H), dtype=dtype)  # the activated gates, gate-major
    c_all = np.empty((T, B, H), dtype=dtype)
    h_all = np.empty((T, B, H), dtype=dtype)
    workspace = np.empty((T, B, 6 * H), dtype=dtype)
    a = np.empty((4, B, H), dtype=dtype)
    a_heads = None if heads == 1 else a.reshape(4, B, heads, H // heads).transpose(0, 2, 1, 3)
    product = np.empty((2, B, H), dtype=dtype)
    state = [h0.astype(dtype, copy=False), c0.astype(dtype, copy=False)]
    chunks = _chunks(T, reverse)

    def project(k):
        """The chunk's x @ w_ih^T + bias straight into gx, gate-major, the sigmoid gates halved
        (by their weights' and bias's halved rows: the same bits as halving the sums, and no
        pass to copy PyTorch's row layout into gx: 10% of the projection)."""
        s = chunks[k]
        rows = (s.stop - s.start) * B
        block = gx[:, s].reshape(4, rows, H)  # a view: the chunk's rows of each gate
        np.matmul(x[s].reshape(rows, I), w_ih4, out=block)
        if bias is not None:
            block += bias

    def recur(k):
        h, c = state
        s = chunks[k]
        steps = range(T)[s]
        for t in (steps[::-1] if reverse else steps):
            g, c_new, h_new = gates[t], c_all[t], h_all[t]  # g: this step's i, f, o, g
            if a_heads is None:
                np.matmul(h, w_hh4, out=a)
            else:
                np.matmul(_heads_of(h, heads), w_hh4, out=a_heads)
            np.add(a, gx[:, t], out=a)
            if peep is None:
                np.tanh(a, out=g)
                sigmoids = g[:3]
            else:
                np.multiply(c, peep[0], out=product)
                a[:2] += product
                np.tanh(a[:2], out=g[:2])
                np.tanh(a[3], out=g[3])
                sigmoids = g[:2]
            sigmoids *= 0.5
            sigmoids += 0.5
            if coupled:
                np.subtract(1, g[0], out=g[1])
            np.multiply(g[1], c, out=c_new)  # c' = f c + i g
            np.multiply(g[0], g[3], out=product[0])
            c_new += product[0]
            if peep is not None:  # o waits for c'
                np.multiply(c_new, peep[1], out=product[0])
                a[2] += product[0]
                np.tanh(a[2], out=g[2])
                g[2] *= 0.5
                g[2] += 0.5
            np.tanh(c_new, out=h_new)  # h' = o tanh(c')
            h_new *= g[2]
            if active is not None:  # an inactive sequence keeps its state
                inactive = ~active[t]
                np.copyto(h_new, h, where=inactive)
                np.copyto(c_new, c, where=inactive)
            h, c = h_new, c_new
        state[:] = h, c
        # the chunk in the workspace's layout, [i, f, g, o, c, h] along each row (here, not in
        # a stage of its own: the projection's thread has the more work)
        ws = workspace[s]
        for block, gate in enumerate(_LSTM_GATE_MAJOR):
            np.copyto(ws[:, :, block * H:(block + 1) * H], gates[s, gate])
        np.copyto(ws[:, :, 4 * H:5 * H], c_all[s])
        np.copyto(ws[:, :, 5 * H:], h_all[s])

    every = range(len(chunks))
    with _parallel.one_blas_thread():
        _pipeline([(project, every, None), (recur, every, 0)], _worth_a_pipeline(T, B, 4 * H, I))
    y = h_all if active is None else np.where(active, h_all, 0).astype(dtype, copy=False)
    h, c = state
    return y, h.copy(), c.copy(), workspace


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


def _gate_blocks(a: np.ndarray, count: int, H: int) -> np.ndarray:
    """The first ``count`` gate blocks of ``a`` (..., G*H) as a (..., count, H) view, so one call
    multiplies every block by the same (..., 1, H) factor."""
    view = a[..., :count * H].reshape(*a.shape[:-1], count, H)
    if view.size and not np.may_share_memory(view, a):
        raise RuntimeError("gate blocks must be a view")  # a copy would lose what is written to it
    return view


def _backward_factors(cell, workspace, h_before, c_before, w_peep, active, coupled, linear_before_reset, H):
    """The parts of backward that do not depend on the recursion, as (T, B, .) arrays and a
    function that fills them for a chunk of steps. Inactive steps (``active`` False) get zero
    gate factors and the factor 1 where a state gradient passes through, so the loop needs no
    masks but one for the LSTM's and RNN's dh.

      rnn:  da = dh_t * d
      lstm: dc_t = dc + dh_t * oc;  da_{i,f,g} = dc_t * k_{i,f,g};  da_o = dh_t * k_o;  dc' = dc_t * f
      gru:  da = dh_t * k;  dh' = recurrent + dh_t * z   (original GRU: k_r multiplies d(r*h))
    """
    T, B = workspace.shape[:2]
    dtype = workspace.dtype
    G = GATES[cell]
    factors = {"k": np.empty((T, B, G * H), dtype)}
    if cell == "lstm":
        factors["oc"] = np.empty((T, B, H), dtype)
        factors["f"] = workspace[:, :, H:2 * H] if active is None else np.empty((T, B, H), dtype)
    if cell == "gru":
        factors["z"] = workspace[:, :, H:2 * H] if active is None else np.empty((T, B, H), dtype)
        if linear_before_reset:  # the recurrent product sees r * (W_hn h + b_hn): its n factor has r
            factors["kh"] = np.empty((T, B, G * H), dtype)

    def fill(s: slice) -> None:
        ws, k = workspace[s], factors["k"][s]
        if cell in ("rnn_tanh", "rnn_relu"):
            h = ws[:, :, :H]
            if cell == "rnn_tanh":
                _gate_derivatives(h, "t", out=k)
            else:
                np.greater(h, 0, out=k)
        elif cell == "lstm":
            i, f, g, o, c_new = _blocks(ws, H, 5)
            c_prev = c_before[s]
            k_i, k_f, k_g, k_o = _blocks(k, H, 4)
            _gate_derivatives(ws[:, :, :4 * H], "ssts", out=k)
            if coupled:  # f = 1 - i: the forget gate's gradient reaches i
                k_i *= g - c_prev
                k_f.fill(0)
            else:
                k_i *= g
                k_f *= c_prev
            k_g *= i
            tanh_c = np.tanh(c_new)
            k_o *= tanh_c
            oc = factors["oc"][s]  # dc'/dh through h' = o tanh(c'): o (1 - tanh(c')^2)
            np.multiply(tanh_c, tanh_c, out=oc)
            np.subtract(1, oc, out=oc)
            oc *= o
            if w_peep is not None:  # o's pre-activation sees c' through its peephole
                oc += k_o * w_peep[2]
        else:
            r, z, n, m = _blocks(ws, H, 4)
            k_r, k_z, k_n = _blocks(k, H, 3)
            _gate_derivatives(n, "t", out=k_n)
            k_n *= 1 - z  # dh'/da_n = (1 - z) tanh'
            np.subtract(h_before[s], n, out=k_z)
            k_z *= _gate_derivatives(z, "s", out=np.empty_like(k_z))  # dh'/da_z = (h - n) sigmoid'
            _gate_derivatives(r, "s", out=k_r)
            if linear_before_reset:
                k_r *= m  # da_r = da_n m sigmoid'(r)
                k_r *= k_n
                kh = factors["kh"][s]
                np.copyto(kh, k)
                kh[:, :, 2 * H:] *= r
            else:
                k_r *= h_before[s]  # da_r = d(r*h) h sigmoid'(r)
        if active is not None:
            inactive = ~active[s]
            for name in ("k", "kh", "oc"):
                if name in factors:
                    np.copyto(factors[name][s], 0, where=inactive)
            passing = {"lstm": "f", "gru": "z"}.get(cell)  # a state gradient passes through: factor 1
            if passing is not None:  # (f of the LSTM's c, z of the GRU's h: workspace block 1 both)
                np.copyto(factors[passing][s], np.where(inactive, 1, ws[:, :, H:2 * H]))

    return factors, fill


def _back_step(cell, t, factors, blocks, gy, dh, dc, dh_next, dc_next, d_gx, d_gh, w_hh, w_peep, active,
               temporaries, linear_before_reset, H):
    """One step back through time: the gate gradients into d_gx[t] (and d_gh[t]), the gradients
    of the states the step started from into dh_next and dc_next (LSTM). ``blocks`` holds the
    (T, B, n, H) views of the gate blocks that one call multiplies by one state gradient; ``w_hh``
    is _backward_weight's."""
    dh_t, dc_t, tmp, gathered = temporaries
    k = factors["k"][t]
    np.add(dh, gy[t], out=dh_t)
    if cell in ("rnn_tanh", "rnn_relu"):
        np.multiply(dh_t, k, out=d_gx[t])
        _grad_times_w_hh(d_gx[t], w_hh, dh_next, gathered)
    elif cell == "lstm":
        np.multiply(dh_t, factors["oc"][t], out=dc_t)
        dc_t += dc
        d = d_gx[t]
        np.multiply(dc_t[:, None, :], blocks["k"][t], out=blocks["d_gx"][t])
        np.multiply(dh_t, k[:, 3 * H:], out=d[:, 3 * H:])
        np.multiply(dc_t, factors["f"][t], out=dc_next)
        if w_peep is not None:
            dc_next += d[:, :H] * w_peep[0]
            dc_next += d[:, H:2 * H] * w_peep[1]
        _grad_times_w_hh(d, w_hh, dh_next, gathered)
    elif linear_before_reset:
        np.multiply(dh_t[:, None, :], blocks["k"][t], out=blocks["d_gx"][t])
        np.multiply(dh_t[:, None, :], blocks["kh"][t], out=blocks["d_gh"][t])
        _grad_times_w_hh(d_gh[t], w_hh, dh_next, gathered)
        np.multiply(dh_t, factors["z"][t], out=tmp)
        dh_next += tmp
    else:  # the original GRU: n's product W_hn (r*h) sends d(r*h) to r and to h
        d = d_gx[t]
        np.multiply(dh_t[:, None, :], blocks["k"][t], out=blocks["d_gx"][t])
        d_rh = dc_t  # (no c in a GRU: this buffer holds d(r*h))
        _grad_times_w_hh(d[:, 2 * H:], w_hh, d_rh, gathered, 2)
        np.multiply(d_rh, k[:, :H], out=d[:, :H])
        _grad_times_w_hh(d[:, :2 * H], w_hh, dh_next, gathered, 0, 2)
        np.multiply(dh_t, factors["z"][t], out=tmp)
        dh_next += tmp
        np.multiply(d_rh, factors["r"][t], out=tmp)
        dh_next += tmp
    if active is not None and cell != "gru":  # an inactive step passes dh through (dh_t = dh there)
        np.copyto(dh_next, dh_t, where=~active[t])


@_low_precision_in_float32
def layer_backward(grad_y, grad_h_n, grad_c_n, workspace, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *,
                   cell: str, reverse: bool = False, lengths=None, coupled: bool = False,
                   linear_before_reset: bool = True, heads: int = 1):
    """Gradients (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep) of one layer, back through time
    (with ``heads > 1`` the w_hh gradient is compact, like ``w_hh``).

    Pipeline stages over chunks of steps, the last chunk first: the factors of the gate
    gradients that do not depend on the recursion (from the workspace, a few calls per chunk);
    the loop back through time (per step the output gradient times those factors, and
    ``dgates @ w_hh``); per chunk its input gradient, and its share of the weight gradients (one
    matmul each, summed over the chunks in a fixed order).
    """
    _keep_freed_layer_buffers()
    T, B, I = x.shape
    H = h0.shape[1]
    G = GATES[cell]
    K = WORKSPACE_BLOCKS[cell]
    dtype = workspace.dtype
    active = _active_mask(lengths, T, B)
    h_before = _states_before(workspace, K - 1, h0.astype(dtype, copy=False), H, reverse)
    c_before = None
    if cell == "lstm":
        c_before = _states_before(workspace, 4, c0.astype(dtype, copy=False), H, reverse)
    gy = grad_y.astype(dtype, copy=False)
    if active is not None:  # padded steps' outputs are zeros: their gradients go nowhere
        gy = np.where(active, gy, 0).astype(dtype, copy=False)
    factors, fill_factors = _backward_factors(cell, workspace, h_before, c_before, w_peep, active, coupled,
                                              linear_before_reset, H)
    if cell == "gru" and not linear_before_reset:
        factors["r"] = workspace[:, :, :H]
    d_gx = np.empty((T, B, G * H), dtype=dtype)  # gradient of the input projection
    # of the recurrent one: differs from d_gx only in the GRU's n block (da_n * r)
    d_gh = np.empty((T, B, G * H), dtype=dtype) if cell == "gru" and linear_before_reset else d_gx
    # the state gradients alternate between two buffers: a step reads one and writes the other
    states = [[np.zeros((B, H), dtype=dtype) for _ in range(2)] for _ in range(2)]
    if grad_h_n is not None:
        np.copyto(states[0][0], grad_h_n)
    if grad_c_n is not None and cell == "lstm":
        np.copyto(states[0][1], grad_c_n)
    gathered = None if heads == 1 else np.empty((heads, B, G * H // heads), dtype=dtype)
    temporaries = [np.empty((B, H), dtype=dtype) for _ in range(3)] + [gathered]
    w_ih_ = w_ih.astype(dtype, copy=False)
    w_hh_ = _backward_weight(w_hh.astype(dtype, copy=False), G, heads)
    x_ = x.astype(dtype, copy=False)

    grad_x = np.empty((T, B, I), dtype=dtype)
    grad_w_ih = np.zeros((G * H, I), dtype=dtype)
    grad_w_hh = np.zeros((G * H, H // heads), dtype=dtype)
    grad_b_ih = None if b_ih is None else np.zeros(G * H, dtype=dtype)
    grad_b_hh = None if b_hh is None else np.zeros(G * H, dtype=dtype)
    same_bias_grads = d_gh is d_gx and grad_b_ih is not None and grad_b_hh is not None
    grad_w_peep = None if cell != "lstm" or w_peep is None else np.zeros((3, H), dtype=dtype)
    chunks = _chunks(T, reverse)[::-1]  # backward visits the chunks last first
    current = [0]
    if cell == "gru" and not linear_before_reset:  # z and n share dh_t; r gets d(r*h)
        blocks = {"k": _gate_blocks(factors["k"][:, :, H:], 2, H), "d_gx": _gate_blocks(d_gx[:, :, H:], 2, H)}
    elif cell in ("lstm", "gru"):  # LSTM: i, f, g share dc_t (o gets dh_t); GRU: r, z, n share dh_t
        blocks = {"k": _gate_blocks(factors["k"], 3, H), "d_gx": _gate_blocks(d_gx, 3, H)}
        if "kh" in factors:
            blocks.update(kh=_gate_blocks(factors["kh"], 3, H), d_gh=_gate_blocks(d_gh, 3, H))
    else:
        blocks = {}

    def factors_of(k):
        fill_factors(chunks[k])

    def recur(k):
        steps = range(T)[chunks[k]]
        for t in (steps if reverse else steps[::-1]):
            (dh, dc), (dh_next, dc_next) = states[current[0]], states[1 - current[0]]
            _back_step(cell, t, factors, blocks, gy, dh, dc, dh_next, dc_next, d_gx, d_gh, w_hh_, w_peep, active,
                       temporaries, linear_before_reset, H)
            current[0] = 1 - current[0]

    def input_gradient_of(k):
        s = chunks[k]
        rows = (s.stop - s.start) * B
        np.matmul(d_gx[s].reshape(rows, G * H), w_ih_, out=grad_x[s].reshape(rows, I))

    def gradients_of(k):
        """The chunk's share of the weight gradients into partials[k]."""
        s, partial = chunks[k], partials[k]
        rows = (s.stop - s.start) * B
        dgx, dgh = d_gx[s].reshape(rows, G * H), d_gh[s].reshape(rows, G * H)
        partial["w_ih"] = dgx.T @ x_[s].reshape(rows, I)
        h_prev = h_before[s].reshape(rows, H)
        if cell == "gru" and not linear_before_reset:  # n's rows multiply r*h (block m)
            m = workspace[s, :, 3 * H:4 * H].reshape(rows, H)
            partial["w_hh"] = np.concatenate([_weight_gradient(dgh[:, :2 * H], h_prev, heads),
                                              _weight_gradient(dgh[:, 2 * H:], m, heads)])
        else:
            partial["w_hh"] = _weight_gradient(dgh, h_prev, heads)
        if grad_b_ih is not None:
            partial["b_ih"] = dgx.sum(axis=0)
        if grad_b_hh is not None and not same_bias_grads:
            partial["b_hh"] = dgh.sum(axis=0)
        if grad_w_peep is not None:
            c_prev, c_new = c_before[s].reshape(rows, H), workspace[s, :, 4 * H:5 * H].reshape(rows, H)
            partial["w_peep"] = np.stack([(dgx[:, :H] * c_prev).sum(axis=0), (dgx[:, H:2 * H] * c_prev).sum(axis=0),
                                          (dgx[:, 3 * H:] * c_new).sum(axis=0)])

    every = range(len(chunks))
    # a chunk's input gradient and its weight gradients are stages of their own: a thread free
    # of the loop takes the next one as soon as the loop has passed its chunk, and the last
    # chunk's two products run side by side
    partials = [{} for _ in chunks]
    stages = [(factors_of, every, None), (recur, every, 0)]
    stages += [stage for k in every for stage in ((input_gradient_of, (k,), 1), (gradients_of, (k,), 1))]
    with _parallel.one_blas_thread():
        _pipeline(stages, _worth_a_pipeline(T, B, G * H, I))
    if partials:  # summed in a fixed order, the first chunk's taken as it is: the same bits for
        totals = dict(partials[0])  # every thread count
        for partial in partials[1:]:
            for name, value in partial.items():
                totals[name] += value
        grad_w_ih, grad_w_hh = totals["w_ih"], totals["w_hh"]
        grad_b_ih, grad_b_hh = totals.get("b_ih", grad_b_ih), totals.get("b_hh", grad_b_hh)
        grad_w_peep = totals.get("w_peep", grad_w_peep)
    if same_bias_grads:
        grad_b_hh = grad_b_ih.copy()
    dh, dc = states[current[0]]
    return grad_x, dh, dc if cell == "lstm" else None, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_peep
