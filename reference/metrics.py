"""Metric statistics in plain NumPy: the oracle of the metric kernels and their CPU fallback.

Each function here is one pass of a kernel: it turns predictions and targets into a few counts
or sums, and ``gpukernels.metrics`` does the tiny arithmetic on them (precision = tp / (tp + fp),
...). The counts are integers (int64) and the sums float64, so they add up exactly across
batches and processes.

* ``label_counts``: binary and multilabel inputs, ``(N, L)`` scores and ``{0, 1}`` targets.
  Rows 0-3 are tp, fp, tn, fn per label with the scores taken as probabilities
  (``pred > threshold``), rows 4-7 the same with the scores taken as logits
  (``sigmoid(pred) > threshold``), row 8 how many scores lie outside [0, 1]. torchmetrics picks
  the logit reading when any score lies outside [0, 1]; counting both ways keeps it one pass.
* ``class_counts``: multiclass, ``(N, C)`` scores (argmax, first maximum wins, as torch.argmax)
  or ``(N,)`` labels. Rows: tp, how often each class was predicted, how often it was the target.
* ``roc_area``: exact AUROC of each column, as twice the Mann-Whitney statistic with ties counted
  half (scikit-learn's trapezoidal ROC area), plus the positives and negatives.
* ``binned_roc_counts``: for each threshold, the positives and negatives scored ``>=`` it.
* ``regression_sums``: per output, n, sum(target), sum((target - mean)^2), sum((pred - target)^2),
  sum(|pred - target|), sum(|pred - target| / max(|target|, eps)); ``rows`` names the ones the
  caller reads (the others are NaN, not computed).

As the CPU fallback, large inputs are cut into tiles of rows (their size set by the shape alone)
counted or summed on ``_parallel``'s pool; the tiles' integer counts add up exactly and their sums
merge in a fixed order, so every thread count gives the same bits.

Targets equal to ``ignore_index`` (None: nothing ignored) and targets out of range do not count;
the public functions reject out-of-range targets before this runs.
"""

from __future__ import annotations

import math

import numpy as np

from ._parallel import PARALLEL_MIN_BYTES, _items_per_chunk, run, split

MAPE_EPSILON = 1.17e-06  # torchmetrics' clamp of |target| in mean_absolute_percentage_error


def _kept(target: np.ndarray, low: int, high: int, ignore_index: int | None) -> np.ndarray:
    """True where a target counts: inside [low, high) and not ``ignore_index``."""
    keep = (target >= low) & (target < high)
    if ignore_index is not None:
        keep &= target != ignore_index
    return keep


def logit(threshold: float) -> float:
    """log(t / (1 - t)): ``sigmoid(p) > t`` is ``p > logit(t)``, with no exp per element."""
    if threshold <= 0.0:
        return -math.inf
    if threshold >= 1.0:
        return math.inf
    return math.log(threshold / (1.0 - threshold))


def float32_below(x: float) -> float:
    """The largest float32 <= x: for every float32 p, ``p > float32_below(x)`` is ``p > x``."""
    f = np.float32(x)
    if float(f) > x:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _scores(preds: np.ndarray) -> np.ndarray:
    """Scores as the kernels compare them: float16 in float32 (as they load it), others as they are."""
    return preds.astype(np.float32) if preds.dtype == np.float16 else preds


def _per_row_tile(function, *arrays: np.ndarray) -> list:
    """``function`` applied to tiles of rows of the equally long ``arrays`` (on the pool when
    they are large): the results in row order. One tile when small or empty."""
    rows = arrays[0].shape[0]
    row_bytes = max(a.itemsize * math.prod(a.shape[1:]) for a in arrays)
    if rows * row_bytes < PARALLEL_MIN_BYTES:
        return [function(*arrays)]
    tiles = split(rows, _items_per_chunk(rows, row_bytes))
    results: list = [None] * len(tiles)

    def task(k: int, lo: int, hi: int) -> None:
        results[k] = function(*(a[lo:hi] for a in arrays))

    run([lambda k=k, lo=lo, hi=hi: task(k, lo, hi) for k, (lo, hi) in enumerate(tiles)])
    return results


def _count_per_column(mask: np.ndarray) -> np.ndarray:
    """(L,) int64: the true entries of each column of an (N, L) bool mask."""
    if mask.shape[1] == 1:  # count_nonzero without an axis is the fast (SIMD popcount) loop
        return np.array([np.count_nonzero(mask)], dtype=np.int64)
    return np.count_nonzero(mask, axis=0).astype(np.int64)


