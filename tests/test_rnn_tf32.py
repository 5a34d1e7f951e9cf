"""TF32 for fp32 recurrent layers where torch's cuDNN RNN switch allows it (issue 14), proven
without a GPU:

* the reader (``rnn_tf32_allowed``) against every way torch sets the switch, legacy and fine-grained,
  in a fresh process (torch >= 2.9 refuses to read back a mix of the two APIs);
* the variant each launcher picks, recorded from its ``TF32`` constexpr: the per-step kernel and
  the persistent ``tl.dot`` slices take TF32 only for fp32 weights with the switch on; the wide
  row-wise slices never; a ``torch.compile``d graph reads the switch when it runs;
* the numbers: the kernels round both operands to TF32 themselves (``tf32_operand``), so Triton's
  interpreter, whose ``tl.dot`` ignores its precision, computes TF32's products: with the switch
  on, fp32 layers differ from the strict ones and stay within ``TF32_TOLERANCE`` of the float64
  reference, every gradient; off, they are bitwise the strict ones;
* the CUDA-graph key, the benchmark providers (each sets the switch for its own calls), the
  conftest fixture that pins strict fp32 for every other test, and the compile gate's TF32
  builds (tensor-core ``mma`` on sm_80 and sm_90, none in the strict fp32 builds, no spills).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

import gpukernels as gk
import gpukernels.torch.functional as GF
from _helpers import as_float64, assert_close, random_tensor
from conftest import DEVICE, HAS_CUDA
from gpukernels.benchmarks import registry
from gpukernels.benchmarks.rnn import rnn_tf32
from gpukernels.triton import rnn as triton_rnn
from gpukernels.triton import rnn_graph
from gpukernels.triton import rnn_persistent as rp
from gpukernels.triton._launch import rnn_tf32_allowed
from test_rnn_persistent import _small_rowwise_tables
from test_rnn_triton import _as64, _inputs, _layer

# TF32 keeps 10 of fp32's 23 mantissa bits, as fp16 does: DESIGN.md's fp16 bound (norm-wise,
# relative to the float64 reference). The interpreter's TF32 products (operands rounded to
# nearest, as the GPU kernels round them) stay under 5e-4 on every case below and on
# tests/test_gpu_rnn.py's sizes at PyTorch's initialisation scale (weights ~ 1/sqrt(H)); with
# saturating weights (scale 0.3 at H=257) TF32 reaches 1e-2 through the tanh derivatives,
# cuDNN's TF32 alike, so the TF32 cases use that scale.
TF32_TOLERANCE = 1e-3
FINE_GRAINED = hasattr(torch.backends.cudnn.rnn, "fp32_precision")  # torch >= 2.9


def weight_scale(H: int) -> float:
    """The standard deviation of PyTorch's initialisation of a recurrent layer of H units,
    U(-1/sqrt(H), 1/sqrt(H)): 1/sqrt(3H)."""
    return (3 * H) ** -0.5


# ---------------------------------------------------------------------------------------------
# The reader


# (statement run in order in one process, what cuDNN's RNN then reads: TF32 allowed?)
FINE_GRAINED_STEPS = [
    ("pass", True),  # torch's default
    ("torch.backends.cudnn.allow_tf32 = False", False),
    ("torch.backends.cudnn.allow_tf32 = True", True),
    ('torch.backends.cudnn.rnn.fp32_precision = "ieee"', False),
    ('torch.backends.cuda.matmul.fp32_precision = "tf32"', False),  # the matmul flag is another switch
    ('torch.backends.cudnn.conv.fp32_precision = "tf32"', False),  # so is the convolutions'
    ('torch.backends.cudnn.rnn.fp32_precision = "tf32"', True),
    ('torch.backends.cudnn.rnn.fp32_precision = "none"; torch.backends.cudnn.fp32_precision = "ieee"', False),
    ('torch.backends.cudnn.fp32_precision = "tf32"', True),  # "none" inherits cuDNN's
    ("torch.backends.cudnn.allow_tf32 = False", True),  # legacy False is "none": still cuDNN's "tf32"
    ('torch.backends.cudnn.fp32_precision = "none"; torch.backends.fp32_precision = "ieee"', False),
    ('torch.backends.fp32_precision = "tf32"', True),  # and then torch's
]
LEGACY_STEPS = FINE_GRAINED_STEPS[:3]


def test_the_reader_follows_every_way_torch_sets_the_rnn_switch():
    steps = FINE_GRAINED_STEPS if FINE_GRAINED else LEGACY_STEPS
    script = ["import torch", "from gpukernels.triton._launch import rnn_tf32_allowed"]
    for statement, _ in steps:
        script += [statement, "print(rnn_tf32_allowed())"]
    result = subprocess.run([sys.executable, "-c", "\n".join(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(allowed) for _, allowed in steps], list(zip(steps, result.stdout.split()))


def test_every_test_starts_with_strict_fp32_recurrent_products():
    """conftest's fixture: the switch off, set through the legacy API too, so torch can still
    read its legacy getter (``torch.backends.cudnn.flags`` does)."""
    assert not rnn_tf32_allowed()
    assert torch.backends.cudnn.allow_tf32 is False


@pytest.mark.skipif(not FINE_GRAINED, reason="torch < 2.9 has only the legacy switch")
def test_the_switch_context_puts_back_even_a_mixed_state():
    cudnn = torch.backends.cudnn
    with rnn_tf32(True):
        assert rnn_tf32_allowed() and cudnn.allow_tf32 and cudnn.rnn.fp32_precision == "tf32"
    assert not rnn_tf32_allowed() and cudnn.allow_tf32 is False
    before = cudnn.rnn.fp32_precision, cudnn.conv.fp32_precision
    cudnn.rnn.fp32_precision, cudnn.conv.fp32_precision = "ieee", "tf32"  # the legacy getter now raises
    try:
        with pytest.raises(RuntimeError):
            cudnn.allow_tf32
        with rnn_tf32(True):
            assert rnn_tf32_allowed()
        assert (cudnn.rnn.fp32_precision, cudnn.conv.fp32_precision) == ("ieee", "tf32")
    finally:
        cudnn.rnn.fp32_precision, cudnn.conv.fp32_precision = before


# ---------------------------------------------------------------------------------------------
# The variant each launcher picks


class _Recording:
    """Stands in for a @triton.jit kernel: records the keyword arguments (the constexprs) of
    every launch, runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def tf32(self) -> set:
        return {launch["TF32"] for launch in self.launches}


