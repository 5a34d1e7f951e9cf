"""`gpukernels report`: every activation kernel compiles with no spills and gets an occupancy
estimate; occupancy, the activations' bytes model and the eager byte count from the PyTorch
profiler each match a hand count; the command writes its table, CSVs and plot, and fails
clearly on bad input. The full compile gate (every configuration) is tests/test_compile_gate.py;
here one configuration per kernel keeps this file fast."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from gpukernels.tools import cli, report
from gpukernels.benchmarks import activation as activation_bench
from gpukernels.benchmarks import registry
from gpukernels.tools.report_bytes import eager_ops
from gpukernels.tools.report_occupancy import estimate
from gpukernels.tools.verify.report import CompileRow

ACTIVATIONS = activation_bench.OPS
ONE_CONFIG = "dtype=bf16,alignment=aligned,n=i32"


@pytest.fixture(scope="module")
def activation_rows():
    # Triton: the heaviest activation, both kernels, one configuration (the gate test compiles
    # every kernel at every configuration); CuPy: activation.cu, which holds all 36 kernels.
    rows = report.compile_rows("triton", name="[gelu_tanh]", config=ONE_CONFIG, jobs=2)
    return rows + report.compile_rows("cupy", name="activation_")


@pytest.fixture(scope="module")
def activation_lines(activation_rows):
    return report.kernel_lines(activation_rows)


def test_every_activation_kernel_compiles_without_spills_on_both_targets(activation_lines):
    for line in activation_lines:
        r = line.row
        assert r.ok and r.compiled and r.spill_bytes == 0, r.problems()
        # Triton's from its PTX, CuPy's from its SASS: no matrix unit, 128-bit vector loads
        assert (r.matrix, r.tile_copies) == ("none", "ld.global:128b"), (r.kernel, r.target)
    built = {(r.backend, r.kernel, r.target) for r in (line.row for line in activation_lines)}
    cuda_names = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "leaky_relu": "LeakyRelu",
                  "gelu": "Gelu", "gelu_tanh": "GeluTanh"}
    expected = {("triton", f"activation_{d}[gelu_tanh]", t) for d in ("forward", "backward") for t in (80, 90)}
    expected |= {("cupy", f"activation_{d}<gk::{cuda_names[a]}, {ctype}>", t)
                 for d in ("forward", "backward") for a in ACTIVATIONS
                 for ctype in ("float", "gk::half", "gk::bfloat16") for t in (80, 90)}
    assert built == expected


def test_every_activation_kernel_has_an_occupancy_estimate(activation_lines):
    for line in activation_lines:
        occ = line.occupancy
        assert occ is not None and line.warps
        assert 0 < occ.fraction <= 1 and occ.warps_per_sm == occ.blocks_per_sm * line.warps
        # few registers, no shared memory: these small kernels fill the SM's 64 warps
        if line.row.registers <= 32:
            assert occ.fraction == 1.0


@pytest.mark.parametrize("target, registers, warps, shared, blocks, limiter", [
    (80, 24, 4, 0, 16, "warps"),  # 768 registers/warp: 85 warps fit, the 64-warp limit binds
    (80, 128, 8, 0, 2, "registers"),  # 4096 registers/warp: 16 warps = 2 blocks of 8
    (90, 40, 4, 0, 12, "registers"),  # 1280 -> 51 warps -> 12 blocks of 4
    (80, 32, 4, 100 * 1024, 1, "shared memory"),  # (100 KiB + 1 KiB reserved) fits once in 164 KiB
    (90, 32, 4, 100 * 1024, 2, "shared memory"),  # and twice in 228 KiB
    (90, 16, 1, 0, 32, "blocks"),  # 1-warp blocks: the 32-blocks-per-SM limit binds
], ids=["sm80-warps", "sm80-regs", "sm90-regs", "sm80-smem", "sm90-smem", "sm90-blocks"])
def test_occupancy_matches_a_hand_count(target, registers, warps, shared, blocks, limiter):
    occ = estimate(target, registers, warps, shared)
    assert (occ.blocks_per_sm, occ.limiter) == (blocks, limiter)
    assert occ.fraction == pytest.approx(blocks * warps / 64)


# ---------------------------------------------------------------------------------------------
# Bytes: the model, and eager's bytes from the profiler


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_activation_bytes_model_matches_a_hand_count(op):
    # n = 1000 fp16: forward reads x (2000 B) and writes y (2000 B); backward reads grad_output
    # and the saved tensor (2 x 2000 B) and writes grad_input (2000 B).
    assert activation_bench.bytes_model(op, "fwd", 1000, "float16") == 4000
    assert activation_bench.bytes_model(op, "bwd", 1000, "float16") == 6000
    assert activation_bench.bytes_model(op, "fwd", 1000, "float32") == 8000
    cases = [c for c in registry.all_cases() if c.family == "activation" and c.op == op]
    fwd = next(c for c in cases if (c.mode, c.dtype, c.size) == ("fwd", "bfloat16", "n=1048576"))
    bwd = next(c for c in cases if (c.mode, c.dtype, c.size) == ("bwd", "float32", "n=4194304"))
    assert fwd.bytes_moved == 2 * 2 * 2**20 and bwd.bytes_moved == 3 * 4 * 2**22


def _total(fn):
    fn()
    ops = eager_ops(fn)
    return [op.name for op in ops], sum(op.total for op in ops)


def test_eager_bytes_of_a_single_op():
    x = torch.randn(1000)
    assert _total(lambda: torch.sigmoid(x)) == (["aten::sigmoid"], 8000)
    h = torch.randn(1000, dtype=torch.bfloat16)
    assert _total(lambda: torch.ops.aten.gelu_backward(h, h, approximate="tanh")) == (["aten::gelu_backward"], 6000)


def test_eager_bytes_follow_composites_and_skip_views_and_scalars():
    x, w, b = torch.randn(8, 100), torch.randn(30, 100), torch.randn(30)
    # linear -> t (a view) + addmm: reads b (120 B), x (3200 B), w^T (12000 B), writes 8x30 (960 B)
    assert _total(lambda: F.linear(x, w, b)) == (["aten::addmm"], 120 + 3200 + 12000 + 960)
    # x * 2.0 wraps 2.0 in a 0-dim tensor (8 B of double) and multiplies: one pass
    names, total = _total(lambda: x * 2.0)
    assert names == ["aten::mul"] and total == 3200 + 3200 + 8
    # transpose + contiguous: the view moves nothing, the copy reads and writes once
    assert _total(lambda: x.t().contiguous()) == (["aten::clone"], 6400)


def test_eager_bytes_of_in_place_ops():
    x, y = torch.randn(100), torch.randn(100)
    assert _total(lambda: x.add_(y)) == (["aten::add_"], 400 + 400 + 400)  # reads x and y, writes x
    assert _total(lambda: x.copy_(y)) == (["aten::copy_"], 400 + 400)  # reads y, writes x
    params, grads = [torch.randn(10) for _ in range(3)], [torch.randn(10) for _ in range(3)]
    names, total = _total(lambda: torch._foreach_add_(params, grads))
    assert total == 3 * (40 + 40 + 40)


def test_eager_lstm_cell_moves_more_than_its_inputs_and_outputs():
    cell, x = torch.nn.LSTMCell(16, 32), torch.randn(4, 16)
    h, c = torch.randn(4, 32), torch.randn(4, 32)
    names, total = _total(lambda: cell(x, (h, c)))
    assert names.count("aten::addmm") == 2 and "aten::sigmoid_" in names
    must = 4 * (x.numel() + 2 * h.numel() + 2 * c.numel() + sum(p.numel() for p in cell.parameters()))
    assert total > must  # gate pre-activations go to memory and back


def test_activation_report_predicts_no_speedup_over_a_single_eager_op():
    # PyTorch eager runs each activation (and its ATen backward) as one op: the honest
    # prediction is 1.0x for every op, mode and dtype, and the report must say so.
    lines = report.bytes_lines([c for c in registry.all_cases() if c.family == "activation"])
    assert {(b.op, b.mode, b.dtype) for b in lines} == {
        (op, mode, dtype) for op in ACTIVATIONS for mode in ("fwd", "bwd") for dtype in activation_bench.DTYPES}
    for b in lines:
        assert b.size == "n=1048576" and b.note == ""
        assert b.eager_bytes == b.model_bytes and b.predicted_speedup == 1.0, (b.op, b.mode, b.eager_ops)


def test_compute_bound_cases_are_left_out_of_the_bytes_section():
    case = registry.BenchCase(family="t", op="mm", mode="fwd", dtype="float32", size="n=1", setup=None,
                              providers={}, bytes_moved=1000, flops=10**6)
    assert not report.memory_bound(case)
    assert report.memory_bound(registry.BenchCase(family="t", op="x", mode="fwd", dtype="float32", size="n=1",
                                                  setup=None, providers={}, bytes_moved=1000))


# ---------------------------------------------------------------------------------------------
# The command


def test_report_command_writes_table_csvs_and_plot(activation_rows, monkeypatch, tmp_path, capsys):
    asked = []

    def compiled(backend, name, config, jobs):  # the rows compiled above, not a second compile
        asked.append((backend, name, config, jobs))
        return [r for r in activation_rows if r.backend == backend and name in r.kernel]

    monkeypatch.setattr(report, "compile_rows", compiled)
    argv = ["report", "--backend", "triton", "--filter", "activation_forward[gelu_tanh]", "--config",
            ONE_CONFIG, "--jobs", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert asked == [("triton", "activation_forward[gelu_tanh]", ONE_CONFIG, 1)]
    out = capsys.readouterr().out
    for label in ("C: compiled fact", "E: estimate", "M: measured", "P: prediction", "A prediction, not a GPU"):
        assert label in out
    summary = [line.split() for line in out.splitlines() if line.startswith("triton")]
    assert [(line[1], line[2], line[4]) for line in summary] == [
        ("activation_forward[gelu_tanh]", "sm_80", "1/1"), ("activation_forward[gelu_tanh]", "sm_90", "1/1")]
    with (tmp_path / "report_kernels.csv").open() as handle:
        kernels = list(csv.DictReader(handle))
    assert [r["compiled_status"] for r in kernels] == ["ok", "ok"]
    assert [(r["compiled_matrix_instruction"], r["compiled_tile_copies"]) for r in kernels] == [
        ("none", "ld.global:128b")] * 2
    # the launch specialisation of the build: aligned pointers and a size divisible by 16
    assert {r["launch_divisible_args"] for r in kernels} == {"x_ptr y_ptr n_elements"}
    assert {r["target"] for r in kernels} == {"sm_80", "sm_90"}
    assert all(r["compiled_spill_bytes"] == "0" and float(r["estimated_occupancy_pct"]) > 0 for r in kernels)
    with (tmp_path / "report_bytes.csv").open() as handle:
        bytes_rows = list(csv.DictReader(handle))
    assert tuple(bytes_rows[0]) == report.BYTES_COLUMNS
    gelu_tanh = {(r["mode"], r["dtype"]): r for r in bytes_rows if r["op"] == "gelu_tanh"}
    assert gelu_tanh[("fwd", "float32")]["measured_eager_bytes"] == str(8 * 2**20)
    assert gelu_tanh[("bwd", "float16")]["measured_eager_aten_ops"] == "gelu_backward"
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_summary_gives_ranges_over_configurations():
    def line(config, registers, target=80, matrix="mma.sync", copies="cp.async:16B+ld.global:128b"):
        row = CompileRow("triton", "k", config, target, compiled=True, registers=registers, spill_bytes=0,
                         shared_bytes=0, load_bits=128, matrix=matrix, tile_copies=copies)
        return report.KernelLine(row, 4, estimate(target, registers, 4))

    records = report.summary_records([line("a,warps=4", 24), line("b,warps=4", 48, copies="ld.global:16b"),
                                      line("a,warps=4", 30, 90, matrix="wgmma")])
    assert [(r["target"], r["configs"], r["compiled_registers"], r["estimated_occupancy_pct"]) for r in records] == [
        ("sm_80", 2, "24-48", "62.5-100.0"), ("sm_90", 1, "30", "100.0")]
    assert [(r["compiled_matrix_instruction"], r["compiled_tile_copies"]) for r in records] == [
        ("mma.sync", "cp.async:16B+ld.global:128b/ld.global:16b"), ("wgmma", "cp.async:16B+ld.global:128b")]


def test_report_fails_on_a_gate_failure(monkeypatch, tmp_path, capsys):
    spilled = CompileRow("triton", "k", "warps=4", 80, compiled=True, registers=255, spill_bytes=64, shared_bytes=0)
    monkeypatch.setattr(report, "compile_rows", lambda *a, **k: [spilled])
    monkeypatch.setattr(report, "bytes_lines", lambda *a, **k: [])
    assert cli.main(["report", "--out", str(tmp_path)]) == 1
    assert "0/1" in capsys.readouterr().out  # the summary counts the failure
    assert cli.main(["report", "--full", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 64 spill/local bytes" in out and "warps=4" in out


def test_report_bad_input_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["report", "--out", str(blocker / "x")]) == 2
    assert "cannot write there" in capsys.readouterr().err
    assert cli.main(["report", "--backend", "triton", "--filter", "no-such-kernel", "--out", str(tmp_path / "r")]) == 2
    assert "no kernel or op matches 'no-such-kernel'" in capsys.readouterr().err
