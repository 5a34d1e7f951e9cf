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
    stack: int  # stack frame bytes per thread: where ptxas puts spills when it builds a frame
    local: int  # other local memory bytes per thread (spills, local arrays)
    shared: int  # static shared memory bytes

    @property
    def spill(self) -> int:
        """Bytes per thread that live in local memory, stack frame included: a kernel can spill
        thousands of bytes into its frame with LOCAL still 0."""
        return self.stack + self.local


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


_LDG = re.compile(r"\bLDG(?![A-Z])(?:\.[A-Z0-9_]+)*")  # not LDGSTS, LDGDEPBAR
_LDGSTS = re.compile(r"\bLDGSTS(?:\.[A-Z0-9_]+)*")  # cp.async
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


@dataclass(frozen=True)
class CodeFacts:
    """How a kernel computes and moves data, read from its PTX or SASS."""

    load_bits: int  # widest global load (vector width x element bits), 0 if none
    matrix: str  # "wgmma" (sm_90 warpgroup MMA), "mma.sync" (warp MMA) or "none"
    copies: str  # how tiles reach the SMs: "tma", "cp.async:<bytes>B", "ld.global:<bits>b", joined by "+"


def _copies(tma: bool, cp_async_bytes: int, load_bits: int) -> str:
    parts = ["tma"] if tma else []
    if cp_async_bytes:
        parts.append(f"cp.async:{cp_async_bytes}B")
    if load_bits:
        parts.append(f"ld.global:{load_bits}b")
    return "+".join(parts) or "none"


def _sass_facts(body: str) -> CodeFacts:
    load_bits = max((_load_bits(m.group(0)) for m in _LDG.finditer(body)), default=0)
    cp_async = max((_load_bits(m.group(0)) // 8 for m in _LDGSTS.finditer(body)), default=0)
    matrix = "wgmma" if "HGMMA" in body else "mma.sync" if re.search(r"\b[HIDB]MMA\b", body) else "none"
    return CodeFacts(load_bits, matrix, _copies("UTMALDG" in body, cp_async, load_bits))


def sass_facts(cubin: bytes) -> dict[str, CodeFacts]:
    """Per function of a cubin: its widest global load, matrix instruction and tile copies,
    from its SASS (HGMMA/HMMA, UTMALDG, LDGSTS, LDG)."""
    text = _run_on_cubin(cubin, "-sass")
    starts = list(_FUNCTION.finditer(text))
    return {match.group(1): _sass_facts(text[match.end(): starts[i + 1].start() if i + 1 < len(starts) else len(text)])
            for i, match in enumerate(starts)}


def widest_global_loads(cubin: bytes) -> dict[str, int]:
    """Per function, the widest global load in its SASS, in bits (0 if it loads nothing)."""
    return {name: facts.load_bits for name, facts in sass_facts(cubin).items()}


_PTX_LOAD = re.compile(r"\bld\.global(?:\.[A-Za-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b")
# cp.async.{ca,cg}.shared.global [dst], [src], cp-size: the size (4, 8 or 16 bytes) is the third operand
_PTX_CP_ASYNC = re.compile(r"\bcp\.async\.c[ag]\.shared\.global(?:\.[A-Za-z0-9_:]+)*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*"
                           r"(0x[0-9a-fA-F]+|\d+)")


def widest_ptx_global_load_bits(ptx: str) -> int:
    """Widest global load in PTX (vector width x element bits); cheaper than disassembling
    the cubin, and exact for Triton, whose vector loads map one to one onto SASS."""
    return max((int(m.group(1) or 1) * int(m.group(2)) for m in _PTX_LOAD.finditer(ptx)), default=0)


def ptx_matrix_instruction(ptx: str) -> str:
    if re.search(r"\bwgmma\.mma_async\b", ptx):
        return "wgmma"
    return "mma.sync" if re.search(r"\bmma\.sync\b", ptx) else "none"


def ptx_facts(ptx: str) -> CodeFacts:
    """Widest global load, matrix instruction and tile copies of a Triton kernel's PTX: TMA bulk
    tensor copies (``cp.async.bulk.tensor``), ``cp.async`` with its widest copy size, and
    ``ld.global`` with its widest load."""
    load_bits = widest_ptx_global_load_bits(ptx)
    cp_async = max((int(m.group(1), 0) for m in _PTX_CP_ASYNC.finditer(ptx)), default=0)
    tma = re.search(r"\bcp\.async\.bulk\.tensor\b", ptx) is not None
    return CodeFacts(load_bits, ptx_matrix_instruction(ptx), _copies(tma, cp_async, load_bits))
