"""Layer norm and RMS norm kernels through CuPy: normalization.cu (one block per row) around the
row functions in normalization.cuh. Rows of any length.

The forward reads each element once for rows of up to four 16-byte chunks per thread (16384
fp32 / 32768 half values at 1024 threads: the block sizes below aim at four): each thread keeps
its chunks in registers between the statistics and the write. Longer rows are swept twice. The backward's blocks each add
their rows' ``dw``/``db`` terms into their own fp32 row of a ``[blocks, cols]`` buffer, and a
second kernel adds those rows in order: no atomics, the same bits every run.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from ._module import CUDA_TYPES, NULL, THREADS, Launch, NvrtcProgram, Runner, cuda_type, flag, grid_for, on_gpu, threads_for
from ._stream import on_callers_stream

_MAX_GRID = 65535 * 32  # the forward loops over rows beyond this many blocks
MAX_BACKWARD_BLOCKS = 512  # partial dw/db rows: a function of the shape alone, so the bits never vary


def _expressions() -> tuple[str, ...]:
    kernels = tuple(f"norm_{direction}<{ctype}, {rms}>" for direction in ("forward", "backward")
                    for ctype in CUDA_TYPES.values() for rms in ("false", "true"))
    return kernels + tuple(f"norm_column_sum<{ctype}>" for ctype in CUDA_TYPES.values())


PROGRAM = NvrtcProgram("normalization.cu", _expressions())


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


# ---------------------------------------------------------------------------------------------
# Launch helpers


def backward_blocks(n_rows: int) -> int:
    return max(1, min(n_rows, MAX_BACKWARD_BLOCKS))


def _ptr(a):
    return NULL if a is None else a


def forward_launch(x, residual, weight, bias, y, s, mean, rstd, eps: float, *, rms: bool) -> Launch:
    n_rows, n_cols = x.shape
    return Launch(f"norm_forward<{cuda_type(x, 'input')}, {flag(rms)}>", (max(1, min(n_rows, _MAX_GRID)),),
                  (threads_for(n_cols, x.itemsize),),
                  (x, _ptr(residual), _ptr(weight), _ptr(bias), y, _ptr(s), _ptr(mean), rstd, np.int64(n_rows),
                   np.int64(n_cols), np.float32(eps)))


def backward_launch(dy, ds, x, weight, mean, rstd, dx, dw_part, db_part, *, rms: bool) -> Launch:
    n_rows, n_cols = x.shape
    return Launch(f"norm_backward<{cuda_type(x, 'input')}, {flag(rms)}>", (backward_blocks(n_rows),),
                  (threads_for(n_cols, x.itemsize),),
                  (dy, _ptr(ds), x, _ptr(weight), _ptr(mean), rstd, dx, _ptr(dw_part), _ptr(db_part),
                   np.int64(n_rows), np.int64(n_cols)))


def column_sum_launch(part, out) -> Launch:
    n_parts, n_cols = part.shape
    return Launch(f"norm_column_sum<{cuda_type(out, 'weight')}>", grid_for(-(-n_cols // 4)), (THREADS,),
                  (part, out, np.int64(n_parts), np.int64(n_cols)))


def _as_rows(xp, x, normalized_ndim: int):
    lead = x.shape[:x.ndim - normalized_ndim]
    return xp.ascontiguousarray(x).reshape(math.prod(lead), math.prod(x.shape[x.ndim - normalized_ndim:]))


def _flat(xp, a):
    return None if a is None else xp.ascontiguousarray(a).reshape(-1)


def _stats_shape(x, normalized_ndim: int) -> tuple[int, ...]:
    return tuple(x.shape[:x.ndim - normalized_ndim]) + (1,) * normalized_ndim


def _forward(run: Runner, x, residual, weight, bias, normalized_ndim: int, eps: float, rms: bool):
    xp = run.xp
    rows = _as_rows(xp, x, normalized_ndim)
    n_rows, n_cols = rows.shape
    y = xp.empty_like(rows)
    s = None if residual is None else xp.empty_like(rows)
    launching = n_rows > 0 and n_cols > 0
    if launching:  # the kernel writes every statistic
        mean = None if rms else xp.empty(n_rows, dtype=np.float32)
        rstd = xp.empty(n_rows, dtype=np.float32)
    else:  # a row of length 0 has mean 0 and variance 0
        mean = None if rms else xp.zeros(n_rows, dtype=np.float32)
        rstd = xp.full(n_rows, 1.0 / math.sqrt(eps) if eps > 0 else math.inf, dtype=np.float32)
    spec = forward_launch(rows, None if residual is None else _as_rows(xp, residual, normalized_ndim),
                          _flat(xp, weight), _flat(xp, bias), y, s, mean, rstd, eps, rms=rms)
    if launching:
        run.launch(spec)
    stats = _stats_shape(x, normalized_ndim)
    return (y.reshape(x.shape), None if s is None else s.reshape(x.shape),
            None if mean is None else mean.reshape(stats), rstd.reshape(stats))


def _backward(run: Runner, dy, ds, x, mean, rstd, weight, normalized_ndim: int, rms: bool, bias_grad: bool):
    xp = run.xp
    rows = _as_rows(xp, x, normalized_ndim)
    n_rows, n_cols = rows.shape
    dx = xp.empty_like(rows)
    blocks = backward_blocks(n_rows)
    dw_part = None if weight is None else xp.zeros((blocks, n_cols), dtype=np.float32)
    db_part = xp.zeros((blocks, n_cols), dtype=np.float32) if bias_grad else None
    spec = backward_launch(_as_rows(xp, dy, normalized_ndim), None if ds is None else _as_rows(xp, ds, normalized_ndim),
                           rows, _flat(xp, weight),
                           None if mean is None else xp.ascontiguousarray(mean, dtype=np.float32).reshape(-1),
                           xp.ascontiguousarray(rstd, dtype=np.float32).reshape(-1), dx, dw_part, db_part, rms=rms)
    if n_rows and n_cols:
        run.launch(spec)
    shape = x.shape[x.ndim - normalized_ndim:]
    sums = []
    for part, dtype in ((dw_part, None if weight is None else weight.dtype), (db_part, x.dtype)):
        if part is None:
            sums.append(None)
            continue
        out = xp.empty(n_cols, dtype=dtype)
        if n_cols:
            run.launch(column_sum_launch(part, out))
        sums.append(out.reshape(shape))
    return (dx.reshape(x.shape), *sums)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


@on_callers_stream
def layer_norm(input, weight, bias, *, normalized_ndim: int, eps: float, run: Runner | None = None):
    y, _, mean, rstd = _forward(run or on_gpu(PROGRAM), input, None, weight, bias, normalized_ndim, eps, False)
    return y, mean, rstd


@on_callers_stream
def rms_norm(input, weight, *, normalized_ndim: int, eps: float, run: Runner | None = None):
    y, _, _, rstd = _forward(run or on_gpu(PROGRAM), input, None, weight, None, normalized_ndim, eps, True)
    return y, rstd


@on_callers_stream
def add_layer_norm(input, residual, weight, bias, *, normalized_ndim: int, eps: float, run: Runner | None = None):
    return _forward(run or on_gpu(PROGRAM), input, residual, weight, bias, normalized_ndim, eps, False)


@on_callers_stream
def add_rms_norm(input, residual, weight, *, normalized_ndim: int, eps: float, run: Runner | None = None):
    y, s, _, rstd = _forward(run or on_gpu(PROGRAM), input, residual, weight, None, normalized_ndim, eps, True)
    return y, s, rstd


@on_callers_stream
def layer_norm_backward(grad_output, input, mean, rstd, weight, *, normalized_ndim: int, bias_grad: bool,
                        run: Runner | None = None):
    return _backward(run or on_gpu(PROGRAM), grad_output, None, input, mean, rstd, weight, normalized_ndim, False,
                     bias_grad)


@on_callers_stream
def rms_norm_backward(grad_output, input, rstd, weight, *, normalized_ndim: int, run: Runner | None = None):
    dx, dw, _ = _backward(run or on_gpu(PROGRAM), grad_output, None, input, None, rstd, weight, normalized_ndim, True,
                          False)
    return dx, dw


@on_callers_stream
def add_layer_norm_backward(grad_output, grad_sum, sum, mean, rstd, weight, *, normalized_ndim: int, bias_grad: bool,
                            run: Runner | None = None):
    return _backward(run or on_gpu(PROGRAM), grad_output, grad_sum, sum, mean, rstd, weight, normalized_ndim, False,
                     bias_grad)


@on_callers_stream
def add_rms_norm_backward(grad_output, grad_sum, sum, rstd, weight, *, normalized_ndim: int,
                          run: Runner | None = None):
    dx, dw, _ = _backward(run or on_gpu(PROGRAM), grad_output, grad_sum, sum, None, rstd, weight, normalized_ndim,
                          True, False)
    return dx, dw
