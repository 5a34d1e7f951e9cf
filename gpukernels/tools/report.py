"""``gpukernels report``: the static GPU report, made without a GPU.

Three kinds of figure, kept apart in every table, CSV column name and plot label:
- compiled facts: registers, spill/local bytes, shared memory and the widest global load of
  each kernel at each launch configuration, from the sm_80/sm_90 cubins (``gpukernels.tools.verify``);
- estimates and model figures: occupancy from those facts and the SM limits
  (``report_occupancy``), and the bytes an op must move (the ``bytes_moved`` of its
  benchmark cases, from each family's bytes model in ``benchmarks/``);
- measurements: the bytes PyTorch eager's aten ops move for the same call, read from the
  PyTorch profiler on the CPU (``report_bytes``);
- predictions: the speed-up on a bandwidth-bound GPU that the ratio of those bytes implies;
- the SDPA kernels' inner-loop instructions per FLOP, read from the same cubins' SASS, beside
  Triton's fused-attention tutorial measured the same way (``report_inner_loop``).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from . import report_inner_loop as inner_loop
from .report_occupancy import Occupancy, estimate
from .verify.report import CompileRow, gate_summary

# Below this many flops per byte an op is bandwidth-bound on A100/H100 (their ridge points,
# peak flop/s over bandwidth, lie between about 150 and 300 flop/byte).
MEMORY_BOUND_INTENSITY = 100.0


# ---------------------------------------------------------------------------------------------
# Kernels: compiled facts and estimated occupancy


def compile_rows(backend: str = "all", name: str | None = None, config: str | None = None,
                 jobs: int | None = None) -> list[CompileRow]:
    """Compile rows from the gate's own code, narrowed by kernel name and Triton config label."""
    rows: list[CompileRow] = []
    if backend in ("all", "triton"):
        from .verify import triton_aot

        rows += triton_aot.compile_all(name, jobs, config)
    if backend in ("all", "cupy"):
        from .verify import nvrtc

        rows += nvrtc.compile_all(name)
    return rows


def warps_per_block(row: CompileRow) -> int | None:
    """Triton configs carry ``warps=N``; CuPy kernels launch ``THREADS`` threads per block."""
    if row.backend == "triton":
        for part in row.config.split(","):
            if part.startswith("warps="):
                return int(part.removeprefix("warps="))
        return None
    from gpukernels.cupy._module import THREADS

    return THREADS // 32


@dataclass
class KernelLine:
    row: CompileRow
    warps: int | None
    occupancy: Occupancy | None


def kernel_lines(rows: list[CompileRow]) -> list[KernelLine]:
    lines = []
    for row in rows:
        warps = warps_per_block(row)
        known = row.compiled and warps and row.registers is not None
        lines.append(KernelLine(row, warps, estimate(row.target, row.registers, warps, row.shared_bytes or 0)
                                if known else None))
    return lines


KERNEL_COLUMNS = ("backend", "kernel", "config", "target", "compiled_status", "compiled_registers",
                  "compiled_spill_bytes", "compiled_shared_bytes", "compiled_widest_load_bits",
                  "compiled_matrix_instruction", "compiled_tile_copies",
                  "launch_warps_per_block", "estimated_blocks_per_sm", "estimated_occupancy_pct",
                  "estimated_limiter")
# The CSV also names the launch specialisation each Triton build had (too wide for a terminal).
KERNEL_CSV_COLUMNS = (*KERNEL_COLUMNS, "launch_divisible_args", "launch_constant_args")


def kernel_record(line: KernelLine) -> dict:
    r, occ = line.row, line.occupancy
    return dict(zip(KERNEL_CSV_COLUMNS, (
        r.backend, r.kernel, r.config, f"sm_{r.target}", r.status(),
        r.registers, r.spill_bytes, r.shared_bytes, r.load_bits, r.matrix, r.tile_copies, line.warps,
        occ and occ.blocks_per_sm, occ and round(100 * occ.fraction, 1), occ and occ.limiter,
        " ".join(r.divisible_args), " ".join(r.constant_args))))


# ---------------------------------------------------------------------------------------------
# Bytes: the op's model vs PyTorch eager's ops, and the speed-up the ratio predicts


def memory_bound(case) -> bool:
    if not case.bytes_moved:
        return False
    return not case.flops or case.flops / case.bytes_moved < MEMORY_BOUND_INTENSITY


@dataclass
class BytesLine:
    family: str
    op: str
    mode: str
    dtype: str
    size: str
    model_bytes: int
    eager_bytes: int | None
    eager_ops: str
    note: str = ""

    @property
    def predicted_speedup(self) -> float | None:
        return self.eager_bytes / self.model_bytes if self.eager_bytes else None


def _wanted(case, name: str | None) -> bool:
    """The kernel filter also picks ops: "gelu" and "activation_forward[gelu]" both pick gelu
    (the second picks the whole activation family, whose kernels the name belongs to)."""
    return not name or any(name in text or text in name for text in (case.op, case.family))


