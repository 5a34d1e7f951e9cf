"""One row per kernel and target: what the compile gate prints and what tests assert on."""

from __future__ import annotations

from dataclasses import dataclass, field

TARGETS = (80, 90)  # sm_80 (A100) and sm_90 (H100/H200)


@dataclass
class CompileRow:
    backend: str  # "triton" or "cupy"
    kernel: str
    config: str
    target: int
    compiled: bool
    registers: int | None = None
    spill_bytes: int | None = None  # local memory per thread: spills and stack arrays
    shared_bytes: int | None = None
    load_bits: int | None = None  # widest global load
    expect_load_bits: int | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        if not self.compiled or self.spill_bytes:
            return False
        return self.expect_load_bits is None or (self.load_bits or 0) >= self.expect_load_bits

    def problems(self) -> str:
        if not self.compiled:
            return f"did not compile: {self.error}"
        found = []
        if self.spill_bytes:
            found.append(f"{self.spill_bytes} spill/local bytes")
        if self.expect_load_bits is not None and (self.load_bits or 0) < self.expect_load_bits:
            found.append(f"widest load {self.load_bits} bits, expected {self.expect_load_bits}")
        return "; ".join(found)


HEADER = ("backend", "kernel", "config", "target", "status", "regs", "spill", "smem", "load")


def format_table(rows: list[CompileRow]) -> str:
    table = [HEADER]
    for r in rows:
        table.append((
            r.backend, r.kernel, r.config, f"sm_{r.target}",
            "ok" if r.ok else "FAIL: " + r.problems(),
            _cell(r.registers), _cell(r.spill_bytes), _cell(r.shared_bytes),
            "-" if r.load_bits is None else f"{r.load_bits}b",
        ))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)
