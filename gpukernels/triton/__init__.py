"""Triton kernels, one module per op family (mirrors ``gpukernels.ops``).

Each module holds its kernels at the top, thin launch helpers in the middle and the functions
the dispatch layer calls (on torch tensors) at the bottom, plus ``compile_cases()``: every
kernel at every launch configuration the launch helpers can pick, for the compile gate
(``gpukernels check``), which finds the modules of this package by itself.
"""
