"""Softmax kernels through CuPy: softmax.cu (one block per row) around the row functions in
softmax.cuh. Rows of any length; ``dim`` is moved last and the rows made dense here."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from ._module import CUDA_TYPES, NULL, Launch, NvrtcProgram, Runner, cuda_type, flag, on_gpu, threads_for
from ._stream import on_callers_stream

_MAX_GRID = 65535 * 32  # the kernels loop over rows beyond this many blocks


def _expressions() -> tuple[str, ...]:
    return tuple(
        f"softmax_{direction}<{ctype}, {log}>"
        for direction in ("forward", "backward") for ctype in CUDA_TYPES.values() for log in ("false", "true")
    )


PROGRAM = NvrtcProgram("softmax.cu", _expressions())


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


# ---------------------------------------------------------------------------------------------
# Launch helpers


def _row_blocks(rows) -> tuple[tuple[int], tuple[int]]:
    n_rows, n_cols = rows.shape
    return (max(1, min(n_rows, _MAX_GRID)),), (threads_for(n_cols, rows.itemsize),)


def forward_launch(rows, keep, limits, out, *, log: bool, masked: bool) -> Launch:
    """Softmax of the dense (rows, cols) ``rows`` into ``out``; ``keep`` (uint8 per element) and
    ``limits`` (int64 per row) may be None."""
    grid, block = _row_blocks(rows)
    n_rows, n_cols = rows.shape
    return Launch(f"softmax_forward<{cuda_type(rows, 'x')}, {flag(log)}>", grid, block,
                  (rows, NULL if keep is None else keep, NULL if limits is None else limits, out, np.int64(n_rows),
                   np.int64(n_cols), np.int32(masked)))


def backward_launch(dy, y, dx, *, log: bool) -> Launch:
    grid, block = _row_blocks(y)
    n_rows, n_cols = y.shape
    return Launch(f"softmax_backward<{cuda_type(dy, 'grad_output')}, {flag(log)}>", grid, block,
                  (dy, y, dx, np.int64(n_rows), np.int64(n_cols)))


def _as_rows(xp, x, dim: int):
    moved = xp.ascontiguousarray(xp.moveaxis(x, dim, -1))
    return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])  # not -1: rows may be empty


def _from_rows(xp, rows, like, dim: int):
    return xp.moveaxis(rows.reshape(xp.moveaxis(like, dim, -1).shape), -1, dim)


def _forward(run: Runner, x, dim: int, log: bool, mask=None, lengths=None, masked: bool = False):
    xp = run.xp
    rows = _as_rows(xp, x, dim)
    out = xp.empty_like(rows)
    keep = None if mask is None else _as_rows(xp, xp.broadcast_to(mask, x.shape), dim).view(xp.uint8)
    limits = None if lengths is None else xp.ascontiguousarray(lengths.reshape(-1), dtype=xp.int64)
    spec = forward_launch(rows, keep, limits, out, log=log, masked=masked)
    if out.size:
        run.launch(spec)
    return _from_rows(xp, out, x, dim)


def _backward(run: Runner, grad_output, output, dim: int, log: bool):
    xp = run.xp
    dy, y = _as_rows(xp, grad_output, dim), _as_rows(xp, output, dim)
    dx = xp.empty_like(y)
    spec = backward_launch(dy, y, dx, log=log)
    if dx.size:
        run.launch(spec)
    return _from_rows(xp, dx, output, dim)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


@on_callers_stream
def softmax(x, dim: int, *, run: Runner | None = None):
    return _forward(run or on_gpu(PROGRAM), x, dim, log=False)


@on_callers_stream
def log_softmax(x, dim: int, *, run: Runner | None = None):
    return _forward(run or on_gpu(PROGRAM), x, dim, log=True)


@on_callers_stream
def masked_softmax(x, mask, lengths, dim: int, *, run: Runner | None = None):
    return _forward(run or on_gpu(PROGRAM), x, dim, log=False, mask=mask, lengths=lengths, masked=True)


@on_callers_stream
def softmax_backward(grad_output, output, dim: int, *, run: Runner | None = None):
    return _backward(run or on_gpu(PROGRAM), grad_output, output, dim, log=False)


@on_callers_stream
def log_softmax_backward(grad_output, output, dim: int, *, run: Runner | None = None):
    return _backward(run or on_gpu(PROGRAM), grad_output, output, dim, log=True)
