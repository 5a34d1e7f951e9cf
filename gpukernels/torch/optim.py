"""Drop-in ``torch.optim.Adam``, ``AdamW``, ``SGD`` and ``RMSprop`` running the fused
multi-tensor steps of ``gpukernels.ops.optim`` (Triton on CUDA tensors, the NumPy reference on
CPU tensors, or whatever ``gk.use_backend`` names).

Constructor arguments, defaults, param groups, ``zero_grad`` and the state (keys 'step',
'exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'momentum_buffer', 'square_avg', 'grad_avg') are
torch.optim's, so a ``state_dict`` saved by either optimizer resumes in the other. Step counters
live on the parameters' device (as torch's ``fused=True`` keeps them), so a step launches no
host sync. ``torch.amp.GradScaler`` hands these optimizers its scale and inf flag
(``_step_supports_amp_scaling``): gradients are unscaled inside the kernel and a step with
inf/NaN gradients is skipped on the device.

Training code: ``lr`` may be a one-element tensor, as in torch.optim, read by the kernels on the
device; with ``capturable=True`` (Adam, AdamW, RMSprop) a step is then free of host reads, so
forward, backward and step can be captured in one CUDA graph, and, as torch's optimizers do,
capturing a step without it is refused. ``torch.compile(opt.step, fullgraph=True)`` traces the
step to the ``gpukernels::*_step_`` operators (``_optim_ops``) without a graph break. DTensor
parameters (FSDP2's ``fully_shard``) are updated on their local shards and their state tensors
are DTensors alike, so ``torch.distributed.checkpoint`` saves and reloads them; a group must
not mix DTensors and plain tensors (TypeError, before anything is updated).

One addition, off by default: ``master_weights=True`` keeps a float32 copy of every float16 or
bfloat16 parameter (state key 'master_param') and float32 moments; the update runs on the copy
and the parameter receives its rounding.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from ..ops import optim as F
from . import _optim_ops as ops

_HALF = (torch.float16, torch.bfloat16)


def _dtensor_type() -> type | None:
    """``torch.distributed.tensor.DTensor``, or None while that module is not loaded (then no
    parameter can be a DTensor, and importing it, seconds, is left to those who shard)."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def _is_dtensor(x: Any) -> bool:
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(x, dtensor)


