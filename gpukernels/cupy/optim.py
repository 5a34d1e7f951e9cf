"""Multi-tensor optimizer and clipping kernels through CuPy: optim.cu around the bodies in
optim.cuh. Each launch takes a device table of operand addresses and sizes (one row per tensor)
and a block map of (tensor, tile) pairs, so one launch covers a whole dtype group."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator

import numpy as np

from ._module import CUDA_TYPES, THREADS, NvrtcProgram, cuda_type, kernel

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
    return steps + clips


PROGRAM = NvrtcProgram("optim.cu", _expressions())


def nvrtc_programs() -> Iterator[NvrtcProgram]:
    yield PROGRAM


# ---------------------------------------------------------------------------------------------
# Tables


_PLANS: OrderedDict = OrderedDict()
_SCALARS: dict = {}


def _tile(x) -> int:
    return THREADS * (16 // x.itemsize)  # one 16-byte chunk of parameters per thread


def plan(columns, tile: int):
    """(table, block map, blocks) for ``columns``, one list of arrays per operand; cached by
    addresses and sizes so a training loop uploads them once."""
    import cupy

    sizes = tuple(int(x.size) for x in columns[0])
    addresses = tuple(tuple(int(x.data.ptr) for x in column) for column in columns)
    key = (tile, sizes, addresses)
    if key in _PLANS:
        _PLANS.move_to_end(key)
        return _PLANS[key]
    table = np.empty((len(sizes), len(columns) + 1), dtype=np.uint64)
    for c, column in enumerate(addresses):
        table[:, c] = column
    table[:, -1] = sizes
    tiles = -(-np.asarray(sizes, dtype=np.int64) // tile)
    total = int(tiles.sum())
    tensor = np.repeat(np.arange(len(sizes)), tiles)
    first = np.repeat(np.cumsum(tiles) - tiles, tiles)
    block_map = np.stack([tensor, np.arange(total) - first], axis=1).astype(np.int32)
    result = (cupy.asarray(table), cupy.asarray(block_map), total)
    _PLANS[key] = result
    if len(_PLANS) > 64:
        _PLANS.popitem(last=False)
    return result


def _amp_scalars(grad_scale, found_inf):
    import cupy

    device = cupy.cuda.Device().id
    if device not in _SCALARS:
        _SCALARS[device] = (cupy.ones(1, dtype=cupy.float32), cupy.zeros(1, dtype=cupy.float32))
    one, zero = _SCALARS[device]
    return (one if grad_scale is None else grad_scale.reshape(1),
            zero if found_inf is None else found_inf.reshape(1))


def _groups(params):
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(params):
        cuda_type(p, f"params[{i}]")
        if p.size:
            groups.setdefault(str(p.dtype), []).append(i)
    return groups


def _pick(values, indices, fallback):
    return [fallback] * len(indices) if values is None else [values[i] for i in indices]


def _launch(step: str, columns, has_master: bool, scalars: tuple, amp) -> None:
    p_type = CUDA_TYPES[str(columns[0][0].dtype)]
    s_type = "float" if has_master else p_type
    table, block_map, blocks = plan(columns, _tile(columns[0][0]))
    if blocks == 0:
        return
    function = kernel(PROGRAM, f"{step}_multi_tensor<{p_type}, {s_type}, {'true' if has_master else 'false'}>")
    function((blocks,), (THREADS,), (table, block_map, *amp, *scalars))


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (cupy arrays, updated in place)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, grad_scale, found_inf, step, *,
              lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    amp = _amp_scalars(grad_scale, found_inf)
    device_step = not isinstance(step, float)
    steps = step if isinstance(step, list) else [step] * len(params) if device_step else [amp[0]] * len(params)
    t = 1.0 if device_step else step
    log = lambda b: math.log(b) if b > 0 else -math.inf
    f = np.float32
    scalars = (
        f(-1.0 if maximize else 1.0), f(beta1), f(1.0 - beta1), f(beta2), f(1.0 - beta2), f(log(beta1)), f(log(beta2)),
        f(lr), f(eps), f(0.0 if decoupled_weight_decay else weight_decay),
        f(1.0 - lr * weight_decay if decoupled_weight_decay else 1.0), f(lr / (1.0 - beta1**t)),
        f(math.sqrt(1.0 - beta2**t)), np.int32(amsgrad), np.int32(device_step),
    )
    for idx in _groups(params).values():
        state = [exp_avgs[i] for i in idx]
        columns = [[params[i] for i in idx], [grads[i] for i in idx], state, [exp_avg_sqs[i] for i in idx],
                   _pick(max_exp_avg_sqs, idx, state[0]), _pick(master_params, idx, state[0]), [steps[i] for i in idx]]
        _launch("adam", columns, master_params is not None, scalars, amp)


def sgd_step(params, grads, momentum_buffers, master_params, grad_scale, found_inf, *, first_step, lr, momentum,
             dampening, weight_decay, nesterov, maximize):
    amp = _amp_scalars(grad_scale, found_inf)
    f = np.float32
    for idx in _groups(params).values():
        for first in sorted({bool(first_step[i]) for i in idx}):  # new and old buffers: at most two launches
            part = [i for i in idx if bool(first_step[i]) == first]
            fallback = master_params[part[0]] if master_params is not None else params[part[0]]
            columns = [[params[i] for i in part], [grads[i] for i in part], _pick(momentum_buffers, part, fallback),
                       _pick(master_params, part, fallback)]
            scalars = (f(-1.0 if maximize else 1.0), f(lr), f(momentum), f(1.0 - dampening), f(weight_decay),
                       np.int32(nesterov), np.int32(first))
            _launch("sgd", columns, master_params is not None, scalars, amp)


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, grad_scale, found_inf, *,
                 lr, alpha, eps, weight_decay, momentum, centered, maximize):
    amp = _amp_scalars(grad_scale, found_inf)
    f = np.float32
    scalars = (f(-1.0 if maximize else 1.0), f(lr), f(alpha), f(1.0 - alpha), f(eps), f(weight_decay), f(momentum),
               np.int32(centered))
    for idx in _groups(params).values():
        state = [square_avgs[i] for i in idx]
        columns = [[params[i] for i in idx], [grads[i] for i in idx], state, _pick(grad_avgs, idx, state[0]),
                   _pick(momentum_buffers, idx, state[0]), _pick(master_params, idx, state[0])]
        _launch("rmsprop", columns, master_params is not None, scalars, amp)


def _norm_kind(norm_type: float) -> int:
    return 1 if math.isinf(norm_type) else 0 if norm_type == 2.0 else 2


def _clip_launches(grads):
    for idx in _groups(grads).values():
        column = [grads[i] for i in idx]
        table, block_map, blocks = plan([column], _tile(column[0]))
        yield CUDA_TYPES[str(column[0].dtype)], table, block_map, blocks


def clip_grad_norm_(grads, *, max_norm, norm_type, error_if_nonfinite):
    import cupy

    acc = cupy.zeros(2, dtype=cupy.float32)
    total = cupy.zeros(1, dtype=cupy.float32)
    kind, p = np.int32(_norm_kind(norm_type)), np.float32(norm_type if math.isfinite(norm_type) else 1.0)
    launches = [x for x in _clip_launches(grads) if x[3]]
    for ctype, table, block_map, blocks in launches:
        kernel(PROGRAM, f"grad_norm_multi_tensor<{ctype}>")((blocks,), (THREADS,), (table, block_map, acc, kind, p))
    if error_if_nonfinite:
        from gpukernels.reference.optim import nonfinite_norm_error

        value = acc.get()
        if not math.isfinite(float(value[0]) + float(value[1])):
            raise nonfinite_norm_error(norm_type)
    for ctype, table, block_map, blocks in launches:
        kernel(PROGRAM, f"clip_multi_tensor<{ctype}>")(
            (blocks,), (THREADS,), (table, block_map, acc, total, np.float32(max_norm), kind, p, np.float32(0), np.int32(0)))
    return total


def clip_grad_value_(grads, *, clip_value):
    import cupy

    dummy = cupy.zeros(2, dtype=cupy.float32)
    for ctype, table, block_map, blocks in _clip_launches(grads):
        if blocks:
            kernel(PROGRAM, f"clip_multi_tensor<{ctype}>")(
                (blocks,), (THREADS,),
                (table, block_map, dummy, dummy, np.float32(0), np.int32(0), np.float32(1), np.float32(clip_value),
                 np.int32(1)))
