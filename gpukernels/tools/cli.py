"""Command line: ``gpukernels info``, ``gpukernels check``, ``gpukernels bench``,
``gpukernels report``, ``gpukernels gpu-proof``, ``gpukernels demo seq2seq``."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # a broken install says why rather than crashing info
        return f"not available ({type(exc).__name__})"


def cmd_info(args: argparse.Namespace) -> int:
    import gpukernels

    print(f"gpukernels {gpukernels.__version__} on Python {platform.python_version()} ({platform.machine()})")
    for module in ("numpy", "scipy", "torch", "triton", "cupy"):
        print(f"  {module:<8} {_version(module)}")
    print("backends:")
    for name, status in gpukernels.backends().items():
        print(f"  {name:<8} {'available' if status.available else 'unavailable':<12} {status.reason}")
    print(f"GPU: {_gpu_description()}")
    return 0


def _gpu_description() -> str:
    try:
        import torch
    except ImportError:
        return "unknown (torch not installed)"
    if not torch.cuda.is_available():
        return "none visible to torch"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    capability = torch.cuda.get_device_capability()
    return f"{', '.join(names)} (sm_{capability[0]}{capability[1]})"


def cmd_check(args: argparse.Namespace) -> int:
    from .verify.report import format_table, gate_summary

    rows = []
    if args.backend in ("all", "triton"):
        from .verify import triton_aot

        rows += triton_aot.compile_all(args.filter, workers=args.jobs, config_text=args.config)
    if args.backend in ("all", "cupy"):
        from .verify import nvrtc

        rows += nvrtc.compile_all(args.filter)
    if not rows:
        print(f"no kernel matches {args.filter!r}", file=sys.stderr)
        return 2
    print(format_table(rows))
    passed, summary = gate_summary(rows)
    print(f"\n{summary}\n(the gate: compiled for sm_80 and sm_90, Triton kernels as their typical and worst-case "
          "launches specialise them; 0 spill/stack bytes; the expected 128-bit loads. mma: the matrix instruction; "
          "tiles: how data reaches the SMs: tma, cp.async:<bytes>B, ld.global:<bits>b)")
    return 0 if passed else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    return bench.run(args)


def cmd_report(args: argparse.Namespace) -> int:
    from . import report

    return report.run(args)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gpukernels bench`` (also used by ``python -m gpukernels.benchmarks.run``)."""
    parser.add_argument("--op", help="only these ops (comma-separated), e.g. sigmoid,gelu")
    parser.add_argument("--dtype", help="only these dtypes: float32/fp32, float16/fp16, bfloat16/bf16")
    parser.add_argument("--mode", help="only these modes: fwd, bwd, full")
    parser.add_argument("--size", help="only these sizes: a case's size label, one part of it, or a value")
    parser.add_argument("--all", action="store_true",
                        help="every matching case (default: a short set, one dtype and the smallest and largest size)")
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="where to time: cuda (the kernels against the GPU baselines) or cpu (the CPU fallback "
                             "against PyTorch CPU); default: cuda when torch sees a GPU, else cpu")
    parser.add_argument("--out", default="bench-results", help="folder for bench.csv, bench.json, plots/ (default: %(default)s)")
    parser.add_argument("--threads", metavar="N",
                        help="CPU runs only: N threads for both sides (PyTorch's intra-op threads, the reference's "
                             "pool and NumPy's BLAS); default: each side's own default, the usable cores")
    parser.add_argument("--compare", metavar="OLD.csv", help="print old/new time ratios against an earlier run's bench.csv")


def cmd_gpu_proof(args: argparse.Namespace) -> int:
    from . import gpu_proof

    return gpu_proof.run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpukernels", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, backends and why any cannot run, the GPU").set_defaults(run=cmd_info)
    check = sub.add_parser("check", help="compile every kernel for sm_80/sm_90 and report registers, spills, loads, "
                                          "matrix instructions and tile copies")
    check.add_argument("--backend", choices=("all", "triton", "cupy"), default="all")
    check.add_argument("--filter", help="only kernels whose name contains this text")
    check.add_argument("--config", help="only Triton launch configurations whose label contains this text")
    check.add_argument("--jobs", type=int, default=None, help="compile processes (default: one per core)")
    check.set_defaults(run=cmd_check)
    bench = sub.add_parser("bench", help="time ours against the baselines (CPU fallback vs PyTorch CPU without a GPU)")
    add_bench_arguments(bench)
    bench.set_defaults(run=cmd_bench)
    report = sub.add_parser("report", help="static GPU report without a GPU: registers, spills, occupancy, bytes vs eager, "
                                                 "SDPA inner-loop instructions per FLOP")
    report.add_argument("--backend", choices=("all", "triton", "cupy"), default="all")
    report.add_argument("--filter", help="only kernels whose name contains this text (and ops whose name it contains)")
    report.add_argument("--config", help="only Triton launch configurations whose label contains this text")
    report.add_argument("--jobs", type=int, default=None, help="compile processes (default: one per core)")
    report.add_argument("--full", action="store_true", help="one line per launch configuration (default: one per kernel)")
    report.add_argument("--out", default="report-results", help="folder for the CSVs and the plot (default: %(default)s)")
    report.set_defaults(run=cmd_report)
    proof = sub.add_parser("gpu-proof", help="on a GPU: environment, ceilings, the test suite and the focused "
                                             "benchmarks in one command (--dry-run rehearses it on the CPU)")
    from .gpu_proof import add_arguments as add_proof_arguments

    add_proof_arguments(proof)
    proof.set_defaults(run=cmd_gpu_proof)
    from . import demo_seq2seq

    demos = sub.add_parser("demo", help="train a model on our kernels end to end").add_subparsers(dest="demo",
                                                                                                required=True)
    seq2seq = demos.add_parser("seq2seq", help="attention seq2seq: human-written dates -> ISO dates")
    demo_seq2seq.add_arguments(seq2seq)
    seq2seq.set_defaults(run=demo_seq2seq.run)
    translate = demos.add_parser("translate", help="rewrite dates with a checkpoint from `demo seq2seq --out`")
    demo_seq2seq.add_translate_arguments(translate)
    translate.set_defaults(run=demo_seq2seq.run_translate)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
