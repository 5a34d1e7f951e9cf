"""The GPU's approximate fp32 math, emulated in Triton's interpreter for tests on the CPU.

Compiled for an NVIDIA GPU, fp32 ``tl.exp(x)`` (and so ``tl.sigmoid``) becomes ``ex2.approx.f32``
of the fp32 product ``x * log2(e)``: the instruction errs by up to 2^-22 relative, and rounding
the product adds up to |x| * 2^-24. fp32 ``a / b`` becomes ``div.full.f32``, up to 2 ulp off;
``tl.erf`` calls libdevice's ``erff``, up to 2 ulp, except that it saturates: where erf rounds
to +-1 it returns +-1, and it never goes beyond. ``tl.math.div_rn`` and the other arithmetic round correctly, as NumPy does. Triton's interpreter computes all of them with NumPy, correctly
rounded, so a kernel that passes there can still miss a tolerance on the GPU.

``gpu_approximations`` swaps the interpreter's exp, division and erf for versions that err by
the most the GPU allows, in a chosen direction (up, down, or a random sign per element), so the
very kernel source runs with the GPU's error budget. Interpreter only: a compiled kernel never
calls these builder methods.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

EX2_RELATIVE = 2.0**-22  # ex2.approx.f32
DIV_ULPS = 2  # div.full.f32
ERF_ULPS = 2  # libdevice erff
LOG2E = np.float32(1.4426950408889634)

# The error directions a test runs with: each instruction's error up, down, or mixed per element.
DIRECTIONS = {"up": (1, 1), "down": (-1, -1), "exp-up-div-down": (1, -1), "exp-down-div-up": (-1, 1),
              "random": ("random", "random")}


def _signs(direction, shape, rng: np.random.Generator) -> np.ndarray:
    if direction == "random":
        return rng.choice(np.array([-1.0, 1.0]), size=shape)
    return np.full(shape, float(direction))


def nudge_ulps(values: np.ndarray, ulps: int, signs: np.ndarray) -> np.ndarray:
    """``values`` moved ``ulps`` units in the last place up (sign +1) or down (-1); zeros,
    infinities and NaN stay as they are (the instructions keep those exact)."""
    moved = values
    toward = np.where(signs > 0, np.inf, -np.inf).astype(values.dtype)
    for _ in range(ulps):
        moved = np.nextafter(moved, toward)
    return np.where(np.isfinite(values) & (values != 0), moved, values).astype(values.dtype)


def approx_exp(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """exp as ex2.approx.f32(fl(x * log2e)), off by the instruction's whole error budget."""
    product = (x * LOG2E).astype(np.float32)  # the rounding the GPU does before ex2
    with np.errstate(over="ignore", under="ignore"):
        return (np.exp2(product.astype(np.float64)) * (1.0 + signs * EX2_RELATIVE)).astype(np.float32)


@contextlib.contextmanager
def gpu_approximations(exp_direction=1, div_direction=1, seed: int = 0) -> Iterator[None]:
    """Inside the block, interpreted kernels compute fp32 exp, ``/`` and erf with the GPU's
    worst-case errors; ``*_direction`` is 1 (results too large), -1 (too small) or "random"."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    exact = {name: getattr(builder, name) for name in ("create_exp", "create_fdiv", "create_erf")}
    rng = np.random.default_rng(seed)

    def fp32(handle) -> bool:
        return handle.data.dtype == np.float32

    def create_exp(self, arg):
        if not fp32(arg):  # fp64 exp is precise on the GPU
            return exact["create_exp"](self, arg)
        signs = _signs(exp_direction, arg.data.shape, rng)
        return interpreter.TensorHandle(approx_exp(arg.data, signs), arg.dtype.scalar)

    def create_fdiv(self, lhs, rhs):
        result = exact["create_fdiv"](self, lhs, rhs)
        if not fp32(result):
            return result
        signs = _signs(div_direction, result.data.shape, rng)
        return interpreter.TensorHandle(nudge_ulps(result.data, DIV_ULPS, signs), result.dtype)

    def create_erf(self, arg):
        result = exact["create_erf"](self, arg)
        if not fp32(result):
            return result
        signs = _signs(exp_direction, result.data.shape, rng)
        off = np.clip(nudge_ulps(result.data, ERF_ULPS, signs), -1.0, 1.0)
        off = np.where(np.abs(result.data) == 1.0, result.data, off).astype(np.float32)
        return interpreter.TensorHandle(off, result.dtype)

    patched = {"create_exp": create_exp, "create_fdiv": create_fdiv, "create_erf": create_erf}
    try:
        for name, function in patched.items():
            setattr(builder, name, function)
        yield
    finally:
        for name, function in exact.items():
            setattr(builder, name, function)
