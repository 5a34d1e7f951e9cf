"""Activation kernels: one forward and one backward elementwise kernel, the activation chosen
at compile time (``ACT``), fp32 math over fp32/fp16/bf16 storage, one pass over memory."""

from __future__ import annotations

from typing import Iterator

import torch
import triton
import triton.language as tl

from ._launch import CompileCase, check_dtype, elementwise_args, elementwise_launch, iter_elementwise_variants

# ACT codes, the kernels' compile-time switch; the order matches the branches of _forward.
ACT_CODES = {name: code for code, name in enumerate(("sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu_tanh"))}
SAVES_OUTPUT = ("sigmoid", "tanh")  # backward reads y for these, x for the others

# ---------------------------------------------------------------------------------------------
# Math (fp32)
#
# Compiled for an NVIDIA GPU, fp32 tl.exp is ex2.approx of fl(x * log2 e) (relative error up to
# 2^-22 + |x| 2^-24) and `/` is div.full (up to 2 ulp); the interpreter computes both exactly.
# The formulas below keep fp32 results within DESIGN.md's tolerances under those errors
# (tests/test_activation_triton.py runs these kernels with the GPU's worst-case errors emulated).


@triton.jit
def _tanh(x):
    # (1 - e) / (1 + e) with e = exp(-2|x|) loses relative precision as x -> 0 (1 - e cancels),
    # so below 0.25 use the odd Taylor series, whose next term is < 1e-8 relative there. Above,
    # the quotient amplifies ex2's relative error by 2e / (1 - e^2) <= 1.92 (at |x| = 0.25), and
    # div.full adds <= 2 ulp: < 9e-7 relative in all. (tl.math.div_rn would take ~2e-7 off, but
    # doubles the registers of the 16-bit kernels and would weigh on the RNN and attention
    # kernels that share this function.)
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    large = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    return tl.where(ax < 0.25, small, tl.where(x < 0, -large, large))


@triton.jit
def _sigmoid_pair(z):
    # (sigmoid(z), 1 - sigmoid(z)), each computed without cancellation: with e = exp(-|z|) <= 1,
    # the larger one is 1 / (1 + e) and the smaller e / (1 + e). Subtracting from 1 instead
    # would turn a 1-ulp error of a sigmoid near 1 into a relative error of 100% or more.
    e = tl.exp(-tl.abs(z))
    big = 1.0 / (1.0 + e)
    small = e * big
    return tl.where(z >= 0, big, small), tl.where(z >= 0, small, big)


@triton.jit
def _gelu_tanh_arg(x):
    # 2u, u = sqrt(2/pi) (x + 0.044715 x^3): 0.5 (1 + tanh(u)) = sigmoid(2u), no cancellation for u < 0
    return 1.5957691216057308 * (x + 0.044715 * x * x * x)


@triton.jit
def _normal_cdf(x):
    return 0.5 * (1.0 + tl.erf(x * 0.7071067811865476))


@triton.jit
def _forward(x, negative_slope, ACT: tl.constexpr):
    if ACT == 0:  # SIGMOID
        y = tl.sigmoid(x)
    elif ACT == 1:  # TANH
        y = _tanh(x)
    elif ACT == 2:  # RELU; written so that NaN stays NaN, as in torch.relu
        y = tl.where(x < 0, 0.0, x)
    elif ACT == 3:  # LEAKY_RELU
        y = tl.where(x > 0, x, x * negative_slope)
    elif ACT == 4:  # GELU
        y = x * _normal_cdf(x)
    else:  # GELU_TANH
        y = x * tl.sigmoid(_gelu_tanh_arg(x))
    return y


