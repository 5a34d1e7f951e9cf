"""Dense-layer benchmark cases: act(x W^T + b) forward ("fwd") and forward + backward ("full"),
ours against F.linear followed by the activation (PyTorch eager and, on a GPU, torch.compile),
in TFLOP/s (2 M N K per product: one in the forward, two in the backward).

GPU: (M, K, N) = (8192, 4096, 4096) and (8192, 1024, 4096) in bf16 and fp32, gelu (the
derivative saved) and relu (the output saved). Two more of ours on the GPU in "full" for gelu
measure the backward's choice (see gpukernels/triton/linear.py): the Triton launchers with
act'(z) saved (what the op does) and with z saved and act'(z) evaluated in the backward kernels.
Both on one small tile, so they time the choice rather than the tuner.
CPU: a scaled-down layer, the NumPy fallback against PyTorch CPU."""

from __future__ import annotations

from .registry import BenchCase, register

GPU_SHAPES = ((8192, 4096, 4096), (8192, 1024, 4096))
GPU_DTYPES = ("bfloat16", "float32")
CPU_SHAPES = ((1024, 1024, 1024),)
ACTIVATIONS = ("gelu", "relu")


def linear_flops(M: int, K: int, N: int, mode: str) -> int:
    """The products' flops: the forward's x W^T, and in "full" also dz W and dz^T x."""
    return 2 * M * N * K * {"fwd": 1, "full": 3}[mode]


def _torch_layer(activation: str):
    import torch.nn.functional as F

    act = {"gelu": F.gelu, "relu": F.relu}[activation]
    return lambda x, w, b: act(F.linear(x, w, b))


def _ours_layer(activation: str):
    from gpukernels.torch.functional import linear

    return lambda x, w, b: linear(x, w, b, activation=activation)


def _run(layer, mode: str, compiled: bool = False):
    """A provider: ``layer(x, w, b)`` once ("fwd"), or with the gradients of x, W and b ("full")."""
    def make(inputs):
        import torch

        fn = torch.compile(layer, dynamic=False) if compiled else layer
        x, w, b = inputs["x"], inputs["w"], inputs["b"]
        if mode == "fwd":
            return lambda: fn(x, w, b)
        return lambda: torch.autograd.grad(fn(x, w, b), (x, w, b), inputs["dy"])

    return make


def _launchers(saved: str):
    """The Triton launchers directly, forward and backward, saving act'(z) or z (gelu), both on
    one tile (SMALL_TILE: the saved-z kernels spill at the wider ones on sm_80), so the two
    differ only in what the backward does per operand tile."""
    def make(inputs):
        from gpukernels.triton import linear as kernels

        x, w, b, dy = (inputs[k].detach() for k in ("x", "w", "b", "dy"))
        tile = kernels.SMALL_TILE

        def step():
            y, kept = kernels.launch_forward(x, w, b, "gelu", 0.01, saved, config=tile)
            kernels.launch_grad_input(dy, kept, w, "gelu", 0.01, saved, config=tile)
            return kernels.launch_grad_weight(dy, kept, x, "gelu", 0.01, saved, True, config=tile)

        return step

    return make


def _setup(M: int, K: int, N: int, dtype: str, mode: str):
    def make(device: str):
        import torch

        kind = {"dtype": getattr(torch, dtype), "device": device, "requires_grad": mode == "full"}
        x = torch.randn(M, K, **kind)
        w = (torch.randn(N, K, dtype=kind["dtype"], device=device) / K**0.5).requires_grad_(mode == "full")
        b = torch.randn(N, **kind)
        return {"x": x, "w": w, "b": b, "dy": torch.randn(M, N, dtype=kind["dtype"], device=device)}

    return make


def _register_all() -> None:
    cases = [(s, d, "cuda") for s in GPU_SHAPES for d in GPU_DTYPES] + [(s, "float32", "cpu") for s in CPU_SHAPES]
    for (M, K, N), dtype, device in cases:
        for activation in ACTIVATIONS:
            for mode in ("fwd", "full"):
                providers = {"gpukernels": _run(_ours_layer(activation), mode),
                             "torch": _run(_torch_layer(activation), mode),
                             "torch.compile": _run(_torch_layer(activation), mode, compiled=True)}
                if device == "cuda" and mode == "full" and activation == "gelu":
                    providers["gpukernels-saved-derivative"] = _launchers("derivative")
                    providers["gpukernels-saved-z"] = _launchers("preactivation")
                register(BenchCase(
                    family="linear", op=f"linear_{activation}", mode=mode, dtype=dtype, size=f"M={M},K={K},N={N}",
                    setup=_setup(M, K, N, dtype, mode), providers=providers, flops=linear_flops(M, K, N, mode),
                    devices=(device,), provider_devices={"torch.compile": ("cuda",)},
                    in_default_set=activation == "gelu"))


_register_all()
