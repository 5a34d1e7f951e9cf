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
host sync), and the Adam step counter may be a device tensor (``device_step``), so a step can
be captured in a CUDA graph once the tables are cached.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator, NamedTuple

import numpy as np
import torch
import triton
import triton.language as tl

from ._launch import TRITON_DTYPES, CompileCase, check_dtype, elementwise_launch, fresh, passed

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
def _operand(base, row, column, idx, ALIGNED: tl.constexpr):
    """Pointers to elements ``idx`` of the tensor in ``column`` of the table row."""
    offset = tl.load(row + column)
    if ALIGNED:  # every tensor starts 16-byte aligned: offsets are whole 16-byte vectors
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
def _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, master_ptr, mask, grad_scale, grad_sign, beta1, one_minus_beta1,
               beta2, one_minus_beta2, eps, weight_decay, decay, step_size, bias_correction2_sqrt, amsgrad,
               HAS_MASTER: tl.constexpr):
    p = _load_param(p_ptr, master_ptr, mask, HAS_MASTER) * decay  # decay = 1 - lr*wd for AdamW, else 1
    g = _grad(g_ptr, mask, grad_scale, grad_sign)
    if weight_decay != 0:  # Adam's L2 term (zero for AdamW)
        g = g + weight_decay * p
    m = _load(m_ptr, mask)
    m = m + one_minus_beta1 * (g - m)  # torch's lerp
    v = beta2 * _load(v_ptr, mask) + one_minus_beta2 * g * g
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


@triton.jit(do_not_specialize=["amsgrad", "device_step"])
def adam_kernel(p_base, g_base, m_base, v_base, vmax_base, master_base, step_base, table_ptr, block_map_ptr,
                grad_scale_ptr, found_inf_ptr, grad_sign, beta1, one_minus_beta1, beta2, one_minus_beta2, log_beta1,
                log_beta2, lr, eps, weight_decay, decay, step_size, bias_correction2_sqrt, amsgrad, device_step,
                HAS_MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    if tl.load(found_inf_ptr) == 0:  # GradScaler found inf/NaN: skip the step on the device
        row, n, start, idx = _locate(table_ptr, block_map_ptr, 8, BLOCK)
        if device_step:  # bias corrections from this tensor's step counter, in fp64
            t = tl.load(step_base + tl.load(row + 6)).to(tl.float64)
            bias_correction1 = 1.0 - tl.exp(t * log_beta1)
            step_size = (lr / bias_correction1).to(tl.float32)
            bias_correction2_sqrt = tl.sqrt(1.0 - tl.exp(t * log_beta2)).to(tl.float32)
        grad_scale = tl.load(grad_scale_ptr)
        p_ptr = _operand(p_base, row, 0, idx, ALIGNED)
        g_ptr = _operand(g_base, row, 1, idx, ALIGNED)
        m_ptr = _operand(m_base, row, 2, idx, ALIGNED)
        v_ptr = _operand(v_base, row, 3, idx, ALIGNED)
        vmax_ptr = _operand(vmax_base, row, 4, idx, ALIGNED)
        master_ptr = _operand(master_base, row, 5, idx, ALIGNED)
        if start + BLOCK <= n:  # full block, unmasked
            _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, master_ptr, None, grad_scale, grad_sign, beta1,
                       one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay, step_size,
                       bias_correction2_sqrt, amsgrad, HAS_MASTER)
        else:
            _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, master_ptr, idx < n, grad_scale, grad_sign, beta1,
                       one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay, step_size,
                       bias_correction2_sqrt, amsgrad, HAS_MASTER)