@triton.jit
def _backward(dy, saved, negative_slope, ACT: tl.constexpr):
    if ACT == 0:  # SIGMOID, saved = y
        dx = dy * saved * (1.0 - saved)
    elif ACT == 1:  # TANH, saved = y; (1 - y)(1 + y), since 1 - y*y cancels near |y| = 1
        dx = dy * ((1.0 - saved) * (1.0 + saved))
    elif ACT == 2:  # RELU, saved = x; zero where x <= 0 (a NaN x lets dy through, as in ATen)
        dx = tl.where(saved <= 0, 0.0, dy)
    elif ACT == 3:  # LEAKY_RELU, saved = x
        dx = tl.where(saved > 0, dy, dy * negative_slope)
    elif ACT == 4:  # GELU, saved = x: Phi(x) + x phi(x)
        pdf = 0.3989422804014327 * tl.exp(-0.5 * saved * saved)
        dx = dy * (_normal_cdf(saved) + saved * pdf)
    else:  # GELU_TANH, saved = x: d/dx [x s] = s + 2 x s (1 - s) du/dx, s = sigmoid(2u)
        # (1 - s) from the pair, not by subtraction: 2 x du/dx grows like x^3 and would
        # multiply the rounding error of s near 1 into the result.
        s, one_minus_s = _sigmoid_pair(_gelu_tanh_arg(saved))
        du_dx = 0.7978845608028654 * (1.0 + 0.134145 * saved * saved)  # 3 * 0.044715 = 0.134145
        dx = dy * (s + 2.0 * saved * s * one_minus_s * du_dx)
    return dx


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def activation_forward_kernel(x_ptr, y_ptr, n_elements, negative_slope, ACT: tl.constexpr, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    # Full blocks go unmasked: a mask against a size not known to be a multiple of 16 would
    # stop the 128-bit vector loads. Only the last block pays for the mask.
    if start + BLOCK <= n_elements:
        x = tl.load(x_ptr + offsets).to(tl.float32)
        tl.store(y_ptr + offsets, _forward(x, negative_slope, ACT).to(y_ptr.dtype.element_ty))
    else:
        mask = offsets < n_elements
        x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
        tl.store(y_ptr + offsets, _forward(x, negative_slope, ACT).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def activation_backward_kernel(
    dy_ptr, saved_ptr, dx_ptr, n_elements, negative_slope, ACT: tl.constexpr, BLOCK: tl.constexpr
):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n_elements:  # unmasked full blocks, as in the forward kernel
        dy = tl.load(dy_ptr + offsets).to(tl.float32)
        saved = tl.load(saved_ptr + offsets).to(tl.float32)
        tl.store(dx_ptr + offsets, _backward(dy, saved, negative_slope, ACT).to(dx_ptr.dtype.element_ty))
    else:
        mask = offsets < n_elements
        dy = tl.load(dy_ptr + offsets, mask=mask).to(tl.float32)
        saved = tl.load(saved_ptr + offsets, mask=mask).to(tl.float32)
        dx = _backward(dy, saved, negative_slope, ACT)
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launch helpers


def _launch(kernel, inputs: dict[str, torch.Tensor], act: str, negative_slope: float) -> torch.Tensor:
    """Flatten (contiguous copies only where needed), allocate the output, launch 1-D."""
    for name, tensor in inputs.items():
        check_dtype(tensor, name)
    tensors = [t.contiguous() for t in inputs.values()]  # flat indexing needs dense memory
    out = torch.empty_like(tensors[0])
    n = out.numel()
    if n == 0:
        return out
    block, num_warps = elementwise_launch(out.dtype)
    grid = (triton.cdiv(n, block),)
    kernel[grid](*tensors, out, n, negative_slope, ACT=ACT_CODES[act], BLOCK=block, num_warps=num_warps)
    return out


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (torch tensors in and out)


def forward(x: torch.Tensor, act: str, negative_slope: float = 0.0) -> torch.Tensor:
    return _launch(activation_forward_kernel, {"x": x}, act, negative_slope)


def backward(grad_output: torch.Tensor, saved: torch.Tensor, act: str, negative_slope: float = 0.0) -> torch.Tensor:
    saved_name = "output" if act in SAVES_OUTPUT else "x"
    return _launch(activation_backward_kernel, {"grad_output": grad_output, saved_name: saved}, act, negative_slope)


# ---------------------------------------------------------------------------------------------
# Compile gate


def compile_cases() -> Iterator[CompileCase]:
    """Both kernels, every activation, at every specialisation the launch helpers produce, with
    the arguments ``_launch`` passes (inputs as the caller hands them, the output fresh)."""
    kernels = (
        ("forward", activation_forward_kernel, ("x_ptr",), ("y_ptr",)),
        ("backward", activation_backward_kernel, ("dy_ptr", "saved_ptr"), ("dx_ptr",)),
    )
    for direction, kernel, inputs, outputs in kernels:
        for dtype, tdtype, alignment, size_type in iter_elementwise_variants():
            block, num_warps = elementwise_launch(dtype)
            args = elementwise_args(alignment, size_type, tdtype, inputs, outputs, "n_elements")
            for act_name, act in ACT_CODES.items():
                yield CompileCase(
                    name=f"activation_{direction}[{act_name}]",
                    kernel=kernel,
                    args={**args, "negative_slope": 0.01, "ACT": act, "BLOCK": block},
                    num_warps=num_warps,
                    expect_load_bits=None if alignment == "offset" else 128,
                    tags={"dtype": tdtype, "alignment": alignment, "n": size_type, "block": str(block)},
                )
