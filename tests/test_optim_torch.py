"""The drop-in optimizers against torch.optim: 50-step trajectories with identical gradients for
every option combination, on parameters of odd sizes and mixed shapes in one group, through the
NumPy reference (CPU tensors) and the Triton kernels (interpreter here, GPU where there is one);
state_dict round trips both ways mid-training; GradScaler; clip_grad_norm_/clip_grad_value_."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import gpukernels as gk
import gpukernels.torch.optim as gko
from _helpers import assert_close
from conftest import DEVICE, HAS_CUDA
from gpukernels.torch.nn import utils as gku
from gpukernels.torch import _optim_ops

SHAPES = [(1,), (7,), (1000,), (4097,), (3, 5, 7), (13, 17)]
BACKENDS = ("numpy", "triton")
# 50 steps wherever the kernels run at speed; in Triton's interpreter a step of these six tensors
# costs about half a second, so there every combination runs 3 steps (first-step paths, bias
# corrections and carried state included) and the kernels' math is pinned per step, every dtype
# and option, in test_optim_triton.py.
INTERPRETED = not HAS_CUDA
STEPS = {"numpy": 50, "triton": 3 if INTERPRETED else 50}


def _adam_configs():
    for wd, amsgrad, maximize, decoupled in itertools.product((0.0, 0.1), (False, True), (False, True), (False, True)):
        name = f"adam{'w' if decoupled else ''}-wd{wd}{'-amsgrad' if amsgrad else ''}{'-max' if maximize else ''}"
        cls = (torch.optim.AdamW, gko.AdamW) if decoupled else (torch.optim.Adam, gko.Adam)
        yield name, cls, dict(lr=0.01, weight_decay=wd, amsgrad=amsgrad, maximize=maximize)


def _sgd_configs():
    momenta = [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.5, False), (0.9, 0.0, True)]
    for (mu, damp, nesterov), wd, maximize in itertools.product(momenta, (0.0, 0.1), (False, True)):
        name = f"sgd-mu{mu}-damp{damp}{'-nesterov' if nesterov else ''}-wd{wd}{'-max' if maximize else ''}"
        yield name, (torch.optim.SGD, gko.SGD), dict(lr=0.05, momentum=mu, dampening=damp, nesterov=nesterov,
                                                        weight_decay=wd, maximize=maximize)


def _rmsprop_configs():
    for centered, mu, wd, maximize in itertools.product((False, True), (0.0, 0.9), (0.0, 0.1), (False, True)):
        name = f"rmsprop{'-centered' if centered else ''}-mu{mu}-wd{wd}{'-max' if maximize else ''}"
        yield name, (torch.optim.RMSprop, gko.RMSprop), dict(lr=0.01, centered=centered, momentum=mu,
                                                              weight_decay=wd, maximize=maximize)


CONFIGS = [pytest.param(cls, kw, id=name) for gen in (_adam_configs, _sgd_configs, _rmsprop_configs)
           for name, cls, kw in gen()]


def _params(rng, dtype=torch.float32, shapes=SHAPES):
    return [torch.from_numpy(rng.standard_normal(s)).to(DEVICE, dtype) for s in shapes]


def _grads(rng, shapes=SHAPES, dtype=torch.float32):
    return [torch.from_numpy(rng.standard_normal(s)).to(DEVICE, dtype) for s in shapes]


def _pair(classes, kw, values, **ours_kw):
    theirs_params = [torch.nn.Parameter(v.clone()) for v in values]
    ours_params = [torch.nn.Parameter(v.clone()) for v in values]
    return (classes[0](theirs_params, **kw), theirs_params), (classes[1](ours_params, **kw, **ours_kw), ours_params)


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone().to(p.dtype)


def _assert_states_match(theirs, ours, ours_params, dtype="float32"):
    their_state = theirs.state_dict()["state"]
    our_state = ours.state_dict()["state"]
    assert their_state.keys() == our_state.keys()
    for index in their_state:
        assert set(their_state[index]) <= set(our_state[index]), (their_state[index].keys(), our_state[index].keys())
        for key, value in their_state[index].items():
            if key == "step":
                assert float(value) == float(our_state[index][key])
            elif value is not None:
                assert_close(our_state[index][key], value.double().cpu().numpy(), dtype, kind="reduction")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("classes,kw", CONFIGS)
def test_trajectory_matches_torch_optim(classes, kw, backend, rng):
    if backend == "numpy" and HAS_CUDA:
        pytest.skip("the reference runs on CPU tensors")
    (theirs, their_params), (ours, our_params) = _pair(classes, kw, _params(rng))
    for _ in range(STEPS[backend]):
        grads = _grads(rng)
        _set_grads(their_params, grads)
        _set_grads(our_params, grads)
        theirs.step()
        with gk.use_backend(backend):
            ours.step()
    for mine, ref in zip(our_params, their_params):
        assert_close(mine, ref.detach().double().cpu().numpy(), "float32", kind="reduction")
    _assert_states_match(theirs, ours, our_params)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["adam", "adamw-amsgrad", "sgd-nesterov", "rmsprop-centered-momentum"])
def test_half_params_with_fp32_master_weights_follow_the_fp32_trajectory(name, dtype, rng):
    classes, kw = {
        "adam": ((torch.optim.Adam, gko.Adam), dict(lr=0.01, weight_decay=0.1)),
        "adamw-amsgrad": ((torch.optim.AdamW, gko.AdamW), dict(lr=0.01, amsgrad=True)),
        "sgd-nesterov": ((torch.optim.SGD, gko.SGD), dict(lr=0.05, momentum=0.9, nesterov=True)),
        "rmsprop-centered-momentum": ((torch.optim.RMSprop, gko.RMSprop), dict(lr=0.01, centered=True, momentum=0.9)),
    }[name]
    half = getattr(torch, dtype)
    start = [p.to(half) for p in _params(rng)]
    theirs_params = [torch.nn.Parameter(p.float()) for p in start]  # fp32 run from the same rounded start
    ours_params = [torch.nn.Parameter(p.clone()) for p in start]
    theirs = classes[0](theirs_params, **kw)
    ours = classes[1](ours_params, **kw, master_weights=True)
    for _ in range(STEPS["triton"] + 1):
        grads = _grads(rng, dtype=half)  # the half-precision gradients a half model produces
        _set_grads(theirs_params, [g.float() for g in grads])
        _set_grads(ours_params, grads)
        theirs.step()
        with gk.use_backend("triton"):
            ours.step()
    for p, ref in zip(ours_params, theirs_params):
        master = ours.state[p]["master_param"]
        assert master.dtype == torch.float32
        assert_close(master, ref.detach().double().cpu().numpy(), "float32", kind="reduction")
        if HAS_CUDA or dtype == "float16":
            assert torch.equal(p.detach(), master.to(half))  # the parameter is the master's rounding
        else:  # Triton's interpreter rounds fp32 -> bf16 toward zero (the GPU rounds to nearest)
            assert_close(p, master.double().cpu().numpy(), "bfloat16")


def _train(opt, params, rng, steps, backend):
    for _ in range(steps):
        _set_grads(params, _grads(rng))
        if backend is None:
            opt.step()
        else:
            with gk.use_backend(backend):
                opt.step()


@pytest.mark.parametrize("direction", ["torch-to-ours", "ours-to-torch"])
@pytest.mark.parametrize("name", ["adam-amsgrad", "adamw", "sgd-momentum", "rmsprop-centered-momentum"])
def test_state_dict_round_trip_mid_training(name, direction, rng):
    classes, kw = {
        "adam-amsgrad": ((torch.optim.Adam, gko.Adam), dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
        "adamw": ((torch.optim.AdamW, gko.AdamW), dict(lr=0.01)),
        "sgd-momentum": ((torch.optim.SGD, gko.SGD), dict(lr=0.05, momentum=0.9, dampening=0.1)),
        "rmsprop-centered-momentum": ((torch.optim.RMSprop, gko.RMSprop), dict(lr=0.01, centered=True, momentum=0.9)),
    }[name]
    start = _params(rng)
    first, second = (classes[0], classes[1]) if direction == "torch-to-ours" else (classes[1], classes[0])
    # Reference run: torch.optim for 20 steps straight.
    ref_params = [torch.nn.Parameter(p.clone()) for p in start]
    ref = classes[0](ref_params, **kw)
    grad_rng_state = rng.bit_generator.state
    half_run = 10 if HAS_CUDA else 3
    _train(ref, ref_params, rng, 2 * half_run, None)
    # Split run: 10 steps in one optimizer, checkpoint, 10 steps in the other.
    rng.bit_generator.state = grad_rng_state
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = first(params, **kw)
    _train(opt, params, rng, half_run, "triton" if first is classes[1] else None)
    checkpoint = opt.state_dict()
    resumed = second(params, **kw)
    resumed.load_state_dict(checkpoint)
    _train(resumed, params, rng, half_run, "triton" if second is classes[1] else None)
    for mine, want in zip(params, ref_params):
        assert_close(mine, want.detach().double().cpu().numpy(), "float32", kind="reduction")
    assert resumed.state_dict()["param_groups"][0]["lr"] == kw["lr"]


def test_param_groups_zero_grad_and_skipped_params(rng):
    values = _params(rng)
    ours_params = [torch.nn.Parameter(v.clone()) for v in values]
    theirs_params = [torch.nn.Parameter(v.clone()) for v in values]
    groups = lambda ps: [{"params": ps[:3], "lr": 0.1}, {"params": ps[3:], "weight_decay": 0.2}]
    ours, theirs = gko.Adam(groups(ours_params), lr=0.01), torch.optim.Adam(groups(theirs_params), lr=0.01)
    for step in range(5):
        grads = _grads(rng)
        for params in (ours_params, theirs_params):
            _set_grads(params, grads)
            params[1].grad = None if step % 2 else params[1].grad  # a parameter without a gradient is skipped
        theirs.step()
        with gk.use_backend("triton"):
            ours.step()
    for mine, want in zip(ours_params, theirs_params):
        assert_close(mine, want.detach().double().cpu().numpy(), "float32", kind="reduction")
    assert float(ours.state[ours_params[1]]["step"]) == float(theirs.state[theirs_params[1]]["step"]) == 3
    # each group's counters are views of one buffer: advancing them is one launch, not one per tensor
    assert _optim_ops._as_one_buffer([ours.state[p]["step"] for p in ours_params[3:]]) is not None
    ours.zero_grad()
    assert all(p.grad is None for p in ours_params)


def test_constructor_defaults_and_checks_mirror_torch():
    p = [torch.nn.Parameter(torch.randn(3))]
    for ours, theirs in ((gko.Adam, torch.optim.Adam), (gko.AdamW, torch.optim.AdamW), (gko.SGD, torch.optim.SGD),
                         (gko.RMSprop, torch.optim.RMSprop)):
        our_defaults, their_defaults = ours(p).defaults, theirs(p).defaults
        for key, value in their_defaults.items():
            assert our_defaults[key] == value, (ours.__name__, key)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        gko.Adam(p, lr=-1.0)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        gko.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Nesterov momentum requires"):
        gko.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Invalid alpha"):
        gko.RMSprop(p, alpha=-0.5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_grad_scaler_unscales_and_skips_like_torch(name, backend, rng):
    classes, kw = {
        "adam": ((torch.optim.Adam, gko.Adam), dict(lr=0.01)),
        "sgd": ((torch.optim.SGD, gko.SGD), dict(lr=0.05, momentum=0.9)),
        "rmsprop": ((torch.optim.RMSprop, gko.RMSprop), dict(lr=0.01, centered=True)),
    }[name]
    (theirs, their_params), (ours, our_params) = _pair(classes, kw, _params(rng, shapes=SHAPES[:4]))
    scalers = [torch.amp.GradScaler(DEVICE, init_scale=1024.0, growth_interval=2) for _ in range(2)]
    for step in range(8):
        grads = _grads(rng, shapes=SHAPES[:4])
        if step in (0, 3):  # the scaler must skip these steps and back off
            grads[2][5] = math.inf if step == 0 else math.nan
        for opt, params, scaler in ((theirs, their_params, scalers[0]), (ours, our_params, scalers[1])):
            loss = sum((p * g).sum() for p, g in zip(params, grads))
            scaler.scale(loss).backward()
            with gk.use_backend(backend):
                scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    assert scalers[0].get_scale() == scalers[1].get_scale()
    for mine, want in zip(our_params, their_params):
        assert torch.isfinite(mine).all()
        assert_close(mine, want.detach().double().cpu().numpy(), "float32", kind="reduction")
    _assert_states_match(theirs, ours, our_params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, backend, rng):
    grads = _grads(rng)
    ours = [torch.nn.Parameter(torch.zeros(g.shape, device=DEVICE)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros(g.shape, device=DEVICE)) for g in grads]
    _set_grads(ours, grads)
    _set_grads(theirs, grads)
    want = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    with gk.use_backend(backend):
        got = gku.clip_grad_norm_(ours, max_norm, norm_type)
    assert got.dtype == want.dtype and got.shape == want.shape == ()
    assert_close(got, want.double().cpu().numpy(), "float32", kind="reduction")
    for mine, ref in zip(ours, theirs):
        assert_close(mine.grad, ref.grad.double().cpu().numpy(), "float32", kind="reduction")


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_grad_norm_nonfinite(backend, rng):
    grads = _grads(rng, shapes=SHAPES[:3])
    grads[1][3] = math.nan
    params = [torch.nn.Parameter(torch.zeros(g.shape, device=DEVICE)) for g in grads]
    _set_grads(params, grads)
    with gk.use_backend(backend), pytest.raises(RuntimeError, match="non-finite"):
        gku.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert all(torch.equal(p.grad.nan_to_num(), g.nan_to_num()) for p, g in zip(params, grads))  # nothing scaled
    with gk.use_backend(backend):
        total = gku.clip_grad_norm_(params, 1.0)  # as torch: NaN norm, NaN gradients
    assert torch.isnan(total) and all(torch.isnan(p.grad).all() for p in params)
    assert gku.clip_grad_norm_([torch.nn.Parameter(torch.zeros(2))], 1.0).item() == 0.0  # no gradients


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_grad_value_matches_torch(backend, rng):
    grads = _grads(rng)
    grads[0][0] = math.nan
    ours = [torch.nn.Parameter(torch.zeros(g.shape, device=DEVICE)) for g in grads]
    theirs = [torch.nn.Parameter(torch.zeros(g.shape, device=DEVICE)) for g in grads]
    _set_grads(ours, grads)
    _set_grads(theirs, grads)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    with gk.use_backend(backend):
        gku.clip_grad_value_(ours, 0.7)
    for mine, ref in zip(ours, theirs):
        assert torch.equal(mine.grad.isnan(), ref.grad.isnan())
        assert torch.equal(mine.grad.nan_to_num(), ref.grad.nan_to_num())


# ---------------------------------------------------------------------------------------------
# Host work per step. On a GPU the update of 100M parameters takes ~0.7 ms; a step whose host
# side costs more leaves the GPU waiting (the first H200 run measured 7.2 ms, nearly all of it
# Python over 200 tensors). These tests count, for steady-state steps over few and many tensors,
# what the host does: kernel launches, torch ops, and Python function calls made in the
# optimizer's own modules. Each must not grow with the number of tensors. Counts, not timings.

OPTIMIZER_MODULES = ("gpukernels/ops/optim.py", "gpukernels/torch/optim.py", "gpukernels/triton/optim.py",
                     "gpukernels/torch/nn/utils.py")
# The dispatch layer (gpukernels/_dispatch.py, call_inplace) detaches each tensor of each list it
# is handed: a view op that launches nothing, but the one per-tensor torch op left in a step.
PER_TENSOR_OPS_OUTSIDE_THE_OPTIMIZER = ()


class _KernelRecorder:
    """Stands in for a Triton kernel: records each launch, runs nothing (the counts are about
    the host; the kernels' results are pinned by every other test)."""

    def __init__(self, name, launches):
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(self.name)


def _stub_kernels(monkeypatch):
    from gpukernels.triton import optim as triton_optim

    launches = []
    for name in ("adam_kernel", "sgd_kernel", "rmsprop_kernel", "grad_norm_kernel", "clip_apply_kernel"):
        monkeypatch.setattr(triton_optim, name, _KernelRecorder(name, launches))
    return launches


def _python_calls_in_optimizer_modules(run) -> int:
    import sys

    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "call" and frame.f_code.co_filename.replace("\\", "/").endswith(OPTIMIZER_MODULES):
            calls += 1

    sys.setprofile(count)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


def _host_work(make_step, tensors, launches):
    """(launches, torch ops by name, Python calls in our optimizer modules) of one step over
    ``tensors`` tensors, after two steps have made the state and the launch tables."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    params = [torch.nn.Parameter(torch.randn(3 + i % 5, device=DEVICE)) for i in range(tensors)]
    for p in params:
        p.grad = torch.randn_like(p)
    step = make_step(params)
    with gk.use_backend("triton"):
        step()
        step()
        launches.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        launched = list(launches)
        ops = Counter(e.name for e in prof.events() if e.name.startswith("aten::")
                      and e.name not in PER_TENSOR_OPS_OUTSIDE_THE_OPTIMIZER)
        calls = _python_calls_in_optimizer_modules(step)
    return launched, ops, calls


def _with_amp(opt):
    """What torch.amp.GradScaler hands an optimizer that unscales inside its kernel."""
    opt.grad_scale = torch.full((1,), 64.0, device=DEVICE)
    opt.found_inf = torch.zeros(1, device=DEVICE)
    return opt


HOST_WORK_CASES = [
    pytest.param(lambda ps: gko.Adam(ps, lr=0.01).step, ["adam_kernel"], id="adam"),
    pytest.param(lambda ps: gko.AdamW(ps, lr=0.01, amsgrad=True).step, ["adam_kernel"], id="adamw-amsgrad"),
    pytest.param(lambda ps: _with_amp(gko.Adam(ps, lr=0.01)).step, ["adam_kernel"], id="adam-grad-scaler"),
    pytest.param(lambda ps: gko.SGD(ps, lr=0.1, momentum=0.9).step, ["sgd_kernel"], id="sgd-momentum"),
    pytest.param(lambda ps: gko.SGD(ps, lr=0.1).step, ["sgd_kernel"], id="sgd"),
    pytest.param(lambda ps: gko.RMSprop(ps, lr=0.01, centered=True, momentum=0.9).step, ["rmsprop_kernel"],
                 id="rmsprop-centered-momentum"),
    pytest.param(lambda ps: lambda: gku.clip_grad_norm_(ps, 1.0), ["grad_norm_kernel", "clip_apply_kernel"],
                 id="clip_grad_norm_"),
    pytest.param(lambda ps: lambda: gku.clip_grad_value_(ps, 1.0), ["clip_apply_kernel"], id="clip_grad_value_"),
]


@pytest.mark.parametrize("make_step,kernels", HOST_WORK_CASES)
def test_host_work_per_step_does_not_grow_with_the_number_of_tensors(make_step, kernels, monkeypatch):
    launches = _stub_kernels(monkeypatch)
    few_launches, few_ops, few_calls = _host_work(make_step, 4, launches)
    many_launches, many_ops, many_calls = _host_work(make_step, 96, launches)
    assert few_launches == many_launches == kernels  # one launch per dtype group, whatever the count
    assert many_ops == few_ops  # no torch op per tensor: no reshapes, fills, copies or syncs per tensor
    assert many_calls == few_calls, (few_calls, many_calls)  # no Python function call per tensor
    syncs = {"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero"}
    assert not syncs & set(many_ops), many_ops  # no host sync in a step


def test_plan_survives_gradients_that_move(monkeypatch):
    """zero_grad(set_to_none=True) gives every step new gradient tensors, possibly elsewhere in
    memory: the launch table follows their addresses, the block map (sizes only) is reused."""
    from gpukernels.triton import optim as triton_optim

    launches = _stub_kernels(monkeypatch)
    params = [torch.nn.Parameter(torch.randn(n, device=DEVICE)) for n in (5, 3000, 7)]
    opt = gko.Adam(params, lr=0.01)
    tables = []
    recorded = triton_optim.plan
    monkeypatch.setattr(triton_optim, "plan", lambda *a, **k: tables.append(recorded(*a, **k)) or tables[-1])
    keep = []  # keeps old gradients alive, so the new ones cannot reuse their memory
    with gk.use_backend("triton"):
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
                keep.append(p.grad)
            opt.step()
    assert launches == ["adam_kernel"] * 3
    assert len({t.table.data_ptr() for t in tables}) == 3  # a table per set of addresses
    assert len({t.block_map.data_ptr() for t in tables}) == 1  # one block map for these sizes
    grad_column = [int(t.table[2, 1]) for t in tables]
    assert all(g == (keep[3 * i + 2].data_ptr() - keep[3 * i].data_ptr()) // 4 for i, g in enumerate(grad_column))


def test_step_counters_advance_in_one_launch_per_step(monkeypatch, rng):
    """Counters are views of one buffer (one add, one subtract with GradScaler); when a parameter
    without a gradient breaks the run they advance by one multi-tensor op, still O(1)."""
    params = [torch.nn.Parameter(torch.randn(4, device=DEVICE)) for _ in range(6)]
    opt = gko.Adam(params, lr=0.01)
    for p in params:
        p.grad = torch.randn_like(p)
    with gk.use_backend("triton"):
        opt.step()
        steps = [opt.state[p]["step"] for p in params]
        assert _optim_ops._as_one_buffer(steps) is not None
        assert _optim_ops._as_one_buffer(steps[::2]) is None  # not consecutive
        assert _optim_ops._as_one_buffer(steps[:1] + steps[2:]) is None
        params[2].grad = None
        opt.step()
        _with_amp(opt).found_inf.fill_(1.0)  # a step GradScaler skips does not count
        opt.step()
    assert [float(opt.state[p]["step"]) for p in params] == [2.0, 2.0, 1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("cls", [gko.Adam, gko.RMSprop])
def test_a_rejected_step_does_not_count(cls, rng):
    """The counters advance before the kernels read them; a step rejected after that (here the
    triton backend refusing float64 parameters) takes its count back."""
    params = [torch.nn.Parameter(torch.from_numpy(rng.standard_normal(n)).to(DEVICE)) for n in (3, 5)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = cls(params, lr=0.01)
    if not HAS_CUDA:  # the reference takes float64 on the CPU: one step that counts
        with gk.use_backend("numpy"):
            opt.step()
    counted = 0.0 if HAS_CUDA else 1.0
    with gk.use_backend("triton"), pytest.raises(TypeError, match=r"params\[0\] has dtype float64"):
        opt.step()
    assert [float(opt.state[p]["step"]) for p in params] == [counted, counted]
