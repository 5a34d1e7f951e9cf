"""The persistent recurrent kernels (gpukernels/triton/rnn_persistent.py): one launch per layer
direction, forward and backward.

* Against the float64 reference through the public layer ops, forced on with
  GPUKERNELS_RNN_PERSISTENT=1: every cell it covers, fp32/fp16/bf16, odd B/H/T, lengths and
  reverse, every gradient. Without a GPU this is the one-program path (the interpreter runs
  programs one after another), which loops over all slices; the launch counts prove no per-step
  kernel ran.
* The launch rule (``plan_launch``), a pure function, over A100/H100/H200-like numbers.
* The grid barrier's protocol in a host-side simulation: N programs interleaved by a random
  scheduler, checking nobody passes step t before everyone arrived and nobody deadlocks; the
  same simulation catches the classic broken variant (a counter reset by the last arriver).
"""

from __future__ import annotations

import random

import pytest
import torch

import gpukernels as gk
from conftest import HAS_CUDA
from gpukernels.triton import rnn as triton_rnn
from gpukernels.triton import rnn_persistent as rp
from test_rnn_triton import SHORT, _inputs, run_layer_against_reference


class _Counting:
    """Stands in for a @triton.jit kernel: counts launches and records their grids."""

    def __init__(self, kernel):
        self.kernel, self.grids, self.options = kernel, [], []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids.append(grid)
            self.options.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch

    def __getattr__(self, name):  # warmup and the rest go to the kernel
        return getattr(self.kernel, name)


@pytest.fixture
def launches(monkeypatch):
    """Counters on both persistent kernels and both per-step kernels."""
    counters = {}
    for module, name in ((rp, "rnn_persistent_forward_kernel"), (rp, "rnn_persistent_backward_kernel"),
                         (triton_rnn, "rnn_step_kernel"), (triton_rnn, "rnn_backward_step_kernel")):
        counters[name] = _Counting(getattr(module, name))
        monkeypatch.setattr(module, name, counters[name])
    return counters


KINDS = ("rnn_tanh", "rnn_relu", "lstm", "lstm_peep_coupled", "gru")
# (T, B, H, dtype, reverse, lengths): every kind in every dtype with reverse and ragged lengths;
# fp32 also forward with a batch past one 16-row tile and H past one 16-unit slice, and all ones.
LAYER_SIZES = [(5, 3, 7, d, True, (5, 2, 4)) for d in ("float32", "float16", "bfloat16")]
LAYER_SIZES += [(3, 17, 19, "float32", False, None), (1, 1, 1, "float32", False, None)]
LAYER_CASES = [pytest.param(kind, *size, id=f"{kind}-T{size[0]}-B{size[1]}-H{size[2]}-{SHORT[size[3]]}"
                            + ("-reverse-lengths" if size[4] else ""))
               for kind in KINDS for size in LAYER_SIZES]
LAYER_CASES += [pytest.param("gru", 4, 5, 33, "bfloat16", False, (4, 1, 3, 4, 2), id="gru-T4-B5-H33-bf16-lengths"),
                pytest.param("lstm_peep_coupled", 2, 2, 40, "float16", True, None, id="lstm_peep_coupled-T2-B2-H40-fp16"
                             "-reverse"),
                # the wider slices: 128 (8 warps forward, 4 backward for the GRU), 256 for H=130
                pytest.param("gru", 3, 2, 70, "float32", True, None, id="gru-T3-B2-H70-fp32-reverse"),
                pytest.param("lstm", 2, 2, 97, "float16", False, (2, 1), id="lstm-T2-B2-H97-fp16-lengths"),
                pytest.param("rnn_tanh", 2, 3, 130, "bfloat16", False, (2, 1, 2), id="rnn_tanh-T2-B3-H130-bf16-lengths")]


