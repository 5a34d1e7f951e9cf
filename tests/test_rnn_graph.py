"""The CUDA-graph path of the per-step recurrent layers (gpukernels/triton/rnn_graph.py), all of
it but the capture itself: the per-shape cache, copying the inputs into the static buffers,
replaying, handing out outputs the next replay cannot overwrite, eviction, where the plain path
must run instead, and the opt-in switch GPUKERNELS_RNN_CUDA_GRAPH.

The capture is a stand-in here (``RerunGraph``): it runs the layer call once when "captured"
and, on every replay, runs it again on the same static input buffers and writes the results
into the outputs of the first run in place, as a CUDA graph's replay overwrites its static
outputs. The layer calls themselves run the real Triton kernels (in the interpreter without a
GPU). tests/test_gpu_rnn_graph.py checks the real capture on a GPU.
"""

from __future__ import annotations

import re

import pytest
import torch

import gpukernels as gk
from _helpers import random_tensor
from conftest import DEVICE
from gpukernels.torch import nn as gnn
from gpukernels.triton import rnn as triton_rnn
from gpukernels.triton import rnn_graph
from gpukernels.triton import rnn_persistent as rp
from test_rnn_triton import SHORT, _inputs, _layer


class RerunGraph:
    """A CUDA graph's contract without CUDA: replay() recomputes into the captured outputs."""

    def __init__(self, fn):
        self.fn, self.was_reset = fn, False
        self.outputs = fn()

    def replay(self):
        for static, new in zip(self.outputs, self.fn(), strict=True):
            if isinstance(static, torch.Tensor):
                static.copy_(new)

    def reset(self):
        self.was_reset = True


def rerun_capture(fn):
    graph = RerunGraph(fn)
    return graph, graph.outputs


def _graphs(monkeypatch, capacity=rnn_graph.CAPACITY):
    """The graph path switched on for tensors on DEVICE, capturing with RerunGraph."""
    monkeypatch.setenv(rnn_graph.ENVIRONMENT_SWITCH, "1")
    monkeypatch.delenv(rp.ENVIRONMENT_SWITCH, raising=False)
    graphs = rnn_graph.LayerGraphs(capture=rerun_capture, capacity=capacity, device_type=torch.device(DEVICE).type)
    monkeypatch.setattr(rnn_graph, "GRAPHS", graphs)
    return graphs


@pytest.fixture
def graphs(monkeypatch):
    return _graphs(monkeypatch)


def _draw(rng, kind, dtype, T, B, H, with_lengths):
    a = _inputs(rng, kind, B, 4, H, dtype, T=T)
    gy = random_tensor(rng, (T, B, H), dtype, DEVICE, scale=1.0)
    gh, gc = (random_tensor(rng, (B, H), dtype, DEVICE, scale=1.0) for _ in range(2))
    lengths = tuple(int(v) for v in rng.integers(1, T + 1, B)) if with_lengths else None
    return a, gy, gh, gc, lengths


def _run(kind, drawn, reverse=False):
    a, gy, gh, gc, lengths = drawn
    with gk.use_backend("triton"):
        outputs, grads = _layer(kind, a, gy, gh, gc if kind.startswith("lstm") else None, reverse, lengths)
    return [t for t in (*outputs, *grads) if t is not None]


def _plain(kind, drawn, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv(rnn_graph.ENVIRONMENT_SWITCH, "0")
        return _run(kind, drawn)


def _assert_same(got, want, what):
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what}: result {index}"
        assert torch.equal(g, w), f"{what}: result {index} differs from the plain path"


KINDS = ("rnn_tanh", "lstm", "lstm_peep_coupled", "gru", "gru_original")
CASES = [pytest.param(kind, "float32", lengths, id=f"{kind}-T4-B3-H6-fp32" + ("-lengths" if lengths else ""))
         for kind in KINDS for lengths in (False, True)]
CASES += [pytest.param(kind, dtype, True, id=f"{kind}-T4-B3-H6-{SHORT[dtype]}-lengths")
          for kind, dtype in (("lstm", "bfloat16"), ("gru_original", "float16"))]


