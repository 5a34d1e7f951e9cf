"""The host side of the cross-entropy family shared by the GPU backends (Triton on torch
tensors, CuPy on cupy arrays): denominators of "mean", the per-row gradient scales, the
reduction of the per-row losses, and the chunk loop of the fused linear + cross-entropy.

Written once over an array module ``xp`` (``torch`` or ``cupy``, whose operators agree on what
is used here) so the backends differ only in the row kernel they launch. Reductions are sums
in the array library (deterministic on one device: no atomics). The formulas are those of
``gpukernels.reference.cross_entropy``, whose docstring derives them.
"""

from __future__ import annotations

from typing import Callable

from .reference.cross_entropy import chunk_rows

# Bytes of logits one chunk of the linear + cross-entropy holds unless told: large enough that a
# chunk's matmuls run near peak (V=128256 in bf16: 1046 rows, 8 chunks at N=8192), small beside the (N, V) logits.
GPU_CHUNK_BYTES = 256 << 20

# A row kernel: (logits [R, C], target, weight, scale [R] or [1] (stride 0), loss out or None,
# grad out or None (may be the logits themselves), params, lse=log-sum-exp out or None) -> None
RowKernel = Callable[..., None]
# The probability target's gradient: (logits [R, C], lse [R] or None (recomputed), weight,
# scale [R] or [1], grad out [R, C], label_smoothing) -> None
TargetKernel = Callable[..., None]
# The class weights' gradient: (logits [R, C], target [R, C], lse [R] float32, scale [R] or [1],
# out [C], label_smoothing, empty=float32 workspace maker) -> None, deterministic (two stages);
# with R = 0 it writes zeros (lse is then None)
WeightKernel = Callable[..., None]


def _float32(xp, a):
    """``a`` as float32 (torch: ``.to``; cupy/numpy: ``.astype``). The CuPy backend converts its
    bfloat16 arrays itself before they get here: cupy cannot cast ml_dtypes' bfloat16."""
    return a.to(xp.float32) if hasattr(a, "to") else a.astype(xp.float32)


def denominators(xp, kind: str, target, weight, ignore_index: int, rows: int, device_of):
    """What each row adds to the denominator of "mean" (float32)."""
    if kind == "probs":
        return _float32(xp, xp.ones(rows, dtype=xp.int32, **device_of))
    valid = target != ignore_index
    if kind == "index" and weight is not None:
        gathered = _float32(xp, weight)[xp.where(valid, target, 0)]
        return xp.where(valid, gathered, 0.0)
    return _float32(xp, valid)


def row_scales(xp, grad_output, denominator, reduction: str, device_of):
    """The gradient scale of every row: a [rows] array for "none", else one element read with
    stride 0. ``grad_output`` None means 1. Stays on the device (no host sync)."""
    g = _float32(xp, xp.ones(1, dtype=xp.int32, **device_of)) if grad_output is None else _float32(xp, grad_output)
    g = g.reshape(-1)
    if reduction == "mean":  # an all-ignored batch: every row's gradient is 0, as in torch (not 0 * inf)
        total = denominator.sum()
        g = xp.where(total != 0, g / total, 0.0)
    return g


def reduce(loss, denominator, reduction: str):
    if reduction == "none":
        return loss
    total = loss.sum()
    return total / denominator.sum() if reduction == "mean" else total


def rows_loss(xp, kernel: RowKernel, input, target, weight, grad_output, *, kind: str, reduction: str,
              ignore_index: int, label_smoothing: float, gamma: float, compute_loss: bool, compute_grad: bool,
              device_of: dict, empty_like: Callable, empty: Callable, weight_float32=None,
              compute_logsumexp: bool = False):
    """(reduced loss or None, gradient or None, float32 row log-sum-exp or None) of the rows
    ``input`` with one kernel launch. ``weight_float32``: the class weights as float32 for the
    denominators, when the backend made that copy itself (the kernel reads ``weight`` in its
    storage dtype)."""
    rows = input.shape[0]
    weight_for_sums = weight if weight_float32 is None else weight_float32
    denominator = denominators(xp, kind, target, weight_for_sums, ignore_index, rows, device_of)
    scale = row_scales(xp, grad_output, denominator, reduction, device_of)
    loss = empty(rows) if compute_loss else None
    grad = empty_like(input) if compute_grad else None
    lse = empty(rows) if compute_logsumexp else None
    if rows and (compute_loss or compute_grad or compute_logsumexp):
        kernel(input, target, weight, scale, loss, grad, kind=kind, ignore_index=ignore_index,
               label_smoothing=label_smoothing, gamma=gamma, lse=lse)
    return (None if loss is None else reduce(loss, denominator, reduction)), grad, lse


