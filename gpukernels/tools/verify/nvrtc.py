"""Compile every CUDA source of ``gpukernels.cupy`` with NVRTC, CuPy's runtime compiler and
flags (``NVRTC_OPTIONS``), for sm_80 and sm_90 with ``-Xptxas=-v``, without a GPU."""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Iterator

from .report import TARGETS, CompileRow


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
