"""On a CUDA GPU (skipped elsewhere): the Triton and CuPy recurrent kernels on the device against
the float64 reference through the public API, every dtype, odd sizes and both tile configs; the
drop-in modules against torch.nn on cuDNN (switched on, fp32 with TF32 off) with copied weights;
the benchmark's cuDNN baselines really run cuDNN. All of these with torch's RNN TF32 switch off
(tests/conftest.py), so fp32 is held to fp32 tolerance; the TF32 tests switch it on: fp32 layers
(per-step and persistent kernels) and modules against the float64 reference at TF32's tolerance,
every gradient, and with the switch off again the strict fp32 numbers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from gpukernels.benchmarks import registry
from gpukernels.benchmarks.rnn import cudnn_rnn_math, rnn_tf32
from gpukernels.torch import nn as gnn
from test_rnn_tf32 import TF32_TOLERANCE, recorded, weight_scale  # noqa: F401 (recorded: a fixture)

pytestmark = pytest.mark.gpu

GATES = {"rnn_tanh": 1, "lstm": 4, "gru": 3, "gru_original": 3}


def _library(t, backend):
    if backend == "cupy":
        import cupy

        return cupy.from_dlpack(t)
    return t


def _run(kind, arrays, gy, gh, lengths, heads=1):
    x, h, c, w = arrays["x"], arrays["h"], arrays["c"], arrays["w"]
    options = {"reverse": True, "lengths": lengths, "heads": heads}
    if kind == "rnn_tanh":
        return gk.rnn_layer(x, h, *w, **options), gk.rnn_layer_backward(gy, gh, x, h, *w, **options)
    if kind == "lstm":
        return gk.lstm_layer(x, h, c, *w, **options), gk.lstm_layer_backward(gy, gh, None, x, h, c, *w, **options)
    options["linear_before_reset"] = kind == "gru"
    return gk.gru_layer(x, h, *w, **options), gk.gru_layer_backward(gy, gh, x, h, *w, **options)


@pytest.mark.parametrize("backend", ["triton", "cupy"])
@pytest.mark.parametrize("B,H", [(1, 1), (3, 7), (64, 100), (17, 257)], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(GATES))
def test_layers_on_the_device(backend, kind, dtype, B, H, rng):
    if backend == "cupy":
        pytest.importorskip("cupy")
        if dtype == "bfloat16":
            pytest.importorskip("ml_dtypes", reason="cupy represents bfloat16 through ml_dtypes")
    T, I, G = 6, 5, GATES[kind]
    arrays = {"x": random_tensor(rng, (T, B, I), dtype, "cuda", scale=1.0),
              "h": random_tensor(rng, (B, H), dtype, "cuda", scale=0.5),
              "c": random_tensor(rng, (B, H), dtype, "cuda", scale=0.5),
              "w": [random_tensor(rng, s, dtype, "cuda", scale=0.3)
                    for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))]}
    gy = random_tensor(rng, (T, B, H), dtype, "cuda", scale=1.0)
    gh = random_tensor(rng, (B, H), dtype, "cuda", scale=1.0)
    lengths = tuple(int(v) for v in rng.integers(1, T + 1, B))
    as_lib = lambda a: _library(a, backend)  # noqa: E731
    with gk.use_backend(backend):
        outputs, grads = _run(kind, {k: [as_lib(t) for t in v] if isinstance(v, list) else as_lib(v)
                                     for k, v in arrays.items()}, as_lib(gy), as_lib(gh), lengths)
    _assert_matches_reference(kind, arrays, gy, gh, lengths, outputs, grads, dtype)


def _assert_matches_reference(kind, arrays, gy, gh, lengths, outputs, grads, dtype, heads=1):
    """The device's outputs and gradients against the float64 reference run on the same inputs."""
    as64 = {k: [as_float64(t) for t in v] if isinstance(v, list) else as_float64(v) for k, v in arrays.items()}
    outputs64, grads64 = _run(kind, as64, as_float64(gy), as_float64(gh), lengths, heads)
    for got, want in zip(outputs, outputs64):
        assert_close(got, want, dtype, "reduction")
    for got, want in zip(grads, grads64):
        if want is not None:
            assert_close(got, want, dtype, "reduction")


def _skip_if_the_barrier_probe_failed():
    """In a gpu-proof run whose probe stage failed or hung (that stage already failed the proof):
    a worker stuck at the persistent kernels' barrier would hold the rest of the suite."""
    from gpukernels.tools.barrier_probe import VERDICT_VARIABLE

    if os.environ.get(VERDICT_VARIABLE) == "failed":
        pytest.skip("gpu-proof's barrier probe failed or hung on this device (see its probe stage)")


