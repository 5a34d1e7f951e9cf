"""``python -m gpukernels.benchmarks.run``: the same as ``gpukernels bench`` (kept so older
instructions work); the runner lives in ``gpukernels.tools.bench`` and ``benchmarks/harness.py``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from gpukernels.tools import bench
    from gpukernels.tools.cli import add_bench_arguments

    parser = argparse.ArgumentParser(prog="python -m gpukernels.benchmarks.run", description=bench.__doc__)
    add_bench_arguments(parser)
    return bench.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