@pytest.mark.parametrize("kind,dtype,with_lengths", CASES)
def test_graph_calls_equal_the_plain_path_and_refresh_their_inputs(kind, dtype, with_lengths, rng, monkeypatch):
    """Two calls of one shape, fresh inputs (and lengths) each: both equal the plain path bit for
    bit, so the second replay read the second call's inputs; the first call's results are
    untouched by the second replay; one capture per direction, the rest replays."""
    graphs = _graphs(monkeypatch)
    first, second = (_draw(rng, kind, dtype, 4, 3, 6, with_lengths) for _ in range(2))
    want_first, want_second = _plain(kind, first, monkeypatch), _plain(kind, second, monkeypatch)
    assert not graphs.entries  # the plain path with the switch at 0

    got_first = _run(kind, first)
    kept = [t.clone() for t in got_first]
    _assert_same(got_first, want_first, "first call")
    got_second = _run(kind, second)
    _assert_same(got_second, want_second, "second call")
    _assert_same(got_first, kept, "first call's results after the second replay")
    # forward, then the backward op (whose own forward hits the forward graph) per call
    assert graphs.captured == 2 and len(graphs.entries) == 2
    assert graphs.replayed == 6


def _forward(T, B, H, dtype, rng, *, lengths=None, reverse=False):
    """A tanh RNN layer's forward: the cheapest layer call."""
    a = _inputs(rng, "rnn_tanh", B, 4, H, dtype, T=T)
    with gk.use_backend("triton"):
        return gk.rnn_layer(a["x"], a["h"], *a["w"], lengths=lengths, reverse=reverse)


def test_a_new_shape_dtype_option_or_lengths_presence_is_a_new_graph(graphs, rng):
    _forward(3, 2, 5, "float32", rng)
    _forward(3, 2, 5, "float32", rng)
    assert graphs.captured == 1
    _forward(3, 2, 5, "float32", rng, lengths=(3, 1))
    _forward(3, 2, 5, "float32", rng, lengths=(2, 3))  # other values: the same graph
    assert graphs.captured == 2
    for T, B, H, dtype, reverse in ((4, 2, 5, "float32", False), (3, 3, 5, "float32", False),
                                    (3, 2, 7, "float32", False), (3, 2, 5, "bfloat16", False),
                                    (3, 2, 5, "float32", True)):
        _forward(T, B, H, dtype, rng, reverse=reverse)
    assert graphs.captured == 7 and len(graphs.entries) == 7 and graphs.replayed == 9


def test_the_least_recently_used_graph_is_evicted_and_reset(monkeypatch, rng):
    graphs = _graphs(monkeypatch, capacity=2)
    _forward(2, 2, 3, "float32", rng)
    oldest = next(iter(graphs.entries.values())).graph
    _forward(2, 2, 4, "float32", rng)
    _forward(2, 2, 3, "float32", rng)  # a hit: H=4 is now the oldest
    _forward(2, 2, 5, "float32", rng)
    assert graphs.captured == 3 and len(graphs.entries) == 2 and not oldest.was_reset
    _forward(2, 2, 4, "float32", rng)  # evicted: captured again, pushing H=3 out
    assert graphs.captured == 4 and oldest.was_reset
    graphs.clear()
    assert not graphs.entries


@pytest.mark.parametrize("value,on", [(None, False), ("", False), ("0", False), ("1", True)])
def test_the_switch(value, on, monkeypatch):
    if value is None:
        monkeypatch.delenv(rnn_graph.ENVIRONMENT_SWITCH, raising=False)
    else:
        monkeypatch.setenv(rnn_graph.ENVIRONMENT_SWITCH, value)
    assert rnn_graph.switch() is on


@pytest.mark.parametrize("value", ["2", "true", "on", " 1"])
def test_a_bad_switch_value_is_refused_before_any_launch(value, rng, monkeypatch):
    launches = []
    monkeypatch.setattr(triton_rnn._TorchBackend, "forward_step", lambda self, code, s: launches.append(code))
    monkeypatch.setenv(rnn_graph.ENVIRONMENT_SWITCH, value)
    with pytest.raises(ValueError, match=re.escape(f"{rnn_graph.ENVIRONMENT_SWITCH} must be 0 or 1, not {value!r}")):
        _forward(2, 2, 3, "float32", rng)
    assert not launches