def _local(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """A DTensor's shard on this rank (a view: the kernels update the DTensor in place)."""
    return [t.to_local() for t in tensors]


def _check_placement(group_index: int, group: dict) -> bool:
    """True when the group's parameters are DTensors (FSDP2's sharded parameters): the update
    runs on their local shards. A group mixing DTensors and plain tensors is rejected, naming
    the first parameter that differs from the group's first."""
    params, dtensor = group["params"], _dtensor_type()
    if not params or dtensor is None:
        return False
    sharded = [issubclass(kind, dtensor) for kind in set(map(type, params))]  # a few types: cheap per step
    if all(sharded) or not any(sharded):
        return sharded[0]
    first = _is_dtensor(params[0])
    for i, p in enumerate(params):
        if _is_dtensor(p) != first:
            kinds = ("a plain tensor", "a DTensor")
            raise TypeError(
                f"param_groups[{group_index}]['params'][{i}] is {kinds[not first]} but "
                f"param_groups[{group_index}]['params'][0] is {kinds[first]}; a group's parameters must be all "
                "DTensors (sharded, e.g. by fully_shard) or all plain tensors")
    return first


def _check_hyper(lr, eps=None, weight_decay=None, betas=None, momentum=None, alpha=None) -> None:
    """torch.optim's constructor checks and messages."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
    elif not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if eps is not None and not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if betas is not None:
        for i in (0, 1):
            if not 0.0 <= betas[i] < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
    if weight_decay is not None and not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if momentum is not None and not 0.0 <= momentum:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if alpha is not None and not 0.0 <= alpha:
        raise ValueError(f"Invalid alpha value: {alpha}")


def _capture_health_check(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """torch's own check that a step being captured in a graph has capturable=True, under the
    name this torch gives it: ``_accelerator_graph_capture_health_check`` (torch 2.11 has only
    this one; evaluating the other name there raised AttributeError in every step) or the older
    ``_cuda_graph_capture_health_check``."""
    for name in ("_accelerator_graph_capture_health_check", "_cuda_graph_capture_health_check"):
        check = getattr(optimizer, name, None)
        if check is not None:
            return check
    return lambda: None


class _Fused(torch.optim.Optimizer):
    """What the four optimizers share: the step loop, AMP hand-off, state placement.

    A step is what a training loop waits for whenever the GPU's update is short, so the host's
    part touches each parameter a handful of times at C speed (its gradient, its state dict, a
    few list appends) and launches O(1) kernels: the update (one per dtype) and the step
    counters' advance (one, or two with GradScaler)."""

    _step_supports_amp_scaling = True
    _state_keys: tuple[str, ...] = ()  # floating state tensors shaped like the parameter

    def __init__(self, params, defaults: dict) -> None:
        if defaults.get("differentiable"):
            raise ValueError("differentiable=True is not supported by the fused gpukernels optimizers")
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    @staticmethod
    def _master(group: dict, p: torch.Tensor) -> bool:
        return bool(group.get("master_weights")) and p.dtype in _HALF

    def _state_dtype(self, group: dict, p: torch.Tensor) -> torch.dtype:
        return torch.float32 if self._master(group, p) else p.dtype

    def _zeros(self, group: dict, p: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(p, dtype=self._state_dtype(group, p), memory_format=torch.contiguous_format)

    def _init_common(self, group: dict, p: torch.Tensor, state: dict) -> None:
        if self._master(group, p) and "master_param" not in state:
            state["master_param"] = p.detach().float().clone(memory_format=torch.contiguous_format)

    def _init_masters(self, group: dict, params: list[torch.Tensor], states: list[dict]) -> None:
        """Master weights for the parameters of a ``master_weights`` group that have none yet."""
        if group.get("master_weights"):
            for p, state in zip(params, states):
                if p.dtype in _HALF and "master_param" not in state:
                    self._init_common(group, p, state)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loading, then torch.optim's own state placed as these kernels keep it: step
        counters float32 on the parameter's device, float32 state next to master weights."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            counted = [p for p in group["params"] if "step" in self.state.get(p, {})]
            values = [float(self.state[p].pop("step")) for p in counted]
            self._new_steps(counted, lambda p: self.state[p], values)  # one buffer again: one launch per advance
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                self._init_common(group, p, state)
                for key in self._state_keys:
                    if isinstance(state.get(key), torch.Tensor):
                        state[key] = state[key].to(dtype=self._state_dtype(group, p), device=p.device)

    def _with_grads(self, group: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            g = p.grad
            if g is not None:
                params.append(p)
                grads.append(g)
        if True in [g.is_sparse for g in grads]:  # a list, not a generator: no Python call per tensor
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        return params, grads

    def _split(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor]):
        """Parameters with and without master weights: one functional call each."""
        if not group.get("master_weights"):
            yield False, params, grads
            return
        for master in (False, True):
            part = [i for i, p in enumerate(params) if (p.dtype in _HALF) == master]
            if part:
                yield master, [params[i] for i in part], [grads[i] for i in part]

    @staticmethod
    def _new_steps(params: list[torch.Tensor], state_of: Callable[[torch.Tensor], dict],
                   values: list[float] | None = None) -> None:
        """Step counters (0, or ``values``) for ``params``: 0-d views into one float32 buffer per
        device, so advancing them all is a single launch (see _optim_ops._advance)."""
        by_device: dict[torch.device, list[int]] = {}
        for i, p in enumerate(params):
            by_device.setdefault(p.device, []).append(i)
        for device, members in by_device.items():
            if values is None:  # made on the device: a first step waits for nothing
                counters = torch.zeros(len(members), dtype=torch.float32, device=device)
            else:
                counters = torch.tensor([values[i] for i in members], dtype=torch.float32).to(device)
            for j, i in enumerate(members):
                state_of(params[i])["step"] = counters[j]

    def _states(self, group: dict, params: list[torch.Tensor], first: str, init) -> list[dict]:
        """The state dict of every parameter: a step counter for those without one, ``init`` run
        on those without ``first`` yet."""
        state_of = self.state
        states = [state_of[p] for p in params]
        uncounted = [p for p, state in zip(params, states) if "step" not in state]
        if uncounted:
            self._new_steps(uncounted, lambda p: state_of[p])
        for i in [i for i, state in enumerate(states) if first not in state]:
            init(group, params[i], states[i])
        self._init_masters(group, params, states)
        return states

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if "capturable" in self.defaults:  # torch's check: capturing a step needs capturable=True
            _capture_health_check(self)()
        distributed = [_check_placement(i, group) for i, group in enumerate(self.param_groups)]  # before any update
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        amp = {
            "grad_scale": None if grad_scale is None else grad_scale.reshape(1).to(torch.float32),
            "found_inf": None if found_inf is None else found_inf.reshape(1).to(torch.float32),
        }
        for group, sharded in zip(self.param_groups, distributed):
            params, grads = self._with_grads(group)
            if params:
                for master, part, part_grads in self._split(group, params, grads):
                    self._group_step(group, part, part_grads, master, amp, sharded)
        return loss

    def _group_step(self, group: dict, params: list[torch.Tensor], grads: list[torch.Tensor], master: bool,
                    amp: dict, sharded: bool) -> None:
        raise NotImplementedError  # each optimizer below defines its update

    def _amp_on(self, amp: dict, params: list[torch.Tensor]) -> dict:
        device = params[0].device
        return {k: None if v is None else v.to(device) for k, v in amp.items()}

    @staticmethod
    def _lr(group: dict, device: torch.device) -> dict:
        """The learning rate as the updates take it: a float, or torch's tensor ``lr`` as the
        one-element float32 tensor on the parameters' device the kernels read (no host sync)."""
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            return {"lr_tensor": lr.detach().reshape(1).to(device=device, dtype=torch.float32), "lr": 0.0}
        return {"lr_tensor": None, "lr": float(lr)}


class Adam(_Fused):
    """``torch.optim.Adam`` (``decoupled_weight_decay=True`` is AdamW) with a fused step."""

    _state_keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False, master_weights: bool = False):
        _check_hyper(lr, eps=eps, weight_decay=weight_decay, betas=betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay, master_weights=master_weights)
        super().__init__(params, defaults)

    def _init_state(self, group, p, state):
        state["exp_avg"] = self._zeros(group, p)
        state["exp_avg_sq"] = self._zeros(group, p)

    def _group_step(self, group, params, grads, master, amp, sharded):
        states = self._states(group, params, "exp_avg", self._init_state)
        max_sqs = []
        if group["amsgrad"]:
            for p, state in zip(params, states):
                if "max_exp_avg_sq" not in state:  # new, or amsgrad switched on later
                    state["max_exp_avg_sq"] = self._zeros(group, p)
            max_sqs = [state["max_exp_avg_sq"] for state in states]
        masters = [state["master_param"] for state in states] if master else []
        lists = [params, grads, [state["exp_avg"] for state in states], [state["exp_avg_sq"] for state in states],
                 max_sqs, masters]
        if sharded:
            lists = list(map(_local, lists))
        beta1, beta2 = group["betas"]
        ops.adam(*lists, [state["step"] for state in states], **self._amp_on(amp, params),
                 **self._lr(group, params[0].device), beta1=float(beta1), beta2=float(beta2), eps=group["eps"], weight_decay=group["weight_decay"],
                 amsgrad=group["amsgrad"], maximize=group["maximize"],
                 decoupled_weight_decay=group.get("decoupled_weight_decay", False))


class AdamW(Adam):
    """``torch.optim.AdamW``: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, master_weights: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, master_weights=master_weights)


class SGD(_Fused):
    """``torch.optim.SGD`` with momentum, dampening and Nesterov, fused."""

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None,
                 master_weights: bool = False):
        _check_hyper(lr, weight_decay=weight_decay, momentum=momentum)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused,
                        master_weights=master_weights)
        super().__init__(params, defaults)

    def _group_step(self, group, params, grads, master, amp, sharded):
        momentum = group["momentum"]
        buffers = masters = None
        if momentum != 0 or master:  # torch.optim.SGD keeps no state without momentum; neither do we
            states = [self.state[p] for p in params]
            self._init_masters(group, params, states)
            masters = [state["master_param"] for state in states] if master else None
            if momentum != 0:
                buffers = [state.get("momentum_buffer") for state in states]
                missing = [i for i, buffer in enumerate(buffers) if buffer is None]
        amp = self._amp_on(amp, params)
        hyper = dict(momentum=momentum, dampening=group["dampening"], weight_decay=group["weight_decay"],
                     nesterov=group["nesterov"], maximize=group["maximize"])
        lr = self._lr(group, params[0].device)
        if sharded or torch.compiler.is_compiling():
            # The buffers must exist before the update (the operator, or DTensor state): made
            # here, as torch's fused SGD makes them, and filled by the update.
            first = [False] * len(params)
            if buffers is not None:
                for i in missing:
                    first[i] = True
                    buffers[i] = states[i]["momentum_buffer"] = self._zeros(group, params[i])
            lists = [params, grads, buffers or [], masters or []]
            if sharded:
                lists = list(map(_local, lists))
            ops.sgd(lists[0], lists[1], lists[2], first, lists[3], **amp, **lr, **hyper)
            return
        F.sgd_step(params, grads, buffers, lr=lr["lr"] if lr["lr_tensor"] is None else lr["lr_tensor"],
                   master_params=masters, **amp, **hyper)
        if buffers is not None:
            for i in missing:  # buffers made by this step (none when GradScaler skipped it)
                if buffers[i] is not None:
                    states[i]["momentum_buffer"] = buffers[i]


class RMSprop(_Fused):
    """``torch.optim.RMSprop`` (centered, momentum), fused."""

    _state_keys = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0,
                 momentum: float = 0, centered: bool = False, capturable: bool = False, foreach: bool | None = None,
                 maximize: bool = False, differentiable: bool = False, *, master_weights: bool = False):
        _check_hyper(lr, eps=eps, weight_decay=weight_decay, momentum=momentum, alpha=alpha)
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
                        capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable,
                        master_weights=master_weights)
        super().__init__(params, defaults)

    def _init_state(self, group, p, state):
        state["square_avg"] = self._zeros(group, p)
        if group["momentum"] > 0:
            state["momentum_buffer"] = self._zeros(group, p)
        if group["centered"]:
            state["grad_avg"] = self._zeros(group, p)

    def _group_step(self, group, params, grads, master, amp, sharded):
        states = self._states(group, params, "square_avg", self._init_state)
        lists = [params, grads, [state["square_avg"] for state in states],
                 [state["grad_avg"] for state in states] if group["centered"] else [],
                 [state["momentum_buffer"] for state in states] if group["momentum"] > 0 else [],
                 [state["master_param"] for state in states] if master else []]
        if sharded:
            lists = list(map(_local, lists))
        ops.rmsprop(*lists, [state["step"] for state in states], **self._amp_on(amp, params),
                    **self._lr(group, params[0].device), alpha=group["alpha"], eps=group["eps"],
                    weight_decay=group["weight_decay"], momentum=group["momentum"], centered=group["centered"],
                    maximize=group["maximize"])


__all__ = ["Adam", "AdamW", "SGD", "RMSprop"]
