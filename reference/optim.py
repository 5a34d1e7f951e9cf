"""Optimizer steps and gradient clipping in plain NumPy, in place on lists of arrays, with
PyTorch's formulas (torch.optim.Adam/AdamW/SGD/RMSprop, torch.nn.utils.clip_grad_norm_).

Every array is updated where it lies. float16 storage is computed in float32 and rounded once
per step; with ``master_params`` the update runs on the float32 master copy and the parameter
receives its rounding. ``found_inf`` (non-zero) skips the step; ``grad_scale`` divides the
gradients first, as ``torch.amp.GradScaler`` asks of a fused optimizer.
"""

from __future__ import annotations

import math

import numpy as np


def _work(x: np.ndarray) -> np.ndarray:
    """``x`` in the dtype the math runs in: float16 goes through float32, others as they are."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _scalar(x) -> float:
    return float(np.asarray(x).reshape(-1)[0])


def _skipped(found_inf) -> bool:
    return found_inf is not None and _scalar(found_inf) != 0.0


def _grad(grad: np.ndarray, dtype, grad_scale, maximize: bool) -> np.ndarray:
    g = grad.astype(dtype, copy=True)
    if grad_scale is not None:
        g /= dtype.type(_scalar(grad_scale))
    if maximize:
        np.negative(g, out=g)
    return g


def _store(param: np.ndarray, master, value: np.ndarray) -> None:
    if master is not None:
        master[...] = value
    param[...] = value


def adam_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, grad_scale, found_inf, step, *,
              lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
    if _skipped(found_inf):
        return
    with np.errstate(all="ignore"):
        for i, param in enumerate(params):
            t = _scalar(step[i] if isinstance(step, list) else step)
            bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
            step_size = lr / (1.0 - beta1**t)
            master = master_params[i] if master_params is not None else None
            p = (master if master is not None else _work(param)).copy()
            dtype = p.dtype
            g = _grad(grads[i], dtype, grad_scale, maximize)
            if decoupled_weight_decay:
                p *= dtype.type(1.0 - lr * weight_decay)
            elif weight_decay != 0:
                g += dtype.type(weight_decay) * p
            m, v = _work(exp_avgs[i]), _work(exp_avg_sqs[i])
            m = m + dtype.type(1.0 - beta1) * (g - m)  # torch's lerp
            v = dtype.type(beta2) * v + dtype.type(1.0 - beta2) * g * g
            exp_avgs[i][...] = m
            exp_avg_sqs[i][...] = v
            if amsgrad:
                v = np.maximum(_work(max_exp_avg_sqs[i]), v)
                max_exp_avg_sqs[i][...] = v
            denom = np.sqrt(v) / dtype.type(bias_correction2_sqrt) + dtype.type(eps)
            _store(param, master, p - dtype.type(step_size) * m / denom)


def sgd_step(params, grads, momentum_buffers, master_params, grad_scale, found_inf, *,
             first_step, lr, momentum, dampening, weight_decay, nesterov, maximize):
    """``first_step[i]``: buffer i was just created, so it becomes the gradient (torch's clone)."""
    if _skipped(found_inf):
        return
    with np.errstate(all="ignore"):
        for i, param in enumerate(params):
            master = master_params[i] if master_params is not None else None
            p = (master if master is not None else _work(param)).copy()
            dtype = p.dtype
            g = _grad(grads[i], dtype, grad_scale, maximize)
            if weight_decay != 0:
                g += dtype.type(weight_decay) * p
            if momentum != 0:
                if first_step[i]:
                    b = g.copy()
                else:
                    b = dtype.type(momentum) * _work(momentum_buffers[i]) + dtype.type(1.0 - dampening) * g
                momentum_buffers[i][...] = b
                g = g + dtype.type(momentum) * b if nesterov else b
            _store(param, master, p - dtype.type(lr) * g)


def rmsprop_step(params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, grad_scale, found_inf, *,
                 lr, alpha, eps, weight_decay, momentum, centered, maximize):
    if _skipped(found_inf):
        return
    with np.errstate(all="ignore"):
        for i, param in enumerate(params):
            master = master_params[i] if master_params is not None else None
            p = (master if master is not None else _work(param)).copy()
            dtype = p.dtype
            g = _grad(grads[i], dtype, grad_scale, maximize)
            if weight_decay != 0:
                g += dtype.type(weight_decay) * p
            v = dtype.type(alpha) * _work(square_avgs[i]) + dtype.type(1.0 - alpha) * g * g
            square_avgs[i][...] = v
            if centered:
                a = _work(grad_avgs[i])
                a = a + dtype.type(1.0 - alpha) * (g - a)  # torch's lerp
                grad_avgs[i][...] = a
                v = v - a * a
            avg = np.sqrt(v) + dtype.type(eps)
            if momentum > 0:
                b = dtype.type(momentum) * _work(momentum_buffers[i]) + g / avg
                momentum_buffers[i][...] = b
                p = p - dtype.type(lr) * b
            else:
                p = p - dtype.type(lr) * g / avg
            _store(param, master, p)


def grad_norm(grads, *, norm_type):
    """The norm of all gradients together, as one float64 scalar (NaN if any gradient is NaN).
    Each tensor's part is summed in its own dtype (float16 in float32), as torch does."""
    with np.errstate(all="ignore"):
        parts = []
        for g in grads:
            a = np.abs(_work(g).reshape(-1))
            if math.isinf(norm_type):
                parts.append(a.max(initial=0.0))  # np.max keeps NaN
            elif norm_type == 2.0:
                parts.append(np.dot(a, a))
            else:
                parts.append(np.sum(a**norm_type))
        parts = np.asarray(parts, dtype=np.float64)
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
    with np.errstate(all="ignore"):
        for g in grads:
            if g.dtype == np.float16:
                g[...] = g.astype(np.float32) * np.float32(coef)
            else:
                np.multiply(g, g.dtype.type(coef), out=g)
    return np.asarray(total)


def clip_grad_value_(grads, *, clip_value):
    for g in grads:
        np.clip(g, -clip_value, clip_value, out=g)  # np.clip keeps NaN, as torch.clamp does