def bytes_lines(cases, name: str | None = None) -> list[BytesLine]:
    """One line per (family, op, mode, dtype) of the memory-bound cases, at its smallest size:
    bytes per call scale with the size for these ops, so one size shows the ratio."""
    from .report_bytes import eager_ops

    smallest: dict[tuple, object] = {}
    for case in cases:
        key = (case.family, case.op, case.mode, case.dtype)
        if memory_bound(case) and _wanted(case, name) and (key not in smallest or case.work < smallest[key].work):
            smallest[key] = case
    lines = []
    for case in smallest.values():
        line = BytesLine(case.family, case.op, case.mode, case.dtype, case.size, case.bytes_moved, None, "")
        if case.eager not in case.providers:
            line.note = f"no eager provider: the case names {case.eager!r}, which it does not register"
            lines.append(line)
            continue
        try:
            fn = case.providers[case.eager](case.setup("cpu"))
            fn()  # first calls allocate state (optimizers) and load code: not part of a call
            ops = eager_ops(fn)
            line.eager_bytes = sum(op.total for op in ops)
            line.eager_ops = " ".join(op.name.removeprefix("aten::") for op in ops)
        except Exception as exc:  # a case that cannot run eagerly on the CPU says so in the report
            line.note = f"eager not profiled: {type(exc).__name__}: {exc}".splitlines()[0]
        lines.append(line)
    return lines


BYTES_COLUMNS = ("family", "op", "mode", "dtype", "size", "model_bytes_required", "measured_eager_bytes",
                 "measured_eager_aten_ops", "predicted_speedup_bandwidth_bound", "note")


def bytes_record(line: BytesLine) -> dict:
    speedup = line.predicted_speedup
    return dict(zip(BYTES_COLUMNS, (line.family, line.op, line.mode, line.dtype, line.size, line.model_bytes,
                                    line.eager_bytes, line.eager_ops, None if speedup is None else round(speedup, 3),
                                    line.note)))


# ---------------------------------------------------------------------------------------------
# Output


# Short terminal headers; the letter says what kind of figure a column holds (see LEGEND).
SHORT = {"compiled_status": "C:gate", "compiled_registers": "C:regs", "compiled_spill_bytes": "C:spill",
         "compiled_shared_bytes": "C:smem", "compiled_widest_load_bits": "C:load bits", "compiled_gate_passed": "C:gate passed",
         "compiled_matrix_instruction": "C:mma", "compiled_tile_copies": "C:tiles",
         "launch_warps_per_block": "warps", "estimated_blocks_per_sm": "E:blocks/SM",
         "estimated_occupancy_pct": "E:occupancy%", "estimated_limiter": "E:limited by",
         "model_bytes_required": "model bytes", "measured_eager_bytes": "M:eager bytes",
         "measured_eager_aten_ops": "M:eager aten ops", "predicted_speedup_bandwidth_bound": "P:speed-up"}
LEGEND = ("C: compiled fact (sm_80/sm_90 cubins)  E: estimate (occupancy calculator)  "
          "model: the op's bytes model  M: measured (PyTorch profiler, CPU)  P: prediction")


def _format(header, records, short: dict[str, str] = SHORT) -> str:
    table = [tuple(short.get(c, c) for c in header)]
    table += [tuple("-" if r[c] is None else str(r[c]) for c in header) for r in records]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


SUMMARY_COLUMNS = ("backend", "kernel", "target", "configs", "compiled_gate_passed", "compiled_registers",
                   "compiled_spill_bytes", "compiled_shared_bytes", "compiled_widest_load_bits",
                   "compiled_matrix_instruction", "compiled_tile_copies", "estimated_occupancy_pct")


def _span(values) -> str | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _kinds(values) -> str | None:
    """The distinct values over a kernel's configurations, in first-seen order, "/"-joined."""
    seen = list(dict.fromkeys(v for v in values if v is not None))
    return "/".join(seen) if seen else None


def summary_records(kernels: list[KernelLine]) -> list[dict]:
    """One record per (backend, kernel, target): the range of each figure over its configs."""
    groups: dict[tuple, list[KernelLine]] = {}
    for k in kernels:
        groups.setdefault((k.row.backend, k.row.kernel, k.row.target), []).append(k)
    first_seen = {key[:2]: i for i, key in reversed(list(enumerate(groups)))}
    records = []
    for (backend, kernel, target), lines in sorted(groups.items(), key=lambda g: (first_seen[g[0][:2]], g[0][2])):
        rows = [k.row for k in lines]
        records.append(dict(zip(SUMMARY_COLUMNS, (
            backend, kernel, f"sm_{target}", len(rows), f"{sum(r.ok for r in rows)}/{len(rows)}",
            _span(r.registers for r in rows), _span(r.spill_bytes for r in rows),
            _span(r.shared_bytes for r in rows), _span(r.load_bits for r in rows),
            _kinds(r.matrix for r in rows), _kinds(r.tile_copies for r in rows),
            _span(k.occupancy and round(100 * k.occupancy.fraction, 1) for k in lines)))))
    return records


