"""Registering gpukernels ops as PyTorch operators, in the ``gpukernels`` namespace.

Every differentiable op of ``gpukernels.torch`` is a pair of ``torch.library.custom_op``s, a
forward and a backward (``torch.ops.gpukernels.gelu`` and ``gelu_backward``, ...), each with a
fake implementation, and the forward has its autograd registered with ``register_autograd``.
So ``torch.compile(fullgraph=True)`` sees one opaque node per op (no graph break, nothing to
trace inside), AOTAutograd and Inductor get the backward as an op too, and ``opcheck`` applies.

Why ``custom_op`` and not ``triton_op`` + ``wrap_triton``: an op's implementation is a run-time
choice among three backends (the NumPy reference, Triton, CuPy; see ``gpukernels._dispatch``),
made inside the op from ``use_backend``, ``GPUKERNELS_BACKEND`` and the inputs' device, and the
Triton launchers do host work between launches (the recurrent layers loop over time steps with
cuBLAS GEMMs between kernels, attention picks tiles and allocates workspaces). ``triton_op``
would bake one backend into the graph at trace time and hand Inductor kernels it could not fuse
anyway. The backend choice therefore happens where dynamo does not trace: in the op's eager
implementation, at run time, so ``with gk.use_backend("numpy"): compiled(x)`` runs the reference
and the same compiled graph runs Triton outside the block, without a recompile.

The Python wrappers in ``gpukernels.torch._<family>`` (which dynamo does trace) check the
options that do not depend on data (an unknown ``approximate``, a ``dim`` out of range) and
raise the same ``TypeError``/``ValueError`` as eager, at trace time.

Registering a new op takes a few lines (see ``_softmax.py`` for the smallest family)::

    @op("my_op")
    def _my_op(x: Tensor, alpha: float) -> Tensor:        # the eager implementation
        return fresh(_ops.my_op(x, alpha), x)             # _dispatch.call picks the backend

    @_my_op.register_fake
    def _(x, alpha):
        return empty(x)                                   # shape/dtype only, no data

    (and the same for ``my_op_backward``), then
    ``_my_op.register_autograd(backward, setup_context=setup_context)`` and, if torch gives the
    op an autocast rule, ``autocast(_my_op, cpu=LOWER_PRECISION, cuda=FLOAT32)``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

NAMESPACE = "gpukernels"

# Autocast policies, as torch's autocast op lists define them (aten/src/ATen/autocast_mode.cpp):
# LOWER_PRECISION casts the floating inputs (not float64) to the autocast dtype, as for mm,
# linear, scaled_dot_product_attention and the cuDNN RNNs; FLOAT32 casts them to float32, as for
# softmax and log_softmax on CUDA. An op with no rule runs in its inputs' dtypes.
LOWER_PRECISION = "lower_precision"
FLOAT32 = "float32"
# For wrappers only (``autocast_inputs``): the lower-precision dtype promoted with that of the
# op's state (the first tensor given), as torch's composite cells come out when their
# lower-precision matmuls meet the state in elementwise math.
PROMOTE_WITH_STATE = "promote_with_state"

_autocast_library = torch.library.Library(NAMESPACE, "IMPL")


def op(name: str, *, mutates_args: tuple[str, ...] = ()) -> Callable[[Callable], Any]:
    """``torch.library.custom_op("gpukernels::<name>")``; the schema comes from the type hints."""
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=mutates_args)


def fresh(result: torch.Tensor, *inputs: torch.Tensor | None) -> torch.Tensor:
    """``result`` as an op may return it: contiguous, and sharing no memory with an input (a
    backend may hand an input back unchanged, e.g. for an empty tensor; the dispatcher forbids
    an op's output to alias its input)."""
    result = result.contiguous()
    pointer = result.untyped_storage().data_ptr()
    if result.numel() and any(x is not None and x.numel() and x.untyped_storage().data_ptr() == pointer
                              for x in inputs):
        result = result.clone()
    return result


def fresh_all(results: tuple, *inputs: torch.Tensor | None) -> tuple:
    """``fresh`` for each result; a None result (the gradient of an absent optional input)
    becomes an empty placeholder, since an op returns tensors only (see ``present``)."""
    template = next(x for x in inputs if x is not None)
    return tuple(template.new_empty(0) if r is None else fresh(r, *inputs) for r in results)


def present(gradients: tuple, inputs: tuple) -> tuple:
    """The gradients an autograd backward returns: None where the input was None (the backward op
    returned an empty placeholder there)."""
    return tuple(None if x is None else g for g, x in zip(gradients, inputs, strict=True))


def empty(x: torch.Tensor, shape: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A fake (or real) contiguous output on ``x``'s device, of ``x``'s shape and dtype by default."""
    return x.new_empty(tuple(x.shape) if shape is None else tuple(shape), dtype=dtype or x.dtype)


def empty_like_inputs(*inputs: torch.Tensor | None) -> tuple:
    """The fake gradients of ``inputs``: one of each input's shape, an empty placeholder for None."""
    template = next(x for x in inputs if x is not None)
    return tuple(template.new_empty(0) if x is None else empty(x) for x in inputs)


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise: the dtype our kernels keep statistics in."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _cast(value: Any, device_type: str, dtype: torch.dtype) -> Any:
    """``value`` cast for autocast as torch casts: floating tensors on that device, not float64."""
    if isinstance(value, torch.Tensor):
        eligible = value.is_floating_point() and value.device.type == device_type and value.dtype != torch.float64
        return value.to(dtype) if eligible else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, device_type, dtype) for v in value)
    return value


