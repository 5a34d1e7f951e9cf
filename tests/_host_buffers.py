"""The CPU side of the CuPy backend's tests: its host code run with NumPy as the array module and
the g++ build of its .cu files as the launcher (gpukernels.tools.verify.host), with fresh arrays
NaN-poisoned; storage-typed buffers (bfloat16 through ml_dtypes, as CuPy holds it) placed aligned
or deliberately misaligned."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

from gpukernels.cupy._module import NvrtcProgram, Runner
from gpukernels.tools.verify import host


def _skip_without_compiler(build, *args):
    try:
        return build(*args)
    except host.CompilerNotFoundError as exc:
        pytest.skip(str(exc))


def host_program(program: NvrtcProgram) -> host.HostProgram:
    """``program``'s .cu file built for the CPU; the test skips where no C++ compiler exists."""
    return _skip_without_compiler(host.build_program, program)


def host_library(shim: Path) -> ctypes.CDLL:
    return _skip_without_compiler(host.build, shim)


class PoisonedNumpy:
    """NumPy standing in for CuPy, except that ``empty``/``empty_like`` return all-ones bits (NaN in
    every float format), so a kernel that leaves an element of its output unwritten fails."""

    __name__ = "numpy"

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def _poison(out: np.ndarray) -> np.ndarray:
        if out.flags.c_contiguous:
            out.reshape(-1).view(np.uint8)[...] = 0xFF
        else:
            out[...] = np.nan
        return out

    def empty(self, shape, dtype=float, order="C"):
        return self._poison(np.empty(shape, dtype=dtype, order=order))

    def empty_like(self, a, dtype=None, order="K", shape=None):
        return self._poison(np.empty_like(a, dtype=dtype, order=order, shape=shape))


def host_runner(program: NvrtcProgram) -> Runner:
    """The Runner the CPU tests give a family's entry points in place of CuPy and RawKernel."""
    return Runner(PoisonedNumpy(), host_program(program).launch)


def numpy_dtype(dtype: str):
    if dtype == "bfloat16":
        return pytest.importorskip("ml_dtypes", reason="cupy holds bfloat16 through ml_dtypes").bfloat16
    return np.dtype(dtype)


def storage(values: np.ndarray, dtype: str, misalign: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(buffer of the storage dtype, the exact values it holds as float64). With ``misalign`` the
    buffer starts one element past a 16-byte boundary, so the 128-bit paths are skipped."""
    rounded = torch.from_numpy(np.asarray(values, dtype=np.float64)).to(getattr(torch, dtype))
    raw = rounded.view(torch.int16).numpy().view(numpy_dtype(dtype)) if dtype == "bfloat16" else rounded.numpy()
    backing = np.empty(raw.size + 16, dtype=raw.dtype)
    start = (-backing.ctypes.data % 16) // raw.itemsize + (1 if misalign else 0)
    buffer = backing[start:start + raw.size].reshape(raw.shape)
    buffer[...] = raw
    return buffer, rounded.double().numpy()


def decode(buffer: np.ndarray) -> np.ndarray:
    """The values a storage buffer holds (bfloat16 included), as float64."""
    return np.asarray(buffer).astype(np.float64)


def ptr(a: np.ndarray | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if a is None else a.ctypes.data)