@pytest.fixture
def recorded(monkeypatch):
    kernels = {}
    for module, name in ((triton_rnn, "rnn_step_kernel"), (rp, "rnn_persistent_forward_kernel"),
                         (rp, "rnn_persistent_backward_kernel")):
        kernels[name] = _Recording(getattr(module, name))
        monkeypatch.setattr(module, name, kernels[name])
    return kernels


def _run_lstm(rng, dtype, T=3, B=2, H=5):
    a = _inputs(rng, "lstm", B, 3, H, dtype, T=T)
    gy = random_tensor(rng, (T, B, H), dtype, DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        return _layer("lstm", a, gy, None, None, False, None)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("allowed", [True, False], ids=["switch-on", "switch-off"])
def test_the_step_kernel_multiplies_in_tf32_where_torch_allows_it(allowed, dtype, rng, recorded):
    with rnn_tf32(allowed):
        _run_lstm(rng, dtype)
    assert recorded["rnn_step_kernel"].tf32() == {allowed and dtype == "float32"}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("allowed", [True, False], ids=["switch-on", "switch-off"])
def test_the_persistent_tl_dot_slices_take_tf32_the_row_wise_ones_never(allowed, dtype, rng, recorded, monkeypatch):
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    with rnn_tf32(allowed):
        _run_lstm(rng, dtype)
        for name in ("rnn_persistent_forward_kernel", "rnn_persistent_backward_kernel"):
            assert recorded[name].launches and recorded[name].tf32() == {allowed and dtype == "float32"}, name
            recorded[name].launches.clear()
        _small_rowwise_tables(monkeypatch, 4)  # the wide slices: no tensor-core product to give TF32
        _run_lstm(rng, dtype)
    for name in ("rnn_persistent_forward_kernel", "rnn_persistent_backward_kernel"):
        assert all(launch["ROWWISE"] for launch in recorded[name].launches)
        assert recorded[name].tf32() == {False}, name
    assert not recorded["rnn_step_kernel"].launches


def test_persistent_tf32_stops_where_its_builds_would_spill():
    """TF32 only on the slices whose TF32 build the gate passed, and the gate builds exactly those."""
    from gpukernels.tools.verify.triton_aot import config_label

    lstm_100 = rp.slice_tile("lstm", 100, dtype="fp32")  # the 128-wide slice: spills forward on sm_90
    assert not rp.takes_tf32(lstm_100, "lstm", False) and rp.takes_tf32(rp.slice_tile("lstm", 100, dtype="fp32",
                                                                                   backward=True), "lstm", True)
    assert rp.takes_tf32(rp.slice_tile("lstm", 64, dtype="fp32"), "lstm", False)
    assert not rp.takes_tf32(rp.slice_tile("rnn_tanh", 1024, dtype="fp32"), "rnn_tanh", False)  # row-wise
    built = {(case.name, config_label(case).replace("products=dot-tf32", "products=dot"))
             for case in rp.compile_cases() if "products=dot-tf32" in config_label(case)}
    expected = set()
    for case in rp.compile_cases():
        backward = "backward" in case.name
        cell = {rp.RNN: "rnn_tanh", rp.LSTM: "lstm", rp.GRU: "gru"}[case.args["CELL"]]
        heads = 2 if case.args["PER_HEAD"] else 1
        tile = rp.slice_tile(cell, heads * case.args["HP"], dtype=case.tags["dtype"], backward=backward, heads=heads)
        if case.tags["dtype"] == "fp32" and not case.args["TF32"] and rp.takes_tf32(tile, cell, backward, heads):
            expected.add((case.name, config_label(case)))
    assert built == expected and built
    # the one TF32 width whose multi-head build spills (sm_90): exact fp32 there, TF32 with one head
    rnn_256 = rp.slice_tile("rnn_tanh", 512, dtype="fp32", heads=2)
    assert rnn_256.hp == 256 and not rp.takes_tf32(rnn_256, "rnn_tanh", False, 2)
    assert rp.takes_tf32(rp.slice_tile("rnn_tanh", 256, dtype="fp32"), "rnn_tanh", False)


def test_a_compiled_graph_reads_the_switch_when_it_runs(rng, recorded):
    """The layer is an operator whose body runs at run time: one compiled graph follows the
    switch call by call, nothing about it is baked in at trace time."""
    torch._dynamo.reset()
    a = _inputs(rng, "lstm", 2, 3, 5, "float32", T=3)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    @torch.compile(fullgraph=True, backend=counter)
    def layer(x):
        y, _, _ = GF.lstm_layer(x, a["h"], a["c"], *a["w"])
        return y

    seen = []
    try:
        with gk.use_backend("triton"):
            for allowed in (True, False, True):
                with rnn_tf32(allowed):
                    layer(a["x"])
                seen.append(recorded["rnn_step_kernel"].tf32())
                recorded["rnn_step_kernel"].launches.clear()
    finally:
        torch._dynamo.reset()
    assert seen == [{True}, {False}, {True}]
    assert counter.frame_count == 1


def test_the_cuda_graph_key_holds_the_switch():
    x, h = torch.randn(2, 3, 4), torch.randn(3, 5)
    options = {"cell": "lstm"}
    with rnn_tf32(True):
        on = rnn_graph.layer_key(object, (x, h, None), None, options)
    with rnn_tf32(False):
        off = rnn_graph.layer_key(object, (x, h, None), None, options)
    assert on != off
    with rnn_tf32(True):
        assert rnn_graph.layer_key(object, (x, h, None), None, options) == on


# ---------------------------------------------------------------------------------------------
# The numbers (the interpreter: on a GPU tests/test_gpu_rnn.py checks the compiled kernels)


def test_tf32_operand_rounds_to_nearest_ties_away():
    if HAS_CUDA:
        pytest.skip("the interpreter's launch of the rounding helper; the GPU runs it inside the kernels")
    import triton
    import triton.language as tl

    @triton.jit
    def rounded(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, rp.tf32_operand(tl.load(x_ptr + offs, mask=offs < n)), mask=offs < n)

    ulp = 2.0 ** -10
    values = np.array([1.0, -1.0, 1 + ulp / 2, -(1 + ulp / 2), 1 + ulp / 2 - 2 ** -23, 1 + ulp / 2 + 2 ** -23,
                       0.1, -0.1, 1e-40, 0.0, -0.0, np.finfo(np.float32).max, np.inf, -np.inf, np.nan, 3.0],
                      dtype=np.float32)
    subnormal_step = 2.0 ** -136  # TF32's spacing below fp32's smallest normal (2^-149 * 2^13)
    want = np.array([1.0, -1.0, 1 + ulp, -(1 + ulp), 1.0, 1 + ulp, 0.0999755859375, -0.0999755859375,
                     np.round(float(np.float32(1e-40)) / subnormal_step) * subnormal_step, 0.0, -0.0, np.inf, np.inf,
                     -np.inf, np.nan, 3.0])
    got = torch.empty(16)
    rounded[(1,)](torch.from_numpy(values), got, 16, BLOCK=16)
    np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))
    assert (np.signbit(got.numpy()) == np.signbit(want)).all()