@pytest.mark.parametrize("kind,T,B,H,dtype,reverse,lengths", LAYER_CASES)
def test_persistent_layers_against_the_reference(kind, T, B, H, dtype, reverse, lengths, rng, monkeypatch, launches):
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    outputs = run_layer_against_reference(kind, dtype, T, B, H, reverse, lengths, rng)
    # The backward op recomputes the forward: two forward launches, one backward, no step kernel.
    assert len(launches["rnn_persistent_forward_kernel"].grids) == 2
    assert len(launches["rnn_persistent_backward_kernel"].grids) == 1
    assert not launches["rnn_step_kernel"].grids and not launches["rnn_backward_step_kernel"].grids
    if not HAS_CUDA:  # the interpreter: one program over every slice
        assert launches["rnn_persistent_forward_kernel"].grids == [(1,), (1,)]
    if lengths is not None:  # padded steps output exact zeros
        for b, length in enumerate(lengths):
            assert torch.all(outputs[0][length:, b] == 0)


@pytest.mark.parametrize("kind", ["lstm_peep_coupled", "gru", "rnn_relu"])
def test_slice_held_for_the_whole_sequence(kind, rng, monkeypatch, launches):
    """The compiled path's code (SLICE_LOOP=False: one slice per program, w_hh loaded once before
    the time loop) with its single program, H <= 16: the interpreter can run that one."""
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    monkeypatch.setattr(rp, "plan_launch", lambda *a, **k: rp.Plan(True, 1, False, "test"))
    run_layer_against_reference(kind, "float32", 4, 3, 11, True, (4, 1, 3), rng)
    assert launches["rnn_persistent_backward_kernel"].grids == [(1,)]


# The wide (row-wise) slices, through the launcher's own rule with tables that put them at widths
# the interpreter can afford (the real ones start at 256-1024, see ROWWISE_SLICES): the same code
# paths (ROWWISE products, 8- or 4-unit slices, one batch row per product), small tiles.
def _small_rowwise_tables(monkeypatch, block_h: int) -> None:
    monkeypatch.setattr(rp, "SLICE_WARPS", {code: {} for code in rp.SLICE_WARPS})
    small = {width: (block_h, 4, 4) for width in (8, 16, 32, 64)}
    monkeypatch.setattr(rp, "ROWWISE_SLICES", {code: {dtype: small for dtype in ("fp32", "fp16", "bf16")}
                                               for code in rp.ROWWISE_SLICES})


def _assert_rowwise_launches(launches, block_h: int) -> None:
    for name in ("rnn_persistent_forward_kernel", "rnn_persistent_backward_kernel"):
        assert launches[name].options, name
        for options in launches[name].options:
            assert options["ROWWISE"] and options["BLOCK_H"] == block_h and options["BLOCK_B"] == 1


# (kind, T, B, H, dtype, reverse, lengths, units per program): every kind in every dtype with
# reverse and ragged lengths, H=19 over 3 (or 5) slices; fp32 with a batch past one 16-row
# pointwise tile and H=40 (a 64-wide reduction, 5 slices of 8).
ROWWISE_SIZES = [(kind, 4, 3, 19, dtype, True, (4, 1, 3), 4 if kind == "lstm" and dtype == "float32" else 8)
                 for kind in KINDS for dtype in ("float32", "float16", "bfloat16")]
ROWWISE_SIZES += [(kind, 3, 17, 40, "float32", False, None, 8) for kind in ("lstm_peep_coupled", "gru", "rnn_relu")]
ROWWISE_CASES = [pytest.param(*size, id=f"{size[0]}-T{size[1]}-B{size[2]}-H{size[3]}-{SHORT[size[4]]}-units{size[7]}"
                              + ("-reverse-lengths" if size[5] else "")) for size in ROWWISE_SIZES]


@pytest.mark.parametrize("kind,T,B,H,dtype,reverse,lengths,block_h", ROWWISE_CASES)
def test_wide_rowwise_slices_against_the_reference(kind, T, B, H, dtype, reverse, lengths, block_h, rng,
                                                   monkeypatch, launches):
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    _small_rowwise_tables(monkeypatch, block_h)
    outputs = run_layer_against_reference(kind, dtype, T, B, H, reverse, lengths, rng)
    _assert_rowwise_launches(launches, block_h)
    assert not launches["rnn_step_kernel"].grids and not launches["rnn_backward_step_kernel"].grids
    if lengths is not None:
        for b, length in enumerate(lengths):
            assert torch.all(outputs[0][length:, b] == 0)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["lstm_peep_coupled", "gru", "rnn_tanh"])
