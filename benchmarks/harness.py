"""Timing and the run loop: ``triton.testing.do_bench`` medians and 20th/80th percentiles on a
GPU, the same quantiles from repeated wall-clock runs on the CPU; the device's copy bandwidth
and matmul peak measured at the start of a run, so every % of peak refers to this machine now.

``gpukernels.tools.bench`` turns the measurements into tables, CSV/JSON and plots.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .registry import BenchCase

QUANTILES = (0.5, 0.2, 0.8)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


def time_gpu(fn: Callable[[], object]) -> Timing:
    import triton.testing

    median, p20, p80 = triton.testing.do_bench(fn, quantiles=list(QUANTILES))
    return Timing(median, p20, p80)


def time_cpu(fn: Callable[[], object], min_seconds: float = 0.2, min_runs: int = 5) -> Timing:
    fn()  # warm-up: first-call allocations, lazy imports
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    if len(samples) == 1:
        return Timing(samples[0], samples[0], samples[0])
    q = statistics.quantiles(samples, n=10, method="inclusive")  # deciles: q[1] is p20, q[7] p80
    return Timing(statistics.median(samples), q[1], q[7])


def time_on(device: str, fn: Callable[[], object], min_seconds: float = 0.2, min_runs: int = 5) -> Timing:
    return time_gpu(fn) if device == "cuda" else time_cpu(fn, min_seconds, min_runs)


# ---------------------------------------------------------------------------------------------
# Peaks of this device, measured at the start of a run


@dataclass
class Peaks:
    copy_gbs: float  # bytes read + bytes written per second by a device-to-device copy
    matmul_tflops: dict[str, float] = field(default_factory=dict)  # per dtype name

    def matmul_for(self, dtype: str) -> float | None:
        return self.matmul_tflops.get(dtype) or self.matmul_tflops.get("float32")


def copy_bandwidth_gbs(device: str, nbytes: int | None = None) -> float:
    """Measured device-to-device copy bandwidth (bytes read + bytes written per second)."""
    import torch

    nbytes = nbytes or (1 << 28 if device == "cuda" else 1 << 26)  # far beyond any cache
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timing = time_on(device, lambda: dst.copy_(src))
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9


def matmul_peak_tflops(device: str, dtype: str, n: int | None = None) -> float:
    """Measured dense matmul throughput, 2 n^3 flops per ``a @ b``, at a size that saturates."""
    import torch

    n = n or (8192 if device == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    timing = time_on(device, lambda: a @ b)
    return 2 * n**3 / (timing.median_ms * 1e-3) / 1e12


def measure_peaks(device: str) -> Peaks:
    # On the CPU only fp32 is measured: its half-precision matmuls are not what a peak means.
    dtypes = ("float32", "bfloat16", "float16") if device == "cuda" else ("float32",)
    return Peaks(copy_bandwidth_gbs(device), {d: matmul_peak_tflops(device, d) for d in dtypes})


# ---------------------------------------------------------------------------------------------
# The run loop


@dataclass
class Measurement:
    case: BenchCase
    provider: str
    timing: Timing | None
    error: str = ""  # why a provider could not run; the run goes on without it


def run_cases(
    cases: Iterable[BenchCase],
    device: str,
    progress: Callable[[str], None] | None = None,
    min_seconds: float = 0.2,
    min_runs: int = 5,
) -> list[Measurement]:
    """Time every provider of every case on ``device``, all in this one run and process.

    A provider that raises is recorded with its error rather than ending the run: one broken
    baseline (say torch.compile without a C++ compiler) should not hide the other numbers.
    """
    results = []
    for case in cases:
        inputs = case.setup(device)
        for provider, make in case.providers.items():
            if not case.runs_on(provider, device):
                continue
            if progress:
                progress(f"{case.name} {provider}")
            try:  # both timers call fn once before timing: warm-up, autotuning, torch.compile
                results.append(Measurement(case, provider, time_on(device, make(inputs), min_seconds, min_runs)))
            except Exception as exc:  # reported in the table and the CSV, never silently dropped
                results.append(Measurement(case, provider, None, f"{type(exc).__name__}: {exc}".splitlines()[0]))
        del inputs
    return results


def count_runs(cases: Iterable[BenchCase], device: str) -> int:
    """How many (case, provider) timings ``run_cases`` will do: the length of the progress bar."""
    return sum(case.runs_on(p, device) for case in cases for p in case.providers)
