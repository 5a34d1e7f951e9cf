"""A slice of the compile gate for the dense-layer kernels (the whole gate runs in
tests/test_compile_gate.py): the smallest tile with gelu, built ahead of time for sm_80 and
sm_90 as a typical launch specialises it. 16-bit products on the tensor cores (warpgroup MMA on
sm_90, mma.sync on sm_80) with operands streamed by 16-byte cp.async; exact fp32 on the FMA
units, tf32 on the tensor cores; no spills."""

from __future__ import annotations

import pytest

from gpukernels.tools.verify import triton_aot

KERNELS = ("linear_forward", "linear_grad_input", "linear_grad_weight")


@pytest.fixture(scope="module")
def rows():
    found = []
    for config in ("dtype=bf16,shape=aligned,act=gelu,tile=64x64x32", "dtype=fp32,shape=aligned,act=gelu,tile=64x64x32",
                   "dtype=fp32,shape=aligned,act=gelu-tf32,tile=64x64x32"):
        found += triton_aot.compile_all("linear_", workers=1, config_text=config)
    return found


def test_every_build_passes_the_gate(rows):
    assert len(rows) == 3 * len(KERNELS) * 2
    assert all(r.ok and r.spill_bytes == 0 for r in rows), [(r.kernel, r.config, r.target, r.status()) for r in rows]


@pytest.mark.parametrize("kernel", KERNELS)
def test_matrix_instructions(rows, kernel):
    for r in rows:
        if r.kernel != kernel:
            continue
        if "dtype=fp32" in r.config and "tf32" not in r.config:
            want = "none"
        else:
            want = "wgmma" if r.target == 90 else "mma.sync"
        assert r.matrix == want, (r.config, r.target, r.matrix)
        assert "cp.async:16B" in r.tile_copies, (r.config, r.target, r.tile_copies)
