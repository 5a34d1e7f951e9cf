"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy cross-entropy kernels on the device
against the float64 reference through the public API (every target kind, every dtype, rows up to
128k+ classes), the linear + cross-entropy's results and its peak memory against the logits it
never builds, bitwise repeatability, and the autograd cases a fused gradient gets wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import gpukernels as gk
import gpukernels.torch.functional as GF
from _helpers import DTYPES, as_float64, assert_close, random_tensor, skip_unless_backend

pytestmark = pytest.mark.gpu

SHAPES = ((1, 2), (9, 7), (33, 1000), (3, 4099), (2, 128256 + 3))


def _to_library(t, backend: str):
    if t is None or backend != "cupy":
        return t
    import cupy

    return cupy.from_dlpack(t.contiguous())


def _numpy(t):
    return None if t is None else (as_float64(t) if t.is_floating_point() else t.cpu().numpy())


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"R{s[0]}-C{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["index", "probs", "focal"])
def test_kernels_on_the_device(backend, kind, dtype, shape, rng):
    skip_unless_backend(backend, dtype)
    rows, cols = shape
    x = random_tensor(rng, shape, dtype, "cuda")
    weight = (torch.rand(cols, dtype=torch.float64) + 0.5).to("cuda", x.dtype)
    if kind == "probs":
        target = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to("cuda", x.dtype)
    else:
        target = torch.from_numpy(rng.integers(0, cols, rows)).cuda()
        if rows > 2:
            target[1] = -100
    op = "focal_loss" if kind == "focal" else "cross_entropy"
    kwargs = dict(alpha=weight, gamma=2.0) if kind == "focal" else dict(weight=weight, label_smoothing=0.1)
    upstream = torch.randn(rows, device="cuda", dtype=x.dtype)
    lib = lambda t: _to_library(t, backend)  # noqa: E731
    with gk.use_backend(backend):
        loss, grad = getattr(gk, f"{op}_forward")(lib(x), lib(target), reduction="none",
                                                  **{k: lib(v) if torch.is_tensor(v) else v for k, v in kwargs.items()})
        back = getattr(gk, f"{op}_backward")(lib(upstream), lib(x), lib(target), reduction="none",
                                             **{k: lib(v) if torch.is_tensor(v) else v for k, v in kwargs.items()})
    with gk.use_backend("numpy"):
        ref_kwargs = {k: _numpy(v) if torch.is_tensor(v) else v for k, v in kwargs.items()}
        want, want_grad = getattr(gk, f"{op}_forward")(_numpy(x), _numpy(target), reduction="none", **ref_kwargs)
        want_back = getattr(gk, f"{op}_backward")(_numpy(upstream), _numpy(x), _numpy(target), reduction="none",
                                                  **ref_kwargs)
    assert_close(loss, want, dtype, "reduction")
    assert_close(grad, want_grad, dtype, "reduction")
    assert_close(back, want_back, dtype, "reduction")


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_on_the_device(backend, reduction, rng):
    skip_unless_backend(backend, "float32")
    h = random_tensor(rng, (300, 64), "float32", "cuda", scale=1.0)
    w = random_tensor(rng, (5003, 64), "float32", "cuda", scale=0.2)
    b = random_tensor(rng, (5003,), "float32", "cuda", scale=0.2)
    target = torch.from_numpy(rng.integers(0, 5003, 300)).cuda()
    target[7] = -100
    upstream = torch.randn(300 if reduction == "none" else (), device="cuda")
    lib = lambda t: _to_library(t, backend)  # noqa: E731
    kwargs = dict(reduction=reduction, label_smoothing=0.1, chunk_size=64)
    with gk.use_backend(backend):
        loss = gk.linear_cross_entropy(lib(h), lib(w), lib(target), lib(b), **kwargs)
        grads = gk.linear_cross_entropy_backward(lib(upstream), lib(h), lib(w), lib(target), lib(b), **kwargs)
    with gk.use_backend("numpy"):
        want = gk.linear_cross_entropy(_numpy(h), _numpy(w), _numpy(target), _numpy(b), **kwargs)
        want_grads = gk.linear_cross_entropy_backward(_numpy(upstream), _numpy(h), _numpy(w), _numpy(target),
                                                      _numpy(b), **kwargs)
    assert_close(loss, want, "float32", "reduction")
    for got, expected in zip(grads, want_grads):
        assert_close(got, expected, "float32", "reduction")


