"""The Triton multi-tensor kernels through the public functional API, one step at a time, against
the float64 reference run on the same (rounded) inputs: every option, fp32/fp16/bf16 parameters,
fp32 master weights, grad_scale/found_inf, host and device step counters, aligned and
misaligned tensors, empty tensors, several dtypes in one call, and the clipping kernels.

In Triton's interpreter the table of offsets addresses real host memory (CPU tensors are not
copied), so the very multi-tensor launch the GPU runs is what runs here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close
from conftest import DEVICE, HAS_CUDA
from gpukernels.reference import optim as ref

SIZES = (1, 7, 1000, 4097, 0, 33)


def _tensors(rng, dtype, sizes=SIZES, scale=1.0, positive=False, misalign=False):
    out = []
    for n in sizes:
        values = rng.standard_normal(n + 1) * scale
        values = np.abs(values) if positive else values
        t = torch.from_numpy(values).to(DEVICE, getattr(torch, dtype))
        out.append(t[1:] if misalign else t[:n])  # an offset view starts 2 or 4 bytes past alignment
    return out


def _f64(tensors):
    return [as_float64(t) for t in tensors]


def _check(got, want, dtype):
    for g, w in zip(got, want):
        assert_close(g, w, dtype)


ADAM_OPTIONS = [
    pytest.param(dict(), id="plain"),
    pytest.param(dict(weight_decay=0.1), id="wd"),
    pytest.param(dict(weight_decay=0.1, decoupled_weight_decay=True), id="adamw"),
    pytest.param(dict(amsgrad=True, maximize=True), id="amsgrad-max"),
]


def _state_dtype(dtype, master):
    return "float32" if master else dtype


# (dtype, master weights): fp32 master copies are for float16/bfloat16 parameters only.
STORAGE = [pytest.param(d, m, id=f"{d}-{'master' if m else 'own'}")
           for d in DTYPES for m in (False, True) if not (m and d == "float32")]


@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("options", ADAM_OPTIONS)
def test_adam_step(options, dtype, master, rng):
    sd = _state_dtype(dtype, master)
    params = _tensors(rng, dtype)
    masters = [p.float().clone() for p in params] if master else None
    grads = _tensors(rng, dtype)
    m, v, vmax = _tensors(rng, sd), _tensors(rng, sd, positive=True), _tensors(rng, sd, positive=True, scale=2.0)
    amsgrad = options.get("amsgrad", False)
    p64 = _f64(masters if master else params)
    m64, v64, vmax64 = _f64(m), _f64(v), _f64(vmax)
    kw = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, **options)
    ref.adam_step(p64, _f64(grads), m64, v64, vmax64 if amsgrad else None, None, None, None, 3.0,
                  lr=kw["lr"], beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=options.get("weight_decay", 0.0),
                  amsgrad=amsgrad, maximize=options.get("maximize", False),
                  decoupled_weight_decay=options.get("decoupled_weight_decay", False))
    with gk.use_backend("triton"):
        gk.adam_step(params, grads, m, v, step=3, max_exp_avg_sqs=vmax if amsgrad else None,
                     master_params=masters, **kw)
    _check(m, m64, sd)
    _check(v, v64, sd)
    if amsgrad:
        _check(vmax, vmax64, sd)
    if master:
        _check(masters, p64, "float32")
    _check(params, p64, dtype)


SGD_OPTIONS = [
    pytest.param(dict(), id="plain"),
    pytest.param(dict(momentum=0.9, dampening=0.3, weight_decay=0.1), id="momentum-damp-wd"),
    pytest.param(dict(momentum=0.9, nesterov=True, maximize=True), id="nesterov-max"),
]


SGD_CASES = [pytest.param(o.values[0], first, id=f"{o.id}-{'first' if first else 'later'}")
             for o in SGD_OPTIONS for first in (False, True) if o.values[0].get("momentum") or not first]


@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("options,first", SGD_CASES)
def test_sgd_step(options, first, dtype, master, rng):
    momentum = options.get("momentum", 0.0)
    params = _tensors(rng, dtype)
    masters = [p.float().clone() for p in params] if master else None
    grads = _tensors(rng, dtype)
    buffers = None
    if momentum:
        buffers = [None] * len(params) if first else _tensors(rng, _state_dtype(dtype, master))
    p64 = _f64(masters if master else params)
    b64 = [np.zeros(n) for n in SIZES] if first else (_f64(buffers) if buffers else None)
    ref.sgd_step(p64, _f64(grads), b64, None, None, None, first_step=[first] * len(params), lr=0.05,
                 momentum=momentum, dampening=options.get("dampening", 0.0),
                 weight_decay=options.get("weight_decay", 0.0), nesterov=options.get("nesterov", False),
                 maximize=options.get("maximize", False))
    with gk.use_backend("triton"):
        gk.sgd_step(params, grads, buffers, lr=0.05, master_params=masters, **options)
    if momentum:
        assert all(b is not None and b.dtype == getattr(torch, _state_dtype(dtype, master)) for b in buffers)
        _check(buffers, b64, _state_dtype(dtype, master))
    _check(params, p64, dtype)


RMSPROP_OPTIONS = [
    pytest.param(dict(), id="plain"),
    pytest.param(dict(centered=True, weight_decay=0.1), id="centered-wd"),
    pytest.param(dict(momentum=0.9, maximize=True), id="momentum-max"),
    pytest.param(dict(centered=True, momentum=0.5), id="centered-momentum"),
]


@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("options", RMSPROP_OPTIONS)
def test_rmsprop_step(options, dtype, master, rng):
    sd = _state_dtype(dtype, master)
    params = _tensors(rng, dtype)
    masters = [p.float().clone() for p in params] if master else None
    grads = _tensors(rng, dtype, scale=0.1)  # |g_avg| < sqrt(square_avg): the centered root stays real
    v = [x + 0.5 for x in _tensors(rng, sd, positive=True, scale=2.0)]  # v - g_avg^2 stays well above 0
    a = _tensors(rng, sd, scale=0.1) if options.get("centered") else None
    b = _tensors(rng, sd) if options.get("momentum") else None
    p64, v64 = _f64(masters if master else params), _f64(v)
    a64, b64 = (_f64(a) if a else None), (_f64(b) if b else None)
    ref.rmsprop_step(p64, _f64(grads), v64, a64, b64, None, None, None, lr=0.01, alpha=0.9, eps=1e-6,
                     weight_decay=options.get("weight_decay", 0.0), momentum=options.get("momentum", 0.0),
                     centered=options.get("centered", False), maximize=options.get("maximize", False))
    with gk.use_backend("triton"):
        gk.rmsprop_step(params, grads, v, a, b, lr=0.01, alpha=0.9, eps=1e-6, master_params=masters, **options)
    _check(v, v64, sd)
    if a:
        _check(a, a64, sd)
    if b:
        _check(b, b64, sd)
    _check(params, p64, dtype)


@pytest.mark.parametrize("step_kind", ["device-scalar", "per-parameter"])
def test_adam_device_step_counters(step_kind, rng):
    params, grads = _tensors(rng, "float32"), _tensors(rng, "float32")
    m, v = _tensors(rng, "float32"), _tensors(rng, "float32", positive=True)
    counts = [7.0] * len(params) if step_kind == "device-scalar" else [float(i + 1) for i in range(len(params))]
    step = (torch.tensor([7.0], device=DEVICE) if step_kind == "device-scalar"
            else [torch.tensor([c], device=DEVICE) for c in counts])
    want = [ref_p.copy() for ref_p in _f64(params)]
    m64, v64, g64 = _f64(m), _f64(v), _f64(grads)
    for i in range(len(params)):
        ref.adam_step([want[i]], [g64[i]], [m64[i]], [v64[i]], None, None, None, None, counts[i], lr=0.01, beta1=0.9,
                      beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                      decoupled_weight_decay=False)
    with gk.use_backend("triton"):
        gk.adam_step(params, grads, m, v, step=step, lr=0.01)
    # The device path forms the bias corrections in the kernel from fp32 log(beta): a few ulps.
    for p, w in zip(params, want):
        assert_close(p, w, "float32", kind="reduction")


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_grad_scale_unscales_and_found_inf_skips(name, rng):
    params, grads = _tensors(rng, "float32"), _tensors(rng, "float32")
    state = _tensors(rng, "float32", positive=True)
    scale = torch.tensor([64.0], device=DEVICE)

    def run(ps, gs, st, **amp):
        with gk.use_backend("triton"):
            if name == "adam":
                gk.adam_step(ps, gs, st, [s.clone() for s in st], step=2, lr=0.01, **amp)
            elif name == "sgd":
                gk.sgd_step(ps, gs, st, lr=0.1, momentum=0.9, **amp)
            else:
                gk.rmsprop_step(ps, gs, st, lr=0.01, **amp)

    unscaled = [p.clone() for p in params], [s.clone() for s in state]
    run(*unscaled[:1], grads, unscaled[1])
    scaled = [p.clone() for p in params], [s.clone() for s in state]
    run(scaled[0], [g * 64.0 for g in grads], scaled[1], grad_scale=scale, found_inf=torch.zeros(1, device=DEVICE))
    for a, b in zip(scaled[0] + scaled[1], unscaled[0] + unscaled[1]):
        assert_close(a, as_float64(b), "float32")
    before = [p.clone() for p in params], [s.clone() for s in state]
    bad = [g.clone() for g in grads]
    bad[2][3] = math.inf
    run(params, bad, state, found_inf=torch.ones(1, device=DEVICE))
    assert all(torch.equal(a, b) for a, b in zip(params + state, before[0] + before[1]))


def test_nonfinite_gradients_without_found_inf_flow_through_as_in_torch(rng):
    params, grads = _tensors(rng, "float32", sizes=(5,)), _tensors(rng, "float32", sizes=(5,))
    grads[0][1] = math.nan
    theirs = torch.nn.Parameter(params[0].clone())
    theirs.grad = grads[0].clone()
    torch.optim.SGD([theirs], lr=0.1).step()
    with gk.use_backend("triton"):
        gk.sgd_step(params, grads, lr=0.1)
    assert torch.equal(params[0].isnan(), theirs.detach().isnan())
    assert_close(params[0], as_float64(theirs), "float32")


def test_misaligned_and_mixed_dtype_tensors_in_one_call(rng):
    params = _tensors(rng, "float32", misalign=True) + _tensors(rng, "float16", sizes=(9, 2000))
    grads = _tensors(rng, "float32", misalign=True) + _tensors(rng, "float16", sizes=(9, 2000))
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    p64, g64 = _f64(params), _f64(grads)
    m64, v64 = _f64(m), _f64(v)
    ref.adam_step(p64, g64, m64, v64, None, None, None, None, 1.0, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.0, amsgrad=False, maximize=False, decoupled_weight_decay=False)
    with gk.use_backend("triton"):
        gk.adam_step(params, grads, m, v, step=1, lr=0.01)
    for p, w in zip(params, p64):
        assert_close(p, w, str(p.dtype).removeprefix("torch."))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_clip_grad_norm_kernels(norm_type, dtype, rng):
    grads = _tensors(rng, dtype)
    g64 = _f64(grads)
    want_norm = ref.clip_grad_norm_(g64, max_norm=1.0, norm_type=norm_type)
    with gk.use_backend("triton"):
        total = gk.clip_grad_norm_(grads, 1.0, norm_type)
    assert total.shape == () and total.dtype == grads[0].dtype
    assert_close(total, want_norm, dtype, kind="reduction")
    _check(grads, g64, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_grad_value_kernel(dtype, rng):
    grads = _tensors(rng, dtype, scale=2.0)
    grads[2][0] = math.nan
    g64 = _f64(grads)
    ref.clip_grad_value_(g64, clip_value=1.5)
    with gk.use_backend("triton"):
        gk.clip_grad_value_(grads, 1.5)
    _check(grads, g64, dtype)


def test_one_launch_per_dtype_group(monkeypatch, rng):
    """O(1) launches: 40 tensors of one dtype cost one launch; the table is cached across steps."""
    from gpukernels.triton import optim as triton_optim

    launches = []
    original = triton_optim._launch
    monkeypatch.setattr(triton_optim, "_launch", lambda *a, **k: (launches.append(a[0]), original(*a, **k)))
    params = _tensors(rng, "float32", sizes=[3] * 40)
    grads = _tensors(rng, "float32", sizes=[3] * 40)
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    with gk.use_backend("triton"):
        gk.adam_step(params, grads, m, v, step=1)
        cached = len(triton_optim._TABLES), len(triton_optim._BLOCK_MAPS)
        gk.adam_step(params, grads, m, v, step=2)
    assert launches == [triton_optim.adam_kernel] * 2
    assert (len(triton_optim._TABLES), len(triton_optim._BLOCK_MAPS)) == cached


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_copies_are_written_back_into_the_callers_tensors(backend, rng):
    """bfloat16 CPU tensors reach the reference as float32 copies, and non-contiguous views reach
    the kernels as contiguous copies: the step must still land in the caller's tensors."""
    if backend == "numpy" and HAS_CUDA:
        pytest.skip("the reference runs on CPU tensors")
    base = torch.from_numpy(rng.standard_normal((33, 17))).to(DEVICE, torch.bfloat16)
    params = [base.t(), torch.from_numpy(rng.standard_normal(9)).to(DEVICE, torch.bfloat16)]
    assert not params[0].is_contiguous()
    grads = [torch.from_numpy(rng.standard_normal(tuple(p.shape))).to(DEVICE, torch.bfloat16) for p in params]
    buffers = [None, None]
    p64, g64 = _f64(params), _f64(grads)
    b64 = [np.zeros_like(p) for p in p64]
    ref.sgd_step(p64, g64, b64, None, None, None, first_step=[True, True], lr=0.1, momentum=0.9, dampening=0.0,
                 weight_decay=0.0, nesterov=False, maximize=False)
    with gk.use_backend(backend):
        gk.sgd_step(params, grads, buffers, lr=0.1, momentum=0.9)
    _check(params, p64, "bfloat16")
    _check(buffers, b64, "bfloat16")
    assert_close(base.t(), p64[0], "bfloat16")  # the view's base tensor holds the update


