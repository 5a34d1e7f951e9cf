"""Dense-layer kernels: three matmuls with the activation fused where its data passes.

* forward   y = act(x W^T + b): the bias and activation in the epilogue, and (gelu, gelu_tanh,
  leaky_relu with a negative slope) the derivative act'(z) written beside y from the same
  registers;
* grad input   dx = dz W and grad weight   dW = dz^T x, where dz = dy * act'(z) is formed as the
  A operand's tile is loaded, from dy and what the forward saved (see reference/linear.py): no
  elementwise pass over dz in between, no dz in memory. The grad-weight kernel also sums dz over
  the rows for the bias gradient: every program of the first grad-weight column block runs the
  whole row loop, in order, so the sum has fixed order and no atomics.

Why save act'(z) instead of z (or recomputing z): each element of dz is formed once per output
column block of the other product (K / BLOCK_N times in dx and again in dW: 2 x 32 times for
K = 4096 and 128-wide tiles). From a saved z that is erf/exp work (~25 fp32 operations) each
time: ~54 GFLOP on the CUDA cores for M = 8192, N = K = 4096, about as long as the backward's
550 GFLOP on the tensor cores; from act'(z) it is one multiply (~2 GFLOP). Recomputing z costs
a whole extra product (2 M N K = 275 GFLOP). Saving z or act'(z) costs the same bytes (M N
elements written once, read by both backward kernels). The compile gate agrees: with z saved
the backward kernels spill 1.3-1.5 KB per thread on sm_80 at the 128-wide tiles, with act'(z)
none. (Benchmark providers run both ways on one tile, for a GPU run to time the choice.) The
activation math itself is the activation family's (``_forward``, ``_backward`` of
gpukernels/triton/activation.py).

fp32 accumulation; fp16/bf16/fp32 storage. fp32 products follow
``torch.backends.cuda.matmul.allow_tf32`` as F.linear does (default: exact fp32, "ieee").
Tile configurations by ``@triton.autotune`` keyed on the shapes, pruned to the tiles listed for
the storage width and row alignment (``configs_for``); every one of them is in the compile gate.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from ._launch import CompileCase, TRITON_DTYPES, check_dtype, fresh
from .activation import ACT_CODES, _backward, _forward

NO_ACT = -1  # the ACT code for no activation
# How dz is formed from dy (the backward kernels' SAVED switch), by reference.linear.saved_kind.
# "preactivation" (z saved, act'(z) evaluated in the backward) is not what the public op does: a
# benchmark provider runs it so that a GPU run measures the choice (see the module docstring).
# The activation family's _backward reads y for sigmoid/tanh and the input z for the others, so
# the output and the pre-activation take the same code path.
SAVED_CODES = {"none": 0, "output": 1, "preactivation": 1, "derivative": 2}
SAVE_CODES = {None: 0, "derivative": 1, "preactivation": 2}  # what the forward writes beside y


class TileConfig(NamedTuple):
    block_m: int  # rows of the output tile
    block_n: int  # columns of the output tile
    block_k: int  # reduction slice per step
    num_warps: int
    num_stages: int

    def smem_bytes(self, itemsize: int) -> int:
        """Shared memory of the operand pipeline: ``num_stages`` slices of both operands."""
        return self.num_stages * (self.block_m + self.block_n) * self.block_k * itemsize


# Rows whose length is not a 16-byte multiple cannot be copied by 16-byte cp.async: the tiles
# travel through registers (16-bit) or 4-byte copies (fp32), and only a small tile over 8 warps
# stays clear of spills (64 x 64 over 4 warps spilled 8-16 bytes in fp32, 128 x 128 136-648).
# The benchmark also compares the saved-z backward with ours on this tile: the saved-z kernels
# spill 1.3-1.5 KB per thread on sm_80 at the 128-wide tiles (gelu' on every operand tile).
SMALL_TILE = TileConfig(64, 64, 32, 8, 3)
# 16-bit storage: wide tiles for big layers (8 warps, two warpgroups of wgmma on sm_90), narrower
# ones and a small one for thin layers; every pipeline fits sm_80's shared memory (< 160 KiB).
# (128 x 256 spilled 760 bytes with the gelu epilogue: 128 accumulators per thread; 64 x 128
# over 4 warps spilled 8 bytes in the grad-weight kernel on sm_80, over 8 warps none.)
HALF_TILES = (
    TileConfig(128, 128, 64, 8, 3),
    TileConfig(64, 128, 64, 8, 3),
    TileConfig(128, 128, 32, 8, 3),
    TileConfig(128, 64, 32, 8, 3),
    TileConfig(64, 64, 32, 4, 4),
)
# fp32: exact products run on the FMA units with their operands in registers. 128 x 128 spilled
# with the gelu epilogue (64 accumulators per thread); of the smaller tiles swept (128 x 64,
# 64 x 128, 64 x 64 over 4 or 8 warps, 2 or 3 stages) every other one left ptxas spilling a
# register or two (8-16 bytes) in one of the three kernels on sm_80 or sm_90.
FP32_TILES = (TileConfig(64, 64, 32, 8, 2),)
TILE_CONFIGS = (*HALF_TILES, *FP32_TILES, SMALL_TILE)  # everything the tuner may try
GROUP_M = tl.constexpr(8)  # output tiles walked 8 row blocks at a time, so a W column block stays in L2


def configs_for(itemsize: int, aligned: bool = True) -> tuple[TileConfig, ...]:
    """The tiles the tuner may run for this element size and row alignment (the gate builds
    exactly these)."""
    if not aligned:
        return (SMALL_TILE,)
    return FP32_TILES if itemsize == 4 else HALF_TILES


def rows_aligned(itemsize: int, *lengths: int) -> bool:
    """Whether rows of these lengths all start on 16-byte boundaries (contiguous operands)."""
    return all(n * itemsize % 16 == 0 for n in lengths)


def _triton_config(c: TileConfig) -> triton.Config:
    return triton.Config({"BLOCK_M": c.block_m, "BLOCK_N": c.block_n, "BLOCK_K": c.block_k},
                         num_warps=c.num_warps, num_stages=c.num_stages)


def _prune(configs, named_args, **kwargs):
    """Only the configurations ``configs_for`` allows for these operands (those the gate compiles).
    Every kernel's operands have rows of K or N elements."""
    first = named_args["x_ptr"] if "x_ptr" in named_args else named_args["dy_ptr"]
    itemsize = first.element_size()
    allowed = configs_for(itemsize, rows_aligned(itemsize, named_args["K"], named_args["N"]))
    keys = {(c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages) for c in allowed}
    return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps,
                                   c.num_stages) in keys]


