"""The compile gate: every registered Triton kernel at every launch configuration, specialised as
its typical and worst-case launches specialise it, and every CuPy source compile for sm_80 and
sm_90 with no spills and the expected 128-bit loads; every row names its matrix instruction and
how it moves tiles."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

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
    assert all(r.matrix == "none" and r.tile_copies == "ld.global:128b" for r in rows)


def test_every_row_names_its_matrix_instruction_and_tile_copies(triton_rows, cupy_rows):
    copy = r"(tma|cp\.async:(4|8|16)B|ld\.global:(8|16|32|64|128)b)"
    for r in triton_rows + cupy_rows:
        assert r.matrix in ("wgmma", "mma.sync", "none"), (r.kernel, r.config, r.matrix)
        assert re.fullmatch(rf"{copy}(\+{copy})*|none", r.tile_copies), (r.kernel, r.config, r.tile_copies)


def _rows(rows, kernel, target, **tags):
    return [r for r in rows if r.kernel == kernel and r.target == target
            and all(f"{k}={v}," in r.config + "," for k, v in tags.items())]


def test_sdpa_rows_show_the_tensor_cores_and_async_copies_of_a_launch(triton_rows):
    # 16-bit storage multiplies on the tensor cores: mma.sync on sm_80; on sm_90 wgmma where a tile
    # has the 64 rows a warpgroup needs, mma.sync below. fp32 storage multiplies in full fp32 on
    # the FMA units: no matrix instruction. Typical launches of 16-bit storage on sm_90 load every
    # tile through TMA tensor descriptors; the other typical launches stream K/V through 16-byte
    # cp.async into shared memory; the worst (strided views one element in) moves one element (or
    # one fp32 statistic) at a time; fp32 builds without pipelining load straight into registers.
    # wgmma's 64 rows are the product's rows: query rows for the
    # forward and dQ, key rows for dK/dV. Configurations the heuristic picks for one architecture
    # only are built for it only (arch=sm80 / sm90), the others for both (arch=any).
    for kernel in ("sdpa_forward", "sdpa_backward_dq", "sdpa_backward_dkdv"):
        rows = [r for r in triton_rows if r.kernel == kernel]
        assert {r.target for r in rows} == {80, 90}
        for r in rows:
            tags = dict(part.split("=") for part in r.config.split(","))
            assert tags["arch"] in ("any", f"sm{r.target}"), (kernel, r.config, r.target)
            product_rows = int(tags["block_n" if kernel == "sdpa_backward_dkdv" else "block_m"])
            if tags["dtype"] == "fp32":
                want = "none"
            else:
                want = "wgmma" if r.target == 90 and product_rows >= 64 else "mma.sync"
            assert r.matrix == want, (kernel, r.config, r.target, r.matrix)
            if tags["launch"] == "worst":
                assert "cp.async:16B" not in r.tile_copies and "tma" not in r.tile_copies and r.load_bits <= 32, (
                    kernel, r.config, r.tile_copies)
            elif tags["tma"] == "True":
                assert r.target == 90 and tags["dtype"] != "fp32" and r.tile_copies.startswith("tma"), (
                    kernel, r.config, r.tile_copies)
            elif "stages=1" in r.config:  # unpipelined: 128-bit loads straight into registers
                # (fp32; 16-bit only in sm_80's typical dK/dV at d=128 and 256 and forward/dQ at 256)
                assert tags["dtype"] == "fp32" or (r.target == 80 and tags["launch"] != "worst"), (kernel, r.config)
                assert "cp.async" not in r.tile_copies and r.load_bits == 128, (kernel, r.config, r.tile_copies)
            else:
                assert "cp.async:16B" in r.tile_copies and r.load_bits == 128, (kernel, r.config, r.tile_copies)
    # sm_90, 16-bit storage, d=64 and 128: every typical build of the forward, dQ and dK/dV
    # kernels moves its tiles by TMA and multiplies with wgmma; the forward and dQ over 8 warps.
    hopper = [r for r in triton_rows if r.kernel in ("sdpa_forward", "sdpa_backward_dq", "sdpa_backward_dkdv")
              and r.target == 90 and "launch=worst" not in r.config and "dtype=fp32" not in r.config
              and ("d=64," in r.config or "d=128," in r.config)]
    assert len(hopper) == 3 * 5 * 3  # kernels x typical launches x (fp16 d=64, bf16 d=64, fp16 d=128)
    for r in hopper:
        assert r.matrix == "wgmma" and r.tile_copies.startswith("tma") and r.spill_bytes == 0, (r.kernel, r.config)
        assert "dkdv" in r.kernel or ("block_m=128," in r.config and "warps=8" in r.config), (r.kernel, r.config)


def test_builds_carry_the_launch_specialisation(triton_rows):
    typical = _rows(triton_rows, "sdpa_backward_dkdv", 90, dtype="fp16", d="128", causal="False", launch="typical")
    worst = _rows(triton_rows, "sdpa_backward_dkdv", 90, dtype="fp16", d="128", causal="True", launch="worst")
    assert len(typical) == len(worst) == 1
    # contiguous (4, 16, 1024, 128) tensors: sizes and outer strides divisible by 16, unit strides
    # and a single query head per key head compiled in as constants, every pointer aligned
    assert {"H", "L", "S", "E", "EV", "sqz", "sqh", "sqm", "skn", "sgm", "Q", "K", "V", "DK", "DV"} <= set(
        typical[0].divisible_args)
    assert set(typical[0].constant_args) == {"sqd", "skd", "svd", "sgd", "GROUPS"}
    # the worst launch: only the launcher's own buffers are known to be aligned
    assert set(worst[0].divisible_args) == {"DELTA", "DK", "DV"} and worst[0].constant_args == ()
    offset = _rows(triton_rows, "activation_forward[relu]", 80, dtype="fp16", alignment="offset")
    assert [r.divisible_args for r in offset] == [("y_ptr",)]
    aligned = _rows(triton_rows, "activation_forward[relu]", 80, dtype="fp16", alignment="aligned", n="i32")
    assert [r.divisible_args for r in aligned] == [("x_ptr", "y_ptr", "n_elements")]


# Runs in a fresh interpreter without TRITON_INTERPRET: Triton's own launcher, JITFunction.run,
# on a stand-in driver for an sm_90 device; its jit_cache_hook sees what the launch would compile
# and stops it there. Prints, per case, the launcher's and the gate's signature, constants and attrs.
_LAUNCHER_VIEW = """
import json
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from gpukernels.tools.verify import triton_aot


