"""Multi-tensor optimizer and clipping kernels through CuPy: optim.cu around the bodies in
optim.cuh. Each launch takes a device table of operand addresses and sizes (one row per tensor)
and a block map of (tensor, tile) pairs, so one launch covers a whole dtype group."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np

from ._module import CUDA_TYPES, THREADS, Launch, NvrtcProgram, Runner, address, cuda_type, flag, on_gpu, placement, \
    to_host
from ._stream import on_callers_stream

# (parameter storage, state storage, master weights): the combinations a step can need.
VARIANTS = (
    ("float", "float", "false"),
    ("gk::half", "gk::half", "false"),
    ("gk::bfloat16", "gk::bfloat16", "false"),
    ("gk::half", "float", "true"),
    ("gk::bfloat16", "float", "true"),
)
STEPS = ("adam", "sgd", "rmsprop")


def _expressions() -> tuple[str, ...]:
    steps = tuple(f"{step}_multi_tensor<{p}, {s}, {m}>" for step in STEPS for p, s, m in VARIANTS)
    clips = tuple(f"{k}_multi_tensor<{t}>" for k in ("grad_norm", "clip") for t in CUDA_TYPES.values())
    return steps + clips + ("norm_total",)


PROGRAM = NvrtcProgram("optim.cu", _expressions())


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


# ---------------------------------------------------------------------------------------------
# Launch helpers: tables, packed scalars, launches (plain functions, no GPU)


def tile_size(itemsize: int) -> int:
    """Parameters one block updates: one 16-byte chunk per thread."""
    return THREADS * (16 // itemsize)


def block_table(addresses: Sequence[Sequence[int]], sizes: Sequence[int], tile: int):
    """(table, block map, blocks) for tensors of ``sizes`` whose operands are at ``addresses``
    (one sequence per operand): table uint64 [tensors, operands + 1], each operand's address then
    the size; block map int32 [blocks, 2], the (tensor, tile) each block updates."""
    table = np.empty((len(sizes), len(addresses) + 1), dtype=np.uint64)
    for c, column in enumerate(addresses):
        table[:, c] = column
    table[:, -1] = sizes
    tiles = -(-np.asarray(sizes, dtype=np.int64) // tile)
    total = int(tiles.sum())
    tensor = np.repeat(np.arange(len(sizes)), tiles)
    first = np.repeat(np.cumsum(tiles) - tiles, tiles)
    block_map = np.stack([tensor, np.arange(total) - first], axis=1).astype(np.int32)
    return table, block_map, total


def adam_scalars(*, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay, step,
                 device_step, device_lr=False) -> tuple:
    """adam_multi_tensor's scalar arguments, in order. With ``device_step`` each tensor's step
    count is read on the device and the bias corrections are computed there (``step`` unused);
    with ``device_lr`` (which needs ``device_step``) the learning rate too (``lr`` unused)."""
    t = 1.0 if device_step else step
    lr = 0.0 if device_lr else lr
    log = lambda b: math.log(b) if b > 0 else -math.inf  # noqa: E731
    decoupled = weight_decay if decoupled_weight_decay else 0.0
    f = np.float32
    return (
        f(-1.0 if maximize else 1.0), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2), f(log(beta1)), f(log(beta2)),
        f(lr), f(eps), f(0.0 if decoupled_weight_decay else weight_decay), f(1.0 - lr * decoupled),
        f(lr / (1.0 - beta1**t)), f(math.sqrt(1.0 - beta2**t)), f(decoupled), np.int32(amsgrad),
        np.int32(device_step), np.int32(device_lr),
    )


def sgd_scalars(*, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step, device_lr=False) -> tuple:
    f = np.float32
    return (f(-1.0 if maximize else 1.0), f(0.0 if device_lr else lr), f(momentum), f(1.0 - dampening),
            f(weight_decay), np.int32(nesterov), np.int32(first_step), np.int32(device_lr))


def rmsprop_scalars(*, lr, alpha, eps, weight_decay, momentum, centered, maximize, device_lr=False) -> tuple:
    f = np.float32
    return (f(-1.0 if maximize else 1.0), f(0.0 if device_lr else lr), f(alpha), f(1.0 - alpha), f(eps),
            f(weight_decay), f(momentum), np.int32(centered), np.int32(device_lr))


def step_launch(step: str, dtype: str, has_master: bool, table, block_map, blocks: int, amp, scalars) -> Launch:
    """One launch of ``step`` over a dtype group; ``amp`` is (grad_scale, found_inf, lr tensor),
    one-element float32 arrays the kernel reads on the device (the lr tensor only when the
    scalars say ``device_lr``)."""
    p_type = CUDA_TYPES[dtype]
    s_type = "float" if has_master else p_type
    return Launch(f"{step}_multi_tensor<{p_type}, {s_type}, {flag(has_master)}>", (blocks,), (THREADS,),
                  (table, block_map, *amp, *scalars))


def norm_kind(norm_type: float) -> int:
    return 1 if math.isinf(norm_type) else 0 if norm_type == 2.0 else 2


def _norm_arguments(norm_type: float) -> tuple[np.int32, np.float32]:
    return np.int32(norm_kind(norm_type)), np.float32(norm_type if math.isfinite(norm_type) else 1.0)


def norm_slots(blocks: Sequence[int]) -> tuple[list[int], int]:
    """The clipping workspace: (first (value, nan) slot of each dtype group's blocks, slots in
    all). Each group starts on an even slot, so its partials are 16-byte aligned for norm_total;
    the slots between groups stay zero."""
    firsts, used = [], 0
    for n in blocks:
        firsts.append(used)
        used += n + n % 2
    return firsts, used


def grad_norm_launch(dtype: str, table, block_map, blocks: int, partials, norm_type: float) -> Launch:
    """Pass 1 of clipping: each block's part of the group's norm into its slot of ``partials``
    (2 floats a block)."""
    kind, p = _norm_arguments(norm_type)
    return Launch(f"grad_norm_multi_tensor<{CUDA_TYPES[dtype]}>", (blocks,), (THREADS,),
                  (table, block_map, partials, kind, p))


def norm_total_launch(partials, slots: int, acc, norm_type: float) -> Launch:
    """Pass 1b: every slot combined in a fixed order into ``acc`` (2 floats), by one block."""
    return Launch("norm_total", (1,), (THREADS,), (partials, np.int64(slots), acc, _norm_arguments(norm_type)[0]))


def clip_launch(dtype: str, table, block_map, blocks: int, acc, total, *, max_norm: float = 0.0,
                norm_type: float = 2.0, clip_value: float = 0.0, by_value: bool = False) -> Launch:
    """Pass 2: scale by the norm in ``acc`` (its value into ``total``), or clamp by value."""
    kind, p = _norm_arguments(norm_type)
    return Launch(f"clip_multi_tensor<{CUDA_TYPES[dtype]}>", (blocks,), (THREADS,),
                  (table, block_map, acc, total, np.float32(max_norm), kind, p, np.float32(clip_value),
                   np.int32(by_value)))


# ---------------------------------------------------------------------------------------------
# Device tables and constants, uploaded once per placement (library, device, stream)


_PLANS: OrderedDict = OrderedDict()
_CONSTANTS: dict = {}


def _plan(xp, columns):
    """(table, block map, blocks) on the device for ``columns``, one list of arrays per operand;
    cached by addresses and sizes so a training loop uploads them once."""
    sizes = tuple(int(x.size) for x in columns[0])
    addresses = tuple(tuple(address(x) for x in column) for column in columns)
    tile = tile_size(columns[0][0].itemsize)
    key = (placement(xp), tile, sizes, addresses)
    if key in _PLANS:
        _PLANS.move_to_end(key)
        return _PLANS[key]
    table, block_map, blocks = block_table(addresses, sizes, tile)
    result = (xp.asarray(table), xp.asarray(block_map), blocks)
    _PLANS[key] = result
    if len(_PLANS) > 64:
        _PLANS.popitem(last=False)
    return result


def _amp_scalars(xp, grad_scale, found_inf, device_lr=None):
    """(grad_scale, found_inf, lr tensor) as the kernels read them: a cached one or zero for an
    absent one (the lr stand-in is never read)."""
    key = placement(xp)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = (xp.ones(1, dtype=xp.float32), xp.zeros(1, dtype=xp.float32))
    one, zero = _CONSTANTS[key]
    return (one if grad_scale is None else grad_scale.reshape(1),
            zero if found_inf is None else found_inf.reshape(1),
            one if device_lr is None else device_lr.reshape(1))


def _groups(params) -> dict[str, list[int]]:
    """Indices of the non-empty parameters of each dtype (one launch per dtype)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        cuda_type(p, f"params[{i}]")
        if p.size:
            groups.setdefault(str(p.dtype), []).append(i)
    return groups