def _label_tile(preds: np.ndarray, target: np.ndarray, threshold: float, limit: float,
                ignore_index: int | None) -> np.ndarray:
    """``label_counts`` of one tile of rows. Counted with boolean masks, not a bincount of
    2 * truth + hard: bool passes over the tile are cheap, int64 codes are not."""
    scores = _scores(preds)
    if target.dtype.kind == "i":  # 0 <= target <= 1 in one compare: negative values wrap around
        counted = target.view(f"u{target.itemsize}") <= 1
    else:
        counted = _kept(target, 0, 2, None)
    positive = target == 1
    negative = counted ^ positive  # counted and not 1: 0
    if ignore_index in (0, 1):
        (negative if ignore_index == 0 else positive)[...] = False
    positives, negatives = _count_per_column(positive), _count_per_column(negative)
    rows = []
    for cut in (threshold, limit):  # the probability reading, then the logit reading
        hard = scores > cut
        tp, fp = _count_per_column(hard & positive), _count_per_column(hard & negative)
        rows += [tp, fp, negatives - fp, positives - tp]
    rows.append(_count_per_column(scores < 0) + _count_per_column(scores > 1))
    return np.stack(rows)


def label_counts(preds: np.ndarray, target: np.ndarray, threshold: float, ignore_index: int | None) -> np.ndarray:
    """int64 (9, L) counts of ``(N, L)`` scores against ``(N, L)`` targets (see the module doc).
    The logit reading compares with ``logit(threshold)`` (exactly ``sigmoid(p) > threshold``,
    in float32 for float32 scores, as the kernels)."""
    limit = logit(threshold) if preds.dtype == np.float64 else float32_below(logit(threshold))
    tiles = _per_row_tile(lambda p, t: _label_tile(p, t, threshold, limit, ignore_index), preds, target)
    return np.sum(tiles, axis=0, dtype=np.int64)


def _argmax_rows(scores: np.ndarray) -> np.ndarray:
    """int64 (N,): ``scores.argmax(1)``, tiles of rows on the pool (a row of a few classes costs
    NumPy's argmax a call of its inner loop each: the time is per row, not per byte)."""
    labels = np.empty(scores.shape[0], dtype=np.int64)
    _per_row_tile(lambda s, out: s.argmax(1, out=out), scores, labels)
    return labels


def class_counts(preds: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """int64 (3, C): tp, predicted and target counts per class of ``(N, C)`` scores or ``(N,)`` labels."""
    labels = _argmax_rows(preds) if preds.ndim == 2 else preds.astype(np.int64)
    t = target.astype(np.int64, copy=False)
    if ignore_index is not None or t.size and (t.min() < 0 or t.max() >= num_classes) \
            or preds.ndim == 1 and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        keep = _kept(t, 0, num_classes, ignore_index) & (labels >= 0) & (labels < num_classes)
        t, labels = t[keep], labels[keep]
    if num_classes <= 256:  # the confusion matrix, one bincount
        confusion = np.bincount(t * num_classes + labels, minlength=num_classes**2).reshape(num_classes, num_classes)
        return np.stack([confusion.diagonal(), confusion.sum(0), confusion.sum(1)]).astype(np.int64)
    return np.stack([np.bincount(t[labels == t], minlength=num_classes), np.bincount(labels, minlength=num_classes),
                     np.bincount(t, minlength=num_classes)]).astype(np.int64)


def _column_labels(target: np.ndarray, columns: int, one_vs_rest: bool, ignore_index: int | None) -> np.ndarray:
    """int8 (N, columns): 1 positive, 0 negative, -1 not counted. ``one_vs_rest``: ``target``
    holds class indices (N,) and column c's positives are the samples of class c."""
    if one_vs_rest:
        keep = _kept(target, 0, columns, ignore_index)[:, None]
        positive = target[:, None] == np.arange(columns)
    else:
        keep = _kept(target, 0, 2, ignore_index)
        positive = target == 1
    return np.where(keep, positive.astype(np.int8), np.int8(-1))


def roc_area(preds: np.ndarray, target: np.ndarray, one_vs_rest: bool, ignore_index: int | None) -> np.ndarray:
    """int64 (3, L): twice the ROC area times P*N, P and N, per column of the ``(N, L)`` scores.

    In descending score order, a negative scores below every positive before its tie group and
    level with the positives of its group: it adds TP(before group) + TP(group)/2 to the
    Mann-Whitney count. Summed over elements, with exclusive prefix counts TPx, FPx and their
    values TPs, FPs at the start of the element's tie group, twice the count is

        sum over negatives of (TPs + TPx) + sum over positives of (FPx - FPs),

    which needs only values known at the group's start: one sort and one forward scan."""
    n, columns = preds.shape
    labels = _column_labels(target, columns, one_vs_rest, ignore_index)
    order = np.argsort(-_scores(preds), axis=0)  # the order within a tie group does not matter
    scores = np.take_along_axis(preds, order, 0)
    labels = np.take_along_axis(labels, order, 0)
    positive, negative = (labels == 1).astype(np.int64), (labels == 0).astype(np.int64)
    tp_before = np.cumsum(positive, 0) - positive
    fp_before = np.cumsum(negative, 0) - negative
    starts = np.ones(scores.shape, dtype=bool)
    starts[1:] = scores[1:] != scores[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n)[:, None], 0), axis=0)
    tp_start = np.take_along_axis(tp_before, group_start, 0)
    fp_start = np.take_along_axis(fp_before, group_start, 0)
    area2 = (negative * (tp_start + tp_before) + positive * (fp_before - fp_start)).sum(0)
    return np.stack([area2, positive.sum(0), negative.sum(0)]).astype(np.int64).reshape(3, columns)


