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

One addition, off by default: ``master_weights=True`` keeps a float32 copy of every float16 or
bfloat16 parameter (state key 'master_param') and float32 moments; the update runs on the copy
and the parameter receives its rounding.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..ops import optim as F

_HALF = (torch.float16, torch.bfloat16)


def _check_hyper(lr, eps=None, weight_decay=None, betas=None, momentum=None, alpha=None) -> None:
    """torch.optim's constructor checks and messages."""
    if not isinstance(lr, torch.Tensor) and not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")
    if isinstance(lr, torch.Tensor):
        raise TypeError("lr must be a float for the fused gpukernels optimizers, not a tensor")
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


class _Fused(torch.optim.Optimizer):
    """What the four optimizers share: the step loop, AMP hand-off, state placement."""

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

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loading, then torch.optim's own state placed as these kernels keep it: step
        counters float32 on the parameter's device, float32 state next to master weights."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            counted = [p for p in group["params"] if "step" in self.state.get(p, {})]
            values = {p: float(self.state[p].pop("step")) for p in counted}
            self._new_steps(counted, lambda p: self.state[p])  # one buffer again: one launch per advance
            for p in counted:
                self.state[p]["step"].fill_(values[p])
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                self._init_common(group, p, state)
                for key in self._state_keys:
                    if isinstance(state.get(key), torch.Tensor):
                        state[key] = state[key].to(dtype=self._state_dtype(group, p), device=p.device)

    def _with_grads(self, group: dict) -> list[torch.Tensor]:
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            params.append(p)
        return params

    def _split(self, group: dict, params: list[torch.Tensor]):
        """Parameters with and without master weights: one functional call each."""
        for master in (False, True):
            part = [p for p in params if self._master(group, p) == master]
            if part:
                yield master, part

    @staticmethod
    def _new_steps(params: list[torch.Tensor], state_of: Callable[[torch.Tensor], dict]) -> None:
        """Step counters for the parameters that have none yet: 0-d views into one float32
        buffer on their device, so advancing them all is a single launch (see _advance)."""
        fresh = [p for p in params if "step" not in state_of(p)]
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for p in fresh:
            by_device.setdefault(p.device, []).append(p)
        for device, group in by_device.items():
            counters = torch.zeros(len(group), dtype=torch.float32, device=device)
            for i, p in enumerate(group):
                state_of(p)["step"] = counters[i]

    @staticmethod
    def _as_one_buffer(steps: list[torch.Tensor]) -> torch.Tensor | None:
        """The steps as one 1-D tensor when they are consecutive elements of one buffer."""
        first = steps[0]
        if first.dtype != torch.float32 or any(s.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
                                               or s.data_ptr() != first.data_ptr() + 4 * i for i, s in enumerate(steps)):
            return None
        return first.as_strided((len(steps),), (1,))

    def _advance(self, steps: list[torch.Tensor], delta: Any = 1.0) -> None:
        if not steps:
            return
        buffer = self._as_one_buffer(steps)
        if buffer is not None:
            buffer.add_(delta)  # one launch, however many parameters
        elif isinstance(delta, torch.Tensor):
            torch._foreach_add_(steps, [delta.to(s.device) for s in steps])
        else:
            torch._foreach_add_(steps, delta)

    def _undo_skipped(self, steps: list[torch.Tensor], found_inf: torch.Tensor | None) -> None:
        """A step GradScaler skipped does not count, as in torch's fused optimizers."""
        if steps and found_inf is not None:
            self._advance(steps, -found_inf.reshape(()))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
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
        for group in self.param_groups:
            params = self._with_grads(group)
            for master, part in self._split(group, params):
                self._group_step(group, part, master, amp)
        return loss

    def _group_step(self, group: dict, params: list[torch.Tensor], master: bool, amp: dict) -> None:
        raise NotImplementedError  # each optimizer below defines its update

    def _amp_on(self, amp: dict, params: list[torch.Tensor]) -> dict:
        device = params[0].device
        return {k: None if v is None else v.to(device) for k, v in amp.items()}


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

    def _group_step(self, group, params, master, amp):
        steps, exp_avgs, exp_avg_sqs, max_sqs, masters = [], [], [], [], []
        self._new_steps(params, lambda p: self.state[p])
        for p in params:
            state = self.state[p]
            if "exp_avg" not in state:
                state["exp_avg"] = self._zeros(group, p)
                state["exp_avg_sq"] = self._zeros(group, p)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = self._zeros(group, p)
            if group["amsgrad"] and "max_exp_avg_sq" not in state:  # amsgrad switched on later
                state["max_exp_avg_sq"] = self._zeros(group, p)
            self._init_common(group, p, state)
            steps.append(state["step"])
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            max_sqs.append(state.get("max_exp_avg_sq"))
            masters.append(state.get("master_param"))
        amp = self._amp_on(amp, params)
        self._advance(steps)
        F.adam_step(
            params, [p.grad for p in params], exp_avgs, exp_avg_sqs, step=[s.reshape(1) for s in steps],
            lr=group["lr"], betas=tuple(group["betas"]), eps=group["eps"], weight_decay=group["weight_decay"],
            amsgrad=group["amsgrad"], max_exp_avg_sqs=max_sqs if group["amsgrad"] else None,
            maximize=group["maximize"], decoupled_weight_decay=group.get("decoupled_weight_decay", False),
            master_params=masters if master else None, **amp,
        )
        self._undo_skipped(steps, amp["found_inf"])


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

    def _group_step(self, group, params, master, amp):
        buffers, masters = [], []
        for p in params:
            # torch.optim.SGD keeps no state without momentum; neither do we (master weights aside)
            state = self.state[p] if group["momentum"] != 0 or master else {}
            self._init_common(group, p, state)
            buffers.append(state.get("momentum_buffer"))
            masters.append(state.get("master_param"))
        amp = self._amp_on(amp, params)
        momentum = group["momentum"]
        F.sgd_step(params, [p.grad for p in params], buffers if momentum != 0 else None, lr=group["lr"],
                   momentum=momentum, dampening=group["dampening"], weight_decay=group["weight_decay"],
                   nesterov=group["nesterov"], maximize=group["maximize"],
                   master_params=masters if master else None, **amp)
        if momentum != 0:
            for p, buffer in zip(params, buffers):
                if buffer is not None:
                    self.state[p]["momentum_buffer"] = buffer


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

    def _group_step(self, group, params, master, amp):
        steps, square_avgs, grad_avgs, buffers, masters = [], [], [], [], []
        self._new_steps(params, lambda p: self.state[p])
        for p in params:
            state = self.state[p]
            if "square_avg" not in state:
                state["square_avg"] = self._zeros(group, p)
                if group["momentum"] > 0:
                    state["momentum_buffer"] = self._zeros(group, p)
                if group["centered"]:
                    state["grad_avg"] = self._zeros(group, p)
            self._init_common(group, p, state)
            steps.append(state["step"])
            square_avgs.append(state["square_avg"])
            grad_avgs.append(state.get("grad_avg"))
            buffers.append(state.get("momentum_buffer"))
            masters.append(state.get("master_param"))
        amp = self._amp_on(amp, params)
        self._advance(steps)
        F.rmsprop_step(params, [p.grad for p in params], square_avgs, grad_avgs if group["centered"] else None,
                       buffers if group["momentum"] > 0 else None, lr=group["lr"], alpha=group["alpha"],
                       eps=group["eps"], weight_decay=group["weight_decay"], momentum=group["momentum"],
                       centered=group["centered"], maximize=group["maximize"],
                       master_params=masters if master else None, **amp)
        self._undo_skipped(steps, amp["found_inf"])


__all__ = ["Adam", "AdamW", "SGD", "RMSprop"]
