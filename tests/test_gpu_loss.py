"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy loss kernels on the device against the
float64 reference, through the public API, every loss and reduction, fp32/fp16/bf16, sizes from
1 to past the many-partials path, both gradients, and bitwise repeatability of the reduction."""

from __future__ import annotations

import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, skip_unless_backend, torch_dtype
from _loss_cases import CASE_IDS, CASES, REDUCTIONS
from gpukernels.ops.loss import loss_backward

pytestmark = pytest.mark.gpu

SIZES = (1, 1031, 2**20 + 7)


def _to_library(t, backend: str):
    if t is None or backend != "cupy":
        return t
    import cupy

    return cupy.from_dlpack(t.contiguous())


def _inputs(case, rng, n, dtype):
    x, t, weights = case.draw(rng, (n // 7 + 1, 7) if n > 7 else (n,))
    cast = lambda a: a.to("cuda", torch_dtype(dtype))  # noqa: E731
    ours = cast(x), cast(t), {k: cast(v) for k, v in weights.items()}
    exact = lambda a: torch.from_numpy(as_float64(a))  # noqa: E731
    return ours, (exact(ours[0]), exact(ours[1]), {k: exact(v) for k, v in ours[2].items()})


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"N{n}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kernels_on_the_device(case, dtype, n, reduction, backend, rng):
    skip_unless_backend(backend, dtype)
    (x, t, w), (x64, t64, w64) = _inputs(case, rng, n, dtype)
    if dtype == "float16" and reduction == "sum" and n > 2**16:
        reduction = "mean"  # a float16 sum of millions of losses overflows (in torch too)
    g = (torch.rand(x.shape if reduction == "none" else (), device="cuda") + 0.5).to(x.dtype)
    lib = lambda a: _to_library(a, backend)  # noqa: E731
    with gk.use_backend(backend):
        out = case.ours(lib(x), lib(t), reduction, {k: lib(v) for k, v in w.items()})
        gx, gt = loss_backward(case.loss, lib(g), lib(x), lib(t), lib(w.get("weight")), lib(w.get("pos_weight")),
                               reduction=reduction, p1=case.p1, p2=case.p2, need="both")
    kind = "pointwise" if reduction == "none" else "reduction"
    assert_close(out, case.ours(x64, t64, reduction, w64), dtype, kind)
    want_gx, want_gt = loss_backward(case.loss, torch.from_numpy(as_float64(g)), x64, t64, w64.get("weight"),
                                     w64.get("pos_weight"), reduction=reduction, p1=case.p1, p2=case.p2, need="both")
    assert_close(gx, want_gx, dtype, "reduction")
    assert_close(gt, want_gt, dtype, "reduction")


@pytest.mark.parametrize("backend", ["triton", "cupy"])
def test_reduction_gives_the_same_bits_every_run(backend, rng):
    skip_unless_backend(backend, "float32")
    x = torch.randn(2**24 + 3, device="cuda")
    t = torch.rand(2**24 + 3, device="cuda")
    lib = lambda a: _to_library(a, backend)  # noqa: E731
    runs = []
    for _ in range(3):
        with gk.use_backend(backend):
            loss = gk.sigmoid_focal_loss(lib(x), lib(t), reduction="mean")
            grad = gk.sigmoid_focal_loss_backward(lib(torch.ones((), device="cuda")), lib(x), lib(t), reduction="mean")
        runs.append((as_float64(loss).tobytes(), as_float64(grad).tobytes()))
    assert runs[0] == runs[1] == runs[2]


def test_autograd_modules_on_the_device():
    import gpukernels.torch.nn as gnn

    x = torch.randn(4096, 37, device="cuda", requires_grad=True)
    t = torch.rand(4096, 37, device="cuda")
    pos_weight = torch.rand(37, device="cuda") * 3
    ours = gnn.BCEWithLogitsLoss(pos_weight=pos_weight)(x, t)
    (g,) = torch.autograd.grad(ours, x)
    x64 = x.detach().double().requires_grad_()
    theirs = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight.double())(x64, t.double())
    (g64,) = torch.autograd.grad(theirs, x64)
    assert_close(ours, theirs.detach(), "float32", "reduction")
    assert_close(g, g64, "float32", "reduction")