@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("name", ["adam", "adamw-device-step", "sgd", "sgd-first", "rmsprop"])
def test_device_lr(name, dtype, master, rng):
    """torch's tensor ``lr``: the kernels read it on the device (``device_lr``); the update is the
    one the host's float gives, AdamW's decay and Adam's step size formed from it in the kernel."""
    sd = _state_dtype(dtype, master)
    params = _tensors(rng, dtype)
    masters = [p.float().clone() for p in params] if master else None
    grads = _tensors(rng, dtype, scale=0.1)
    state = [x + 0.5 for x in _tensors(rng, sd, positive=True)]
    lr = torch.tensor([0.03], device=DEVICE)
    p64, g64, s64 = _f64(masters if master else params), _f64(grads), _f64(state)
    with gk.use_backend("triton"):
        if name.startswith("adam"):
            m = _tensors(rng, sd)
            m64 = _f64(m)
            decoupled = "adamw" in name
            step = [torch.tensor([i + 2.0], device=DEVICE) for i in range(len(params))] if "device-step" in name else 4
            counts = [i + 2.0 for i in range(len(params))] if "device-step" in name else [4.0] * len(params)
            for i in range(len(params)):
                ref.adam_step([p64[i]], [g64[i]], [m64[i]], [s64[i]], None, None, None, None, counts[i], lr=0.03,
                              beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, amsgrad=False, maximize=False,
                              decoupled_weight_decay=decoupled)
            gk.adam_step(params, grads, m, state, step=step, lr=lr, betas=(0.9, 0.99), weight_decay=0.1,
                         decoupled_weight_decay=decoupled, master_params=masters)
            _check(m, m64, sd)
        elif name.startswith("sgd"):
            first = name.endswith("first")
            buffers = [None] * len(params) if first else state
            ref.sgd_step(p64, g64, [np.zeros(n) for n in SIZES] if first else s64, None, None, None,
                         first_step=[first] * len(params), lr=0.03, momentum=0.9, dampening=0.0, weight_decay=0.1,
                         nesterov=False, maximize=False)
            gk.sgd_step(params, grads, buffers, lr=lr, momentum=0.9, weight_decay=0.1, master_params=masters)
        else:
            ref.rmsprop_step(p64, g64, s64, None, None, None, None, None, lr=0.03, alpha=0.9, eps=1e-6,
                             weight_decay=0.1, momentum=0.0, centered=False, maximize=False)
            gk.rmsprop_step(params, grads, state, lr=lr, alpha=0.9, eps=1e-6, weight_decay=0.1, master_params=masters)
            _check(state, s64, sd)
    _check(params, p64, dtype)  # fp32 device corrections: a few ulps, inside the pointwise bounds


