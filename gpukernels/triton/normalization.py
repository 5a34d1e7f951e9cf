"""Layer norm and RMS norm kernels, with the fused residual add as a compile-time switch.

Every kernel sees a dense ``[n_rows, n_cols]`` matrix (the normalised dims flattened into a row).
fp32 statistics and math over fp32/fp16/bf16 storage. Compile-time switches: ``RMS`` (RMS norm
instead of layer norm), ``ADD`` (forward: add the residual and write the sum; backward: add the
gradient arriving at the sum), ``HAS_W``/``HAS_B`` (affine weight and bias).

* Rows that fit one tile (``n_cols <= MAX_SINGLE_PASS``): one read and one write per element;
  short rows share a program.
* Longer rows: one row per program, looping over the row in chunks. The forward's first sweep
  merges each chunk's mean and squared deviations into the row's (Chan et al.'s parallel
  variance, no cancellation), the second writes; the add variant writes the sum in the first
  sweep and reads it back in the second (each thread re-reads the elements it wrote itself: the
  two sweeps use the same tile layout).
* Backward: each of a fixed number of programs (a function of the shape) takes every P-th row
  tile, writes ``dx`` in one pass and keeps its rows' partial ``dw``/``db`` sums, written to a
  ``[P, n_cols]`` fp32 buffer; a second kernel adds the P partials in a fixed order. No atomics:
  the gradients are bitwise reproducible.
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
def _row_tile(tile, n_rows, n_cols, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows ``tile*ROWS ..`` of the matrix: element offsets, the in-bounds mask, the row indices."""
    rows = (tile * ROWS + tl.arange(0, ROWS)).to(tl.int64)  # tile: an int in the interpreter's loops
    cols = tl.arange(0, BLOCK_N)
    offsets = rows[:, None] * n_cols + cols[None, :]
    inside = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return offsets, inside, rows


@triton.jit
def _load_source(x_ptr, r_ptr, s_ptr, offsets, inside, ADD: tl.constexpr):
    """The values to normalise in fp32 (0 outside the matrix). ADD: ``x + r``, written to ``s``
    and taken back as stored, so the statistics are those of the sum the caller receives."""
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if ADD:
        total = (x + tl.load(r_ptr + offsets, mask=inside, other=0.0).to(tl.float32)).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + offsets, total, mask=inside)
        x = total.to(tl.float32)
    return x


@triton.jit
def _affine(xhat, w_ptr, b_ptr, cols, col_inside, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    y = xhat
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=col_inside, other=0.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=col_inside, other=0.0).to(tl.float32)
    return y


