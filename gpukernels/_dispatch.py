"""The one dispatch layer: which implementation of an op runs, and on what arrays.

Selection order, first match wins:

1. a ``use_backend(name)`` context,
2. the ``GPUKERNELS_BACKEND`` environment variable,
3. the inputs: numpy arrays and CPU torch tensors -> ``numpy`` (the reference),
   CUDA torch tensors -> ``triton``, cupy arrays -> ``cupy``.

A backend named in (1) or (2) that cannot run raises :class:`BackendUnavailableError` with
the reason. Only the automatic choice (3) falls back, to the reference, and warns once.

Compiled Triton kernels read GPU memory only. With Triton compiling (``TRITON_INTERPRET`` not
1), numpy inputs are copied to the GPU and their results back (a numpy caller asked for numpy
out), but a CPU torch tensor raises :class:`BackendUnavailableError` naming the argument,
before anything runs or is written: a torch caller chose the tensor's device, and copying it
behind their back would hide a host-device round trip per op (and, for in-place optimizer
steps, a write back). Under ``TRITON_INTERPRET=1`` the kernels run in Triton's interpreter on
CPU tensors, which is how they are tested without a GPU.

Implementations are found by convention and imported lazily, so ``import gpukernels`` needs
numpy alone: op ``name`` of family ``fam`` on backend ``b`` is the function ``name`` in
``gpukernels.reference.fam`` (numpy), ``gpukernels.triton.fam`` or ``gpukernels.cupy.fam``.
Each implementation receives the inputs converted to its own array type (numpy arrays,
torch tensors, cupy arrays), and its results are converted back to the caller's type,
device and dtype.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
import os
import sys
import threading
import warnings
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

BACKENDS = ("numpy", "triton", "cupy")
ENV_VAR = "GPUKERNELS_BACKEND"

_PACKAGE = {
    "numpy": "gpukernels.reference",
    "triton": "gpukernels.triton",
    "cupy": "gpukernels.cupy",
}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here; the message says why."""


class BackendStatus(NamedTuple):
    available: bool
    reason: str


# ---------------------------------------------------------------------------------------------
# What kind of array is this?


def array_library(x: Any) -> str | None:
    """'numpy', 'torch' or 'cupy' for arrays of those libraries, else None.

    Torch and cupy are recognised without importing them, so an absent library costs nothing.
    """
    if isinstance(x, np.ndarray):
        return "numpy"
    module = type(x).__module__ or ""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    if module == "cupy" or module.startswith(("cupy.", "cupy_")):
        return "cupy"
    return None


def is_cuda_tensor(x: Any) -> bool:
    return array_library(x) == "torch" and x.device.type == "cuda"


def natural_backend(x: Any) -> str:
    """The backend the inputs' library and device point to."""
    library = array_library(x)
    if library == "cupy":
        return "cupy"
    if library == "torch" and x.device.type == "cuda":
        return "triton"
    return "numpy"


# ---------------------------------------------------------------------------------------------
# Which backends can run here?


def _numpy_status() -> BackendStatus:
    return BackendStatus(True, f"NumPy {np.__version__} reference on the CPU")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_status() -> BackendStatus:
    try:
        import torch
        import triton
    except ImportError as exc:
        return BackendStatus(False, f"cannot import torch/triton ({exc}); pip install 'gpukernels[torch]'")
    if triton_interpreting():
        return BackendStatus(True, f"Triton {triton.__version__} interpreter (TRITON_INTERPRET=1) on CPU tensors")
    if torch.cuda.is_available():
        return BackendStatus(True, f"Triton {triton.__version__} on {torch.cuda.get_device_name()}")
    return BackendStatus(
        False,
        "torch sees no CUDA device; set TRITON_INTERPRET=1 to run the Triton kernels in the "
        "interpreter on CPU tensors",
    )


def _cupy_status() -> BackendStatus:
    try:
        import cupy
    except ImportError as exc:
        return BackendStatus(False, f"cannot import cupy ({exc}); pip install 'gpukernels[cupy]'")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy raises its own CUDARuntimeError without a driver
        return BackendStatus(False, f"CuPy {cupy.__version__} finds no CUDA driver or device ({exc})")
    if count == 0:
        return BackendStatus(False, f"CuPy {cupy.__version__} finds no CUDA device")
    return BackendStatus(True, f"CuPy {cupy.__version__} on {count} CUDA device(s)")


