"""The dispatch layer: selection order, array round trips, errors and the one fallback warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import assert_close
from conftest import HAS_CUDA
from gpukernels import _dispatch


def test_numpy_in_numpy_out(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y = gk.sigmoid(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (4, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_torch_cpu_in_torch_out_same_dtype_and_device(dtype):
    x = torch.randn(3, 7, dtype=dtype)
    y = gk.gelu(x)
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.device == x.device and y.shape == x.shape
    torch.testing.assert_close(y.double(), torch.nn.functional.gelu(x.double()), atol=1e-2 if dtype == torch.bfloat16 else 2e-3, rtol=0)


def test_cpu_torch_and_numpy_choose_the_reference():
    assert _dispatch.select_backend(np.zeros(2)) == "numpy"
    assert _dispatch.select_backend(torch.zeros(2)) == "numpy"


class FakeCupyArray:
    """Stands in for a cupy array: the dispatch recognises cupy by the type's module."""

    __module__ = "cupy._core.core"
    dtype = np.dtype(np.float32)


def test_cupy_arrays_route_to_cupy(monkeypatch):
    monkeypatch.setitem(_dispatch._STATUS, "cupy", lambda: _dispatch.BackendStatus(True, "fake device"))
    assert _dispatch.array_library(FakeCupyArray()) == "cupy"
    assert _dispatch.select_backend(FakeCupyArray()) == "cupy"


