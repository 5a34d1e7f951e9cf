"""Softmax kernels: rows that fit one block in a single pass (several short rows per program),
longer rows with an online softmax (running max and sum) that loops over the row in chunks.

Every kernel sees a dense ``[n_rows, n_cols]`` matrix: the launch helpers move ``dim`` last
and make the rows contiguous. fp32 math over fp32/fp16/bf16 storage. Compile-time switches:
``LOG`` (log-softmax), ``MASKED`` (a uint8 keep-mask of the same shape; masked softmax).
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import CompileCase, check_dtype, fresh, passed

# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _tile_offsets(pid, n_rows, n_cols, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    offsets = rows[:, None] * n_cols + cols[None, :]
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return offsets, inside


@triton.jit
def _load_scores(x_ptr, mask_ptr, offsets, inside, MASKED: tl.constexpr):
    """The row values in fp32, -inf outside the row and (MASKED) where the mask drops them."""
    x = tl.load(x_ptr + offsets, mask=inside, other=float("-inf")).to(tl.float32)
    if MASKED:
        keep = tl.load(mask_ptr + offsets, mask=inside, other=0)
        x = tl.where(keep != 0, x, float("-inf"))
    return x


@triton.jit
def _safe_max(m):
    # A row (so far) of nothing but -inf shifts by 0: -inf - -inf would be NaN.
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _normalise(x, m, total, LOG: tl.constexpr, MASKED: tl.constexpr):
    """The outputs of one tile of a row whose safe max is ``m`` and exp-sum ``total``."""
    if LOG:
        y = x - m - tl.log(total)
    else:
        y = tl.exp(x - m) / total
        if MASKED:  # nothing kept: zeros rather than 0/0
            y = tl.where(total > 0.0, y, 0.0)
    return y


@triton.jit
def softmax_forward_kernel(x_ptr, y_ptr, mask_ptr, n_rows, n_cols,
                           LOG: tl.constexpr, MASKED: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """ROWS whole rows per program, each row within one BLOCK_N tile: one read, one write."""
    offsets, inside = _tile_offsets(tl.program_id(0), n_rows, n_cols, ROWS, BLOCK_N)
    x = _load_scores(x_ptr, mask_ptr, offsets, inside, MASKED)
    m = _safe_max(tl.max(x, axis=1))[:, None]
    total = tl.sum(tl.exp(x - m), axis=1)[:, None]
    y = _normalise(x, m, total, LOG, MASKED)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def softmax_forward_online_kernel(x_ptr, y_ptr, mask_ptr, n_rows, n_cols,
                                  LOG: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr):
    """One row per program, any length: a first sweep keeps the running max ``m`` and the sum
    of exp(x - m), rescaling the sum whenever the max grows; a second sweep writes."""
    base = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK_N)
    m = tl.full((), float("-inf"), tl.float32)
    total = tl.zeros((), tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        inside = start + cols < n_cols
        x = _load_scores(x_ptr + base + start, mask_ptr + base + start, cols, inside, MASKED)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        shift = _safe_max(m_new)
        total = total * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)
        m = m_new
    m = _safe_max(m)
    for start in range(0, n_cols, BLOCK_N):
        inside = start + cols < n_cols
        x = _load_scores(x_ptr + base + start, mask_ptr + base + start, cols, inside, MASKED)
        y = _normalise(x, m, total, LOG, MASKED)
        tl.store(y_ptr + base + start + cols, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _row_gradient(dy, y, reduced, LOG: tl.constexpr):
    """softmax: y (dy - sum(dy y)); log_softmax: dy - exp(y) sum(dy)."""
    if LOG:
        dx = dy - tl.exp(y) * reduced
    else:
        dx = y * (dy - reduced)
    return dx


@triton.jit
def softmax_backward_kernel(dy_ptr, y_ptr, dx_ptr, n_rows, n_cols,
                            LOG: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    offsets, inside = _tile_offsets(tl.program_id(0), n_rows, n_cols, ROWS, BLOCK_N)
    dy = tl.load(dy_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if LOG:
        reduced = tl.sum(dy, axis=1)[:, None]
    else:
        reduced = tl.sum(dy * y, axis=1)[:, None]
    dx = _row_gradient(dy, y, reduced, LOG)
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=inside)


@triton.jit
def softmax_backward_online_kernel(dy_ptr, y_ptr, dx_ptr, n_rows, n_cols, LOG: tl.constexpr, BLOCK_N: tl.constexpr):
    """One row per program, any length: sweep once for the row sum, once to write."""
    base = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK_N)
    reduced = tl.zeros((), tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        inside = start + cols < n_cols
        dy = tl.load(dy_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
        if LOG:
            reduced += tl.sum(dy, axis=0)
        else:
            y = tl.load(y_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
            reduced += tl.sum(dy * y, axis=0)
    for start in range(0, n_cols, BLOCK_N):
        inside = start + cols < n_cols
        dy = tl.load(dy_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
        dx = _row_gradient(dy, y, reduced, LOG)
        tl.store(dx_ptr + base + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=inside)


# ---------------------------------------------------------------------------------------------
# Launch choice: the one heuristic, used at run time and enumerated by compile_cases()


class RowLaunch(NamedTuple):
    online: bool  # loop over the row (one row per program) instead of one tile per row
    block_n: int  # tile width (single pass: >= the row length; online: the chunk)
    rows: int  # rows per program (single pass only)
    num_warps: int


# Single-pass tiers, narrowest first: (block_n, rows, warps). Each tile holds about
# 2K..8K elements, so short rows share a program and no thread keeps more than 16 values.
SINGLE_PASS_TIERS = ((32, 64, 4), (128, 16, 4), (512, 4, 4), (2048, 1, 8), (8192, 1, 16))
ONLINE = RowLaunch(online=True, block_n=4096, rows=1, num_warps=8)
MAX_SINGLE_PASS = SINGLE_PASS_TIERS[-1][0]


def row_launch(n_cols: int) -> RowLaunch:
    """The launch for rows of ``n_cols``: the narrowest single-pass tile that holds the row,
    the online loop beyond ``MAX_SINGLE_PASS`` columns."""
    for block_n, rows, warps in SINGLE_PASS_TIERS:
        if n_cols <= block_n:
            return RowLaunch(False, block_n, rows, warps)
    return ONLINE


def all_launches() -> tuple[RowLaunch, ...]:
    """Every launch ``row_launch`` can return."""
    return (*(RowLaunch(False, b, r, w) for b, r, w in SINGLE_PASS_TIERS), ONLINE)


# ---------------------------------------------------------------------------------------------
# Launch helpers


def as_rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` with ``dim`` moved last, dense, as ``[rows, cols]`` (a copy only where needed)."""
    moved = x.movedim(dim, -1).contiguous()
    return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])  # not -1: rows may be empty


