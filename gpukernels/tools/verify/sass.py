"""Facts read from a cubin with the CUDA binary utilities that ship inside Triton's wheel
(cuobjdump), so no CUDA toolkit needs to be installed."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Resources:
    registers: int
    stack: int
    local: int  # spill/local bytes per thread
    shared: int  # static shared memory bytes


def cuobjdump() -> str:
    """Path of cuobjdump: Triton's bundled copy first, then the PATH."""
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("cuobjdump")
    if found is None:
        raise FileNotFoundError("cuobjdump not found: install triton (it ships one) or a CUDA toolkit")
    return found


def _complete_elf(cubin: bytes) -> bytes:
    """Pad a cubin to the length its ELF header implies. CuPy 14's ``nvrtc.getCUBIN`` returns
    one byte short (the trailing zero of the program headers), which cuobjdump rejects."""
    if cubin[:4] != b"\x7fELF" or len(cubin) < 64:
        return cubin
    phoff, shoff = struct.unpack_from("<QQ", cubin, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", cubin, 0x36)
    expected = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    return cubin + b"\0" * (expected - len(cubin)) if expected > len(cubin) else cubin


def _run_on_cubin(cubin: bytes, *flags: str) -> str:
    cubin = _complete_elf(cubin)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
        handle.write(cubin)
        path = handle.name
    try:
        return subprocess.run([cuobjdump(), *flags, path], check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(path)


_RESOURCE = re.compile(r"Function\s+(\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def resources(cubin: bytes) -> dict[str, Resources]:
    """Per-function registers, stack, local (spill) and shared bytes from
    ``cuobjdump --dump-resource-usage``."""
    text = _run_on_cubin(cubin, "--dump-resource-usage")
    return {
        m.group(1): Resources(int(m.group(2)), int(m.group(3)), int(m.group(5)), int(m.group(4)))
        for m in _RESOURCE.finditer(text)
    }


_LDG = re.compile(r"\bLDG(?:\.[A-Z0-9_]+)*")
_FUNCTION = re.compile(r"^\s*Function : (\S+)", re.M)


def _load_bits(instruction: str) -> int:
    bits = 32
    for part in instruction.split(".")[1:]:
        if part in ("128", "64"):
            bits = int(part)
        elif part in ("U16", "S16"):
            bits = 16
        elif part in ("U8", "S8"):
            bits = 8
    return bits


def widest_global_loads(cubin: bytes) -> dict[str, int]:
    """Per function, the widest global load in its SASS, in bits (0 if it loads nothing)."""
    text = _run_on_cubin(cubin, "-sass")
    starts = list(_FUNCTION.finditer(text))
    widest = {}
    for i, match in enumerate(starts):
        body = text[match.end(): starts[i + 1].start() if i + 1 < len(starts) else len(text)]
        widest[match.group(1)] = max((_load_bits(m.group(0)) for m in _LDG.finditer(body)), default=0)
    return widest


_PTX_LOAD = re.compile(r"\bld\.global(?:\.[A-Za-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b")


def widest_ptx_global_load_bits(ptx: str) -> int:
    """Widest global load in PTX (vector width x element bits); cheaper than disassembling
    the cubin, and exact for Triton, whose vector loads map one to one onto SASS."""
    return max((int(m.group(1) or 1) * int(m.group(2)) for m in _PTX_LOAD.finditer(ptx)), default=0)
