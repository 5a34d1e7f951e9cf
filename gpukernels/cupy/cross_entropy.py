"""Cross-entropy kernels through CuPy: cross_entropy.cu (one block per row) around the row
functions of cross_entropy.cuh; the host side (denominators, scales, reductions, the linear +
cross-entropy's chunk loop with cuBLAS matmuls) is ``gpukernels._cross_entropy_driver``, shared
with the Triton backend. The rows arrive dense ``[rows, classes]`` (``gpukernels.ops`` laid them
out)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .. import _cross_entropy_driver as driver
from ._module import CUDA_TYPES, NULL, Launch, NvrtcProgram, Runner, cuda_type, on_gpu, threads_for
from ._stream import on_callers_stream
from .attention import from_float32, to_float32

KINDS = {"index": 0, "probs": 1, "focal": 2}
_MAX_GRID = 65535 * 32  # the kernel loops over rows beyond this many blocks

PROGRAM = NvrtcProgram("cross_entropy.cu", tuple(
    f"cross_entropy_rows<{ctype}, {kind}>" for ctype in CUDA_TYPES.values() for kind in KINDS.values()) + tuple(
    f"{kernel}<{ctype}>" for kernel in ("cross_entropy_target_grad", "cross_entropy_weight_partial",
                                        "cross_entropy_weight_sum") for ctype in CUDA_TYPES.values()))
# Rows one stage-1 block of the class weights' gradient sums: the partials are 1/256 of the logits.
WEIGHT_ROWS_PER_BLOCK = 256
_MAX_GRID_Y = 65535  # stage 1 strides over row blocks beyond this many


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


def _grid(n_rows: int) -> tuple[int]:
    return (max(1, min(n_rows, _MAX_GRID)),)


def _or_null(a):
    return NULL if a is None else a


def rows_launch(x, target, weight, scale, loss, grad, *, kind: str, ignore_index: int, label_smoothing: float,
                gamma: float, lse=None) -> Launch:
    """The launch for the dense ``[rows, cols]`` ``x``; ``grad`` may be ``x`` itself."""
    n_rows, n_cols = x.shape
    probs = kind == "probs"
    return Launch(
        f"cross_entropy_rows<{cuda_type(x, 'input')}, {KINDS[kind]}>", _grid(n_rows),
        (threads_for(n_cols, x.itemsize),),
        (x, NULL if probs else target, target if probs else NULL, _or_null(weight), scale,
         np.int64(0 if scale.size == 1 else 1), _or_null(loss), _or_null(grad), _or_null(lse), np.int64(n_rows),
         np.int64(n_cols), np.int64(ignore_index), np.float32(label_smoothing), np.float32(gamma)))


def target_grad_launch(x, lse, weight, scale, grad, *, label_smoothing: float) -> Launch:
    """The probability target's gradient of the dense ``[rows, cols]`` ``x``, one block per row."""
    n_rows, n_cols = x.shape
    return Launch(
        f"cross_entropy_target_grad<{cuda_type(x, 'input')}>", _grid(n_rows), (threads_for(n_cols, x.itemsize),),
        (x, _or_null(lse), _or_null(weight), scale, np.int64(0 if scale.size == 1 else 1), grad, np.int64(n_rows),
         np.int64(n_cols), np.float32(label_smoothing)))


