"""Elementwise loss benchmark cases: MSE, Huber, BCE, BCE-with-logits and the sigmoid focal loss
with ``reduction="mean"``, ours against PyTorch eager and, on a GPU, ``torch.compile``: the
forward (the reduced loss), the backward where ATen has a ``*_backward`` op, and forward plus
backward through autograd ("full") for all. 2^26 elements on a GPU (GB/s), 2^22 on the CPU (the
reference against PyTorch CPU). The focal baseline is torchvision's function where it is
installed, else its formula in torch ops (what torchvision runs)."""

from __future__ import annotations

import gpukernels as gk

from .registry import BenchCase, register

GPU_SIZES = (2**26,)
CPU_SIZES = (2**22,)
DTYPES = ("float32", "bfloat16")
OPS = ("mse", "huber", "bce", "bce_with_logits", "sigmoid_focal")
ATEN_BACKWARD = ("mse", "huber", "bce")  # ops whose backward ATen exposes as one op
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
MEAN = 1  # ATen's reduction enum


def bytes_model(op: str, mode: str, n: int, dtype: str) -> int:
    """Bytes one call must move: the forward reads input and target (the result is one value);
    the backward reads them and writes the input's gradient; "full" does both."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    tensors = {"fwd": 2, "bwd": 3, "full": 5}[mode]
    return tensors * n * ITEMSIZE[dtype]


def _torch_focal():
    try:
        from torchvision.ops import sigmoid_focal_loss
    except ImportError:
        sigmoid_focal_loss = None
    if sigmoid_focal_loss is not None:
        return lambda x, t: sigmoid_focal_loss(x, t, reduction="mean")
    import torch
    import torch.nn.functional as F

    def focal(x, t, alpha=0.25, gamma=2.0):
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * (1 - p_t) ** gamma
        return ((alpha * t + (1 - alpha) * (1 - t)) * loss).mean()

    return focal


def _functions(op: str):
    """(ours, torch eager, our autograd version) of the forward, each (input, target) -> loss."""
    import torch.nn.functional as F

    import gpukernels.torch.functional as GF

    return {
        "mse": (gk.mse_loss, F.mse_loss, GF.mse_loss),
        "huber": (gk.huber_loss, F.huber_loss, GF.huber_loss),
        "bce": (gk.binary_cross_entropy, F.binary_cross_entropy, GF.binary_cross_entropy),
        "bce_with_logits": (gk.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits,
                            GF.binary_cross_entropy_with_logits),
        "sigmoid_focal": (lambda x, t: gk.sigmoid_focal_loss(x, t, reduction="mean"), _torch_focal(),
                          lambda x, t: GF.sigmoid_focal_loss(x, t, reduction="mean")),
    }[op]


def _compiled(fn, inputs):
    """A fresh ``torch.compile`` of the eager op; the harness's warm-up absorbs the compilation."""
    import torch

    compiled = torch.compile(fn, dynamic=False)
    return lambda: compiled(inputs)


def _providers(op: str, mode: str):
    import torch

    ours, theirs, autograd_ours = _functions(op)
    if mode == "fwd":
        run_ours = lambda i: ours(i["x"], i["t"])  # noqa: E731
        run_theirs = lambda i: theirs(i["x"], i["t"])  # noqa: E731
    elif mode == "bwd":
        aten = torch.ops.aten
        run_ours = {
            "mse": lambda i: gk.mse_loss_backward(i["g"], i["x"], i["t"]),
            "huber": lambda i: gk.huber_loss_backward(i["g"], i["x"], i["t"]),
            "bce": lambda i: gk.binary_cross_entropy_backward(i["g"], i["x"], i["t"]),
        }[op]
        run_theirs = {
            "mse": lambda i: aten.mse_loss_backward(i["g"], i["x"], i["t"], MEAN),
            "huber": lambda i: aten.huber_loss_backward(i["g"], i["x"], i["t"], MEAN, 1.0),
            "bce": lambda i: aten.binary_cross_entropy_backward(i["g"], i["x"], i["t"], None, MEAN),
        }[op]
    else:
        def full(fn):
            def run(i):
                x = i["x"].detach().requires_grad_()
                return torch.autograd.grad(fn(x, i["t"]), x)
            return run

        run_ours, run_theirs = full(autograd_ours), full(theirs)
    return {
        "gpukernels": lambda inp: lambda: run_ours(inp),
        "torch": lambda inp: lambda: run_theirs(inp),
        "torch.compile": lambda inp: _compiled(run_theirs, inp),
    }


def _setup(op: str, n: int, dtype: str):
    def make(device: str):
        import torch

        storage = getattr(torch, dtype)
        if op == "bce":  # probabilities
            x = torch.rand(n, device=device, dtype=storage) * 0.98 + 0.01
        else:
            x = torch.randn(n, device=device, dtype=storage)
        target = torch.rand(n, device=device, dtype=storage)
        if op in ("mse", "huber"):
            target = torch.randn(n, device=device, dtype=storage)
        return {"x": x, "t": target, "g": torch.ones((), device=device, dtype=storage)}

    return make


def _register_all() -> None:
    for op in OPS:
        modes = ("fwd", "bwd", "full") if op in ATEN_BACKWARD else ("fwd", "full")
        for mode in modes:
            for dtype in DTYPES:
                for n in sorted(set(GPU_SIZES) | set(CPU_SIZES)):
                    devices = tuple(d for d, sizes in (("cuda", GPU_SIZES), ("cpu", CPU_SIZES))
                                    if n in sizes and (d == "cuda" or dtype == "float32"))
                    if not devices:
                        continue
                    register(BenchCase(
                        family="loss", op=op, mode=mode, dtype=dtype, size=f"n={n}",
                        setup=_setup(op, n, dtype), providers=_providers(op, mode),
                        bytes_moved=bytes_model(op, mode, n, dtype), devices=devices,
                        provider_devices={"torch.compile": ("cuda",)},
                    ))


_register_all()