_STATUS: dict[str, Callable[[], BackendStatus]] = {
    "numpy": _numpy_status,
    "triton": _triton_status,
    "cupy": _cupy_status,
}


def backend_status(name: str) -> BackendStatus:
    _check_backend_name(name, "backend")
    return _STATUS[name]()


def backends() -> dict[str, BackendStatus]:
    """Every backend with whether it can run here and, either way, why."""
    return {name: _STATUS[name]() for name in BACKENDS}


def _check_backend_name(name: Any, argument: str) -> None:
    if name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")


# ---------------------------------------------------------------------------------------------
# Selection


_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpukernels_backend", default=None)
_warned: set[str] = set()
_warn_lock = threading.Lock()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every op inside the block on backend ``name`` ('numpy', 'triton' or 'cupy')."""
    _check_backend_name(name, "name")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def requested_backend() -> tuple[str, str] | None:
    """(backend, who asked) if a context or the environment names one, else None."""
    forced = _forced.get()
    if forced is not None:
        return forced, "use_backend()"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        _check_backend_name(env, ENV_VAR)
        return env, ENV_VAR
    return None


def _warn_once(message: str) -> None:
    with _warn_lock:
        if message in _warned:
            return
        _warned.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def select_backend(first_array: Any) -> str:
    """The backend that runs an op whose first array argument is ``first_array``."""
    requested = requested_backend()
    if requested is not None:
        name, who = requested
        status = _STATUS[name]()
        if not status.available:
            raise BackendUnavailableError(f"backend {name!r} was requested by {who} but cannot run: {status.reason}")
        return name
    name = natural_backend(first_array)
    if name == "numpy":  # always available: no status to build on every CPU call
        return name
    status = _STATUS[name]()
    if status.available:
        return name
    _warn_once(f"gpukernels: backend {name!r} cannot run ({status.reason}); falling back to the NumPy reference")
    return "numpy"


# ---------------------------------------------------------------------------------------------
# Where the arrays live: compiled Triton needs CUDA tensors


@functools.lru_cache(maxsize=None)
def _argument_names(function: Callable[..., Any]) -> tuple[str, ...]:
    """The positional parameter names of a backend function: the names the arrays are passed
    under (they follow the public ops' argument names)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds)


def _cpu_tensors(arrays: tuple, names: tuple[str, ...]) -> Iterator[str]:
    """The names (``grads[3]`` for list entries) of the CPU torch tensors among ``arrays``."""
    for position, a in enumerate(arrays):
        name = names[position] if position < len(names) else f"argument {position}"
        entries = enumerate(a) if isinstance(a, (list, tuple)) else ((None, a),)
        for index, x in entries:
            if array_library(x) == "torch" and x.device.type == "cpu":
                yield name if index is None else f"{name}[{index}]"


def check_devices(backend: str, function: Callable[..., Any], arrays: tuple) -> None:
    """Raise BackendUnavailableError if compiled Triton would be handed a CPU torch tensor.

    Called after the backend is chosen and before any conversion or launch, so a refused call
    runs and writes nothing.
    """
    if backend != "triton" or triton_interpreting():
        return
    cpu = next(_cpu_tensors(arrays, _argument_names(function)), None)
    if cpu is None:
        return
    requested = requested_backend()
    who = f" (requested by {requested[1]})" if requested else ""
    raise BackendUnavailableError(
        f"backend 'triton'{who} runs compiled GPU kernels, but {cpu} is a CPU torch tensor; move the "
        f"inputs to the GPU with .cuda() (e.g. {cpu}.cuda()), or set TRITON_INTERPRET=1 before importing "
        "gpukernels to run the Triton kernels in Triton's interpreter on CPU tensors"
    )


# ---------------------------------------------------------------------------------------------
# Moving arrays between libraries. Views are kept wherever the libraries allow, so in-place
# implementations write through to the caller's memory when no dtype change is needed.


def to_numpy(x: Any) -> np.ndarray:
    library = array_library(x)
    if library == "numpy":
        return x
    if library == "torch":
        import torch

        x = x.detach()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16: the reference computes in float32
            x = x.float()
        return x.numpy() if x.device.type == "cpu" else x.cpu().numpy()
    if library == "cupy":
        return x.get()
    raise TypeError(f"cannot convert {type(x).__name__} to a numpy array")


def to_torch(x: Any) -> Any:
    import torch

    library = array_library(x)
    if library == "torch":
        return x.detach()
    if library == "cupy":
        return torch.from_dlpack(x)
    tensor = torch.from_numpy(np.asarray(x))
    if not triton_interpreting():
        tensor = tensor.cuda()
    return tensor


def to_cupy(x: Any) -> Any:
    import cupy

    library = array_library(x)
    if library == "cupy":
        return x
    if library == "torch" and x.device.type == "cuda":
        return cupy.from_dlpack(x.detach())
    return cupy.asarray(to_numpy(x))


_CONVERT = {"numpy": to_numpy, "triton": to_torch, "cupy": to_cupy}


def to_backend(backend: str, x: Any) -> Any:
    """``x`` as the array type that ``backend`` computes on; None and scalars pass through."""
    if x is None or array_library(x) is None:
        return x
    return _CONVERT[backend](x)


def like(result: Any, template: Any) -> Any:
    """``result`` converted to the library, device and dtype of ``template``."""
    if result is None:
        return None
    library = array_library(template)
    if library == "numpy":
        out = to_numpy(result)
        return out if out.dtype == template.dtype else out.astype(template.dtype)
    if library == "torch":
        import torch

        source = array_library(result)
        if source == "numpy":
            out = torch.from_numpy(result)
            if out.dtype == template.dtype and template.device.type == "cpu":
                return out  # the CPU fallback's common case: no .to() call (a few us per op)
        elif source == "cupy":
            out = torch.from_dlpack(result)
        else:
            out = result
        return out.to(device=template.device, dtype=template.dtype)
    if library == "cupy":
        import cupy

        source = array_library(result)
        out = cupy.from_dlpack(result) if source == "torch" else cupy.asarray(result)
        return out if out.dtype == template.dtype else out.astype(template.dtype)
    raise TypeError(f"cannot return results as {type(template).__name__}")


# ---------------------------------------------------------------------------------------------
# Calling an op


@functools.lru_cache(maxsize=None)
def implementation(family: str, op: str, backend: str) -> Callable[..., Any]:
    """The function implementing ``op`` of ``family`` on ``backend`` (imported on first use)."""
    module = importlib.import_module(f"{_PACKAGE[backend]}.{family}")
    try:
        return getattr(module, op)
    except AttributeError:
        raise BackendUnavailableError(f"backend {backend!r} has no implementation of {op!r}") from None


def backend_stream(backend: str, arrays: tuple) -> contextlib.AbstractContextManager:
    """Where the conversions, the op and the conversions back run. For CuPy with torch tensors:
    torch's current stream, so DLPack's hand-over needs no cross-stream event (which a CUDA
    graph capture forbids) and the op is ordered with the caller's torch work."""
    if backend != "cupy":
        return contextlib.nullcontext()
    from .cupy._stream import callers_stream

    return callers_stream(arrays)


def call(family: str, op: str, arrays: tuple, params: dict | None = None, *, returns_like: Any = None) -> Any:
    """Run ``op`` on the chosen backend and hand its result(s) back as the caller's arrays.

    ``arrays`` are the array arguments (None allowed), passed positionally after conversion;
    ``params`` are keyword arguments passed unchanged. The backend is chosen from the first
    array. Results (an array or a tuple of arrays) come back in the library, device and dtype
    of ``returns_like`` (default: the first array). ``returns_like`` may instead be a tuple
    with one template per result: a result whose template is None is passed through as the
    backend made it (None stays None; a workspace that only a later backward call reads keeps
    its backend's array type and dtype).
    """
    first = next(a for a in arrays if a is not None)
    backend = select_backend(first)
    function = implementation(family, op, backend)
    check_devices(backend, function, arrays)
    with backend_stream(backend, arrays):
        result = function(*(to_backend(backend, a) for a in arrays), **(params or {}))
        if isinstance(returns_like, tuple):
            results = result if isinstance(result, tuple) else (result,)
            return tuple(r if t is None else like(r, t) for r, t in zip(results, returns_like, strict=True))
        template = first if returns_like is None else returns_like
        if isinstance(result, tuple):
            return tuple(like(r, template) for r in result)
        return like(result, template)


# ---------------------------------------------------------------------------------------------
# Calling an op that updates arrays in place (optimizer steps): lists of arrays in, nothing out.


def _is_contiguous(x: Any) -> bool:
    if isinstance(x, np.ndarray):
        return x.flags.c_contiguous
    return x.is_contiguous() if hasattr(x, "is_contiguous") else bool(x.flags.c_contiguous)


def _contiguous(x: Any) -> Any:
    if _is_contiguous(x):
        return x
    return x.contiguous() if hasattr(x, "is_contiguous") else x.copy(order="C")


def _to_inplace_backend(backend: str, x: Any) -> tuple[Any, bool]:
    """(``x`` as a contiguous array of ``backend``, whether writing it writes ``x``).

    The converters above keep views whenever the memory can stay where it is (same side of the
    host/device divide, same element size), so those two facts tell a view from a copy.
    """
    if x is None or array_library(x) is None:
        return x, True
    converted = to_backend(backend, x)
    if not _is_contiguous(converted):
        return _contiguous(converted), False
    if converted is x:
        return x, True
    on_cpu = lambda a: isinstance(a, np.ndarray) or getattr(getattr(a, "device", None), "type", None) == "cpu"
    return converted, on_cpu(x) == on_cpu(converted) and x.itemsize == converted.itemsize and _is_contiguous(x)


def _write_back(caller: Any, converted: Any) -> None:
    value = like(converted, caller)
    if array_library(caller) == "torch":
        caller.detach().copy_(value)
    else:
        caller[...] = value


def _views_for(backend: str, values: list | tuple) -> list | None:
    """``values`` as the arrays ``backend`` updates in place, when every entry is a contiguous
    torch tensor the backend can use as it is (Triton: CUDA, or anything when interpreting;
    numpy: CPU tensors of a dtype NumPy has, viewed with ``.numpy()``); None otherwise, and the
    caller converts entry by entry. One C-level check per tensor instead of a conversion (a
    detach and several type checks): an optimizer step hands over hundreds of tensors, and the
    first H200 run's Adam step spent most of its 7 ms converting them."""
    torch = sys.modules.get("torch")
    if torch is None or backend == "cupy":
        return None
    tensor = torch.Tensor
    if not all(isinstance(x, tensor) and x.is_contiguous() for x in values):
        return None
    if backend == "triton":
        interpreting = triton_interpreting()
        return list(values) if all(x.is_cuda or interpreting for x in values) else None
    if all(x.device.type == "cpu" and x.dtype != torch.bfloat16 for x in values):
        return [x.detach().numpy() for x in values]
    return None


def call_inplace(family: str, op: str, arrays: tuple, params: dict | None = None, *, template: Any,
                 writes: tuple[int, ...] = ()) -> Any:
    """Run an in-place ``op`` whose array arguments are arrays, None, or lists of arrays/None.

    Each array reaches the backend as a contiguous array of its own type, a view of the
    caller's memory wherever the libraries allow; the arguments at positions ``writes`` that
    had to be copied (another device, bfloat16 into numpy, non-contiguous) are copied back
    into the caller's arrays afterwards. The op's own result, if any, comes back like
    ``template``.
    """
    backend = select_backend(template)
    function = implementation(family, op, backend)
    check_devices(backend, function, arrays)
    copies: list[tuple[Any, Any]] = []  # (caller's array, the copy the backend writes)

    def convert(a: Any, position: int) -> Any:
        if isinstance(a, (list, tuple)):
            views = _views_for(backend, a)
            return views if views is not None else [convert(x, position) for x in a]
        converted, shared = _to_inplace_backend(backend, a)
        if not shared and position in writes:
            copies.append((a, converted))
        return converted

    with backend_stream(backend, arrays):
        result = function(*(convert(a, i) for i, a in enumerate(arrays)), **(params or {}))
        for caller, converted in copies:
            _write_back(caller, converted)
        if result is None:
            return None
        return like(result, template)
