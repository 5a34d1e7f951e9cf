"""The persistent recurrent kernels with multi-head (block-diagonal) recurrent weights, ``heads=``
(gpukernels/triton/rnn_persistent.py, issue 14): the kernels take the compact ``w_hh`` (G*H,
H // heads), cut their slices head by head, keep only their head's block on chip and read only
their head's state columns (backward: gate gradients).

* Against the float64 reference through the public layer ops (forced on with
  GPUKERNELS_RNN_PERSISTENT=1; without a GPU the interpreter's one-program path over every
  slice): every persistent cell, fp32/fp16/bf16, heads 2 and 4 (heads=1 is
  tests/test_rnn_persistent.py, unchanged), reverse, lengths, every gradient (x, h0, c0, w_ih, the
  compact w_hh, both biases, peepholes), both slice kinds (the row-wise one forced at small widths
  as in test_rnn_persistent.py), heads whose width the slice width divides, heads it does not (a
  head's last slice masked) and heads narrower than one slice. Spies: the kernels got the compact
  weight and its width, no per-step kernel ran, no dense matrix was formed.
* The launch rule with heads (the tile of one head's width, slices counted per head), the
  compile gate's coverage, and the bytes model.
"""

from __future__ import annotations

import pytest
import torch

import gpukernels as gk
from conftest import DEVICE, HAS_CUDA
from gpukernels import _rnn_driver as driver
from gpukernels.triton import rnn as triton_rnn
from gpukernels.triton import rnn_persistent as rp
from _helpers import as_float64, assert_close, random_tensor
from test_rnn_heads import GATES, KINDS, SHORT, _arrays, _run_gk, _run_on_device_against_reference
from test_rnn_persistent import A100, H200, SMALL, WIDE_1024_BUILDS, _small_rowwise_tables

# Where each persistent kernel takes w_hh and HEAD among its positional arguments.
_ARGUMENTS = {"rnn_persistent_forward_kernel": (3, 13), "rnn_persistent_backward_kernel": (6, 15)}


class _Recorder:
    """Stands in for a @triton.jit kernel: records each launch's grid, weight shape, HEAD and
    constants, then launches the real kernel."""

    def __init__(self, kernel, w_index: int | None = None, head_index: int | None = None):
        self.kernel, self.w_index, self.head_index, self.launches = kernel, w_index, head_index, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            record = {"grid": tuple(grid), **kwargs}
            if self.w_index is not None:
                record.update(w=tuple(args[self.w_index].shape), HEAD=args[self.head_index])
            self.launches.append(record)
            return self.kernel[grid](*args, **kwargs)
        return launch

    def __getattr__(self, name):  # warmup and the rest go to the kernel
        return getattr(self.kernel, name)


@pytest.fixture
def spies(monkeypatch):
    """Recorders on both persistent and both per-step kernels, and on the one maker of a dense
    block-diagonal matrix (``_rnn_driver.block_diagonal``); the persistent path forced on."""
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    kernels = {}
    for name, (w_index, head_index) in _ARGUMENTS.items():
        kernels[name] = _Recorder(getattr(rp, name), w_index, head_index)
        monkeypatch.setattr(rp, name, kernels[name])
    for name in ("rnn_step_kernel", "rnn_backward_step_kernel"):
        kernels[name] = _Recorder(getattr(triton_rnn, name))
        monkeypatch.setattr(triton_rnn, name, kernels[name])
    formed = []

    def record(ops, w, gates, heads, _real=driver.block_diagonal):
        formed.append((tuple(w.shape), gates, heads))
        return _real(ops, w, gates, heads)

    monkeypatch.setattr(driver, "block_diagonal", record)
    return kernels, formed


