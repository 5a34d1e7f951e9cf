"""Metric kernels: confusion counts in one pass (integer atomics, exact in any order), the exact
AUROC scan over sorted scores, binned ROC counts, and deterministic two-stage regression sums.

What each computes is written out in ``gpukernels.reference.metrics``. Counts are int64 and
accumulated with integer atomic adds only: integer addition is associative, so the
result is the same bits in any order. Float sums never use atomics: each program writes its
partial sums and a fixed-order reduction adds them.
"""

from __future__ import annotations

import functools
from typing import Iterator, NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import CompileCase, fresh, passed

_NO_IGNORE = -1  # ignore_index=None: targets below 0 never count anyway


# ---------------------------------------------------------------------------------------------
# Confusion counts


@triton.jit
def _column_sums(flags, col_ok):
    """Per-column count of true flags of a (ROWS, BLOCK_L) tile, as int64."""
    return tl.sum((flags & col_ok[None, :]).to(tl.int64), axis=0)


@triton.jit
def label_counts_kernel(preds_ptr, target_ptr, counts_ptr, n_rows, n_labels, threshold, logit_threshold,
                        ignore_index, ROWS: tl.constexpr, BLOCK_L: tl.constexpr):
    """A (ROWS, BLOCK_L) tile of (N, L) scores: the nine per-label counts of the reference's
    ``label_counts`` summed over the tile's rows, then one integer atomic per count and label.
    ``logit_threshold`` is the largest float32 <= log(t / (1 - t)), so ``p > logit_threshold``
    is ``sigmoid(p) > t`` for every float32 p, without an exp per element."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    col_ok = cols < n_labels
    inside = (rows[:, None] < n_rows) & col_ok[None, :]
    offsets = rows[:, None] * n_labels + cols[None, :]
    p = tl.load(preds_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    t = tl.load(target_ptr + offsets, mask=inside, other=-1)
    kept = inside & (t >= 0) & (t < 2) & (t != ignore_index)
    positive = kept & (t == 1)
    negative = kept & (t == 0)
    as_probability = p > threshold
    as_logit = p > logit_threshold
    out = counts_ptr + cols
    tl.atomic_add(out + 0 * n_labels, _column_sums(as_probability & positive, col_ok), mask=col_ok)  # integer atomic
    tl.atomic_add(out + 1 * n_labels, _column_sums(as_probability & negative, col_ok), mask=col_ok)  # integer atomic
    tl.atomic_add(out + 2 * n_labels, _column_sums(~as_probability & negative, col_ok), mask=col_ok)  # integer atomic
    tl.atomic_add(out + 3 * n_labels, _column_sums(~as_probability & positive, col_ok), mask=col_ok)  # integer atomic
    tl.atomic_add(out + 4 * n_labels, _column_sums(as_logit & positive, col_ok), mask=col_ok)  # integer atomic
    tl.atomic_add(out + 5 * n_labels, _column_sums(as_logit & negative, col_ok), mask=col_ok)  # integer atomic
    tl.atomic_add(out + 6 * n_labels, _column_sums(~as_logit & negative, col_ok), mask=col_ok)  # integer atomic
    tl.atomic_add(out + 7 * n_labels, _column_sums(~as_logit & positive, col_ok), mask=col_ok)  # integer atomic
    tl.atomic_add(out + 8 * n_labels, _column_sums(inside & ((p < 0.0) | (p > 1.0)), col_ok), mask=col_ok)  # integer atomic


@triton.jit
def class_counts_kernel(preds_ptr, target_ptr, counts_ptr, n_rows, n_classes, ignore_index,
                        LABELS: tl.constexpr, ONE_HOT: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """ROWS samples: the predicted class (argmax of the score row, the first maximum winning as
    in torch.argmax, read in BLOCK_C chunks; or the label itself when LABELS), then the counts.
    ONE_HOT (n_classes <= BLOCK_C): the tile's per-class sums, one atomic per class and count;
    else one atomic per sample and count, spread over the many classes."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    t = tl.load(target_ptr + rows, mask=row_ok, other=-1)
    if LABELS:
        label = tl.load(preds_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    else:
        best = tl.full((ROWS,), float("-inf"), tl.float32)
        label = tl.zeros((ROWS,), tl.int64)
        for start in range(0, n_classes, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            inside = row_ok[:, None] & (cols < n_classes)[None, :]
            x = tl.load(preds_ptr + rows[:, None] * n_classes + cols[None, :], mask=inside,
                        other=float("-inf")).to(tl.float32)
            chunk_max = tl.max(x, axis=1)
            first = tl.min(tl.where(x == chunk_max[:, None], cols[None, :], n_classes), axis=1).to(tl.int64)
            better = chunk_max > best  # strictly: an earlier chunk keeps a tie
            label = tl.where(better, first, label)
            best = tl.where(better, chunk_max, best)
    kept = row_ok & (t >= 0) & (t < n_classes) & (t != ignore_index) & (label >= 0) & (label < n_classes)
    if ONE_HOT:
        classes = tl.arange(0, BLOCK_C)
        class_ok = classes < n_classes
        predicted = (label[:, None] == classes[None, :]) & kept[:, None]
        actual = (t[:, None] == classes[None, :]) & kept[:, None]
        tl.atomic_add(counts_ptr + classes, _column_sums(predicted & actual, class_ok), mask=class_ok)  # integer atomic
        tl.atomic_add(counts_ptr + n_classes + classes, _column_sums(predicted, class_ok), mask=class_ok)  # integer atomic
        tl.atomic_add(counts_ptr + 2 * n_classes + classes, _column_sums(actual, class_ok), mask=class_ok)  # integer atomic
    else:
        safe_t = tl.where(kept, t, 0)
        safe_label = tl.where(kept, label, 0)
        ones = tl.full((ROWS,), 1, tl.int64)
        tl.atomic_add(counts_ptr + safe_t, (label == t).to(tl.int64), mask=kept)  # integer atomic
        tl.atomic_add(counts_ptr + n_classes + safe_label, ones, mask=kept)  # integer atomic
        tl.atomic_add(counts_ptr + 2 * n_classes + safe_t, ones, mask=kept)  # integer atomic


# ---------------------------------------------------------------------------------------------
# AUROC


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _roc_chunk(scores_ptr, labels_ptr, n, BLOCK: tl.constexpr):
    """Chunk ``program_id(0)`` of column ``program_id(1)`` of the sorted scores: (positive,
    negative, whether each element starts a tie group, the chunk, the column)."""
    chunk = tl.program_id(0).to(tl.int64)
    column = tl.program_id(1).to(tl.int64)
    index = chunk * BLOCK + tl.arange(0, BLOCK)
    inside = index < n
    s = tl.load(scores_ptr + column * n + index, mask=inside, other=0.0).to(tl.float32)
    previous = tl.load(scores_ptr + column * n + index - 1, mask=inside & (index > 0), other=0.0).to(tl.float32)
    label = tl.load(labels_ptr + column * n + index, mask=inside, other=-1)
    positive = (label == 1).to(tl.int64)
    negative = (label == 0).to(tl.int64)
    starts = inside & ((index == 0) | (s != previous))
    return positive, negative, starts, chunk, column


@triton.jit
def roc_chunk_counts_kernel(scores_ptr, labels_ptr, stats_ptr, n, n_chunks, BLOCK: tl.constexpr):
    """Pass 1 of the exact AUROC scan, every chunk in parallel: the chunk's positives and
    negatives, how many tie groups start in it, and the counts (from the chunk's start) before
    the last such start. stats: (5, columns, chunks) int64. (A max of the start flags, in place
    of their sum, cost an 8-byte stack slot on sm_80/sm_90.)"""
    positive, negative, starts, chunk, column = _roc_chunk(scores_ptr, labels_ptr, n, BLOCK)
    tp_before = tl.cumsum(positive, axis=0) - positive
    fp_before = tl.cumsum(negative, axis=0) - negative
    out = stats_ptr + column * n_chunks + chunk
    plane = tl.num_programs(1).to(tl.int64) * n_chunks
    tl.store(out, tl.sum(positive, axis=0))
    tl.store(out + plane, tl.sum(negative, axis=0))
    # exclusive counts never decrease along the chunk: the last start's are the largest at a start
    tl.store(out + 2 * plane, tl.max(tl.where(starts, tp_before, 0), axis=0))
    tl.store(out + 3 * plane, tl.max(tl.where(starts, fp_before, 0), axis=0))
    tl.store(out + 4 * plane, tl.sum(starts.to(tl.int64), axis=0))


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def roc_scan_kernel(scores_ptr, labels_ptr, carry_ptr, area_ptr, n, n_chunks, BLOCK: tl.constexpr):
    """Pass 2, every chunk in parallel: twice the chunk's share of the Mann-Whitney count (see
    the reference's ``roc_area``), from the counts before the chunk and before the tie group
    open at its start (carry: (4, columns, chunks) int64, from pass 1 by two cumulative ops).
    Inside the chunk, the counts at the latest group start are a running maximum, since the
    exclusive counts never decrease. area: (columns, chunks) int64."""
    positive, negative, starts, chunk, column = _roc_chunk(scores_ptr, labels_ptr, n, BLOCK)
    at = carry_ptr + column * n_chunks + chunk
    plane = tl.num_programs(1).to(tl.int64) * n_chunks
    tp_before = tl.load(at) + tl.cumsum(positive, axis=0) - positive
    fp_before = tl.load(at + plane) + tl.cumsum(negative, axis=0) - negative
    tp_start = tl.associative_scan(tl.where(starts, tp_before, tl.load(at + 2 * plane)), 0, _maximum)
    fp_start = tl.associative_scan(tl.where(starts, fp_before, tl.load(at + 3 * plane)), 0, _maximum)
    area2 = tl.sum(negative * (tp_start + tp_before) + positive * (fp_before - fp_start), axis=0)
    tl.store(area_ptr + column * n_chunks + chunk, area2)


@triton.jit
def binned_counts_kernel(preds_ptr, target_ptr, thresholds_ptr, counts_ptr, n_rows, n_columns, n_thresholds,
                         ignore_index, ONE_VS_REST: tl.constexpr, ROWS: tl.constexpr, BLOCK_L: tl.constexpr):
    """Histogram of (N, L) scores over the bins between ``n_thresholds`` linearly spaced
    thresholds (bin k: thresholds[k] <= score < thresholds[k+1]; below all: bin T), positives and
    negatives apart: counts[column, bin, 0 or 1]. The caller turns bins into ``>=`` counts."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    inside = (rows[:, None] < n_rows) & (cols < n_columns)[None, :]
    p = tl.load(preds_ptr + rows[:, None] * n_columns + cols[None, :], mask=inside, other=0.0).to(tl.float32)
    if ONE_VS_REST:
        t = tl.load(target_ptr + rows, mask=rows < n_rows, other=-1)
        kept = inside & ((t >= 0) & (t < n_columns) & (t != ignore_index))[:, None]
        positive = t[:, None] == cols[None, :]
    else:
        t = tl.load(target_ptr + rows[:, None] * n_columns + cols[None, :], mask=inside, other=-1)
        kept = inside & (t >= 0) & (t < 2) & (t != ignore_index)
        positive = t == 1
    # the spacing is 1/(T-1): a first guess, then a step either way against the real thresholds;
    # a NaN score (only with validate_args=False) goes below every threshold, never out of bounds
    p = tl.where(p == p, p, -1.0)
    last = n_thresholds - 1
    guess = tl.minimum(tl.maximum(tl.floor(p * last), -1.0), last * 1.0).to(tl.int32)
    up = tl.minimum(guess + 1, last)
    above = (guess < last) & (p >= tl.load(thresholds_ptr + up, mask=kept, other=0.0))
    down = tl.maximum(guess, 0)
    below = (guess >= 0) & (p < tl.load(thresholds_ptr + down, mask=kept, other=0.0))
    k = tl.where(above, guess + 1, tl.where(below, guess - 1, guess))
    k = tl.where(k < 0, n_thresholds, k)  # below every threshold
    slot = (cols[None, :].to(tl.int64) * (n_thresholds + 1) + k) * 2 + tl.where(positive, 0, 1)
    ones = tl.full((ROWS, BLOCK_L), 1, tl.int64)
    tl.atomic_add(counts_ptr + tl.where(kept, slot, 0), ones, mask=kept)  # integer atomic


# ---------------------------------------------------------------------------------------------
# Regression


@triton.jit
def regression_partials_kernel(preds_ptr, target_ptr, partials_ptr, n_rows, n_outputs, epsilon,
                               ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """A (ROWS, BLOCK_M) tile of (N, M): per output, the tile's count, sum(target), centred sum of
    squares of the target around the tile's own mean, sum of squared, absolute and relative
    errors, written to partials[6, n_tiles, M] (no atomics: merged in a fixed order after)."""
    tile = tl.program_id(0).to(tl.int64)
    rows = tile * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    col_ok = cols < n_outputs
    inside = (rows[:, None] < n_rows) & col_ok[None, :]
    offsets = rows[:, None] * n_outputs + cols[None, :]
    p = tl.load(preds_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    t = tl.load(target_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    count = tl.sum(inside.to(tl.float32), axis=0)
    total = tl.sum(t, axis=0)
    mean = total / tl.maximum(count, 1.0)
    centred = tl.where(inside, t - mean[None, :], 0.0)
    error = tl.abs(p - t)
    relative = error / tl.maximum(tl.abs(t), epsilon)
    stride = tl.num_programs(0) * n_outputs
    out = partials_ptr + tile * n_outputs + cols
    tl.store(out, count, mask=col_ok)
    tl.store(out + stride, total, mask=col_ok)
    tl.store(out + 2 * stride, tl.sum(centred * centred, axis=0), mask=col_ok)
    tl.store(out + 3 * stride, tl.sum(error * error, axis=0), mask=col_ok)
    tl.store(out + 4 * stride, tl.sum(error, axis=0), mask=col_ok)
    tl.store(out + 5 * stride, tl.sum(relative, axis=0), mask=col_ok)


# ---------------------------------------------------------------------------------------------
# Launch choices: the one heuristic, used at run time and enumerated by compile_cases()

TILE_ELEMENTS = 4096  # elements per program of the tiled kernels
MAX_ROWS = 1024  # more rows per program spill on sm_80 (a narrow tile's int64 targets fill the registers)
MAX_BLOCK_COLUMNS = 64  # widest column tile of the (N, L) kernels; wider inputs take more programs
MAX_ONE_HOT = 1024  # widest class tile that reduces in registers; more classes scatter
SCAN_BLOCK = 1024
SCAN_WARPS = 4
MAX_GRID_Y = 65535
TILE_WARPS = 4


class TileLaunch(NamedTuple):
    rows: int
    block: int


def column_tile(n_columns: int, max_rows: int = MAX_ROWS) -> TileLaunch:
    """(rows, columns) of a ~4K-element tile over (N, n_columns) data."""
    block = min(MAX_BLOCK_COLUMNS, triton.next_power_of_2(max(n_columns, 1)))
    return TileLaunch(min(max_rows, TILE_ELEMENTS // block), block)


BINNED_MAX_ROWS = 512  # the binned kernel's scattered atomics: 1024 rows spilled 8 bytes on sm_80


def binned_tile(n_columns: int) -> TileLaunch:
    return column_tile(n_columns, BINNED_MAX_ROWS)


class ClassLaunch(NamedTuple):
    one_hot: bool
    rows: int
    block_c: int


def class_launch(n_classes: int) -> ClassLaunch:
    block_c = triton.next_power_of_2(n_classes)
    if block_c <= MAX_ONE_HOT:
        return ClassLaunch(True, max(1, min(MAX_ROWS, TILE_ELEMENTS // block_c)), block_c)
    return ClassLaunch(False, 4, MAX_ONE_HOT)


def all_column_tiles(tile=column_tile) -> tuple[TileLaunch, ...]:
    return tuple(tile(1 << k) for k in range(0, MAX_BLOCK_COLUMNS.bit_length()))


def all_class_launches() -> tuple[ClassLaunch, ...]:
    return tuple(class_launch(1 << k) for k in range(1, MAX_ONE_HOT.bit_length() + 1))


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (torch tensors in and out)


def _ignore(ignore_index: int | None) -> int:
    return _NO_IGNORE if ignore_index is None else ignore_index


def _dense(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous()


def label_counts(preds: torch.Tensor, target: torch.Tensor, threshold: float, ignore_index: int | None) -> torch.Tensor:
    from gpukernels.reference.metrics import float32_below, logit


    preds, target = _dense(preds), _dense(target)
    n_rows, n_labels = preds.shape
    counts = torch.zeros((9, n_labels), dtype=torch.int64, device=preds.device)
    if preds.numel():
        tile = column_tile(n_labels)
        grid = (triton.cdiv(n_rows, tile.rows), triton.cdiv(n_labels, tile.block))
        label_counts_kernel[grid](preds, target, counts, n_rows, n_labels, threshold,
                                  float32_below(logit(threshold)), _ignore(ignore_index),
                                  ROWS=tile.rows, BLOCK_L=tile.block, num_warps=TILE_WARPS)
    return counts


def class_counts(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    preds, target = _dense(preds), _dense(target)
    counts = torch.zeros((3, num_classes), dtype=torch.int64, device=preds.device)
    n_rows = target.shape[0]
    if n_rows:
        launch = class_launch(num_classes)
        class_counts_kernel[(triton.cdiv(n_rows, launch.rows),)](
            preds, target, counts, n_rows, num_classes, _ignore(ignore_index), LABELS=preds.ndim == 1,
            ONE_HOT=launch.one_hot, ROWS=launch.rows, BLOCK_C=launch.block_c, num_warps=TILE_WARPS)
    return counts


def _column_labels(target: torch.Tensor, columns: int, one_vs_rest: bool, ignore_index: int | None) -> torch.Tensor:
    """int8 (N, columns): 1 positive, 0 negative, -1 not counted (as the reference's)."""
    if one_vs_rest:
        kept = ((target >= 0) & (target < columns) & (target != _ignore(ignore_index)))[:, None]
        positive = target[:, None] == torch.arange(columns, device=target.device)
    else:
        kept = (target >= 0) & (target < 2) & (target != _ignore(ignore_index))
        positive = target == 1
    return torch.where(kept, positive.to(torch.int8), torch.full((), -1, dtype=torch.int8, device=target.device))


def scan_carry(stats: torch.Tensor) -> torch.Tensor:
    """(4, columns, chunks): the counts before each chunk, and before the tie group open at its
    start (the last start in an earlier chunk: a running maximum, as the counts never decrease)."""
    positives, negatives, last_tp, last_fp, has_start = stats
    tp_before = positives.cumsum(-1) - positives
    fp_before = negatives.cumsum(-1) - negatives
    open_tp = torch.where(has_start > 0, tp_before + last_tp, 0).cummax(-1).values
    open_fp = torch.where(has_start > 0, fp_before + last_fp, 0).cummax(-1).values
    shift = lambda x: torch.nn.functional.pad(x[..., :-1], (1, 0))  # noqa: E731 - entering chunk c: up to c-1
    return torch.stack([tp_before, fp_before, shift(open_tp), shift(open_fp)]).contiguous()


def roc_area(preds: torch.Tensor, target: torch.Tensor, one_vs_rest: bool, ignore_index: int | None) -> torch.Tensor:
    """One sort per column (torch.sort, descending), a parallel count pass over chunks, two
    cumulative ops over the chunks' counts, a parallel scan pass; integers throughout."""
    n, columns = preds.shape
    labels = _column_labels(target, columns, one_vs_rest, ignore_index)
    scores, order = torch.sort(preds.t(), dim=1, descending=True)
    labels = torch.gather(labels.t(), 1, order).contiguous()
    scores = scores.contiguous()
    out = torch.zeros((3, columns), dtype=torch.int64, device=preds.device)
    if not (n and columns):
        return out
    chunks = triton.cdiv(n, SCAN_BLOCK)
    for first in range(0, columns, MAX_GRID_Y):  # grid axis 1 holds at most 65535 columns
        width = min(MAX_GRID_Y, columns - first)
        part_scores, part_labels = scores[first:first + width], labels[first:first + width]
        stats = torch.empty((5, width, chunks), dtype=torch.int64, device=preds.device)
        roc_chunk_counts_kernel[(chunks, width)](part_scores, part_labels, stats, n, chunks, BLOCK=SCAN_BLOCK,
                                                 num_warps=SCAN_WARPS)
        area = torch.empty((width, chunks), dtype=torch.int64, device=preds.device)
        roc_scan_kernel[(chunks, width)](part_scores, part_labels, scan_carry(stats), area, n, chunks,
                                         BLOCK=SCAN_BLOCK, num_warps=SCAN_WARPS)
        out[:, first:first + width] = torch.stack([area.sum(-1), stats[0].sum(-1), stats[1].sum(-1)])
    return out


@functools.lru_cache(maxsize=32)
def device_thresholds(count: int, device: torch.device) -> torch.Tensor:
    """The thresholds on ``device``, copied there once (a later update makes no host copy)."""
    from gpukernels.ops.metrics import linspace_thresholds

    return torch.from_numpy(linspace_thresholds(count)).to(device)


def binned_roc_counts(preds: torch.Tensor, target: torch.Tensor, thresholds: int, one_vs_rest: bool,
                      ignore_index: int | None) -> torch.Tensor:
    preds, target = _dense(preds), _dense(target)
    n_rows, columns = preds.shape
    count = thresholds
    hist = torch.zeros((columns, count + 1, 2), dtype=torch.int64, device=preds.device)
    if preds.numel():
        tile = binned_tile(columns)
        grid = (triton.cdiv(n_rows, tile.rows), triton.cdiv(columns, tile.block))
        binned_counts_kernel[grid](preds, target, device_thresholds(count, preds.device), hist,
                                   n_rows, columns, count, _ignore(ignore_index), ONE_VS_REST=one_vs_rest,
                                   ROWS=tile.rows, BLOCK_L=tile.block, num_warps=TILE_WARPS)
    totals = hist.sum(1)
    at_least = hist[:, :count].flip(1).cumsum(1).flip(1)  # >= threshold k: bins k..T-1
    return torch.cat([at_least, totals[:, None]], dim=1)


def regression_sums(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from gpukernels.reference.metrics import MAPE_EPSILON, merge_partials

    preds, target = _dense(preds), _dense(target)
    n_rows, outputs = preds.shape
    tile = column_tile(outputs)
    tiles = triton.cdiv(n_rows, tile.rows)
    partials = torch.empty((6, tiles, outputs), dtype=torch.float32, device=preds.device)
    if preds.numel():
        regression_partials_kernel[(tiles, triton.cdiv(outputs, tile.block))](
            preds, target, partials, n_rows, outputs, MAPE_EPSILON, ROWS=tile.rows, BLOCK_M=tile.block,
            num_warps=TILE_WARPS)
    return torch.stack(merge_partials(partials.double()))


# ---------------------------------------------------------------------------------------------
# Compile gate: every kernel at every launch the heuristics pick, fp32/fp16/bf16 scores

_GATE_ROWS = 1 << 20
_STORAGE = ("fp32", "fp16", "bf16")


def _tags(dtype: str, **more) -> dict[str, str]:
    return {"dtype": dtype, **{k: str(v) for k, v in more.items()}}


def _gate_dtypes(first: bool) -> tuple[str, ...]:
    """fp16/bf16 builds differ from fp32's only in the load's conversion: built at the narrowest
    and widest tiles, fp32 at every one, to keep the gate's time modest."""
    return _STORAGE if first else ("fp32",)


def compile_cases() -> Iterator[CompileCase]:
    tiles = all_column_tiles()
    for tile in tiles:
        columns = tile.block
        for dtype in _gate_dtypes(tile in (tiles[0], tiles[-1])):
            yield CompileCase(
                name="metrics.label_counts", kernel=label_counts_kernel,
                args={"preds_ptr": passed(dtype, True), "target_ptr": passed("i64", True),
                      "counts_ptr": fresh("i64"), "n_rows": _GATE_ROWS, "n_labels": columns, "threshold": 0.5, "logit_threshold": 0.25,
                      "ignore_index": -100, "ROWS": tile.rows, "BLOCK_L": tile.block},
                num_warps=TILE_WARPS, tags=_tags(dtype, rows=tile.rows, block=tile.block))
            yield CompileCase(
                name="metrics.regression_partials", kernel=regression_partials_kernel,
                args={"preds_ptr": passed(dtype, True), "target_ptr": passed(dtype, True),
                      "partials_ptr": fresh("fp32"), "n_rows": _GATE_ROWS, "n_outputs": columns,
                      "epsilon": 1.17e-06, "ROWS": tile.rows, "BLOCK_M": tile.block},
                num_warps=TILE_WARPS, tags=_tags(dtype, rows=tile.rows, block=tile.block))
    binned = all_column_tiles(binned_tile)
    for tile in binned:
        for dtype in _gate_dtypes(tile in (binned[0], binned[-1])):
            for one_vs_rest in (False, True):
                yield CompileCase(
                    name=f"metrics.binned_counts[{'one_vs_rest' if one_vs_rest else 'labels'}]",
                    kernel=binned_counts_kernel,
                    args={"preds_ptr": passed(dtype, True), "target_ptr": passed("i64", True),
                          "thresholds_ptr": fresh("fp32"), "counts_ptr": fresh("i64"), "n_rows": _GATE_ROWS,
                          "n_columns": tile.block, "n_thresholds": 200, "ignore_index": -100,
                          "ONE_VS_REST": one_vs_rest, "ROWS": tile.rows, "BLOCK_L": tile.block},
                    num_warps=TILE_WARPS, tags=_tags(dtype, rows=tile.rows, block=tile.block))
    launches = (*all_class_launches(), class_launch(MAX_ONE_HOT * 2))
    for launch in launches:
        edge = launch in (launches[0], launches[-2], launches[-1])
        variants = [(dtype, False) for dtype in _gate_dtypes(edge)] + [("i64", True)]
        for dtype, labels in variants:
            n_classes = launch.block_c if launch.one_hot else 32000
            yield CompileCase(
                name=f"metrics.class_counts[{'labels' if labels else 'scores'}]", kernel=class_counts_kernel,
                args={"preds_ptr": passed(dtype, True), "target_ptr": passed("i64", True),
                      "counts_ptr": fresh("i64"), "n_rows": _GATE_ROWS, "n_classes": n_classes,
                      "ignore_index": -100, "LABELS": labels, "ONE_HOT": launch.one_hot, "ROWS": launch.rows,
                      "BLOCK_C": launch.block_c},
                num_warps=TILE_WARPS, tags=_tags(dtype, rows=launch.rows, block_c=launch.block_c,
                                                 one_hot=launch.one_hot))
    for dtype in _STORAGE:
        scan_args = {"scores_ptr": fresh(dtype), "labels_ptr": fresh(torch.int8), "n": _GATE_ROWS,
                     "n_chunks": _GATE_ROWS // SCAN_BLOCK, "BLOCK": SCAN_BLOCK}
        yield CompileCase(
            name="metrics.roc_chunk_counts", kernel=roc_chunk_counts_kernel,
            args={**scan_args, "stats_ptr": fresh("i64")},
            num_warps=SCAN_WARPS, tags=_tags(dtype, block=SCAN_BLOCK))
        yield CompileCase(
            name="metrics.roc_scan", kernel=roc_scan_kernel,
            args={**scan_args, "carry_ptr": fresh("i64"), "area_ptr": fresh("i64")},
            num_warps=SCAN_WARPS, tags=_tags(dtype, block=SCAN_BLOCK))