def _autotune(key):
    # The interpreter cannot time anything: there the first configuration runs (the tests pick
    # others through ``config=``, which bypasses the tuner).
    chosen = TILE_CONFIGS[:1] if triton_interpreting() else TILE_CONFIGS
    return triton.autotune(configs=[_triton_config(c) for c in chosen], key=key,
                           prune_configs_by={"early_config_prune": _prune})


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _tile_ids(rows, cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(row block, column block) of this program: grouped order, GROUP_M row blocks at a time,
    so consecutive programs share the column block of the second operand in L2."""
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(rows, BLOCK_M)
    blocks_n = tl.cdiv(cols, BLOCK_N)
    per_group = GROUP_M * blocks_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m, pid_n


@triton.jit
def _dot(a, b, acc, TF32: tl.constexpr, DOT_F32: tl.constexpr):
    if DOT_F32:
        # Triton's interpreter multiplies bfloat16 tiles wrongly, so under it (and only there) the
        # launcher sets DOT_F32 and the tiles, already rounded to the storage dtype, go in as fp32.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    if TF32:
        return tl.dot(a, b, acc, input_precision="tf32")
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _grad_preactivation(dy_ptr, saved_ptr, offsets, inside, negative_slope, ACT: tl.constexpr, SAVED: tl.constexpr):
    """dz = dy * act'(z) for one tile (fp32), from dy and what the forward saved."""
    dy = tl.load(dy_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if SAVED == 0:  # no activation
        dz = dy
    elif SAVED == 1:  # the output y: the activation family's backward from y
        y = tl.load(saved_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        dz = _backward(dy, y, negative_slope, ACT)
    else:  # the derivative act'(z)
        dz = dy * tl.load(saved_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    return dz


@_autotune(key=["M", "N", "K"])
@triton.jit
def linear_forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, d_ptr, M, N, K, negative_slope,
                          HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SAVE: tl.constexpr,
                          TF32: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[M, N] = act(x[M, K] W[N, K]^T + b); into d also act'(z) (SAVE = 1) or z (SAVE = 2)."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + rm[:, None] * K + rk[None, :]
    b_ptrs = w_ptr + rn[None, :] * K + rk[:, None]  # W^T's tile, read from W's rows
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < K - k), other=0.0)
        b = tl.load(b_ptrs, mask=(rn[None, :] < N) & (rk[:, None] < K - k), other=0.0)
        acc = _dot(a, b, acc, TF32, DOT_F32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    offsets = rm[:, None] * N + rn[None, :]
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    if ACT == -1:  # NO_ACT
        y = acc
    else:
        y = _forward(acc, negative_slope, ACT)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=inside)
    if SAVE == 1:
        ones = tl.full((BLOCK_M, BLOCK_N), 1.0, tl.float32)
        tl.store(d_ptr + offsets, _backward(ones, acc, negative_slope, ACT).to(d_ptr.dtype.element_ty), mask=inside)
    elif SAVE == 2:
        tl.store(d_ptr + offsets, acc.to(d_ptr.dtype.element_ty), mask=inside)


@_autotune(key=["M", "N", "K"])
@triton.jit
def linear_grad_input_kernel(dy_ptr, saved_ptr, w_ptr, dx_ptr, M, N, K, negative_slope,
                             ACT: tl.constexpr, SAVED: tl.constexpr, TF32: tl.constexpr, DOT_F32: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dx[M, K] = dz[M, N] W[N, K]: output tiles BLOCK_M x BLOCK_N over (M, K), reducing over N
    in slices of BLOCK_K."""
    pid_m, pid_k = _tile_ids(M, K, BLOCK_M, BLOCK_N)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, BLOCK_K)  # the reduction over N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for n in range(0, N, BLOCK_K):
        a_offsets = rm[:, None] * N + (n + rr)[None, :]
        a_inside = (rm[:, None] < M) & ((n + rr)[None, :] < N)
        dz = _grad_preactivation(dy_ptr, saved_ptr, a_offsets, a_inside, negative_slope, ACT, SAVED)
        w = tl.load(w_ptr + (n + rr)[:, None] * K + rk[None, :], mask=((n + rr)[:, None] < N) & (rk[None, :] < K),
                    other=0.0)
        acc = _dot(dz.to(w.dtype), w, acc, TF32, DOT_F32)
    inside = (rm[:, None] < M) & (rk[None, :] < K)
    tl.store(dx_ptr + rm[:, None] * K + rk[None, :], acc.to(dx_ptr.dtype.element_ty), mask=inside)


@_autotune(key=["M", "N", "K"])
@triton.jit
def linear_grad_weight_kernel(dy_ptr, saved_ptr, x_ptr, dw_ptr, db_ptr, M, N, K, negative_slope,
                              HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SAVED: tl.constexpr, TF32: tl.constexpr,
                              DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dW[N, K] = dz^T[N, M] x[M, K]: output tiles BLOCK_M x BLOCK_N over (N, K), reducing over
    the rows M in slices of BLOCK_K; db[N] = sum of dz over the rows, written by the programs of
    the first column block (each sums its rows in a fixed order: deterministic)."""
    pid_n, pid_k = _tile_ids(N, K, BLOCK_M, BLOCK_N)
    rn = pid_n.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, BLOCK_K)  # the reduction over M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # dz^T summed slice by slice elementwise, reduced across the slice once at the end: no
    # cross-thread reduction in the loop (one per step left an 8-byte stack frame on sm_80)
    bias_tile = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for m in range(0, M, BLOCK_K):
        rows = (m + rr).to(tl.int64)
        a_offsets = rows[None, :] * N + rn[:, None]  # dz^T's tile, read from dz's rows
        a_inside = (rn[:, None] < N) & (rows[None, :] < M)
        dz_t = _grad_preactivation(dy_ptr, saved_ptr, a_offsets, a_inside, negative_slope, ACT, SAVED)
        x = tl.load(x_ptr + rows[:, None] * K + rk[None, :], mask=(rows[:, None] < M) & (rk[None, :] < K), other=0.0)
        acc = _dot(dz_t.to(x.dtype), x, acc, TF32, DOT_F32)
        if HAS_BIAS:
            bias_tile += dz_t
    inside = (rn[:, None] < N) & (rk[None, :] < K)
    tl.store(dw_ptr + rn[:, None] * K + rk[None, :], acc.to(dw_ptr.dtype.element_ty), mask=inside)
    if HAS_BIAS:
        if pid_k == 0:
            tl.store(db_ptr + rn, tl.sum(bias_tile, axis=1).to(db_ptr.dtype.element_ty), mask=rn < N)


# ---------------------------------------------------------------------------------------------
# Launch helpers


def allow_tf32(dtype: torch.dtype) -> bool:
    """fp32 products in tf32 only where torch allows it for F.linear (off by default). Since
    torch 2.9 the matmul's ``fp32_precision`` is the effective setting whichever API set it (the
    legacy ``allow_tf32`` getter raises once the new API has been used)."""
    if dtype != torch.float32:
        return False
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return bool(matmul.allow_tf32)


def _precision(dtype: torch.dtype) -> dict:
    return {"TF32": allow_tf32(dtype), "DOT_F32": triton_interpreting() and dtype == torch.bfloat16}


def _act_code(activation: str | None) -> int:
    return NO_ACT if activation is None else ACT_CODES[activation]


def _launch(kernel, grid_rows: int, grid_cols: int, args: tuple, constexprs: dict, config: TileConfig | None):
    """Launch through the autotuner, or (tests) with the one tile configuration ``config``."""
    if config is None:
        grid = lambda meta: (triton.cdiv(grid_rows, meta["BLOCK_M"]) * triton.cdiv(grid_cols, meta["BLOCK_N"]),)
        kernel[grid](*args, **constexprs)
        return
    grid = (triton.cdiv(grid_rows, config.block_m) * triton.cdiv(grid_cols, config.block_n),)
    kernel.fn[grid](*args, **constexprs, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                    num_warps=config.num_warps, num_stages=config.num_stages)


def launch_forward(x, weight, bias, activation, negative_slope, save: str | None, config=None):
    """(y, d): x (M, K), weight (N, K), bias (N,) or None, all contiguous of one dtype; d is
    act'(z) (``save="derivative"``), z (``"preactivation"``) or None."""
    (M, K), N = x.shape, weight.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    d = torch.empty_like(y) if save else None
    if y.numel():
        args = (x, weight, x if bias is None else bias, y, y if d is None else d, M, N, K, float(negative_slope))
        constexprs = {"HAS_BIAS": bias is not None, "ACT": _act_code(activation),
                      "SAVE": SAVE_CODES[save], **_precision(x.dtype)}
        _launch(linear_forward_kernel, M, N, args, constexprs, config)
    return y, d


def launch_grad_input(dy, saved, weight, activation, negative_slope, kind, config=None):
    M, N = dy.shape
    K = weight.shape[1]
    dx = torch.empty((M, K), dtype=dy.dtype, device=dy.device)
    if dx.numel():
        args = (dy, dy if saved is None else saved, weight, dx, M, N, K, float(negative_slope))
        constexprs = {"ACT": _act_code(activation), "SAVED": SAVED_CODES[kind], **_precision(dy.dtype)}
        _launch(linear_grad_input_kernel, M, K, args, constexprs, config)
    return dx


def launch_grad_weight(dy, saved, x, activation, negative_slope, kind, with_bias, config=None):
    M, N = dy.shape
    K = x.shape[1]
    dw = torch.empty((N, K), dtype=dy.dtype, device=dy.device)
    db = torch.empty((N,), dtype=dy.dtype, device=dy.device) if with_bias else None
    if N:
        args = (dy, dy if saved is None else saved, x, dw, dw if db is None else db, M, N, K, float(negative_slope))
        constexprs = {"HAS_BIAS": with_bias, "ACT": _act_code(activation), "SAVED": SAVED_CODES[kind],
                      **_precision(dy.dtype)}
        # At least one column block, so that the bias gradient is written when K = 0.
        _launch(linear_grad_weight_kernel, N, max(K, 1), args, constexprs, config)
    return dw, db


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (torch tensors in and out)


def forward(input, weight, bias, activation=None, negative_slope=0.01, save=False):
    check_dtype(input, "input")
    bias = None if bias is None else bias.contiguous()
    return launch_forward(input.contiguous(), weight.contiguous(), bias, activation, negative_slope,
                          "derivative" if save else None)


def backward(grad_output, input, weight, saved, activation=None, negative_slope=0.01,
             output_mask=(True, True, True)):
    from ..reference.linear import saved_kind

    check_dtype(grad_output, "grad_output")
    kind = saved_kind(activation, negative_slope)
    dy = grad_output.contiguous()
    saved = None if saved is None else saved.contiguous()
    grad_input = launch_grad_input(dy, saved, weight.contiguous(), activation, negative_slope, kind) \
        if output_mask[0] else None
    grad_weight = grad_bias = None
    if output_mask[1] or output_mask[2]:
        grad_weight, grad_bias = launch_grad_weight(dy, saved, input.contiguous(), activation, negative_slope, kind,
                                                    output_mask[2])
        if output_mask[2] and not output_mask[1]:
            grad_weight = None  # computed alongside the bias gradient; not asked for
    return grad_input, grad_weight, grad_bias


# ---------------------------------------------------------------------------------------------
# Compile gate

# A representative big layer: sizes divisible by 16 and 16-byte-aligned operands (the usual
# launch: contiguous tensors of hidden sizes that are multiples of 16), and a ragged one.
_GATE_SHAPES = {"aligned": (8192, 4096, 4096), "ragged": (8191, 4093, 1027)}


class GateBuild(NamedTuple):
    dtype: str
    shape: str  # a key of _GATE_SHAPES
    tile: TileConfig
    tf32: bool
    activation: str | None
    saved: str  # what the backward reads: reference.linear.saved_kind, or "preactivation"


def _gate_builds() -> Iterator[GateBuild]:
    """Every build the gate compiles: every tile each dtype may run. No activation and gelu (the
    derivative saved: the heaviest epilogue, a plain multiply in the backward) for every dtype;
    sigmoid (the backward's derivative from the output) for bf16, whose code differs from
    fp16's only in conversions; relu, leaky_relu, tanh and gelu_tanh differ from these in a few
    elementwise instructions. fp32 in exact and tf32 products. For bf16 and fp32 also the ragged
    shape (rows that are not 16-byte multiples, masks that cut every tile) at its tile, and the
    benchmark's saved-z variant of gelu at the tile the benchmark runs it (SMALL_TILE)."""
    from ..reference.linear import saved_kind

    for torch_dtype, tdtype in TRITON_DTYPES.items():
        itemsize = torch.empty((), dtype=torch_dtype).element_size()
        acts = (None, "gelu", "sigmoid") if tdtype == "bf16" else (None, "gelu")
        for config in configs_for(itemsize):
            for tf32 in ((False, True) if tdtype == "fp32" else (False,)):
                for act in acts:
                    yield GateBuild(tdtype, "aligned", config, tf32, act, saved_kind(act))
        if tdtype != "fp16":
            for config in configs_for(itemsize, aligned=False):
                yield GateBuild(tdtype, "ragged", config, False, "gelu", "derivative")
            yield GateBuild(tdtype, "aligned", SMALL_TILE, False, "gelu", "preactivation")


def compile_cases() -> Iterator[CompileCase]:
    """The three kernels at each build of ``_gate_builds``, with the arguments the launchers pass
    (fresh contiguous tensors: the public op makes its operands contiguous)."""
    for build in _gate_builds():
        M, N, K = _GATE_SHAPES[build.shape]
        config = build.tile
        act_label = str(build.activation) + ("-saved-z" if build.saved == "preactivation" else "") \
            + ("-tf32" if build.tf32 else "")
        tags = {"dtype": build.dtype, "shape": build.shape, "act": act_label,
                "tile": f"{config.block_m}x{config.block_n}x{config.block_k}"}
        common = {"M": M, "N": N, "K": K, "negative_slope": 0.01, "ACT": _act_code(build.activation),
                  "TF32": build.tf32, "DOT_F32": False,
                  "BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "BLOCK_K": config.block_k}
        saved = SAVED_CODES[build.saved]
        kernels = (
            ("linear_forward", linear_forward_kernel, ("x_ptr", "w_ptr", "b_ptr", "y_ptr", "d_ptr"),
             {"HAS_BIAS": True, "SAVE": SAVE_CODES.get(build.saved, 0)}),
            ("linear_grad_input", linear_grad_input_kernel, ("dy_ptr", "saved_ptr", "w_ptr", "dx_ptr"),
             {"SAVED": saved}),
            ("linear_grad_weight", linear_grad_weight_kernel, ("dy_ptr", "saved_ptr", "x_ptr", "dw_ptr", "db_ptr"),
             {"HAS_BIAS": True, "SAVED": saved}),
        )
        for name, kernel, pointers, switches in kernels:
            yield CompileCase(name=name, kernel=kernel.fn,
                              args={**{p: fresh(build.dtype) for p in pointers}, **common, **switches},
                              num_warps=config.num_warps, num_stages=config.num_stages, tags=tags)
