"""Compiling and launching the CUDA sources of this package through CuPy.

``NVRTC_OPTIONS`` is the single set of compiler flags: the runtime (``cupy.RawModule``) and the
compile gate (``gpukernels.tools.verify.nvrtc``) both use it, so the gate compiles what runs.

Every family module is written the same way: its host code (which arrays to make, how to pack
the kernel arguments, grids and blocks, which template instantiation) runs against a
:class:`Runner`, an array module plus a launcher of :class:`Launch` descriptions. On the GPU that
is CuPy and ``RawKernel`` (:func:`on_gpu`); in the CPU tests it is NumPy and the g++ build of the
same ``.cu`` file (``gpukernels.tools.verify.host``), so only the ``RawKernel`` call itself and
cuBLAS are left untested without a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

SOURCE_DIR = Path(__file__).resolve().parent
NVRTC_OPTIONS = ("-std=c++17", f"-I{SOURCE_DIR}")

THREADS = 256
_MAX_BLOCKS = 65535  # the grid-stride loops cover any size with at most this many blocks

# A null pointer argument: CuPy passes None as 0xffffffff (cupy/cupy#9046), not as NULL.
NULL = np.uint64(0)


@dataclass(frozen=True)
class NvrtcProgram:
    """A CUDA source of this package and the template instantiations the runtime may launch."""

    source: str  # file name in this folder
    name_expressions: tuple[str, ...]
    # Widest global load every instantiation must show (bits); the 16-byte chunked bodies give 128.
    expect_load_bits: int | None = 128


@dataclass(frozen=True)
class Launch:
    """One kernel launch, all but the call: the instantiation, the grid and block, and the
    arguments in the kernel's order (arrays for pointers, numpy scalars of the parameter types)."""

    kernel: str  # a name expression of the family's NvrtcProgram
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple


class Runner(NamedTuple):
    """Where a family's host code does its work: the array module and the kernel launcher."""

    xp: Any
    launch: Callable[[Launch], None]


def source_text(name: str) -> str:
    return (SOURCE_DIR / name).read_text()


@functools.lru_cache(maxsize=None)
def module(program: NvrtcProgram):
    """The compiled ``cupy.RawModule`` (CuPy caches the binary on disk across processes)."""
    import cupy

    return cupy.RawModule(code=source_text(program.source), options=NVRTC_OPTIONS,
                          name_expressions=program.name_expressions)


def kernel(program: NvrtcProgram, name_expression: str):
    """The kernel function on the current device (looked up once: a CUDA-graph capture then
    makes no driver call but the launch)."""
    import cupy

    return _kernel(program, name_expression, cupy.cuda.runtime.getDevice())


@functools.lru_cache(maxsize=None)
def _kernel(program: NvrtcProgram, name_expression: str, device: int):
    return module(program).get_function(name_expression)


def launch_on_gpu(program: NvrtcProgram, spec: Launch) -> None:
    kernel(program, spec.kernel)(spec.grid, spec.block, spec.args)


def on_gpu(program: NvrtcProgram) -> Runner:
    import cupy

    return Runner(cupy, functools.partial(launch_on_gpu, program))


# ---------------------------------------------------------------------------------------------
# Host-side helpers the launchers share (no GPU, no cupy)


def grid_for(work_items: int) -> tuple[int]:
    return (max(1, min(_MAX_BLOCKS, -(-work_items // THREADS))),)


# CUDA storage type of each supported dtype (numpy dtype names; bfloat16 comes from ml_dtypes).
CUDA_TYPES = {"float32": "float", "float16": "gk::half", "bfloat16": "gk::bfloat16"}


def cuda_type(x, name: str) -> str:
    dtype = str(x.dtype)
    try:
        return CUDA_TYPES[dtype]
    except KeyError:
        raise TypeError(
            f"{name} has dtype {dtype}, which the cupy backend does not support "
            f"(supported: {', '.join(CUDA_TYPES)}); use the numpy backend or cast"
        ) from None


def flag(value: bool) -> str:
    """A bool template argument as C++ spells it."""
    return "true" if value else "false"


def address(a) -> int:
    """The address of ``a``'s first element: a cupy array's device pointer, a numpy array's host one."""
    return int(a.ctypes.data) if isinstance(a, np.ndarray) else int(a.data.ptr)


def placement(xp) -> tuple:
    """Where arrays made now through ``xp`` live and in which order work on them runs: (library,
    device, stream). Device tables and constants are cached per placement, so no stream reads
    another stream's upload before it has landed."""
    cuda = getattr(xp, "cuda", None)
    if cuda is None:
        return (xp.__name__,)
    return (xp.__name__, cuda.Device().id, cuda.get_current_stream().ptr)


def to_host(a) -> np.ndarray:
    """``a`` as a numpy array (a copy from the device for cupy arrays)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def threads_for(n_cols: int, itemsize: int) -> int:
    """Threads per row block for the row kernels (softmax, cross-entropy, normalisation): about
    four 16-byte chunks per thread, a power of two in 32..1024 (their block merge needs whole
    warps)."""
    chunks = -(-n_cols // (16 // itemsize))
    wanted = max(1, -(-chunks // 4))
    return min(1024, max(32, 1 << (wanted - 1).bit_length()))
