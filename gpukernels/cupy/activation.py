"""Activation kernels through CuPy: activation.cu around the bodies in activation.cuh."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ._module import CUDA_TYPES, THREADS, NvrtcProgram, cuda_type, grid_for, kernel

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


def _chunks(n: int, itemsize: int) -> int:
    per_chunk = 16 // itemsize
    return -(-n // per_chunk)


def _launch(direction: str, act: str, inputs: dict, slope: float):
    import cupy

    types = {cuda_type(x, name) for name, x in inputs.items()}
    (ctype,) = types  # the public op already checked that the dtypes agree
    arrays = [cupy.ascontiguousarray(x) for x in inputs.values()]
    out = cupy.empty_like(arrays[0])
    n = out.size
    if n == 0:
        return out
    function = kernel(PROGRAM, f"activation_{direction}<{ACTS[act]}, {ctype}>")
    function(grid_for(_chunks(n, out.itemsize)), (THREADS,), (*arrays, out, np.int64(n), np.float32(slope)))
    return out


def forward(x, act: str, negative_slope: float = 0.0):
    return _launch("forward", act, {"x": x}, negative_slope)


def backward(grad_output, saved, act: str, negative_slope: float = 0.0):
    saved_name = "output" if act in SAVES_OUTPUT else "x"
    return _launch("backward", act, {"grad_output": grad_output, saved_name: saved}, negative_slope)
