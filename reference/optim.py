"""Optimizer steps and gradient clipping in plain NumPy, in place on lists of arrays, with
PyTorch's formulas (torch.optim.Adam/AdamW/SGD/RMSprop, torch.nn.utils.clip_grad_norm_).

Every array is updated where it lies. float16 storage is computed in float32 and rounded once
per step; with ``master_params`` the update runs on the float32 master copy and the parameter
receives its rounding. ``found_inf`` (non-zero) skips the step; ``grad_scale`` divides the
gradients first, as ``torch.amp.GradScaler`` asks of a fused optimizer. ``device_lr``, when
given (a one-element array: torch's tensor ``lr``), is the learning rate and ``lr`` is unused.

Each update is written once, for one tensor, as the textbook formula in in-place ufuncs;
``foreach`` runs it over all tensors of the step in few NumPy calls (flat views of tensors that
share a buffer, small tensors packed into batches, large ones in chunks, on the thread pool).
"""

from __future__ import annotations

import math

import numpy as np

from ._multi_tensor import foreach


def _scalar(x) -> float:
    return float(x.item() if isinstance(x, np.ndarray) else np.asarray(x).reshape(-1)[0])


def _skipped(found_inf) -> bool:
    return found_inf is not None and _scalar(found_inf) != 0.0


def _by_value(values: list) -> dict:
    """Tensor indices grouped by a per-tensor value (a step count, a flag), in first-seen order."""
    groups: dict = {}
    for i, value in enumerate(values):
        groups.setdefault(value, []).append(i)
    return groups


def _gradient(g: np.ndarray, p: np.ndarray, grad_scale: float | None, maximize: bool, weight_decay: float):
    """The gradient the update uses: ``g / grad_scale``, negated to maximize, plus the L2 term
    ``weight_decay * p``. The caller's gradient is never written: a change makes a new array."""
    if grad_scale is not None:
        g = np.divide(g, grad_scale, dtype=p.dtype)
    if maximize:
        g = np.negative(g, dtype=p.dtype)
    if weight_decay != 0:
        g = np.add(g, weight_decay * p, dtype=p.dtype)
    return g


def _lists(**lists) -> dict:
    """The lists an update touches, absent (None) ones left out."""
    return {name: values for name, values in lists.items() if values is not None}


def _parameter_lists(params, master_params) -> tuple[dict, dict]:
    """(lists, copies): the update runs on ``p``, the master copies where there are some, and
    each parameter then receives its master's rounding."""
    if master_params is None:
        return {"p": params}, {}
    return {"p": master_params, "param": params}, {"param": "p"}


# ---------------------------------------------------------------------------------------------
# Adam / AdamW


def _adam(p, g, m, v, vmax=None, *, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay,
          grad_scale, step_size, bias_correction2_sqrt):
    g = _gradient(g, p, grad_scale, maximize, 0.0 if decoupled_weight_decay else weight_decay)
    if decoupled_weight_decay:
        p *= 1.0 - lr * weight_decay
    t = np.subtract(g, m)  # m <- m + (1 - beta1) (g - m)   (torch's lerp)
    t *= 1.0 - beta1
    m += t
    v *= beta2  # v <- beta2 v + (1 - beta2) g^2
    np.multiply(g, g, out=t)
    t *= 1.0 - beta2
    v += t
    if amsgrad:
        np.maximum(vmax, v, out=vmax)
        v = vmax
    np.sqrt(v, out=t)  # p <- p - step_size m / (sqrt(v) / sqrt(bias_correction2) + eps)
    t /= bias_correction2_sqrt
    t += eps
    np.divide(m, t, out=t)
    t *= step_size
    p -= t


def _learning_rate(lr, device_lr) -> float:
    return lr if device_lr is None else _scalar(device_lr)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, grad_scale, found_inf, step,
              device_lr=None, *, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    if _skipped(found_inf):
        return
    lr = _learning_rate(lr, device_lr)
    steps = [_scalar(s) for s in step] if isinstance(step, list) else [_scalar(step)] * len(params)
    parameters, copies = _parameter_lists(params, master_params)
    lists = _lists(**parameters, g=grads, m=exp_avgs, v=exp_avg_sqs, vmax=max_exp_avg_sqs if amsgrad else None)
    writes = [name for name in ("p", "m", "v", "vmax") if name in lists]
    scale = None if grad_scale is None else _scalar(grad_scale)
    with np.errstate(all="ignore"):
        for t, indices in _by_value(steps).items():  # the bias corrections depend on the step
            def update(**arrays):
                _adam(**arrays, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, grad_scale=scale,
                      step_size=lr / (1.0 - beta1**t), bias_correction2_sqrt=math.sqrt(1.0 - beta2**t))

            foreach(update, lists, writes, copies, indices)


# ---------------------------------------------------------------------------------------------
# SGD


def _sgd(p, g, b=None, *, first_step, lr, momentum, dampening, weight_decay, nesterov, maximize, grad_scale):
    g = _gradient(g, p, grad_scale, maximize, weight_decay)
    if momentum != 0:
        if first_step:
            np.copyto(b, g)  # torch's clone of the first gradient
        else:
            b *= momentum  # b <- momentum b + (1 - dampening) g
            b += (1.0 - dampening) * g
        g = g + momentum * b if nesterov else b
    p -= lr * g


