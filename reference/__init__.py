"""NumPy reference implementations: the correctness oracle and the CPU fallback.

Installed as ``gpukernels.reference``. One module per op family, a function per forward and
per backward, written as a textbook writes the formulas. Dtype-generic: float64 in gives
float64 out, float32 gives float32, float16 is computed in float32 and rounded once.
"""