def test_the_plain_path_where_a_graph_must_not_be_used(graphs, rng, monkeypatch):
    with monkeypatch.context() as m:  # the persistent path is one launch already
        m.setenv(rp.ENVIRONMENT_SWITCH, "1")
        _forward(2, 2, 3, "float32", rng)
    with monkeypatch.context() as m:  # inside a torch.compile trace
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        _forward(2, 2, 3, "float32", rng)
    with monkeypatch.context() as m:  # inside someone's capture: ours would nest
        m.setattr(rnn_graph, "_capturing", lambda device: True)
        _forward(2, 2, 3, "float32", rng)
    assert not graphs.entries and graphs.captured == 0
    _forward(2, 2, 3, "float32", rng)
    assert graphs.captured == 1


def test_what_a_graph_accepts():
    graphs = rnn_graph.LayerGraphs(capture=rerun_capture, device_type="cpu")
    x, h = torch.randn(2, 3, 4), torch.randn(3, 5)
    assert graphs.accepts((x, h, None))
    assert not graphs.accepts((torch.empty(0, 3, 4), h, None))  # nothing to launch
    assert not graphs.accepts((x, torch.empty(0, 5), None))
    assert not rnn_graph.LayerGraphs(capture=rerun_capture).accepts((x, h, None))  # CPU tensors on the CUDA cache
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
    assert not graphs.accepts((fake, h, None))
    assert graphs.accepts((x, torch.nn.Parameter(h), None))  # weights passed as they are


def test_the_key_holds_autocast_and_every_arrays_layout():
    x, h = torch.randn(2, 3, 4), torch.randn(3, 5)
    options = {"cell": "rnn_tanh", "reverse": False}
    key = rnn_graph.layer_key(object, (x, h, None), None, options)
    assert key == rnn_graph.layer_key(object, (torch.randn(2, 3, 4), torch.randn(3, 5), None), None, options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert rnn_graph.layer_key(object, (x, h, None), None, options) != key
    assert rnn_graph.layer_key(object, (x, h, h), None, options) != key  # a bias given
    assert rnn_graph.layer_key(object, (x, h.t().contiguous().t(), None), None, options) != key  # strides
    assert rnn_graph.layer_key(object, (x, h, None), (2, 1, 2), options) != key
    assert rnn_graph.layer_key(object, (x, h, None), None, {**options, "reverse": True}) != key


def test_the_module_through_autograd(graphs, rng, monkeypatch):
    """gpukernels.torch.nn.GRU (bidirectional): the autograd Functions' layer calls go through
    graphs; outputs and parameter gradients equal the plain path's; a second step replays."""
    torch.manual_seed(0)
    module = gnn.GRU(3, 5, bidirectional=True, device=DEVICE)

    def step(x):
        module.zero_grad(set_to_none=True)
        x = x.clone().requires_grad_(True)
        with gk.use_backend("triton"):
            y, h_n = module(x)
            (y.square().sum() + h_n.sum()).backward()
        return [y.detach(), h_n.detach(), x.grad] + [p.grad.clone() for p in module.parameters()]

    xs = [random_tensor(rng, (3, 2, 3), "float32", DEVICE, scale=1.0) for _ in range(2)]
    with monkeypatch.context() as m:
        m.setenv(rnn_graph.ENVIRONMENT_SWITCH, "0")
        wants = [step(x) for x in xs]
    for x, want in zip(xs, wants):
        _assert_same(step(x), want, "module step")
    assert graphs.captured == 4 and graphs.replayed == 8  # 2 directions, forward and backward


def test_the_captured_call_never_builds_lengths_from_the_host(graphs, rng, monkeypatch):
    """The plain backend's lengths() copies a host list to the device, which a capture may not
    contain: it runs once per capture, before it, and never on a replay."""
    calls, capturing = [], []
    original = triton_rnn._TorchBackend.lengths

    def lengths(self, *args):
        calls.append(bool(capturing))
        return original(self, *args)
    monkeypatch.setattr(triton_rnn._TorchBackend, "lengths", lengths)

    def capture(fn):
        capturing.append(True)
        try:
            return rerun_capture(fn)
        finally:
            capturing.clear()
    graphs.capture = capture
    _forward(3, 2, 5, "float32", rng, lengths=(3, 1))
    _forward(3, 2, 5, "float32", rng, lengths=(1, 2))
    _forward(3, 2, 5, "float32", rng)
    assert calls == [False, False]  # one per capture, neither inside it
