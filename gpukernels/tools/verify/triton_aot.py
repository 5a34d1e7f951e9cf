"""Compile Triton kernels ahead of time for sm_80/sm_90 without a GPU
(``triton.compile(ASTSource(...), target=GPUTarget(...))``) and read their resource usage.

Each case is built as a launch with the case's representative arguments builds it: the
signature, the constexprs and the specialisation attributes (ints divisible by 16 or equal to
1, 16-byte-aligned pointers) come from the same Triton functions ``JITFunction.run`` calls
(its binder, from ``create_function_from_signature``, and ``_pack_args``), so the gate and a
real launch agree by construction rather than by a hand-kept list of hints.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import pkgutil
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator

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
    stages = "" if case.num_stages is None else f",stages={case.num_stages}"
    return ",".join(f"{k}={v}" for k, v in case.tags.items()) + f",warps={case.num_warps}" + stages


def launch_options(case) -> dict[str, Any]:
    """The launch's keyword options, plus the two ``JITFunction.run`` adds before binding."""
    from triton import knobs

    options: dict[str, Any] = {"num_warps": case.num_warps}
    if case.num_stages is not None:
        options["num_stages"] = case.num_stages
    options["debug"] = case.kernel.debug or knobs.runtime.debug
    options["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    return options


def launch_specialization(case, target: int):
    """(signature, constexprs, attrs, options) of ``case.kernel`` launched with ``case.args`` on
    an sm_``target`` GPU, computed as ``JITFunction.run`` computes them."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = case.kernel
    backend = make_backend(GPUTarget("cuda", target, 32))
    kwargs = {**case.args, **launch_options(case)}
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def specialized_names(kernel, constexprs: dict, attrs: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(arguments marked divisible by 16, runtime arguments turned into constants), by name:
    the specialisation a launch applied beyond the kernel's own constexpr parameters."""
    names = kernel.arg_names
    divisible = tuple(names[path[0]] for path, marks in attrs.items()
                      if any(mark[0] == "tt.divisibility" for mark in marks))
    declared = {p.name for p in kernel.params if p.is_constexpr}
    constants = tuple(names[path[0]] for path in constexprs if names[path[0]] not in declared)
    return divisible, constants


def compile_case(case, target: int) -> CompileRow:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .sass import ptx_facts, resources
    from .sass_loop import NoMatrixLoop, cubin_loop_facts

    row = CompileRow("triton", case.name, config_label(case), target, compiled=False,
                     expect_load_bits=case.expect_load_bits, known_spill=case.known_spill)
    try:
        signature, constexprs, attrs, options = launch_specialization(case, target)
        row.divisible_args, row.constant_args = specialized_names(case.kernel, constexprs, attrs)
        source = ASTSource(fn=case.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", target, 32), options=options.__dict__)
    except Exception as exc:  # any compiler failure is a gate failure with its message
        row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        return row
    usage = next(iter(resources(compiled.asm["cubin"]).values()))
    row.compiled = True
    row.registers, row.spill_bytes, row.shared_bytes = usage.registers, usage.spill, compiled.metadata.shared
    facts = ptx_facts(compiled.asm["ptx"])
    row.load_bits, row.matrix, row.tile_copies = facts.load_bits, facts.matrix, facts.copies
    if facts.matrix != "none":  # only these have a matrix loop to read (one more cuobjdump run)
        try:
            row.inner_loop = cubin_loop_facts(compiled.asm["cubin"])
        except NoMatrixLoop:
            pass
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
        jobs.extend((module_name, index, target) for target in TARGETS if case.targets is None or target in case.targets)
    if not jobs:
        return []
    context = multiprocessing.get_context("spawn")
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_without_interpreter) as pool:
        return list(pool.map(_compile_indexed, jobs, chunksize=2))