def target_rows(xp, kernel: TargetKernel, input, logsumexp, weight, grad_output, *, reduction: str,
                label_smoothing: float, device_of: dict, empty_like: Callable):
    """The probability target's gradient ``(1 - s) w_k (lse - x_k)`` times the row's scale ("mean"
    divides by the number of rows), one kernel launch; ``logsumexp`` None: the kernel makes it."""
    rows = input.shape[0]
    denominator = denominators(xp, "probs", None, None, 0, rows, device_of)
    scale = row_scales(xp, grad_output, denominator, reduction, device_of)
    grad = empty_like(input)
    if rows and input.shape[1]:
        kernel(input, None if logsumexp is None else _float32(xp, logsumexp), weight, scale, grad,
               label_smoothing=label_smoothing)
    return grad


def weight_rows(xp, row_kernel: RowKernel, weight_kernel: WeightKernel, input, target, logsumexp, grad_output, *,
                reduction: str, label_smoothing: float, device_of: dict, empty: Callable, out):
    """The class weights' gradient of probability targets, ``sum_r g_r t'_rk (lse_r - x_rk)``, into
    ``out`` ``[C]`` (the storage dtype): a two-stage column sum (``weight_kernel``); the row
    log-sum-exp, when the forward did not keep it, from a lse-only launch of the row kernel. With
    no rows stage 1 has nothing to do and stage 2 writes the zeros of an empty sum."""
    rows, cols = input.shape
    denominator = denominators(xp, "probs", None, None, 0, rows, device_of)
    scale = row_scales(xp, grad_output, denominator, reduction, device_of)
    if not cols:
        return out
    if logsumexp is None and rows:
        logsumexp = empty(rows)
        row_kernel(input, target, None, scale, None, None, kind="probs", ignore_index=-100,
                   label_smoothing=label_smoothing, gamma=0.0, lse=logsumexp)
    weight_kernel(input, target, None if logsumexp is None else _float32(xp, logsumexp), scale, out,
                  label_smoothing=label_smoothing, empty=empty)
    return out


def nll_rows(xp, input, target, weight, grad_output, *, reduction: str, ignore_index: int, compute_loss: bool,
             compute_grad: bool, device_of: dict, arange: Callable):
    """NLL is a gather of one value per row and a scatter back: the array library's indexing does
    it, no row kernel needed (the denominators, scales and reduction are the family's)."""
    rows = input.shape[0]
    denominator = denominators(xp, "index", target, weight, ignore_index, rows, device_of)
    index = xp.where(target != ignore_index, target, 0)
    picked = arange(rows)
    loss = None
    if compute_loss:
        loss = reduce(-denominator * _float32(xp, input[picked, index]), denominator, reduction)
    grad = None
    if compute_grad:
        scale = row_scales(xp, grad_output, denominator, reduction, device_of)
        grad = xp.zeros_like(input)
        grad[picked, index] = -denominator * scale
    return loss, grad


def linear_rows_loss(xp, kernel: RowKernel, input, weight, target, bias, grad_output, *, reduction: str,
                     ignore_index: int, label_smoothing: float, compute_loss: bool, compute_grad: bool,
                     chunk_size: int | None, device_of: dict, empty: Callable, zeros_like: Callable,
                     empty_like: Callable, accumulate_matmul: Callable):
    """``cross_entropy(input @ weight.T + bias, target)`` and its gradients, ``chunk`` rows of
    logits at a time. The row kernel writes each chunk's logit gradient over the chunk's logits
    (nothing else reads them), so the extra memory is one chunk of logits; the weight and bias
    gradients accumulate in their own dtype (``accumulate_matmul(acc, a, b)``: acc += a @ b, in
    place where the library can), as Liger-Kernel's do."""
    rows, vocab = input.shape[0], weight.shape[0]
    denominator = denominators(xp, "index", target, None, ignore_index, rows, device_of)
    scale = row_scales(xp, grad_output, denominator, reduction, device_of)
    per_row_scale = scale.shape[0] == rows and reduction == "none"
    loss = empty(rows) if compute_loss else None
    grad_input = empty_like(input) if compute_grad else None
    grad_weight = zeros_like(weight) if compute_grad else None
    grad_bias = zeros_like(bias) if compute_grad and bias is not None else None
    step = chunk_rows(rows, vocab, input.element_size() if hasattr(input, "element_size") else input.itemsize,
                      chunk_size, GPU_CHUNK_BYTES)
    for lo in range(0, rows, step):
        hi = min(lo + step, rows)
        logits = input[lo:hi] @ weight.T
        if bias is not None:
            logits += bias
        kernel(logits, target[lo:hi], None, scale[lo:hi] if per_row_scale else scale,
               None if loss is None else loss[lo:hi], logits if compute_grad else None, kind="index",
               ignore_index=ignore_index, label_smoothing=label_smoothing, gamma=0.0)
        if compute_grad:
            xp.matmul(logits, weight, out=grad_input[lo:hi])
            accumulate_matmul(grad_weight, logits.T, input[lo:hi])
            if bias is not None:
                grad_bias += logits.sum(0)
        del logits
    reduced = None if loss is None else reduce(loss, denominator, reduction)
    return reduced, grad_input, grad_weight, grad_bias