def sgd_step(params, grads, momentum_buffers, master_params, grad_scale, found_inf, device_lr=None, *,
             first_step, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """``first_step[i]``: buffer i was just created, so it becomes the gradient (torch's clone)."""
    if _skipped(found_inf):
        return
    lr = _learning_rate(lr, device_lr)
    parameters, copies = _parameter_lists(params, master_params)
    lists = _lists(**parameters, g=grads, b=momentum_buffers if momentum != 0 else None)
    writes = [name for name in ("p", "b") if name in lists]
    scale = None if grad_scale is None else _scalar(grad_scale)
    with np.errstate(all="ignore"):
        for first, indices in _by_value([bool(f) for f in first_step]).items():
            def update(**arrays):
                _sgd(**arrays, first_step=first, lr=lr, momentum=momentum, dampening=dampening,
                     weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, grad_scale=scale)

            foreach(update, lists, writes, copies, indices)


# ---------------------------------------------------------------------------------------------
# RMSprop


def _rmsprop(p, g, v, a=None, b=None, *, lr, alpha, eps, weight_decay, momentum, centered, maximize, grad_scale):
    g = _gradient(g, p, grad_scale, maximize, weight_decay)
    v *= alpha  # v <- alpha v + (1 - alpha) g^2
    t = np.multiply(g, g)
    t *= 1.0 - alpha
    v += t
    if centered:
        np.subtract(g, a, out=t)  # a <- a + (1 - alpha) (g - a)   (torch's lerp)
        t *= 1.0 - alpha
        a += t
        np.multiply(a, a, out=t)
        np.subtract(v, t, out=t)  # v - a^2
        np.sqrt(t, out=t)
    else:
        np.sqrt(v, out=t)
    t += eps  # the root mean square, plus eps
    np.divide(g, t, out=t)
    if momentum > 0:
        b *= momentum  # b <- momentum b + g / rms
        b += t
        t = b
    p -= lr * t


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, grad_scale, found_inf,
                 device_lr=None, *, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    if _skipped(found_inf):
        return
    lr = _learning_rate(lr, device_lr)
    parameters, copies = _parameter_lists(params, master_params)
    lists = _lists(**parameters, g=grads, v=square_avgs, a=grad_avgs if centered else None,
                   b=momentum_buffers if momentum > 0 else None)
    writes = [name for name in ("p", "v", "a", "b") if name in lists]
    scale = None if grad_scale is None else _scalar(grad_scale)
    with np.errstate(all="ignore"):
        def update(**arrays):
            _rmsprop(**arrays, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                     centered=centered, maximize=maximize, grad_scale=scale)

        foreach(update, lists, writes, copies)


# ---------------------------------------------------------------------------------------------
# Gradient clipping


def _norm_part(norm_type: float):
    """The formula for one array's share of the total: max |g|, sum g^2, or sum |g|^p (float16
    summed in float32). Chosen once per call: it runs once per tensor."""
    if math.isinf(norm_type):
        return lambda g: np.max(np.abs(g), initial=0.0)  # np.max keeps NaN
    if norm_type == 2.0:
        return lambda g: np.vdot(g, g)  # (flattens: a tensor that is not contiguous arrives whole)
    return lambda g: np.sum(np.abs(g) ** norm_type)


def grad_norm(grads, *, norm_type):
    """The norm of all gradients together, as one float64 scalar (NaN if any gradient is NaN).
    The parts are summed in the gradients' own dtype (float16 in float32), as torch does."""
    with np.errstate(all="ignore"):
        parts = np.asarray(foreach(_norm_part(norm_type), {"g": grads}, writes=(), pack=False), dtype=np.float64)
        if parts.size == 0:
            return np.float64(0.0)
        if math.isinf(norm_type):
            return np.float64(parts.max())
        return np.float64(parts.sum() ** (1.0 / norm_type))


def nonfinite_norm_error(norm_type: float) -> RuntimeError:
    return RuntimeError(
        f"The total norm of order {float(norm_type)} for gradients is non-finite, so it cannot be clipped. "
        "To disable this error and scale the gradients by the non-finite norm anyway, "
        "set `error_if_nonfinite=False`"
    )


def clip_grad_norm_(grads, *, max_norm, norm_type, error_if_nonfinite=False):
    """Scale every gradient by ``min(1, max_norm / (total_norm + 1e-6))``; return the norm."""
    total = grad_norm(grads, norm_type=norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise nonfinite_norm_error(norm_type)
    coef = min(max_norm / (float(total) + 1e-6), 1.0) if not math.isnan(total) else math.nan
    if coef == 1.0:  # the norm is within max_norm: g * 1.0 is g, bit for bit (inf and NaN too)
        return np.asarray(total)
    with np.errstate(all="ignore"):
        foreach(lambda g: np.multiply(g, coef, out=g), {"g": grads}, writes=("g",), pack=False)
    return np.asarray(total)


def clip_grad_value_(grads, *, clip_value):
    # np.clip keeps NaN, as torch.clamp does
    foreach(lambda g: np.clip(g, -clip_value, clip_value, out=g), {"g": grads}, writes=("g",), pack=False)