class _CudaLooking(torch.Tensor):
    """A CPU tensor that reports a CUDA device, to test routing without a GPU."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_cuda_tensors_route_to_triton(monkeypatch):
    t = torch.Tensor._make_subclass(_CudaLooking, torch.zeros(2))
    assert _dispatch.natural_backend(t) == "triton"
    monkeypatch.setitem(_dispatch._STATUS, "triton", lambda: _dispatch.BackendStatus(True, "fake GPU"))
    assert _dispatch.select_backend(t) == "triton"


def test_automatic_choice_falls_back_once_with_a_warning(monkeypatch):
    monkeypatch.setitem(_dispatch._STATUS, "cupy", lambda: _dispatch.BackendStatus(False, "no device here"))
    monkeypatch.setattr(_dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match="'cupy' cannot run \\(no device here\\); falling back"):
        assert _dispatch.select_backend(FakeCupyArray()) == "numpy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second fallback must not warn again
        assert _dispatch.select_backend(FakeCupyArray()) == "numpy"


def test_forced_backend_that_cannot_run_raises_with_the_reason(monkeypatch):
    monkeypatch.setitem(_dispatch._STATUS, "cupy", lambda: _dispatch.BackendStatus(False, "no CUDA driver"))
    with gk.use_backend("cupy"), pytest.raises(gk.BackendUnavailableError, match="requested by use_backend\\(\\).*no CUDA driver"):
        gk.relu(np.ones(3, np.float32))


def test_environment_variable_is_honoured(monkeypatch):
    calls = []
    monkeypatch.setenv("GPUKERNELS_BACKEND", "cupy")
    monkeypatch.setitem(_dispatch._STATUS, "cupy", lambda: _dispatch.BackendStatus(False, "no CUDA driver"))
    with pytest.raises(gk.BackendUnavailableError, match="requested by GPUKERNELS_BACKEND"):
        gk.relu(np.ones(3, np.float32))
    monkeypatch.setenv("GPUKERNELS_BACKEND", "numpy")
    monkeypatch.setattr(_dispatch, "natural_backend", lambda x: calls.append(x) or "triton")
    assert isinstance(gk.relu(np.ones(3, np.float32)), np.ndarray)
    assert calls == []  # the environment decided; the inputs were not consulted


def test_context_beats_environment(monkeypatch):
    monkeypatch.setenv("GPUKERNELS_BACKEND", "cupy")
    with gk.use_backend("numpy"):
        assert _dispatch.select_backend(np.zeros(1)) == "numpy"


def test_unknown_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="name must be one of 'numpy', 'triton', 'cupy'"):
        with gk.use_backend("cuda"):
            pass
    monkeypatch.setenv("GPUKERNELS_BACKEND", "tpu")
    with pytest.raises(ValueError, match="GPUKERNELS_BACKEND must be one of"):
        gk.relu(np.ones(2, np.float32))


def test_backends_report_every_backend_with_a_reason():
    report = gk.backends()
    assert set(report) == {"numpy", "triton", "cupy"}
    assert report["numpy"].available
    for status in report.values():
        assert status.reason


def test_triton_on_numpy_input_returns_numpy(rng):
    x = rng.standard_normal(100).astype(np.float32)
    with gk.use_backend("triton"):
        y = gk.tanh(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert_close(y, np.tanh(x.astype(np.float64)), "float32")


# ---------------------------------------------------------------------------------------------
# Compiled Triton (TRITON_INTERPRET unset) and CPU torch tensors. Simulated without a GPU: the
# dispatch is told Triton compiles and a GPU is there, while the kernels (defined under the
# interpreter by conftest) would still run on the CPU if the dispatch let a call through, so a
# missing refusal shows as a result (or a written parameter) instead of an error.


@pytest.fixture
def compiling(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_interpreting", lambda: False)
    monkeypatch.setitem(_dispatch._STATUS, "triton", lambda: _dispatch.BackendStatus(True, "fake GPU"))


def test_compiled_triton_refuses_cpu_tensors_naming_the_argument(compiling, monkeypatch):
    x = torch.randn(5)
    with gk.use_backend("triton"), pytest.raises(
            gk.BackendUnavailableError,
            match=r"requested by use_backend\(\)\) runs compiled GPU kernels, but x is a CPU torch tensor; "
                  r"move the inputs to the GPU with \.cuda\(\) \(e\.g\. x\.cuda\(\)\), or set TRITON_INTERPRET=1"):
        gk.sigmoid(x)
    y = torch.rand(5)
    with gk.use_backend("triton"), pytest.raises(gk.BackendUnavailableError, match="but grad_output is a CPU"):
        gk.sigmoid_backward(torch.randn(5), y)
    monkeypatch.setenv("GPUKERNELS_BACKEND", "triton")
    with pytest.raises(gk.BackendUnavailableError, match=r"requested by GPUKERNELS_BACKEND\).*x is a CPU torch"):
        gk.softmax(torch.randn(2, 3))


def test_compiled_triton_refuses_cpu_tensors_before_an_in_place_step_writes(compiling, rng):
    params = [torch.from_numpy(rng.standard_normal(n)).float() for n in (5, 3)]
    grads = [torch.from_numpy(rng.standard_normal(n)).float() for n in (5, 3)]
    exp_avgs, exp_avg_sqs = [p.clone() for p in grads], [p.abs() for p in grads]
    before = [t.clone() for t in params + exp_avgs + exp_avg_sqs]
    with gk.use_backend("triton"), pytest.raises(gk.BackendUnavailableError, match=r"params\[0\] is a CPU torch"):
        gk.adam_step(params, grads, exp_avgs, exp_avg_sqs, step=1, lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(params + exp_avgs + exp_avg_sqs, before))


@pytest.mark.skipif(HAS_CUDA, reason="a real GPU takes this path in tests/test_gpu.py; the stand-in .cuda() would "
                                      "hand compiled kernels a CPU pointer")
def test_compiled_triton_still_takes_numpy_through_the_gpu(compiling, monkeypatch, rng):
    moved = []
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: moved.append(tuple(self.shape)) or self)
    x = rng.standard_normal(7).astype(np.float32)
    with gk.use_backend("triton"):
        y = gk.sigmoid(x)
    assert moved == [(7,)] and isinstance(y, np.ndarray) and y.dtype == np.float32
    assert_close(y, 1 / (1 + np.exp(-x.astype(np.float64))), "float32")


@pytest.mark.skipif(HAS_CUDA, reason="with a GPU the suite runs Triton compiled; this is the interpreter's path")
def test_the_interpreter_runs_cpu_tensors():
    assert _dispatch.triton_interpreting()  # conftest sets it without a GPU
    x = torch.randn(5)
    with gk.use_backend("triton"):
        assert gk.relu(x).device == x.device


def test_bfloat16_cpu_tensor_through_the_reference():
    x = torch.randn(64, dtype=torch.bfloat16)
    y = gk.sigmoid(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, torch.sigmoid(x))


def test_import_and_reference_work_with_numpy_alone():
    # torch, triton and cupy made unimportable: the package imports, reports why, and computes
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('torch', 'triton', 'cupy'): sys.modules[name] = None\n"
        "import numpy as np, gpukernels as gk\n"
        "y = gk.gelu(np.linspace(-3, 3, 7))\n"
        "assert y.dtype == np.float64 and abs(y[-1] - 2.99595) < 1e-4, y\n"
        "status = gk.backends()\n"
        "assert status['numpy'].available and not status['triton'].available and not status['cupy'].available\n"
        "print(status['triton'].reason)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "cannot import torch/triton" in result.stdout