def from_rows(rows: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    """The inverse of ``as_rows``: a view of ``rows`` in ``like``'s shape."""
    return rows.reshape(like.movedim(dim, -1).shape).movedim(-1, dim)


def launch_forward(x: torch.Tensor, keep: torch.Tensor | None, log: bool,
                   launch: RowLaunch | None = None) -> torch.Tensor:
    """Softmax of each row of the dense ``[rows, cols]`` ``x`` (``keep``: uint8, same shape)."""
    n_rows, n_cols = x.shape
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    launch = launch or row_launch(n_cols)
    mask = keep if keep is not None else x  # never read unless MASKED
    if launch.online:
        softmax_forward_online_kernel[(n_rows,)](
            x, y, mask, n_rows, n_cols, LOG=log, MASKED=keep is not None, BLOCK_N=launch.block_n,
            num_warps=launch.num_warps)
    else:
        softmax_forward_kernel[(triton.cdiv(n_rows, launch.rows),)](
            x, y, mask, n_rows, n_cols, LOG=log, MASKED=keep is not None, ROWS=launch.rows,
            BLOCK_N=launch.block_n, num_warps=launch.num_warps)
    return y


def launch_backward(dy: torch.Tensor, y: torch.Tensor, log: bool, launch: RowLaunch | None = None) -> torch.Tensor:
    n_rows, n_cols = y.shape
    dx = torch.empty_like(y)
    if y.numel() == 0:
        return dx
    launch = launch or row_launch(n_cols)
    if launch.online:
        softmax_backward_online_kernel[(n_rows,)](
            dy, y, dx, n_rows, n_cols, LOG=log, BLOCK_N=launch.block_n, num_warps=launch.num_warps)
    else:
        softmax_backward_kernel[(triton.cdiv(n_rows, launch.rows),)](
            dy, y, dx, n_rows, n_cols, LOG=log, ROWS=launch.rows, BLOCK_N=launch.block_n,
            num_warps=launch.num_warps)
    return dx


def keep_rows(x: torch.Tensor, mask: torch.Tensor | None, lengths: torch.Tensor | None, dim: int) -> torch.Tensor:
    """The keep-mask of masked_softmax as dense uint8 rows matching ``as_rows(x, dim)``;
    ``lengths`` become ``index < length`` here (one byte per element, like a boolean mask)."""
    keep = mask if mask is not None else torch.ones((), dtype=torch.bool, device=x.device)
    keep = keep.expand(x.shape).movedim(dim, -1)
    if lengths is not None:  # lengths has the shape of the rows' leading dims
        index = torch.arange(x.shape[dim], device=x.device)
        keep = keep & (index < lengths.to(device=x.device, dtype=torch.int64).unsqueeze(-1))
    return as_rows(keep, -1).view(torch.uint8)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (torch tensors in and out)


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    check_dtype(x, "x")
    return from_rows(launch_forward(as_rows(x, dim), None, log=False), x, dim)


def log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    check_dtype(x, "x")
    return from_rows(launch_forward(as_rows(x, dim), None, log=True), x, dim)


def masked_softmax(x: torch.Tensor, mask: torch.Tensor | None, lengths: torch.Tensor | None, dim: int) -> torch.Tensor:
    check_dtype(x, "x")
    # Always MASKED, even with neither mask nor lengths: a row of -inf is then zeros, not NaN.
    return from_rows(launch_forward(as_rows(x, dim), keep_rows(x, mask, lengths, dim), log=False), x, dim)


def _backward(grad_output: torch.Tensor, output: torch.Tensor, dim: int, log: bool) -> torch.Tensor:
    check_dtype(grad_output, "grad_output")
    dx = launch_backward(as_rows(grad_output, dim), as_rows(output, dim), log)
    return from_rows(dx, output, dim)


def softmax_backward(grad_output: torch.Tensor, output: torch.Tensor, dim: int) -> torch.Tensor:
    return _backward(grad_output, output, dim, log=False)


def log_softmax_backward(grad_output: torch.Tensor, output: torch.Tensor, dim: int) -> torch.Tensor:
    return _backward(grad_output, output, dim, log=True)


# ---------------------------------------------------------------------------------------------
# Compile gate

# How the rows can look to the runtime. "aligned" (the typical launch): 16-byte-aligned pointers
# and a row length divisible by 16, so every row starts aligned and loads are 128-bit. "offset"
# (the worst the dispatch sends): the input (and a caller's mask) a view one element into its
# storage, ragged row length and row count; ``as_rows`` passes such views through uncopied. The
# output is always the launcher's own. fp16/bf16 compile "offset" code identical to fp32's but
# for the conversions, so only fp32 builds it, to keep the gate's time modest.
GATE_SPECIALISATIONS = (("fp32", "aligned"), ("fp16", "aligned"), ("bf16", "aligned"), ("fp32", "offset"))
_FORWARD_VARIANTS = {"softmax": (False, False), "log_softmax": (True, False), "masked_softmax": (False, True)}
_BACKWARD_VARIANTS = {"softmax": False, "log_softmax": True}
_GATE_ROWS = 4096  # rows of a representative launch; "offset" launches have one fewer
_RAGGED = 3  # columns short of the tier's width in "offset" launches


def _gate_args(pointers, tdtype: str, alignment: str, launch: RowLaunch, masked: bool) -> dict:
    """The pointers and sizes ``launch_forward``/``launch_backward`` pass for rows as wide as the
    tier (the online tier: twice its chunk), the inputs as the caller hands them."""
    aligned = alignment == "aligned"
    width = launch.block_n * (2 if launch.online else 1)
    *inputs, output = pointers
    args = {p: passed(tdtype, aligned) for p in inputs}
    args[output] = fresh(tdtype)
    if "mask_ptr" in args:  # the uint8 keep-mask, or x itself in its place when unmasked
        args["mask_ptr"] = passed("u8", aligned) if masked else args["x_ptr"]
    args.update(n_rows=_GATE_ROWS - (0 if aligned else 1), n_cols=width - (0 if aligned else _RAGGED))
    return args


def _case(name, kernel, pointers, tdtype, alignment, launch, constexprs):
    return CompileCase(
        name=name, kernel=kernel,
        args={**_gate_args(pointers, tdtype, alignment, launch, constexprs.get("MASKED", False)), **constexprs},
        num_warps=launch.num_warps, expect_load_bits=128 if alignment == "aligned" else None,
        tags={"dtype": tdtype, "alignment": alignment, "block_n": str(launch.block_n), "rows": str(launch.rows)},
    )


def compile_cases() -> Iterator[CompileCase]:
    """All four kernels, every variant, at every launch ``row_launch`` can pick."""
    for (tdtype, alignment), launch in itertools.product(GATE_SPECIALISATIONS, all_launches()):
        single = () if launch.online else (("ROWS", launch.rows),)
        for variant, (log, masked) in _FORWARD_VARIANTS.items():
            kernel = softmax_forward_online_kernel if launch.online else softmax_forward_kernel
            name = f"softmax_forward{'_online' if launch.online else ''}[{variant}]"
            constexprs = {"LOG": log, "MASKED": masked, **dict(single), "BLOCK_N": launch.block_n}
            yield _case(name, kernel, ("x_ptr", "mask_ptr", "y_ptr"), tdtype, alignment, launch, constexprs)
        for variant, log in _BACKWARD_VARIANTS.items():
            kernel = softmax_backward_online_kernel if launch.online else softmax_backward_kernel
            name = f"softmax_backward{'_online' if launch.online else ''}[{variant}]"
            constexprs = {"LOG": log, **dict(single), "BLOCK_N": launch.block_n}
            yield _case(name, kernel, ("dy_ptr", "y_ptr", "dx_ptr"), tdtype, alignment, launch, constexprs)