class Sm90:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


seen = []


def record(*, compile, **_):
    seen.append(compile)
    return True  # the launch is not compiled, let alone run


def plain(mapping):
    return sorted((repr(k), repr(v)) for k, v in mapping.items())


driver.set_active(Sm90())
knobs.runtime.jit_cache_hook = record
out = []
for module, case in triton_aot.iter_cases():
    options = {k: v for k, v in triton_aot.launch_options(case).items() if k in ("num_warps", "num_stages")}
    seen.clear()
    case.kernel.run(grid=(1,), warmup=True, **case.args, **options)
    launch = seen[0]
    signature, constexprs, attrs, _ = triton_aot.launch_specialization(case, 90)
    out.append(dict(case=f"{case.name} {triton_aot.config_label(case)}",
                    launcher=[plain(launch["signature"]), plain(launch["constants"]), plain(launch["configs"][0])],
                    gate=[plain(signature), plain(constexprs), plain(attrs)]))
print(json.dumps(out))
"""


def test_the_gate_specialises_every_case_as_tritons_launcher_does():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _LAUNCHER_VIEW], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cases = json.loads(done.stdout)
    assert len(cases) == len(list(triton_aot.iter_cases()))
    differ = [c["case"] for c in cases if c["launcher"] != c["gate"]]
    assert not differ, differ[:5]
    # and the specialisation is not empty: typical launches mark ints divisible by 16
    assert any("tt.divisibility" in str(c["gate"][2]) and "'i32'" in str(c["gate"][0]) for c in cases)


def test_every_cupy_kernel_passes(cupy_rows):
    assert cupy_rows, "no CuPy programs are registered"
    failed = [r for r in cupy_rows if not r.ok]
    assert not failed, format_table(failed)
    activation = [r for r in cupy_rows if r.kernel.startswith("activation_")]
    assert activation and all(r.load_bits == 128 for r in activation)


def test_matrix_instruction_and_tile_copies_are_read_from_ptx_and_sass():
    from gpukernels.tools.verify.sass import CodeFacts, _sass_facts, ptx_facts

    hopper = """
        wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%f1, %f2}, %rd7, %rd8, p, 1, 1, 0, 1;
        cp.async.cg.shared.global [ %r202 + 0 ], [ %rd141 + 0 ], 0x10, %r203;
        cp.async.ca.shared.global [ %r108 + 0 ], [ %rd49 + 0 ], 0x4, %r110;
        @%p1 ld.global.v2.b32 { %r3, %r4 }, [ %rd2 + 0 ];
    """
    assert ptx_facts(hopper) == CodeFacts(64, "wgmma", "cp.async:16B+ld.global:64b")
    tma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1}, {%r1}, {%r2}, {%f2};\n" \
          "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r1], [%rd1, {%r2, %r3}], [%r4];"
    assert ptx_facts(tma) == CodeFacts(0, "mma.sync", "tma")
    assert ptx_facts("ld.global.b16 %rs1, [ %rd1 + 0 ];") == CodeFacts(16, "none", "ld.global:16b")
    sass = """
        /*0100*/ LDGSTS.E.BYPASS.LTC128B.128 [R1], desc[UR4][R2.64] ;
        /*0110*/ LDGDEPBAR ;
        /*0120*/ LDG.E.64 R4, desc[UR4][R6.64] ;
        /*0130*/ HGMMA.64x64x16.F32 R24, gdesc[UR8], RZ, !UPT ;
    """
    assert _sass_facts(sass) == CodeFacts(64, "wgmma", "cp.async:16B+ld.global:64b")
    assert _sass_facts("UTMALDG.2D [UR8], [UR4] ;\n HMMA.16816.F32 R8, R12, R16, R8 ;") == CodeFacts(0, "mma.sync", "tma")


def test_stack_frame_bytes_count_as_spills():
    from gpukernels.tools.verify.sass import Resources

    # ptxas can spill thousands of bytes into a stack frame while LOCAL stays 0
    assert Resources(registers=32, stack=3336, local=0, shared=0).spill == 3336
    assert Resources(registers=40, stack=0, local=8, shared=0).spill == 8


def test_the_gate_fails_on_spills_missing_vector_loads_or_errors():
    assert not CompileRow("triton", "k", "c", 80, compiled=True, spill_bytes=8).ok
    assert not CompileRow("triton", "k", "c", 80, compiled=True, spill_bytes=0, load_bits=32, expect_load_bits=128).ok
    assert not CompileRow("cupy", "k", "c", 90, compiled=False, error="boom").ok
    assert CompileRow("cupy", "k", "c", 90, compiled=True, spill_bytes=0, load_bits=128, expect_load_bits=128).ok


def test_a_known_spill_passes_only_while_it_spills():
    from gpukernels.tools.verify.report import gate_summary

    def row(target, spill, **extra):
        return CompileRow("triton", "k", "c", target, compiled=True, spill_bytes=spill, known_spill="why", **extra)

    assert row(80, 232).ok and row(80, 232).status() == "known spill (232 bytes): why"
    assert gate_summary([row(80, 0), row(90, 232)])[0]  # spilling on one target keeps the note valid
    passed, line = gate_summary([row(80, 0), row(90, 0)])
    assert not passed and "no longer spills: remove known_spill" in line
    assert not row(80, 8, load_bits=32, expect_load_bits=128).ok  # it excuses nothing else
    assert not CompileRow("triton", "k", "c", 80, compiled=True, spill_bytes=8).ok


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
