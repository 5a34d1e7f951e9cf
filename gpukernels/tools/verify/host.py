"""The CUDA sources of ``gpukernels.cupy`` built with g++ and run on the CPU, so tests without a GPU
run the very code the GPU runs.

* :func:`build_program` compiles a whole ``.cu`` file (its kernels, not only the
  ``__host__ __device__`` bodies they call) over ``cuda_host.h``, a CPU model of CUDA's launch:
  grid, blocks, threads as fibers, ``__syncthreads``, warp shuffles, shared memory, atomics. The
  result launches the launchers' own :class:`~gpukernels.cupy._module.Launch` descriptions (name
  expression, grid, block, packed arguments) and checks each argument against the kernel's
  parameter type, so only CuPy's ``RawKernel`` call itself is left for the GPU.
* :func:`build` compiles a plain C++ shim that includes the headers (extra checks of the bodies).

Without a C++ compiler both raise :class:`CompilerNotFoundError` (the tests skip on it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gpukernels.cupy._module import SOURCE_DIR, Launch, NvrtcProgram

GXX_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-Wall", "-Werror")
HERE = Path(__file__).resolve().parent
EMULATOR = HERE / "cuda_host.h"


class CompilerNotFoundError(RuntimeError):
    """No C++ compiler here: the host builds cannot run (tests turn this into a skip)."""


class HostLaunchError(RuntimeError):
    """A launch the GPU would reject or run wrongly: unknown kernel, arguments that do not match the
    kernel's parameters, an invalid grid or block, a deadlock or an inactive shuffle lane."""


def compiler() -> str:
    """The C++ compiler: ``$CXX``, else ``g++`` on the PATH."""
    found = os.environ.get("CXX") or shutil.which("g++")
    if not found:
        raise CompilerNotFoundError("no C++ compiler: install g++ or set CXX to build the CUDA sources for the CPU")
    return found


def _cache_dir() -> Path:
    out = Path(tempfile.gettempdir()) / "gpukernels-host"
    out.mkdir(exist_ok=True)
    return out


def _compile(source: Path, stem: str, include_dirs: tuple[Path, ...]) -> ctypes.CDLL:
    """``source`` compiled into a shared library (cached by the hash of every input) and loaded."""
    cxx = compiler()
    digest = hashlib.sha256(f"{cxx} {GXX_FLAGS}".encode())
    digest.update(source.read_bytes())
    for directory in (SOURCE_DIR, *include_dirs):
        for header in sorted(directory.glob("*")):
            if header.suffix in (".cu", ".cuh", ".h"):
                digest.update(header.read_bytes())
    library = _cache_dir() / f"{stem}-{digest.hexdigest()[:16]}.so"
    if not library.exists():
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        flags = [f"-I{d}" for d in (SOURCE_DIR, *include_dirs)]
        done = subprocess.run([cxx, *GXX_FLAGS, *flags, str(source), "-o", str(partial)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cxx} failed on {source.name}:\n{done.stderr.strip()}")
        partial.replace(library)  # atomic, so parallel test workers never load half a file
    return ctypes.CDLL(str(library))


def build(shim: Path) -> ctypes.CDLL:
    """Compile ``shim`` (a .cpp that includes headers from gpukernels/cupy, or cuda_host.h) and load it."""
    return _compile(shim, shim.stem, (HERE,))


# ---------------------------------------------------------------------------------------------
# Whole programs


def program_source(program: NvrtcProgram) -> str:
    """The translation unit for ``program``: the CPU model, the .cu file, one registration per
    name expression (the instantiations the runtime compiles with NVRTC)."""
    lines = ['#include "cuda_host.h"', f'#include "{program.source}"', ""]
    lines += [f'GK_KERNEL("{e}", {e})' for e in program.name_expressions]
    return "\n".join(lines) + "\n"


def build_program(program: NvrtcProgram) -> HostProgram:
    text = program_source(program)
    source = _cache_dir() / f"{Path(program.source).stem}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.cpp"
    if not source.exists():
        partial = source.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(source)
    return HostProgram(_compile(source, f"{Path(program.source).stem}-kernels", (HERE,)), program)


# numpy scalar type of each scalar parameter code; pointers take arrays of the dtype they name.
_SCALARS = {"float32": (np.float32, ctypes.c_float), "int64": (np.int64, ctypes.c_longlong),
            "int32": (np.int32, ctypes.c_int), "uint64": (np.uint64, ctypes.c_uint64)}


class HostProgram:
    """A CUDA source built for the CPU: ``launch(spec)`` runs a :class:`Launch` as the GPU would."""

    def __init__(self, library: ctypes.CDLL, program: NvrtcProgram):
        self.program = program
        self._signature = library.gk_signature
        self._signature.restype, self._signature.argtypes = ctypes.c_char_p, (ctypes.c_char_p,)
        self._launch = library.gk_launch
        self._launch.restype = ctypes.c_int

    def signature(self, kernel: str) -> tuple[str, ...]:
        """The parameter types of ``kernel`` ('float32*', 'int64', ...)."""
        found = self._signature(kernel.encode())
        if found is None:
            raise HostLaunchError(f"{self.program.source} has no kernel {kernel!r} (not among its name expressions)")
        return tuple(found.decode().split(",")) if found else ()

    def launch(self, spec: Launch) -> None:
        types = self.signature(spec.kernel)
        if len(spec.args) != len(types):
            raise HostLaunchError(f"{spec.kernel} takes {len(types)} arguments ({', '.join(types)}), "
                                  f"the launch packs {len(spec.args)}")
        held = [_argument(spec.kernel, i, t, a) for i, (t, a) in enumerate(zip(types, spec.args))]
        pointers = (ctypes.c_void_p * max(1, len(held)))(*(ctypes.cast(ctypes.pointer(h), ctypes.c_void_p)
                                                            for h in held))
        grid, block = _dim3(spec.grid), _dim3(spec.block)
        error = ctypes.create_string_buffer(512)
        if self._launch(spec.kernel.encode(), grid, block, pointers, len(held), error, len(error)) != 0:
            raise HostLaunchError(f"{spec.kernel} on grid {spec.grid}, block {spec.block}: {error.value.decode()}")


def _dim3(extent: tuple[int, ...]):
    if not 1 <= len(extent) <= 3 or not all(isinstance(e, int) for e in extent):
        raise HostLaunchError(f"a grid or block is 1 to 3 ints, got {extent!r}")
    return (ctypes.c_uint * 3)(*(list(extent) + [1, 1])[:3])


def _argument(kernel: str, position: int, code: str, value: Any):
    """The ctypes value a kernel parameter of type ``code`` receives, or why ``value`` does not fit
    (CuPy passes numpy scalars by their own size: an int or float64 for a float parameter would
    garble every argument after it on the GPU)."""
    where = f"argument {position} of {kernel}"
    if code.endswith("*"):
        if isinstance(value, np.uint64) and value == 0:
            return ctypes.c_void_p(None)  # the launchers' NULL
        if not isinstance(value, np.ndarray):
            raise HostLaunchError(f"{where} is a {code} pointer; the launch packs {type(value).__name__}")
        if str(value.dtype) != code[:-1]:
            raise HostLaunchError(f"{where} points to {code[:-1]}; the launch passes a {value.dtype} array")
        return ctypes.c_void_p(value.ctypes.data)
    numpy_type, c_type = _SCALARS[code]
    if type(value) is not numpy_type:
        raise HostLaunchError(f"{where} is {code}; the launch packs {type(value).__name__} (use numpy.{code})")
    return c_type(value.item())
