"""One row per kernel and target: what the compile gate prints and what tests assert on."""

from __future__ import annotations

from dataclasses import dataclass, field

from .sass_loop import LoopFacts

TARGETS = (80, 90)  # sm_80 (A100) and sm_90 (H100/H200)


@dataclass
class CompileRow:
    backend: str  # "triton" or "cupy"
    kernel: str
    config: str
    target: int
    compiled: bool
    registers: int | None = None
    spill_bytes: int | None = None  # local memory per thread (Triton: stack frame included, where its spills go)
    shared_bytes: int | None = None
    load_bits: int | None = None  # widest global load
    expect_load_bits: int | None = None
    matrix: str | None = None  # matrix instruction: "wgmma", "mma.sync" or "none"
    tile_copies: str | None = None  # how tiles move: "tma", "cp.async:16B", "ld.global:128b", ... joined by "+"
    # Triton: the launch specialisation the build had (argument names): ints and pointers marked
    # divisible by 16, runtime ints equal to 1 that became constants
    divisible_args: tuple[str, ...] = ()
    constant_args: tuple[str, ...] = ()
    # builds with matrix instructions: their main matrix loop, read from the SASS (None where no
    # loop holds a matrix instruction, and for builds without one)
    inner_loop: LoopFacts | None = None
    known_spill: str = ""  # the case's reason why it spills (see CompileCase.known_spill)
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def known(self) -> bool:
        """A spill the case declares known, and nothing else wrong."""
        return bool(self.known_spill and self.compiled and self.spill_bytes and not self._other_problems())

    @property
    def ok(self) -> bool:
        return self.compiled and not self._other_problems() and (not self.spill_bytes or self.known)

    def _other_problems(self) -> list[str]:
        if self.expect_load_bits is not None and (self.load_bits or 0) < self.expect_load_bits:
            return [f"widest load {self.load_bits} bits, expected {self.expect_load_bits}"]
        return []

    def problems(self) -> str:
        if not self.compiled:
            return f"did not compile: {self.error}"
        found = [f"{self.spill_bytes} spill/local bytes"] if self.spill_bytes and not self.known else []
        return "; ".join(found + self._other_problems())

    def status(self) -> str:
        if self.known:
            return f"known spill ({self.spill_bytes} bytes): {self.known_spill}"
        return "ok" if self.ok else "FAIL: " + self.problems()


def stale_known_spills(rows: list[CompileRow]) -> list[tuple[str, str]]:
    """(kernel, config) of builds that declare a known spill but spill on no target: the
    declaration has outlived the defect and must go."""
    spills: dict[tuple[str, str], bool] = {}
    for r in rows:
        if r.known_spill and r.compiled:
            key = (r.kernel, r.config)
            spills[key] = spills.get(key, False) or bool(r.spill_bytes)
    return [key for key, spilled in spills.items() if not spilled]


def gate_summary(rows: list[CompileRow]) -> tuple[bool, str]:
    """(passed, one line): every build ok, no stale known-spill declaration."""
    failed = [r for r in rows if not r.ok]
    known = sum(r.known for r in rows)
    stale = stale_known_spills(rows)
    line = f"{len(rows) - len(failed)} of {len(rows)} kernel builds passed the gate"
    if known:
        line += f" ({known} with a known spill, named in their status)"
    for kernel, config in stale:
        line += f"\nFAIL: {kernel} [{config}] declares a known spill but no longer spills: remove known_spill"
    return not failed and not stale, line


HEADER = ("backend", "kernel", "config", "target", "status", "regs", "spill", "smem", "load", "mma", "tiles")


def format_table(rows: list[CompileRow]) -> str:
    table = [HEADER]
    for r in rows:
        table.append((
            r.backend, r.kernel, r.config, f"sm_{r.target}",
            r.status(),
            _cell(r.registers), _cell(r.spill_bytes), _cell(r.shared_bytes),
            "-" if r.load_bits is None else f"{r.load_bits}b", r.matrix or "-", r.tile_copies or "-",
        ))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)