def _assert_compact_persistent_launches(spies, kind: str, H: int, heads: int, *, rowwise: bool, block_h: int,
                                        hp: int) -> None:
    """Two forward launches (the public backward recomputes the forward) and one backward, each
    given the compact weight and its head width; no per-step kernel; nothing dense formed."""
    kernels, formed = spies
    G = GATES[KINDS[kind][0]]
    assert len(kernels["rnn_persistent_forward_kernel"].launches) == 2
    assert len(kernels["rnn_persistent_backward_kernel"].launches) == 1
    assert not kernels["rnn_step_kernel"].launches and not kernels["rnn_backward_step_kernel"].launches
    assert formed == []
    for name in _ARGUMENTS:
        for launch in kernels[name].launches:
            assert launch["w"] == (G * H, H // heads) and launch["HEAD"] == H // heads, (name, launch["w"])
            assert (launch["ROWWISE"], launch["BLOCK_H"], launch["HP"]) == (rowwise, block_h, hp), name
            assert launch["PER_HEAD"] == (heads > 1)  # heads=1: the dense layer's build
            if not HAS_CUDA:  # the interpreter: one program over every slice of every head
                assert launch["grid"] == (1,) and launch["SLICE_LOOP"]


DIRECTIONS = [pytest.param(False, None, id="forward"), pytest.param(True, (4, 1, 3), id="reverse-lengths")]

# (kind, dtype, H, heads) on the 16-unit tl.dot slices: heads of 16 and 32 units (the slice width
# divides them), of 24 and 12 (a head's last slice is masked) and of 8 and 6 (narrower than one
# slice); every cell kind, every dtype.
DOT_CASES = [("rnn_tanh", "float32", 32, 2), ("rnn_tanh", "float16", 24, 4), ("rnn_relu", "float16", 48, 2),
             ("rnn_relu", "bfloat16", 64, 4), ("lstm", "bfloat16", 32, 4), ("lstm", "float32", 64, 2),
             ("lstm_peep", "float32", 48, 4), ("lstm_coupled", "float16", 32, 2),
             ("lstm_peep_coupled", "bfloat16", 48, 2), ("lstm_peep_coupled", "float32", 64, 4),
             ("gru", "float32", 48, 2), ("gru", "float16", 32, 4), ("gru", "bfloat16", 64, 2)]


@pytest.mark.parametrize("reverse,lengths", DIRECTIONS)
@pytest.mark.parametrize("kind,dtype,H,heads", [
    pytest.param(*c, id=f"{c[0]}-T4-B3-H{c[2]}-heads{c[3]}-{SHORT[c[1]]}") for c in DOT_CASES])
def test_dot_slices_multiply_the_compact_blocks(kind, dtype, H, heads, reverse, lengths, rng, spies):
    _run_on_device_against_reference("triton", kind, dtype, 4, 3, H, heads, reverse, lengths, rng, DEVICE)
    cell = "lstm" if kind.startswith("lstm") else kind
    hp = rp.slice_tile(cell, H, dtype=SHORT[dtype], heads=heads).hp
    assert hp == max(16, 1 << (H // heads - 1).bit_length())  # one head's width, not H
    _assert_compact_persistent_launches(spies, kind, H, heads, rowwise=False, block_h=rp.BLOCK_H, hp=hp)


# (kind, dtype, H, heads, units per program) on the wide row-wise slices, forced at widths the
# interpreter affords (test_rnn_persistent._small_rowwise_tables: 8, 16, 32, 64 wide): heads of
# 12 units over 4-unit slices (divides) and over 8-unit ones (masked last slice), of 8 (one
# slice), 20 and 24 (masked), 6 (narrower than a slice); every cell kind and dtype.
ROWWISE_CASES = [("lstm_peep_coupled", "float32", 24, 2, 4), ("lstm", "float16", 24, 2, 8),
                 ("lstm_coupled", "bfloat16", 32, 2, 8), ("lstm_peep", "bfloat16", 48, 4, 4),
                 ("gru", "bfloat16", 32, 4, 8), ("gru", "float32", 24, 4, 8), ("gru", "float16", 40, 2, 8),
                 ("rnn_relu", "float32", 40, 2, 8), ("rnn_tanh", "bfloat16", 48, 2, 8),
                 ("rnn_tanh", "float16", 32, 4, 4)]


@pytest.mark.parametrize("reverse,lengths", DIRECTIONS)
@pytest.mark.parametrize("kind,dtype,H,heads,block_h", [
    pytest.param(*c, id=f"{c[0]}-T4-B3-H{c[2]}-heads{c[3]}-{SHORT[c[1]]}-units{c[4]}") for c in ROWWISE_CASES])
def test_rowwise_slices_multiply_the_compact_blocks(kind, dtype, H, heads, block_h, reverse, lengths, rng,
                                                    monkeypatch, spies):
    _small_rowwise_tables(monkeypatch, block_h)
    _run_on_device_against_reference("triton", kind, dtype, 4, 3, H, heads, reverse, lengths, rng, DEVICE)
    hp = max(8, 1 << (H // heads - 1).bit_length())
    _assert_compact_persistent_launches(spies, kind, H, heads, rowwise=True, block_h=block_h, hp=hp)


@pytest.mark.parametrize("kind,rowwise", [("lstm_peep_coupled", False), ("gru", True), ("rnn_relu", False)])
def test_a_batch_past_one_tile(kind, rowwise, rng, monkeypatch, spies):
    """B=17: the products' (and backward's pointwise) 16-row batch tiles loop twice."""
    if rowwise:
        _small_rowwise_tables(monkeypatch, 8)
    _run_on_device_against_reference("triton", kind, "float32", 3, 17, 40, 2, False, None, rng, DEVICE)
    _assert_compact_persistent_launches(spies, kind, 40, 2, rowwise=rowwise, block_h=8 if rowwise else 16, hp=32)


@pytest.mark.skipif(HAS_CUDA, reason="runs the held-slice code in the interpreter")
@pytest.mark.parametrize("rowwise", [False, True], ids=["dot", "rowwise"])
@pytest.mark.parametrize("kind", ["lstm_peep_coupled", "gru", "rnn_relu"])
def test_one_program_holds_its_heads_block_and_writes_only_its_heads_units(kind, rowwise, rng, monkeypatch, spies):
    """The compiled path's code (SLICE_LOOP=False: a slice per program, its block loaded once
    before the time loop, the head from the grid's second axis), run as the grid's program
    (0, 0) alone: H=12 in heads of 6 units, narrower than the slice (16, or 8 row-wise), so the
    slice's lanes past its head would be the next head's units. Outputs poisoned (NaN): head 0
    must match the reference (the heads are independent) and nothing of head 1 may be written,
    forward (y, h_n) or backward (grad_h0 keeps grad_h_n there)."""
    if rowwise:
        _small_rowwise_tables(monkeypatch, 8)
    monkeypatch.setattr(rp, "plan_launch", lambda *a, **k: rp.Plan(True, 1, False, "test"))
    monkeypatch.setattr(rp, "_grid", lambda programs, heads, slice_loop: (1, 1))
    real_empty = triton_rnn._TorchBackend.empty
    monkeypatch.setattr(triton_rnn._TorchBackend, "empty", lambda self, shape, dtype: real_empty(
        self, shape, dtype).fill_(float("nan")) if dtype.is_floating_point else real_empty(self, shape, dtype))
    H, head, T, B = 12, 6, 4, 3
    a = _arrays(rng, kind, T, B, 4, H, 2, lambda shape, scale: random_tensor(rng, shape, "float32", DEVICE, scale))
    with gk.use_backend("triton"):
        outputs, grads = _run_gk(kind, a, 2, True, (4, 1, 3))
    want_outputs, want_grads = _run_gk(kind, {k: None if v is None else as_float64(v) for k, v in a.items()}, 2, True,
                                       (4, 1, 3))
    for got, want in zip(outputs[:2], want_outputs[:2]):  # y, h_n
        assert_close(got[..., :head], want[..., :head], "float32", "reduction")
        assert torch.isnan(got[..., head:]).all()
    assert_close(grads[1][:, :head], want_grads[1][:, :head], "float32", "reduction")
    assert torch.equal(grads[1][:, head:], a["gh"][:, head:])
    kernels, _ = spies
    launches = [launch for name in _ARGUMENTS for launch in kernels[name].launches]
    assert len(launches) == 3 and all(launch["grid"] == (1, 1) and not launch["SLICE_LOOP"] and launch["PER_HEAD"]
                                      for launch in launches)


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's default")
def test_heads_under_the_step_kernels_width_expand_only_for_the_per_step_path(rng, monkeypatch, spies):
    """auto under the interpreter declines the persistent path: the step kernel, which takes no
    head under 16 units, then gets the dense matrix (once per layer forward; the backward's
    products stay per head). Forced, the same layer formed nothing (the cases above)."""
    kernels, formed = spies
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "auto")
    _run_on_device_against_reference("triton", "lstm", "float32", 3, 2, 16, 2, True, (3, 1), rng, DEVICE)
    assert not kernels["rnn_persistent_forward_kernel"].launches
    assert formed == [((4 * 16, 8), 4, 2)] * 2
    assert len(kernels["rnn_step_kernel"].launches) == 2 * 3


# ---------------------------------------------------------------------------------------------
# The launch rule with heads


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_the_tile_is_that_of_one_heads_width(cell, dtype):
    """With heads, the tile of a layer one head wide, except where that width's multi-head build
    spills (PER_HEAD_SPILLS): then the next width, or none past the widest."""
    code = rp.PERSISTENT_CELLS[cell]
    widths = sorted(rp.SLICE_WARPS[code]) + sorted(rp.ROWWISE_SLICES[code][dtype])
    for backward in (False, True):
        spills = rp.PER_HEAD_SPILLS.get((code, backward, dtype), ())
        for H in range(1, 4200, 13):
            for heads in (2, 3, 4, 8, 16):
                if H % heads:
                    continue
                tile = rp.slice_tile(cell, H, dtype=dtype, heads=heads, backward=backward)
                width = next((w for w in widths if w >= H // heads and w not in spills), None)
                if width is None:
                    assert tile is None, (H, heads)
                else:
                    assert tile == rp.slice_tile(cell, width, dtype=dtype, backward=backward), (H, heads)
                if rp.slice_tile(cell, H // heads, dtype=dtype, backward=backward) not in (None, tile):
                    assert rp.slice_tile(cell, H // heads, dtype=dtype, backward=backward).hp in spills


def test_heads_shrink_the_slice_and_widen_the_layers_that_run_persistent():
    # LSTM H=1024 fp16: heads=1 holds 8 units x 1024 columns (x 4 gates, fp32: 128 KiB of
    # registers); heads=4 a 16-unit tl.dot slice of 256 columns (64 KiB), heads=8 128 columns.
    assert rp.slice_tile("lstm", 1024, dtype="fp16") == rp.SliceTile(1, 8, 1024, 8, rowwise=True)
    assert rp.slice_tile("lstm", 1024, dtype="fp16", heads=4) == rp.SliceTile(16, 16, 256, 8)
    assert rp.slice_bytes("lstm", 256) == rp.slice_bytes("lstm", 1024, 8) // 2
    assert rp.slice_tile("lstm", 1024, dtype="fp16", heads=8).hp == 128
    # its backward: the 256-wide multi-head tl.dot build spills, the 512-wide row-wise one does not
    assert rp.slice_tile("lstm", 1024, dtype="fp16", heads=4, backward=True) == rp.SliceTile(1, 8, 512, 8, True)
    # Past H=1024 only with heads: H=2048 in heads of 1024 (the fp32 4-unit wide slices; the
    # fp16/bf16 8-unit multi-head build spills) or of 128 (tl.dot).
    assert rp.slice_tile("lstm", 2048, dtype="fp32") is None
    assert rp.slice_tile("lstm", 2048, dtype="fp32", heads=2) == rp.SliceTile(1, 4, 1024, 4, rowwise=True)
    assert rp.slice_tile("lstm", 2048, dtype="fp16", heads=2) is None
    assert rp.slice_tile("lstm", 2048, dtype="bf16", heads=16) == rp.SliceTile(16, 16, 128, 8)
    assert rp.slice_tile("gru", 4096, dtype="bf16", heads=16).hp == 256
    assert rp.slice_tile("lstm", 4096, dtype="fp32", heads=2) is None  # heads of 2048: none that wide


def test_slices_are_counted_per_head():
    tile = rp.slice_tile("lstm", 48, dtype="fp32", heads=2)  # heads of 24 units: 16 + 8 (masked)
    assert rp.slice_count(48, 2, tile) == 4 and rp.slice_count(48, 1, rp.slice_tile("lstm", 48, dtype="fp32")) == 3
    assert rp.slice_count(64, 4, rp.slice_tile("lstm", 64, dtype="fp32", heads=4)) == 4  # 16 units: one each
    assert rp.slice_count(32, 4, rp.slice_tile("gru", 32, dtype="fp32", heads=4)) == 4  # 8 units: half a slice
    plan = rp.plan_launch("lstm", 48, 10, dtype="fp32", device=H200, kernel=SMALL, heads=2)
    assert plan == rp.Plan(True, 4, False, plan.reason)
    forced = rp.plan_launch("lstm", 48, 10, dtype="fp32", switch="1", interpreting=True, heads=2)
    assert forced == rp.Plan(True, 1, True, "interpreter")


@pytest.mark.parametrize("device", [H200, A100], ids=["H200", "A100"])
def test_a_layer_past_1024_runs_persistent_where_its_head_slices_are_resident(device):
    """LSTM H=2048 fp32 in 2 heads of 1024: the 1024-wide 4-unit row-wise build (the gate's
    numbers, two programs of 4 warps per SM) in 2 x 256 = 512 programs, more than either device
    holds. In 16 heads of 128: 16-unit tl.dot slices, 8 per head, 128 programs of a small build."""
    for backward in (False, True):
        registers, shared, warps = WIDE_1024_BUILDS[("lstm", "fp32", backward)][90 if device is H200 else 80]
        wide = rp.KernelResources(registers=registers, shared=shared, spills=0, num_warps=warps)
        plan = rp.plan_launch("lstm", 2048, 100, dtype="fp32", device=device, kernel=wide, backward=backward, heads=2)
        assert not plan.persistent and "512 slices > " in plan.reason
        plan = rp.plan_launch("lstm", 2048, 100, dtype="fp32", device=device, kernel=SMALL, backward=backward,
                              heads=16)
        assert plan == rp.Plan(True, 128, False, plan.reason)
    assert rp._grid(128, 16, False) == (8, 16) and rp._grid(128, 1, False) == (128,)
    assert rp._grid(1, 16, True) == (1,)


def test_compile_gate_covers_every_tile_the_rule_picks_with_heads():
    built = {(case.name, case.tags["dtype"], int(case.tags["hp"]), case.num_warps, int(case.tags["block_h"]),
              case.tags["products"], case.tags["heads"]) for case in rp.compile_cases()}
    for cell, name in (("rnn_tanh", "rnn"), ("gru", "gru"), ("lstm", "lstm")):
        for H in range(2, 4200, 22):
            for heads in (2, 4, 8):
                if H % heads:
                    continue
                for kernel in ("forward", "backward"):
                    for dtype in ("fp32", "fp16", "bf16"):
                        tile = rp.slice_tile(cell, H, dtype=dtype, backward=kernel == "backward", heads=heads)
                        if tile is not None:
                            assert (f"rnn_persistent_{kernel}[{name}]", dtype, tile.hp, tile.num_warps, tile.block_h,
                                    "rowwise" if tile.rowwise else "dot", "many") in built
    # HEAD is a runtime argument, never specialised: one build per tile stands for every head width
    assert "HEAD" in rp._RUNTIME_ONLY


# ---------------------------------------------------------------------------------------------
# The bytes model

MIB = 2**20


def test_bytes_model_without_heads_is_the_readmes_table():
    rows = {("lstm", 1024, "fp16", 8): (800, 8, 128, 4), ("lstm", 1024, "fp16", 32): (800, 8, 128, 16),
            ("lstm", 1024, "fp16", 128): (1600, 8, 128, 64), ("lstm", 1024, "fp32", 32): (1600, 16, 256, 32),
            ("gru", 1024, "bf16", 32): (600, 6, 128, 16), ("lstm", 512, "fp16", 32): (200, 2, 64, 4)}
    for (cell, H, dtype, B), want in rows.items():
        t = rp.traffic(cell, H, B, 100, dtype=dtype)
        assert (t.w_hh_step_path / MIB, t.w_hh_persistent / MIB, t.programs, t.exchange_forward / MIB) == want
    assert rp.traffic("lstm", 1024, 32, 100, dtype="fp16").exchange_backward == 64 * MIB
    assert rp.traffic("lstm", 2048, 32, 100, dtype="fp16") is None


def test_bytes_model_with_heads_counts_the_compact_weight_and_one_heads_exchange():
    one = rp.traffic("lstm", 1024, 32, 100, dtype="fp16")
    # heads=4: heads of 256 units, 16-unit tl.dot slices forward, 8-unit row-wise ones backward
    # (the 256-wide multi-head backward build spills: PER_HEAD_SPILLS)
    for heads, programs, programs_backward in ((2, 128, 128), (4, 64, 128), (8, 64, 64)):
        t = rp.traffic("lstm", 1024, 32, 100, dtype="fp16", heads=heads)
        assert (t.programs, t.programs_backward) == (programs, programs_backward)
        assert t.w_hh_persistent * heads == one.w_hh_persistent and t.w_hh_step_path * heads == one.w_hh_step_path
        assert t.exchange_forward == programs * 32 * (1024 // heads) * 4
        assert t.exchange_backward == programs_backward * 32 * 4 * (1024 // heads) * 4
        assert t.exchange_forward * heads <= one.exchange_forward
        assert t.exchange_backward * heads <= one.exchange_backward
    assert rp.traffic("lstm", 2048, 32, 100, dtype="fp16", heads=2) is None  # its forward build spills
    # Heads under the step kernel's 16 units: its per-step path reads the dense expansion.
    t = rp.traffic("gru", 64, 4, 10, dtype="fp32", heads=8)
    assert t.w_hh_persistent == 3 * 64 * 8 * 4 and t.w_hh_step_path == 10 * 3 * 64 * 64 * 4
    assert t.programs == 8 and t.exchange_forward == 8 * 4 * 8 * 4


def test_the_bytes_table_prints_the_model(capsys):
    from gpukernels.benchmarks import rnn as bench_rnn

    bench_rnn.main(["--persistent-bytes"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 4 * len(bench_rnn.PERSISTENT_BYTES_LAYERS)
    assert "| LSTM | 1024 | fp16 | 32 | 1 | 800 MiB | 8 MiB | 128/128 | 16 MiB | 64 MiB |" in lines
    assert "| LSTM | 1024 | fp16 | 32 | 4 | 200 MiB | 2 MiB | 64/128 | 2 MiB | 16 MiB |" in lines
