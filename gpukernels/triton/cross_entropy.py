"""Cross-entropy kernels: one program per row of logits, an online log-sum-exp over column chunks
(so rows of 256k classes and more work), the loss of the row and, in a second sweep over the
same row, its gradient ``softmax * Q - q`` scaled by the row's upstream gradient; the row's
log-sum-exp too when a probability target will want its gradient, which the second kernel
(``cross_entropy_target_grad_kernel``) writes from it: ``(1 - s) w_k (lse - x_k)`` scaled.

The loss-only launch reads every logit once. With ``WRITE_GRAD`` the gradient is written in the
same launch (the loss as the last consumer of the logits: Liger-Kernel's trick), into a buffer
of its own: the caller's logits are never overwritten, so inputs that something else still reads
stay intact; only the fused linear + cross-entropy hands its own chunk of logits as the gradient
buffer. Per-row losses go to a float32 array and are summed by torch afterwards (two stages, no
atomics). ``KIND``: 0 class indices, 1 class probabilities, 2 focal loss (see
``gpukernels.reference.cross_entropy`` for the formulas).

The class weights of probability targets get their gradient from two more kernels, a column sum
in two stages: ``cross_entropy_weight_partial_kernel`` sums a fixed block of rows per program
into a float32 ``[row_blocks, C]`` buffer, ``cross_entropy_weight_sum_kernel`` adds each column's
partials in block order (the same bits every run, no atomics).
"""

from __future__ import annotations

import itertools
from typing import Iterator, NamedTuple

import torch
import triton
import triton.language as tl

from .. import _cross_entropy_driver as driver
from ._launch import CompileCase, check_dtype, fresh, passed

KINDS = {"index": 0, "probs": 1, "focal": 2}

# ---------------------------------------------------------------------------------------------
# Kernel


