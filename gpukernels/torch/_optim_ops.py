"""The optimizers' updates as registered operators: ``gpukernels::adam_step_``,
``gpukernels::sgd_step_`` and ``gpukernels::rmsprop_step_``.

``torch.compile`` traces an optimizer's ``step`` down to these operators and no further: each
is opaque to dynamo (a ``torch.library.custom_op`` that names the lists it updates in place in
``mutates_args``, with a fake implementation that does nothing but stand for them), and its
implementation calls the dispatch layer when the compiled step runs. So the backend is chosen at
run time, as in eager (``gk.use_backend`` around a compiled step still works), and dynamo never
reads the dispatch layer's context variable.

An eager step calls the same implementations directly: the dispatcher's boxing of a few hundred
tensors would cost more host time than the update itself on a GPU.

Step counters (one 0-d float32 tensor per parameter, on its device) are advanced before the
update reads them, and a step that GradScaler skips (``found_inf``) is taken off again on the
device: no host read in either case. When compiling, that happens in the traced graph, outside
the operators, which only read the counters: torch 2.11's Inductor lost an operator's in-place
writes to the second and later 0-d tensors of a mutated list (a compiled Adam step left every
counter but the first at 1 or at garbage; reproduced on the CPU with torch 2.11.0; 2.13 was
right).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from ..ops import optim as F

_DATA_PTR = torch.Tensor.data_ptr


# ---------------------------------------------------------------------------------------------
# Step counters


def _as_one_buffer(steps: list[torch.Tensor]) -> torch.Tensor | None:
    """The counters as one 1-D tensor when they are consecutive float32s of one storage (as the
    optimizers make them), else None."""
    first = steps[0]
    if first.dtype != torch.float32 or first.device.type == "meta":
        return None
    if torch.compiler.is_compiling():
        # The compiler fuses the per-counter adds anyway; and torch 2.11's Inductor wrote the
        # buffer's view back wrong (from the second counter on: garbage in an AdamW step's
        # counters, tests/test_optim_compile.py under 2.11; 2.13 is right).
        return None
    start, size = first.data_ptr(), len(steps)
    storage = first.untyped_storage()
    if list(map(_DATA_PTR, steps)) != list(range(start, start + 4 * size, 4)) \
            or start + 4 * size > storage.data_ptr() + storage.nbytes():
        return None
    return first.as_strided((size,), (1,))


def _advance(steps: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Adds 1 to every counter in one launch; returns the counters as _retreat takes them."""
    buffer = _as_one_buffer(steps)
    if buffer is not None:
        buffer.add_(1.0)  # one launch, however many parameters
        return buffer
    torch._foreach_add_(steps, 1.0)  # one launch per device on CUDA
    return steps


def _retreat(counters: torch.Tensor | list[torch.Tensor], by: torch.Tensor | float) -> None:
    """Takes ``by`` (a number, or a device tensor: no host sync) off every counter."""
    if isinstance(counters, torch.Tensor):
        counters.sub_(by)
    elif isinstance(by, torch.Tensor):
        torch._foreach_add_(counters, by.reshape(()), alpha=-1)
    else:
        torch._foreach_add_(counters, -by)


@contextlib.contextmanager
def counting(steps: list[torch.Tensor], found_inf: torch.Tensor | None):
    """Counts the step run in the block (its kernels read counters that include it). A step the
    block rejects (raises) does not count, nor, as in torch's fused optimizers, one that
    GradScaler skips (``found_inf``), taken off on the device."""
    if not steps:
        yield
        return
    counters = _advance(steps)
    try:
        yield
    except BaseException:
        _retreat(counters, 1.0)
        raise
    if found_inf is not None:
        _retreat(counters, found_inf)


# ---------------------------------------------------------------------------------------------
# The updates (eager; also the operators' implementations). Absent operands are empty lists in
# the operators' schemas (a schema has no optional list of tensors): None for the ops layer.


def _lr(lr: float, lr_tensor: torch.Tensor | None):
    return lr if lr_tensor is None else lr_tensor


