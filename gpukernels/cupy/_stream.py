"""Which CUDA stream the CuPy backend's work runs on.

CuPy runs everything (``RawKernel`` launches, cuBLAS through ``cupy.matmul``, copies, and its
stream-ordered memory pool) on CuPy's current stream. Torch tensors reach this backend as
zero-copy cupy views (DLPack), and then the work must run on torch's current stream instead:
otherwise ops race with the torch work around them under ``torch.cuda.stream(...)``, in-place
optimizer updates are unordered with the next forward pass, and a CUDA-graph capture on torch's
stream never sees them. So every entry point the dispatch layer calls is wrapped in
:func:`on_callers_stream`: when an argument views memory that CuPy did not allocate (torch's)
and torch's CUDA is in use, the whole op runs inside ``cupy.cuda.ExternalStream`` of torch's
current stream. cupy arrays of CuPy's own keep CuPy's current stream.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Callable, Iterable, Iterator

# CuPy's memory classes for memory it did not allocate: a DLPack import (how the dispatch layer
# converts torch tensors) or a __cuda_array_interface__ / raw-pointer view.
_BORROWED_MEMORY = ("DLPackMemory", "UnownedMemory")


def torch_memory_device(a: Any) -> int | None:
    """The device of ``a`` if it holds torch's memory (a CUDA torch tensor, or a cupy array viewing
    memory another library owns), else None."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a, torch.Tensor):
        return a.device.index if a.device.type == "cuda" else None
    if not type(a).__module__.startswith("cupy"):
        return None
    memory = getattr(getattr(a, "data", None), "mem", None)
    if type(memory).__name__ not in _BORROWED_MEMORY:
        return None
    return a.device.id


def _arrays(values: Iterable[Any]) -> Iterator[Any]:
    for value in values:
        if type(value) in (list, tuple):  # lists of parameters; not named tuples (a Runner)
            yield from _arrays(value)
        elif value is not None:
            yield value


def torch_stream(values: Iterable[Any]) -> tuple[int, int] | None:
    """(device, handle of torch's current stream on it) when any of ``values`` (arrays, or lists
    of them) holds torch's memory; None to keep CuPy's current stream. The dispatch layer may pass
    the caller's torch tensors themselves, so that its conversions to and from cupy run on
    torch's stream too (no cross-stream event, as a CUDA-graph capture needs)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None  # no torch CUDA tensor can exist, whatever the memory came from
    for a in _arrays(values):
        device = torch_memory_device(a)
        if device is not None:
            return device, torch.cuda.current_stream(device).cuda_stream
    return None


@contextlib.contextmanager
def callers_stream(values: Iterable[Any]) -> Iterator[None]:
    """Run the block on torch's current stream if ``values`` hold torch's memory (re-entering it
    inside is harmless)."""
    found = torch_stream(values)
    if found is None:
        yield
        return
    import cupy

    device, handle = found
    # handle 0 is the legacy default stream (torch's default stream): CuPy's own null stream
    stream = cupy.cuda.Stream.null if handle == 0 else cupy.cuda.ExternalStream(handle, device)
    with cupy.cuda.Device(device), stream:
        yield


def on_callers_stream(entry_point: Callable) -> Callable:
    """Wrap an entry point of the dispatch layer so the whole op (launches, matmuls, allocations)
    runs on the stream of the caller's framework."""

    @functools.wraps(entry_point)
    def wrapped(*args, **kwargs):
        with callers_stream((*args, *kwargs.values())):
            return entry_point(*args, **kwargs)

    return wrapped
