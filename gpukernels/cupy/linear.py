"""The dense layer through CuPy: cuBLAS products (``xp.matmul``, in fp32 whatever the storage:
CuPy has no bfloat16 GEMM) around linear.cu's two fused kernels, the forward epilogue (bias +
activation, and the saved derivative) and the backward's dz = dy * act'(z) with the bias
gradient (deterministic column sums). Written against an array module ``xp``, so the CPU tests
run this host code with NumPy and the g++ build of linear.cu."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..reference.linear import saved_kind
from ._module import CUDA_TYPES, NULL, THREADS, Launch, NvrtcProgram, Runner, cuda_type, flag, grid_for, on_gpu
from ._stream import on_callers_stream
from .activation import ACTS
from .attention import from_float32, to_float32

ACT_TYPES = {None: "gk::Identity", **ACTS}
SAVED_CODES = {"none": 0, "output": 1, "derivative": 2}
COLS_PER_BLOCK, ROW_THREADS = 32, 8  # linear.cu's LINEAR_COLS, LINEAR_ROW_THREADS
_MAX_COLUMN_BLOCKS = 65535


def _forward_kernel(act: str | None, ctype: str, save: bool) -> str:
    return f"linear_forward_epilogue<{ACT_TYPES[act]}, {ctype}, {flag(save)}>"


def _backward_kernel(act: str | None, ctype: str, kind: str) -> str:
    # Only the from-the-output path reads the activation; the others are the same code for all.
    return f"linear_backward_epilogue<{ACT_TYPES[act] if kind == 'output' else 'gk::Identity'}, {ctype}, " \
           f"{SAVED_CODES[kind]}>"


def _expressions() -> tuple[str, ...]:
    names = []
    for ctype in CUDA_TYPES.values():
        names += [_forward_kernel(act, ctype, False) for act in ACT_TYPES]
        names += [_forward_kernel(act, ctype, True) for act in ("gelu", "gelu_tanh", "leaky_relu")]
        names += [_backward_kernel(None, ctype, "none"), _backward_kernel(None, ctype, "derivative")]
        names += [_backward_kernel(act, ctype, "output") for act in ("sigmoid", "tanh", "relu", "leaky_relu")]
    return tuple(names)


# Element by element (z is fp32 and the outputs 16-bit: no common 16-byte chunk), so no 128-bit
# loads are expected of this program.
PROGRAM = NvrtcProgram("linear.cu", _expressions(), expect_load_bits=None)


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


# ---------------------------------------------------------------------------------------------
# Launch helpers


def forward_launch(z, bias, y, d, act: str | None, negative_slope: float) -> Launch:
    """y = act(z + bias) (d = act'(z + bias) when d is not None) over the (M, N) fp32 ``z``."""
    n_rows, n_cols = z.shape
    return Launch(_forward_kernel(act, cuda_type(y, "input"), d is not None), grid_for(int(z.size)), (THREADS,),
                  (z, NULL if bias is None else bias, y, NULL if d is None else d, np.int64(n_rows), np.int64(n_cols),
                   np.float32(negative_slope)))


def backward_launch(dy, saved, dz, db, act: str | None, kind: str, negative_slope: float) -> Launch:
    """dz (fp32) = dy * act'(z) and db (if not None) = its column sums."""
    n_rows, n_cols = dy.shape
    blocks = max(1, min(_MAX_COLUMN_BLOCKS, -(-n_cols // COLS_PER_BLOCK)))
    return Launch(_backward_kernel(act, cuda_type(dy, "grad_output"), kind), (blocks,), (COLS_PER_BLOCK, ROW_THREADS),
                  (dy, NULL if saved is None else saved, dz, NULL if db is None else db, np.int64(n_rows),
                   np.int64(n_cols), np.float32(negative_slope)))


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


@on_callers_stream
def forward(input, weight, bias, activation=None, negative_slope=0.01, save=False, *, run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    z = xp.ascontiguousarray(xp.matmul(to_float32(input, xp), to_float32(weight, xp).T))
    y = xp.empty(z.shape, dtype=input.dtype)
    d = xp.empty(z.shape, dtype=input.dtype) if save else None
    bias = None if bias is None else xp.ascontiguousarray(bias)
    if z.size:
        run.launch(forward_launch(z, bias, y, d, activation, negative_slope))
    return y, d


@on_callers_stream
def backward(grad_output, input, weight, saved, activation=None, negative_slope=0.01,
             output_mask=(True, True, True), *, run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    kind = saved_kind(activation, negative_slope)
    dy = xp.ascontiguousarray(grad_output)
    saved = None if saved is None else xp.ascontiguousarray(saved)
    dz = xp.empty(dy.shape, dtype=xp.float32)
    db = xp.empty(dy.shape[1:], dtype=dy.dtype) if output_mask[2] else None
    if dy.shape[1]:  # with no rows, the kernel still writes the (zero) bias gradient
        run.launch(backward_launch(dy, saved, dz, db, activation, kind, negative_slope))
    grad_input = from_float32(xp.matmul(dz, to_float32(weight, xp)), input.dtype, xp) if output_mask[0] else None
    grad_weight = from_float32(xp.matmul(dz.T, to_float32(input, xp)), weight.dtype, xp) if output_mask[1] else None
    return grad_input, grad_weight, db
