"""Elementwise loss kernels: one forward kernel that writes the per-element losses or, reducing,
one partial sum per program; a small second kernel that adds the partials in a fixed order
(deterministic: no atomics); one backward kernel that writes the input and/or target gradient
in the same pass. The loss is chosen at compile time (``LOSS``); fp32 math over fp32/fp16/bf16
storage. Formulas: ``gpukernels/reference/loss.py``.

``weight`` and ``pos_weight`` arrive as dense arrays of the input's shape (the launch helpers
expand broadcast ones); without them the kernels read neither (``HAS_W``/``HAS_PW`` are
compile-time switches).
"""

from __future__ import annotations

from typing import Iterator

import torch
import triton
import triton.language as tl

from ._launch import CompileCase, TensorArg, check_dtype, elementwise_args, elementwise_launch, fresh

# LOSS codes, the kernels' compile-time switch; the order matches the branches below.
LOSS_CODES = {name: code for code, name in enumerate(("mse", "l1", "huber", "smooth_l1", "bce", "bce_logits", "focal"))}
WEIGHTED = ("bce", "bce_logits")  # the losses that take weight (and, bce_logits, pos_weight)
# A reducing program adds up this many blocks: 2^26 fp32 elements leave 4096 partial sums, which
# the second kernel's one program reads in a few iterations.
BLOCKS_PER_PARTIAL = 16
SUM_BLOCK = 1024
SUM_WARPS = 4

# ---------------------------------------------------------------------------------------------
# Math (fp32)


