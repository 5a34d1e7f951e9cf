"""``gpukernels bench``: choose cases from the registry, time them, write the results.

Results are long-format rows, one per (op, provider, mode, size, dtype, metric), so a CSV from
any run can be filtered, plotted or compared without knowing which metrics it holds. Metrics:
``time_ms`` (measured), ``GB/s`` and ``TFLOP/s`` (from the bytes or flops the op must move, not
what a kernel happens to move), ``pct_copy_bw`` / ``pct_matmul_peak`` (against peaks measured
at the start of the same run), ``speedup_vs_<baseline>`` (baseline time / our time, same run).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

COLUMNS = ("op", "provider", "mode", "size", "dtype", "metric", "median", "p20", "p80",
           "device", "versions", "timestamp")
KEY = ("op", "provider", "mode", "size", "dtype", "metric")

DTYPE_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
                 "bf16": "bfloat16"}
MODE_ALIASES = {"forward": "fwd", "backward": "bwd", "fwd+bwd": "full"}

DEVICES = ("cuda", "cpu")
CPU_NOTE = ("CPU run: these are CPU timings of the CPU fallback (gpukernels' NumPy reference) "
            "against PyTorch CPU, same cases, same run. GPU numbers need a GPU: run "
            "`gpukernels bench --device cuda` on a machine with CUDA.")


class BenchInputError(ValueError):
    """A filter, path or file the user gave that cannot be used; the message says why."""


# ---------------------------------------------------------------------------------------------
# Choosing the device and the cases


def choose_device(requested: str | None, cuda_available: bool) -> str:
    """``--device``: as asked (cuda only where torch sees a GPU), else cuda when there is one."""
    if requested is None:
        return "cuda" if cuda_available else "cpu"
    if requested not in DEVICES:
        raise BenchInputError(f"--device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cuda" and not cuda_available:
        raise BenchInputError("--device cuda: torch sees no CUDA device here (run with --device cpu for the "
                              "CPU comparison)")
    return requested


def _split(text: str | None, aliases: dict[str, str] | None = None) -> list[str] | None:
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    return [(aliases or {}).get(v.lower(), v) for v in values]


def _size_matches(wanted: str, label: str) -> bool:
    parts = label.split(",")
    return wanted == label or wanted in parts or wanted in (p.split("=")[-1] for p in parts)


def _check_known(option: str, wanted: list[str] | None, known: Iterable[str]) -> None:
    known = sorted(set(known))
    unknown = [w for w in wanted or () if w not in known]
    if unknown:
        listed = ", ".join(known) if len(known) <= 40 else ", ".join(known[:40]) + ", ..."
        raise BenchInputError(f"unknown {option} {', '.join(map(repr, unknown))}; known: {listed}")


def select_cases(cases, device: str, op=None, dtype=None, mode=None, size=None, everything=False):
    """The cases to run on ``device``. ``op``/``dtype``/``mode``/``size`` are comma-separated
    filters (dtype accepts fp32/fp16/bf16); an unknown value raises BenchInputError listing the
    known ones. Without ``everything`` it is the short default set: per (op, mode), one dtype
    (float32 on the CPU, bfloat16 on a GPU, else the first registered) and the smallest and
    largest sizes, skipping cases registered with ``in_default_set=False``."""
    ops, dtypes = _split(op), _split(dtype, DTYPE_ALIASES)
    modes, sizes = _split(mode, MODE_ALIASES), _split(size)
    _check_known("op", ops, (c.op for c in cases))
    _check_known("dtype", dtypes, (c.dtype for c in cases))
    _check_known("mode", modes, ("fwd", "bwd", "full"))
    chosen = [c for c in cases if device in c.devices
              and (ops is None or c.op in ops) and (dtypes is None or c.dtype in dtypes)
              and (modes is None or c.mode in modes)]
    if sizes is not None:
        labels = {c.size for c in chosen}
        unknown = [s for s in sizes if not any(_size_matches(s, label) for label in labels)]
        if unknown:
            _check_known("size", unknown, labels)
        chosen = [c for c in chosen if any(_size_matches(s, c.size) for s in sizes)]
    if not everything:
        chosen = _default_set(chosen, device, explicit_dtype=dtypes is not None,
                              explicit_size=sizes is not None)
    if not chosen:
        raise BenchInputError(f"no benchmark case matches these filters on {device}")
    return chosen


def _default_set(cases, device: str, explicit_dtype: bool, explicit_size: bool):
    preferred = "float32" if device == "cpu" else "bfloat16"
    groups: dict[tuple[str, str, str], list] = {}
    for c in cases:
        if c.in_default_set:
            groups.setdefault((c.family, c.op, c.mode), []).append(c)
    chosen = []
    for group in groups.values():
        if not explicit_dtype:
            dtypes = [c.dtype for c in group]
            keep = preferred if preferred in dtypes else dtypes[0]
            group = [c for c in group if c.dtype == keep]
        if not explicit_size:
            # sizes of equal work are ordered by name: a set's order would change with the hash seed
            by_work = sorted({(c.work, c.size) for c in group})
            ends = {by_work[0][1], by_work[-1][1]}
            group = [c for c in group if c.size in ends]
        chosen.extend(group)
    return chosen


# ---------------------------------------------------------------------------------------------
# Measurements -> long rows


def versions() -> str:
    import importlib

    import gpukernels

    found = [f"gpukernels {gpukernels.__version__}", f"python {platform.python_version()}"]
    for module in ("numpy", "torch", "triton"):
        try:
            found.append(f"{module} {importlib.import_module(module).__version__}")
        except Exception:  # an optional library missing is a fact to record, not an error
            found.append(f"{module} -")
    return "; ".join(found)


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    import os

    return f"CPU {platform.machine()} ({os.cpu_count()} cores)"


def _throughput(amount: float, scale: float, timing) -> tuple[float, float, float]:
    # The 20th percentile of time is the 80th of throughput: keep p20 <= median <= p80.
    return tuple(amount / (t * 1e-3) / scale for t in (timing.median_ms, timing.p80_ms, timing.p20_ms))


def to_rows(measurements, peaks, device: str, stamp: str, version_text: str) -> list[dict]:
    from gpukernels.benchmarks.registry import is_ours

    where = device_name(device)
    rows: list[dict] = []

    def add(m, metric, values):
        rows.append(dict(op=m.case.op, provider=m.provider, mode=m.case.mode, size=m.case.size,
                         dtype=m.case.dtype, metric=metric, median=values[0], p20=values[1],
                         p80=values[2], device=where, versions=version_text, timestamp=stamp))

    by_case: dict[str, dict[str, object]] = {}
    for m in measurements:
        by_case.setdefault(m.case.name, {})[m.provider] = m
        if m.timing is None:
            add(m, "error: " + m.error, (math.nan, math.nan, math.nan))
            continue
        t = m.timing
        add(m, "time_ms", (t.median_ms, t.p20_ms, t.p80_ms))
        if m.case.bytes_moved:
            gbs = _throughput(m.case.bytes_moved, 1e9, t)
            add(m, "GB/s", gbs)
            add(m, "pct_copy_bw", tuple(100 * v / peaks.copy_gbs for v in gbs))
        if m.case.flops:
            tflops = _throughput(m.case.flops, 1e12, t)
            add(m, "TFLOP/s", tflops)
            peak = peaks.matmul_for(m.case.dtype)
            if peak:
                add(m, "pct_matmul_peak", tuple(100 * v / peak for v in tflops))
    for providers in by_case.values():
        for ours in (m for name, m in providers.items() if is_ours(name) and m.timing):
            for base in (m for name, m in providers.items() if not is_ours(name) and m.timing):
                b, o = base.timing, ours.timing
                add(ours, f"speedup_vs_{base.provider}",
                    (b.median_ms / o.median_ms, b.p20_ms / o.p80_ms, b.p80_ms / o.p20_ms))
    return rows


# ---------------------------------------------------------------------------------------------
# Threads on the CPU


def check_threads(value: str | None, device: str) -> int | None:
    """``--threads`` as a whole number >= 1, and only for a CPU run (a GPU run's threads only
    launch kernels)."""
    if value is None:
        return None
    from gpukernels.reference._parallel import parse_threads

    if device != "cpu":
        raise BenchInputError("--threads applies to CPU runs (--device cpu) only")
    threads = parse_threads(value)
    if threads is None:
        raise BenchInputError(f"--threads must be a whole number >= 1, got {value!r}")
    return threads


@contextlib.contextmanager
def threads_on_both_sides(threads: int | None):
    """Both sides on ``threads`` threads while the block runs (None: left as they are):
    PyTorch's intra-op pool, the reference's pool (``GPUKERNELS_NUM_THREADS``, read at every
    call) and the OpenBLAS that NumPy bundles. With 1, each side's time is the work it does,
    without its threading; the previous settings come back afterwards."""
    if threads is None:
        yield
        return
    import torch

    from gpukernels.reference._parallel import ENV_VAR, openblas_threads

    saved_torch, saved_env = torch.get_num_threads(), os.environ.get(ENV_VAR)
    blas = openblas_threads()
    saved_blas = blas[0]() if blas is not None else None
    torch.set_num_threads(threads)
    os.environ[ENV_VAR] = str(threads)
    if blas is not None:
        blas[1](threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved_torch)
        if saved_env is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved_env
        if blas is not None:
            blas[1](saved_blas)


def threads_note(threads: int | None) -> str:
    import torch

    from gpukernels.reference._parallel import num_threads

    if threads is None:
        return f"each side's default (PyTorch {torch.get_num_threads()}, the reference's pool {num_threads()})"
    return f"{threads} each side (--threads {threads})"


# ---------------------------------------------------------------------------------------------
# Files


def check_writable(out: Path) -> Path:
    """Create ``out`` and prove a file can be written there, before anything is timed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".gpukernels-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchInputError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    return out


