"""The compile gate: every registered Triton kernel at every launch configuration and every
CuPy source compile for sm_80 and sm_90 with no spills and the expected 128-bit loads."""

from __future__ import annotations

import pytest

from gpukernels.tools import cli
from gpukernels.tools.verify import nvrtc, triton_aot
from gpukernels.tools.verify.report import CompileRow, format_table


@pytest.fixture(scope="module")
def triton_rows():
    return triton_aot.compile_all()


@pytest.fixture(scope="module")
def cupy_rows():
    return nvrtc.compile_all()


def test_every_triton_kernel_passes(triton_rows):
    assert triton_rows, "no Triton kernels are registered"
    failed = [r for r in triton_rows if not r.ok]
    assert not failed, format_table(failed)
    assert {r.target for r in triton_rows} == {80, 90}


def test_activation_launch_configs_are_all_covered(triton_rows):
    from gpukernels.triton._launch import TRITON_DTYPES, elementwise_launch

    for dtype, name in TRITON_DTYPES.items():
        block = elementwise_launch(dtype).block
        configs = {r.config for r in triton_rows if r.kernel.startswith("activation_forward") and f"dtype={name}," in r.config}
        assert any(f"block={block}," in c for c in configs)
        assert {c.split("alignment=")[1].split(",")[0] for c in configs} == {"aligned", "ragged", "offset"}


def test_aligned_elementwise_kernels_use_128_bit_loads(triton_rows):
    rows = [r for r in triton_rows if r.kernel.startswith("activation_") and "alignment=offset" not in r.config]
    assert rows and all(r.expect_load_bits == 128 and r.load_bits == 128 for r in rows)


def test_every_cupy_kernel_passes(cupy_rows):
    assert cupy_rows, "no CuPy programs are registered"
    failed = [r for r in cupy_rows if not r.ok]
    assert not failed, format_table(failed)
    activation = [r for r in cupy_rows if r.kernel.startswith("activation_")]
    assert activation and all(r.load_bits == 128 for r in activation)


def test_the_gate_fails_on_spills_missing_vector_loads_or_errors():
    assert not CompileRow("triton", "k", "c", 80, compiled=True, spill_bytes=8).ok
    assert not CompileRow("triton", "k", "c", 80, compiled=True, spill_bytes=0, load_bits=32, expect_load_bits=128).ok
    assert not CompileRow("cupy", "k", "c", 90, compiled=False, error="boom").ok
    assert CompileRow("cupy", "k", "c", 90, compiled=True, spill_bytes=0, load_bits=128, expect_load_bits=128).ok


def test_check_command_exits_non_zero_on_any_failure(monkeypatch, capsys):
    bad = CompileRow("cupy", "broken<float>", "x.cu", 90, compiled=False, error="syntax error")
    monkeypatch.setattr(nvrtc, "compile_all", lambda f=None: [bad])
    assert cli.main(["check", "--backend", "cupy"]) == 1
    assert "FAIL: did not compile: syntax error" in capsys.readouterr().out


def test_a_broken_cuda_source_is_reported_not_raised(monkeypatch):
    from gpukernels.cupy._module import NvrtcProgram

    monkeypatch.setattr("gpukernels.cupy._module.source_text", lambda name: "__global__ void k() { undeclared(); }")
    rows = nvrtc.compile_program(NvrtcProgram("broken.cu", ("k",)), 80)
    assert len(rows) == 1 and not rows[0].compiled and "undeclared" in rows[0].error
