"""Launch choices shared by the Triton kernels, and the description of a compile case.

The same functions pick the launch configuration at run time and enumerate the
configurations for the compile gate, so the gate covers exactly what can run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import torch

# Storage dtypes of the GPU kernels; math is fp32 whatever the storage.
TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
SUPPORTED_NAMES = ("float16", "bfloat16", "float32")

_VECTOR_BYTES = 16  # one 128-bit load or store per vector
_VECTORS_PER_THREAD = 2
_ELEMENTWISE_WARPS = 4


class ElementwiseLaunch(NamedTuple):
    block: int
    num_warps: int


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


@dataclass(frozen=True)
class CompileCase:
    """One kernel at one launch configuration, as the Triton runtime would specialise it."""

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    # Arguments the runtime would see as 16-divisible (aligned pointers, sizes % 16 == 0).
    divisible: tuple[str, ...] = ()
    # Widest global load the PTX must show (bits), when alignment allows vector loads.
    expect_load_bits: int | None = None
    tags: dict[str, str] = field(default_factory=dict)


ALIGNMENTS = ("aligned", "ragged", "offset")
"""How a flat elementwise launch can look to the runtime: 16-byte-aligned pointers and a size
divisible by 16; aligned pointers with a ragged size; a view whose pointer is not aligned."""


def elementwise_divisible(alignment: str, pointers: tuple[str, ...], size: str) -> tuple[str, ...]:
    if alignment == "aligned":
        return (*pointers, size)
    if alignment == "ragged":
        return pointers
    return ()


def iter_elementwise_variants() -> Iterator[tuple[torch.dtype, str, str, str]]:
    """(dtype, triton dtype, alignment, size type) for every elementwise specialisation."""
    for dtype, name in TRITON_DTYPES.items():
        for alignment in ALIGNMENTS:
            yield dtype, name, alignment, "i32"
        yield dtype, name, "aligned", "i64"  # more than 2^31 elements