def format_report(kernels: list[KernelLine], byte_lines: list[BytesLine], full: bool = False,
                  loop_records: list[dict] | None = None) -> str:
    if full:
        kernel_table = _format(KERNEL_COLUMNS, [kernel_record(k) for k in kernels])
    else:
        kernel_table = _format(SUMMARY_COLUMNS, summary_records(kernels)) + (
            "\n(ranges over each kernel's launch configurations; --full prints one line per "
            "configuration, report_kernels.csv always has them)")
    parts = [
        LEGEND,
        "",
        "KERNELS. compiled_*: facts read from the sm_80/sm_90 builds (ptxas via Triton/NVRTC, cuobjdump; matrix "
        "instruction and tile copies from Triton's PTX, CuPy's SASS), Triton kernels built with the specialisation "
        "their typical and worst-case launches get. "
        "estimated_*: occupancy from those facts and the SM limits, for the block size the launch code uses.",
        kernel_table if kernels else "(no kernel matches)",
        "",
        "BYTES PER CALL (memory-bound ops). model_*: what the op must move (its benchmark bytes model). "
        "measured_*: what PyTorch eager's aten ops move for the same call, from the PyTorch profiler on the CPU. "
        "predicted_*: eager bytes / model bytes, the speed-up on a bandwidth-bound GPU if both run at the same "
        "fraction of its bandwidth. A prediction, not a GPU measurement.",
        _format(BYTES_COLUMNS, [bytes_record(b) for b in byte_lines]) if byte_lines else "(no memory-bound op matches)",
    ]
    shown = inner_loop.terminal_records(loop_records or [])
    if shown:
        parts += ["", inner_loop.HEADING, _format(inner_loop.TERMINAL_COLUMNS, shown, inner_loop.SHORT)]
    return "\n".join(parts)


def write_csv(path: Path, columns, records) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    return path


def plot(kernels: list[KernelLine], byte_lines: list[BytesLine], path: Path) -> Path:
    """One figure: the predicted speed-ups (left) and the lowest estimated occupancy of each
    kernel over its configurations, per target (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lowest: dict[tuple[str, int], float] = {}
    for k in kernels:
        if k.occupancy:
            key = (k.row.kernel, k.row.target)
            lowest[key] = min(lowest.get(key, 1.0), k.occupancy.fraction)
    names = sorted({name for name, _ in lowest})

    predicted = [b for b in byte_lines if b.predicted_speedup]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, max(4.0, 0.16 * max(len(predicted), len(names)))))
    labels = [f"{b.op} {b.mode} {b.dtype}" for b in predicted]
    left.barh(range(len(predicted)), [b.predicted_speedup for b in predicted], color="tab:blue")
    left.set_yticks(range(len(predicted)), labels, fontsize=7)
    left.axvline(1.0, color="k", linewidth=0.8)
    left.set_xlabel("predicted speed-up over PyTorch eager (eager bytes / required bytes)")
    left.set_title("PREDICTION for a bandwidth-bound GPU", fontsize=9)

    for offset, target in ((-0.2, 80), (0.2, 90)):
        right.barh([i + offset for i in range(len(names))], [100 * lowest.get((n, target), 0) for n in names],
                   height=0.4, label=f"sm_{target}")
    right.set_yticks(range(len(names)), names, fontsize=6)
    right.set_xlabel("estimated occupancy, % of max warps (lowest over configs)")
    right.set_title("ESTIMATE from compiled registers and shared memory", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args) -> int:
    from .bench import BenchInputError, check_writable

    try:
        out = check_writable(Path(args.out))
    except BenchInputError as exc:
        print(f"gpukernels report: error: {str(exc)}", file=sys.stderr)
        return 2
    rows = compile_rows(args.backend, args.filter, args.config, args.jobs)
    from gpukernels.benchmarks.registry import all_cases

    byte_lines = bytes_lines(all_cases(), args.filter)
    if not rows and not byte_lines:
        print(f"gpukernels report: error: no kernel or op matches {args.filter!r}", file=sys.stderr)
        return 2
    kernels = kernel_lines(rows)
    loop_records = inner_loop.inner_loop_records(rows)
    print(format_report(kernels, byte_lines, args.full, loop_records))
    written = [write_csv(out / "report_kernels.csv", KERNEL_CSV_COLUMNS, [kernel_record(k) for k in kernels]),
               write_csv(out / "report_bytes.csv", BYTES_COLUMNS, [bytes_record(b) for b in byte_lines])]
    if loop_records:
        written.append(write_csv(out / "report_inner_loop.csv", inner_loop.INNER_LOOP_COLUMNS, loop_records))
    try:
        written.append(plot(kernels, byte_lines, out / "report.png"))
    except ImportError as exc:
        print(f"no plot: {exc} (pip install 'gpukernels[bench]')", file=sys.stderr)
    passed, summary = gate_summary(rows)
    print(f"\n{summary}; wrote " + ", ".join(map(str, written)))
    return 0 if passed else 1
