"""Compile Triton kernels ahead of time for sm_80/sm_90 without a GPU
(``triton.compile(ASTSource(...), target=GPUTarget(...))``) and read their resource usage."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import pkgutil
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator

from .report import TARGETS, CompileRow


def iter_cases() -> Iterator[tuple[str, object]]:
    """(module name, CompileCase) for every ``compile_cases()`` in ``gpukernels.triton``."""
    import gpukernels.triton as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for case in getattr(module, "compile_cases", lambda: ())():
            yield info.name, case


def config_label(case) -> str:
    return ",".join(f"{k}={v}" for k, v in case.tags.items()) + f",warps={case.num_warps}"


def compile_case(case, target: int) -> CompileRow:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .sass import resources, widest_ptx_global_load_bits

    row = CompileRow("triton", case.name, config_label(case), target, compiled=False,
                     expect_load_bits=case.expect_load_bits)
    names = list(case.signature)
    attrs = {(names.index(arg),): [["tt.divisibility", 16]] for arg in case.divisible}
    try:
        source = ASTSource(fn=case.kernel, signature=case.signature, constexprs=case.constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", target, 32), options={"num_warps": case.num_warps})
    except Exception as exc:  # any compiler failure is a gate failure with its message
        row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        return row
    cubin = compiled.asm["cubin"]
    usage = next(iter(resources(cubin).values()))
    row.compiled = True
    row.registers, row.spill_bytes, row.shared_bytes = usage.registers, usage.local, compiled.metadata.shared
    row.load_bits = widest_ptx_global_load_bits(compiled.asm["ptx"])
    return row


def _compile_indexed(args):
    module_name, index, target = args
    cases = [c for m, c in iter_cases() if m == module_name]
    return compile_case(cases[index], target)


def _without_interpreter() -> None:
    # Runs first in each spawned worker, before any kernel module is imported.
    os.environ.pop("TRITON_INTERPRET", None)


def compile_all(filter_text: str | None = None, workers: int | None = None,
                config_text: str | None = None) -> list[CompileRow]:
    """Every registered case whose name contains ``filter_text`` (and whose config label
    contains ``config_text``), at every target.

    Compiles in freshly spawned processes: a process that imported the kernels with
    TRITON_INTERPRET=1 (as the CPU tests do) holds interpreter functions, which
    ``triton.compile`` cannot take.
    """
    jobs = []
    counters: dict[str, int] = {}
    for module_name, case in iter_cases():
        index = counters.get(module_name, 0)
        counters[module_name] = index + 1
        if filter_text and filter_text not in case.name:
            continue
        if config_text and config_text not in config_label(case):
            continue
        jobs.extend((module_name, index, target) for target in TARGETS)
    if not jobs:
        return []
    context = multiprocessing.get_context("spawn")
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_without_interpreter) as pool:
        return list(pool.map(_compile_indexed, jobs, chunksize=2))
