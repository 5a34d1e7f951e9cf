"""The hot inner loop of a kernel, read from its SASS, and what its instructions do.

A loop is a backward branch: the body is every instruction from the branch's target to the
branch itself. For a kernel built on matrix instructions the hot loop is the innermost loop
whose body holds one (HGMMA on sm_90, HMMA on sm_80): that is where the tiles are multiplied,
once per iteration. Where a kernel has several such loops side by side, the one with the fewest
instructions is the main one: the SDPA kernels (and Triton's fused-attention tutorial) split each
loop over tiles into an unmasked copy, which runs over almost every tile, and a masked copy for
the diagonal and ragged tiles, which is the same body plus the mask code. Program order does
not tell them apart: the forward and dQ run the unmasked copy first, causal dK/dV the masked one.

The counts are static: each instruction of the body counts once, also those a branch inside the
body skips at run time (conditional code is rare in these loops: the TMA issue by one elected
thread, the barrier waits). They are per warp: every warp of the program runs the body once per
iteration, so a program issues ``instructions x warps`` per iteration.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

# Instruction classes, by the opcode's first part (before the first "."). Uniform-datapath
# opcodes (U + the vector opcode: UIADD3, UMOV, ULEA, ...) take the class of their vector opcode.
MATRIX = frozenset({"HGMMA", "QGMMA", "IGMMA", "BGMMA", "HMMA", "IMMA", "DMMA", "BMMA"})
MEMORY = frozenset({  # loads, stores and copies (global, shared, constant, local; TMA, cp.async) and lane shuffles
    "LDG", "STG", "LDS", "STS", "LDSM", "STSM", "LD", "ST", "LDL", "STL", "LDC", "LDGSTS", "LDGDEPBAR",
    "UTMALDG", "UTMASTG", "UTMAPF", "UTMACCTL", "UTMACMDFLUSH", "UBLKCP", "UBLKRED", "UBLKPF",
    "ATOM", "ATOMS", "ATOMG", "RED", "SHFL", "CCTL", "MATCH", "REDUX"})
FLOAT = frozenset({  # FP32 (and FP16/FP64) arithmetic, compares, the special-function unit, conversions
    "FADD", "FMUL", "FFMA", "FMNMX", "FSETP", "FSET", "FSEL", "FCHK", "FSWZADD", "FRND", "MUFU",
    "F2F", "F2FP", "F2I", "I2F", "I2FP", "F2IP", "HADD2", "HMUL2", "HFMA2", "HMNMX2", "HSETP2", "HSET2",
    "DADD", "DMUL", "DFMA", "DSETP", "DMNMX", "FADD2", "FMUL2", "FFMA2"})
INTEGER = frozenset({  # integer arithmetic, address math, moves, predicates, special registers
    "IMAD", "IADD3", "IADD", "IADD32I", "LEA", "SHF", "SHL", "SHR", "LOP3", "LOP", "ISETP", "IMNMX", "VIMNMX",
    "SEL", "MOV", "MOV32I", "PRMT", "VIADD", "VIADDMNMX", "IABS", "POPC", "FLO", "BREV", "BMSK", "SGXT",
    "PLOP3", "P2R", "R2P", "CS2R", "S2R", "S2UR", "R2UR", "IDP", "IMUL", "ISCADD", "XMAD", "IMNMX3"})
CONTROL = frozenset({  # branches, barriers and waits, warp votes, no-ops
    "BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BSSY", "BSYNC", "BREAK", "BPT", "WARPSYNC", "BAR",
    "SETMAXREG", "DEPBAR", "NOP", "YIELD", "ELECT", "VOTE", "VOTEU", "MEMBAR", "FENCE", "ERRBAR", "SYNCS",
    "WARPGROUP", "ACQBULK", "NANOSLEEP", "KILL", "ARRIVES", "CGAERRBAR", "UCGABAR_ARV", "UCGABAR_WAIT", "PMTRIG",
    "ENDCOLLECTIVE"})
CLASSES = ("matrix", "memory", "float", "integer", "control", "other")
_CLASS_OF = {**{op: "matrix" for op in MATRIX}, **{op: "memory" for op in MEMORY}, **{op: "float" for op in FLOAT},
             **{op: "integer" for op in INTEGER}, **{op: "control" for op in CONTROL}}
BRANCHES = frozenset({"BRA", "JMP"})  # direct branches: the ones that can close a loop


def instruction_class(opcode: str) -> str:
    """One of ``CLASSES`` for an opcode such as ``HGMMA.64x64x16.F32`` or ``UIADD3``."""
    root = opcode.split(".")[0]
    if root in _CLASS_OF:
        return _CLASS_OF[root]
    if root.startswith("U") and root[1:] in _CLASS_OF:
        return _CLASS_OF[root[1:]]
    return "other"


_HMMA_SHAPE = re.compile(r"^[HIB]MMA\.(16)(8)(16|8|32)\b")  # warp MMA: HMMA.16816 is m16 n8 k16
_GMMA_SHAPE = re.compile(r"^[HQIB]GMMA\.(\d+)x(\d+)x(\d+)\b")  # warpgroup MMA: m x n x k


def matrix_flops_per_warp(opcode: str) -> int:
    """FLOPs (2 per multiply-add) one warp's instance of a matrix instruction does: a warp MMA's
    m x n x k; a warpgroup MMA's m x n x k shared by the 4 warps that each issue it. 0 for other
    instructions or shapes this does not know."""
    for pattern, warps in ((_HMMA_SHAPE, 1), (_GMMA_SHAPE, 4)):
        shape = pattern.match(opcode)
        if shape:
            m, n, k = (int(g) for g in shape.groups())
            return 2 * m * n * k // warps
    return 0


@dataclass(frozen=True)
class Instruction:
    address: int  # byte offset in the function
    opcode: str  # mnemonic with its modifiers, e.g. "HGMMA.64x64x16.F32"
    operands: str
    target: int | None = None  # a direct branch's target address

    @property
    def kind(self) -> str:
        return instruction_class(self.opcode)


# cuobjdump -sass: "/*0690*/  @!P3 BRA 0x6f0 ;"; nvdisasm: "/*0690*/  @!P3 BRA `(.L_x_3) ;" with
# ".L_x_3:" lines (labels) before the instruction they name.
_LINE = re.compile(r"/\*([0-9a-fA-F]+)\*/\s+(?:\{\s*)?(?:@!?U?P[0-9T]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)"
                   r"([^;]*);")
_LABEL = re.compile(r"^\s*(\.L[\w.]+):\s*$")
_HEX_TARGET = re.compile(r"\b0x([0-9a-fA-F]+)\s*$")
_LABEL_TARGET = re.compile(r"`\((\.L[\w.]+)\)")


def parse(sass: str) -> list[Instruction]:
    """The instructions of one function's SASS listing (cuobjdump or nvdisasm text), in
    address order, with each direct branch's target resolved to an address."""
    labels_pending: list[str] = []
    labels: dict[str, int] = {}
    raw: list[tuple[int, str, str]] = []
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            labels_pending.append(label.group(1))
            continue
        match = _LINE.search(line)
        if not match:
            continue
        address = int(match.group(1), 16)
        for name in labels_pending:
            labels[name] = address
        labels_pending.clear()
        raw.append((address, match.group(2), match.group(3).strip()))
    instructions = []
    for address, opcode, operands in raw:
        target = None
        if opcode.split(".")[0] in BRANCHES:
            by_label = _LABEL_TARGET.search(operands)
            by_address = _HEX_TARGET.search(operands)
            if by_label and by_label.group(1) in labels:
                target = labels[by_label.group(1)]
            elif by_address:
                target = int(by_address.group(1), 16)
        instructions.append(Instruction(address, opcode, operands, target))
    return sorted(instructions, key=lambda i: i.address)