def write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(rows: list[dict], path: Path, meta: dict) -> Path:
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    path.write_text(json.dumps({"meta": meta, "columns": list(COLUMNS), "rows": clean}, indent=1))
    return path


def read_csv(path: Path) -> list[dict]:
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in KEY + ("median",) if c not in (reader.fieldnames or ())]
            if missing:
                raise BenchInputError(f"--compare {path}: not a gpukernels bench CSV (missing columns: "
                                      f"{', '.join(missing)})")
            return list(reader)
    except OSError as exc:
        raise BenchInputError(f"--compare {path}: cannot read it ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------------------------------
# Comparing with an earlier run


@dataclass
class Comparison:
    key: tuple[str, ...]
    old_ms: float
    new_ms: float

    @property
    def ratio(self) -> float:
        """Old time / new time: above 1 this run is faster."""
        return self.old_ms / self.new_ms


def compare(old_rows: list[dict], new_rows: list[dict]) -> list[Comparison]:
    """Median times of the (op, provider, mode, size, dtype) present in both runs."""
    def times(rows):
        found = {}
        for r in rows:
            if r["metric"] == "time_ms":
                try:
                    found[tuple(r[k] for k in KEY[:-1])] = float(r["median"])
                except (TypeError, ValueError):
                    continue
        return found

    old, new = times(old_rows), times(new_rows)
    return [Comparison(k, old[k], new[k]) for k in new if k in old and old[k] > 0 and new[k] > 0]


def format_comparison(comparisons: list[Comparison]) -> str:
    table = [("op", "provider", "mode", "size", "dtype", "old ms", "new ms", "old/new")]
    for c in comparisons:
        table.append((*c.key, f"{c.old_ms:.4g}", f"{c.new_ms:.4g}", f"{c.ratio:.2f}x"))
    return _format(table)


# ---------------------------------------------------------------------------------------------
# The terminal table


def format_table(rows: list[dict]) -> str:
    """One line per (case, provider): times, throughput, % of peak, speed-ups."""
    lines: dict[tuple, dict[str, object]] = {}
    for r in rows:
        line = lines.setdefault((r["op"], r["mode"], r["dtype"], r["size"], r["provider"]), {})
        line[r["metric"]] = r["median"] if not r["metric"].startswith("time") else (r["median"], r["p20"], r["p80"])
    table = [("op", "mode", "dtype", "size", "provider", "median ms", "p20", "p80", "throughput", "% peak", "speed-up")]
    for (op, mode, dtype, size, provider), m in lines.items():
        error = next((k for k in m if k.startswith("error")), None)
        if error:
            table.append((op, mode, dtype, size, provider, error, "", "", "", "", ""))
            continue
        median, p20, p80 = m["time_ms"]
        throughput = (f"{m['TFLOP/s']:.3g} TFLOP/s" if "TFLOP/s" in m
                      else f"{m['GB/s']:.3g} GB/s" if "GB/s" in m else "-")
        pct = m.get("pct_matmul_peak", m.get("pct_copy_bw"))
        speedups = ", ".join(f"{v:.2f}x vs {k.removeprefix('speedup_vs_')}"
                             for k, v in m.items() if k.startswith("speedup_vs_"))
        table.append((op, mode, dtype, size, provider, f"{median:.4g}", f"{p20:.4g}", f"{p80:.4g}",
                      throughput, "-" if pct is None else f"{pct:.1f}%", speedups or "-"))
    return _format(table)


def _format(table: list[tuple]) -> str:
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, stream=None, width: int = 30):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def __call__(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // self.total
        bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r\033[K" + bar)
        else:
            self.stream.write(bar + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# The command


def run(args) -> int:
    """``gpukernels bench``: filters and paths are checked before any timing starts."""
    import torch

    from gpukernels.benchmarks.harness import count_runs, measure_peaks, run_cases
    from gpukernels.benchmarks.registry import all_cases

    try:
        device = choose_device(getattr(args, "device", None), torch.cuda.is_available())
        cases = select_cases(all_cases(), device, args.op, args.dtype, args.mode, args.size, args.all)
        threads = check_threads(getattr(args, "threads", None), device)
        out = check_writable(Path(args.out))
        old = read_csv(Path(args.compare)) if args.compare else None
    except BenchInputError as exc:
        print(f"gpukernels bench: error: {exc}", file=sys.stderr)
        return 2
    cases.sort(key=lambda c: (c.family, c.op, c.mode, c.dtype, c.work))

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"device: {device_name(device)}")
    with threads_on_both_sides(threads):
        if device == "cpu":
            print(CPU_NOTE)
            print(f"threads: {threads_note(threads)}")
        thread_text = threads_note(threads) if device == "cpu" else ""
        peaks = measure_peaks(device)
        print(f"measured at the start of this run: copy bandwidth {peaks.copy_gbs:.1f} GB/s; matmul peak "
              + ", ".join(f"{d} {v:.2f} TFLOP/s" for d, v in peaks.matmul_tflops.items()))
        progress = Progress(count_runs(cases, device))
        min_seconds = 0.2 if device == "cuda" or args.all else 0.1
        measurements = run_cases(cases, device, progress, min_seconds=min_seconds, min_runs=3)
        progress.close()

    rows = to_rows(measurements, peaks, device, stamp, versions())
    print(format_table(rows))
    meta = {"device": device_name(device), "timestamp": stamp, "versions": versions(),
            "copy_gbs": peaks.copy_gbs, "matmul_tflops": peaks.matmul_tflops,
            "note": CPU_NOTE if device == "cpu" else "",
            "threads": thread_text}
    written = [write_csv(rows, out / "bench.csv"), write_json(rows, out / "bench.json", meta)]
    try:
        from gpukernels.tools.bench_plot import plot_throughput

        written += plot_throughput(rows, out / "plots")
    except ImportError as exc:  # matplotlib is the `bench` extra; the numbers still count
        print(f"no plots: {exc} (pip install 'gpukernels[bench]')", file=sys.stderr)
    if old is not None:
        comparisons = compare(old, rows)
        print(f"\ncompared with {args.compare} (old/new median time; above 1 means faster now):")
        print(format_comparison(comparisons) if comparisons else "no case in common with that run")
    print("\nwrote " + ", ".join(str(p) for p in written[:2]) + f" and {len(written) - 2} plot(s)")
    return 1 if any(m.timing is None for m in measurements) else 0
