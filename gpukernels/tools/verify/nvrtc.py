"""Compile every CUDA source of ``gpukernels.cupy`` with NVRTC, CuPy's runtime compiler and
flags (``NVRTC_OPTIONS``), for sm_80 and sm_90 with ``-Xptxas=-v``, without a GPU.

NVRTC comes from pip (``gpukernels[cupy]``: CUDA 12, ``gpukernels[cupy13]``: CUDA 13) or a CUDA
toolkit. The two pip generations lay it out differently (CUDA 12:
``nvidia/cuda_nvrtc/lib/libnvrtc.so.12``, CUDA 13: ``nvidia/cu13/lib/libnvrtc.so.13``), and CuPy
needs the major version it was built for; :func:`load_nvrtc` finds that one and loads it before
CuPy does, so any CuPy from 13 on compiles with it, and says what to install when it is missing.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import pkgutil
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

from .report import TARGETS, CompileRow

# Where each pip generation puts NVRTC, below a site-packages directory.
PIP_LAYOUTS = {12: "nvidia/cuda_nvrtc/lib", 13: "nvidia/cu13/lib"}
# Where a CUDA toolkit keeps it, below its root.
TOOLKIT_LAYOUTS = ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
# The CuPy wheel of each CUDA major version, and the extra that installs it with its NVRTC.
CUPY_WHEELS = {12: "cupy-cuda12x", 13: "cupy-cuda13x"}
EXTRAS = {12: "cupy", 13: "cupy13"}


class NvrtcNotFoundError(RuntimeError):
    """No NVRTC of the CUDA version CuPy was built for; the message says what to install."""


def cupy_cuda_major() -> int:
    """The CUDA major version of the installed CuPy: its wheel's name, else its runtime."""
    for major, wheel in CUPY_WHEELS.items():
        try:
            metadata.version(wheel)
            return major
        except metadata.PackageNotFoundError:
            continue
    from cupy.cuda import runtime

    return runtime.runtimeGetVersion() // 1000


def search_dirs() -> list[Path]:
    """Where to look: every directory on sys.path (site-packages with the pip wheels first), then
    the CUDA toolkits named by $CUDA_PATH / $CUDA_HOME and /usr/local/cuda."""
    dirs = [Path(p) for p in sys.path if p and Path(p).is_dir()]
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    dirs += [Path(root) / layout for root in roots if root for layout in TOOLKIT_LAYOUTS]
    return dirs


def find_nvrtc(major: int, dirs: Iterable[Path]) -> Path | None:
    """The first ``libnvrtc.so.<major>`` in ``dirs``: in a pip layout below one (site-packages), or
    directly in one (a toolkit's lib directory)."""
    name = f"libnvrtc.so.{major}"
    for directory in dirs:
        for candidate in (directory / PIP_LAYOUTS.get(major, "") / name, directory / name):
            if candidate.is_file():
                return candidate
    return None


def nvrtc_missing_message(major: int, dirs: Iterable[Path]) -> str:
    searched = ", ".join(str(d) for d in dirs) or "nowhere"
    return (f"no NVRTC for CUDA {major} (libnvrtc.so.{major}), the version the installed CuPy was built for; "
            f"pip install 'gpukernels[{EXTRAS.get(major, 'cupy')}]' or set CUDA_PATH to a CUDA {major} toolkit "
            f"(searched {PIP_LAYOUTS.get(major, 'lib')} below, and directly in: {searched})")


@functools.lru_cache(maxsize=None)
def load_nvrtc() -> Path:
    """Load CuPy's NVRTC (and its builtins library beside it) globally, so CuPy's own lookup takes
    this one; returns its path or raises :class:`NvrtcNotFoundError`."""
    major = cupy_cuda_major()
    dirs = search_dirs()
    found = find_nvrtc(major, dirs)
    if found is None:
        raise NvrtcNotFoundError(nvrtc_missing_message(major, dirs))
    for builtins in sorted(found.parent.glob(f"libnvrtc-builtins.so.{major}.*")):
        ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(found), mode=ctypes.RTLD_GLOBAL)
    return found


def iter_programs() -> Iterator[object]:
    """Every ``NvrtcProgram`` listed by a module of ``gpukernels.cupy``."""
    import gpukernels.cupy as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        yield from getattr(module, "nvrtc_programs", lambda: ())()


def _compile(program, target: int) -> tuple[bytes, dict[str, str], str]:
    """(cubin, name expression -> lowered name, ptxas log) or raises with NVRTC's log."""
    load_nvrtc()
    from cupy.cuda import nvrtc

    from gpukernels.cupy._module import NVRTC_OPTIONS, source_text

    handle = nvrtc.createProgram(source_text(program.source), program.source, [], [])
    try:
        for expression in program.name_expressions:
            nvrtc.addNameExpression(handle, expression)
        options = [*NVRTC_OPTIONS, f"-arch=sm_{target}", "-Xptxas=-v"]
        try:
            nvrtc.compileProgram(handle, options)
        except Exception as exc:
            raise RuntimeError(nvrtc.getProgramLog(handle).strip() or str(exc)) from None
        lowered = {e: nvrtc.getLoweredName(handle, e) for e in program.name_expressions}
        return nvrtc.getCUBIN(handle), lowered, nvrtc.getProgramLog(handle)
    finally:
        nvrtc.destroyProgram(handle)


_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_program(program, target: int) -> list[CompileRow]:
    """One row per name expression (kernel instantiation) of ``program`` at ``target``."""
    from .sass import resources, sass_facts

    try:
        cubin, lowered, _log = _compile(program, target)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        first_error = next((line for line in lines if "error" in line), lines[-1] if lines else "")
        return [CompileRow("cupy", program.source, "-", target, compiled=False, error=first_error.strip())]
    usage, facts = resources(cubin), sass_facts(cubin)
    rows = []
    for expression, name in lowered.items():
        found = usage.get(name)
        row = CompileRow("cupy", expression, program.source, target, compiled=found is not None,
                         expect_load_bits=program.expect_load_bits)
        if found is None:
            row.error = f"{name} missing from the cubin"
        else:
            # LOCAL only, not the stack frame (which Triton rows count): CuPy kernels keep local
            # arrays in their frames by design (attention.cu), and some frames hold real spills
            # (softmax.cu: ptxas -v counts the spill stores); separating the two is still to do.
            row.registers, row.spill_bytes, row.shared_bytes = found.registers, found.local, found.shared
            code = facts.get(name)
            if code is not None:
                row.load_bits, row.matrix, row.tile_copies = code.load_bits, code.matrix, code.copies
        rows.append(row)
    return rows


def compile_all(filter_text: str | None = None) -> list[CompileRow]:
    """Every program that has a kernel whose name contains ``filter_text``, at every target."""
    rows: list[CompileRow] = []
    for program in iter_programs():
        if filter_text and not any(filter_text in e for e in program.name_expressions):
            continue
        for target in TARGETS:
            rows.extend(r for r in compile_program(program, target) if not filter_text or filter_text in r.kernel)
    return rows