@dataclass(frozen=True)
class Loop:
    start: int  # address of the first instruction of the body (the back branch's target)
    end: int  # address of the back branch
    body: tuple[Instruction, ...]

    def contains(self, other: Loop) -> bool:
        inside = self.start <= other.start and other.end <= self.end
        return inside and (self.start, self.end) != (other.start, other.end)

    @property
    def has_matrix(self) -> bool:
        return any(i.kind == "matrix" for i in self.body)

    def matrix_flops(self) -> int:
        """FLOPs one warp's matrix instructions in the body do per iteration."""
        return sum(matrix_flops_per_warp(i.opcode) for i in self.body)

    def counts(self) -> dict[str, int]:
        """Instructions of the body by class (every class of ``CLASSES``, zeros included)."""
        found = Counter(i.kind for i in self.body)
        return {kind: found.get(kind, 0) for kind in CLASSES}


def loops(instructions: list[Instruction]) -> list[Loop]:
    """Every loop, in program order: for each back-branch target, the body up to the last branch
    back to it. A backward branch whose span holds an EXIT closes no loop: it is the way back
    from an out-of-line block that ptxas placed past the end of the kernel (a barrier wait's
    retry, ``SYNCS.PHASECHK`` ... ``BRA`` back into the code)."""
    exits = [i.address for i in instructions if i.opcode.split(".")[0] == "EXIT"]
    ends: dict[int, int] = {}
    for i in instructions:
        if i.target is not None and i.target <= i.address:
            if any(i.target <= e <= i.address for e in exits):
                continue
            ends[i.target] = max(ends.get(i.target, i.address), i.address)
    return [Loop(start, end, tuple(i for i in instructions if start <= i.address <= end))
            for start, end in sorted(ends.items())]


