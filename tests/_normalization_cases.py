"""Shared by the normalisation tests: the four ops run through the public API (any backend) and
the float64 reference they are held to."""

from __future__ import annotations

import numpy as np

import gpukernels as gk
from _helpers import NORM_TOL, as_float64, assert_close
from gpukernels.reference import normalization as ref

OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
EPS = 1e-5


def is_rms(op: str) -> bool:
    return "rms" in op


def is_add(op: str) -> bool:
    return op.startswith("add_")


def run_op(op, x, residual, weight, bias, dy, ds, normalized_shape):
    """Forward with statistics, then backward: a dict of every output and gradient."""
    rms, add = is_rms(op), is_add(op)
    forward = getattr(gk, op)
    args = (x, residual) if add else (x,)
    params = (weight,) if rms else (weight, bias)
    results = forward(*args, normalized_shape, *params, EPS, return_stats=True)
    out = {"y": results[0], "s": results[1] if add else None, "rstd": results[-1],
           "mean": None if rms else results[-2]}
    source = out["s"] if add else x
    stats = (out["rstd"],) if rms else (out["mean"], out["rstd"])
    backward = getattr(gk, f"{op}_backward")
    if add:
        grads = backward(dy, ds, source, normalized_shape, *stats, *params)
    else:
        grads = backward(dy, source, normalized_shape, *stats, *params)
    out["dx"], out["dw"] = grads[0], grads[1]
    out["db"] = None if rms else grads[2]
    return out


def expected(op, x64, r64, w64, b64, dy64, ds64, normalized_ndim, source64=None):
    """The float64 reference; ``source64`` (the kernel's own rounded sum, for add variants) is
    what the statistics and the backward are taken over, as autograd would."""
    rms, add = is_rms(op), is_add(op)
    src = source64 if source64 is not None else (x64 + r64 if add else x64)
    y, _, mean, rstd = ref._forward(src, None, w64, None if rms else b64, normalized_ndim, EPS, rms)
    dx, dw, db = ref._backward(dy64, ds64 if add else None, src, mean, rstd, w64, normalized_ndim, rms,
                               not rms and b64 is not None)
    return {"y": y, "s": x64 + r64 if add else None, "mean": mean, "rstd": rstd, "dx": dx, "dw": dw, "db": db}


def check_outputs(op, got, want, dtype, check_sum=True):
    """Every output against the reference at DESIGN.md's tolerances (statistics in fp32)."""
    for key in ("y", "dx", "dw", "db"):
        if want[key] is None:
            assert got[key] is None, key
            continue
        if key == "dx" and is_rms(op) and want["dx"].shape[-1:] == (1,):
            # RMS norm of a row of length 1: dx = rstd g eps / (x^2 + eps), about eps times the
            # size of g rstd, so it is held to the tolerance relative to that size instead
            scale = np.linalg.norm(as_float64(got["dx"]) * 0 + np.abs(want["rstd"]).reshape(-1, 1))
            error = np.linalg.norm(as_float64(got["dx"]).reshape(-1, 1) - want["dx"].reshape(-1, 1))
            assert error <= NORM_TOL[dtype]["reduction"] * max(scale, 1.0), f"dx error {error:.3g}"
            continue
        assert_close(got[key], want[key], dtype, "reduction")
    if is_add(op) and check_sum:
        assert_close(got["s"], want["s"], dtype, "pointwise")  # one rounding of x + r
    stats_dtype = "float64" if dtype == "float64" else "float32"
    for key in ("mean", "rstd"):
        if want[key] is not None:
            assert str(got[key].dtype).removeprefix("torch.") == stats_dtype, key
            assert_close(got[key], want[key], "float32" if dtype != "float64" else "float64", "reduction")


def source_of(op, got, x):
    return as_float64(got["s"]) if is_add(op) else as_float64(x)


def inputs(rng, shape, normalized_ndim, make):
    """Fresh random x, residual, weight, bias, dy, ds via ``make(values)``, and their float64."""
    trailing = shape[len(shape) - normalized_ndim:]
    values = {"x": rng.standard_normal(shape) * 3 + 0.5, "r": rng.standard_normal(shape),
              "w": rng.standard_normal(trailing) + 1.0, "b": rng.standard_normal(trailing),
              "dy": rng.standard_normal(shape), "ds": rng.standard_normal(shape)}
    arrays = {k: make(v) for k, v in values.items()}
    return arrays, {k: as_float64(a) for k, a in arrays.items()}


__all__ = ["OPS", "EPS", "is_rms", "is_add", "run_op", "expected", "check_outputs", "source_of", "inputs"]
