"""Multi-tensor optimizer and gradient-clipping kernels: one launch updates every tensor of a
dtype group, however many tensors, through a table.

The table (int64, one row per tensor) holds, for each operand, the tensor's element offset from
the first tensor of that operand (which is passed as the kernel's base pointer), and the
tensor's size. A block map (int32 pairs) names the tensor and block each program works on, so
a 1-element tensor costs one program and a 100M-element one a hundred thousand. Offsets from a
typed base pointer instead of raw addresses keep the pointer types known to the compiler and
let ``tl.multiple_of`` promise 16-byte alignment (``ALIGNED``, when every tensor is aligned),
which gives 128-bit loads; they also run unchanged in Triton's interpreter, where CPU tensors'
addresses are real host addresses.

fp32 math whatever the storage; ``grad_scale`` and ``found_inf`` are read on the device (no
host sync), the Adam step counter may be a device tensor (``device_step``) and so may the
learning rate of every step (``device_lr``, torch's tensor ``lr``), so a step can be captured in
a CUDA graph once the tables are cached and replayed with a new learning rate.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Iterator, NamedTuple, Union

import numpy as np
import torch
import triton
import triton.language as tl

from ._launch import TRITON_DTYPES, CompileCase, TensorArg, check_dtype, elementwise_launch, fresh, passed

# ---------------------------------------------------------------------------------------------
# Per-block helpers (fp32)


@triton.jit
def _locate(table_ptr, block_map_ptr, COLUMNS: tl.constexpr, BLOCK: tl.constexpr):
    """(table row of this program's tensor, its size, first element of this block, its indices)."""
    pid = tl.program_id(0)
    tensor = tl.load(block_map_ptr + 2 * pid).to(tl.int64)
    start = tl.load(block_map_ptr + 2 * pid + 1).to(tl.int64) * BLOCK
    row = table_ptr + tensor * COLUMNS
    n = tl.load(row + COLUMNS - 1)
    return row, n, start, start + tl.arange(0, BLOCK)


@triton.jit
def _operand(base, row, column, idx, ALIGNED: tl.constexpr, HAS_MASTER: tl.constexpr = False):
    """Pointers to elements ``idx`` of the tensor in ``column`` of the table row."""
    offset = tl.load(row + column)
    if ALIGNED:  # every tensor starts 16-byte aligned: offsets are whole 16-byte vectors
        if HAS_MASTER:
            # 16-bit parameters beside fp32 master weights and state: every operand in fp32's
            # 4-element vectors, so all share one register layout (8-element fp16 vectors need
            # a shuffle through shared memory and ~180 registers, a third of the occupancy).
            offset = tl.multiple_of(offset, 4)
        else:
            offset = tl.multiple_of(offset, 128 // base.dtype.element_ty.primitive_bitwidth)
    return base + offset + idx


@triton.jit
def _load(ptr, mask):
    return tl.load(ptr, mask=mask).to(tl.float32)


@triton.jit
def _store(ptr, value, mask):
    tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad(g_ptr, mask, grad_scale, grad_sign):
    return _load(g_ptr, mask) / grad_scale * grad_sign


@triton.jit
def _load_param(p_ptr, master_ptr, mask, HAS_MASTER: tl.constexpr):
    if HAS_MASTER:
        p = _load(master_ptr, mask)
    else:
        p = _load(p_ptr, mask)
    return p


@triton.jit
def _store_param(p_ptr, master_ptr, p, mask, HAS_MASTER: tl.constexpr):
    if HAS_MASTER:
        _store(master_ptr, p, mask)
    _store(p_ptr, p, mask)


# ---------------------------------------------------------------------------------------------
# Update bodies: one block of one tensor; ``mask`` is None for full blocks (unmasked, so the
# accesses vectorise) and the tail mask for a tensor's last block.


@triton.jit
def _learning_rate(lr, lr_ptr, device_lr):
    """The host's ``lr``, or the one a device tensor holds now (read here: no host sync, and a
    replayed CUDA graph sees the value the tensor holds at replay)."""
    if device_lr:
        lr = tl.load(lr_ptr)
    return lr


@triton.jit
def _bias_corrections(t, log_beta1, log_beta2, lr, step_size, bias_correction2_sqrt, decay,
                      decoupled_weight_decay, device_step, device_lr):
    """(lr / (1 - beta1^t), sqrt(1 - beta2^t), 1 - lr*wd): the host's values, or formed here
    from the tensor's step counter ``t`` (``device_step``, which a device ``lr`` implies) and
    ``lr``, the device's when ``device_lr``. 1 - exp(t log beta) in fp64, where it loses nothing to cancellation
    (1 - 0.999^1); the rest in fp32."""
    if device_step:
        if device_lr:
            decay = 1.0 - lr * decoupled_weight_decay
        t64 = t.to(tl.float64)
        bias_correction1 = (1.0 - tl.exp(t64 * log_beta1)).to(tl.float32)
        step_size = lr / bias_correction1
        bias_correction2_sqrt = tl.sqrt_rn((1.0 - tl.exp(t64 * log_beta2)).to(tl.float32))
    return step_size, bias_correction2_sqrt, decay


@triton.jit
def _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, master_ptr, t, mask, grad_scale, grad_sign, beta1,
               one_minus_beta1, beta2, one_minus_beta2, log_beta1, log_beta2, lr, eps, weight_decay, decay, step_size,
               bias_correction2_sqrt, decoupled_weight_decay, amsgrad, device_step, device_lr,
               HAS_MASTER: tl.constexpr):
    # Loads first, then the bias corrections, then the arithmetic on the loaded values: the
    # corrections' fp64 work runs while the loads are in flight instead of delaying them.
    p = _load_param(p_ptr, master_ptr, mask, HAS_MASTER)
    g = _load(g_ptr, mask)
    m = _load(m_ptr, mask)
    v = _load(v_ptr, mask)
    step_size, bias_correction2_sqrt, decay = _bias_corrections(t, log_beta1, log_beta2, lr, step_size,
                                                                bias_correction2_sqrt, decay, decoupled_weight_decay,
                                                                device_step, device_lr)
    p = p * decay  # decay = 1 - lr*wd for AdamW, else 1
    g = g / grad_scale * grad_sign
    if weight_decay != 0:  # Adam's L2 term (zero for AdamW)
        g = g + weight_decay * p
    m = m + one_minus_beta1 * (g - m)  # torch's lerp
    v = beta2 * v + one_minus_beta2 * g * g
    _store(m_ptr, m, mask)
    _store(v_ptr, v, mask)
    if amsgrad:
        v = tl.maximum(_load(vmax_ptr, mask), v)
        _store(vmax_ptr, v, mask)
    denom = tl.sqrt_rn(v) / bias_correction2_sqrt + eps
    _store_param(p_ptr, master_ptr, p - step_size * m / denom, mask, HAS_MASTER)


@triton.jit
def _sgd_body(p_ptr, g_ptr, b_ptr, master_ptr, mask, grad_scale, grad_sign, lr, momentum, one_minus_dampening,
              weight_decay, nesterov, first_step, HAS_MASTER: tl.constexpr):
    p = _load_param(p_ptr, master_ptr, mask, HAS_MASTER)
    g = _grad(g_ptr, mask, grad_scale, grad_sign)
    if weight_decay != 0:
        g = g + weight_decay * p
    if momentum != 0:
        if first_step:  # torch.optim.SGD starts the buffer as a copy of the gradient
            b = g
        else:
            b = momentum * _load(b_ptr, mask) + one_minus_dampening * g
        _store(b_ptr, b, mask)
        if nesterov:
            g = g + momentum * b
        else:
            g = b
    _store_param(p_ptr, master_ptr, p - lr * g, mask, HAS_MASTER)


@triton.jit
def _rmsprop_body(p_ptr, g_ptr, v_ptr, a_ptr, b_ptr, master_ptr, mask, grad_scale, grad_sign, lr, alpha,
                  one_minus_alpha, eps, weight_decay, momentum, centered, HAS_MASTER: tl.constexpr):
    p = _load_param(p_ptr, master_ptr, mask, HAS_MASTER)
    g = _grad(g_ptr, mask, grad_scale, grad_sign)
    if weight_decay != 0:
        g = g + weight_decay * p
    v = alpha * _load(v_ptr, mask) + one_minus_alpha * g * g
    _store(v_ptr, v, mask)
    if centered:
        a = _load(a_ptr, mask)
        a = a + one_minus_alpha * (g - a)  # torch's lerp
        _store(a_ptr, a, mask)
        v = v - a * a
    avg = tl.sqrt_rn(v) + eps
    if momentum > 0:
        b = momentum * _load(b_ptr, mask) + g / avg
        _store(b_ptr, b, mask)
        p = p - lr * b
    else:
        p = p - lr * g / avg
    _store_param(p_ptr, master_ptr, p, mask, HAS_MASTER)


# ---------------------------------------------------------------------------------------------
# Kernels


# Every kernel reads its block-map entry and GradScaler's found_inf together, then the table
# row, then the data: three round trips to memory before the arithmetic, the fewest the table
# allows. (Reading found_inf first and branching on it, and forming the bias corrections before
# the operand offsets were read, made it six.)


@triton.jit(do_not_specialize=["amsgrad", "device_step", "device_lr"])
def adam_kernel(p_base, g_base, m_base, v_base, vmax_base, master_base, step_base, table_ptr, block_map_ptr,
                grad_scale_ptr, found_inf_ptr, lr_ptr, grad_sign, beta1, one_minus_beta1, beta2, one_minus_beta2,
                log_beta1, log_beta2, lr, eps, weight_decay, decay, step_size, bias_correction2_sqrt,
                decoupled_weight_decay, amsgrad, device_step, device_lr, HAS_MASTER: tl.constexpr,
                ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    found_inf = tl.load(found_inf_ptr)
    row, n, start, idx = _locate(table_ptr, block_map_ptr, 8, BLOCK)
    grad_scale = tl.load(grad_scale_ptr)
    lr = _learning_rate(lr, lr_ptr, device_lr)
    p_ptr = _operand(p_base, row, 0, idx, ALIGNED, HAS_MASTER)
    g_ptr = _operand(g_base, row, 1, idx, ALIGNED, HAS_MASTER)
    m_ptr = _operand(m_base, row, 2, idx, ALIGNED, HAS_MASTER)
    v_ptr = _operand(v_base, row, 3, idx, ALIGNED, HAS_MASTER)
    vmax_ptr = _operand(vmax_base, row, 4, idx, ALIGNED, HAS_MASTER)
    master_ptr = _operand(master_base, row, 5, idx, ALIGNED, HAS_MASTER)
    # This tensor's step counter; read in every case (without device_step it is a valid stand-in),
    # so the load goes out with the table row's other dependants, not after a branch.
    t = tl.load(step_base + tl.load(row + 6))
    if found_inf == 0:  # GradScaler found inf/NaN: skip the step on the device
        if start + BLOCK <= n:  # full block, unmasked
            _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, master_ptr, t, None, grad_scale, grad_sign, beta1,
                       one_minus_beta1, beta2, one_minus_beta2, log_beta1, log_beta2, lr, eps, weight_decay, decay,
                       step_size, bias_correction2_sqrt, decoupled_weight_decay, amsgrad, device_step, device_lr,
                       HAS_MASTER)
        else:
            _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, master_ptr, t, idx < n, grad_scale, grad_sign,
                       beta1, one_minus_beta1, beta2, one_minus_beta2, log_beta1, log_beta2, lr, eps,
                       weight_decay, decay, step_size, bias_correction2_sqrt, decoupled_weight_decay, amsgrad,
                       device_step, device_lr, HAS_MASTER)