def adam_update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                exp_avg_sqs: list[torch.Tensor], max_exp_avg_sqs: list[torch.Tensor],
                master_params: list[torch.Tensor], steps: list[torch.Tensor], grad_scale: Optional[torch.Tensor],
                found_inf: Optional[torch.Tensor], lr_tensor: Optional[torch.Tensor], lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
                decoupled_weight_decay: bool) -> None:
    F.adam_step(params, grads, exp_avgs, exp_avg_sqs, step=steps, lr=_lr(lr, lr_tensor), betas=(beta1, beta2),
                eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, max_exp_avg_sqs=max_exp_avg_sqs or None,
                maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, grad_scale=grad_scale,
                found_inf=found_inf, master_params=master_params or None)


def rmsprop_update(params: list[torch.Tensor], grads: list[torch.Tensor], square_avgs: list[torch.Tensor],
                   grad_avgs: list[torch.Tensor], momentum_buffers: list[torch.Tensor],
                   master_params: list[torch.Tensor], steps: list[torch.Tensor], grad_scale: Optional[torch.Tensor],
                   found_inf: Optional[torch.Tensor], lr_tensor: Optional[torch.Tensor], lr: float, alpha: float,
                   eps: float, weight_decay: float, momentum: float, centered: bool, maximize: bool) -> None:
    F.rmsprop_step(params, grads, square_avgs, grad_avgs or None, momentum_buffers or None, lr=_lr(lr, lr_tensor),
                   alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                   maximize=maximize, grad_scale=grad_scale, found_inf=found_inf, master_params=master_params or None)


def sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], momentum_buffers: list[torch.Tensor],
               first_step: list[bool], master_params: list[torch.Tensor], grad_scale: Optional[torch.Tensor],
               found_inf: Optional[torch.Tensor], lr_tensor: Optional[torch.Tensor], lr: float, momentum: float,
               dampening: float, weight_decay: float, nesterov: bool, maximize: bool) -> None:
    """As the operator: every buffer exists (``first_step``: made for this step, its values
    unread, as torch's fused SGD makes them); the ops layer takes those as None and fills
    new ones, copied in here. (The eager optimizer passes None itself and keeps the new ones.)"""
    buffers = [None if first else b for b, first in zip(momentum_buffers, first_step)] if momentum != 0 else None
    F.sgd_step(params, grads, buffers, lr=_lr(lr, lr_tensor), momentum=momentum, dampening=dampening,
               weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, grad_scale=grad_scale,
               found_inf=found_inf, master_params=master_params or None)
    if buffers is not None:
        for target, made, first in zip(momentum_buffers, buffers, first_step):
            if first and made is not None:  # None: GradScaler skipped the step, nothing was made
                target.copy_(made)


# ---------------------------------------------------------------------------------------------
# The operators


def _register(name: str, update, mutates: tuple[str, ...]):
    op = torch.library.custom_op(f"gpukernels::{name}", mutates_args=mutates)(update)

    @op.register_fake
    def _fake(*args, **kwargs) -> None:  # in place: nothing to describe but the mutations
        return None

    return op


adam_step_ = _register("adam_step_", adam_update,
                       ("params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "master_params"))
rmsprop_step_ = _register("rmsprop_step_", rmsprop_update,
                          ("params", "square_avgs", "grad_avgs", "momentum_buffers", "master_params"))
sgd_step_ = _register("sgd_step_", sgd_update, ("params", "momentum_buffers", "master_params"))

STEPS_ARGUMENT = 6  # where adam_update and rmsprop_update take the step counters


def _counted(operator, update, *args, found_inf: torch.Tensor | None = None, **kwargs) -> None:
    """``operator`` when compiling, ``update`` in eager, with the step counted (see the module
    docstring): in the traced graph when compiling, in ``counting`` (which also undoes the count
    of a step that raises) in eager."""
    steps = args[STEPS_ARGUMENT]
    if torch.compiler.is_compiling():
        counters = _advance(steps) if steps else None
        operator(*args, found_inf=found_inf, **kwargs)
        if counters is not None and found_inf is not None:
            _retreat(counters, found_inf)
        return
    with counting(steps, found_inf):
        update(*args, found_inf=found_inf, **kwargs)


def adam(*args, **kwargs) -> None:
    """``gpukernels::adam_step_`` when compiling, the update itself in eager."""
    _counted(adam_step_, adam_update, *args, **kwargs)


def rmsprop(*args, **kwargs) -> None:
    _counted(rmsprop_step_, rmsprop_update, *args, **kwargs)


def sgd(*args, **kwargs) -> None:
    (sgd_step_ if torch.compiler.is_compiling() else sgd_update)(*args, **kwargs)
