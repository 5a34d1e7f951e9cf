"""Softmax benchmark cases: softmax and log_softmax forward and backward, and masked softmax
forward, along the last dim of ``[rows, cols]``, ours against PyTorch eager (``torch.softmax``,
ATen's ``_softmax_backward_data``, masked_fill + softmax) and, on a GPU, ``torch.compile``.
GB/s from the bytes the op must move; rows from 128 to 2^20 columns on a GPU (the issue's target
is >= 85% of copy bandwidth for rows >= 1024), small sizes on the CPU (reference vs torch)."""

from __future__ import annotations

import gpukernels as gk

from .registry import BenchCase, register

GPU_SHAPES = ((16384, 128), (8192, 1024), (4096, 4096), (8192, 8192), (1024, 16384), (32, 2**20))
CPU_SHAPES = ((256, 1024),)
DTYPES = ("float32", "float16", "bfloat16")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
# (op, mode) pairs and the full-size tensors each moves: forward reads x and writes y; backward
# reads grad_output and y and writes grad_input; masked softmax also reads a byte of mask each.
MODES = {("softmax", "fwd"): 2, ("log_softmax", "fwd"): 2, ("softmax", "bwd"): 3, ("log_softmax", "bwd"): 3,
         ("masked_softmax", "fwd"): 2}


def bytes_model(op: str, mode: str, rows: int, cols: int, dtype: str) -> int:
    """Bytes one call must move, whatever the kernel (each tensor read or written once)."""
    if (op, mode) not in MODES:
        raise ValueError(f"(op, mode) must be one of {sorted(MODES)}, got {(op, mode)!r}")
    mask_bytes = rows * cols if op == "masked_softmax" else 0
    return MODES[op, mode] * rows * cols * ITEMSIZE[dtype] + mask_bytes


def _torch_masked_softmax(x, keep):
    import torch

    # the eager composition users write; nan_to_num zeroes fully masked rows
    return torch.softmax(x.masked_fill(~keep, float("-inf")), -1).nan_to_num_(0.0)


def _providers(op: str, mode: str):
    import torch

    aten = torch.ops.aten
    if mode == "fwd" and op == "masked_softmax":
        ours = lambda i: gk.masked_softmax(i["x"], i["keep"])  # noqa: E731
        theirs = lambda i: _torch_masked_softmax(i["x"], i["keep"])  # noqa: E731
    elif mode == "fwd":
        ours = lambda i: getattr(gk, op)(i["x"], -1)  # noqa: E731
        theirs = lambda i: getattr(torch, op)(i["x"], -1)  # noqa: E731
    else:
        ours = lambda i: getattr(gk, f"{op}_backward")(i["dy"], i[op], -1)  # noqa: E731
        aten_op = aten._softmax_backward_data if op == "softmax" else aten._log_softmax_backward_data
        theirs = lambda i: aten_op(i["dy"], i[op], -1, i["dy"].dtype)  # noqa: E731
    return {
        "gpukernels": lambda inp: lambda: ours(inp),
        "torch": lambda inp: lambda: theirs(inp),
        "torch.compile": lambda inp: _compiled(theirs, inp),
    }


def _compiled(fn, inputs):
    """A fresh ``torch.compile`` of the eager op; the harness's warm-up absorbs the compilation."""
    import torch

    compiled = torch.compile(fn, dynamic=False)
    return lambda: compiled(inputs)


def _setup(rows: int, cols: int, dtype: str):
    def make(device: str):
        import torch

        x = torch.randn(rows, cols, device=device, dtype=getattr(torch, dtype)) * 3
        return {
            "x": x, "dy": torch.randn_like(x), "softmax": torch.softmax(x, -1), "log_softmax": torch.log_softmax(x, -1),
            "keep": torch.rand(rows, cols, device=device) > 0.3,
        }

    return make


def _register_all() -> None:
    for (op, mode) in MODES:
        for dtype in DTYPES:
            for rows, cols in sorted(set(GPU_SHAPES) | set(CPU_SHAPES)):
                devices = tuple(d for d, shapes in (("cuda", GPU_SHAPES), ("cpu", CPU_SHAPES))
                                if (rows, cols) in shapes and (d == "cuda" or dtype == "float32"))
                register(BenchCase(
                    family="softmax", op=op, mode=mode, dtype=dtype, size=f"R={rows},C={cols}",
                    setup=_setup(rows, cols, dtype), providers=_providers(op, mode),
                    bytes_moved=bytes_model(op, mode, rows, cols, dtype), devices=devices,
                    provider_devices={"torch.compile": ("cuda",)},
                ))


_register_all()
