"""Benchmark cases and harness, installed as ``gpukernels.benchmarks``.

Each op family registers its cases in a module of this package (``activation.py``, ...);
``registry.all_cases()`` imports them all. A case says what to time for each provider (ours
and the baselines users would otherwise use) and how many bytes or flops the op must move,
so throughput is computed from the work required, not from what a kernel happens to do.
"""