def _peak_extra(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def test_linear_cross_entropy_never_holds_the_logits():
    rows, hidden, vocab = 4096, 1024, 32000
    h = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(vocab, hidden, device="cuda") / 32).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, vocab, (rows,), device="cuda")
    logits_bytes = rows * vocab * 2

    def ours():
        GF.linear_cross_entropy(h, w, target, chunk_size=512).backward()

    def eager():
        TF.cross_entropy(h @ w.T, target).backward()

    ours_peak, eager_peak = _peak_extra(ours), _peak_extra(eager)
    # gradients of h and w (the outputs) + one chunk of 512 rows of logits, never the whole
    assert ours_peak < h.numel() * 2 + w.numel() * 2 + 4 * 512 * vocab * 2 + (64 << 20), ours_peak
    assert ours_peak < logits_bytes < eager_peak


@pytest.mark.parametrize("backend", ["triton", "cupy"])
def test_same_bits_every_run(backend, rng):
    skip_unless_backend(backend, "float32")
    x = random_tensor(rng, (257, 30011), "float32", "cuda")
    target = torch.from_numpy(rng.integers(0, 30011, 257)).cuda()
    runs = []
    for _ in range(2):
        with gk.use_backend(backend):
            loss, grad = gk.cross_entropy_forward(_to_library(x, backend), _to_library(target, backend),
                                                  label_smoothing=0.1)
        runs.append((np.asarray(torch.as_tensor(loss).cpu()).tobytes(), torch.as_tensor(grad).cpu().numpy().tobytes()))
    assert runs[0] == runs[1]


def test_reduction_none_with_a_non_uniform_upstream_gradient_under_autograd(rng):
    x = random_tensor(rng, (64, 50000), "float32", "cuda").requires_grad_()
    target = torch.from_numpy(rng.integers(0, 50000, 64)).cuda()
    target[3] = -100
    upstream = torch.linspace(-2, 3, 64, device="cuda")
    loss = GF.cross_entropy(x, target, reduction="none", label_smoothing=0.1)
    (grad,) = torch.autograd.grad(loss, x, upstream)
    x64 = x.detach().double().requires_grad_()
    want = TF.cross_entropy(x64, target, reduction="none", label_smoothing=0.1)
    (want_grad,) = torch.autograd.grad(want, x64, upstream.double())
    assert_close(loss, want.detach().cpu().numpy(), "float32", "reduction")
    assert_close(grad, want_grad.cpu().numpy(), "float32", "reduction")


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"R{s[0]}-C{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_probability_target_gradient_on_the_device(backend, dtype, shape, rng):
    skip_unless_backend(backend, dtype)
    rows, cols = shape
    x = random_tensor(rng, shape, dtype, "cuda")
    weight = (torch.rand(cols, dtype=torch.float64) + 0.5).to("cuda", x.dtype)
    target = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to("cuda", x.dtype)
    upstream = torch.randn(rows, device="cuda", dtype=x.dtype)
    lib = lambda t: _to_library(t, backend)  # noqa: E731
    kwargs = dict(reduction="none", label_smoothing=0.1)
    with gk.use_backend(backend):
        _, _, lse = gk.cross_entropy_forward(lib(x), lib(target), lib(weight), compute_logsumexp=True, **kwargs)
        kept = gk.cross_entropy_target_backward(lib(upstream), lib(x), lib(target), lib(weight), logsumexp=lse,
                                                **kwargs)
        recomputed = gk.cross_entropy_target_backward(lib(upstream), lib(x), lib(target), lib(weight), **kwargs)
    with gk.use_backend("numpy"):
        want = gk.cross_entropy_target_backward(_numpy(upstream), _numpy(x), _numpy(target), _numpy(weight), **kwargs)
    assert_close(lse, torch.logsumexp(x.double(), 1).cpu().numpy(), "float32", "reduction")
    assert_close(kept, want, dtype, "reduction")
    assert_close(recomputed, want, dtype, "reduction")


