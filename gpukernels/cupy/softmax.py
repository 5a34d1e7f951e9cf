"""Softmax kernels through CuPy: softmax.cu (one block per row) around the row functions in
softmax.cuh. Rows of any length; ``dim`` is moved last and the rows made dense here."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from ._module import CUDA_TYPES, NvrtcProgram, cuda_type, kernel

_MAX_GRID = 65535 * 32  # the kernels loop over rows beyond this many blocks
_CHUNKS_PER_THREAD = 4
# A null pointer argument: CuPy passes None as 0xffffffff (cupy/cupy#9046), not as NULL.
_NULL = np.uint64(0)


def _expressions() -> tuple[str, ...]:
    return tuple(
        f"softmax_{direction}<{ctype}, {log}>"
        for direction in ("forward", "backward") for ctype in CUDA_TYPES.values() for log in ("false", "true")
    )


PROGRAM = NvrtcProgram("softmax.cu", _expressions())


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


def threads_for(n_cols: int, itemsize: int) -> int:
    """Threads per row block: about four 16-byte chunks per thread, a power of two in 32..1024
    (the block merge needs whole warps)."""
    chunks = -(-n_cols // (16 // itemsize))
    wanted = max(1, -(-chunks // _CHUNKS_PER_THREAD))
    return min(1024, max(32, 1 << (wanted - 1).bit_length()))


# ---------------------------------------------------------------------------------------------
# Launch helpers


def _as_rows(x, dim: int):
    import cupy

    moved = cupy.ascontiguousarray(cupy.moveaxis(x, dim, -1))
    return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])  # not -1: rows may be empty


def _from_rows(rows, like, dim: int):
    import cupy

    return cupy.moveaxis(rows.reshape(cupy.moveaxis(like, dim, -1).shape), -1, dim)


def _launch(name: str, ctype: str, log: bool, n_rows: int, n_cols: int, itemsize: int, args: tuple) -> None:
    function = kernel(PROGRAM, f"softmax_{name}<{ctype}, {'true' if log else 'false'}>")
    function((min(n_rows, _MAX_GRID),), (threads_for(n_cols, itemsize),), args)


def _forward(x, dim: int, log: bool, mask=None, lengths=None, masked: bool = False):
    import cupy

    ctype = cuda_type(x, "x")
    rows = _as_rows(x, dim)
    out = cupy.empty_like(rows)
    n_rows, n_cols = rows.shape
    if out.size:
        keep = _NULL if mask is None else _as_rows(cupy.broadcast_to(mask, x.shape), dim).view(cupy.uint8)
        limits = _NULL if lengths is None else cupy.ascontiguousarray(lengths.reshape(-1), dtype=cupy.int64)
        _launch("forward", ctype, log, n_rows, n_cols, rows.itemsize,
                (rows, keep, limits, out, np.int64(n_rows), np.int64(n_cols), np.int32(masked)))
    return _from_rows(out, x, dim)


def _backward(grad_output, output, dim: int, log: bool):
    import cupy

    ctype = cuda_type(grad_output, "grad_output")
    dy, y = _as_rows(grad_output, dim), _as_rows(output, dim)
    dx = cupy.empty_like(y)
    n_rows, n_cols = y.shape
    if dx.size:
        _launch("backward", ctype, log, n_rows, n_cols, y.itemsize, (dy, y, dx, np.int64(n_rows), np.int64(n_cols)))
    return _from_rows(dx, output, dim)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


def softmax(x, dim: int):
    return _forward(x, dim, log=False)


def log_softmax(x, dim: int):
    return _forward(x, dim, log=True)


def masked_softmax(x, mask, lengths, dim: int):
    return _forward(x, dim, log=False, mask=mask, lengths=lengths, masked=True)


def softmax_backward(grad_output, output, dim: int):
    return _backward(grad_output, output, dim, log=False)


def log_softmax_backward(grad_output, output, dim: int):
    return _backward(grad_output, output, dim, log=True)
