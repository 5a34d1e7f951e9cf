"""Activation benchmark cases: forward and backward, ours against PyTorch eager (ATen's own
``*_backward`` ops for the backward) and, on a GPU, ``torch.compile``, at 2^20..2^28 elements on
a GPU and 2^20..2^22 on CPU."""

from __future__ import annotations

import gpukernels as gk

from .registry import BenchCase, register

GPU_SIZES = tuple(2**p for p in (20, 22, 24, 26, 28))
CPU_SIZES = (2**20, 2**22)
DTYPES = ("float32", "float16", "bfloat16")
OPS = ("sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu_tanh")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def bytes_model(op: str, mode: str, n: int, dtype: str) -> int:
    """Bytes one call must move, whatever the kernel: the forward reads x and writes y; the
    backward reads grad_output and the saved tensor (y or x) and writes grad_input. ``op``
    is part of the signature every family's model shares; for activations it does not matter."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    tensors = {"fwd": 2, "bwd": 3}[mode]
    return tensors * n * ITEMSIZE[dtype]


def _forward_providers(op: str):
    import torch
    import torch.nn.functional as F

    ours = {
        "sigmoid": gk.sigmoid, "tanh": gk.tanh, "relu": gk.relu,
        "leaky_relu": lambda x: gk.leaky_relu(x, 0.01),
        "gelu": gk.gelu, "gelu_tanh": lambda x: gk.gelu(x, "tanh"),
    }[op]
    theirs = {
        "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
        "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
        "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    }[op]
    return {
        "gpukernels": lambda inp: lambda: ours(inp["x"]),
        "torch": lambda inp: lambda: theirs(inp["x"]),
        "torch.compile": lambda inp: _compiled(theirs, inp["x"]),
    }


def _compiled(fn, inputs):
    """A fresh ``torch.compile`` of the eager op; the harness's warm-up absorbs the compilation."""
    import torch

    compiled = torch.compile(fn, dynamic=False)
    return lambda: compiled(inputs)


def _backward_providers(op: str):
    import torch

    aten = torch.ops.aten
    ours = {
        "sigmoid": lambda i: gk.sigmoid_backward(i["dy"], i["y"]),
        "tanh": lambda i: gk.tanh_backward(i["dy"], i["y"]),
        "relu": lambda i: gk.relu_backward(i["dy"], i["x"]),
        "leaky_relu": lambda i: gk.leaky_relu_backward(i["dy"], i["x"], 0.01),
        "gelu": lambda i: gk.gelu_backward(i["dy"], i["x"]),
        "gelu_tanh": lambda i: gk.gelu_backward(i["dy"], i["x"], "tanh"),
    }[op]
    theirs = {
        "sigmoid": lambda i: aten.sigmoid_backward(i["dy"], i["y"]),
        "tanh": lambda i: aten.tanh_backward(i["dy"], i["y"]),
        "relu": lambda i: aten.threshold_backward(i["dy"], i["x"], 0),
        "leaky_relu": lambda i: aten.leaky_relu_backward(i["dy"], i["x"], 0.01, False),
        "gelu": lambda i: aten.gelu_backward(i["dy"], i["x"]),
        "gelu_tanh": lambda i: aten.gelu_backward(i["dy"], i["x"], approximate="tanh"),
    }[op]
    return {
        "gpukernels": lambda inp: lambda: ours(inp),
        "torch": lambda inp: lambda: theirs(inp),
        "torch.compile": lambda inp: _compiled(theirs, inp),
    }


def _setup(n: int, dtype: str):
    def make(device: str):
        import torch

        x = torch.randn(n, device=device, dtype=getattr(torch, dtype))
        return {"x": x, "y": torch.sigmoid(x), "dy": torch.randn_like(x)}

    return make


def _register_all() -> None:
    for op in OPS:
        for dtype in DTYPES:
            for n in sorted(set(GPU_SIZES) | set(CPU_SIZES)):
                devices = tuple(d for d, sizes in (("cuda", GPU_SIZES), ("cpu", CPU_SIZES))
                                if n in sizes and (d == "cuda" or dtype == "float32"))
                for mode, providers in (("fwd", _forward_providers), ("bwd", _backward_providers)):
                    register(BenchCase(
                        family="activation", op=op, mode=mode, dtype=dtype, size=f"n={n}",
                        setup=_setup(n, dtype), providers=providers(op),
                        bytes_moved=bytes_model(op, mode, n, dtype), devices=devices,
                        provider_devices={"torch.compile": ("cuda",)},
                    ))


_register_all()
