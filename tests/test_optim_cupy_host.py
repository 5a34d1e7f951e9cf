"""The CuPy optimizer backend on the CPU: its entry points (gpukernels.cupy.optim.adam_step, ...,
the functions the dispatch layer calls) with NumPy as the array module and optim.cu built with g++
as the launcher, so the scalars they pack, the tables and block maps they build, the dtype groups
and the template each group launches run as on the GPU: every step and option, fp32/fp16/bf16
parameters with and without fp32 master weights, odd sizes and misaligned tensors (the 128-bit
path and the element tail), host and device step counters, GradScaler's grad_scale and found_inf,
and both clipping passes over mixed dtypes, against the float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _helpers import DTYPES, as_float64, assert_close
from _host_buffers import host_runner, storage
from gpukernels.cupy import optim as cupy_optim
from gpukernels.reference import optim as ref

SIZES = (1, 7, 1000, 4097, 33)
STORAGE = [pytest.param(d, m, id=f"{d}-{'master' if m else 'own'}")
           for d, m in (("float32", False), ("float16", False), ("bfloat16", False), ("float16", True),
                        ("bfloat16", True))]


@pytest.fixture(scope="module")
def run():
    return host_runner(cupy_optim.PROGRAM)


def _tensors(rng, dtype, positive=False, scale=1.0, misalign=False, sizes=SIZES):
    out = []
    for n in sizes:
        values = rng.standard_normal(n) * scale
        out.append(storage(np.abs(values) if positive else values, dtype, misalign)[0])
    return out


def _f64(arrays):
    return [as_float64(a) for a in arrays]


def _check(got, want, dtype):
    for g, w in zip(got, want):
        assert_close(g, w, dtype)


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "offset"])
@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("options", ["adam", "adam-l2-amsgrad-max", "adamw", "adamw-device-step"])
def test_adam(run, options, dtype, master, misalign, rng):
    sd = "float32" if master else dtype
    params = _tensors(rng, dtype, misalign=misalign)
    masters = [p.astype(np.float32) for p in params] if master else None
    grads = _tensors(rng, dtype, misalign=misalign)
    m, v, vmax = _tensors(rng, sd), _tensors(rng, sd, positive=True), _tensors(rng, sd, positive=True, scale=2.0)
    amsgrad, maximize = "amsgrad" in options, "max" in options
    wd = 0.1 if ("l2" in options or "adamw" in options) else 0.0
    decoupled = "adamw" in options
    step = [np.array([i + 2.0], np.float32) for i in range(len(SIZES))] if "device" in options else 3.0
    grad_scale = np.array([4.0], np.float32)
    hyper = dict(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=wd, amsgrad=amsgrad, maximize=maximize,
                 decoupled_weight_decay=decoupled)
    p64, m64, v64, vmax64 = _f64(masters if master else params), _f64(m), _f64(v), _f64(vmax)
    ref.adam_step(p64, _f64(grads), m64, v64, vmax64 if amsgrad else None, None, grad_scale, None, step, **hyper)
    cupy_optim.adam_step(params, grads, m, v, vmax if amsgrad else None, masters, grad_scale, None, step, run=run,
                         **hyper)
    _check(m, m64, sd)
    _check(v, v64, sd)
    if amsgrad:
        _check(vmax, vmax64, sd)
    if master:
        _check(masters, p64, "float32")
        assert all(np.array_equal(p, q.astype(p.dtype)) for p, q in zip(params, masters))  # round to nearest even
    _check(params, p64, dtype)


@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("options", ["plain", "momentum-damp-wd", "nesterov-max", "first-step", "mixed-first-step"])
def test_sgd(run, options, dtype, master, rng):
    sd = "float32" if master else dtype
    params = _tensors(rng, dtype, misalign=True)
    masters = [p.astype(np.float32) for p in params] if master else None
    grads = _tensors(rng, dtype, misalign=True)
    buffers = _tensors(rng, sd)
    first = [options == "first-step" or (options == "mixed-first-step" and i % 2 == 0) for i in range(len(SIZES))]
    momentum = 0.0 if options == "plain" else 0.9
    damp, wd = (0.3, 0.1) if "damp" in options else (0.0, 0.0)
    hyper = dict(first_step=first, lr=0.05, momentum=momentum, dampening=damp, weight_decay=wd,
                 nesterov="nesterov" in options, maximize="max" in options)
    p64, b64 = _f64(masters if master else params), _f64(buffers)
    ref.sgd_step(p64, _f64(grads), b64 if momentum else None, None, None, None, **hyper)
    cupy_optim.sgd_step(params, grads, buffers if momentum else None, masters, None, None, run=run, **hyper)
    if momentum:
        _check(buffers, b64, sd)
    _check(params, p64, dtype)


@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("options", ["plain", "centered-wd", "momentum-max", "centered-momentum"])
def test_rmsprop(run, options, dtype, master, rng):
    sd = "float32" if master else dtype
    params = _tensors(rng, dtype)
    masters = [p.astype(np.float32) for p in params] if master else None
    grads = _tensors(rng, dtype, scale=0.1)
    v, a, b = _tensors(rng, sd, positive=True, scale=2.0), _tensors(rng, sd, scale=0.1), _tensors(rng, sd)
    for x in v:  # keep v - g_avg^2 well away from 0, where fp32 cancellation would dominate
        x += np.asarray(0.5, dtype=x.dtype)
    centered = "centered" in options
    momentum = 0.5 if "momentum" in options else 0.0
    hyper = dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1 if "wd" in options else 0.0, momentum=momentum,
                 centered=centered, maximize="max" in options)
    p64, v64, a64, b64 = _f64(masters if master else params), _f64(v), _f64(a), _f64(b)
    ref.rmsprop_step(p64, _f64(grads), v64, a64 if centered else None, b64 if momentum else None, None, None, None,
                     **hyper)
    cupy_optim.rmsprop_step(params, grads, v, a if centered else None, b if momentum else None, masters, None, None,
                            run=run, **hyper)
    _check(v, v64, sd)
    if centered:
        _check(a, a64, sd)
    if momentum:
        _check(b, b64, sd)
    _check(params, p64, dtype)


def test_found_inf_skips_every_step_on_the_device(run, rng):
    params, grads = _tensors(rng, "float16"), _tensors(rng, "float16")
    state = [_tensors(rng, "float16", positive=True) for _ in range(3)]
    before = [p.copy() for p in params] + [s.copy() for column in state for s in column]
    found_inf = np.array([1.0], np.float32)
    cupy_optim.adam_step(params, grads, *state, None, None, found_inf, 2.0, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                         weight_decay=0.0, amsgrad=True, maximize=False, decoupled_weight_decay=False, run=run)
    cupy_optim.sgd_step(params, grads, state[0], None, None, found_inf, first_step=[False] * len(SIZES), lr=0.1,
                        momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False, run=run)
    after = params + [s for column in state for s in column]
    assert all(np.array_equal(a.view(np.uint16), b.view(np.uint16)) for a, b in zip(before, after))


def test_one_launch_per_dtype_group_with_empty_tensors(run, rng):
    sizes = (5, 0, 300, 2)
    params = [_tensors(rng, d, sizes=(n,))[0] for d, n in zip(("float32", "bfloat16", "float16", "float32"), sizes)]
    grads = [_tensors(rng, str(p.dtype), sizes=(p.size,))[0] for p in params]
    buffers = [np.zeros_like(p) for p in params]
    launches = []
    spy = run._replace(launch=lambda spec: (launches.append(spec.kernel), run.launch(spec)))
    p64 = _f64(params)
    hyper = dict(first_step=[True] * 4, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False)
    ref.sgd_step(p64, _f64(grads), _f64(buffers), None, None, None, **hyper)
    cupy_optim.sgd_step(params, grads, buffers, None, None, None, run=spy, **hyper)
    assert sorted(launches) == ["sgd_multi_tensor<float, float, false>", "sgd_multi_tensor<gk::half, gk::half, false>"]
    for p, w in zip(params, p64):
        assert_close(p, w, str(p.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_clip_grad_norm(run, norm_type, dtype, rng):
    grads = _tensors(rng, dtype, misalign=True)
    g64 = _f64(grads)
    want = ref.clip_grad_norm_(g64, max_norm=1.0, norm_type=norm_type)
    total = cupy_optim.clip_grad_norm_(grads, max_norm=1.0, norm_type=norm_type, error_if_nonfinite=True, run=run)
    assert total.shape == (1,) and total.dtype == np.float32
    assert_close(total[0], want, dtype, kind="reduction")
    _check(grads, g64, dtype)


def test_clip_grad_norm_over_mixed_dtypes(run, rng):
    grads = _tensors(rng, "float32", sizes=(3, 500)) + _tensors(rng, "bfloat16", sizes=(700,))
    g64 = _f64(grads)
    want = ref.clip_grad_norm_(g64, max_norm=0.5, norm_type=2.0)
    total = cupy_optim.clip_grad_norm_(grads, max_norm=0.5, norm_type=2.0, error_if_nonfinite=False, run=run)
    assert_close(total[0], want, "float32", kind="reduction")
    for g, w in zip(grads, g64):
        assert_close(g, w, str(g.dtype))


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_over_more_blocks_than_the_total_has_threads(run, norm_type, rng):
    # 301 + 231 blocks: 534 slots (odd groups padded to even), 267 pairs for norm_total's 256 threads
    grads = _tensors(rng, "float32", sizes=(300 * 1024 + 5,)) + _tensors(rng, "bfloat16", sizes=(230 * 2048 + 3,))
    g64 = _f64(grads)
    want = ref.clip_grad_norm_(g64, max_norm=10.0, norm_type=norm_type)
    total = cupy_optim.clip_grad_norm_(grads, max_norm=10.0, norm_type=norm_type, error_if_nonfinite=False, run=run)
    assert_close(total[0], want, "float32", kind="reduction")
    for g, w in zip(grads, g64):
        assert_close(g, w, str(g.dtype))


def test_clipping_workspace():
    assert cupy_optim.norm_slots([3, 4, 1]) == ([0, 4, 8], 10)  # every group starts 16-byte aligned
    assert cupy_optim.norm_slots([]) == ([], 0)


def test_clip_grad_norm_nan_and_clip_value(run, rng):
    grads = _tensors(rng, "float32")
    grads[3][10] = math.nan
    total = cupy_optim.clip_grad_norm_(grads, max_norm=1.0, norm_type=2.0, error_if_nonfinite=False, run=run)
    assert math.isnan(total[0]) and all(np.isnan(g).all() for g in grads)
    with pytest.raises(RuntimeError, match="non-finite"):
        cupy_optim.clip_grad_norm_(grads, max_norm=1.0, norm_type=2.0, error_if_nonfinite=True, run=run)
    grads = _tensors(rng, "bfloat16", scale=3.0)
    grads[0][0] = math.nan
    g64 = _f64(grads)
    ref.clip_grad_value_(g64, clip_value=1.5)
    cupy_optim.clip_grad_value_(grads, clip_value=1.5, run=run)
    _check(grads, g64, "bfloat16")


def test_block_table():
    table, block_map, blocks = cupy_optim.block_table([[10, 20, 30], [11, 21, 31]], [1, 0, 2049], 1024)
    assert blocks == 4
    np.testing.assert_array_equal(table, [[10, 11, 1], [20, 21, 0], [30, 31, 2049]])
    np.testing.assert_array_equal(block_map, [[0, 0], [2, 0], [2, 1], [2, 2]])
    assert table.dtype == np.uint64 and block_map.dtype == np.int32
    assert cupy_optim.tile_size(2) == 2048 and cupy_optim.tile_size(4) == 1024


@pytest.mark.parametrize("dtype,master", STORAGE)
@pytest.mark.parametrize("name", ["adamw", "adam-host-step", "sgd", "rmsprop-centered"])
def test_device_lr(run, name, dtype, master, rng):
    """The learning rate read through the kernel's lr pointer (torch's tensor lr), AdamW's decay
    and the step size formed from it in adam_chunk; a float step is given to the kernel as a
    counter."""
    sd = "float32" if master else dtype
    params = _tensors(rng, dtype)
    masters = [p.astype(np.float32) for p in params] if master else None
    grads = _tensors(rng, dtype, scale=0.1)
    v = _tensors(rng, sd, positive=True)
    for x in v:  # keep v - g_avg^2 well away from 0 (centered RMSprop)
        x += np.asarray(0.5, dtype=x.dtype)
    lr = np.array([0.03], np.float32)
    p64, g64, v64 = _f64(masters if master else params), _f64(grads), _f64(v)
    if name.startswith("adam"):
        m = _tensors(rng, sd)
        m64 = _f64(m)
        hyper = dict(beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, amsgrad=False, maximize=False,
                     decoupled_weight_decay=name == "adamw")
        step = 3.0 if "host-step" in name else [np.array([i + 2.0], np.float32) for i in range(len(SIZES))]
        ref.adam_step(p64, g64, m64, v64, None, None, None, None, step, lr=0.03, **hyper)
        cupy_optim.adam_step(params, grads, m, v, None, masters, None, None, step, lr, lr=math.nan, run=run, **hyper)
        _check(m, m64, sd)
    elif name == "sgd":
        b = _tensors(rng, sd)
        b64 = _f64(b)
        hyper = dict(first_step=[False] * len(SIZES), momentum=0.9, dampening=0.0, weight_decay=0.1, nesterov=True,
                     maximize=False)
        ref.sgd_step(p64, g64, b64, None, None, None, lr=0.03, **hyper)
        cupy_optim.sgd_step(params, grads, b, masters, None, None, lr, lr=math.nan, run=run, **hyper)
        _check(b, b64, sd)
    else:
        a = _tensors(rng, sd, scale=0.1)
        a64 = _f64(a)
        hyper = dict(alpha=0.9, eps=1e-6, weight_decay=0.0, momentum=0.0, centered=True, maximize=True)
        ref.rmsprop_step(p64, g64, v64, a64, None, None, None, None, lr=0.03, **hyper)
        cupy_optim.rmsprop_step(params, grads, v, a, None, masters, None, None, lr, lr=math.nan, run=run, **hyper)
        _check(a, a64, sd)
    _check(v, v64, sd)
    _check(masters if master else params, p64, "float32" if master else dtype)


def test_device_lr_scalars_leave_the_hosts_lr_out():
    """With device_lr the host's lr is packed as 0 (the kernel reads the tensor), so a NaN
    placeholder never reaches a kernel argument."""
    adam = cupy_optim.adam_scalars(lr=math.nan, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, amsgrad=False,
                                   maximize=False, decoupled_weight_decay=True, step=1.0, device_step=True,
                                   device_lr=True)
    sgd = cupy_optim.sgd_scalars(lr=math.nan, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                                 maximize=False, first_step=False, device_lr=True)
    rms = cupy_optim.rmsprop_scalars(lr=math.nan, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0,
                                     centered=False, maximize=False, device_lr=True)
    for scalars in (adam, sgd, rms):
        assert all(math.isfinite(float(x)) for x in scalars)
        assert int(scalars[-1]) == 1  # device_lr, the last argument
    assert float(adam[13]) == np.float32(0.1)  # decoupled_weight_decay, for the kernel's 1 - lr*wd