def binned_roc_counts(preds: np.ndarray, target: np.ndarray, thresholds: int | np.ndarray, one_vs_rest: bool,
                      ignore_index: int | None) -> np.ndarray:
    """int64 (L, T+1, 2): ``[:, k]`` the positives and the negatives scored ``>=`` threshold k
    (thresholds ascending: an int means torchmetrics' ``linspace(0, 1, T)`` in float32), and
    ``[:, T]`` all positives and negatives (P, N)."""
    if not isinstance(thresholds, np.ndarray):
        from gpukernels.ops.metrics import linspace_thresholds

        thresholds = linspace_thresholds(thresholds)
    n, columns = preds.shape
    labels = _column_labels(target, columns, one_vs_rest, ignore_index)
    t = len(thresholds)
    # the number of thresholds <= score, minus one: the highest threshold the score reaches
    bins = np.searchsorted(thresholds, preds, side="right") - 1
    out = np.zeros((columns, t + 1, 2), dtype=np.int64)
    flat = np.where(bins >= 0, bins, t) + (t + 1) * np.arange(columns)  # below every threshold: bin t
    for kind in (0, 1):  # 0 positives, 1 negatives
        chosen = labels == (1 - kind)
        out[:, :, kind] = np.bincount(flat[chosen], minlength=columns * (t + 1)).reshape(columns, t + 1)
    totals = out.sum(1)
    out[:, :t] = np.cumsum(out[:, :t][:, ::-1], axis=1)[:, ::-1]  # >= threshold: the bins above it
    out[:, t] = totals
    return out


REGRESSION_ROWS = (0, 1, 2, 3, 4, 5)


def _regression_tile(preds: np.ndarray, target: np.ndarray, rows: frozenset) -> np.ndarray:
    """float64 (6, M): the ``rows`` of ``regression_sums`` for one tile of rows, NaN elsewhere.
    Float32 and float16 inputs are summed in float32 (NumPy's pairwise sums), float64 in float64."""
    p, t = _scores(preds), _scores(target)
    dtype = np.result_type(p, t)
    n, outputs = t.shape
    sums = np.full((6, outputs), np.nan)
    sums[0] = n
    if rows & {1, 2}:
        total = t.sum(0, dtype=dtype)
        sums[1] = total
        if 2 in rows:
            centred = np.subtract(t, total / n if n else 0, dtype=dtype)
            sums[2] = np.einsum("ij,ij->j", centred, centred)
    if rows & {3, 4, 5}:
        error = np.subtract(p, t, dtype=dtype)
        if 3 in rows:
            sums[3] = np.einsum("ij,ij->j", error, error)
        if rows & {4, 5}:
            np.abs(error, out=error)
            sums[4] = error.sum(0)
        if 5 in rows:
            error /= np.maximum(np.abs(t), dtype.type(MAPE_EPSILON))
            sums[5] = error.sum(0)
    return sums


def regression_sums(preds: np.ndarray, target: np.ndarray, rows: tuple[int, ...] = REGRESSION_ROWS) -> np.ndarray:
    """float64 (6, M) per output column of ``(N, M)`` arrays (see the module doc); only the
    ``rows`` asked for are computed (row 0, n, always is), the others are NaN. Tiles of rows
    are summed alone and merged as the GPU kernels' tiles are (``merge_partials``)."""
    wanted = frozenset(rows)
    tiles = _per_row_tile(lambda p, t: _regression_tile(p, t, wanted), preds, target)
    return np.stack(merge_partials(np.stack(tiles, axis=1)))


def merge_partials(parts):
    """The six (M,) rows of ``regression_sums`` from float64 (6, tiles, M) tile sums of the GPU
    kernels (any array library: operators and ``.sum`` only). Fixed order, so deterministic; the
    tiles' centred sums of squares combine around the overall mean (Chan et al.):
    M2 = sum(M2_tile) + sum(n_tile * (mean_tile - mean)^2)."""
    count, total = parts[0], parts[1]
    n = count.sum(0)
    mean = total.sum(0) / (n + (n == 0))  # no rows: 0, not 0/0
    tile_mean = total / (count + (count == 0))
    spread = parts[2].sum(0) + (count * (tile_mean - mean) ** 2).sum(0)
    return [n, total.sum(0), spread, parts[3].sum(0), parts[4].sum(0), parts[5].sum(0)]
