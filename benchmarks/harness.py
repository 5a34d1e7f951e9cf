"""Timing: ``triton.testing.do_bench`` medians and 20th/80th percentiles on a GPU; the same
quantiles from repeated wall-clock runs on the CPU. Bandwidth is reported against the device's
copy bandwidth measured in the same run."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

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
    q = statistics.quantiles(samples, n=10, method="inclusive")  # deciles: q[1] is p20, q[7] p80
    return Timing(statistics.median(samples), q[1], q[7])


def time_on(device: str, fn: Callable[[], object]) -> Timing:
    return time_gpu(fn) if device == "cuda" else time_cpu(fn)


def copy_bandwidth_gbs(device: str, nbytes: int = 1 << 28) -> float:
    """Measured device-to-device copy bandwidth (bytes read + bytes written per second)."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    timing = time_on(device, lambda: dst.copy_(src))
    return 2 * nbytes / (timing.median_ms * 1e-3) / 1e9
