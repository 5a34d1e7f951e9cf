"""Recurrent layers through CuPy: cuBLAS (``cupy.matmul``) for every product and one pointwise
kernel per time step (two for the original GRU), forward and backward; the cell math is in
rnn.cuh. The sequence loops are gpukernels._rnn_driver's (shared with Triton), driven here
through a Runner (an array module and a launcher), so the CPU tests run this very host code with
NumPy and rnn.cu built with g++.

Precision: the input projection, the recurrent state, the workspace and all of backward are
fp32 whatever the storage dtype (fp16/bf16 storage is read and written at the edges only).

Multi-head weights (``heads > 1``): every recurrent product is one batched ``cupy.matmul`` over
the heads from the compact weight (gpukernels._rnn_driver.head_product / head_gradient /
head_weight_gradient), at any head size: the forward one stacks (gates, heads) blocks of
``size x size`` and gathers the result back into the gate-major layout the step kernel reads
(one copy of B*G*H per step), so the kernels in rnn.cu are the same for every ``heads``.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .. import _rnn_driver as driver
from .._rnn_driver import GATES, GRU, GRU_N, GRU_RZ, LSTM, RNN, WORKSPACE_BLOCKS  # noqa: F401 (public names)
from ._module import CUDA_TYPES, THREADS, Launch, NvrtcProgram, Runner, cuda_type, grid_for, on_gpu
from ._stream import on_callers_stream

# Kernel arguments in order: "p" a pointer, "i64" long long, "i32" int (rnn.cu's signatures; the host
# tests check every launch against them).
FORWARD_ARGS = ("i64", "i64", "i32", "p", "i64", "p", "i64", "p", "p", "p", "i64", "p", "i64", "p", "i32", "i32",
                "p", "p", "i64")
BACKWARD_ARGS = ("i64", "i64", "i32", "p", "p", "p", "p", "i64", "p", "i64", "p", "i64", "p", "p", "p", "i32", "i32",
                 "p", "p", "p", "p")


def _expressions() -> tuple[str, ...]:
    return tuple(f"rnn_{direction}_step<{code}, {ctype}>" for direction in ("forward", "backward")
                 for code in (RNN, LSTM, GRU, GRU_RZ, GRU_N) for ctype in CUDA_TYPES.values())


# Element-per-thread bodies with strided gate blocks: scalar loads, so no 128-bit expectation.
PROGRAM = NvrtcProgram("rnn.cu", _expressions(), expect_load_bits=None)


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


# ---------------------------------------------------------------------------------------------
# Launch helpers


def step_launch(direction: str, code: int, storage: Any, *args: Any) -> Launch:
    """One step kernel over its ``args[0]`` = B*H elements; ``storage`` (an array in the storage
    dtype) picks the instantiation, the integer arguments are packed at the kernel's widths."""
    types = FORWARD_ARGS if direction == "forward" else BACKWARD_ARGS
    packed = tuple(np.int64(a) if t == "i64" else np.int32(a) if t == "i32" else a
                   for t, a in zip(types, args, strict=True))
    return Launch(f"rnn_{direction}_step<{code}, {cuda_type(storage, 'x')}>", grid_for(int(args[0])), (THREADS,),
                  packed)


# ---------------------------------------------------------------------------------------------
# The sequence loops (gpukernels._rnn_driver) over a Runner


def _row_stride(a) -> int:
    return a.strides[0] // a.itemsize


class _ArrayBackend:
    """The driver's backend for a Runner (CuPy, or NumPy in the host tests): every product is
    ``xp.matmul`` (cuBLAS under CuPy), and a step is the recurrent product followed by the
    pointwise step kernel."""

    def __init__(self, run: Runner):
        self.xp, self.f32 = run.xp, run.xp.float32
        self.step = lambda *args: run.launch(step_launch(*args))

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def as_f32(self, a):
        return a.astype(self.f32, copy=False)

    def contiguous(self, a):
        return self.xp.ascontiguousarray(a)

    def copy(self, a):
        return a.copy()

    def lengths(self, lengths, T: int, B: int):
        return self.xp.asarray(lengths if lengths is not None else [T] * B, dtype=self.xp.int32)

    def concat(self, parts):
        return self.xp.concatenate(parts, axis=0)

    def stack(self, parts):
        return self.xp.stack(parts)

    def input_projection(self, x2d, w_ih, b_ih):
        gx = x2d.astype(self.f32) @ w_ih.astype(self.f32).T
        if b_ih is not None:
            gx += b_ih.astype(self.f32)
        return gx

    def step_weights(self, w_hh):
        return w_hh.astype(self.f32)  # the per-step recurrent products run in fp32

    def matmul_into(self, a, b, out) -> None:
        out[...] = a @ b

    def addmm(self, c, a, b):
        return c + a @ b

    def permute(self, a, dims):
        return a.transpose(dims)

    def step_takes_heads(self, size: int) -> bool:
        return True  # the products are cuBLAS's (head_product), any head size

    def forward_step(self, code: int, s) -> None:
        gh = s.hin @ s.w.T if s.heads == 1 else driver.head_product(self, s.hin, s.w, s.heads)
        self.step("forward", code, s.storage, s.B * s.H, s.H, s.t, s.gx, s.gx_stride, gh, _row_stride(gh), s.b,
                  s.peep, s.h, _row_stride(s.h), s.c, _row_stride(s.c), s.lens, s.relu, s.coupled, s.y, s.ws,
                  s.ws_stride)

    def backward_step(self, code: int, s) -> None:
        self.step("backward", code, s.storage, s.B * s.H, s.H, s.t, s.gy, s.dh, s.dc, s.ws, s.ws_stride, s.h_prev,
                  _row_stride(s.h_prev), s.c_prev, _row_stride(s.c_prev), s.peep, s.lens, s.drh, s.relu, s.coupled,
                  s.dgx, s.dgh, s.dhd, s.dcp)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


def _checked(arrays: dict) -> None:
    for name, a in arrays.items():
        if a is not None:
            cuda_type(a, name)


@on_callers_stream
def layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, run: Runner | None = None, **options):
    run = run or on_gpu(PROGRAM)
    _checked({"x": x, "w_ih": w_ih, "w_hh": w_hh, "b_hh": b_hh, "w_peep": w_peep})
    return driver.layer_forward(_ArrayBackend(run), run.xp.ascontiguousarray(x), h0, c0, w_ih, w_hh, b_ih, b_hh,
                                w_peep, **options)


@on_callers_stream
def layer_backward(grad_y, grad_h_n, grad_c_n, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *,
                   run: Runner | None = None, **options):
    run = run or on_gpu(PROGRAM)
    _checked({"grad_y": grad_y, "x": x, "w_peep": w_peep})
    return driver.layer_backward(_ArrayBackend(run), grad_y, grad_h_n, grad_c_n, ws, run.xp.ascontiguousarray(x), h0,
                                 c0, w_ih, w_hh, b_ih, b_hh, w_peep, **options)
