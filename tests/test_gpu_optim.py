"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy multi-tensor optimizer kernels on the
device against the float64 reference, the drop-in optimizers against torch.optim's fused ones
over 50 steps, a step captured in a CUDA graph, and clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpukernels as gk
import gpukernels.torch.optim as gko
from _helpers import DTYPES, as_float64, assert_close
from gpukernels.reference import optim as ref
from gpukernels.torch.nn import utils as gku

pytestmark = pytest.mark.gpu

SIZES = (1, 7, 1000, 4097, 2**20 + 3)


def _library(tensors, backend):
    if backend == "cupy":
        import cupy

        return [cupy.from_dlpack(t) for t in tensors]
    return tensors


def _tensors(rng, dtype, positive=False):
    out = []
    for n in SIZES:
        values = rng.standard_normal(n)
        out.append(torch.from_numpy(np.abs(values) if positive else values).to("cuda", getattr(torch, dtype)))
    return out


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("master", [False, True], ids=["own", "master"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_on_the_device(backend, dtype, master, rng):
    if backend == "cupy":
        pytest.importorskip("cupy")
        if dtype == "bfloat16":
            pytest.importorskip("ml_dtypes", reason="cupy represents bfloat16 through ml_dtypes")
    if master and dtype == "float32":
        return  # master weights are for half-precision parameters
    sd = "float32" if master else dtype
    params, grads = _tensors(rng, dtype), _tensors(rng, dtype)
    masters = [p.float() for p in params] if master else None
    m, v, vmax = _tensors(rng, sd), _tensors(rng, sd, positive=True), _tensors(rng, sd, positive=True)
    step = [torch.full((1,), 3.0, device="cuda") for _ in SIZES]
    p64, m64, v64, vmax64 = [as_float64(x) for x in (masters or params)], [as_float64(x) for x in m], \
        [as_float64(x) for x in v], [as_float64(x) for x in vmax]
    ref.adam_step(p64, [as_float64(g) for g in grads], m64, v64, vmax64, None, None, None, 3.0, lr=0.01, beta1=0.9,
                  beta2=0.999, eps=1e-8, weight_decay=0.1, amsgrad=True, maximize=False, decoupled_weight_decay=True)
    lib = lambda ts: None if ts is None else _library(ts, backend)
    with gk.use_backend(backend):
        gk.adam_step(lib(params), lib(grads), lib(m), lib(v), step=lib(step), lr=0.01, weight_decay=0.1, amsgrad=True,
                     max_exp_avg_sqs=lib(vmax), decoupled_weight_decay=True, master_params=lib(masters))
    torch.cuda.synchronize()
    for got, want in zip(params, p64):
        assert_close(got, want, dtype, kind="reduction")
    for got, want in zip(m + vmax, m64 + vmax64):
        assert_close(got, want, sd)


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_rmsprop_and_clip_on_the_device(backend, dtype, rng):
    if backend == "cupy":
        pytest.importorskip("cupy")
        if dtype == "bfloat16":
            pytest.importorskip("ml_dtypes", reason="cupy represents bfloat16 through ml_dtypes")
    lib = lambda ts: _library(ts, backend)
    params, grads = _tensors(rng, dtype), _tensors(rng, dtype)
    p64, g64 = [as_float64(p) for p in params], [as_float64(g) for g in grads]
    buffers = [None] * len(SIZES)
    b64 = [np.zeros_like(p) for p in p64]
    ref.sgd_step(p64, g64, b64, None, None, None, first_step=[True] * len(SIZES), lr=0.1, momentum=0.9,
                 dampening=0.0, weight_decay=0.0, nesterov=True, maximize=False)
    sq = _tensors(rng, dtype, positive=True)
    sq64 = [as_float64(s) for s in sq]
    ref.rmsprop_step(p64, g64, sq64, None, None, None, None, None, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0,
                     momentum=0.0, centered=False, maximize=False)
    norm64 = ref.clip_grad_norm_(g64, max_norm=1.0, norm_type=2.0)
    with gk.use_backend(backend):
        ours_params, ours_grads = lib(params), lib(grads)
        gk.sgd_step(ours_params, ours_grads, buffers, lr=0.1, momentum=0.9, nesterov=True)
        gk.rmsprop_step(ours_params, ours_grads, lib(sq), lr=0.01)
        total = gk.clip_grad_norm_(ours_grads, 1.0)
    torch.cuda.synchronize()
    for got, want in zip(params, p64):
        assert_close(got, want, dtype, kind="reduction")
    for got, want in zip(grads, g64):
        assert_close(got, want, dtype, kind="reduction")
    assert_close(as_float64(total), norm64, dtype, kind="reduction")


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_drop_in_optimizers_match_torch_fused_for_50_steps(name, rng):
    classes, kw = {
        "adam": ((torch.optim.Adam, gko.Adam), dict(lr=0.01, amsgrad=True, fused=True)),
        "adamw": ((torch.optim.AdamW, gko.AdamW), dict(lr=0.01, fused=True)),
        "sgd": ((torch.optim.SGD, gko.SGD), dict(lr=0.05, momentum=0.9, nesterov=True, fused=True)),
        "rmsprop": ((torch.optim.RMSprop, gko.RMSprop), dict(lr=0.01, centered=True, momentum=0.9)),
    }[name]
    start = _tensors(rng, "float32")
    theirs_params = [torch.nn.Parameter(s.clone()) for s in start]
    ours_params = [torch.nn.Parameter(s.clone()) for s in start]
    theirs, ours = classes[0](theirs_params, **kw), classes[1](ours_params, **kw)
    for _ in range(50):
        grads = _tensors(rng, "float32")
        for a, b, g in zip(theirs_params, ours_params, grads):
            a.grad, b.grad = g.clone(), g.clone()
        theirs.step()
        ours.step()
    for a, b in zip(ours_params, theirs_params):
        assert_close(a, as_float64(b), "float32", kind="reduction")


def test_adam_step_captured_in_a_cuda_graph(rng):
    params = [torch.nn.Parameter(t) for t in _tensors(rng, "float32")]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    static_grads = _tensors(rng, "float32")
    for p, g in zip(params, static_grads):
        p.grad = g
    for p, g in zip(copies, static_grads):
        p.grad = g.clone()
    ours, eager = gko.Adam(params, lr=0.01, capturable=True), gko.Adam(copies, lr=0.01)
    ours.step()  # warm-up: state, tables and kernels exist before capture
    eager.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ours.step()
    for _ in range(5):
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    assert float(ours.state[params[0]]["step"]) == 6.0
    for a, b in zip(params, copies):
        assert_close(a, as_float64(b), "float32")


def test_clip_grad_norm_matches_torch_on_the_device(rng):
    grads = _tensors(rng, "float32")
    ours = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for a, b, g in zip(ours, theirs, grads):
        a.grad, b.grad = g.clone(), g.clone()
    for norm_type in (2.0, math.inf):
        want = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type)
        got = gku.clip_grad_norm_(ours, 0.5, norm_type)
        assert_close(got, as_float64(want), "float32", kind="reduction")
    for a, b in zip(ours, theirs):
        assert_close(a.grad, as_float64(b.grad), "float32", kind="reduction")


def test_steps_never_wait_for_the_gpu(rng):
    """A step only queues work: the first one (state, counters and launch tables made, the
    tables copied up from pinned memory) and every later one, for every optimizer and for
    clipping without error_if_nonfinite. A host sync anywhere raises here."""
    params = [torch.nn.Parameter(t) for t in _tensors(rng, "float32")]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = [gko.Adam(params, lr=1e-3), gko.AdamW(params, lr=1e-3, amsgrad=True),
                  gko.SGD(params, lr=0.1, momentum=0.9), gko.RMSprop(params, lr=1e-3, centered=True, momentum=0.5)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            for opt in optimizers:
                opt.step()
            gku.clip_grad_norm_(params, 1e6)
            for p in params:  # new gradients elsewhere in memory: new launch tables, still no sync
                p.grad = torch.randn_like(p)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert all(float(opt.state[params[0]]["step"]) == 3.0 for opt in optimizers if "step" in opt.state[params[0]])