def _aten_ops(fn) -> set[str]:
    """The aten ops ``fn()`` runs (cuDNN's RNN shows up as aten::_cudnn_rnn)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
        torch.cuda.synchronize()
    return {event.name for event in profile.events()}


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_modules_against_cudnn(name):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(16, 32, num_layers=2, bidirectional=True, batch_first=True).cuda()
    ours = getattr(gnn, name)(16, 32, num_layers=2, bidirectional=True, batch_first=True).cuda()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(24, 9, 16, device="cuda")
    results = []

    def forward_backward(module):
        xl = x.clone().requires_grad_()
        out, _ = module(xl)
        out.square().sum().backward()
        results.append([out, xl.grad] + [p.grad for p in module.parameters()])

    with cudnn_rnn_math(tf32=False):  # cuDNN on, fp32 math as ours (TF32 would cost ~1e-3)
        assert "aten::_cudnn_rnn" in _aten_ops(lambda: forward_backward(theirs))
        forward_backward(ours)
    for got, want in zip(results[1], results[0]):
        assert_close(got, want.detach().double().cpu().numpy(), "float32", "reduction")


@pytest.mark.parametrize("provider", ["torch-cudnn", "torch-cudnn-tf32"])
@pytest.mark.parametrize("mode", ["fwd", "bwd"])
def test_the_benchmark_cudnn_baselines_run_cudnn(provider, mode):
    case = next(c for c in registry.all_cases() if c.op == "lstm_layer" and c.mode == mode
                and c.dtype == "float32" and c.size == "B=1,H=128,T=100")
    with torch.backends.cudnn.flags(enabled=False):  # even where the process turned cuDNN off
        timed = case.providers[provider](case.setup("cuda"))
        ops = _aten_ops(timed)
    cudnn = {"aten::_cudnn_rnn"} if mode == "fwd" else {"aten::_cudnn_rnn_backward", "CudnnRnnBackward0"}
    assert ops & cudnn, sorted(ops)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,B,H,T", [("lstm", 17, 100, 9), ("gru", 3, 127, 7), ("rnn_tanh", 33, 100, 5),
                                        ("rnn_tanh", 5, 500, 40), ("lstm", 5, 256, 40), ("gru", 2, 37, 12),
                                        # the wide row-wise slices, at most 108 x 2 programs (an A100 holds them)
                                        ("lstm", 3, 800, 12), ("gru", 5, 300, 10), ("rnn_tanh", 4, 700, 8)],
                         ids=lambda v: str(v))
def test_persistent_layers_run_many_programs_on_the_device(kind, B, H, T, dtype, rng, monkeypatch):
    """The persistent kernels' compiled path as "auto" chooses it: one program per slice (16
    units; 8 or 4 in the wide row-wise slices), all resident, meeting at the grid barrier every
    step, against the float64 reference."""
    from gpukernels.tools.barrier_probe import promised_grids, recorded_grids
    from gpukernels.triton import rnn_persistent as rp

    _skip_if_the_barrier_probe_failed()
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "auto")
    grids = []
    G = GATES[kind]
    arrays = {"x": random_tensor(rng, (T, B, 6), dtype, "cuda", scale=1.0),
              "h": random_tensor(rng, (B, H), dtype, "cuda", scale=0.5),
              "c": random_tensor(rng, (B, H), dtype, "cuda", scale=0.5),
              "w": [random_tensor(rng, s, dtype, "cuda", scale=0.3 / (1 + H / 64) ** 0.5)
                    for s in ((G * H, 6), (G * H, H), (G * H,), (G * H,))]}
    gy = random_tensor(rng, (T, B, H), dtype, "cuda", scale=1.0)
    gh = random_tensor(rng, (B, H), dtype, "cuda", scale=1.0)
    lengths = tuple(int(v) for v in rng.integers(1, T + 1, B))
    with gk.use_backend("triton"), recorded_grids(grids):
        outputs, grads = _run(kind, arrays, gy, gh, lengths)
    forward, backward = promised_grids(kind, H, dtype)  # one program per slice, (slices,)
    assert forward[1] == (-(-H // rp.slice_tile(kind, H, dtype=rp.TRITON_DTYPES[getattr(torch, dtype)]).block_h),)
    assert grids == [forward, forward, backward]  # the public backward recomputes the forward
    _assert_matches_reference(kind, arrays, gy, gh, lengths, outputs, grads, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,B,H,T,heads", [
    ("lstm", 5, 256, 12, 4),  # heads of 64: 16-unit tl.dot slices, 4 a head, 16 programs
    ("gru", 3, 96, 10, 2),  # heads of 48: 3 slices a head, the last one masked
    ("rnn_tanh", 4, 1024, 8, 8),  # heads of 128: 64 programs
    ("lstm", 3, 768, 6, 2),  # heads of 384: the wide row-wise 512 slices, 2 x 48 programs of 8 units
    ("gru", 2, 600, 8, 3),  # heads of 200: row-wise 256-wide slices, 3 x 25 programs
    ("lstm", 2, 2048, 4, 16),  # heads of 128: past H=1024 only with heads, 128 programs
    ("lstm", 3, 512, 6, 2),  # heads of 256: tl.dot forward, row-wise 512 backward (PER_HEAD_SPILLS)
], ids=lambda v: str(v))
def test_persistent_layers_with_heads_run_per_head_slices_on_the_device(kind, B, H, T, heads, dtype, rng,
                                                                      monkeypatch):
    """The compiled persistent path with the compact multi-head w_hh, as "auto" chooses it: one
    program per slice of one head (the tile of one head's width), each keeping its head's block
    and reading its head's state columns, all meeting at the grid barrier every step; no dense
    matrix formed; against the float64 reference."""
    from gpukernels import _rnn_driver as driver
    from gpukernels.triton import rnn_persistent as rp

    _skip_if_the_barrier_probe_failed()
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "auto")
    launches = []
    for name in ("rnn_persistent_forward_kernel", "rnn_persistent_backward_kernel"):
        kernel = getattr(rp, name)

        class Recording:  # records each launch's grid and constants, passes warmup and the rest through
            def __getitem__(self, grid, kernel=kernel, name=name):
                def launch(*args, **kwargs):
                    launches.append((name, tuple(grid), kwargs["PER_HEAD"]))
                    return kernel[grid](*args, **kwargs)
                return launch

            def __getattr__(self, attribute, kernel=kernel):
                return getattr(kernel, attribute)

        monkeypatch.setattr(rp, name, Recording())
    formed = []
    real_block_diagonal = driver.block_diagonal
    monkeypatch.setattr(driver, "block_diagonal", lambda *a: formed.append(a) or real_block_diagonal(*a))
    G = GATES[kind]
    arrays = {"x": random_tensor(rng, (T, B, 6), dtype, "cuda", scale=1.0),
              "h": random_tensor(rng, (B, H), dtype, "cuda", scale=0.5),
              "c": random_tensor(rng, (B, H), dtype, "cuda", scale=0.5),
              "w": [random_tensor(rng, s, dtype, "cuda", scale=0.3 / (1 + H / heads / 64) ** 0.5)
                    for s in ((G * H, 6), (G * H, H // heads), (G * H,), (G * H,))]}
    gy = random_tensor(rng, (T, B, H), dtype, "cuda", scale=1.0)
    gh = random_tensor(rng, (B, H), dtype, "cuda", scale=1.0)
    lengths = tuple(int(v) for v in rng.integers(1, T + 1, B))
    with gk.use_backend("triton"):
        outputs, grads = _run(kind, arrays, gy, gh, lengths, heads)
    grids = []  # one program per slice: (slices of a head, heads)
    for backward in (False, False, True):
        tile = rp.slice_tile(kind, H, dtype={"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype],
                             heads=heads, backward=backward)
        grids.append((rp.slice_count(H, heads, tile) // heads, heads))
    assert launches == [("rnn_persistent_forward_kernel", grids[0], True),
                        ("rnn_persistent_forward_kernel", grids[1], True),
                        ("rnn_persistent_backward_kernel", grids[2], True)]
    assert formed == []
    _assert_matches_reference(kind, arrays, gy, gh, lengths, outputs, grads, dtype, heads)


# ---------------------------------------------------------------------------------------------
# TF32 (torch's cuDNN RNN switch on, its default): fp32 recurrent products on the tensor cores


def _relative_error(got, want) -> float:
    want = np.asarray(want)
    return float(np.linalg.norm(as_float64(got) - want) / np.linalg.norm(want))


def _differ(first, second) -> bool:
    pairs = [(a, b) for group in zip(first, second) for a, b in zip(*group) if a is not None]
    return any(not torch.equal(a, b) for a, b in pairs)


# H=1 is left out: one unit's gradients are a handful of numbers whose norm-wise error a single
# TF32 rounding moves by ~1e-3 (1.3e-3 in the interpreter's LSTM at B=1, H=1). The persistent
# kernels take TF32 on their tl.dot slices up to rnn_persistent.TF32_MAX_WIDTH (64 for the LSTM
# forward), so their sizes stay under it.
TF32_SIZES = [("per-step", 3, 7), ("per-step", 64, 100), ("per-step", 17, 257), ("persistent", 3, 7),
              ("persistent", 40, 61)]


@pytest.mark.parametrize("path,B,H", [pytest.param(*size, id="-".join(map(str, size))) for size in TF32_SIZES])
@pytest.mark.parametrize("kind", list(GATES))
def test_tf32_layers_on_the_device(kind, B, H, path, rng, recorded, monkeypatch):  # noqa: F811
    """With the switch on, fp32 layers multiply h by w_hh in TF32 (operands rounded to nearest),
    within TF32_TOLERANCE of the float64 reference, outputs and every gradient, recurrent weights
    at PyTorch's initialisation scale; with it off, the strict fp32 numbers at fp32 tolerance,
    and the two runs differ (the TF32 products really ran)."""
    from gpukernels.triton import rnn_persistent as rp

    kernel = "rnn_step_kernel"
    if path == "persistent":
        if kind == "gru_original":
            pytest.skip("the original GRU has no persistent kernel")
        _skip_if_the_barrier_probe_failed()
        monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "auto")
        kernel = "rnn_persistent_forward_kernel"
    T, I, G = 6, 5, GATES[kind]
    arrays = {"x": random_tensor(rng, (T, B, I), "float32", "cuda", scale=1.0),
              "h": random_tensor(rng, (B, H), "float32", "cuda", scale=0.5),
              "c": random_tensor(rng, (B, H), "float32", "cuda", scale=0.5),
              "w": [random_tensor(rng, s, "float32", "cuda", scale=scale)
                    for s, scale in (((G * H, I), 0.3), ((G * H, H), weight_scale(H)), ((G * H,), 0.3),
                                     ((G * H,), 0.3))]}
    gy = random_tensor(rng, (T, B, H), "float32", "cuda", scale=1.0)
    gh = random_tensor(rng, (B, H), "float32", "cuda", scale=1.0)
    lengths = tuple(int(v) for v in rng.integers(1, T + 1, B))
    with gk.use_backend("triton"):
        with rnn_tf32(True):
            tf32 = _run(kind, arrays, gy, gh, lengths)
        with rnn_tf32(False):
            strict = _run(kind, arrays, gy, gh, lengths)
    assert recorded[kernel].tf32() == {True, False}, recorded[kernel].launches
    assert _differ(tf32, strict)
    as64 = {k: [as_float64(t) for t in v] if isinstance(v, list) else as_float64(v) for k, v in arrays.items()}
    outputs64, grads64 = _run(kind, as64, as_float64(gy), as_float64(gh), lengths)
    for index, (got, want) in enumerate(zip((*tf32[0], *tf32[1]), (*outputs64, *grads64))):
        if want is not None:
            assert _relative_error(got, want) <= TF32_TOLERANCE, (index, _relative_error(got, want))
    _assert_matches_reference(kind, arrays, gy, gh, lengths, *strict, "float32")


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_modules_with_tf32_against_float64(name):
    """The drop-in modules (2 layers, bidirectional, PyTorch's initialisation) on CUDA with the
    switch on against the same module in float64 on the CPU (the reference): output, input
    gradient and every parameter gradient within TF32_TOLERANCE."""
    torch.manual_seed(0)
    ours = getattr(gnn, name)(16, 32, num_layers=2, bidirectional=True, batch_first=True)
    reference = getattr(gnn, name)(16, 32, num_layers=2, bidirectional=True, batch_first=True).double()
    reference.load_state_dict(ours.state_dict())
    ours = ours.cuda()
    x = torch.randn(24, 9, 16)
    results = []
    for module, inputs, switch in ((ours, x.cuda(), True), (reference, x.double(), False)):
        xl = inputs.clone().requires_grad_()
        with rnn_tf32(switch):
            out, _ = module(xl)
            out.square().sum().backward()
        results.append([out, xl.grad] + [p.grad for p in module.parameters()])
    for index, (got, want) in enumerate(zip(*results)):
        error = _relative_error(got, want.detach().cpu().numpy())
        assert error <= TF32_TOLERANCE, (index, error)