def test_device_lr_is_read_when_the_step_runs(rng):
    """One set of arguments, the tensor changed between calls: each call uses the value it holds
    then (what a replayed CUDA graph relies on)."""
    params, grads = _tensors(rng, "float32", sizes=(5, 9)), _tensors(rng, "float32", sizes=(5, 9))
    p64, g64 = _f64(params), _f64(grads)
    lr = torch.tensor([0.5], device=DEVICE)
    with gk.use_backend("triton"):
        for value in (0.5, 0.25, 0.0):
            lr.fill_(value)
            gk.sgd_step(params, grads, lr=lr)
            ref.sgd_step(p64, g64, None, None, None, None, first_step=[False, False], lr=value, momentum=0.0,
                         dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)
    _check(params, p64, "float32")


def test_tables_built_during_graph_capture_stay_out_of_the_caches(monkeypatch, rng):
    """A table (or block map, or constant) first built while a CUDA graph is being captured is
    filled only when the graph replays: it must serve that graph alone, never a later eager step
    from the cache. (Here capture is simulated: the interpreter runs the very same launch.)"""
    from gpukernels.triton import optim as triton_optim

    params, grads = _tensors(rng, "float32", sizes=(5, 3001)), _tensors(rng, "float32", sizes=(5, 3001))
    m, v = _tensors(rng, "float32", sizes=(5, 3001)), _tensors(rng, "float32", sizes=(5, 3001), positive=True)
    p64, g64, m64, v64 = _f64(params), _f64(grads), _f64(m), _f64(v)
    ref.adam_step(p64, g64, m64, v64, None, None, None, None, 2.0, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                  weight_decay=0.0, amsgrad=False, maximize=False, decoupled_weight_decay=False)
    monkeypatch.setattr(triton_optim, "_TABLES", {})
    monkeypatch.setattr(triton_optim, "_BLOCK_MAPS", {})
    monkeypatch.setattr(triton_optim, "_SCALARS", {})
    monkeypatch.setattr(triton_optim, "_capturing", lambda device: True)
    with gk.use_backend("triton"):
        gk.adam_step(params, grads, m, v, step=2, lr=0.01)
    assert not triton_optim._TABLES and not triton_optim._BLOCK_MAPS and not triton_optim._SCALARS
    _check(params, p64, "float32")
