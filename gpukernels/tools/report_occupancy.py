"""Estimated occupancy from a kernel's compiled registers and shared memory, with the per-SM
limits of sm_80 (A100) and sm_90 (H100/H200) from NVIDIA's CUDA C++ Programming Guide
(compute capability tables) and its occupancy calculator's allocation rules.

An estimate, not a measurement: it ignores dynamic shared memory a launch adds and the
carveout the driver picks, and assumes the block size the launch code uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SmLimits:
    max_warps: int = 64
    max_blocks: int = 32
    registers: int = 65536
    register_unit: int = 256  # registers are allocated per warp in units of 256
    shared: int = 0  # usable shared memory per SM, bytes
    shared_reserved_per_block: int = 1024  # the runtime's own 1 KB per block (sm_80 and later)
    shared_unit: int = 128


LIMITS = {80: SmLimits(shared=164 * 1024), 90: SmLimits(shared=228 * 1024)}


@dataclass(frozen=True)
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    fraction: float  # active warps / max warps per SM
    limiter: str  # "warps", "registers", "shared memory" or "blocks"


def estimate(target: int, registers: int, warps_per_block: int, shared_bytes: int = 0) -> Occupancy:
    limits = LIMITS[target]
    registers_per_warp = math.ceil(registers * 32 / limits.register_unit) * limits.register_unit
    shared_per_block = math.ceil((shared_bytes + limits.shared_reserved_per_block) / limits.shared_unit) * limits.shared_unit
    by = {
        "warps": limits.max_warps // warps_per_block,
        "registers": (limits.registers // registers_per_warp) // warps_per_block if registers else limits.max_blocks,
        "shared memory": limits.shared // shared_per_block,
        "blocks": limits.max_blocks,
    }
    limiter = min(by, key=by.get)
    blocks = by[limiter]
    return Occupancy(blocks, blocks * warps_per_block, blocks * warps_per_block / limits.max_warps, limiter)
