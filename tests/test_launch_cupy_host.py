"""The CPU build of the CuPy sources (gpukernels.tools.verify.host and its CUDA model cuda_host.h)
on its own: it runs launches as a GPU would (indices, shared memory, barriers, shuffles, atomics),
refuses what a GPU would refuse or run wrongly (unknown kernels, arguments of the wrong type or
dtype, invalid grids and blocks, barriers that cannot all be reached), registers every
instantiation the runtime compiles, and skips cleanly where no C++ compiler exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import _host_buffers
from gpukernels.cupy._module import Launch, NvrtcProgram
from gpukernels.tools.verify import host, nvrtc

SHIM = Path(__file__).parent / "host" / "emulator_host.cpp"
KERNELS = ("indices", "reverse_in_shared", "warp_sum", "accumulate", "divergent_barriers")


@pytest.fixture(scope="module")
def emulator():
    return host.HostProgram(_host_buffers.host_library(SHIM), NvrtcProgram(SHIM.name, KERNELS))


def test_every_block_and_thread_runs_once(emulator):
    out = np.full(3 * 64, -1, np.int32)
    emulator.launch(Launch("indices", (3,), (64,), (out,)))
    b, t = np.divmod(np.arange(3 * 64), 64)
    np.testing.assert_array_equal(out, 1000 * b + t + 3000000)


def test_shared_memory_across_a_barrier(emulator, rng):
    values = rng.standard_normal(2 * 96).astype(np.float32)
    out = np.empty_like(values)
    emulator.launch(Launch("reverse_in_shared", (2,), (96,), (values, out)))
    np.testing.assert_array_equal(out, np.concatenate([values[:96][::-1], values[96:][::-1]]))


def test_warp_shuffles(emulator, rng):
    values = rng.integers(-50, 50, 64).astype(np.float32)  # integers: every summation order is exact
    out = np.empty_like(values)
    emulator.launch(Launch("warp_sum", (1,), (64,), (values, out)))
    np.testing.assert_array_equal(out, np.repeat(values.reshape(2, 32).sum(axis=1), 32))


def test_atomics(emulator, rng):
    values = rng.integers(-9, 9, 4 * 32).astype(np.float32)
    acc = np.zeros(2, np.float32)
    emulator.launch(Launch("accumulate", (4,), (32,), (values, acc)))
    assert acc[0] == values.sum() and acc[1] == np.abs(values).max()


def test_barriers_a_warp_cannot_all_reach_fail(emulator):
    with pytest.raises(host.HostLaunchError, match="deadlock"):
        emulator.launch(Launch("divergent_barriers", (1,), (64,), (np.zeros(64, np.float32),)))


@pytest.mark.parametrize("spec,message", [
    (Launch("indice", (1,), (1,), (np.zeros(1, np.int32),)), "no kernel 'indice'"),
    (Launch("indices", (1,), (1,), ()), "takes 1 arguments"),
    (Launch("indices", (1,), (1,), (np.zeros(1, np.int64),)), "points to int32; the launch passes a int64 array"),
    (Launch("indices", (1,), (1,), (7,)), "is a int32\\* pointer; the launch packs int"),
    (Launch("indices", (1,), (2048,), (np.zeros(2048, np.int32),)), "invalid configuration"),
    (Launch("indices", (0,), (32,), (np.zeros(32, np.int32),)), "invalid configuration"),
    (Launch("indices", (1, 70000), (1,), (np.zeros(1, np.int32),)), "invalid configuration"),
])
def test_launches_a_gpu_would_refuse_or_misread_are_errors(emulator, spec, message):
    with pytest.raises(host.HostLaunchError, match=message):
        emulator.launch(spec)


def test_scalar_arguments_must_have_the_parameter_type(rng):
    from gpukernels.cupy import activation

    program = _host_buffers.host_program(activation.PROGRAM)
    x = np.ones(8, np.float32)
    good = activation.activation_launch("forward", "relu", {"x": x}, np.empty_like(x), 0.0)
    program.launch(good)
    for position, wrong in ((2, 8), (2, np.int32(8)), (3, 0.0), (3, np.float64(0.0))):
        args = list(good.args)
        args[position] = wrong
        with pytest.raises(host.HostLaunchError, match=f"argument {position} of activation_forward"):
            program.launch(good.__class__(good.kernel, good.grid, good.block, tuple(args)))


def test_every_instantiation_the_runtime_compiles_is_registered():
    for program in nvrtc.iter_programs():
        built = _host_buffers.host_program(program)
        for expression in program.name_expressions:
            assert built.signature(expression), f"{program.source}: {expression}"


def test_without_a_compiler_the_build_raises_and_the_tests_skip(monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no g++ on the PATH
    with pytest.raises(host.CompilerNotFoundError, match="no C\\+\\+ compiler"):
        host.build(SHIM)
    with pytest.raises(host.CompilerNotFoundError):
        host.build_program(NvrtcProgram("activation.cu", ("activation_forward<gk::Relu, float>",)))
    with pytest.raises(pytest.skip.Exception, match="no C\\+\\+ compiler"):
        _host_buffers.host_program(NvrtcProgram("activation.cu", ()))