class NoMatrixLoop(ValueError):
    """The listing has no loop with a matrix instruction in its body."""


def matrix_loops(instructions: list[Instruction]) -> list[Loop]:
    """The innermost loops that hold a matrix instruction (no such loop nested inside them), in
    program order."""
    candidates = [loop for loop in loops(instructions) if loop.has_matrix]
    return [loop for loop in candidates if not any(loop.contains(other) for other in candidates)]


def hot_loop(instructions: list[Instruction]) -> Loop:
    """The main matrix loop: the innermost loop with a matrix instruction and the fewest
    instructions (the first of equals)."""
    found = matrix_loops(instructions)
    if not found:
        n_loops = len(loops(instructions))
        raise NoMatrixLoop(f"no loop holds a matrix instruction (HGMMA/HMMA) among the {n_loops} loops of "
                           f"{len(instructions)} instructions")
    return min(found, key=lambda loop: len(loop.body))


@dataclass(frozen=True)
class LoopFacts:
    """A kernel's main matrix loop: instructions per warp per iteration, by class."""

    instructions: int
    by_class: dict[str, int]
    start: int
    end: int
    # instructions of every innermost matrix loop, in program order (the main one among them)
    loop_sizes: tuple[int, ...] = ()
    matrix_flops: int = 0  # FLOPs one warp's matrix instructions do per iteration (by their shapes)

    @property
    def matrix_loops(self) -> int:
        return len(self.loop_sizes)

    def per_kflop(self, warps: int, flops_per_iteration: int) -> float:
        """Warp instructions a program issues per 1000 FLOPs of its matrix products."""
        return 1000.0 * self.instructions * warps / flops_per_iteration

    def matrix_work(self, warps: int, flops_per_iteration: int) -> float:
        """FLOPs the program's matrix instructions do per FLOP its products need: 1.0 when each
        product is computed once; above 1 when warps compute the same tile rows twice (a
        layout that gives more warps to a tile than it has 16-row MMA blocks)."""
        return self.matrix_flops * warps / flops_per_iteration


def loop_facts(sass: str) -> LoopFacts:
    """The main matrix loop of a one-function SASS listing (raises ``NoMatrixLoop``)."""
    instructions = parse(sass)
    main = hot_loop(instructions)
    sizes = tuple(len(loop.body) for loop in matrix_loops(instructions))
    return LoopFacts(len(main.body), main.counts(), main.start, main.end, sizes, main.matrix_flops())


def cubin_loop_facts(cubin: bytes) -> LoopFacts:
    """``loop_facts`` of a one-kernel cubin, disassembled with cuobjdump."""
    from .sass import _run_on_cubin

    return loop_facts(_run_on_cubin(cubin, "-sass"))