@triton.jit(do_not_specialize=["nesterov", "first_step"])
def sgd_kernel(p_base, g_base, b_base, master_base, table_ptr, block_map_ptr, grad_scale_ptr, found_inf_ptr,
               grad_sign, lr, momentum, one_minus_dampening, weight_decay, nesterov, first_step,
               HAS_MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    if tl.load(found_inf_ptr) == 0:
        row, n, start, idx = _locate(table_ptr, block_map_ptr, 5, BLOCK)
        grad_scale = tl.load(grad_scale_ptr)
        p_ptr = _operand(p_base, row, 0, idx, ALIGNED)
        g_ptr = _operand(g_base, row, 1, idx, ALIGNED)
        b_ptr = _operand(b_base, row, 2, idx, ALIGNED)
        master_ptr = _operand(master_base, row, 3, idx, ALIGNED)
        if start + BLOCK <= n:
            _sgd_body(p_ptr, g_ptr, b_ptr, master_ptr, None, grad_scale, grad_sign, lr, momentum,
                      one_minus_dampening, weight_decay, nesterov, first_step, HAS_MASTER)
        else:
            _sgd_body(p_ptr, g_ptr, b_ptr, master_ptr, idx < n, grad_scale, grad_sign, lr, momentum,
                      one_minus_dampening, weight_decay, nesterov, first_step, HAS_MASTER)


@triton.jit(do_not_specialize=["centered"])
def rmsprop_kernel(p_base, g_base, v_base, a_base, b_base, master_base, table_ptr, block_map_ptr, grad_scale_ptr,
                   found_inf_ptr, grad_sign, lr, alpha, one_minus_alpha, eps, weight_decay, momentum, centered,
                   HAS_MASTER: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    if tl.load(found_inf_ptr) == 0:
        row, n, start, idx = _locate(table_ptr, block_map_ptr, 7, BLOCK)
        grad_scale = tl.load(grad_scale_ptr)
        p_ptr = _operand(p_base, row, 0, idx, ALIGNED)
        g_ptr = _operand(g_base, row, 1, idx, ALIGNED)
        v_ptr = _operand(v_base, row, 2, idx, ALIGNED)
        a_ptr = _operand(a_base, row, 3, idx, ALIGNED)
        b_ptr = _operand(b_base, row, 4, idx, ALIGNED)
        master_ptr = _operand(master_base, row, 5, idx, ALIGNED)
        if start + BLOCK <= n:
            _rmsprop_body(p_ptr, g_ptr, v_ptr, a_ptr, b_ptr, master_ptr, None, grad_scale, grad_sign, lr, alpha,
                          one_minus_alpha, eps, weight_decay, momentum, centered, HAS_MASTER)
        else:
            _rmsprop_body(p_ptr, g_ptr, v_ptr, a_ptr, b_ptr, master_ptr, idx < n, grad_scale, grad_sign, lr, alpha,
                          one_minus_alpha, eps, weight_decay, momentum, centered, HAS_MASTER)


# Norm kinds: how |g| is accumulated into acc[0] (acc[1] turns NaN if a gradient is NaN).
NORM_TWO, NORM_INF, NORM_P = 0, 1, 2


@triton.jit(do_not_specialize=["norm_kind"])
def grad_norm_kernel(g_base, table_ptr, block_map_ptr, acc_ptr, norm_type, norm_kind, ALIGNED: tl.constexpr,
                     BLOCK: tl.constexpr):
    """Pass 1 of clipping: every block adds its part of the norm into acc (atomics)."""
    row, n, start, idx = _locate(table_ptr, block_map_ptr, 2, BLOCK)
    g_ptr = _operand(g_base, row, 0, idx, ALIGNED)
    if start + BLOCK <= n:  # full block, unmasked (vector loads)
        a = tl.abs(_load(g_ptr, None))
    else:
        a = tl.where(idx < n, tl.abs(_load(g_ptr, idx < n)), 0.0)
    nan = tl.sum(tl.where(a != a, a, 0.0), axis=0)  # NaN if the block holds a NaN, else 0
    if nan != nan:
        tl.atomic_add(acc_ptr + 1, nan)
    if norm_kind == 0:  # NORM_TWO
        tl.atomic_add(acc_ptr, tl.sum(a * a, axis=0))
    elif norm_kind == 1:  # NORM_INF; NaN counted above, so max over the rest
        tl.atomic_max(acc_ptr, tl.max(tl.where(a != a, 0.0, a), axis=0))
    else:  # NORM_P: |g|^p through exp and log (0 stays 0)
        positive = a > 0
        powers = tl.exp(norm_type * tl.log(tl.where(positive, a, 1.0)))
        tl.atomic_add(acc_ptr, tl.sum(tl.where(positive, powers, 0.0), axis=0))


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


class Plan(NamedTuple):
    table: torch.Tensor  # int64 [tensors, operands + 1]: element offsets from each base, then size
    block_map: torch.Tensor  # int32 [blocks, 2]: (tensor, block within tensor)
    blocks: int
    aligned: bool


_PLANS: OrderedDict = OrderedDict()
_PLAN_CACHE_SIZE = 64
_SCALARS: dict = {}


def _block(dtype: torch.dtype) -> tuple[int, int]:
    """fp32's elementwise block for every dtype: a step holds up to six fp32 operands per element,
    and 16 elements per thread (fp16's elementwise block) would cost ~220 registers."""
    return tuple(elementwise_launch(torch.float32))


def plan(columns: list[list[torch.Tensor]], block: int, vector_columns: int | None = None) -> Plan:
    """The table and block map for ``columns`` (one list of tensors per operand, all of the
    first column's sizes). Cached by addresses and sizes, so a training loop builds them once
    and a captured CUDA graph replays without host-to-device copies."""
    sizes = tuple(t.numel() for t in columns[0])
    addresses = tuple(tuple(t.data_ptr() for t in column) for column in columns)
    itemsizes = tuple(column[0].element_size() for column in columns)
    key = (block, vector_columns, sizes, addresses, itemsizes, columns[0][0].device)
    cached = _PLANS.get(key)
    if cached is not None:
        _PLANS.move_to_end(key)
        return cached
    table = np.empty((len(sizes), len(columns) + 1), dtype=np.int64)
    for c, (column, itemsize) in enumerate(zip(addresses, itemsizes)):
        offsets = np.asarray(column, dtype=np.int64) - column[0]
        table[:, c] = offsets // itemsize  # every tensor is aligned to its element size
    table[:, -1] = sizes
    blocks_per_tensor = -(-np.asarray(sizes, dtype=np.int64) // block)
    total = int(blocks_per_tensor.sum())
    tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), blocks_per_tensor)
    first = np.repeat(np.cumsum(blocks_per_tensor) - blocks_per_tensor, blocks_per_tensor)
    block_map = np.stack([tensor, np.arange(total, dtype=np.int64) - first], axis=1).astype(np.int32)
    aligned = all(a % 16 == 0 for column in addresses[:vector_columns] for a in column)
    device = columns[0][0].device
    result = Plan(torch.from_numpy(table).to(device), torch.from_numpy(block_map).to(device), total, aligned)
    _PLANS[key] = result
    if len(_PLANS) > _PLAN_CACHE_SIZE:
        _PLANS.popitem(last=False)
    return result


def _ones_and_zeros(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A cached fp32 one (grad_scale absent) and zero (found_inf absent) on ``device``."""
    key = str(device)
    if key not in _SCALARS:
        _SCALARS[key] = (torch.ones(1, dtype=torch.float32, device=device),
                         torch.zeros(1, dtype=torch.float32, device=device))
    return _SCALARS[key]


def _amp_scalars(device, grad_scale, found_inf) -> tuple[torch.Tensor, torch.Tensor]:
    one, zero = _ones_and_zeros(device)
    return (one if grad_scale is None else grad_scale.reshape(1),
            zero if found_inf is None else found_inf.reshape(1))


def _groups(params: list[torch.Tensor]) -> dict[torch.dtype, list[int]]:
    """Indices of the parameters of each dtype: one launch per dtype."""
    groups: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(params):
        check_dtype(p, f"params[{i}]")
        if p.numel():
            groups.setdefault(p.dtype, []).append(i)
    return groups


def _pick(values, indices, fallback):
    """Column ``values`` restricted to ``indices``; an absent operand repeats a tensor of the
    right type at offset 0 (never dereferenced: its branch is off)."""
    if values is None:
        return [fallback] * len(indices)
    return [values[i] for i in indices]


def _launch(kernel, columns: list[list[torch.Tensor]], dtype: torch.dtype, scalars: tuple, has_master: bool,
            extra: tuple = (), vector_columns: int | None = None) -> None:
    block, num_warps = _block(dtype)
    launch = plan(columns, block, vector_columns)
    if launch.blocks == 0:
        return
    bases = [column[0] for column in columns]
    kernel[(launch.blocks,)](*bases, launch.table, launch.block_map, *extra, *scalars,
                             HAS_MASTER=has_master, ALIGNED=launch.aligned, BLOCK=block, num_warps=num_warps)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (torch tensors, updated in place)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, grad_scale, found_inf, step, *,
              lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    device = params[0].device
    scale, found = _amp_scalars(device, grad_scale, found_inf)
    device_step = not isinstance(step, float)
    if isinstance(step, list):  # one counter per parameter
        steps, t = step, 1.0
    elif device_step:
        steps, t = [step] * len(params), 1.0
    else:
        steps, t = [scale] * len(params), step  # the kernel takes the host's bias corrections
    bias_correction1 = 1.0 - beta1**t
    log = lambda b: math.log(b) if b > 0 else -math.inf
    scalars = (
        -1.0 if maximize else 1.0, beta1, 1.0 - beta1, beta2, 1.0 - beta2, log(beta1), log(beta2), lr, eps,
        0.0 if decoupled_weight_decay else weight_decay, 1.0 - lr * weight_decay if decoupled_weight_decay else 1.0,
        lr / bias_correction1, math.sqrt(1.0 - beta2**t), int(amsgrad), int(device_step),
    )
    for dtype, idx in _groups(params).items():
        has_master = master_params is not None
        state = [exp_avgs[i] for i in idx]
        columns = [
            [params[i] for i in idx], [grads[i] for i in idx], state, [exp_avg_sqs[i] for i in idx],
            _pick(max_exp_avg_sqs, idx, state[0]), _pick(master_params, idx, state[0]), [steps[i] for i in idx],
        ]
        _launch(adam_kernel, columns, dtype, scalars, has_master, extra=(scale, found), vector_columns=6)


def sgd_step(params, grads, momentum_buffers, master_params, grad_scale, found_inf, *, first_step, lr, momentum,
             dampening, weight_decay, nesterov, maximize):
    scale, found = _amp_scalars(params[0].device, grad_scale, found_inf)
    for dtype, idx in _groups(params).items():
        # Buffers created this step and older ones need different updates: at most two launches.
        for first in sorted({bool(first_step[i]) for i in idx}):
            part = [i for i in idx if bool(first_step[i]) == first]
            has_master = master_params is not None
            state_fallback = master_params[part[0]] if has_master else params[part[0]]
            columns = [[params[i] for i in part], [grads[i] for i in part],
                       _pick(momentum_buffers, part, state_fallback), _pick(master_params, part, state_fallback)]
            scalars = (-1.0 if maximize else 1.0, lr, momentum, 1.0 - dampening, weight_decay, int(nesterov), int(first))
            _launch(sgd_kernel, columns, dtype, scalars, has_master, extra=(scale, found))


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, grad_scale, found_inf, *,
                 lr, alpha, eps, weight_decay, momentum, centered, maximize):
    scale, found = _amp_scalars(params[0].device, grad_scale, found_inf)
    scalars = (-1.0 if maximize else 1.0, lr, alpha, 1.0 - alpha, eps, weight_decay, momentum, int(centered))
    for dtype, idx in _groups(params).items():
        has_master = master_params is not None
        state = [square_avgs[i] for i in idx]
        columns = [[params[i] for i in idx], [grads[i] for i in idx], state, _pick(grad_avgs, idx, state[0]),
                   _pick(momentum_buffers, idx, state[0]), _pick(master_params, idx, state[0])]
        _launch(rmsprop_kernel, columns, dtype, scalars, has_master, extra=(scale, found))


def _norm_kind(norm_type: float) -> int:
    return NORM_INF if math.isinf(norm_type) else NORM_TWO if norm_type == 2.0 else NORM_P


def _clip_plans(grads):
    for dtype, idx in _groups(grads).items():
        column = [grads[i] for i in idx]
        block, num_warps = _block(dtype)
        yield column[0], plan([column], block), block, num_warps


def clip_grad_norm_(grads, *, max_norm, norm_type, error_if_nonfinite):
    device = grads[0].device
    acc = torch.zeros(2, dtype=torch.float32, device=device)
    total = torch.zeros(1, dtype=torch.float32, device=device)
    kind = _norm_kind(norm_type)
    plans = list(_clip_plans(grads))
    for base, launch, block, num_warps in plans:
        grad_norm_kernel[(launch.blocks,)](base, launch.table, launch.block_map, acc, norm_type, kind,
                                           ALIGNED=launch.aligned, BLOCK=block, num_warps=num_warps)
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
    dummy = torch.zeros(2, dtype=torch.float32, device=grads[0].device)
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
    "adam": (adam_kernel, "PPSSSSF", ("amsgrad", "device_step"),
             ("grad_sign", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "log_beta1", "log_beta2", "lr",
              "eps", "weight_decay", "decay", "step_size", "bias_correction2_sqrt")),
    "sgd": (sgd_kernel, "PPSS", ("nesterov", "first_step"),
            ("grad_sign", "lr", "momentum", "one_minus_dampening", "weight_decay")),
    "rmsprop": (rmsprop_kernel, "PPSSSS", ("centered",),
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
                found_inf_ptr=fresh("fp32"))
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
                          acc_ptr=fresh("fp32"), norm_type=2.0, norm_kind=NORM_TWO, ALIGNED=aligned, BLOCK=block)
            yield CompileCase(name="optim_grad_norm", kernel=grad_norm_kernel, args=tables, **common)
            yield CompileCase(
                name="optim_clip_apply", kernel=clip_apply_kernel,
                args={**tables, "total_ptr": fresh("fp32"), "max_norm": 1.0, "clip_value": 0.0, "by_value": 0},
                **common)