def test_wide_slice_held_for_the_whole_sequence(kind, dtype, rng, monkeypatch, launches):
    """The compiled path's code for the wide slices (SLICE_LOOP=False: the slice loaded once,
    in its storage dtype, before the time loop) with its single program: H <= 8."""
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    _small_rowwise_tables(monkeypatch, 8)
    monkeypatch.setattr(rp, "plan_launch", lambda *a, **k: rp.Plan(True, 1, False, "test"))
    run_layer_against_reference(kind, dtype, 4, 3, 7, True, (4, 1, 3), rng)
    _assert_rowwise_launches(launches, 8)
    assert launches["rnn_persistent_backward_kernel"].grids == [(1,)]
    assert all(not options["SLICE_LOOP"] for options in launches["rnn_persistent_forward_kernel"].options)


@pytest.mark.parametrize("kind,H,dtype,hp", [("lstm", 520, "float16", 1024), ("gru", 300, "bfloat16", 512)])
def test_wide_slices_at_the_widths_the_rule_picks(kind, H, dtype, hp, rng, monkeypatch, launches):
    """The real tables (no stand-in): an LSTM past the tl.dot widths on the 1024-wide slice of 8
    units (65 slices), a GRU on the 512-wide one; short, the interpreter takes 10-20 s each."""
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    run_layer_against_reference(kind, dtype, 2, 2, H, True, (2, 1), rng)
    _assert_rowwise_launches(launches, 8)
    assert {options["HP"] for options in launches["rnn_persistent_forward_kernel"].options} == {hp}


def test_original_gru_keeps_the_per_step_path(rng, monkeypatch, launches):
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    run_layer_against_reference("gru_original", "float32", 3, 2, 5, False, None, rng)
    assert not launches["rnn_persistent_forward_kernel"].grids and not launches["rnn_persistent_backward_kernel"].grids
    assert len(launches["rnn_step_kernel"].grids) == 2 * 3 * 2


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's default")
@pytest.mark.parametrize("switch", ["0", None, "auto"])
def test_per_step_path_when_switched_off_or_not_forced_in_the_interpreter(switch, rng, monkeypatch, launches):
    if switch is None:
        monkeypatch.delenv(rp.ENVIRONMENT_SWITCH, raising=False)
    else:
        monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, switch)
    run_layer_against_reference("lstm", "float32", 3, 2, 5, False, None, rng)
    assert not launches["rnn_persistent_forward_kernel"].grids
    assert len(launches["rnn_step_kernel"].grids) == 2 * 3


def test_bad_switch_value_is_named(rng, monkeypatch):
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "yes")
    a = _inputs(rng, "gru", 2, 3, 4, "float32", T=2)
    with gk.use_backend("triton"), pytest.raises(ValueError, match="GPUKERNELS_RNN_PERSISTENT must be 0, 1 or auto"):
        gk.gru_layer(a["x"], a["h"], *a["w"])


# ---------------------------------------------------------------------------------------------
# The launch rule

H100 = rp.DeviceLimits(sm_count=132, shared_per_sm=228 * 1024)
H200 = rp.DeviceLimits(sm_count=132, shared_per_sm=228 * 1024)
A100 = rp.DeviceLimits(sm_count=108, shared_per_sm=164 * 1024)
SMALL = rp.KernelResources(registers=128, shared=40 * 1024, spills=0, num_warps=4)
LARGE_SHARED = rp.KernelResources(registers=207, shared=197 * 1024, spills=0, num_warps=4)