@triton.jit
def _log1p(e):
    """log(1 + e) to a few ulp for e > -1 (no libdevice in code the interpreter runs): with
    u = fl(1 + e), log(u) * e / (u - 1) cancels the rounding of 1 + e, which log(u) alone turns
    into a relative error of up to 2^-24 / e (1e-6 at e = 0.05)."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))
    return tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid_pair(x):
    # (sigmoid(x), 1 - sigmoid(x)), the smaller one as e / (1 + e): no 1 - s cancellation.
    e = tl.exp(-tl.abs(x))
    big = 1.0 / (1.0 + e)
    small = e * big
    return tl.where(x >= 0, big, small), tl.where(x >= 0, small, big)


@triton.jit
def _power(m, gamma):
    """m^gamma for m >= 0: m*m and m for gamma = 2 and 1 (exact where exp(gamma log m) is not), 1
    for gamma = 0 (as torch's pow, even at m = 0), 0 at m = 0 for gamma > 0."""
    general = tl.exp(gamma * tl.log(m))
    general = tl.where(m > 0.0, general, tl.where(gamma > 0.0, 0.0, float("inf")))
    return tl.where(gamma == 2.0, m * m, tl.where(gamma == 1.0, m, tl.where(gamma == 0.0, 1.0, general)))


@triton.jit
def _bce_logits(x, t, pw):
    """(1 - t) x + (1 + (pw - 1) t) softplus(-x) as a sum of terms >= 0 (for t in [0, 1]):
    (1 - t) x on the positive side, pw t |x| on the negative, then the log1p term. The plain
    formula cancels for x < 0 (relative error 1e-6 and more in fp32)."""
    linear = tl.where(x >= 0, (1.0 - t) * x, -(pw * t) * x)
    return linear + (1.0 + (pw - 1.0) * t) * _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _focal_terms(x, t, alpha, gamma):
    """(alpha_t, ce, m = 1 - p_t, p, 1 - p) of the sigmoid focal loss."""
    p, q = _sigmoid_pair(x)
    ce = _bce_logits(x, t, 1.0)
    m = p * (1.0 - t) + q * t  # 1 - p_t as a sum of non-negative terms
    alpha_t = tl.where(alpha >= 0.0, alpha * t + (1.0 - alpha) * (1.0 - t), 1.0)
    return alpha_t, ce, m, p, q


@triton.jit
def _loss(x, t, pw, p1, p2, LOSS: tl.constexpr, HAS_PW: tl.constexpr):
    """The per-element loss, before ``weight``."""
    d = x - t
    if LOSS == 0:  # MSE
        out = d * d
    elif LOSS == 1:  # L1
        out = tl.abs(d)
    elif LOSS == 2:  # HUBER, p1 = delta; c = min(|d|, delta): d^2 / 2 inside, delta (|d| - delta / 2) outside
        a = tl.abs(d)
        c = tl.minimum(a, p1)
        out = c * (a - 0.5 * c)
    elif LOSS == 3:  # SMOOTH_L1, p1 = beta > 0: Huber / beta
        a = tl.abs(d)
        c = tl.minimum(a, p1)
        out = c * (a - 0.5 * c) / p1
    elif LOSS == 4:  # BCE; each log clamped at -100 as in torch
        log_x = tl.maximum(tl.log(x), -100.0)
        log_1mx = tl.maximum(_log1p(-x), -100.0)
        out = -(t * log_x + (1.0 - t) * log_1mx)
    elif LOSS == 5:  # BCE_LOGITS
        out = _bce_logits(x, t, pw)  # pw is 1.0 without pos_weight
    else:  # FOCAL, p1 = alpha, p2 = gamma
        alpha_t, ce, m, p, q = _focal_terms(x, t, p1, p2)
        out = alpha_t * ce * _power(m, p2)
    return out


@triton.jit
def _grads(x, t, pw, p1, p2, LOSS: tl.constexpr, HAS_PW: tl.constexpr):
    """(d loss / d input, d loss / d target) per element for a unit upstream gradient, before
    ``weight``. Unused halves are dead code the compiler drops."""
    d = x - t
    if LOSS == 0:  # MSE
        dx = 2.0 * d
        dt = -dx
    elif LOSS == 1:  # L1: sign(d), 0 at d = 0, NaN stays NaN
        dx = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, d * 0.0))
        dt = -dx
    elif LOSS == 2:  # HUBER: d clamped to [-delta, delta]
        dx = tl.where(d < -p1, -p1, tl.where(d > p1, p1, d))
        dt = -dx
    elif LOSS == 3:  # SMOOTH_L1
        dx = tl.where(d < -p1, -1.0, tl.where(d > p1, 1.0, d / p1))
        dt = -dx
    elif LOSS == 4:  # BCE: (x - t) / max(x (1 - x), 1e-12) as ATen; target: -logit(x)
        dx = d / tl.maximum((1.0 - x) * x, 1e-12)
        dt = _log1p(-x) - tl.log(x)
    elif LOSS == 5:  # BCE_LOGITS
        p, q = _sigmoid_pair(x)
        if HAS_PW:
            dx = p * (1.0 + (pw - 1.0) * t) - pw * t
            dt = pw * _softplus(-x) - _softplus(x)
        else:
            dx = p - t
            dt = -x
    else:  # FOCAL: alpha_t [ce' m^g + ce g m^(g-1) m'], m' = p q (1 - 2t) for x, 1 - 2p for t
        alpha_t, ce, m, p, q = _focal_terms(x, t, p1, p2)
        m_gamma = _power(m, p2)
        dm = tl.where(p2 == 0.0, 0.0, p2 * _power(m, p2 - 1.0))
        dx = alpha_t * ((p - t) * m_gamma + ce * dm * p * q * (1.0 - 2.0 * t))
        dt = alpha_t * (-x * m_gamma + ce * dm * (1.0 - 2.0 * p))
        dt += tl.where(p1 >= 0.0, (2.0 * p1 - 1.0) * ce * m_gamma, 0.0)
    return dx, dt


@triton.jit
def _load(ptr, offsets, mask, FULL: tl.constexpr):
    # Full blocks load unmasked: a mask against a size not known to be a multiple of 16 would
    # stop the 128-bit vector loads.
    if FULL:
        v = tl.load(ptr + offsets)
    else:
        v = tl.load(ptr + offsets, mask=mask, other=0.5)  # 0.5: a harmless value for every log
    return v.to(tl.float32)


@triton.jit
def _block_loss(x_ptr, t_ptr, w_ptr, pw_ptr, offsets, mask, p1, p2, LOSS: tl.constexpr, HAS_W: tl.constexpr,
                HAS_PW: tl.constexpr, FULL: tl.constexpr):
    x = _load(x_ptr, offsets, mask, FULL)
    t = _load(t_ptr, offsets, mask, FULL)
    pw = _load(pw_ptr, offsets, mask, FULL) if HAS_PW else 1.0
    out = _loss(x, t, pw, p1, p2, LOSS, HAS_PW)
    if HAS_W:
        out = out * _load(w_ptr, offsets, mask, FULL)
    return out


