"""Optimizer steps and gradient clipping on lists of arrays, updated in place, with
``torch.optim``'s names, defaults and formulas (Adam/AdamW, SGD with momentum and Nesterov,
RMSprop; ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``).

Every argument is checked before anything runs, so a rejected step writes nothing.
Non-finite gradients are not an error: without ``found_inf`` they flow into the parameters
exactly as in ``torch.optim``; a non-zero ``found_inf`` (``torch.amp.GradScaler``'s flag)
skips the whole step. ``grad_scale`` divides every gradient before the update.
``master_params``: float32 copies of float16/bfloat16 parameters; the update runs on them (with
float32 state) and each parameter receives the rounded result.
``lr`` is a number or, as torch.optim allows, a one-element float32 array on the parameters'
device, read by the kernels on the device (no host sync; a captured CUDA graph replays with the
value it holds then).
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Callable, Sequence

from .._dispatch import array_library, call_inplace
from ._checks import check_float, check_match, check_real_number, device_name, dtype_name

STATE_DTYPES = ("float16", "bfloat16", "float32", "float64")


# ---------------------------------------------------------------------------------------------
# Checks
#
# The array checks' cache. An optimizer calls a step with the same arrays, or arrays of the
# same kinds, every time, and checking hundreds of them one by one in Python costs more than
# the step itself takes on a GPU. The array checks read nothing but each array's type, shape,
# dtype and device (and which entries are None, and how many there are), so a call whose arrays
# have the same facts as a call that passed passes too. Those facts are what is remembered: a hit is
# never stale, whatever happened to the arrays in between (a parameter cast or moved in place
# misses, and is checked).

_FACTS = operator.attrgetter("__class__", "shape", "dtype", "device")
_PASSED: dict[str, list[tuple]] = {}  # op -> the facts of its calls that passed, most recent first
_PASSED_PER_OP = 8  # an optimizer with a few param groups, or a few optimizers, all hit


class _Uncacheable(Exception):
    """An argument has no facts to key on (not an array): the checks run and name it."""


def _array_facts(x: Any) -> Any:
    if x is None:
        return None
    try:
        return _FACTS(x)
    except AttributeError:
        raise _Uncacheable from None


def _list_facts(values: Any) -> tuple:
    if not isinstance(values, (list, tuple)):
        raise _Uncacheable
    try:
        return tuple(map(_FACTS, values))  # the common case: arrays only, at C speed
    except AttributeError:
        return tuple(map(_array_facts, values))


def _facts(value: Any) -> Any:
    """The facts of an array, a list of arrays (and None) or None; a number stands for itself
    (it is checked on every call, so its value is no part of the key)."""
    if isinstance(value, (list, tuple)):
        return _list_facts(value)
    if value is None or isinstance(value, numbers.Number):
        return type(value)
    return _array_facts(value)


def _check_arrays(op: str, arrays: tuple, check: Callable[[], None]) -> None:
    """Run ``check``, the array checks of one call of ``op``, unless a call whose ``arrays``
    had the same facts passed them. (Compared, not hashed: a hit then reads each fact once.)"""
    try:
        facts = tuple(map(_facts, arrays))
    except _Uncacheable:
        check()
        return
    passed = _PASSED.setdefault(op, [])
    if facts in passed:
        return
    check()
    passed.insert(0, facts)
    del passed[_PASSED_PER_OP:]


def _check_list(values: Any, name: str, length: int | None = None, allow_none: bool = False) -> list:
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays, got {type(values).__name__}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name} has {len(values)} entries but params has {length}; pass one per parameter")
    for i, x in enumerate(values):
        if not (x is None and allow_none):
            check_float(x, f"{name}[{i}]", STATE_DTYPES)
    return list(values)


def _check_params(params: Any, grads: Any) -> None:
    _check_list(params, "params")
    _check_list(grads, "grads", len(params))
    for i, (p, g) in enumerate(zip(params, grads)):
        _check_same_place("params[0]", params[0], f"params[{i}]", p)  # dtypes may differ between parameters
        check_match(f"params[{i}]", p, f"grads[{i}]", g, shape=True)


def _check_same_place(ref_name: str, ref: Any, name: str, x: Any) -> None:
    """Same array library and device (dtypes may differ between parameters)."""
    if array_library(x) != array_library(ref):
        raise TypeError(f"{name} is a {array_library(x)} array but {ref_name} is a {array_library(ref)} array; "
                        "pass arrays of one library")
    if device_name(x) != device_name(ref):
        raise ValueError(f"{name} is on {device_name(x)} but {ref_name} is on {device_name(ref)}")


def _check_state(params: list, values: Any, name: str, master: bool, allow_none: bool = False) -> list:
    values = _check_list(values, name, len(params), allow_none)
    for i, (p, s) in enumerate(zip(params, values)):
        if s is None:
            continue
        _check_same_place(f"params[{i}]", p, f"{name}[{i}]", s)
        if tuple(s.shape) != tuple(p.shape):
            raise ValueError(f"{name}[{i}] has shape {tuple(s.shape)} but params[{i}] has shape {tuple(p.shape)}; "
                             "they must match")
        want = "float32" if master else dtype_name(p)
        if dtype_name(s) != want:
            why = " (state is float32 when master_params are given)" if master else ""
            raise TypeError(f"{name}[{i}] has dtype {dtype_name(s)} but must be {want}{why}")
    return values


def _check_master(params: list, master_params: Any) -> bool:
    if master_params is None:
        return False
    _check_state(params, master_params, "master_params", master=True)
    return True


def _check_scalar_array(x: Any, name: str, params: list) -> Any:
    if x is None:
        return None
    check_float(x, name, ("float32",))
    if params:
        _check_same_place("params[0]", params[0], name, x)
    size = math.prod(tuple(x.shape))
    if size != 1:
        raise ValueError(f"{name} must hold exactly one element, got shape {tuple(x.shape)}")
    return x


def _check_step(step: Any, params: list) -> None:
    """The array forms of ``step``; a number is checked by ``_step_value`` on every call."""
    if isinstance(step, (list, tuple)):  # one counter per parameter, as torch.optim keeps them
        if len(step) != len(params):
            raise ValueError(f"step has {len(step)} entries but params has {len(params)}; pass one per parameter")
        for i, s in enumerate(step):
            _check_scalar_array(s, f"step[{i}]", params)
    elif array_library(step) is not None:
        _check_scalar_array(step, "step", params)


def _step_value(step: Any) -> Any:
    """``step`` as the backends take it: a list of arrays, an array, or a checked float."""
    if isinstance(step, (list, tuple)):
        return list(step)
    if array_library(step) is not None:
        return step
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"step must be a number or a one-element float32 array, got {type(step).__name__}")
    if not (step >= 1 and math.isfinite(step)):
        raise ValueError(f"step counts the steps taken including this one, so it must be >= 1; got {step}")
    return float(step)


def _split_lr(lr: Any) -> tuple[float, Any]:
    """(the number the backends take as ``lr``, the device array they read it from instead, or
    None). An array is checked with the other arrays; a number here, on every call."""
    if array_library(lr) is not None:
        return math.nan, lr  # never read: the backends take the array's value
    return _check_nonneg(lr, "lr"), None


def _check_nonneg(value: Any, name: str) -> float:
    value = check_real_number(value, name)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_beta(value: Any, name: str) -> float:
    value = check_real_number(value, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def _check_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return _check_beta(betas[0], "betas[0]"), _check_beta(betas[1], "betas[1]")


# ---------------------------------------------------------------------------------------------
# Steps


def adam_step(params: Sequence, grads: Sequence, exp_avgs: Sequence, exp_avg_sqs: Sequence, *, step: Any,
              lr: Any = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0, amsgrad: bool = False, max_exp_avg_sqs: Sequence | None = None,
              maximize: bool = False, decoupled_weight_decay: bool = False, grad_scale: Any = None,
              found_inf: Any = None, master_params: Sequence | None = None) -> None:
    """One Adam (``decoupled_weight_decay=True``: AdamW) step on every parameter, in place.

    ``step`` is the step number including this one (1 on the first step): a number, a
    one-element float32 array on the parameters' device, or a list of those, one per parameter
    (torch.optim's per-parameter counters). Arrays are read on the device, so a captured CUDA
    graph can advance them. With ``amsgrad``, ``max_exp_avg_sqs`` holds the running maxima.
    """
    (lr, device_lr), eps = _split_lr(lr), _check_nonneg(eps, "eps")
    weight_decay = _check_nonneg(weight_decay, "weight_decay")
    beta1, beta2 = _check_betas(betas)
    maximize, decoupled = _check_flag(maximize, "maximize"), _check_flag(decoupled_weight_decay, "decoupled_weight_decay")
    if _check_flag(amsgrad, "amsgrad") and max_exp_avg_sqs is None:
        raise ValueError("amsgrad=True needs max_exp_avg_sqs, one array per parameter")
    max_exp_avg_sqs = max_exp_avg_sqs if amsgrad else None

    def check() -> None:
        _check_params(params, grads)
        master = _check_master(params, master_params)
        _check_state(params, exp_avgs, "exp_avgs", master)
        _check_state(params, exp_avg_sqs, "exp_avg_sqs", master)
        if amsgrad:
            _check_state(params, max_exp_avg_sqs, "max_exp_avg_sqs", master)
        _check_step(step, params)
        _check_scalar_array(grad_scale, "grad_scale", params)
        _check_scalar_array(found_inf, "found_inf", params)
        _check_scalar_array(device_lr, "lr", params)

    _check_arrays("adam_step", (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, step,
                                    grad_scale, found_inf, device_lr), check)
    step = _step_value(step)
    if not params:
        return
    call_inplace(
        "optim", "adam_step",
        (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, grad_scale, found_inf, step, device_lr),
        dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
             maximize=maximize, decoupled_weight_decay=decoupled),
        template=params[0], writes=(0, 2, 3, 4, 5),
    )


def sgd_step(params: Sequence, grads: Sequence, momentum_buffer_list: list | None = None, *, lr: Any = 1e-3,
             momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
             maximize: bool = False, grad_scale: Any = None, found_inf: Any = None,
             master_params: Sequence | None = None) -> None:
    """One SGD step, in place. With ``momentum``, ``momentum_buffer_list`` holds one buffer per
    parameter; a None entry (the first step) is replaced by a new buffer equal to the gradient,
    as torch.optim.SGD does."""
    (lr, device_lr), weight_decay = _split_lr(lr), _check_nonneg(weight_decay, "weight_decay")
    momentum, dampening = _check_nonneg(momentum, "momentum"), check_real_number(dampening, "dampening")
    if not math.isfinite(dampening):
        raise ValueError(f"dampening must be finite, got {dampening}")
    if _check_flag(nesterov, "nesterov") and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    maximize = _check_flag(maximize, "maximize")
    if momentum != 0 and not isinstance(momentum_buffer_list, list):  # a list: new buffers are put into it
        raise TypeError("momentum != 0 needs momentum_buffer_list, a list (entries may be None on the first step)")
    buffers = momentum_buffer_list if momentum != 0 else None

    def check() -> None:
        _check_params(params, grads)
        master = _check_master(params, master_params)
        if buffers is not None:
            _check_state(params, buffers, "momentum_buffer_list", master, allow_none=True)
        _check_scalar_array(grad_scale, "grad_scale", params)
        _check_scalar_array(found_inf, "found_inf", params)
        _check_scalar_array(device_lr, "lr", params)

    _check_arrays("sgd_step", (params, grads, buffers, master_params, grad_scale, found_inf, device_lr), check)
    if not params:
        return
    first_step = [False] * len(params) if buffers is None else [b is None for b in buffers]
    if any(first_step):
        for i, first in enumerate(first_step):
            if first:  # created here, after every check passed; the kernel writes it
                buffers[i] = _empty_like(params[i] if master_params is None else master_params[i])
    call_inplace(
        "optim", "sgd_step",
        (params, grads, buffers, master_params, grad_scale, found_inf, device_lr),
        dict(first_step=first_step, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
             nesterov=nesterov, maximize=maximize),
        template=params[0], writes=(0, 2, 3),
    )
    if found_inf is not None and any(first_step) and _found(found_inf):
        # A skipped step creates no buffer. This reads found_inf on the host, on the first
        # step with new buffers only: every later step stays free of host syncs.
        for i in (i for i, first in enumerate(first_step) if first):
            buffers[i] = None


def rmsprop_step(params: Sequence, grads: Sequence, square_avgs: Sequence, grad_avgs: Sequence | None = None,
                 momentum_buffer_list: Sequence | None = None, *, lr: Any = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 maximize: bool = False, grad_scale: Any = None, found_inf: Any = None,
                 master_params: Sequence | None = None) -> None:
    """One RMSprop step, in place; ``grad_avgs`` when ``centered``, ``momentum_buffer_list``
    (zero-initialised, as torch.optim.RMSprop keeps them) when ``momentum > 0``."""
    (lr, device_lr), eps = _split_lr(lr), _check_nonneg(eps, "eps")
    weight_decay = _check_nonneg(weight_decay, "weight_decay")
    alpha, momentum = _check_nonneg(alpha, "alpha"), _check_nonneg(momentum, "momentum")
    maximize = _check_flag(maximize, "maximize")
    if _check_flag(centered, "centered") and grad_avgs is None:
        raise ValueError("centered=True needs grad_avgs, one array per parameter")
    if momentum > 0 and momentum_buffer_list is None:
        raise ValueError("momentum > 0 needs momentum_buffer_list, one array per parameter")
    grad_avgs = grad_avgs if centered else None
    buffers = momentum_buffer_list if momentum > 0 else None

    def check() -> None:
        _check_params(params, grads)
        master = _check_master(params, master_params)
        _check_state(params, square_avgs, "square_avgs", master)
        if grad_avgs is not None:
            _check_state(params, grad_avgs, "grad_avgs", master)
        if buffers is not None:
            _check_state(params, buffers, "momentum_buffer_list", master)
        _check_scalar_array(grad_scale, "grad_scale", params)
        _check_scalar_array(found_inf, "found_inf", params)
        _check_scalar_array(device_lr, "lr", params)

    _check_arrays("rmsprop_step", (params, grads, square_avgs, grad_avgs, buffers, master_params, grad_scale,
                                       found_inf, device_lr), check)
    if not params:
        return
    call_inplace(
        "optim", "rmsprop_step",
        (params, grads, square_avgs, grad_avgs, buffers, master_params, grad_scale, found_inf, device_lr),
        dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
             maximize=maximize),
        template=params[0], writes=(0, 2, 3, 4, 5),
    )


# ---------------------------------------------------------------------------------------------
# Gradient clipping


def _check_grads(grads: Any) -> None:
    def check() -> None:
        _check_list(grads, "grads")
        for i, g in enumerate(grads[1:], 1):
            _check_same_place("grads[0]", grads[0], f"grads[{i}]", g)

    _check_arrays("clip", (grads,), check)


def clip_grad_norm_(grads: Sequence, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> Any:
    """Scale all gradients together by ``min(1, max_norm / (total_norm + 1e-6))`` in place and
    return ``total_norm``, the ``norm_type``-norm of all gradients as one vector (a 0-d array of
    the gradients' library, device and dtype). ``norm_type``: any p > 0 or ``inf``."""
    _check_grads(grads)
    max_norm = check_real_number(max_norm, "max_norm")
    norm_type = check_real_number(norm_type, "norm_type")
    if not (norm_type > 0):
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    _check_flag(error_if_nonfinite, "error_if_nonfinite")
    if not grads:
        raise ValueError("grads is empty: there is no norm to return")
    total = call_inplace("optim", "clip_grad_norm_", (grads,),
                         dict(max_norm=max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite),
                         template=grads[0], writes=(0,))
    return total.reshape(()) if hasattr(total, "reshape") else total


def clip_grad_value_(grads: Sequence, clip_value: float) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place (NaN stays NaN)."""
    _check_grads(grads)
    clip_value = check_real_number(clip_value, "clip_value")
    if not grads:
        return
    call_inplace("optim", "clip_grad_value_", (grads,), dict(clip_value=clip_value), template=grads[0], writes=(0,))


# ---------------------------------------------------------------------------------------------


def _empty_like(x: Any) -> Any:
    library = array_library(x)
    if library == "torch":
        import torch

        return torch.empty_like(x, memory_format=torch.contiguous_format)
    if library == "cupy":
        import cupy

        return cupy.empty_like(x, order="C")
    import numpy as np

    return np.empty_like(x, order="C")


def _found(found_inf: Any) -> bool:
    library = array_library(found_inf)
    value = found_inf.reshape(-1)[0]
    return float(value.item() if library != "numpy" else value) != 0.0


__all__ = ["adam_step", "sgd_step", "rmsprop_step", "clip_grad_norm_", "clip_grad_value_"]
