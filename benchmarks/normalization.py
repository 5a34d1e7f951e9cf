"""Normalisation benchmark cases: layer_norm, rms_norm and the fused residual variants
(add_layer_norm, add_rms_norm), forward and backward, along the last dim of ``[rows, cols]``,
ours against PyTorch eager (``F.layer_norm``/``F.rms_norm``; ATen's ``native_layer_norm_backward``
and ``_fused_rms_norm_backward``; for the residual variants the add as its own op, as a model
writes ``norm(x + r)``) and, on a GPU, ``torch.compile`` of the same eager code. GB/s from the
bytes the op must move (``bytes_model``)."""

from __future__ import annotations

import gpukernels as gk

from .registry import BenchCase, register

GPU_SHAPES = ((8192, 4096), (16384, 1024), (4096, 8192))
CPU_SHAPES = ((2048, 1024),)
DTYPES = ("bfloat16", "float32", "float16")
OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
STAT_BYTES = 4  # mean and rstd are fp32 whatever the storage


def _full_tensors(op: str, mode: str, fused: bool = True) -> int:
    """Full-size tensors one call reads or writes. Forward: x -> y (layer/rms norm); x, r -> y, s
    fused; unfused add + norm moves x, r -> s, then s -> y. Backward: dy, x -> dx; fused residual:
    dy, ds, s -> dx; unfused: dy, s -> dx', then dx' + ds -> dx."""
    add = op.startswith("add_")
    if mode == "fwd":
        return (4 if fused else 5) if add else 2
    return (4 if fused else 6) if add else 3


def bytes_model(op: str, mode: str, rows: int, cols: int, dtype: str, *, fused: bool = True) -> int:
    """Bytes one call must move, whatever the kernel: each full-size tensor read or written once,
    plus the per-row statistics (written forward, read backward) and the per-column parameters
    (read, and their gradients written backward). ``fused=False`` gives the same op computed as
    an add followed by the norm (the residual variants only)."""
    if op not in OPS or mode not in ("fwd", "bwd"):
        raise ValueError(f"(op, mode) must have op in {OPS} and mode in ('fwd', 'bwd'), got {(op, mode)!r}")
    item = ITEMSIZE[dtype]
    rms = "rms" in op
    params = 1 if rms else 2  # weight (and bias)
    stats = 1 if rms else 2  # rstd (and mean)
    column_bytes = params * cols * item * (2 if mode == "bwd" else 1)  # bwd: read weight, write dw/db
    if mode == "bwd" and not rms:
        column_bytes -= cols * item  # the bias is not read backward
    return _full_tensors(op, mode, fused) * rows * cols * item + column_bytes + stats * rows * STAT_BYTES


def fused_saving(op: str, mode: str, rows: int, cols: int, dtype: str) -> float:
    """The share of an add + norm's bytes that the fused residual variant does not move."""
    return 1.0 - bytes_model(op, mode, rows, cols, dtype) / bytes_model(op, mode, rows, cols, dtype, fused=False)


def _eager_forward(op: str):
    import torch.nn.functional as F

    def forward(i):
        source = i["x"] + i["r"] if op.startswith("add_") else i["x"]
        if "rms" in op:
            y = F.rms_norm(source, (i["x"].shape[-1],), i["w"], 1e-5)
        else:
            y = F.layer_norm(source, (i["x"].shape[-1],), i["w"], i["b"], 1e-5)
        return (y, source) if op.startswith("add_") else y

    return forward


def _ours_forward(op: str):
    def forward(i):
        shape = (i["x"].shape[-1],)
        if op == "layer_norm":
            return gk.layer_norm(i["x"], shape, i["w"], i["b"], 1e-5)
        if op == "rms_norm":
            return gk.rms_norm(i["x"], shape, i["w"], 1e-5)
        if op == "add_layer_norm":
            return gk.add_layer_norm(i["x"], i["r"], shape, i["w"], i["b"], 1e-5)
        return gk.add_rms_norm(i["x"], i["r"], shape, i["w"], 1e-5)

    return forward


def _rms_norm_backward_composite(dy, x, rstd, w):
    """What autograd runs for F.rms_norm where ATen has no fused backward (the CPU, older torch)."""
    xhat = x * rstd
    g = dy * w
    dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    return dx, (dy * xhat).sum(0)


