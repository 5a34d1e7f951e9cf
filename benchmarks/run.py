"""Run registered benchmark cases and print a table: ``python -m gpukernels.benchmarks.run``.

On a GPU: medians and 20th/80th percentiles from ``do_bench``, GB/s from the bytes each op must
move and % of the copy bandwidth measured at the start. Without one: the CPU fallback (the NumPy
reference) against PyTorch CPU, same cases, same run. GPU numbers need a GPU.
"""

from __future__ import annotations

import argparse
import sys

from .harness import copy_bandwidth_gbs, time_on
from .registry import all_cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpukernels.benchmarks.run", description=__doc__)
    parser.add_argument("--op", help="only this op")
    parser.add_argument("--dtype", help="only this dtype")
    parser.add_argument("--mode", choices=("fwd", "bwd", "full"))
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = [c for c in all_cases() if device in c.devices
             and (args.op is None or c.op == args.op)
             and (args.dtype is None or c.dtype == args.dtype)
             and (args.mode is None or c.mode == args.mode)]
    if not cases:
        print("no benchmark case matches", file=sys.stderr)
        return 2
    peak = copy_bandwidth_gbs(device)
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (no GPU: GPU numbers need a GPU)"
    print(f"device: {where}; measured copy bandwidth {peak:.1f} GB/s")
    print(f"{'case':<40} {'provider':<11} {'median ms':>10} {'p20':>8} {'p80':>8} {'GB/s':>8} {'% copy':>7} {'speed-up':>8}")
    for case in cases:
        inputs = case.setup(device)
        timings = {name: time_on(device, make(inputs)) for name, make in case.providers.items()}
        baseline = timings.get("torch")
        for name, t in timings.items():
            gbs = case.bytes_moved / (t.median_ms * 1e-3) / 1e9 if case.bytes_moved else float("nan")
            speedup = baseline.median_ms / t.median_ms if baseline else float("nan")
            print(f"{case.name:<40} {name:<11} {t.median_ms:>10.4f} {t.p20_ms:>8.4f} {t.p80_ms:>8.4f} "
                  f"{gbs:>8.1f} {100 * gbs / peak:>6.1f}% {speedup:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