@triton.jit
def _safe_max(m):
    # A row (so far) of nothing but -inf shifts by 0: -inf - -inf would be NaN.
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _online_log_sum_exp(m, total, x):
    """One chunk ``x`` of a row joins the running max ``m`` and sum of ``exp(x - m)``."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    shift = _safe_max(m_new)
    return m_new, total * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)


@triton.jit
def _one_minus_exp(lp):
    """1 - exp(lp) for lp <= 0, accurate as lp -> 0 (where 1 - p_y cancels): a Taylor series there."""
    series = -lp * (1.0 + lp * (0.5 + lp * (1.0 / 6.0 + lp * (1.0 / 24.0))))
    return tl.where(lp > -1e-3, series, 1.0 - tl.exp(lp))


@triton.jit
def cross_entropy_kernel(x_ptr, target_ptr, weight_ptr, scale_ptr, loss_ptr, grad_ptr, lse_ptr,
                         n_cols, scale_stride, ignore_index, smoothing, gamma,
                         KIND: tl.constexpr, HAS_WEIGHT: tl.constexpr, WRITE_LOSS: tl.constexpr,
                         WRITE_GRAD: tl.constexpr, WRITE_LSE: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * n_cols
    cols = tl.arange(0, BLOCK_N)
    m = tl.full((), float("-inf"), tl.float32)
    total = tl.zeros((), tl.float32)
    qx = tl.zeros((), tl.float32)  # sum q_k x_k (probabilities) or sum w_k x_k (smoothing)
    qs = tl.zeros((), tl.float32)  # sum q_k (probabilities) or sum w_k (smoothing)
    uniform = smoothing / n_cols
    # The target's logit is picked up in this first sweep, before the block-wide reductions: a
    # gradient written over the logits (the linear + CE hands its chunk of logits as the gradient
    # buffer) cannot then overwrite it before every thread has read it.
    if KIND == 1:
        label = tl.full((), -1, tl.int64)
    else:
        label = tl.load(target_ptr + row).to(tl.int64)
    x_y = tl.zeros((), tl.float32)
    for start in range(0, n_cols, BLOCK_N):
        inside = start + cols < n_cols
        x = tl.load(x_ptr + base + start + cols, mask=inside, other=float("-inf")).to(tl.float32)
        m, total = _online_log_sum_exp(m, total, x)
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + start + cols, mask=inside, other=0.0).to(tl.float32)
        else:
            w = tl.where(inside, 1.0, 0.0)
        x0 = tl.where(inside, x, 0.0)
        x_y += tl.sum(tl.where(cols == label - start, x, 0.0), axis=0)
        if KIND == 1:
            t = tl.load(target_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
            q = (t * (1.0 - smoothing) + uniform) * w
            qx += tl.sum(q * x0, axis=0)
            qs += tl.sum(q, axis=0)
        elif KIND == 0:
            if smoothing > 0.0:
                qx += tl.sum(w * x0, axis=0)
                qs += tl.sum(w, axis=0)
    lse = _safe_max(m) + tl.log(total)
    if WRITE_LSE:
        tl.store(lse_ptr + row, lse)

    # Row coefficients: gradient = (p * big_q - c_y [k == y] - c_w * w_k (or q_k)) * scale
    y = tl.full((), -1, tl.int64)
    c_y = tl.zeros((), tl.float32)
    c_w = tl.zeros((), tl.float32)
    if KIND == 1:
        loss = qs * lse - qx
        big_q = qs
    else:
        valid = label != ignore_index
        y = tl.where(valid, label, -1)
        if HAS_WEIGHT:
            w_y = tl.where(valid, tl.load(weight_ptr + tl.maximum(y, 0)).to(tl.float32), 0.0)
        else:
            w_y = tl.where(valid, 1.0, 0.0)
        if KIND == 0:
            c_y = (1.0 - smoothing) * w_y
            c_w = tl.where(valid, uniform, 0.0)
            loss = tl.where(valid, c_y * (lse - x_y) + c_w * (qs * lse - qx), 0.0)
            big_q = c_y + c_w * qs
        else:
            lp = tl.where(valid, x_y - lse, 0.0)
            one_minus = _one_minus_exp(lp)
            modulator = tl.where(gamma == 0.0, 1.0, tl.exp(gamma * tl.log(one_minus)))
            ratio = tl.where(one_minus > 0.0, tl.exp(lp) / one_minus, 0.0)
            loss = -w_y * modulator * lp
            d_lp = -w_y * (modulator - gamma * modulator * ratio * lp)  # d loss / d log p_y
            big_q = -d_lp
            c_y = -d_lp
    if WRITE_LOSS:
        tl.store(loss_ptr + row, loss)
    if WRITE_GRAD:
        scale = tl.load(scale_ptr + row * scale_stride).to(tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            inside = start + cols < n_cols
            x = tl.load(x_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) * big_q
            if HAS_WEIGHT:
                w = tl.load(weight_ptr + start + cols, mask=inside, other=0.0).to(tl.float32)
            else:
                w = tl.where(inside, 1.0, 0.0)
            if KIND == 1:
                t = tl.load(target_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
                g -= (t * (1.0 - smoothing) + uniform) * w
            elif KIND == 0:
                g -= c_w * w
            g = tl.where(cols == y - start, g - c_y, g) * scale
            tl.store(grad_ptr + base + start + cols, g.to(grad_ptr.dtype.element_ty), mask=inside)


@triton.jit
def cross_entropy_target_grad_kernel(x_ptr, lse_ptr, weight_ptr, scale_ptr, grad_ptr, n_cols, scale_stride,
                                     smoothing, HAS_LSE: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                     BLOCK_N: tl.constexpr):
    """The probability target's gradient of one row, ``(1 - s) w_k (lse - x_k) * scale``: one
    sweep with the forward's log-sum-exp, two without it (the first makes it)."""
    row = tl.program_id(0).to(tl.int64)
    base = row * n_cols
    cols = tl.arange(0, BLOCK_N)
    if HAS_LSE:
        lse = tl.load(lse_ptr + row).to(tl.float32)
    else:
        m = tl.full((), float("-inf"), tl.float32)
        total = tl.zeros((), tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            x = tl.load(x_ptr + base + start + cols, mask=start + cols < n_cols, other=float("-inf")).to(tl.float32)
            m, total = _online_log_sum_exp(m, total, x)
        lse = _safe_max(m) + tl.log(total)
    factor = tl.load(scale_ptr + row * scale_stride).to(tl.float32) * (1.0 - smoothing)
    for start in range(0, n_cols, BLOCK_N):
        inside = start + cols < n_cols
        x = tl.load(x_ptr + base + start + cols, mask=inside, other=0.0).to(tl.float32)
        g = (lse - x) * factor
        if HAS_WEIGHT:
            g *= tl.load(weight_ptr + start + cols, mask=inside, other=0.0).to(tl.float32)
        tl.store(grad_ptr + base + start + cols, g.to(grad_ptr.dtype.element_ty), mask=inside)


@triton.jit
def cross_entropy_weight_partial_kernel(x_ptr, target_ptr, lse_ptr, scale_ptr, partial_ptr, n_rows, n_cols,
                                        scale_stride, smoothing, ROWS_PER_PROGRAM: tl.constexpr,
                                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Stage 1 of the class weights' gradient of probability targets: program (b, j) sums
    ``g_r ((1 - s) t_rk + s / C) (lse_r - x_rk)`` over its ``ROWS_PER_PROGRAM`` rows for its
    ``BLOCK_C`` columns into ``partial[b, columns]`` (float32). Every sum runs in an order the
    code fixes (no atomics), so the same inputs give the same partials."""
    row_block = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_inside = cols < n_cols
    uniform = smoothing / n_cols
    acc = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for start in range(0, ROWS_PER_PROGRAM, BLOCK_R):
        rows = row_block * ROWS_PER_PROGRAM + start + tl.arange(0, BLOCK_R)
        row_inside = rows < n_rows
        lse = tl.load(lse_ptr + rows, mask=row_inside, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + rows * scale_stride, mask=row_inside, other=0.0).to(tl.float32)
        inside = row_inside[:, None] & col_inside[None, :]
        offsets = rows[:, None] * n_cols + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        t = tl.load(target_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
        term = (t * (1.0 - smoothing) + uniform) * (lse[:, None] - x) * scale[:, None]
        acc += tl.where(inside, term, 0.0)
    tl.store(partial_ptr + row_block * n_cols + cols, tl.sum(acc, axis=0), mask=col_inside)


@triton.jit
def cross_entropy_weight_sum_kernel(partial_ptr, out_ptr, n_blocks, n_cols, BLOCK_C: tl.constexpr):
    """Stage 2: each column's partials added in row-block order, in float32, stored in the
    output's dtype."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = cols < n_cols
    acc = tl.zeros((BLOCK_C,), tl.float32)
    for block in range(0, n_blocks):
        acc += tl.load(partial_ptr + block * n_cols + cols, mask=inside, other=0.0)
    tl.store(out_ptr + cols, acc.to(out_ptr.dtype.element_ty), mask=inside)


# ---------------------------------------------------------------------------------------------
# Launch choice: the one heuristic, used at run time and enumerated by compile_cases()


class RowLaunch(NamedTuple):
    block_n: int
    num_warps: int


# (widest row, chunk, warps), narrowest first: a chunk of 4..16 values per thread.
TIERS = ((256, 256, 2), (2048, 2048, 4), (None, 4096, 8))


def row_launch(n_cols: int) -> RowLaunch:
    for widest, block_n, warps in TIERS:
        if widest is None or n_cols <= widest:
            return RowLaunch(block_n, warps)
    raise AssertionError("the last tier takes any row")


def all_launches() -> tuple[RowLaunch, ...]:
    return tuple(RowLaunch(b, w) for _, b, w in TIERS)


def launch_rows(x, target, weight, scale, loss, grad, *, kind: str, ignore_index: int, label_smoothing: float,
                gamma: float, lse=None, launch: RowLaunch | None = None) -> None:
    """One program per row of the dense ``[rows, cols]`` ``x``; ``grad`` may be ``x`` itself."""
    n_rows, n_cols = x.shape
    launch = launch or row_launch(n_cols)
    cross_entropy_kernel[(n_rows,)](
        x, target, weight if weight is not None else x, scale, loss if loss is not None else scale,
        grad if grad is not None else x, lse if lse is not None else scale, n_cols, 0 if scale.numel() == 1 else 1,
        ignore_index, float(label_smoothing), float(gamma), KIND=KINDS[kind], HAS_WEIGHT=weight is not None,
        WRITE_LOSS=loss is not None, WRITE_GRAD=grad is not None, WRITE_LSE=lse is not None,
        BLOCK_N=launch.block_n, num_warps=launch.num_warps)


def launch_target_grad(x, lse, weight, scale, grad, *, label_smoothing: float,
                       launch: RowLaunch | None = None) -> None:
    """One program per row of the dense ``[rows, cols]`` ``x``, the launch tiers of the loss's."""
    n_rows, n_cols = x.shape
    launch = launch or row_launch(n_cols)
    cross_entropy_target_grad_kernel[(n_rows,)](
        x, lse if lse is not None else scale, weight if weight is not None else x, scale, grad, n_cols,
        0 if scale.numel() == 1 else 1, float(label_smoothing), HAS_LSE=lse is not None,
        HAS_WEIGHT=weight is not None, BLOCK_N=launch.block_n, num_warps=launch.num_warps)


class WeightLaunch(NamedTuple):
    rows_per_program: int  # rows one stage-1 program sums: the partial buffer is R / this x C floats
    block_r: int
    block_c: int
    num_warps: int


# One launch for any size: a 16 x 128 tile (16 values per thread at 4 warps), 256 rows per program,
# so the partials are 1/256 of the logits and a 128k-class row still splits into 1000 programs.
WEIGHT_LAUNCH = WeightLaunch(256, 16, 128, 4)
SUM_WARPS = 1  # stage 2: a warp per 128 columns, 4 per thread, so the partials move in 128-bit loads


def weight_row_blocks(n_rows: int, launch: WeightLaunch = WEIGHT_LAUNCH) -> int:
    return triton.cdiv(n_rows, launch.rows_per_program)


def launch_weight_grad(x, target, lse, scale, partial, out, *, label_smoothing: float,
                       launch: WeightLaunch = WEIGHT_LAUNCH) -> None:
    """The class weights' gradient of the dense ``[rows, cols]`` ``x`` and ``target`` into
    ``out`` ``[cols]``, through ``partial`` ``[weight_row_blocks(rows), cols]`` float32."""
    n_rows, n_cols = x.shape
    blocks = weight_row_blocks(n_rows, launch)
    if blocks:  # no rows: stage 2 alone writes the zeros of an empty sum
        cross_entropy_weight_partial_kernel[(blocks, triton.cdiv(n_cols, launch.block_c))](
            x, target, lse, scale, partial, n_rows, n_cols, 0 if scale.numel() == 1 else 1, float(label_smoothing),
            ROWS_PER_PROGRAM=launch.rows_per_program, BLOCK_R=launch.block_r, BLOCK_C=launch.block_c,
            num_warps=launch.num_warps)
    cross_entropy_weight_sum_kernel[(triton.cdiv(n_cols, launch.block_c),)](
        partial, out, blocks, n_cols, BLOCK_C=launch.block_c, num_warps=SUM_WARPS)


def _on(x: torch.Tensor) -> dict:
    return {"device": x.device}


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (torch tensors in and out)


def cross_entropy_rows(input, target, weight, grad_output, *, kind: str, reduction: str, ignore_index: int = -100,
                       label_smoothing: float = 0.0, gamma: float = 0.0, compute_loss: bool = True,
                       compute_grad: bool = False, compute_logsumexp: bool = False):
    check_dtype(input, "input")
    x = input.contiguous()
    target = target.contiguous() if kind == "probs" else target.to(torch.int64).contiguous()
    return driver.rows_loss(
        torch, launch_rows, x, target, None if weight is None else weight.contiguous(), grad_output,
        kind=kind, reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing, gamma=gamma,
        compute_loss=compute_loss, compute_grad=compute_grad, device_of=_on(x),
        empty_like=torch.empty_like, empty=lambda n: torch.empty(n, dtype=torch.float32, device=x.device),
        compute_logsumexp=compute_logsumexp)


def cross_entropy_target_rows(input, logsumexp, weight, grad_output, *, reduction: str,
                              label_smoothing: float = 0.0):
    check_dtype(input, "input")
    x = input.contiguous()
    return driver.target_rows(
        torch, launch_target_grad, x, None if logsumexp is None else logsumexp.contiguous(),
        None if weight is None else weight.contiguous(), grad_output, reduction=reduction,
        label_smoothing=label_smoothing, device_of=_on(x), empty_like=torch.empty_like)


def cross_entropy_weight_rows(input, target, logsumexp, grad_output, *, reduction: str,
                              label_smoothing: float = 0.0):
    check_dtype(input, "input")
    x = input.contiguous()
    return driver.weight_rows(
        torch, launch_rows, _weight_grad, x, target.contiguous(),
        None if logsumexp is None else logsumexp.contiguous(), grad_output, reduction=reduction,
        label_smoothing=label_smoothing, device_of=_on(x),
        empty=lambda shape: torch.empty(shape, dtype=torch.float32, device=x.device),
        out=torch.empty(x.shape[1], dtype=x.dtype, device=x.device))


def _weight_grad(x, target, lse, scale, out, *, label_smoothing: float, empty) -> None:
    partial = empty((weight_row_blocks(x.shape[0]), x.shape[1]))
    launch_weight_grad(x, target, lse, scale, partial, out, label_smoothing=label_smoothing)


def nll_loss_rows(input, target, weight, grad_output, *, reduction: str, ignore_index: int = -100,
                  compute_loss: bool = True, compute_grad: bool = False):
    check_dtype(input, "input")
    return driver.nll_rows(torch, input, target.to(torch.int64), weight, grad_output, reduction=reduction,
                           ignore_index=ignore_index, compute_loss=compute_loss, compute_grad=compute_grad,
                           device_of=_on(input), arange=lambda n: torch.arange(n, device=input.device))


def linear_cross_entropy_rows(input, weight, target, bias, grad_output, *, reduction: str, ignore_index: int = -100,
                              label_smoothing: float = 0.0, compute_loss: bool = True, compute_grad: bool = False,
                              chunk_size: int | None = None):
    check_dtype(input, "input")
    x = input.contiguous()
    return driver.linear_rows_loss(
        torch, launch_rows, x, weight, target.to(torch.int64), bias, grad_output, reduction=reduction,
        ignore_index=ignore_index, label_smoothing=label_smoothing, compute_loss=compute_loss,
        compute_grad=compute_grad, chunk_size=chunk_size, device_of=_on(x),
        empty=lambda n: torch.empty(n, dtype=torch.float32, device=x.device),
        zeros_like=torch.zeros_like, empty_like=torch.empty_like,
        accumulate_matmul=lambda acc, a, b: acc.addmm_(a, b))


# ---------------------------------------------------------------------------------------------
# Compile gate

GATE_DTYPES = ("fp32", "fp16", "bf16")
_GATE_ROWS = 8192


def compile_cases() -> Iterator[CompileCase]:
    """Every KIND with and without class weights, loss-only and loss+gradient, at every launch
    ``row_launch`` can pick; logits as the caller hands them (aligned, a 16-divisible row)."""
    for tdtype, launch, (kind, code) in itertools.product(GATE_DTYPES, all_launches(), KINDS.items()):
        for has_weight, write_grad in itertools.product((False, True), (False, True)):
            target = passed(tdtype, True) if kind == "probs" else passed("i64", True)
            # the log-sum-exp is kept only for a probability target's gradient
            for write_lse in (False, True) if kind == "probs" else (False,):
                args = {
                    "x_ptr": passed(tdtype, True), "target_ptr": target,
                    "weight_ptr": passed(tdtype, True), "scale_ptr": fresh("fp32"), "loss_ptr": fresh("fp32"),
                    "grad_ptr": fresh(tdtype), "lse_ptr": fresh("fp32"), "n_cols": launch.block_n * 2,
                    "scale_stride": 1, "ignore_index": -100, "smoothing": 0.1, "gamma": 2.0, "KIND": code,
                    "HAS_WEIGHT": has_weight, "WRITE_LOSS": True, "WRITE_GRAD": write_grad, "WRITE_LSE": write_lse,
                    "BLOCK_N": launch.block_n,
                }
                flags = f"{',weight' if has_weight else ''}{',grad' if write_grad else ''}{',lse' if write_lse else ''}"
                yield CompileCase(
                    name=f"cross_entropy[{kind}{flags}]", kernel=cross_entropy_kernel, args=args,
                    num_warps=launch.num_warps, tags={"dtype": tdtype, "block_n": str(launch.block_n)})
    for tdtype, launch, has_lse, has_weight in itertools.product(GATE_DTYPES, all_launches(), (False, True),
                                                                 (False, True)):
        args = {
            "x_ptr": passed(tdtype, True), "lse_ptr": passed("fp32", True), "weight_ptr": passed(tdtype, True),
            "scale_ptr": passed("fp32", True), "grad_ptr": fresh(tdtype), "n_cols": launch.block_n * 2,
            "scale_stride": 1, "smoothing": 0.1, "HAS_LSE": has_lse, "HAS_WEIGHT": has_weight,
            "BLOCK_N": launch.block_n,
        }
        yield CompileCase(
            name=f"cross_entropy_target_grad[{'lse' if has_lse else 'recompute'}{',weight' if has_weight else ''}]",
            kernel=cross_entropy_target_grad_kernel, args=args, num_warps=launch.num_warps,
            tags={"dtype": tdtype, "block_n": str(launch.block_n)})
    for tdtype in GATE_DTYPES:
        # the log-sum-exp alone: what the weights' gradient launches when the forward did not keep it
        args = {
            "x_ptr": passed(tdtype, True), "target_ptr": passed(tdtype, True), "weight_ptr": passed(tdtype, True),
            "scale_ptr": fresh("fp32"), "loss_ptr": fresh("fp32"), "grad_ptr": fresh(tdtype), "lse_ptr": fresh("fp32"),
            "n_cols": 0, "scale_stride": 1, "ignore_index": -100, "smoothing": 0.1, "gamma": 0.0,
            "KIND": KINDS["probs"], "HAS_WEIGHT": False, "WRITE_LOSS": False, "WRITE_GRAD": False, "WRITE_LSE": True,
        }
        for launch in all_launches():
            yield CompileCase(
                name="cross_entropy[probs,lse-only]", kernel=cross_entropy_kernel,
                args={**args, "n_cols": launch.block_n * 2, "BLOCK_N": launch.block_n}, num_warps=launch.num_warps,
                tags={"dtype": tdtype, "block_n": str(launch.block_n)})
        weight = WEIGHT_LAUNCH
        yield CompileCase(
            name="cross_entropy_weight_partial", kernel=cross_entropy_weight_partial_kernel,
            args={"x_ptr": passed(tdtype, True), "target_ptr": passed(tdtype, True), "lse_ptr": passed("fp32", True),
                  "scale_ptr": passed("fp32", True), "partial_ptr": fresh("fp32"), "n_rows": _GATE_ROWS,
                  "n_cols": weight.block_c * 2, "scale_stride": 1, "smoothing": 0.1,
                  "ROWS_PER_PROGRAM": weight.rows_per_program, "BLOCK_R": weight.block_r,
                  "BLOCK_C": weight.block_c},
            num_warps=weight.num_warps, tags={"dtype": tdtype, "block_n": str(weight.block_c)})
        yield CompileCase(
            name="cross_entropy_weight_sum", kernel=cross_entropy_weight_sum_kernel,
            args={"partial_ptr": passed("fp32", True), "out_ptr": fresh(tdtype), "n_blocks": 32,
                  "n_cols": weight.block_c * 2, "BLOCK_C": weight.block_c},
            num_warps=SUM_WARPS, tags={"dtype": tdtype, "block_n": str(weight.block_c)})