@triton.jit(do_not_specialize=["nesterov", "first_step", "device_lr"])
def sgd_kernel(p_base, g_base, b_base, master_base, table_ptr, block_map_ptr, grad_scale_ptr, found_inf_ptr, lr_ptr,
               grad_sign, lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step, device_lr,
               HAS_MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    found_inf = tl.load(found_inf_ptr)
    row, n, start, idx = _locate(table_ptr, block_map_ptr, 5, BLOCK)
    grad_scale = tl.load(grad_scale_ptr)
    lr = _learning_rate(lr, lr_ptr, device_lr)
    p_ptr = _operand(p_base, row, 0, idx, ALIGNED, HAS_MASTER)
    g_ptr = _operand(g_base, row, 1, idx, ALIGNED, HAS_MASTER)
    b_ptr = _operand(b_base, row, 2, idx, ALIGNED, HAS_MASTER)
    master_ptr = _operand(master_base, row, 3, idx, ALIGNED, HAS_MASTER)
    if found_inf == 0:
        if start + BLOCK <= n:
            _sgd_body(p_ptr, g_ptr, b_ptr, master_ptr, None, grad_scale, grad_sign, lr, momentum,
                      one_minus_dampening, weight_decay, nesterov, first_step, HAS_MASTER)
        else:
            _sgd_body(p_ptr, g_ptr, b_ptr, master_ptr, idx < n, grad_scale, grad_sign, lr, momentum,
                      one_minus_dampening, weight_decay, nesterov, first_step, HAS_MASTER)


@triton.jit(do_not_specialize=["centered", "device_lr"])
def rmsprop_kernel(p_base, g_base, v_base, a_base, b_base, master_base, table_ptr, block_map_ptr, grad_scale_ptr,
                   found_inf_ptr, lr_ptr, grad_sign, lr, alpha, one_minus_alpha, eps, weight_decay, momentum, centered,
                   device_lr, HAS_MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    found_inf = tl.load(found_inf_ptr)
    row, n, start, idx = _locate(table_ptr, block_map_ptr, 7, BLOCK)
    grad_scale = tl.load(grad_scale_ptr)
    lr = _learning_rate(lr, lr_ptr, device_lr)
    p_ptr = _operand(p_base, row, 0, idx, ALIGNED, HAS_MASTER)
    g_ptr = _operand(g_base, row, 1, idx, ALIGNED, HAS_MASTER)
    v_ptr = _operand(v_base, row, 2, idx, ALIGNED, HAS_MASTER)
    a_ptr = _operand(a_base, row, 3, idx, ALIGNED, HAS_MASTER)
    b_ptr = _operand(b_base, row, 4, idx, ALIGNED, HAS_MASTER)
    master_ptr = _operand(master_base, row, 5, idx, ALIGNED, HAS_MASTER)
    if found_inf == 0:
        if start + BLOCK <= n:
            _rmsprop_body(p_ptr, g_ptr, v_ptr, a_ptr, b_ptr, master_ptr, None, grad_scale, grad_sign, lr, alpha,
                          one_minus_alpha, eps, weight_decay, momentum, centered, HAS_MASTER)
        else:
            _rmsprop_body(p_ptr, g_ptr, v_ptr, a_ptr, b_ptr, master_ptr, idx < n, grad_scale, grad_sign, lr, alpha,
                          one_minus_alpha, eps, weight_decay, momentum, centered, HAS_MASTER)


# Norm kinds: how |g| is accumulated into acc[0] (acc[1] turns NaN if a gradient is NaN).
NORM_TWO, NORM_INF, NORM_P = 0, 1, 2


@triton.jit(do_not_specialize=["norm_kind"])
def grad_norm_kernel(g_base, table_ptr, block_map_ptr, partial_ptr, norm_type, norm_kind, ALIGNED: tl.constexpr,
                     BLOCK: tl.constexpr):
    """Pass 1 of clipping: every block writes its part of the norm (the sum of |g|^2 or |g|^p,
    or the max of |g|) and a NaN flag into its own slot; no atomics, so pass 2 can add the
    parts in one fixed order and the norm has the same bits on every run."""
    row, n, start, idx = _locate(table_ptr, block_map_ptr, 2, BLOCK)
    g_ptr = _operand(g_base, row, 0, idx, ALIGNED)
    if start + BLOCK <= n:  # full block, unmasked (vector loads)
        a = tl.abs(_load(g_ptr, None))
    else:
        a = tl.where(idx < n, tl.abs(_load(g_ptr, idx < n)), 0.0)
    nan = tl.sum(tl.where(a != a, a, 0.0), axis=0)  # NaN if the block holds a NaN, else 0
    if norm_kind == 0:  # NORM_TWO
        part = tl.sum(a * a, axis=0)
    elif norm_kind == 1:  # NORM_INF; NaN is flagged apart, so max over the rest
        part = tl.max(tl.where(a != a, 0.0, a), axis=0)
    else:  # NORM_P: |g|^p through exp and log (0 stays 0)
        positive = a > 0
        powers = tl.exp(norm_type * tl.log(tl.where(positive, a, 1.0)))
        part = tl.sum(tl.where(positive, powers, 0.0), axis=0)
    slot = partial_ptr + 2 * tl.program_id(0).to(tl.int64)
    tl.store(slot, part)
    tl.store(slot + 1, nan)


@triton.jit(do_not_specialize=["count", "norm_kind"])
def norm_reduce_kernel(partial_ptr, count, acc_ptr, norm_kind, BLOCK: tl.constexpr):
    """Pass 2 of clipping, one program: folds the blocks' parts into acc (the sum, or max, and
    the NaN flag) lane by lane in index order, then across lanes: a fixed order."""
    lanes = tl.arange(0, BLOCK)
    folded = tl.zeros([BLOCK], dtype=tl.float32)
    flags = tl.zeros([BLOCK], dtype=tl.float32)
    for first in range(0, count, BLOCK):
        i = (first + lanes).to(tl.int64)
        inside = i < count
        part = tl.load(partial_ptr + 2 * i, mask=inside, other=0.0)
        if norm_kind == 1:
            folded = tl.maximum(folded, part)
        else:
            folded += part
        flags += tl.load(partial_ptr + 2 * i + 1, mask=inside, other=0.0)
    if norm_kind == 1:
        tl.store(acc_ptr, tl.max(folded, axis=0))
    else:
        tl.store(acc_ptr, tl.sum(folded, axis=0))
    tl.store(acc_ptr + 1, tl.sum(flags, axis=0))


@triton.jit
def _total_norm(acc_ptr, norm_type, norm_kind):
    acc = tl.load(acc_ptr)
    if norm_kind == 0:
        total = tl.sqrt_rn(acc)
    elif norm_kind == 1:
        total = acc
    else:
        total = tl.exp(tl.log(acc) / norm_type)
    return total + tl.load(acc_ptr + 1)  # acc[1] is NaN when any gradient was NaN, else 0


@triton.jit
def _clip_body(g_ptr, mask, coef, clip_value, by_value):
    g = _load(g_ptr, mask)
    if by_value:  # NaN fails both comparisons and stays NaN, as in torch.clamp
        g = tl.where(g > clip_value, clip_value, tl.where(g < -clip_value, -clip_value, g))
    else:
        g = g * coef
    _store(g_ptr, g, mask)


@triton.jit(do_not_specialize=["norm_kind", "by_value"])
def clip_apply_kernel(g_base, table_ptr, block_map_ptr, acc_ptr, total_ptr, max_norm, norm_type, norm_kind,
                      clip_value, by_value, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """Pass 2: scale every gradient by min(1, max_norm / (norm + 1e-6)), or clamp by value."""
    row, n, start, idx = _locate(table_ptr, block_map_ptr, 2, BLOCK)
    g_ptr = _operand(g_base, row, 0, idx, ALIGNED)
    coef = 1.0
    if by_value == 0:
        total = _total_norm(acc_ptr, norm_type, norm_kind)
        coef = max_norm / (total + 1e-6)
        coef = tl.where(coef > 1.0, 1.0, coef)  # a NaN norm makes the gradients NaN, as in torch
        if tl.program_id(0) == 0:
            tl.store(total_ptr, total)
    if start + BLOCK <= n:
        _clip_body(g_ptr, None, coef, clip_value, by_value)
    else:
        _clip_body(g_ptr, idx < n, coef, clip_value, by_value)


# ---------------------------------------------------------------------------------------------
# Tables and launch helpers
#
# The host's part of a step is what a training loop waits for whenever it is not hidden behind
# the GPU's part, so it touches each tensor only through a few C-level calls (dtype, numel,
# data_ptr) and builds nothing per tensor in Python. The block map is a function of the sizes
# alone and the table of the addresses: each is cached by exactly what it is made of, so a hit
# is never stale, and a gradient that moved costs a new table (one small asynchronous copy),
# not a new block map.


class Plan(NamedTuple):
    table: torch.Tensor  # int64 [tensors, operands + 1]: element offsets from each base, then size
    block_map: torch.Tensor  # int32 [blocks, 2]: (tensor, block within tensor)
    blocks: int
    aligned: bool


# A column is one operand of every tensor of a launch: a list with one tensor per table row, or a
# single tensor that every row reads at offset 0 (a shared step counter, or a stand-in of the
# right type for an absent operand, never dereferenced).
Column = Union[list, torch.Tensor]

_TABLES: dict = {}  # (addresses, itemsizes, sizes, vector columns, device) -> (table, aligned)
_BLOCK_MAPS: dict = {}  # (sizes, block, device) -> (block map, blocks)
_CACHE_SIZE = 64
_SCALARS: dict = {}

_DTYPE = operator.attrgetter("dtype")
_NUMEL = torch.Tensor.numel
_DATA_PTR = torch.Tensor.data_ptr


@functools.cache
def _block(dtype: torch.dtype) -> tuple[int, int]:
    """fp32's elementwise block for every dtype: a step holds up to six fp32 operands per element,
    and 16 elements per thread (fp16's elementwise block) would cost ~220 registers."""
    return tuple(elementwise_launch(torch.float32))


# What a CUDA graph captured: the host arrays its copies read and the device tensors its kernels
# read. Captured work runs at every replay, not at capture, so these must outlive the graph: kept
# for the life of the process (a few small tables), never in the caches above, where an eager
# step could find a device table that no replay has filled yet.
_CAPTURED: list[torch.Tensor] = []


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _cached(cache: dict, key, build, device: torch.device | None = None):
    """``cache[key]``, built on a miss; the oldest entry goes when the cache is full (a training
    loop uses one or two, so first-in-first-out serves, and a hit hashes the key only once).
    A miss while a CUDA graph is being captured on ``device`` is built for that graph alone."""
    value = cache.get(key)
    if value is None:
        value = build()
        if device is not None and _capturing(device):
            return value
        cache[key] = value
        if len(cache) > _CACHE_SIZE:
            del cache[next(iter(cache))]
    return value


def _upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    host = torch.from_numpy(array)
    if device.type == "cpu":  # Triton's interpreter reads host memory where it lies
        return host
    if _capturing(device):
        # The graph records the copy and repeats it at each replay, reading the host array
        # then (a non-blocking copy is capturable; pinning during capture is not).
        on_device = host.to(device, non_blocking=True)
        _CAPTURED.extend((host, on_device))
        return on_device
    # From pinned memory without blocking: the copy queues on the stream behind the work
    # already there instead of making the host wait for it (a pageable copy would).
    return host.pin_memory().to(device, non_blocking=True)


def _addresses(column: Column) -> tuple[int, ...] | None:
    return None if isinstance(column, torch.Tensor) else tuple(map(_DATA_PTR, column))


def _build_table(addresses, itemsizes, sizes, vector_columns, device) -> tuple[torch.Tensor, bool]:
    table = np.zeros((len(sizes), len(addresses) + 1), dtype=np.int64)
    for c, (column, itemsize) in enumerate(zip(addresses, itemsizes)):
        if column is not None:
            offsets = np.asarray(column, dtype=np.int64) - column[0]
            table[:, c] = offsets // itemsize  # every tensor is aligned to its element size
    table[:, -1] = sizes
    aligned = all(a % 16 == 0 for column in addresses[:vector_columns] if column is not None for a in column)
    return _upload(table, device), aligned


def _build_block_map(sizes, block, device) -> tuple[torch.Tensor, int]:
    blocks_per_tensor = -(-np.asarray(sizes, dtype=np.int64) // block)
    total = int(blocks_per_tensor.sum())
    tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), blocks_per_tensor)
    first = np.repeat(np.cumsum(blocks_per_tensor) - blocks_per_tensor, blocks_per_tensor)
    block_map = np.stack([tensor, np.arange(total, dtype=np.int64) - first], axis=1).astype(np.int32)
    return _upload(block_map, device), total


def plan(columns: list[Column], block: int, vector_columns: int | None = None) -> Plan:
    """The table and block map for ``columns`` (all of the first column's sizes, which must be
    a list). Cached, so a training loop builds them once and a captured CUDA graph replays
    without host-to-device copies."""
    sizes = tuple(map(_NUMEL, columns[0]))
    addresses = tuple(map(_addresses, columns))
    itemsizes = tuple((c if isinstance(c, torch.Tensor) else c[0]).element_size() for c in columns)
    device = columns[0][0].device
    table, aligned = _cached(_TABLES, (addresses, itemsizes, sizes, vector_columns, device),
                             lambda: _build_table(addresses, itemsizes, sizes, vector_columns, device), device)
    block_map, blocks = _cached(_BLOCK_MAPS, (sizes, block, device), lambda: _build_block_map(sizes, block, device),
                                device)
    return Plan(table, block_map, blocks, aligned)


def _ones_and_zeros(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A cached fp32 one (grad_scale absent) and zero (found_inf absent) on ``device``."""
    key = str(device)
    if key not in _SCALARS:
        scalars = (torch.ones(1, dtype=torch.float32, device=device),
                   torch.zeros(1, dtype=torch.float32, device=device))
        if _capturing(device):  # filled at replay only: the graph's own, kept alive for it
            _CAPTURED.extend(scalars)
            return scalars
        _SCALARS[key] = scalars
    return _SCALARS[key]


def _amp_scalars(device, grad_scale, found_inf) -> tuple[torch.Tensor, torch.Tensor]:
    one, zero = _ones_and_zeros(device)
    return (one if grad_scale is None else grad_scale.reshape(1),
            zero if found_inf is None else found_inf.reshape(1))


def _groups(params: list[torch.Tensor]) -> list[tuple[torch.dtype, list[int] | None]]:
    """(dtype, indices of its non-empty parameters) for each dtype: one launch each. Indices
    None stand for every parameter, the common case (one dtype, nothing empty), which then
    costs no per-parameter Python."""
    dtypes = set(map(_DTYPE, params))
    for dtype in dtypes - TRITON_DTYPES.keys():
        i = next(i for i, p in enumerate(params) if p.dtype == dtype)
        check_dtype(params[i], f"params[{i}]")
    if len(dtypes) == 1 and 0 not in map(_NUMEL, params):
        return [(dtypes.pop(), None)]
    groups: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(params):
        if p.numel():
            groups.setdefault(p.dtype, []).append(i)
    return list(groups.items())


def _select(values: list, idx: list[int] | None) -> list:
    return values if idx is None else [values[i] for i in idx]


def _pick(values, idx, fallback: torch.Tensor) -> Column:
    """Column ``values`` restricted to ``idx``; an absent operand is ``fallback``, a tensor of the
    right type that every row reads at offset 0 (never dereferenced: its branch is off)."""
    return fallback if values is None else _select(values, idx)


def _first(values: list, idx: list[int] | None):
    return values[0 if idx is None else idx[0]]


def _launch(kernel, columns: list[Column], dtype: torch.dtype, scalars: tuple, has_master: bool,
            extra: tuple = (), vector_columns: int | None = None) -> None:
    block, num_warps = _block(dtype)
    launch = plan(columns, block, vector_columns)
    if launch.blocks == 0:
        return
    bases = [column if isinstance(column, torch.Tensor) else column[0] for column in columns]
    kernel[(launch.blocks,)](*bases, launch.table, launch.block_map, *extra, *scalars,
                             HAS_MASTER=has_master, ALIGNED=launch.aligned, BLOCK=block, num_warps=num_warps)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (torch tensors, updated in place)


def _device_lr(device, device_lr) -> tuple[torch.Tensor, int]:
    """(the pointer the kernels read ``lr`` from, the flag that says they do): ``device_lr``, a
    one-element float32 tensor, or a stand-in the kernels never read."""
    if device_lr is None:
        return _ones_and_zeros(device)[0], 0
    return device_lr.reshape(1), 1


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, grad_scale, found_inf, step,
              device_lr=None, *, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    device = params[0].device
    scale, found = _amp_scalars(device, grad_scale, found_inf)
    lr_tensor, on_device_lr = _device_lr(device, device_lr)
    if on_device_lr and isinstance(step, float):  # the kernel forms the corrections from lr: give it t
        step = torch.full((1,), step, dtype=torch.float32, device=device)
    device_step = not isinstance(step, float)
    # ``step``: a number (the host's bias corrections), one counter for all, or one per parameter
    t = 1.0 if device_step else step
    host_lr = 0.0 if on_device_lr else lr  # the kernel forms everything from the device's lr
    bias_correction1 = 1.0 - beta1**t
    log = lambda b: math.log(b) if b > 0 else -math.inf
    decoupled = weight_decay if decoupled_weight_decay else 0.0
    scalars = (
        -1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, log(beta1), log(beta2), host_lr, eps,
        0.0 if decoupled_weight_decay else weight_decay, 1.0 - host_lr * decoupled,
        host_lr / bias_correction1, math.sqrt(1.0 - beta2**t), decoupled, int(amsgrad), int(device_step),
        on_device_lr,
    )
    for dtype, idx in _groups(params):
        state = _select(exp_avgs, idx)
        steps = _select(step, idx) if isinstance(step, list) else step if device_step else scale
        columns = [_select(params, idx), _select(grads, idx), state, _select(exp_avg_sqs, idx),
                   _pick(max_exp_avg_sqs, idx, state[0]), _pick(master_params, idx, state[0]), steps]
        _launch(adam_kernel, columns, dtype, scalars, master_params is not None, extra=(scale, found, lr_tensor),
                vector_columns=6)


def _by_first_step(first_step: list[bool], idx: list[int] | None, count: int):
    """Buffers created this step and older ones need different updates: at most two launches
    (one after the first step)."""
    if not any(first_step):
        return [(False, idx)]
    members = range(count) if idx is None else idx
    parts = [(first, [i for i in members if bool(first_step[i]) == first]) for first in (False, True)]
    return [(first, part) for first, part in parts if part]


def sgd_step(params, grads, momentum_buffers, master_params, grad_scale, found_inf, device_lr=None, *, first_step, lr,
             momentum, dampening, weight_decay, nesterov, maximize):
    scale, found = _amp_scalars(params[0].device, grad_scale, found_inf)
    lr_tensor, on_device_lr = _device_lr(params[0].device, device_lr)
    has_master = master_params is not None
    for dtype, idx in _groups(params):
        for first, part in _by_first_step(first_step, idx, len(params)):
            state_fallback = _first(master_params if has_master else params, part)
            columns = [_select(params, part), _select(grads, part), _pick(momentum_buffers, part, state_fallback),
                       _pick(master_params, part, state_fallback)]
            scalars = (-1.0 if maximize else 1.0, 0.0 if on_device_lr else lr, momentum, 1.0 - dampening, weight_decay,
                       int(nesterov), int(first), on_device_lr)
            _launch(sgd_kernel, columns, dtype, scalars, has_master, extra=(scale, found, lr_tensor))


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, grad_scale, found_inf,
                 device_lr=None, *, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    scale, found = _amp_scalars(params[0].device, grad_scale, found_inf)
    lr_tensor, on_device_lr = _device_lr(params[0].device, device_lr)
    scalars = (-1.0 if maximize else 1.0, 0.0 if on_device_lr else lr, alpha, 1.0 - alpha, eps, weight_decay, momentum,
               int(centered), on_device_lr)
    for dtype, idx in _groups(params):
        state = _select(square_avgs, idx)
        columns = [_select(params, idx), _select(grads, idx), state, _pick(grad_avgs, idx, state[0]),
                   _pick(momentum_buffers, idx, state[0]), _pick(master_params, idx, state[0])]
        _launch(rmsprop_kernel, columns, dtype, scalars, master_params is not None, extra=(scale, found, lr_tensor))


def _norm_kind(norm_type: float) -> int:
    return NORM_INF if math.isinf(norm_type) else NORM_TWO if norm_type == 2.0 else NORM_P


NORM_REDUCE_BLOCK = 1024  # lanes of the one program that folds the blocks' parts


def _clip_plans(grads):
    for dtype, idx in _groups(grads):
        column = _select(grads, idx)
        block, num_warps = _block(dtype)
        yield column[0], plan([column], block), block, num_warps


def clip_grad_norm_(grads, *, max_norm, norm_type, error_if_nonfinite):
    # acc (the sum, or max, and a NaN flag) and the total norm in one buffer: one fill launch
    device = grads[0].device
    sums = torch.zeros(3, dtype=torch.float32, device=device)
    acc, total = sums[:2], sums[2:]
    kind = _norm_kind(norm_type)
    plans = list(_clip_plans(grads))
    blocks = sum(launch.blocks for _, launch, _, _ in plans)
    partials = torch.empty(2 * blocks, dtype=torch.float32, device=device)  # (part, NaN flag) per block
    first = 0
    for base, launch, block, num_warps in plans:
        grad_norm_kernel[(launch.blocks,)](base, launch.table, launch.block_map, partials[2 * first:], norm_type,
                                           kind, ALIGNED=launch.aligned, BLOCK=block, num_warps=num_warps)
        first += launch.blocks
    if blocks:
        norm_reduce_kernel[(1,)](partials, blocks, acc, kind, BLOCK=NORM_REDUCE_BLOCK, num_warps=4)
    if error_if_nonfinite:  # needs the norm on the host before anything is scaled
        from gpukernels.reference.optim import nonfinite_norm_error

        value = acc.cpu()
        if not math.isfinite(value[0] + value[1]):
            raise nonfinite_norm_error(norm_type)
    for base, launch, block, num_warps in plans:
        clip_apply_kernel[(launch.blocks,)](base, launch.table, launch.block_map, acc, total, max_norm, norm_type,
                                            kind, 0.0, 0, ALIGNED=launch.aligned, BLOCK=block, num_warps=num_warps)
    return total  # stays 0 when every gradient is empty


def clip_grad_value_(grads, *, clip_value):
    dummy = _ones_and_zeros(grads[0].device)[1]  # no norm is read when clamping by value
    for base, launch, block, num_warps in _clip_plans(grads):
        clip_apply_kernel[(launch.blocks,)](base, launch.table, launch.block_map, dummy, dummy, 0.0, 2.0, NORM_TWO,
                                            clip_value, 1, ALIGNED=launch.aligned, BLOCK=block, num_warps=num_warps)


# ---------------------------------------------------------------------------------------------
# Compile gate

# (parameter dtype, state dtype, master weights): every combination a step can launch.
STEP_VARIANTS = (
    (torch.float32, torch.float32, False), (torch.float16, torch.float16, False),
    (torch.bfloat16, torch.bfloat16, False), (torch.float16, torch.float32, True),
    (torch.bfloat16, torch.float32, True),
)
_STEP_KERNELS = {
    # kernel, operand pointers (P: parameter dtype, S: state dtype, F: fp32), flags, fp32 scalars
    "adam": (adam_kernel, "PPSSSSF", ("amsgrad", "device_step", "device_lr"),
             ("grad_sign", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "log_beta1", "log_beta2", "lr",
              "eps", "weight_decay", "decay", "step_size", "bias_correction2_sqrt", "decoupled_weight_decay")),
    "sgd": (sgd_kernel, "PPSS", ("nesterov", "first_step", "device_lr"),
            ("grad_sign", "lr", "momentum", "one_minus_dampening", "weight_decay")),
    "rmsprop": (rmsprop_kernel, "PPSSSS", ("centered", "device_lr"),
                ("grad_sign", "lr", "alpha", "one_minus_alpha", "eps", "weight_decay", "momentum")),
}


def _step_args(kernel, operands: str, flags, scalars, p: str, s: str, aligned: bool) -> dict:
    """What ``_launch`` passes: the first tensor of each operand column as its base (the caller's
    tensors: aligned, or with ``aligned`` False a view one element into its storage), the plan's
    tables, the AMP scalars, fp32 hyper-parameters and 0/1 int flags."""
    names = kernel.arg_names
    types = {"P": p, "S": s, "F": "fp32"}
    args = {names[i]: passed(types[code], aligned or code == "F") for i, code in enumerate(operands)}
    args.update(table_ptr=fresh("i64"), block_map_ptr=fresh("i32"), grad_scale_ptr=fresh("fp32"),
                found_inf_ptr=fresh("fp32"), lr_ptr=fresh("fp32"))
    args.update({name: 0.5 for name in scalars})
    args.update({name: 0 for name in flags})
    return args


def compile_cases() -> Iterator[CompileCase]:
    """Every kernel at every (dtype, master, alignment) the launch helpers can choose. ALIGNED
    (every tensor 16-byte aligned) is the typical launch; otherwise the worst: the base tensors
    views one element into their storage."""
    for step, (kernel, operands, flags, scalars) in _STEP_KERNELS.items():
        for p_dtype, s_dtype, master in STEP_VARIANTS:
            p, s = TRITON_DTYPES[p_dtype], TRITON_DTYPES[s_dtype]
            block, num_warps = _block(p_dtype)
            for aligned in (True, False):
                yield CompileCase(
                    name=f"optim_{step}[{p}/{s}{'+master' if master else ''}]", kernel=kernel,
                    args={**_step_args(kernel, operands, flags, scalars, p, s, aligned),
                          "HAS_MASTER": master, "ALIGNED": aligned, "BLOCK": block},
                    num_warps=num_warps, expect_load_bits=128 if aligned else None,
                    tags={"dtype": p, "state": s, "alignment": "aligned" if aligned else "offset",
                          "block": str(block)},
                )
    for dtype, name in TRITON_DTYPES.items():
        block, num_warps = _block(dtype)
        for aligned in (True, False):
            common = dict(num_warps=num_warps, expect_load_bits=128 if aligned else None,
                          tags={"dtype": name, "alignment": "aligned" if aligned else "offset", "block": str(block)})
            tables = dict(g_base=passed(name, aligned), table_ptr=fresh("i64"), block_map_ptr=fresh("i32"),
                          norm_type=2.0, norm_kind=NORM_TWO, ALIGNED=aligned, BLOCK=block)
            # a later dtype group's parts start 8 bytes past a 16-byte boundary when the blocks
            # before it are odd in number
            partials = fresh("fp32") if aligned else TensorArg(torch.float32, 8)
            yield CompileCase(name="optim_grad_norm", kernel=grad_norm_kernel,
                              args={**tables, "partial_ptr": partials}, **common)
            yield CompileCase(
                name="optim_clip_apply", kernel=clip_apply_kernel,
                # acc and the total share one buffer: the total is 8 bytes in
                args={**tables, "acc_ptr": fresh("fp32"), "total_ptr": TensorArg(torch.float32, 8), "max_norm": 1.0,
                      "clip_value": 0.0, "by_value": 0},
                **common)
    yield CompileCase(name="optim_norm_reduce", kernel=norm_reduce_kernel,
                      args=dict(partial_ptr=fresh("fp32"), count=1000, acc_ptr=fresh("fp32"), norm_kind=NORM_TWO,
                                BLOCK=NORM_REDUCE_BLOCK), num_warps=4, tags={"block": str(NORM_REDUCE_BLOCK)})
