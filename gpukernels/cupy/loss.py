"""Elementwise loss kernels through CuPy: loss.cu around the per-loss math in loss.cuh.
Forward: per-element losses, or two deterministic stages (a partial sum per block, then one block
adding them); backward: the input and/or target gradient in one pass. ``weight`` and
``pos_weight`` are expanded to the input's shape here (null pointers when absent)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ._module import CUDA_TYPES, NULL, THREADS, Launch, NvrtcProgram, Runner, cuda_type, grid_for, on_gpu
from ._stream import on_callers_stream

LOSSES = {"mse": "gk::Mse", "l1": "gk::L1", "huber": "gk::Huber", "smooth_l1": "gk::SmoothL1", "bce": "gk::Bce",
          "bce_logits": "gk::BceWithLogits", "focal": "gk::Focal"}
# Blocks of the reducing forward: enough to fill an H200 (132 SMs x 2048 threads / 256), few
# enough that one block adds the partials in a few loads per thread.
PARTIAL_BLOCKS = 1024
SUM_THREADS = 1024


def _expressions() -> tuple[str, ...]:
    per_loss = tuple(f"{kernel}<{loss}, {ctype}>" for kernel in ("loss_forward_none", "loss_forward_partial",
                                                                 "loss_backward")
                     for loss in LOSSES.values() for ctype in CUDA_TYPES.values())
    return per_loss + tuple(f"loss_sum<{ctype}>" for ctype in CUDA_TYPES.values())


PROGRAM = NvrtcProgram("loss.cu", _expressions())


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


# ---------------------------------------------------------------------------------------------
# Launch helpers (host code the CPU tests run)


def chunks(n: int, itemsize: int) -> int:
    """16-byte chunks covering ``n`` elements: the kernels' unit of work per thread."""
    return -(-n // (16 // itemsize))


def _pointer(a):
    return NULL if a is None else a


def forward_launches(x, t, w, pw, out, partial, *, loss: str, reduction: str, p1: float, p2: float) -> list[Launch]:
    """The launches of the forward: one for "none"; the partial sums and their sum otherwise
    (``partial``: fp32, PARTIAL_BLOCKS long at most; ``out``: the 0-d result)."""
    ctype = cuda_type(x, "input")
    n = int(x.size)
    operands = (x, t, _pointer(w), _pointer(pw))
    scalars = (np.int64(n), np.float32(p1), np.float32(p2))
    if reduction == "none":
        return [Launch(f"loss_forward_none<{LOSSES[loss]}, {ctype}>", grid_for(chunks(n, x.itemsize)), (THREADS,),
                       (*operands, out, *scalars))]
    blocks = int(partial.size)
    scale = 1.0 / n if reduction == "mean" else 1.0
    return [Launch(f"loss_forward_partial<{LOSSES[loss]}, {ctype}>", (blocks,), (THREADS,), (*operands, partial, *scalars)),
            Launch(f"loss_sum<{ctype}>", (1,), (SUM_THREADS,), (partial, np.int64(blocks), out, np.float32(scale)))]


def partial_blocks(n: int, itemsize: int) -> int:
    return grid_for(min(chunks(n, itemsize), PARTIAL_BLOCKS * THREADS))[0]


def backward_launch(x, t, w, pw, g, dx, dt, *, loss: str, reduction: str, p1: float, p2: float) -> Launch:
    n = int(x.size)
    scale = 1.0 / n if reduction == "mean" else 1.0
    return Launch(f"loss_backward<{LOSSES[loss]}, {cuda_type(x, 'input')}>", grid_for(chunks(n, x.itemsize)), (THREADS,),
                  (x, t, _pointer(w), _pointer(pw), g, _pointer(dx), _pointer(dt), np.int64(n), np.float32(p1),
                   np.float32(p2), np.int32(reduction != "none"), np.float32(scale)))


def _operands(xp, input, target, weight, pos_weight):
    dense = lambda a: None if a is None else xp.ascontiguousarray(xp.broadcast_to(a, input.shape))  # noqa: E731
    return xp.ascontiguousarray(input), xp.ascontiguousarray(target), dense(weight), dense(pos_weight)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays in and out)


@on_callers_stream
def loss_forward(input, target, weight, pos_weight, *, loss: str, reduction: str, p1: float = 0.0, p2: float = 0.0,
                 run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    x, t, w, pw = _operands(xp, input, target, weight, pos_weight)
    n = int(x.size)
    if n == 0:  # torch's values: empty, 0 for the sum, NaN for the mean
        return xp.empty_like(x) if reduction == "none" else xp.full((), np.nan if reduction == "mean" else 0, x.dtype)
    out = xp.empty_like(x) if reduction == "none" else xp.empty((), x.dtype)
    partial = None if reduction == "none" else xp.empty(partial_blocks(n, x.itemsize), np.float32)
    for spec in forward_launches(x, t, w, pw, out, partial, loss=loss, reduction=reduction, p1=p1, p2=p2):
        run.launch(spec)
    return out


@on_callers_stream
def loss_backward(grad_output, input, target, weight, pos_weight, *, loss: str, reduction: str, p1: float = 0.0,
                  p2: float = 0.0, need: str = "input", run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    x, t, w, pw = _operands(xp, input, target, weight, pos_weight)
    g = xp.ascontiguousarray(grad_output)
    dx = xp.empty_like(x) if need in ("input", "both") else None
    dt = xp.empty_like(x) if need in ("target", "both") else None
    if x.size:
        run.launch(backward_launch(x, t, w, pw, g, dx, dt, loss=loss, reduction=reduction, p1=p1, p2=p2))
    return {"input": dx, "target": dt, "both": (dx, dt)}[need]