def _layer_run(kind, a, gy, gh, gc, lengths):
    with gk.use_backend("triton"):
        return _layer(kind, a, gy, gh, gc, True, lengths)


def _bitwise_equal(first, second) -> bool:
    flat = [(x, y) for group in zip(first, second) for x, y in zip(*group)]
    return all((x is None and y is None) or torch.equal(x, y) for x, y in flat)


# Each cell kind through the per-step kernel and, where it has one, the persistent kernel's
# tl.dot slices; odd sizes, reverse, ragged lengths.
NUMBER_CASES = [pytest.param(kind, path, id=f"{kind}-{path}") for kind, path in (
    ("rnn_tanh", "per-step"), ("lstm_peep_coupled", "per-step"), ("gru", "per-step"), ("gru_original", "per-step"),
    ("rnn_relu", "persistent"), ("lstm", "persistent"), ("gru", "persistent"))]


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's TF32 numbers; tests/test_gpu_rnn.py has the GPU's")
@pytest.mark.parametrize("kind,path", NUMBER_CASES)
def test_tf32_layers_against_the_reference_and_strict_fp32_when_off(kind, path, rng, monkeypatch, recorded):
    if path == "persistent":
        monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    T, B, H = 5, 3, 19
    a = _inputs(rng, kind, B, 4, H, "float32", T=T)
    a["w"][1] = random_tensor(rng, tuple(a["w"][1].shape), "float32", DEVICE, scale=weight_scale(H))
    gy = random_tensor(rng, (T, B, H), "float32", DEVICE, scale=1.0)
    gh, gc = (random_tensor(rng, (B, H), "float32", DEVICE, scale=1.0) for _ in range(2))
    lengths = (5, 2, 4)
    with rnn_tf32(True):
        tf32 = _layer_run(kind, a, gy, gh, gc, lengths)
    with rnn_tf32(False):
        strict = _layer_run(kind, a, gy, gh, gc, lengths)
    legacy_off = torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False)
    with legacy_off:  # the switch off through torch's own (legacy) context: the same strict numbers
        strict_again = _layer_run(kind, a, gy, gh, gc, lengths)
    kernel = "rnn_step_kernel" if path == "per-step" else "rnn_persistent_forward_kernel"
    assert recorded[kernel].tf32() == {True, False}
    assert _bitwise_equal(strict, strict_again)
    assert not _bitwise_equal(tf32, strict)  # the TF32 products really ran
    outputs64, grads64 = _layer(kind, _as64(a), as_float64(gy), as_float64(gh), as_float64(gc), True, lengths)
    for (outputs, grads), tolerance in ((tf32, TF32_TOLERANCE), (strict, 1e-5)):
        for got, want in zip((*outputs, *grads), (*outputs64, *grads64)):
            if want is None:
                assert got is None
                continue
            error = np.linalg.norm(as_float64(got) - want) / np.linalg.norm(want)
            assert error <= tolerance, (tolerance, error)
    for got, want in zip(strict[0], outputs64):
        assert_close(got, want, "float32", "reduction")


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's TF32 numbers; tests/test_gpu_rnn.py has the GPU's")
@pytest.mark.parametrize("kind,H,heads", [("lstm", 24, 2), ("gru", 40, 4), ("rnn_tanh", 18, 3)],
                         ids=lambda v: str(v))