# ---------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def loss_forward_kernel(x_ptr, t_ptr, w_ptr, pw_ptr, out_ptr, n_elements, p1, p2, LOSS: tl.constexpr,
                        HAS_W: tl.constexpr, HAS_PW: tl.constexpr, REDUCE: tl.constexpr, BLOCKS: tl.constexpr,
                        BLOCK: tl.constexpr):
    """REDUCE: ``out[pid]`` = the sum of the losses of this program's BLOCKS blocks (fp32),
    added in a fixed order. Else ``out`` = the per-element losses (BLOCKS is 1)."""
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros((BLOCK,), tl.float32)
    for b in range(BLOCKS):  # a loop, not unrolled: 16 unrolled blocks cost 150+ registers in fp16
        start = (pid * BLOCKS + b) * BLOCK
        offsets = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n_elements:
            out = _block_loss(x_ptr, t_ptr, w_ptr, pw_ptr, offsets, offsets, p1, p2, LOSS, HAS_W, HAS_PW, True)
            if REDUCE:
                acc += out
            else:
                tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty))
        elif start < n_elements:
            mask = offsets < n_elements
            out = _block_loss(x_ptr, t_ptr, w_ptr, pw_ptr, offsets, mask, p1, p2, LOSS, HAS_W, HAS_PW, False)
            if REDUCE:
                acc += tl.where(mask, out, 0.0)
            else:
                tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)
    if REDUCE:
        tl.store(out_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def loss_sum_kernel(partial_ptr, count, out_ptr, scale, BLOCK: tl.constexpr):
    """Stage two, one program: ``out = scale * sum(partials)`` in a fixed order, stored in the
    loss's dtype (scale 1/n for the mean)."""
    acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, count, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + offsets, mask=offsets < count, other=0.0)
    tl.store(out_ptr, (tl.sum(acc, axis=0) * scale).to(out_ptr.dtype.element_ty))


@triton.jit
def _block_grads(x_ptr, t_ptr, w_ptr, pw_ptr, g_ptr, dx_ptr, dt_ptr, offsets, mask, p1, p2, g_scale,
                 LOSS: tl.constexpr, HAS_W: tl.constexpr, HAS_PW: tl.constexpr, G_SCALAR: tl.constexpr,
                 NEED_DX: tl.constexpr, NEED_DT: tl.constexpr, FULL: tl.constexpr):
    x = _load(x_ptr, offsets, mask, FULL)
    t = _load(t_ptr, offsets, mask, FULL)
    pw = _load(pw_ptr, offsets, mask, FULL) if HAS_PW else 1.0
    if G_SCALAR:  # reduced loss: one upstream value, times 1/n for the mean
        g = tl.load(g_ptr).to(tl.float32) * g_scale
    else:
        g = _load(g_ptr, offsets, mask, FULL)
    if HAS_W:
        g = g * _load(w_ptr, offsets, mask, FULL)
    dx, dt = _grads(x, t, pw, p1, p2, LOSS, HAS_PW)
    if NEED_DX:
        if FULL:
            tl.store(dx_ptr + offsets, (dx * g).to(dx_ptr.dtype.element_ty))
        else:
            tl.store(dx_ptr + offsets, (dx * g).to(dx_ptr.dtype.element_ty), mask=mask)
    if NEED_DT:
        if FULL:
            tl.store(dt_ptr + offsets, (dt * g).to(dt_ptr.dtype.element_ty))
        else:
            tl.store(dt_ptr + offsets, (dt * g).to(dt_ptr.dtype.element_ty), mask=mask)