@triton.jit
def norm_forward_kernel(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, s_ptr, mean_ptr, rstd_ptr, n_rows, n_cols, eps,
                        RMS: tl.constexpr, ADD: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                        ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """ROWS whole rows per program, each row within one BLOCK_N tile: one read, one write."""
    offsets, inside, rows = _row_tile(tl.program_id(0), n_rows, n_cols, ROWS, BLOCK_N)
    x = _load_source(x_ptr, r_ptr, s_ptr, offsets, inside, ADD)
    n = tl.maximum(n_cols, 1).to(tl.float32)  # a row of length 0: mean 0, variance 0
    if RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=1) / n
        tl.store(mean_ptr + rows, mean, mask=rows < n_rows)
        xc = tl.where(inside, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / n + eps)
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)
    cols = tl.arange(0, BLOCK_N)
    y = _affine(xc * rstd[:, None], w_ptr, b_ptr, cols[None, :], cols[None, :] < n_cols, HAS_W, HAS_B)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def norm_forward_long_kernel(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, s_ptr, mean_ptr, rstd_ptr, n_rows, n_cols, eps,
                             RMS: tl.constexpr, ADD: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    """One row per program, any length: a sweep for the statistics, a sweep writing."""
    row = tl.program_id(0).to(tl.int64)
    base = row * n_cols
    cols = tl.arange(0, BLOCK_N)
    count = tl.zeros((), tl.float32)
    mean = tl.zeros((), tl.float32)
    m2 = tl.zeros((), tl.float32)  # layer norm: squared deviations from mean; RMS: sum of squares
    for start in range(0, n_cols, BLOCK_N):
        inside = start + cols < n_cols
        x = _load_source(x_ptr + base + start, r_ptr + base + start, s_ptr + base + start, cols, inside, ADD)
        if RMS:
            m2 += tl.sum(x * x, axis=0)
        else:
            chunk_count = tl.minimum(n_cols - start, BLOCK_N).to(tl.float32)
            chunk_mean = tl.sum(x, axis=0) / chunk_count
            deviation = tl.where(inside, x - chunk_mean, 0.0)
            chunk_m2 = tl.sum(deviation * deviation, axis=0)
            total = count + chunk_count
            delta = chunk_mean - mean
            mean += delta * (chunk_count / total)
            m2 += chunk_m2 + delta * delta * (count * chunk_count / total)
            count = total
    n = tl.maximum(n_cols, 1).to(tl.float32)
    rstd = 1.0 / tl.sqrt(m2 / n + eps)
    tl.store(rstd_ptr + row, rstd)
    if not RMS:
        tl.store(mean_ptr + row, mean)
    for start in range(0, n_cols, BLOCK_N):
        inside = start + cols < n_cols
        if ADD:  # the sum this program stored above, read back by the threads that wrote it
            x = tl.load(s_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
        else:
            x = tl.load(x_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
        if not RMS:
            x = x - mean
        y = _affine(x * rstd, w_ptr + start, b_ptr + start, cols, inside, HAS_W, HAS_B)
        tl.store(y_ptr + base + start + cols, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _input_gradient(dy, xhat, w, rstd, n, inside, RMS: tl.constexpr):
    """``rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * w`` (rows along axis 1;
    RMS: without the ``mean(g)`` term); ``n`` is the full row length."""
    g = dy * w
    c2 = tl.sum(g * xhat, axis=1)[:, None] / n
    dx = g - xhat * c2
    if not RMS:
        dx = dx - (tl.sum(g, axis=1)[:, None] / n)
    return tl.where(inside, dx * rstd, 0.0)


@triton.jit
def norm_backward_kernel(dy_ptr, ds_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
                         n_rows, n_cols, RMS: tl.constexpr, ADD: tl.constexpr, HAS_W: tl.constexpr,
                         HAS_B: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row tiles pid, pid + P, ...: ``dx`` in one pass; this program's ``dw``/``db`` partial sums
    stay in registers and are written once, to row ``pid`` of the partial buffers."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_inside = cols < n_cols
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=col_inside, other=0.0).to(tl.float32)[None, :]
    else:
        w = tl.full((1, BLOCK_N), 1.0, tl.float32)
    n = tl.maximum(n_cols, 1).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), tl.float32)
    db = tl.zeros((BLOCK_N,), tl.float32)
    for tile in range(pid, tl.cdiv(n_rows, ROWS), tl.num_programs(0)):
        offsets, inside, rows = _row_tile(tile, n_rows, n_cols, ROWS, BLOCK_N)
        row_inside = rows < n_rows
        dy = tl.load(dy_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_inside, other=0.0)[:, None]
        if not RMS:
            x = x - tl.load(mean_ptr + rows, mask=row_inside, other=0.0)[:, None]
        xhat = tl.where(inside, x * rstd, 0.0)
        if HAS_W:
            dw += tl.sum(dy * xhat, axis=0)
        if HAS_B:
            db += tl.sum(dy, axis=0)
        dx = _input_gradient(dy, xhat, w, rstd, n, inside, RMS)
        if ADD:
            dx += tl.load(ds_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=inside)
    part = pid.to(tl.int64) * n_cols + cols
    if HAS_W:
        tl.store(dw_part_ptr + part, dw, mask=col_inside)
    if HAS_B:
        tl.store(db_part_ptr + part, db, mask=col_inside)


@triton.jit
def norm_backward_long_kernel(dy_ptr, ds_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part_ptr, db_part_ptr,
                              n_rows, n_cols, RMS: tl.constexpr, ADD: tl.constexpr, HAS_W: tl.constexpr,
                              HAS_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows pid, pid + P, ... of any length: a sweep for the two row sums, a sweep writing ``dx``
    and adding to this program's row of the (zeroed) partial buffers, which no other program
    touches."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    n = tl.maximum(n_cols, 1).to(tl.float32)
    part = pid.to(tl.int64) * n_cols
    for row in range(pid, n_rows, tl.num_programs(0)):
        base = tl.cast(row, tl.int64) * n_cols
        rstd = tl.load(rstd_ptr + row)
        mean = 0.0
        if not RMS:
            mean = tl.load(mean_ptr + row)
        sum_g = tl.zeros((), tl.float32)
        sum_gx = tl.zeros((), tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            inside = start + cols < n_cols
            dy = tl.load(dy_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
            xhat = tl.where(inside, (x - mean) * rstd, 0.0)
            g = dy
            if HAS_W:
                g = dy * tl.load(w_ptr + start + cols, mask=inside, other=0.0).to(tl.float32)
            sum_g += tl.sum(g, axis=0)
            sum_gx += tl.sum(g * xhat, axis=0)
        c1 = 0.0
        if not RMS:
            c1 = sum_g / n
        c2 = sum_gx / n
        for start in range(0, n_cols, BLOCK_N):
            inside = start + cols < n_cols
            dy = tl.load(dy_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
            xhat = tl.where(inside, (x - mean) * rstd, 0.0)
            g = dy
            if HAS_W:
                g = dy * tl.load(w_ptr + start + cols, mask=inside, other=0.0).to(tl.float32)
            dx = (g - c1 - xhat * c2) * rstd
            if ADD:
                dx += tl.load(ds_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
            tl.store(dx_ptr + base + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=inside)
            # this program's own partial row: the same threads read and write each element
            if HAS_W:
                old = tl.load(dw_part_ptr + part + start + cols, mask=inside, other=0.0)
                tl.store(dw_part_ptr + part + start + cols, old + dy * xhat, mask=inside)
            if HAS_B:
                old = tl.load(db_part_ptr + part + start + cols, mask=inside, other=0.0)
                tl.store(db_part_ptr + part + start + cols, old + dy, mask=inside)


@triton.jit
def column_sum_kernel(part_ptr, out_ptr, n_parts, n_cols, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """``out[c] = sum over p of part[p, c]``, the partials added in a fixed order."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_inside = cols < n_cols
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for start in range(0, n_parts, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        inside = (parts[:, None] < n_parts) & col_inside[None, :]
        acc += tl.load(part_ptr + parts[:, None].to(tl.int64) * n_cols + cols[None, :], mask=inside, other=0.0)
    tl.store(out_ptr + cols, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=col_inside)


# ---------------------------------------------------------------------------------------------
# Launch choice: the one heuristic, used at run time and enumerated by compile_cases()


class RowLaunch(NamedTuple):
    long: bool  # loop over the row in chunks (one row at a time) instead of one tile per row
    block_n: int  # tile width (single pass: >= the row length; long rows: the chunk)
    rows: int  # rows per tile (single pass only)
    num_warps: int


# Single-pass tiers, narrowest first: (block_n, rows, warps); short rows share a program. The
# forward keeps 16 values of each operand per thread; the backward, with about twice the live
# values per element (dy, x, xhat, g, the dw/db sums), 8, so that no build spills (the compile
# gate: 16 per thread there spills with ragged fp32 rows, whose loads are scalar).
TIERS = {
    "forward": ((64, 32, 4), (256, 8, 4), (1024, 2, 4), (2048, 1, 4), (4096, 1, 8)),
    "backward": ((64, 16, 4), (256, 4, 4), (1024, 1, 4), (2048, 1, 8), (4096, 1, 16)),
}
# Longer rows: 2048-wide chunks, 8 values per thread per operand.
LONG = RowLaunch(long=True, block_n=2048, rows=1, num_warps=8)
MAX_SINGLE_PASS = 4096
# Backward programs at most: each adds its rows' dw/db into one fp32 row of the partial buffers,
# so more programs fill the GPU better and cost a larger second reduction (512 x n_cols x 4 bytes,
# an eighth of a bf16 (8192, 4096) backward's traffic).
MAX_BACKWARD_PROGRAMS = 512
SUM_BLOCK_P, SUM_BLOCK_C, SUM_WARPS = 32, 128, 4


def row_launch(n_cols: int, direction: str = "forward") -> RowLaunch:
    """The narrowest single-pass tile that holds the row, the chunked loop beyond."""
    for block_n, rows, warps in TIERS[direction]:
        if n_cols <= block_n:
            return RowLaunch(False, block_n, rows, warps)
    return LONG


def all_launches(direction: str = "forward") -> tuple[RowLaunch, ...]:
    return (*(RowLaunch(False, b, r, w) for b, r, w in TIERS[direction]), LONG)


def backward_programs(n_rows: int, launch: RowLaunch) -> int:
    """P: a function of the shape alone, so the partial sums' grouping (and the bits) never vary."""
    return max(1, min(MAX_BACKWARD_PROGRAMS, triton.cdiv(n_rows, launch.rows)))


# ---------------------------------------------------------------------------------------------
# Launch helpers (dense [rows, cols] tensors)


def as_rows(x: torch.Tensor, normalized_ndim: int) -> torch.Tensor:
    lead = x.shape[:x.dim() - normalized_ndim]
    return x.contiguous().reshape(math.prod(lead), math.prod(x.shape[x.dim() - normalized_ndim:]))


def launch_forward(x, residual, weight, bias, eps: float, rms: bool, launch: RowLaunch | None = None):
    """(y, s or None, mean or None, rstd) for the dense rows ``x`` (and ``residual``)."""
    n_rows, n_cols = x.shape
    y = torch.empty_like(x)
    s = None if residual is None else torch.empty_like(x)
    if n_rows == 0 or n_cols == 0:  # nothing to launch; a row of length 0 has mean 0, variance 0
        mean = None if rms else torch.zeros(n_rows, dtype=torch.float32, device=x.device)
        rstd = torch.full((n_rows,), 1.0 / math.sqrt(eps) if eps > 0 else math.inf, dtype=torch.float32,
                          device=x.device)
        return y, s, mean, rstd
    mean = None if rms else torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    launch = launch or row_launch(n_cols)
    args = (x, x if residual is None else residual, x if weight is None else weight, x if bias is None else bias,
            y, y if s is None else s, rstd if mean is None else mean, rstd, n_rows, n_cols, eps)
    flags = dict(RMS=rms, ADD=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None,
                 BLOCK_N=launch.block_n, num_warps=launch.num_warps)
    if launch.long:
        norm_forward_long_kernel[(n_rows,)](*args, **flags)
    else:
        norm_forward_kernel[(triton.cdiv(n_rows, launch.rows),)](*args, ROWS=launch.rows, **flags)
    return y, s, mean, rstd


def column_sum(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n_parts, n_cols = part.shape
    out = torch.empty(n_cols, dtype=dtype, device=part.device)
    if n_cols:
        column_sum_kernel[(triton.cdiv(n_cols, SUM_BLOCK_C),)](part, out, n_parts, n_cols, BLOCK_P=SUM_BLOCK_P,
                                                               BLOCK_C=SUM_BLOCK_C, num_warps=SUM_WARPS)
    return out


def launch_backward(dy, ds, x, mean, rstd, weight, bias_grad: bool, rms: bool, launch: RowLaunch | None = None):
    """(dx, dw or None, db or None) for dense rows; ``ds`` (the sum's gradient) may be None."""
    n_rows, n_cols = x.shape
    launch = launch or row_launch(n_cols, "backward")
    programs = backward_programs(n_rows, launch)
    dx = torch.empty_like(x)
    wants = (weight is not None, bias_grad)
    # single pass: each program writes its whole partial row; long rows add to it
    make = torch.zeros if launch.long or n_rows == 0 else torch.empty
    dw_part = make((programs, n_cols), dtype=torch.float32, device=x.device) if wants[0] else None
    db_part = make((programs, n_cols), dtype=torch.float32, device=x.device) if wants[1] else None
    if n_rows and n_cols:
        args = (dy, dx if ds is None else ds, x, x if weight is None else weight, rstd if mean is None else mean, rstd,
                dx, dx if dw_part is None else dw_part, dx if db_part is None else db_part, n_rows, n_cols)
        flags = dict(RMS=rms, ADD=ds is not None, HAS_W=wants[0], HAS_B=wants[1], BLOCK_N=launch.block_n,
                     num_warps=launch.num_warps)
        if launch.long:
            norm_backward_long_kernel[(programs,)](*args, **flags)
        else:
            norm_backward_kernel[(programs,)](*args, ROWS=launch.rows, **flags)
    dw = None if dw_part is None else column_sum(dw_part, weight.dtype)
    db = None if db_part is None else column_sum(db_part, x.dtype)
    return dx, dw, db


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (torch tensors in and out)


def _stats_shape(x: torch.Tensor, normalized_ndim: int) -> tuple[int, ...]:
    return tuple(x.shape[:x.dim() - normalized_ndim]) + (1,) * normalized_ndim


def _forward(x, residual, weight, bias, normalized_ndim: int, eps: float, rms: bool):
    check_dtype(x, "input")
    rows = as_rows(x, normalized_ndim)
    y, s, mean, rstd = launch_forward(
        rows, None if residual is None else as_rows(residual, normalized_ndim),
        None if weight is None else weight.contiguous().reshape(-1),
        None if bias is None else bias.contiguous().reshape(-1), eps, rms)
    stats = _stats_shape(x, normalized_ndim)
    return (y.view(x.shape), None if s is None else s.view(x.shape), None if mean is None else mean.view(stats),
            rstd.view(stats))


def layer_norm(input, weight, bias, *, normalized_ndim: int, eps: float):
    y, _, mean, rstd = _forward(input, None, weight, bias, normalized_ndim, eps, rms=False)
    return y, mean, rstd


def rms_norm(input, weight, *, normalized_ndim: int, eps: float):
    y, _, _, rstd = _forward(input, None, weight, None, normalized_ndim, eps, rms=True)
    return y, rstd


def add_layer_norm(input, residual, weight, bias, *, normalized_ndim: int, eps: float):
    return _forward(input, residual, weight, bias, normalized_ndim, eps, rms=False)


def add_rms_norm(input, residual, weight, *, normalized_ndim: int, eps: float):
    y, s, _, rstd = _forward(input, residual, weight, None, normalized_ndim, eps, rms=True)
    return y, s, rstd


def _backward(dy, ds, x, mean, rstd, weight, normalized_ndim: int, rms: bool, bias_grad: bool):
    check_dtype(x, "input")
    rows = as_rows(x, normalized_ndim)
    dx, dw, db = launch_backward(
        as_rows(dy, normalized_ndim), None if ds is None else as_rows(ds, normalized_ndim), rows,
        None if mean is None else mean.float().contiguous().reshape(-1), rstd.float().contiguous().reshape(-1),
        None if weight is None else weight.contiguous().reshape(-1), bias_grad, rms)
    shape = x.shape[x.dim() - normalized_ndim:]
    return dx.view(x.shape), None if dw is None else dw.view(shape), None if db is None else db.view(shape)


def layer_norm_backward(grad_output, input, mean, rstd, weight, *, normalized_ndim: int, bias_grad: bool):
    return _backward(grad_output, None, input, mean, rstd, weight, normalized_ndim, False, bias_grad)


def rms_norm_backward(grad_output, input, rstd, weight, *, normalized_ndim: int):
    dx, dw, _ = _backward(grad_output, None, input, None, rstd, weight, normalized_ndim, True, False)
    return dx, dw


def add_layer_norm_backward(grad_output, grad_sum, sum, mean, rstd, weight, *, normalized_ndim: int,
                            bias_grad: bool):
    return _backward(grad_output, grad_sum, sum, mean, rstd, weight, normalized_ndim, False, bias_grad)


def add_rms_norm_backward(grad_output, grad_sum, sum, rstd, weight, *, normalized_ndim: int):
    dx, dw, _ = _backward(grad_output, grad_sum, sum, None, rstd, weight, normalized_ndim, True, False)
    return dx, dw


# ---------------------------------------------------------------------------------------------
# Compile gate

# How the rows can look to the runtime: "aligned" (16-byte-aligned pointers, row length divisible
# by 16: 128-bit loads) for every dtype; "offset" (inputs one element into their storage, ragged
# row length and count) for fp32, whose code equals the half types' but for the conversions.
GATE_SPECIALISATIONS = (("fp32", "aligned"), ("fp16", "aligned"), ("bf16", "aligned"), ("fp32", "offset"))
# (name, RMS, ADD, HAS_W, HAS_B): what the public ops launch; the affine-free builds only drop loads
# and stores, so only layer_norm's is built, in fp32.
VARIANTS = (("layer_norm", False, False, True, True), ("rms_norm", True, False, True, False),
            ("add_layer_norm", False, True, True, True), ("add_rms_norm", True, True, True, False))
PLAIN_VARIANT = ("layer_norm_no_affine", False, False, False, False)
_GATE_ROWS = 4096
_RAGGED = 3


def _gate_sizes(alignment: str, launch: RowLaunch) -> dict:
    aligned = alignment == "aligned"
    width = launch.block_n * (2 if launch.long else 1)
    return {"n_rows": _GATE_ROWS - (0 if aligned else 1), "n_cols": width - (0 if aligned else _RAGGED)}


def _row_case(family, kernel, variant_name, args, tdtype, alignment, launch) -> CompileCase:
    """One gate build of a row kernel (the ``_long`` one when the launch loops over the row)."""
    return CompileCase(name=f"{family}{'_long' if launch.long else ''}[{variant_name}]", kernel=kernel, args=args,
                       num_warps=launch.num_warps, expect_load_bits=128 if alignment == "aligned" else None,
                       tags={"dtype": tdtype, "alignment": alignment, "block_n": str(launch.block_n),
                             "rows": str(launch.rows)})


def _forward_case(tdtype, alignment, launch, variant) -> CompileCase:
    name, rms, add, has_w, has_b = variant
    aligned = alignment == "aligned"
    args = {"x_ptr": passed(tdtype, aligned), "r_ptr": passed(tdtype, aligned),
            "w_ptr": passed(tdtype, True), "b_ptr": passed(tdtype, True), "y_ptr": fresh(tdtype),
            "s_ptr": fresh(tdtype), "mean_ptr": fresh("fp32"), "rstd_ptr": fresh("fp32"),
            **_gate_sizes(alignment, launch), "eps": 1e-5,
            "RMS": rms, "ADD": add, "HAS_W": has_w, "HAS_B": has_b,
            **({} if launch.long else {"ROWS": launch.rows}), "BLOCK_N": launch.block_n}
    kernel = norm_forward_long_kernel if launch.long else norm_forward_kernel
    return _row_case("norm_forward", kernel, name, args, tdtype, alignment, launch)


def _backward_case(tdtype, alignment, launch, variant) -> CompileCase:
    name, rms, add, has_w, has_b = variant
    aligned = alignment == "aligned"
    args = {"dy_ptr": passed(tdtype, aligned), "ds_ptr": passed(tdtype, aligned), "x_ptr": passed(tdtype, aligned),
            "w_ptr": passed(tdtype, True), "mean_ptr": fresh("fp32"), "rstd_ptr": fresh("fp32"),
            "dx_ptr": fresh(tdtype), "dw_part_ptr": fresh("fp32"), "db_part_ptr": fresh("fp32"),
            **_gate_sizes(alignment, launch),
            "RMS": rms, "ADD": add, "HAS_W": has_w, "HAS_B": has_b,
            **({} if launch.long else {"ROWS": launch.rows}), "BLOCK_N": launch.block_n}
    kernel = norm_backward_long_kernel if launch.long else norm_backward_kernel
    return _row_case("norm_backward", kernel, name, args, tdtype, alignment, launch)


def compile_cases() -> Iterator[CompileCase]:
    """Forward and backward of every variant at every launch ``row_launch`` can pick, and the
    partial-sum reduction for each weight dtype."""
    for tdtype, alignment in GATE_SPECIALISATIONS:
        variants = VARIANTS + ((PLAIN_VARIANT,) if (tdtype, alignment) == ("fp32", "aligned") else ())
        for variant, launch in itertools.product(variants, all_launches("forward")):
            yield _forward_case(tdtype, alignment, launch, variant)
        for variant, launch in itertools.product(variants, all_launches("backward")):
            yield _backward_case(tdtype, alignment, launch, variant)
    for tdtype in ("fp32", "fp16", "bf16"):
        yield CompileCase(
            name="norm_column_sum", kernel=column_sum_kernel,
            args={"part_ptr": fresh("fp32"), "out_ptr": fresh(tdtype), "n_parts": MAX_BACKWARD_PROGRAMS,
                  "n_cols": 4096, "BLOCK_P": SUM_BLOCK_P, "BLOCK_C": SUM_BLOCK_C},
            num_warps=SUM_WARPS, expect_load_bits=128, tags={"dtype": tdtype})