def test_persistent_per_head_slices_take_tf32_too(kind, H, heads, rng, monkeypatch, recorded):
    """With heads the persistent tl.dot slices (the PER_HEAD builds) take TF32 as the one-head
    ones do: the launches say so, and the layer stays within TF32_TOLERANCE of the float64
    reference, outputs and every gradient of the compact weight."""
    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    T, B, I, G = 4, 3, 5, {"lstm": 4, "gru": 3, "rnn_tanh": 1}[kind]
    x = random_tensor(rng, (T, B, I), "float32", DEVICE, scale=1.0)
    h = random_tensor(rng, (B, H), "float32", DEVICE, scale=0.5)
    c = random_tensor(rng, (B, H), "float32", DEVICE, scale=0.5)
    w = [random_tensor(rng, (G * H, I), "float32", DEVICE, scale=0.3),
         random_tensor(rng, (G * H, H // heads), "float32", DEVICE, scale=weight_scale(H // heads)),
         random_tensor(rng, (G * H,), "float32", DEVICE, scale=0.3),
         random_tensor(rng, (G * H,), "float32", DEVICE, scale=0.3)]
    gy = random_tensor(rng, (T, B, H), "float32", DEVICE, scale=1.0)
    gh = random_tensor(rng, (B, H), "float32", DEVICE, scale=1.0)

    def run(x, h, c, w, gy, gh):
        if kind == "lstm":
            return (*gk.lstm_layer(x, h, c, *w, heads=heads),
                    *gk.lstm_layer_backward(gy, gh, None, x, h, c, *w, heads=heads))
        layer, backward = (gk.gru_layer, gk.gru_layer_backward) if kind == "gru" else (gk.rnn_layer,
                                                                                      gk.rnn_layer_backward)
        return (*layer(x, h, *w, heads=heads), *backward(gy, gh, x, h, *w, heads=heads))

    with gk.use_backend("triton"), rnn_tf32(True):
        got = run(x, h, c, w, gy, gh)
    for name in ("rnn_persistent_forward_kernel", "rnn_persistent_backward_kernel"):
        assert recorded[name].tf32() == {True}, name
        assert {launch["PER_HEAD"] for launch in recorded[name].launches} == {True}, name
    want = run(*(as_float64(t) if not isinstance(t, list) else [as_float64(v) for v in t]
                 for t in (x, h, c, w, gy, gh)))
    for index, (g, r) in enumerate(zip(got, want)):
        if r is None:
            continue
        error = np.linalg.norm(as_float64(g) - r) / np.linalg.norm(r)
        assert error <= TF32_TOLERANCE, (index, error)


# ---------------------------------------------------------------------------------------------
# Benchmarks: ours beside cuDNN at the same math


def _switch_seen_by(provider: str, dtype: str) -> list[bool]:
    """What torch's RNN switch was when a stand-in for our layer ran forward and backward in
    ``provider``'s timed call (the lstm layer case, fp32 or fp16)."""
    case = next(c for c in registry.all_cases() if c.op == "lstm_layer" and c.mode == "full" and c.dtype == dtype
                and "cuda" in c.devices and c.params["heads"] == 1)
    seen = []
    x = torch.randn(3, requires_grad=True)
    x.register_hook(lambda grad: seen.append(rnn_tf32_allowed()))

    class StandIn(torch.nn.Module):
        def forward(self, inputs):
            seen.append(rnn_tf32_allowed())
            return (inputs * 2.0,)

    timed = case.providers[provider]({"ours": StandIn(), "x": x})
    timed()
    return seen


@pytest.mark.parametrize("provider,allowed", [("gpukernels", False), ("gpukernels-persistent", False),
                                              ("gpukernels-graph", False), ("gpukernels-tf32", True)])
def test_our_fp32_providers_set_the_switch_for_their_calls(provider, allowed, monkeypatch):
    monkeypatch.delenv("GPUKERNELS_RNN_PERSISTENT", raising=False)
    with rnn_tf32(not allowed):  # a process that set the opposite
        assert _switch_seen_by(provider, "float32") == [allowed, allowed]
        assert rnn_tf32_allowed() is (not allowed)  # put back after the call


def test_half_precision_providers_leave_the_switch_alone():
    with rnn_tf32(True):
        assert _switch_seen_by("gpukernels", "float16") == [True, True]
    case = next(c for c in registry.all_cases() if c.op == "lstm_layer" and c.dtype == "float16")
    assert "gpukernels-tf32" not in case.providers and "torch-cudnn-tf32" not in case.providers


# ---------------------------------------------------------------------------------------------
# The compile gate's TF32 builds


@pytest.fixture(scope="module")
def gate_rows():
    from gpukernels.tools.verify import triton_aot

    rows = []
    for kernel, config in (("rnn_step[lstm]", "dtype=fp32,block_b=16,block_h=32,block_k=16,launch=typical,warps"),
                           ("rnn_step[lstm]", "dtype=fp32,block_b=16,block_h=32,block_k=16,launch=typical,precision"),
                           ("rnn_persistent_backward[lstm]", "dtype=fp32,hp=64,block_h=16,products=dot-tf32,heads=1")):
        rows += triton_aot.compile_all(kernel, workers=1, config_text=config)
    return rows


@pytest.mark.slow
def test_tf32_builds_multiply_on_the_tensor_cores_without_spills(gate_rows):
    assert len(gate_rows) == 3 * 2, [(r.kernel, r.config, r.target) for r in gate_rows]
    for row in gate_rows:
        assert row.ok and row.spill_bytes == 0, (row.kernel, row.config, row.target, row.status())
        tf32 = "tf32" in row.config
        # 16-row tiles: warp-level mma.sync on sm_90 as well (wgmma needs 64 rows)
        assert row.matrix == ("mma.sync" if tf32 else "none"), (row.kernel, row.config, row.target, row.matrix)