def _pick(values, indices, fallback):
    return [fallback] * len(indices) if values is None else [values[i] for i in indices]


def _step(run: Runner, step: str, columns, has_master: bool, scalars: tuple, amp) -> None:
    table, block_map, blocks = _plan(run.xp, columns)
    if blocks:
        run.launch(step_launch(step, str(columns[0][0].dtype), has_master, table, block_map, blocks, amp, scalars))


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays, updated in place)


@on_callers_stream
def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, grad_scale, found_inf, step,
              device_lr=None, *, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay,
              run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    amp = _amp_scalars(run.xp, grad_scale, found_inf, device_lr)
    if device_lr is not None and isinstance(step, float):  # the kernel forms the corrections from lr: give it t
        step = run.xp.full(1, step, dtype=run.xp.float32)
    device_step = not isinstance(step, float)
    steps = step if isinstance(step, list) else [step] * len(params) if device_step else [amp[0]] * len(params)
    scalars = adam_scalars(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                           maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, step=step,
                           device_step=device_step, device_lr=device_lr is not None)
    for idx in _groups(params).values():
        state = [exp_avgs[i] for i in idx]
        columns = [[params[i] for i in idx], [grads[i] for i in idx], state, [exp_avg_sqs[i] for i in idx],
                   _pick(max_exp_avg_sqs, idx, state[0]), _pick(master_params, idx, state[0]), [steps[i] for i in idx]]
        _step(run, "adam", columns, master_params is not None, scalars, amp)


