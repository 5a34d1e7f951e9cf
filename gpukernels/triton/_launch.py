"""Launch choices shared by the Triton kernels, and the description of a compile case.

The same functions pick the launch configuration at run time and enumerate the
configurations for the compile gate, so the gate covers exactly what can run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import torch
import torch.backends.cudnn.rnn  # noqa: F401 (the submodule with the RNN's own precision setting)

# Storage dtypes of the GPU kernels; math is fp32 whatever the storage.
TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
SUPPORTED_NAMES = ("float16", "bfloat16", "float32")

_VECTOR_BYTES = 16  # one 128-bit load or store per vector
_VECTORS_PER_THREAD = 2
_ELEMENTWISE_WARPS = 4


class ElementwiseLaunch(NamedTuple):
    block: int
    num_warps: int


def environment_choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    """The value of the switch ``name`` (unset or empty: ``default``), one of ``allowed``, or a
    ValueError naming the variable before anything runs."""
    value = os.environ.get(name) or default
    if value not in allowed:
        choices = ", ".join(allowed[:-1]) + " or " + allowed[-1]
        raise ValueError(f"{name} must be {choices}, not {value!r}")
    return value


# Bound once: looking the submodule up through torch.backends costs ~2 us a call, the read ~0.3 us.
_CUDNN_RNN = torch.backends.cudnn.rnn
_FINE_GRAINED = hasattr(_CUDNN_RNN, "fp32_precision")


def rnn_tf32_allowed() -> bool:
    """Whether torch lets a cuDNN RNN multiply fp32 in TF32 right now: what cuDNN's RNN path
    reads (``allowTF32CuDNN(Float32Op::RNN)`` in ATen's cudnn/RNN.cpp). Since torch 2.9 that is
    ``torch.backends.cudnn.rnn.fp32_precision == "tf32"``; its getter returns the effective value
    ("none" there inherits ``torch.backends.cudnn.fp32_precision``, then
    ``torch.backends.fp32_precision``: ATen resolves it, checked on torch 2.11 and 2.13). The
    legacy ``torch.backends.cudnn.allow_tf32`` writes the same setting (True: "tf32", False:
    "none"), but its getter raises once the legacy and the new API disagree (e.g. the RNN set to
    "ieee" while convolutions keep "tf32"), so it is read only on torch < 2.9. Torch's default:
    allowed. Read on the host at each layer call, inside the operator's body, so a compiled graph
    reads it when it runs, never at trace time."""
    if not _FINE_GRAINED:  # torch < 2.9: the legacy switch alone
        return bool(torch.backends.cudnn.allow_tf32)
    return _CUDNN_RNN.fp32_precision == "tf32"


def elementwise_launch(dtype: torch.dtype) -> ElementwiseLaunch:
    """Block size and warps for a memory-bound elementwise kernel: two 128-bit accesses per
    thread per operand, whatever the element size."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_thread = _VECTORS_PER_THREAD * _VECTOR_BYTES // itemsize
    return ElementwiseLaunch(block=per_thread * 32 * _ELEMENTWISE_WARPS, num_warps=_ELEMENTWISE_WARPS)


def check_dtype(x: torch.Tensor, name: str) -> str:
    """Triton's name for the storage dtype of ``x``, or a TypeError listing what is supported."""
    try:
        return TRITON_DTYPES[x.dtype]
    except KeyError:
        dtype = str(x.dtype).removeprefix("torch.")
        raise TypeError(
            f"{name} has dtype {dtype}, which the triton backend does not support "
            f"(supported: {', '.join(SUPPORTED_NAMES)}); use the numpy backend or cast"
        ) from None


# ---------------------------------------------------------------------------------------------
# The compile gate's description of a launch

# Triton's names of the pointer types the kernels take, as torch dtypes
TORCH_DTYPES = {**{name: dtype for dtype, name in TRITON_DTYPES.items()},
                "u8": torch.uint8, "i32": torch.int32, "i64": torch.int64}


class TensorArg:
    """Stands in for a tensor argument of a representative launch: the two things Triton's
    launcher reads from a tensor, its dtype (the pointer type) and its address (``data_ptr``,
    whose 16-byte alignment becomes a divisibility hint). No memory behind it."""

    _ALLOCATION = 1 << 40  # where an allocation starts: the caching allocator aligns to 512 bytes

    def __init__(self, dtype: torch.dtype, offset: int = 0):
        self.dtype = dtype
        self.offset = offset  # bytes past the start of the allocation

    def data_ptr(self) -> int:
        return self._ALLOCATION + self.offset

    def __repr__(self) -> str:
        return f"TensorArg({self.dtype}, offset={self.offset})"


def fresh(dtype: torch.dtype | str) -> TensorArg:
    """A tensor the launcher allocates itself: the start of an allocation, 16-byte aligned."""
    return TensorArg(TORCH_DTYPES.get(dtype, dtype))


def passed(dtype: torch.dtype | str, aligned: bool) -> TensorArg:
    """A tensor the caller hands in: aligned, or (the worst the dispatch lets through) a view
    that starts one element into its storage, e.g. ``x[1:]``."""
    dtype = TORCH_DTYPES.get(dtype, dtype)
    return TensorArg(dtype, 0 if aligned else dtype.itemsize)


@dataclass(frozen=True)
class CompileCase:
    """One kernel launched one way. ``args`` holds every argument of the kernel by name with the
    value a representative launch passes: ``TensorArg`` for tensors, the Python ints and floats
    the launcher computes, the constexpr values. The gate derives the signature and the
    specialisation from them with Triton's own launcher code (ints divisible by 16 or equal to
    1, 16-byte-aligned pointers), so what it builds is what that launch builds."""

    name: str
    kernel: Any
    args: dict[str, Any]
    num_warps: int
    num_stages: int | None = None  # None: Triton's default, as for launches that pass none
    # Widest global load the PTX must show (bits), when alignment allows vector loads.
    expect_load_bits: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # Why this build is known to spill, when no launch configuration avoids it: the gate reports
    # the spill as known instead of failing, and fails once the build stops spilling (so the note
    # cannot outlive the defect).
    known_spill: str = ""
    # The GPU generations (sm_XX numbers) this configuration launches on, for a launch
    # heuristic keyed on the architecture; None: every target the gate builds for.
    targets: tuple[int, ...] | None = None


ALIGNMENTS = ("aligned", "ragged", "offset")
"""How a flat elementwise launch can look to the runtime: 16-byte-aligned pointers and a size
divisible by 16 (the typical contiguous launch); aligned pointers with a ragged size; inputs that
are views one element into their storage, with a ragged size (the worst the dispatch sends:
it passes contiguous views through, and allocates the outputs itself)."""

_ELEMENTWISE_SIZES = {"i32": 1 << 22, "i64": (1 << 31) + (1 << 20)}  # 4M elements; past int32
_RAGGED = 3  # elements past a multiple of 16


def elementwise_args(alignment: str, size_type: str, dtype: str, inputs: tuple[str, ...],
                     outputs: tuple[str, ...], size: str) -> dict[str, Any]:
    """Representative pointer and size arguments of a flat elementwise launch."""
    args: dict[str, Any] = {p: passed(dtype, alignment != "offset") for p in inputs}
    args.update({p: fresh(dtype) for p in outputs})
    args[size] = _ELEMENTWISE_SIZES[size_type] + (0 if alignment == "aligned" else _RAGGED)
    return args


def iter_elementwise_variants() -> Iterator[tuple[torch.dtype, str, str, str]]:
    """(dtype, triton dtype, alignment, size type) for every elementwise specialisation."""
    for dtype, name in TRITON_DTYPES.items():
        for alignment in ALIGNMENTS:
            yield dtype, name, alignment, "i32"
        yield dtype, name, "aligned", "i64"  # more than 2^31 elements
