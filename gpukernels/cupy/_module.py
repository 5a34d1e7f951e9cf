"""Compiling and launching the CUDA sources of this package through CuPy.

``NVRTC_OPTIONS`` is the single set of compiler flags: the runtime (``cupy.RawModule``) and the
compile gate (``gpukernels.tools.verify.nvrtc``) both use it, so the gate compiles what runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
NVRTC_OPTIONS = ("-std=c++17", f"-I{SOURCE_DIR}")

THREADS = 256
_MAX_BLOCKS = 65535  # the grid-stride loops cover any size with at most this many blocks


@dataclass(frozen=True)
class NvrtcProgram:
    """A CUDA source of this package and the template instantiations the runtime may launch."""

    source: str  # file name in this folder
    name_expressions: tuple[str, ...]
    # Widest global load every instantiation must show (bits); the 16-byte chunked bodies give 128.
    expect_load_bits: int | None = 128


def source_text(name: str) -> str:
    return (SOURCE_DIR / name).read_text()


@functools.lru_cache(maxsize=None)
def module(program: NvrtcProgram):
    """The compiled ``cupy.RawModule`` (CuPy caches the binary on disk across processes)."""
    import cupy

    return cupy.RawModule(code=source_text(program.source), options=NVRTC_OPTIONS,
                          name_expressions=program.name_expressions)


def kernel(program: NvrtcProgram, name_expression: str):
    return module(program).get_function(name_expression)


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