def weight_row_blocks(n_rows: int) -> int:
    return -(-n_rows // WEIGHT_ROWS_PER_BLOCK)


def _chunk_threads(chunks: int) -> int:
    """One thread per 16-byte chunk of columns, whole warps, at most 256 (more chunks: more blocks)."""
    return min(256, max(32, -(-chunks // 32) * 32))


def weight_partial_launch(x, target, lse, scale, partial, *, label_smoothing: float) -> Launch:
    """Stage 1 of the class weights' gradient: chunks of columns over grid x, blocks of rows over grid y."""
    n_rows, n_cols = x.shape
    chunks = -(-n_cols // (16 // x.itemsize))
    threads = _chunk_threads(chunks)
    return Launch(
        f"cross_entropy_weight_partial<{cuda_type(x, 'input')}>",
        (-(-chunks // threads), min(weight_row_blocks(n_rows), _MAX_GRID_Y)), (threads,),
        (x, target, lse, scale, np.int64(0 if scale.size == 1 else 1), partial, np.int64(n_rows), np.int64(n_cols),
         np.int64(WEIGHT_ROWS_PER_BLOCK), np.float32(label_smoothing)))


def weight_sum_launch(partial, out) -> Launch:
    """Stage 2: each column's partials (float32, 4 columns a chunk) added in block order into
    ``out`` (the storage type)."""
    blocks, n_cols = partial.shape
    chunks = -(-n_cols // 4)
    threads = _chunk_threads(chunks)
    return Launch(f"cross_entropy_weight_sum<{cuda_type(out, 'input')}>", (-(-chunks // threads),), (threads,),
                  (partial, out, np.int64(blocks), np.int64(n_cols)))


def _weight_kernel(run: Runner):
    def launch(x, target, lse, scale, out, *, label_smoothing: float, empty) -> None:
        partial = empty((weight_row_blocks(x.shape[0]), x.shape[1]))
        if partial.shape[0]:  # no rows: stage 2 alone writes the zeros of an empty sum
            run.launch(weight_partial_launch(x, target, lse, scale, partial, label_smoothing=label_smoothing))
        run.launch(weight_sum_launch(partial, out))

    return launch


def _kernel(run: Runner, launch_of=rows_launch):
    def launch(*arrays, **params):
        run.launch(launch_of(*arrays, **params))

    return launch


def _host(run: Runner) -> dict:
    xp = run.xp
    return dict(device_of={}, empty=lambda n: xp.empty(n, dtype=xp.float32))


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


@on_callers_stream
def cross_entropy_rows(input, target, weight, grad_output, *, kind: str, reduction: str, ignore_index: int = -100,
                       label_smoothing: float = 0.0, gamma: float = 0.0, compute_loss: bool = True,
                       compute_grad: bool = False, compute_logsumexp: bool = False, run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    cuda_type(input, "input")
    x = xp.ascontiguousarray(input)
    target = xp.ascontiguousarray(target if kind == "probs" else target.astype(xp.int64))
    weight = None if weight is None else xp.ascontiguousarray(weight)
    loss, grad, lse = driver.rows_loss(
        xp, _kernel(run), x, target, weight, _float32(xp, grad_output), kind=kind, reduction=reduction,
        ignore_index=ignore_index, label_smoothing=label_smoothing, gamma=gamma, compute_loss=compute_loss,
        compute_grad=compute_grad, empty_like=xp.empty_like, weight_float32=_float32(xp, weight),
        compute_logsumexp=compute_logsumexp, **_host(run))
    return _storage(xp, loss, x.dtype), grad, lse  # the log-sum-exp stays float32


@on_callers_stream
def cross_entropy_target_rows(input, logsumexp, weight, grad_output, *, reduction: str, label_smoothing: float = 0.0,
                              run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    cuda_type(input, "input")
    return driver.target_rows(
        xp, _kernel(run, target_grad_launch), xp.ascontiguousarray(input),
        None if logsumexp is None else xp.ascontiguousarray(logsumexp),
        None if weight is None else xp.ascontiguousarray(weight), _float32(xp, grad_output), reduction=reduction,
        label_smoothing=label_smoothing, empty_like=xp.empty_like, device_of={})


@on_callers_stream
def cross_entropy_weight_rows(input, target, logsumexp, grad_output, *, reduction: str, label_smoothing: float = 0.0,
                              run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    cuda_type(input, "input")
    x = xp.ascontiguousarray(input)
    return driver.weight_rows(
        xp, _kernel(run), _weight_kernel(run), x, xp.ascontiguousarray(target),
        None if logsumexp is None else xp.ascontiguousarray(logsumexp), _float32(xp, grad_output),
        reduction=reduction, label_smoothing=label_smoothing, out=xp.empty(x.shape[1], dtype=x.dtype), **_host(run))


@on_callers_stream
def nll_loss_rows(input, target, weight, grad_output, *, reduction: str, ignore_index: int = -100,
                  compute_loss: bool = True, compute_grad: bool = False, run: Runner | None = None):
    xp = (run or Runner(_cupy(), None)).xp
    cuda_type(input, "input")
    # a gather and a scatter on float32 (cupy has no bfloat16 kernels: such inputs are widened)
    loss, grad = driver.nll_rows(xp, _float32(xp, input), target.astype(xp.int64), _float32(xp, weight),
                                 _float32(xp, grad_output), reduction=reduction, ignore_index=ignore_index,
                                 compute_loss=compute_loss, compute_grad=compute_grad, device_of={}, arange=xp.arange)
    return _storage(xp, loss, input.dtype), _storage(xp, grad, input.dtype)


@on_callers_stream
def linear_cross_entropy_rows(input, weight, target, bias, grad_output, *, reduction: str, ignore_index: int = -100,
                              label_smoothing: float = 0.0, compute_loss: bool = True, compute_grad: bool = False,
                              chunk_size: int | None = None, run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    if cuda_type(input, "input") == "gk::bfloat16":
        raise TypeError("input has dtype bfloat16, which the cupy backend's linear_cross_entropy does not support "
                        "(cupy has no bfloat16 matmul); use the triton backend, or float16/float32")
    return driver.linear_rows_loss(
        xp, _kernel(run), xp.ascontiguousarray(input), xp.ascontiguousarray(weight), target.astype(xp.int64), bias,
        grad_output, reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        compute_loss=compute_loss, compute_grad=compute_grad, chunk_size=chunk_size,
        zeros_like=xp.zeros_like, empty_like=xp.empty_like, accumulate_matmul=_accumulate_matmul, **_host(run))


def _accumulate_matmul(acc, a, b):
    acc += a @ b  # cuBLAS through cupy.matmul; cupy has no in-place GEMM with beta = 1


def _float32(xp, a):
    """``a`` as float32 where the host side computes with it (None stays None)."""
    return None if a is None else to_float32(a, xp)


def _storage(xp, a, dtype):
    """A float32 result in the storage dtype: the dispatch layer's cast back cannot make bfloat16."""
    return None if a is None else from_float32(a, dtype, xp)


def _cupy():
    import cupy

    return cupy
