"""Recurrent layers through CuPy: cuBLAS (``cupy.matmul``) for every product and one pointwise
kernel per time step (two for the original GRU), forward and backward; the cell math is in
rnn.cuh. The sequence loops are written against an array module ``xp`` and a step launcher,
so the CPU tests run this very host code with NumPy and the g++-built rnn.cuh.

Precision: the input projection, the recurrent state, the workspace and all of backward are
fp32 whatever the storage dtype (fp16/bf16 storage is read and written at the edges only).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from ._module import CUDA_TYPES, THREADS, NvrtcProgram, cuda_type, grid_for, kernel

RNN, LSTM, GRU, GRU_RZ, GRU_N = 0, 1, 2, 3, 4
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
WORKSPACE_BLOCKS = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 6, "gru": 5}

# Kernel arguments in order: "p" a pointer, "i64" long long, "i32" int (rnn.cu's signatures).
FORWARD_ARGS = ("i64", "i64", "i32", "p", "i64", "p", "i64", "p", "p", "p", "i64", "p", "i64", "p", "i32", "i32",
                "p", "p", "i64")
BACKWARD_ARGS = ("i64", "i64", "i32", "p", "p", "p", "p", "i64", "p", "i64", "p", "i64", "p", "p", "p", "i32", "i32",
                 "p", "p", "p", "p")

# A launcher runs one step kernel: step(direction, cell code, storage array, *args in the order above).
Step = Callable[..., None]


def _expressions() -> tuple[str, ...]:
    return tuple(f"rnn_{direction}_step<{code}, {ctype}>" for direction in ("forward", "backward")
                 for code in (RNN, LSTM, GRU, GRU_RZ, GRU_N) for ctype in CUDA_TYPES.values())


# Element-per-thread bodies with strided gate blocks: scalar loads, so no 128-bit expectation.
PROGRAM = NvrtcProgram("rnn.cu", _expressions(), expect_load_bits=None)


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


def _cuda_step(direction: str, code: int, storage: Any, *args: Any) -> None:
    types = FORWARD_ARGS if direction == "forward" else BACKWARD_ARGS
    converted = tuple(np.int64(a) if t == "i64" else np.int32(a) if t == "i32" else a for t, a in zip(types, args))
    function = kernel(PROGRAM, f"rnn_{direction}_step<{code}, {cuda_type(storage, 'x')}>")
    function(grid_for(int(args[0])), (THREADS,), converted)


# ---------------------------------------------------------------------------------------------
# The sequence loops (any array module)


def _kernel_cells(cell: str, linear_before_reset: bool) -> tuple[int, ...]:
    if cell == "lstm":
        return (LSTM,)
    if cell == "gru":
        return (GRU,) if linear_before_reset else (GRU_RZ, GRU_N)
    return (RNN,)


def _order(T: int, reverse: bool) -> list[int]:
    return list(range(T - 1, -1, -1)) if reverse else list(range(T))


def _or_zeros(xp, array, shape, dtype):
    return xp.zeros(shape, dtype=dtype) if array is None else xp.ascontiguousarray(array)


def _lengths(xp, lengths, T: int, B: int):
    return xp.asarray(lengths if lengths is not None else [T] * B, dtype=xp.int32)


def _states_before(xp, ws, block: int, initial, H: int, reverse: bool):
    after = ws[:, :, block * H:(block + 1) * H]
    if after.shape[0] == 0:
        return after
    parts = [after[1:], initial[None]] if reverse else [initial[None], after[:-1]]
    return xp.concatenate(parts, axis=0)


def run_forward(xp, step: Step, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, cell: str, reverse: bool = False,
                lengths=None, coupled: bool = False, linear_before_reset: bool = True):
    f32 = xp.float32
    T, B, I = x.shape
    H = h0.shape[1]
    G, K = GATES[cell], WORKSPACE_BLOCKS[cell]
    gx = x.reshape(T * B, I).astype(f32) @ w_ih.astype(f32).T  # every step's input projection at once
    if b_ih is not None:
        gx += b_ih.astype(f32)
    gx = gx.reshape(T, B, G * H)
    y = xp.empty((T, B, H), dtype=x.dtype)
    ws = xp.empty((T, B, K * H), dtype=f32)
    lens = _lengths(xp, lengths, T, B)
    b_hh = _or_zeros(xp, b_hh, (G * H,), x.dtype)
    peep = _or_zeros(xp, w_peep, (3, H), x.dtype)
    w32 = w_hh.astype(f32)
    h = xp.ascontiguousarray(h0, dtype=f32)
    c = None if c0 is None else xp.ascontiguousarray(c0, dtype=f32)
    h_col = (K - 1) * H
    for t in _order(T, reverse) if B and H else ():
        c_in = h if c is None else c
        common = (peep, h, h.strides[0] // 4, c_in, c_in.strides[0] // 4, lens, int(cell == "rnn_relu"), int(coupled),
                  y[t], ws[t], K * H)
        if cell == "gru" and not linear_before_reset:
            gh = h @ w32[:2 * H].T
            step("forward", GRU_RZ, x, B * H, H, t, gx[t], G * H, gh, 2 * H, b_hh, *common)
            gh = ws[t, :, 3 * H:4 * H] @ w32[2 * H:].T  # (r*h) @ W_hn^T
            step("forward", GRU_N, x, B * H, H, t, gx[t, :, 2 * H:], G * H, gh, H, b_hh[2 * H:], *common)
        else:
            gh = h @ w32.T
            step("forward", _kernel_cells(cell, True)[0], x, B * H, H, t, gx[t], G * H, gh, G * H, b_hh, *common)
        h = ws[t, :, h_col:h_col + H]
        c = ws[t, :, 4 * H:5 * H] if cell == "lstm" else None
    return y, h.copy(), None if c is None else c.copy(), ws


def run_backward(xp, step: Step, grad_y, grad_h_n, grad_c_n, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *,
                 cell: str, reverse: bool = False, lengths=None, coupled: bool = False,
                 linear_before_reset: bool = True):
    f32 = xp.float32
    T, B, I = x.shape
    H = h0.shape[1]
    G, K = GATES[cell], WORKSPACE_BLOCKS[cell]
    grad_y, ws = xp.ascontiguousarray(grad_y), xp.ascontiguousarray(ws, dtype=f32)
    h0 = xp.ascontiguousarray(h0, dtype=f32)
    c0 = None if c0 is None else xp.ascontiguousarray(c0, dtype=f32)
    dgx = xp.empty((T, B, G * H), dtype=f32)
    dgh = dgx if cell != "gru" else xp.empty((T, B, G * H), dtype=f32)
    dh = xp.zeros((B, H), dtype=f32) if grad_h_n is None else xp.array(grad_h_n, dtype=f32)
    dc = None
    if cell == "lstm":
        dc = xp.zeros((B, H), dtype=f32) if grad_c_n is None else xp.array(grad_c_n, dtype=f32)
    w32 = w_hh.astype(f32)
    lens = _lengths(xp, lengths, T, B)
    peep = _or_zeros(xp, w_peep, (3, H), x.dtype)
    dhd = xp.empty((B, H), dtype=f32)
    dcp = xp.empty((B, H), dtype=f32) if dc is not None else dhd
    drh = xp.empty((B, H), dtype=f32)
    h_col = (K - 1) * H
    order = _order(T, reverse)
    for index in range(T - 1, -1, -1) if B and H else ():
        t = order[index]
        previous = None if index == 0 else order[index - 1]
        h_prev = h0 if previous is None else ws[previous, :, h_col:h_col + H]
        c_prev = h_prev
        if cell == "lstm":
            c_prev = c0 if previous is None else ws[previous, :, 4 * H:5 * H]
        tail = (ws[t], K * H, h_prev, h_prev.strides[0] // 4, c_prev, c_prev.strides[0] // 4, peep, lens, drh,
                int(cell == "rnn_relu"), int(coupled), dgx[t], dgh[t], dhd, dcp)
        dc_in = dh if dc is None else dc
        if cell == "gru" and not linear_before_reset:
            step("backward", GRU_N, x, B * H, H, t, grad_y[t], dh, dc_in, *tail)
            drh[...] = dgh[t, :, 2 * H:] @ w32[2 * H:]
            step("backward", GRU_RZ, x, B * H, H, t, grad_y[t], dhd, dc_in, *tail)
            dh = dhd + dgh[t, :, :2 * H] @ w32[:2 * H]
        else:
            step("backward", _kernel_cells(cell, True)[0], x, B * H, H, t, grad_y[t], dh, dc_in, *tail)
            dh = dhd + dgh[t] @ w32
        if dc is not None:
            dc, dcp = dcp, dc
    # Weight gradients: one matmul each over all steps.
    dgx2d, dgh2d = dgx.reshape(T * B, G * H), dgh.reshape(T * B, G * H)
    grad_x = (dgx2d @ w_ih.astype(f32)).reshape(T, B, I)
    grad_w_ih = dgx2d.T @ x.reshape(T * B, I).astype(f32)
    h_before = _states_before(xp, ws, K - 1, h0, H, reverse).reshape(T * B, H)
    if cell == "gru" and not linear_before_reset:
        m_all = ws[:, :, 3 * H:4 * H].reshape(T * B, H)
        grad_w_hh = xp.concatenate([dgh2d[:, :2 * H].T @ h_before, dgh2d[:, 2 * H:].T @ m_all], axis=0)
    else:
        grad_w_hh = dgh2d.T @ h_before
    grad_b_ih = None if b_ih is None else dgx2d.sum(axis=0)
    grad_b_hh = None if b_hh is None else dgh2d.sum(axis=0)
    grad_w_peep = None
    if cell == "lstm" and w_peep is not None:
        c_before = _states_before(xp, ws, 4, c0, H, reverse)
        c_after = ws[:, :, 4 * H:5 * H]
        grad_w_peep = xp.stack([(dgx[:, :, :H] * c_before).sum(axis=(0, 1)),
                                (dgx[:, :, H:2 * H] * c_before).sum(axis=(0, 1)),
                                (dgx[:, :, 3 * H:] * c_after).sum(axis=(0, 1))])
    return grad_x, dh, dc, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_peep


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


def _checked(arrays: dict) -> None:
    for name, a in arrays.items():
        if a is not None:
            cuda_type(a, name)


def layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, **options):
    import cupy

    _checked({"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_hh": b_hh, "w_peep": w_peep})
    x = cupy.ascontiguousarray(x)
    return run_forward(cupy, _cuda_step, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, **options)


def layer_backward(grad_y, grad_h_n, grad_c_n, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, **options):
    import cupy

    _checked({"grad_y": grad_y, "x": x, "w_peep": w_peep})
    return run_backward(cupy, _cuda_step, grad_y, grad_h_n, grad_c_n, ws, cupy.ascontiguousarray(x), h0, c0, w_ih,
                        w_hh, b_ih, b_hh, w_peep, **options)
