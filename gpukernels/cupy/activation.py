"""Activation kernels through CuPy: activation.cu around the bodies in activation.cuh."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ._module import CUDA_TYPES, THREADS, Launch, NvrtcProgram, Runner, cuda_type, grid_for, on_gpu
from ._stream import on_callers_stream

ACTS = {
    "sigmoid": "gk::Sigmoid", "tanh": "gk::Tanh", "relu": "gk::Relu",
    "leaky_relu": "gk::LeakyRelu", "gelu": "gk::Gelu", "gelu_tanh": "gk::GeluTanh",
}
SAVES_OUTPUT = ("sigmoid", "tanh")


def _expressions() -> tuple[str, ...]:
    return tuple(
        f"activation_{direction}<{act}, {ctype}>"
        for direction in ("forward", "backward") for act in ACTS.values() for ctype in CUDA_TYPES.values()
    )


PROGRAM = NvrtcProgram("activation.cu", _expressions())


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


# ---------------------------------------------------------------------------------------------
# Launch helpers


def chunks(n: int, itemsize: int) -> int:
    """16-byte chunks covering ``n`` elements: the kernels' unit of work per thread."""
    return -(-n // (16 // itemsize))


def activation_launch(direction: str, act: str, inputs: dict, out, negative_slope: float) -> Launch:
    """The launch writing ``out`` from ``inputs`` (name -> contiguous array, in the kernel's order)."""
    (ctype,) = {cuda_type(x, name) for name, x in inputs.items()}  # the public op checked that they agree
    n = int(out.size)
    return Launch(f"activation_{direction}<{ACTS[act]}, {ctype}>", grid_for(chunks(n, out.itemsize)), (THREADS,),
                  (*inputs.values(), out, np.int64(n), np.float32(negative_slope)))


def _apply(run: Runner, direction: str, act: str, inputs: dict, negative_slope: float):
    inputs = {name: run.xp.ascontiguousarray(x) for name, x in inputs.items()}
    out = run.xp.empty_like(next(iter(inputs.values())))
    spec = activation_launch(direction, act, inputs, out, negative_slope)
    if out.size:
        run.launch(spec)
    return out


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


@on_callers_stream
def forward(x, act: str, negative_slope: float = 0.0, *, run: Runner | None = None):
    return _apply(run or on_gpu(PROGRAM), "forward", act, {"x": x}, negative_slope)


@on_callers_stream
def backward(grad_output, saved, act: str, negative_slope: float = 0.0, *, run: Runner | None = None):
    saved_name = "output" if act in SAVES_OUTPUT else "x"
    return _apply(run or on_gpu(PROGRAM), "backward", act, {"grad_output": grad_output, saved_name: saved},
                  negative_slope)