def test_resident_programs_follow_the_occupancy_rules():
    # 128 registers x 4 warps: 4 programs by registers; 40 KiB (+1 KiB) of 228 KiB: 5 by shared.
    assert rp.resident_programs(H100, SMALL) == 132 * 4
    assert rp.resident_programs(A100, SMALL) == 108 * 4  # 164 KiB: 4 by shared too
    assert rp.resident_programs(H200, LARGE_SHARED) == 132  # one 198 KiB program per SM
    assert rp.resident_programs(A100, LARGE_SHARED) == 0  # does not fit an A100 SM at all
    few_registers = rp.KernelResources(registers=32, shared=0, spills=0, num_warps=4)
    assert rp.resident_programs(H100, few_registers) == 132 * 16  # 2048 threads per SM
    one_sm = rp.DeviceLimits(sm_count=1, max_blocks_per_sm=3)
    assert rp.resident_programs(one_sm, few_registers) == 3  # blocks per SM


@pytest.mark.parametrize("device", [H100, H200, A100], ids=["H100", "H200", "A100"])
@pytest.mark.parametrize("cell,H", [("rnn_tanh", 512), ("rnn_relu", 100), ("gru", 128), ("lstm", 256), ("lstm", 17)])
def test_one_program_per_slice_where_resident(device, cell, H):
    plan = rp.plan_launch(cell, H, 100, dtype="fp32", device=device, kernel=SMALL)
    assert plan == rp.Plan(True, -(-H // rp.BLOCK_H), False, plan.reason)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_slices_past_the_spill_free_widths_take_the_per_step_path(cell, dtype):
    for backward in (False, True):
        assert rp.slice_tile(cell, 1024, dtype=dtype, backward=backward) is not None
        assert rp.slice_tile(cell, 1025, dtype=dtype, backward=backward) is None
    assert not rp.plan_launch(cell, 1025, 100, dtype=dtype, device=H200, kernel=SMALL).persistent
    assert not rp.plan_launch(cell, 1025, 100, dtype=dtype, switch="1", device=H200, kernel=SMALL).persistent


def test_widths_round_up_to_the_next_spill_free_one_within_the_on_chip_budgets():
    widths = (1, 16, 17, 33, 65, 128, 129, 256, 257, 512, 513, 1024)
    assert [rp.slice_tile("rnn_tanh", H, dtype="fp16").hp for H in widths] == [
        16, 16, 32, 64, 128, 128, 256, 256, 512, 512, 1024, 1024]
    tile = rp.slice_tile("gru", 100, dtype="fp32")
    assert tile.num_warps == 8 and rp.slice_tile("gru", 100, dtype="fp32", backward=True).num_warps == 4
    assert tile == rp.SliceTile(rp.BLOCK_B, rp.BLOCK_H, 128, 8, rowwise=False)
    # Past the tl.dot widths, the wide row-wise slices: one batch row per product, 8 units per
    # program (4 for the fp32 LSTM at 1024, whose 8-unit build spills on sm_90).
    assert rp.slice_tile("gru", 129, dtype="fp32") == rp.SliceTile(1, 8, 256, 8, rowwise=True)
    assert rp.slice_tile("lstm", 257, dtype="bf16") == rp.SliceTile(1, 8, 512, 8, rowwise=True)
    assert rp.slice_tile("lstm", 1000, dtype="fp16") == rp.SliceTile(1, 8, 1024, 8, rowwise=True)
    assert rp.slice_tile("lstm", 1000, dtype="fp32") == rp.SliceTile(1, 4, 1024, 4, rowwise=True)
    assert rp.slice_tile("rnn_relu", 700, dtype="fp32") == rp.SliceTile(1, 8, 1024, 8, rowwise=True)
    for code, widths in rp.SLICE_WARPS.items():
        cell = {rp.RNN: "rnn_tanh", rp.LSTM: "lstm", rp.GRU: "gru"}[code]
        assert all(2 * rp.slice_bytes(cell, width) <= rp.MAX_SHARED_PER_PROGRAM for width in widths)
        for dtype, wide in rp.ROWWISE_SLICES[code].items():
            assert min(wide) > max(widths)  # the tl.dot slices come first, the wide ones after
            assert all(rp.slice_bytes(cell, width, block_h) <= rp.ROWWISE_BUDGET_BYTES
                       for width, (block_h, *_) in wide.items())


def test_a_slice_past_the_register_budget_is_refused(monkeypatch):
    monkeypatch.setitem(rp.ROWWISE_SLICES, rp.LSTM, {"fp16": {2048: (8, 8, 8)}})
    assert rp.slice_tile("lstm", 2000, dtype="fp16") is None  # 4 x 2048 x 8 x 4 bytes > 128 KiB
    monkeypatch.setitem(rp.ROWWISE_SLICES, rp.LSTM, {"fp16": {2048: (4, 8, 8)}})
    assert rp.slice_tile("lstm", 2000, dtype="fp16") == rp.SliceTile(1, 4, 2048, 8, rowwise=True)


# The wide builds the rule picks for 512 < H <= 1024 as the compile gate measured them (Triton
# 3.6): (registers, shared bytes, warps) on sm_90 (H100, H200) and sm_80 (A100), forward and
# backward.
WIDE_1024_BUILDS = {
    ("gru", "bf16", False): {90: (225, 8192, 8), 80: (251, 8192, 8)},
    ("gru", "bf16", True): {90: (226, 4096, 8), 80: (216, 4096, 8)},
    ("gru", "fp16", False): {90: (225, 8192, 8), 80: (220, 8192, 8)},
    ("gru", "fp16", True): {90: (226, 4096, 8), 80: (216, 4096, 8)},
    ("gru", "fp32", False): {90: (222, 8192, 8), 80: (220, 8192, 8)},
    ("gru", "fp32", True): {90: (226, 4096, 8), 80: (224, 4096, 8)},
    ("lstm", "bf16", False): {90: (255, 8192, 8), 80: (255, 8192, 8)},
    ("lstm", "bf16", True): {90: (248, 4096, 8), 80: (248, 4096, 8)},
    ("lstm", "fp16", False): {90: (255, 8192, 8), 80: (255, 8192, 8)},
    ("lstm", "fp16", True): {90: (248, 4096, 8), 80: (248, 4096, 8)},
    ("lstm", "fp32", False): {90: (255, 2048, 4), 80: (255, 2048, 4)},
    ("lstm", "fp32", True): {90: (242, 2048, 4), 80: (248, 2048, 4)},
    ("rnn_tanh", "bf16", False): {90: (119, 8192, 8), 80: (126, 8192, 8)},
    ("rnn_tanh", "bf16", True): {90: (102, 4096, 8), 80: (99, 4096, 8)},
    ("rnn_tanh", "fp16", False): {90: (119, 8192, 8), 80: (118, 8192, 8)},
    ("rnn_tanh", "fp16", True): {90: (102, 4096, 8), 80: (99, 4096, 8)},
    ("rnn_tanh", "fp32", False): {90: (118, 8192, 8), 80: (114, 8192, 8)},
    ("rnn_tanh", "fp32", True): {90: (104, 4096, 8), 80: (104, 4096, 8)},
}
DEVICES = {"H100": (H100, 90), "H200": (H200, 90), "A100": (A100, 80)}
# Where the wide layers run persistent, forward and backward: one program per SM at 8 warps and
# up to 255 registers (two at 4 warps), so the SM count sets the width. LSTM and GRU in fp16/bf16
# (8 units a program): 132 SMs hold H <= 1056, all of 1024; 108 SMs hold H <= 864. LSTM fp32
# (4 units, two programs per SM): 264 and 216 programs, the same widths. RNN (two programs of 8
# units per SM): all of 1024 everywhere. The batch size does not enter (each program loops over
# the batch rows and keeps only its slice across steps), nor does T below the counter's limit.
WIDE_PLANS = [
    ("lstm", 1024, "fp16", {"H100", "H200"}), ("lstm", 1024, "bf16", {"H100", "H200"}),
    ("lstm", 865, "fp16", {"H100", "H200"}), ("lstm", 864, "bf16", {"H100", "H200", "A100"}),
    ("lstm", 1024, "fp32", {"H100", "H200"}), ("lstm", 864, "fp32", {"H100", "H200", "A100"}),
    ("lstm", 865, "fp32", {"H100", "H200"}),
    ("gru", 1024, "fp16", {"H100", "H200"}), ("gru", 1024, "bf16", {"H100", "H200"}),
    ("gru", 1024, "fp32", {"H100", "H200"}), ("gru", 800, "bf16", {"H100", "H200", "A100"}),
    ("gru", 513, "fp32", {"H100", "H200", "A100"}),
    ("rnn_tanh", 1024, "fp16", {"H100", "H200", "A100"}), ("rnn_tanh", 1024, "fp32", {"H100", "H200", "A100"}),
    ("rnn_tanh", 600, "bf16", {"H100", "H200", "A100"}),
]


@pytest.mark.parametrize("cell,H,dtype,persistent_on", WIDE_PLANS,
                         ids=[f"{cell}-H{H}-{dtype}" for cell, H, dtype, _ in WIDE_PLANS])
def test_wide_layers_run_persistent_where_the_device_holds_every_slice(cell, H, dtype, persistent_on):
    for name, (device, target) in DEVICES.items():
        for backward in (False, True):
            registers, shared, warps = WIDE_1024_BUILDS[(cell, dtype, backward)][target]
            tile = rp.slice_tile(cell, H, dtype=dtype, backward=backward)
            assert tile.rowwise and tile.hp == 1024 and tile.num_warps == warps
            kernel = rp.KernelResources(registers=registers, shared=shared, spills=0, num_warps=warps)
            plan = rp.plan_launch(cell, H, 1000, dtype=dtype, device=device, kernel=kernel, backward=backward)
            slices = -(-H // tile.block_h)
            if name in persistent_on:
                assert plan == rp.Plan(True, slices, False, plan.reason), (name, backward)
            else:
                assert not plan.persistent and f"{slices} slices > " in plan.reason, (name, backward)


def test_grid_larger_than_the_resident_programs():
    plan = rp.plan_launch("lstm", 256, 100, dtype="fp32", device=A100, kernel=LARGE_SHARED, backward=True)
    assert not plan.persistent and "16 slices > 0 resident" in plan.reason
    tiny = rp.DeviceLimits(sm_count=3)  # 3 SMs x 1 program < 16 slices
    assert not rp.plan_launch("lstm", 256, 100, dtype="fp32", device=tiny, kernel=LARGE_SHARED).persistent
    assert rp.plan_launch("lstm", 48, 100, dtype="fp32", device=tiny, kernel=LARGE_SHARED).programs == 3  # 3 fit
    forced = rp.plan_launch("lstm", 256, 100, dtype="fp32", switch="1", device=tiny, kernel=LARGE_SHARED)
    assert forced == rp.Plan(True, 1, True, forced.reason)  # forced: one program over every slice


def test_spilling_kernel_and_counter_overflow_take_the_per_step_path():
    spilling = rp.KernelResources(registers=255, shared=0, spills=8, num_warps=4)
    assert "spills 8 bytes" in rp.plan_launch("gru", 64, 10, dtype="fp32", device=H100, kernel=spilling).reason
    assert not rp.plan_launch("gru", 64, 10, dtype="fp32", device=H100, kernel=spilling).persistent
    assert not rp.plan_launch("rnn_tanh", 512, 2**31 // 32, dtype="fp32", device=H100, kernel=SMALL).persistent
    assert rp.plan_launch("rnn_tanh", 512, 2**31 // 32 - 1, dtype="fp32", device=H100, kernel=SMALL).persistent


def test_switch_interpreter_and_cells():
    assert not rp.plan_launch("lstm", 64, 10, dtype="fp32", switch="0", device=H100, kernel=SMALL).persistent
    forced = rp.plan_launch("lstm", 64, 10, dtype="fp32", switch="1", interpreting=True)
    assert forced == rp.Plan(True, 1, True, "interpreter")
    assert not rp.plan_launch("lstm", 64, 10, dtype="fp32", interpreting=True).persistent
    assert not rp.plan_launch("gru", 64, 10, dtype="fp32", linear_before_reset=False, switch="1",
                              interpreting=True).persistent
    assert not rp.plan_launch("transformer", 64, 10, dtype="fp32", switch="1", interpreting=True).persistent
    with pytest.raises(ValueError, match="device limits"):
        rp.plan_launch("lstm", 64, 10, dtype="fp32")


def test_device_limits_come_from_the_device_properties(monkeypatch):
    from types import SimpleNamespace

    h200 = SimpleNamespace(multi_processor_count=132, regs_per_multiprocessor=65536, major=9, minor=0,
                           shared_memory_per_multiprocessor=233472, max_threads_per_multi_processor=2048)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: h200)
    assert rp.device_limits(torch.device("cuda", 0)) == rp.DeviceLimits(
        sm_count=132, registers_per_sm=65536, shared_per_sm=233472, max_threads_per_sm=2048, max_blocks_per_sm=32)
    ada = SimpleNamespace(**{**vars(h200), "major": 8, "minor": 9, "multi_processor_count": 128})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: ada)
    assert rp.device_limits(torch.device("cuda", 0)).max_blocks_per_sm == 24
    # Compiled launches are cooperative where this Triton can: the driver refuses a grid that
    # cannot be resident instead of letting the barrier wait forever.
    assert rp._cooperative() == {"launch_cooperative_grid": True}


def test_compile_gate_covers_every_tile_the_rule_picks():
    built = {(case.name, case.tags["dtype"], int(case.tags["hp"]), case.num_warps, int(case.tags["block_h"]),
              case.tags["products"]) for case in rp.compile_cases()}
    for cell, name in (("rnn_tanh", "rnn"), ("gru", "gru"), ("lstm", "lstm")):
        for H in range(1, 1100, 7):
            for kernel in ("forward", "backward"):
                for dtype in ("fp32", "fp16", "bf16"):
                    tile = rp.slice_tile(cell, H, dtype=dtype, backward=kernel == "backward")
                    case = (f"rnn_persistent_{kernel}[{name}]", dtype, tile and tile.hp, tile and tile.num_warps,
                            tile and tile.block_h, tile and ("rowwise" if tile.rowwise else "dot"))
                    assert tile is None or case in built


# ---------------------------------------------------------------------------------------------
# The grid barrier, simulated: the protocol of ``_grid_barrier`` (arrive: integer atomic add;
# spin: atomic reads until the count reaches phase * programs) with every interleaving a random
# scheduler picks. Each yield is a point where another program may run.


class _Memory:
    def __init__(self, programs: int, steps: int):
        self.count = 0
        self.arrived = [0] * programs  # how many times each program has arrived
        self.written = [[False] * programs for _ in range(steps)]  # its part of each step


def _monotone_barrier(memory: _Memory, pid: int, phase: int, programs: int):
    memory.count += 1  # tl.atomic_add(bar, 1): one indivisible step
    memory.arrived[pid] += 1
    yield
    while memory.count < phase * programs:  # tl.atomic_add(bar, 0) < phase * programs
        yield


def _resetting_barrier(memory: _Memory, pid: int, phase: int, programs: int):
    """The broken classic: the last arriver resets the count, the others wait for the reset."""
    memory.count += 1
    memory.arrived[pid] += 1
    if memory.count == programs:
        memory.count = 0
        return
    yield
    while memory.count != 0:
        yield


def _program(memory: _Memory, pid: int, programs: int, steps: int, barrier, violations: list):
    for step in range(steps):
        memory.written[step][pid] = True  # its slice of step `step`
        yield
        yield from barrier(memory, pid, step + 1, programs)
        # Past the barrier of step `step`: everyone has arrived and written that step.
        if min(memory.arrived) < step + 1 or not all(memory.written[step]):
            violations.append((pid, step))
        yield


def _simulate(barrier, programs: int, steps: int, seed: int, max_ticks: int = 20_000) -> tuple[bool, list]:
    """(finished, violations): runs the programs under a random scheduler until all finish or
    ``max_ticks`` pass (a deadlock: a correct barrier finishes in far fewer)."""
    schedule = random.Random(seed)
    memory, violations = _Memory(programs, steps), []
    running = {pid: _program(memory, pid, programs, steps, barrier, violations) for pid in range(programs)}
    for _ in range(max_ticks):
        if not running:
            return True, violations
        pid = schedule.choice(sorted(running))
        try:
            next(running[pid])
        except StopIteration:
            del running[pid]
    return not running, violations


@pytest.mark.parametrize("programs", [1, 2, 3, 5, 8])
def test_grid_barrier_never_lets_a_program_pass_early_and_never_deadlocks(programs):
    for seed in range(150):
        steps = 1 + seed % 6
        finished, violations = _simulate(_monotone_barrier, programs, steps, seed)
        assert finished, f"deadlock: {programs} programs, {steps} steps, seed {seed}"
        assert not violations, f"passed early: {violations[:3]} (seed {seed})"


def test_the_simulation_catches_a_broken_barrier():
    """A counter reset by the last arriver: a fast program's next arrival can hide the reset from
    a slow spinner. The simulation must find such interleavings, or it proves nothing."""
    failures = 0
    for seed in range(200):
        finished, violations = _simulate(_resetting_barrier, 3, 4, seed, max_ticks=3000)
        failures += (not finished) or bool(violations)
    assert failures > 0


def test_specialization_key_separates_what_triton_specialises_on():
    aligned = torch.zeros(8, dtype=torch.float32)
    offset = aligned[1:]  # 4 bytes past a 16-byte boundary
    key = rp.specialization_key
    assert key((aligned, 32, 0.5, None)) == key((torch.ones(8), 48, 0.25, None))
    assert key((aligned,)) != key((offset,))
    assert key((aligned,)) != key((aligned.half(),))
    assert key((1,)) != key((2,)) and key((16,)) != key((17,)) and key((17,)) == key((19,))


def test_compiled_launch_warms_up_and_reads_the_device_once_per_specialisation(monkeypatch):
    # The compiled path (not the interpreter's) with a stand-in kernel and device: the second
    # identical call must reuse the resources and limits, and launch the planned grid each time.
    calls = {"warmup": 0, "limits": 0, "grids": [], "constants": []}

    class Kernel:
        fn = rp.rnn_persistent_forward_kernel.fn

        def warmup(self, *args, **kwargs):
            calls["warmup"] += 1
            return object()

        def __getitem__(self, grid):
            calls["grids"].append(grid)
            return lambda *args, **kwargs: calls["constants"].append(kwargs)

    def limits(device):
        calls["limits"] += 1
        return H100

    monkeypatch.setattr(rp, "_RESOURCES", {})
    monkeypatch.setattr(rp, "_DEVICE_LIMITS", {})
    monkeypatch.setattr(rp, "device_limits", limits)
    monkeypatch.setattr(rp, "_resources", lambda compiled, warps: SMALL)
    monkeypatch.setattr(rp, "_cooperative", lambda: {})
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "auto")
    args = (torch.zeros(4), torch.zeros(4), 100, 64)
    for _ in range(2):
        assert rp._launch(Kernel(), args, "lstm", 64, 100, torch.float16, True, interpreting=False,
                          backward=False)
    assert calls["warmup"] == 1 and calls["limits"] == 1
    assert calls["grids"] == [(4,), (4,)]  # one program per 16-unit slice of H=64
    assert not calls["constants"][0]["ROWWISE"] and calls["constants"][0]["BLOCK_H"] == 16
    # A wide layer: its own binary (one more warmup), 8-unit row-wise slices, 128 programs.
    assert rp._launch(Kernel(), args, "lstm", 1024, 100, torch.bfloat16, True, interpreting=False, backward=True)
    assert calls["warmup"] == 2 and calls["grids"][-1] == (128,)
    assert {k: calls["constants"][-1][k] for k in ("ROWWISE", "BLOCK_B", "BLOCK_H", "HP", "num_warps")} == {
        "ROWWISE": True, "BLOCK_B": 1, "BLOCK_H": 8, "HP": 1024, "num_warps": 8}