@triton.jit
def loss_backward_kernel(x_ptr, t_ptr, w_ptr, pw_ptr, g_ptr, dx_ptr, dt_ptr, n_elements, p1, p2, g_scale,
                         LOSS: tl.constexpr, HAS_W: tl.constexpr, HAS_PW: tl.constexpr, G_SCALAR: tl.constexpr,
                         NEED_DX: tl.constexpr, NEED_DT: tl.constexpr, BLOCK: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n_elements:
        _block_grads(x_ptr, t_ptr, w_ptr, pw_ptr, g_ptr, dx_ptr, dt_ptr, offsets, offsets, p1, p2, g_scale, LOSS,
                     HAS_W, HAS_PW, G_SCALAR, NEED_DX, NEED_DT, True)
    else:
        _block_grads(x_ptr, t_ptr, w_ptr, pw_ptr, g_ptr, dx_ptr, dt_ptr, offsets, offsets < n_elements, p1, p2,
                     g_scale, LOSS, HAS_W, HAS_PW, G_SCALAR, NEED_DX, NEED_DT, False)


# ---------------------------------------------------------------------------------------------
# Launch helpers


ELEMENTS_PER_THREAD = 8


def loss_launch(dtype: torch.dtype) -> tuple[int, int]:
    """(block, num_warps): the elementwise block (two 128-bit accesses per thread for a plain
    elementwise op), spread over enough warps that each thread holds 8 elements: the focal
    gradient keeps about ten fp32 values live per element, and 16 elements per thread (fp16 and
    bf16 at 4 warps) took 168 registers and spilled on sm_90."""
    block = elementwise_launch(dtype).block
    return block, block // (32 * ELEMENTS_PER_THREAD)


def blocks_per_program(n: int, block: int, reduce: bool) -> int:
    """Blocks one forward program covers: several when reducing a large input (fewer partials
    for stage two), one otherwise."""
    return BLOCKS_PER_PARTIAL if reduce and n > BLOCKS_PER_PARTIAL * block else 1


def _dense(a: torch.Tensor | None, shape, name: str) -> torch.Tensor | None:
    """``a`` expanded to ``shape`` and dense (a copy only where it is not already)."""
    if a is None:
        return None
    check_dtype(a, name)
    return a.expand(shape).contiguous()


def _operands(input, target, weight, pos_weight):
    check_dtype(input, "input")
    check_dtype(target, "target")
    shape = input.shape
    return input.contiguous(), target.contiguous(), _dense(weight, shape, "weight"), _dense(pos_weight, shape,
                                                                                            "pos_weight")


def _empty_result(x: torch.Tensor, reduction: str) -> torch.Tensor:
    """The loss of an empty input: empty, or torch's 0 for the sum and NaN for the mean."""
    if reduction == "none":
        return torch.empty_like(x)
    return torch.full((), float("nan") if reduction == "mean" else 0.0, dtype=x.dtype, device=x.device)


# ---------------------------------------------------------------------------------------------
# What the dispatch layer calls (torch tensors in and out)


def loss_forward(input, target, weight, pos_weight, *, loss: str, reduction: str, p1: float = 0.0,
                 p2: float = 0.0) -> torch.Tensor:
    x, t, w, pw = _operands(input, target, weight, pos_weight)
    n = x.numel()
    if n == 0:
        return _empty_result(x, reduction)
    block, num_warps = loss_launch(x.dtype)
    reduce = reduction != "none"
    blocks = blocks_per_program(n, block, reduce)
    grid = triton.cdiv(n, block * blocks)
    out = torch.empty(grid, dtype=torch.float32, device=x.device) if reduce else torch.empty_like(x)
    loss_forward_kernel[(grid,)](x, t, x if w is None else w, x if pw is None else pw, out, n, p1, p2,
                                 LOSS=LOSS_CODES[loss], HAS_W=w is not None, HAS_PW=pw is not None, REDUCE=reduce,
                                 BLOCKS=blocks, BLOCK=block, num_warps=num_warps)
    if not reduce:
        return out
    result = torch.empty((), dtype=x.dtype, device=x.device)
    loss_sum_kernel[(1,)](out, grid, result, 1.0 / n if reduction == "mean" else 1.0, BLOCK=SUM_BLOCK,
                          num_warps=SUM_WARPS)
    return result


def loss_backward(grad_output, input, target, weight, pos_weight, *, loss: str, reduction: str, p1: float = 0.0,
                  p2: float = 0.0, need: str = "input"):
    x, t, w, pw = _operands(input, target, weight, pos_weight)
    check_dtype(grad_output, "grad_output")
    g = grad_output.contiguous()
    need_dx, need_dt = need in ("input", "both"), need in ("target", "both")
    dx = torch.empty_like(x) if need_dx else None
    dt = torch.empty_like(x) if need_dt else None
    n = x.numel()
    if n:
        block, num_warps = loss_launch(x.dtype)
        loss_backward_kernel[(triton.cdiv(n, block),)](
            x, t, x if w is None else w, x if pw is None else pw, g, x if dx is None else dx, x if dt is None else dt,
            n, p1, p2, 1.0 / n if reduction == "mean" else 1.0, LOSS=LOSS_CODES[loss], HAS_W=w is not None,
            HAS_PW=pw is not None, G_SCALAR=reduction != "none", NEED_DX=need_dx, NEED_DT=need_dt, BLOCK=block,
            num_warps=num_warps)
    return {"input": dx, "target": dt, "both": (dx, dt)}[need]


# ---------------------------------------------------------------------------------------------
# Compile gate

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What the gate builds (each build takes seconds; every switch combination at every
# specialisation would be ~450 builds): every loss, both kernels, every mode at fp32 with aligned
# pointers; BCE-with-logits with weight and pos_weight there too (the most operands); and the
# heaviest loss, focal (the most registers), at every other specialisation: fp16, bf16, views one
# element into their storage with a ragged size (no 128-bit loads expected), and past 2^31
# elements. The other losses are strict subsets of focal's arithmetic and operands.
_EVERY_LOSS = (("fp32", "aligned", "i32"),)
_FOCAL_ONLY = (("fp16", "aligned", "i32"), ("bf16", "aligned", "i32"), ("fp32", "offset", "i32"),
               ("fp32", "aligned", "i64"))


def _gate_variants() -> Iterator[tuple[str, str, str, str, bool, bool]]:
    """(dtype, alignment, size type, loss, has weight, has pos_weight) of every build."""
    for tdtype, alignment, size_type in _EVERY_LOSS:
        for loss in LOSS_CODES:
            yield tdtype, alignment, size_type, loss, False, False
        yield tdtype, alignment, size_type, "bce_logits", True, True
    for tdtype, alignment, size_type in _FOCAL_ONLY:
        yield tdtype, alignment, size_type, "focal", False, False


def _pointers(alignment, size_type, tdtype, inputs, outputs, has_w, has_pw) -> dict:
    present = inputs + tuple(p for p, on in (("w_ptr", has_w), ("pw_ptr", has_pw)) if on)
    args = elementwise_args(alignment, size_type, tdtype, present, outputs, "n_elements")
    for p in ("w_ptr", "pw_ptr"):
        args.setdefault(p, args["x_ptr"])  # the launcher passes x when a weight is absent
    return args


def compile_cases() -> Iterator[CompileCase]:
    """Both kernels at the variants above, the forward per-element and reducing, the backward
    with a per-element and a scalar upstream gradient; and the stage-two sum."""
    for tdtype, alignment, size_type, loss, has_w, has_pw in _gate_variants():
        block, num_warps = loss_launch(_DTYPES[tdtype])
        tags = {"dtype": tdtype, "alignment": alignment, "n": size_type, "block": str(block)}
        loads = None if alignment == "offset" else 128
        suffix = ("+w" if has_w else "") + ("+pw" if has_pw else "")
        switches = {"p1": 0.5, "p2": 2.0, "LOSS": LOSS_CODES[loss], "HAS_W": has_w, "HAS_PW": has_pw}
        for reduce in (False, True):
            args = _pointers(alignment, size_type, tdtype, ("x_ptr", "t_ptr"), () if reduce else ("out_ptr",),
                             has_w, has_pw)
            if reduce:
                args["out_ptr"] = fresh("fp32")
            blocks = blocks_per_program(args["n_elements"], block, reduce)
            yield CompileCase(
                name=f"loss_forward[{loss}{suffix}{',sum' if reduce else ''}]", kernel=loss_forward_kernel,
                args={**args, **switches, "REDUCE": reduce, "BLOCKS": blocks, "BLOCK": block},
                num_warps=num_warps, expect_load_bits=loads, tags=tags)
        for g_scalar in (False, True):
            args = _pointers(alignment, size_type, tdtype, ("x_ptr", "t_ptr") + (() if g_scalar else ("g_ptr",)),
                             ("dx_ptr", "dt_ptr"), has_w, has_pw)
            if g_scalar:
                args["g_ptr"] = fresh(tdtype)
            yield CompileCase(
                name=f"loss_backward[{loss}{suffix}{',scalar' if g_scalar else ''}]", kernel=loss_backward_kernel,
                args={**args, **switches, "g_scale": 1e-6, "G_SCALAR": g_scalar, "NEED_DX": True, "NEED_DT": True,
                      "BLOCK": block},
                num_warps=num_warps, expect_load_bits=loads, tags=tags)
    yield CompileCase(name="loss_sum", kernel=loss_sum_kernel,
                      args={"partial_ptr": fresh("fp32"), "count": 4096, "out_ptr": TensorArg(torch.float32),
                            "scale": 1e-6, "BLOCK": SUM_BLOCK},
                      num_warps=SUM_WARPS, tags={"dtype": "fp32"})
