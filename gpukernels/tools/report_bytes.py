"""The bytes PyTorch eager moves for one call, read from the PyTorch profiler on the CPU.

``torch.profiler`` with ``record_shapes`` and ``profile_memory`` lists every aten op with the
shapes and dtypes of its inputs and the memory it allocated. Each op that moves data is counted
as one pass over memory, as a GPU kernel of it would be: the bytes of its tensor inputs plus
the bytes of its output (the memory it allocated, or for an in-place ``op_`` the tensor it
writes back). Composite ops (``aten::linear`` -> ``aten::addmm``) are followed down to the ops
that do the work; views, allocations and the 0-dim tensors that wrap Python scalars move
nothing. Broadcast inputs count at their logical size, so eager's bytes err high there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ITEMSIZE = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "long int": 8, "long": 8,
            "int": 4, "short": 2, "bool": 1, "signed char": 1, "unsigned char": 1,
            "c10::complex<float>": 8, "c10::complex<double>": 16}

VIEWS = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "as_strided", "unsqueeze",
         "squeeze", "select", "slice", "narrow", "detach", "alias", "unbind", "split",
         "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes", "chunk", "unsafe_chunk", "unflatten", "resolve_conj", "resolve_neg", "lift_fresh",
         "empty", "empty_like", "empty_strided", "resize_", "set_", "result_type", "item",
         "_local_scalar_dense", "is_nonzero", "size", "stride", "numel"}
# Ops that copy only when they have to: no allocation means they returned a view.
MAYBE_VIEWS = {"reshape", "flatten", "contiguous", "to", "type_as", "expand_as", "view_as"}
# Building blocks of other ops; an op whose only data-moving children are these is one pass.
HELPERS = {"copy_", "fill_", "zero_"}
# In-place ops that write their first argument without reading it.
WRITE_ONLY = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "bernoulli_", "exponential_"}


@dataclass
class EagerOp:
    name: str
    bytes_read: int
    bytes_written: int

    @property
    def total(self) -> int:
        return self.bytes_read + self.bytes_written


def _short(event) -> str:
    return event.name.removeprefix("aten::")


def _tensor_bytes(event) -> list[int]:
    """Bytes of each input that is a tensor (0 for scalars, lists and None)."""
    sizes = []
    for shape, dtype in zip(event.input_shapes or (), event.input_dtypes or ()):
        item = ITEMSIZE.get(dtype)
        numel_ok = isinstance(shape, (list, tuple)) and all(isinstance(d, int) for d in shape)
        sizes.append(item * math.prod(shape) if item and numel_ok else 0)
    return sizes


def _is_view(event) -> bool:
    name = _short(event)
    return name in VIEWS or (name in MAYBE_VIEWS and event.cpu_memory_usage <= 0)


def _wraps_a_scalar(event) -> bool:
    """aten ops on 0-dim tensors only: how PyTorch turns `x * 2.0` into a tensor op."""
    dtypes = event.input_dtypes or ()
    shapes = [s for s, d in zip(event.input_shapes or (), dtypes) if d in ITEMSIZE]
    return bool(shapes) and "TensorList" not in dtypes and all(len(s) == 0 for s in shapes)


def _moves_data(event) -> bool:
    return event.name.startswith("aten::") and not _is_view(event) and not _wraps_a_scalar(event)


def _working_ops(event) -> list:
    """The ops under ``event`` that do the work: itself, unless it delegates to other ops."""
    children = [c for c in event.cpu_children if _moves_data(c)]
    if any(_short(c) not in HELPERS for c in children):
        return [leaf for c in children for leaf in _working_ops(c)]
    return [event]


def _as_eager_op(event) -> EagerOp:
    name, inputs = _short(event), _tensor_bytes(event)
    if name.endswith("_") and inputs:  # in place: writes its first argument back
        read = sum(inputs[1:]) if name in WRITE_ONLY else sum(inputs)
        return EagerOp(event.name, read, inputs[0])
    return EagerOp(event.name, sum(inputs), max(int(event.cpu_memory_usage), 0))


def _give_input_dtypes(prof) -> None:
    """Before torch 2.13 the profiler's events do not carry their inputs' dtypes (torch 2.11's
    raised AttributeError here: the H200 image's six report failures); the underlying Kineto
    events do, under the event's id."""
    events = prof.events()
    if all(hasattr(e, "input_dtypes") for e in events):
        return
    dtypes = {k.correlation_id(): list(k.dtypes()) for k in prof.profiler.kineto_results.events()}
    for event in events:
        if not hasattr(event, "input_dtypes"):
            event.input_dtypes = dtypes.get(event.id, [])


def eager_ops(fn) -> list[EagerOp]:
    """The data-moving aten ops of one call of ``fn`` (already warmed up), in order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True) as prof:
        fn()
    _give_input_dtypes(prof)
    tops = [e for e in prof.events() if _moves_data(e)
            and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    return [_as_eager_op(op) for top in tops for op in _working_ops(top)]