@on_callers_stream
def sgd_step(params, grads, momentum_buffers, master_params, grad_scale, found_inf, device_lr=None, *, first_step, lr,
             momentum, dampening, weight_decay, nesterov, maximize, run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    amp = _amp_scalars(run.xp, grad_scale, found_inf, device_lr)
    for idx in _groups(params).values():
        for first in sorted({bool(first_step[i]) for i in idx}):  # new and old buffers: at most two launches
            part = [i for i in idx if bool(first_step[i]) == first]
            fallback = master_params[part[0]] if master_params is not None else params[part[0]]
            columns = [[params[i] for i in part], [grads[i] for i in part], _pick(momentum_buffers, part, fallback),
                       _pick(master_params, part, fallback)]
            scalars = sgd_scalars(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                  nesterov=nesterov, maximize=maximize, first_step=first,
                                  device_lr=device_lr is not None)
            _step(run, "sgd", columns, master_params is not None, scalars, amp)


@on_callers_stream
def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, grad_scale, found_inf,
                 device_lr=None, *, lr, alpha, eps, weight_decay, momentum, centered, maximize,
                 run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    amp = _amp_scalars(run.xp, grad_scale, found_inf, device_lr)
    scalars = rmsprop_scalars(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                              centered=centered, maximize=maximize, device_lr=device_lr is not None)
    for idx in _groups(params).values():
        state = [square_avgs[i] for i in idx]
        columns = [[params[i] for i in idx], [grads[i] for i in idx], state, _pick(grad_avgs, idx, state[0]),
                   _pick(momentum_buffers, idx, state[0]), _pick(master_params, idx, state[0])]
        _step(run, "rmsprop", columns, master_params is not None, scalars, amp)


def _clip_groups(xp, grads):
    """(dtype, table, block map, blocks) of each dtype group of ``grads`` with elements."""
    for idx in _groups(grads).values():
        column = [grads[i] for i in idx]
        table, block_map, blocks = _plan(xp, [column])
        if blocks:
            yield str(column[0].dtype), table, block_map, blocks


@on_callers_stream
def clip_grad_norm_(grads, *, max_norm, norm_type, error_if_nonfinite, run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    xp = run.xp
    acc = xp.zeros(2, dtype=xp.float32)
    total = xp.zeros(1, dtype=xp.float32)
    groups = list(_clip_groups(xp, grads))
    if groups:
        firsts, slots = norm_slots([blocks for *_, blocks in groups])
        partials = xp.zeros(2 * slots, dtype=xp.float32)
        for group, first in zip(groups, firsts):
            run.launch(grad_norm_launch(*group, partials[2 * first:], norm_type))
        run.launch(norm_total_launch(partials, slots, acc, norm_type))
    if error_if_nonfinite:
        from gpukernels.reference.optim import nonfinite_norm_error

        value = to_host(acc)
        if not math.isfinite(float(value[0]) + float(value[1])):
            raise nonfinite_norm_error(norm_type)
    for group in groups:
        run.launch(clip_launch(*group, acc, total, max_norm=max_norm, norm_type=norm_type))
    return total


@on_callers_stream
def clip_grad_value_(grads, *, clip_value, run: Runner | None = None):
    run = run or on_gpu(PROGRAM)
    unused = run.xp.zeros(2, dtype=run.xp.float32)  # the norm operands of the by-value pass
    for group in _clip_groups(run.xp, grads):
        run.launch(clip_launch(*group, unused, unused, clip_value=clip_value, by_value=True))
