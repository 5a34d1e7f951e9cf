"""The CuPy optimizer kernels' code (optim.cuh) built with g++ and run on the CPU over a table of
host addresses, as optim.cu runs it over device addresses: every step and option, fp32/fp16/bf16
parameters with and without fp32 master weights, odd sizes and misaligned tensors (the 128-bit
path and the element tail), host and device step counters, and both clipping passes, against
the float64 reference."""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import DTYPES, as_float64, assert_close
from gpukernels.reference import optim as ref
from gpukernels.tools.verify.host import build

SHIM = Path(__file__).parent / "host" / "optim_host.cpp"
SIZES = (1, 7, 1000, 4097, 33)
# optim.py's VARIANTS order: (parameter dtype, master weights) -> code
VARIANT = {("float32", False): 0, ("float16", False): 1, ("bfloat16", False): 2, ("float16", True): 3,
           ("bfloat16", True): 4}
STORAGE = [pytest.param(d, m, id=f"{d}-{'master' if m else 'own'}") for (d, m) in VARIANT]
DTYPE_CODE = {"float32": 0, "float16": 1, "bfloat16": 2}


@pytest.fixture(scope="module")
def lib():
    return build(SHIM)


def _tensors(rng, dtype, positive=False, scale=1.0, misalign=False):
    out = []
    for n in SIZES:
        values = rng.standard_normal(n + 1) * scale
        t = torch.from_numpy(np.abs(values) if positive else values).to(getattr(torch, dtype))
        out.append(t[1:] if misalign else t[:n])
    return out


def _table(*columns):
    """uint64 [tensors, operands + 1]: each operand's address, then the size."""
    rows = [[c[i].data_ptr() for c in columns] + [columns[0][i].numel()] for i in range(len(columns[0]))]
    return np.asarray(rows, dtype=np.uint64)


def _call(fn, variant, table, floats, ints, grad_scale=1.0):
    f = np.asarray(floats, dtype=np.float32)
    i = np.asarray(ints, dtype=np.int32)
    code = fn(variant, table.ctypes.data_as(ctypes.c_void_p), len(table), f.ctypes.data_as(ctypes.c_void_p),
              i.ctypes.data_as(ctypes.c_void_p), ctypes.c_float(grad_scale))
    assert code == 0


def _f64(ts):
    return [as_float64(t) for t in ts]


def _check(got, want, dtype):
    for g, w in zip(got, want):
        assert_close(g, w, dtype)


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "offset"])
@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("options", ["adam", "adam-l2-amsgrad-max", "adamw-device-step"])
def test_adam(lib, options, dtype, master, misalign, rng):
    sd = "float32" if master else dtype
    params = _tensors(rng, dtype, misalign=misalign)
    masters = [p.float() for p in params] if master else None
    grads = _tensors(rng, dtype, misalign=misalign)
    m, v, vmax = _tensors(rng, sd), _tensors(rng, sd, positive=True), _tensors(rng, sd, positive=True, scale=2.0)
    amsgrad, maximize = "amsgrad" in options, "max" in options
    wd = 0.1 if ("l2" in options or "adamw" in options) else 0.0
    decoupled, device_step = "adamw" in options, "device" in options
    steps = [torch.tensor([float(i + 2)]) for i in range(len(SIZES))]
    lr, b1, b2, eps, t, grad_scale = 0.01, 0.8, 0.95, 1e-6, 3.0, 4.0
    p64, m64, v64, vmax64 = _f64(masters if master else params), _f64(m), _f64(v), _f64(vmax)
    ref.adam_step(p64, [as_float64(g) / grad_scale for g in grads], m64, v64, vmax64 if amsgrad else None, None, None,
                  None, [float(s) for s in steps] if device_step else t, lr=lr, beta1=b1, beta2=b2, eps=eps,
                  weight_decay=wd, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled)
    table = _table(params, grads, m, v, vmax, masters or m, steps)
    floats = [-1.0 if maximize else 1.0, b1, 1 - b1, b2, 1 - b2, math.log(b1), math.log(b2), lr, eps,
              0.0 if decoupled else wd, 1 - lr * wd if decoupled else 1.0, lr / (1 - b1**t), math.sqrt(1 - b2**t)]
    _call(lib.gk_adam, VARIANT[(dtype, master)], table, floats, [int(amsgrad), int(device_step)], grad_scale)
    _check(m, m64, sd)
    _check(v, v64, sd)
    if amsgrad:
        _check(vmax, vmax64, sd)
    if master:
        _check(masters, p64, "float32")
        assert all(torch.equal(p, q.to(p.dtype)) for p, q in zip(params, masters))  # round to nearest even
    _check(params, p64, dtype)