def autocast(custom: Any, **policies: str) -> None:
    """Give ``custom`` (a ``custom_op``) an autocast rule per device type, e.g.
    ``autocast(op, cpu=LOWER_PRECISION, cuda=FLOAT32)``.

    ``torch.library.register_autocast`` takes one fixed dtype, but torch's lower-precision rule
    uses whatever dtype the ``torch.autocast`` region asks for (float16 or bfloat16), so the
    rule is registered here as an Autocast kernel that reads it at call time; the op then runs
    with autocast off, as torch's own autocast kernels do.
    """
    overload = custom._opoverload
    name = overload._schema.name.split("::", 1)[1]
    for device_type, policy in policies.items():
        if policy not in (LOWER_PRECISION, FLOAT32):
            raise ValueError(f"autocast policy must be {LOWER_PRECISION!r} or {FLOAT32!r}, got {policy!r}")

        def kernel(_keyset, *args, _device_type=device_type, _policy=policy):
            dtype = torch.get_autocast_dtype(_device_type) if _policy == LOWER_PRECISION else torch.float32
            with torch.autocast(_device_type, enabled=False):
                return overload(*_cast(args, _device_type, dtype))

        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        _autocast_library.impl(name, kernel, key, with_keyset=True)


def autocast_inputs(policies: dict[str, str], *tensors: torch.Tensor | None) -> tuple:
    """``tensors`` cast as ``policies`` (device type -> policy) says under an active autocast
    region. For wrappers: those that check their inputs' dtypes against each other (the check
    must see the casts the op's rule would make) and those whose rule depends on more than the
    op (torch treats its LSTM layer and LSTM cell differently; they share our op). Called from
    traced code: dynamo folds the autocast state into the graph."""
    first = next(x for x in tensors if x is not None)
    device_type = first.device.type
    policy = policies.get(device_type)
    if policy is None or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.float32 if policy == FLOAT32 else torch.get_autocast_dtype(device_type)
    if policy == PROMOTE_WITH_STATE:
        dtype = torch.promote_types(dtype, first.dtype)
    return _cast(tensors, device_type, dtype)


def registered_ops() -> list[Any]:
    """Every op registered in the ``gpukernels`` namespace (the families are imported first)."""
    from . import _optim_ops, functional  # noqa: F401  (importing the families registers their ops)

    namespace = getattr(torch.ops, NAMESPACE)
    return [getattr(namespace, name).default for name in sorted(dir(namespace))
            if isinstance(getattr(namespace, name, None), torch._ops.OpOverloadPacket)]