def _eager_backward(op: str):
    import torch

    aten = torch.ops.aten

    def backward(i):
        shape = [i["x"].shape[-1]]
        if "rms" in op and i["dy"].is_cuda and hasattr(aten, "_fused_rms_norm_backward"):
            grads = aten._fused_rms_norm_backward(i["dy"], i["src"], shape, i["rstd"], i["w"], [True, True])
        elif "rms" in op:
            grads = _rms_norm_backward_composite(i["dy"], i["src"], i["rstd"], i["w"])
        else:
            grads = aten.native_layer_norm_backward(i["dy"], i["src"], shape, i["mean"], i["rstd"], i["w"], i["b"],
                                                    [True, True, True])
        if op.startswith("add_"):  # autograd adds the sum's own gradient in a separate op
            return (grads[0] + i["ds"], *grads[1:])
        return grads

    return backward


def _ours_backward(op: str):
    def backward(i):
        shape = (i["x"].shape[-1],)
        if op == "layer_norm":
            return gk.layer_norm_backward(i["dy"], i["src"], shape, i["mean"], i["rstd"], i["w"], i["b"])
        if op == "rms_norm":
            return gk.rms_norm_backward(i["dy"], i["src"], shape, i["rstd"], i["w"])
        if op == "add_layer_norm":
            return gk.add_layer_norm_backward(i["dy"], i["ds"], i["src"], shape, i["mean"], i["rstd"], i["w"],
                                              i["b"])
        return gk.add_rms_norm_backward(i["dy"], i["ds"], i["src"], shape, i["rstd"], i["w"])

    return backward


def _compiled(fn, inputs):
    """A fresh ``torch.compile`` of the eager code; the harness's warm-up absorbs the compilation."""
    import torch

    compiled = torch.compile(fn, dynamic=False)
    return lambda: compiled(inputs)


def _providers(op: str, mode: str):
    ours, theirs = (_ours_forward(op), _eager_forward(op)) if mode == "fwd" else (_ours_backward(op),
                                                                                   _eager_backward(op))
    return {
        "gpukernels": lambda inp: lambda: ours(inp),
        "torch": lambda inp: lambda: theirs(inp),
        "torch.compile": lambda inp: _compiled(theirs, inp),
    }


def _setup(op: str, rows: int, cols: int, dtype: str):
    def make(device: str):
        import torch

        dt = getattr(torch, dtype)
        x = torch.randn(rows, cols, device=device, dtype=dt)
        r = torch.randn_like(x)
        w = torch.randn(cols, device=device, dtype=dt)
        b = torch.randn(cols, device=device, dtype=dt)
        src = x + r if op.startswith("add_") else x
        wide = src.float()  # the statistics as ATen's kernels keep them: fp32, shape (rows, 1)
        if "rms" in op:
            mean, rstd = None, torch.rsqrt(wide.square().mean(-1, keepdim=True) + 1e-5)
        else:
            mean = wide.mean(-1, keepdim=True)
            rstd = torch.rsqrt(wide.var(-1, unbiased=False, keepdim=True) + 1e-5)
        return {"x": x, "r": r, "w": w, "b": b, "src": src, "mean": mean, "rstd": rstd,
                "dy": torch.randn_like(x), "ds": torch.randn_like(x)}

    return make


def _register_all() -> None:
    for op in OPS:
        for mode in ("fwd", "bwd"):
            for dtype in DTYPES:
                for rows, cols in sorted(set(GPU_SHAPES) | set(CPU_SHAPES)):
                    devices = tuple(d for d, shapes in (("cuda", GPU_SHAPES), ("cpu", CPU_SHAPES))
                                    if (rows, cols) in shapes and (d == "cuda" or dtype == "float32"))
                    register(BenchCase(
                        family="normalization", op=op, mode=mode, dtype=dtype, size=f"R={rows},C={cols}",
                        setup=_setup(op, rows, cols, dtype), providers=_providers(op, mode),
                        bytes_moved=bytes_model(op, mode, rows, cols, dtype), devices=devices,
                        provider_devices={"torch.compile": ("cuda",)},
                        in_default_set=(rows, cols) in ((8192, 4096), (2048, 1024)),
                    ))


_register_all()