@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("options", ["plain", "momentum-damp-wd", "nesterov-max", "first-step"])
def test_sgd(lib, options, dtype, master, rng):
    sd = "float32" if master else dtype
    params = _tensors(rng, dtype, misalign=True)
    masters = [p.float() for p in params] if master else None
    grads = _tensors(rng, dtype, misalign=True)
    buffers = _tensors(rng, sd)
    first = options == "first-step"
    momentum = 0.0 if options == "plain" else 0.9
    damp, wd = (0.3, 0.1) if "damp" in options else (0.0, 0.0)
    nesterov, maximize = "nesterov" in options, "max" in options
    p64, b64 = _f64(masters if master else params), _f64(buffers)
    ref.sgd_step(p64, _f64(grads), b64, None, None, None, first_step=[first] * len(SIZES), lr=0.05, momentum=momentum,
                 dampening=damp, weight_decay=wd, nesterov=nesterov, maximize=maximize)
    table = _table(params, grads, buffers, masters or buffers)
    _call(lib.gk_sgd, VARIANT[(dtype, master)], table, [-1.0 if maximize else 1.0, 0.05, momentum, 1 - damp, wd],
          [int(nesterov), int(first)])
    if momentum:
        _check(buffers, b64, sd)
    _check(params, p64, dtype)


@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("options", ["plain", "centered-wd", "momentum-max", "centered-momentum"])
def test_rmsprop(lib, options, dtype, master, rng):
    sd = "float32" if master else dtype
    params = _tensors(rng, dtype)
    masters = [p.float() for p in params] if master else None
    grads = _tensors(rng, dtype, scale=0.1)
    v, a, b = _tensors(rng, sd, positive=True, scale=2.0), _tensors(rng, sd, scale=0.1), _tensors(rng, sd)
    for x in v:  # keep v - g_avg^2 well away from 0, where fp32 cancellation would dominate
        x += 0.5
    centered = "centered" in options
    momentum = 0.5 if "momentum" in options else 0.0
    wd, maximize = (0.1 if "wd" in options else 0.0), "max" in options
    p64, v64, a64, b64 = _f64(masters if master else params), _f64(v), _f64(a), _f64(b)
    ref.rmsprop_step(p64, _f64(grads), v64, a64, b64, None, None, None, lr=0.01, alpha=0.9, eps=1e-6,
                     weight_decay=wd, momentum=momentum, centered=centered, maximize=maximize)
    table = _table(params, grads, v, a, b, masters or v)
    _call(lib.gk_rmsprop, VARIANT[(dtype, master)], table,
          [-1.0 if maximize else 1.0, 0.01, 0.9, 0.1, 1e-6, wd, momentum], [int(centered)])
    _check(v, v64, sd)
    if centered:
        _check(a, a64, sd)
    if momentum:
        _check(b, b64, sd)
    _check(params, p64, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_clip_grad_norm(lib, norm_type, dtype, rng):
    grads = _tensors(rng, dtype, misalign=True)
    g64 = _f64(grads)
    want = ref.clip_grad_norm_(g64, max_norm=1.0, norm_type=norm_type)
    kind = 1 if math.isinf(norm_type) else 0 if norm_type == 2.0 else 2
    total = np.zeros(1, dtype=np.float32)
    code = lib.gk_clip_norm(DTYPE_CODE[dtype], _table(grads).ctypes.data_as(ctypes.c_void_p), len(SIZES), kind,
                            ctypes.c_float(norm_type if kind == 2 else 1.0), ctypes.c_float(1.0),
                            total.ctypes.data_as(ctypes.c_void_p))
    assert code == 0
    assert_close(total[0], want, dtype, kind="reduction")
    _check(grads, g64, dtype)


def test_clip_grad_norm_nan_and_clip_value(lib, rng):
    grads = _tensors(rng, "float32")
    grads[3][10] = math.nan
    total = np.zeros(1, dtype=np.float32)
    lib.gk_clip_norm(0, _table(grads).ctypes.data_as(ctypes.c_void_p), len(SIZES), 0, ctypes.c_float(1.0),
                     ctypes.c_float(1.0), total.ctypes.data_as(ctypes.c_void_p))
    assert math.isnan(total[0]) and all(torch.isnan(g).all() for g in grads)
    grads = _tensors(rng, "bfloat16", scale=3.0)
    grads[0][0] = math.nan
    g64 = _f64(grads)
    ref.clip_grad_value_(g64, clip_value=1.5)
    assert lib.gk_clip_value(2, _table(grads).ctypes.data_as(ctypes.c_void_p), len(SIZES), ctypes.c_float(1.5)) == 0
    _check(grads, g64, "bfloat16")