def test_input_and_probability_target_gradients_under_autograd(rng):
    x = random_tensor(rng, (64, 50000), "float32", "cuda").requires_grad_()
    target = torch.softmax(torch.randn(64, 50000, device="cuda"), 1).requires_grad_()
    weight = torch.rand(50000, device="cuda") + 0.5
    upstream = torch.linspace(-2, 3, 64, device="cuda")
    loss = GF.cross_entropy(x, target, weight, reduction="none", label_smoothing=0.1)
    grads = torch.autograd.grad(loss, (x, target), upstream)
    x64, t64 = (a.detach().double().requires_grad_() for a in (x, target))
    want = TF.cross_entropy(x64, t64, weight.double(), reduction="none", label_smoothing=0.1)
    want_grads = torch.autograd.grad(want, (x64, t64), upstream.double())
    assert_close(loss, want.detach().cpu().numpy(), "float32", "reduction")
    for got, expected in zip(grads, want_grads):
        assert_close(got, expected.cpu().numpy(), "float32", "reduction")


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("shape", SHAPES + ((8195, 257),), ids=lambda s: f"R{s[0]}-C{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_class_weight_gradient_on_the_device(backend, dtype, shape, rng):
    # R8195: 33 row blocks of the first stage, a ragged last one; the same bits on a second run
    skip_unless_backend(backend, dtype)
    rows, cols = shape
    x = random_tensor(rng, shape, dtype, "cuda")
    target = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to("cuda", x.dtype)
    upstream = torch.randn(rows, device="cuda", dtype=x.dtype)
    lib = lambda t: _to_library(t, backend)  # noqa: E731
    kwargs = dict(reduction="none", label_smoothing=0.1)
    with gk.use_backend(backend):
        _, _, lse = gk.cross_entropy_forward(lib(x), lib(target), compute_logsumexp=True, compute_grad=False,
                                             **kwargs)
        kept = [gk.cross_entropy_weight_backward(lib(upstream), lib(x), lib(target), logsumexp=lse, **kwargs)
                for _ in range(2)]
        recomputed = gk.cross_entropy_weight_backward(lib(upstream), lib(x), lib(target), **kwargs)
    with gk.use_backend("numpy"):
        want = gk.cross_entropy_weight_backward(_numpy(upstream), _numpy(x), _numpy(target), **kwargs)
    assert kept[0].shape == (cols,) and str(kept[0].dtype).endswith(dtype)
    assert_close(kept[0], want, dtype, "reduction")
    assert_close(recomputed, want, dtype, "reduction")
    assert as_float64(kept[0]).tobytes() == as_float64(kept[1]).tobytes()  # float64 holds every value exactly


def test_input_and_class_weight_gradients_under_autograd(rng):
    x = random_tensor(rng, (64, 50000), "float32", "cuda").requires_grad_()
    target = torch.softmax(torch.randn(64, 50000, device="cuda"), 1)
    weight = torch.nn.Parameter(torch.rand(50000, device="cuda") + 0.5)
    upstream = torch.linspace(-2, 3, 64, device="cuda")
    loss = GF.cross_entropy(x, target, weight, reduction="none", label_smoothing=0.1)
    grads = torch.autograd.grad(loss, (x, weight), upstream)
    x64, w64 = (a.detach().double().requires_grad_() for a in (x, weight))
    want = TF.cross_entropy(x64, target.double(), w64, reduction="none", label_smoothing=0.1)
    want_grads = torch.autograd.grad(want, (x64, w64), upstream.double())
    assert_close(loss, want.detach().cpu().numpy(), "float32", "reduction")
    for got, expected in zip(grads, want_grads):
        assert_close(got, expected.cpu().numpy(), "float32", "reduction")
