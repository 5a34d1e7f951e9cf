"""On a CUDA GPU (skipped elsewhere): the CUDA-graph path of the per-step recurrent layers
(GPUKERNELS_RNN_CUDA_GRAPH=1, gpukernels/triton/rnn_graph.py) with the real capture.

* Every cell (tanh RNN, LSTM, both GRU forms), with and without lengths, fp32 and bf16, three
  calls of one shape with fresh inputs: outputs and gradients equal the plain per-step path bit
  for bit (the same kernels in the same order), the first call's results survive the later
  replays, and the calls after the first launch no step kernel from Python (they are replays).
* The drop-in module (2 layers, bidirectional) through autograd: outputs and every parameter
  gradient equal the plain path's, and repeated steps are replays.
* Evicted and cleared graphs give their memory back.
"""

from __future__ import annotations

import gc

import pytest
import torch

import gpukernels as gk
from _helpers import random_tensor
from gpukernels.torch import nn as gnn
from gpukernels.triton import rnn as triton_rnn
from gpukernels.triton import rnn_graph
from gpukernels.triton import rnn_persistent as rp
from test_rnn_triton import SHORT, _inputs, _layer

pytestmark = pytest.mark.gpu


@pytest.fixture
def graphs(monkeypatch):
    """The graph path on, with a cache of its own (the real CUDA capture), cleared afterwards."""
    monkeypatch.setenv(rnn_graph.ENVIRONMENT_SWITCH, "1")
    monkeypatch.delenv(rp.ENVIRONMENT_SWITCH, raising=False)
    graphs = rnn_graph.LayerGraphs()
    monkeypatch.setattr(rnn_graph, "GRAPHS", graphs)
    yield graphs
    graphs.clear()


@pytest.fixture
def launches(monkeypatch):
    """Counts of the backend's Python-side launches: step kernels and the input projection."""
    counts = {"forward_step": 0, "backward_step": 0, "input_projection": 0}
    for name in counts:
        original = getattr(triton_rnn._TorchBackend, name)

        def counted(self, *args, _name=name, _original=original):
            counts[_name] += 1
            return _original(self, *args)
        monkeypatch.setattr(triton_rnn._TorchBackend, name, counted)
    return counts


def _plain(fn, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv(rnn_graph.ENVIRONMENT_SWITCH, "0")
        return fn()


def _assert_same(got, want, what):
    assert len(got) == len(want), what
    for index, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"{what}: result {index}"
        assert torch.equal(g, w), (f"{what}: result {index} differs from the plain path "
                                   f"(max |diff| {(g.double() - w.double()).abs().max().item():.3g})")


def _layer_call(kind, drawn):
    a, gy, gh, gc, lengths = drawn
    with gk.use_backend("triton"):
        outputs, grads = _layer(kind, a, gy, gh, gc if kind == "lstm" else None, True, lengths)
    return [t for t in (*outputs, *grads) if t is not None]


CASES = [pytest.param(kind, dtype, with_lengths, B, H,
                      id=f"{kind}-T7-B{B}-H{H}-{SHORT[dtype]}" + ("-lengths" if with_lengths else ""))
         for kind in ("rnn_tanh", "lstm", "gru", "gru_original") for dtype in ("float32", "bfloat16")
         for with_lengths in (False, True) for B, H in ((5, 33),)]
CASES += [pytest.param("lstm", "float32", True, 37, 64, id="lstm-T7-B37-H64-fp32-lengths")]  # the 64-row tile


@pytest.mark.parametrize("kind,dtype,with_lengths,B,H", CASES)
def test_graph_replays_equal_the_plain_path(kind, dtype, with_lengths, B, H, graphs, launches, rng, monkeypatch):
    T = 7
    calls = []
    for _ in range(3):
        a = _inputs(rng, kind, B, 6, H, dtype, T=T)
        gy = random_tensor(rng, (T, B, H), dtype, "cuda", scale=1.0)
        gh, gc = (random_tensor(rng, (B, H), dtype, "cuda", scale=1.0) for _ in range(2))
        lengths = tuple(int(v) for v in rng.integers(1, T + 1, B)) if with_lengths else None
        calls.append((a, gy, gh, gc, lengths))
    wants = [_plain(lambda: _layer_call(kind, drawn), monkeypatch) for drawn in calls]

    first = _layer_call(kind, calls[0])  # captures the forward and the backward graph
    kept = [t.clone() for t in first]
    _assert_same(first, wants[0], "first call")
    assert graphs.captured == 2
    for counter in launches:
        launches[counter] = 0
    for index in (1, 2):
        _assert_same(_layer_call(kind, calls[index]), wants[index], f"call {index + 1}")
    assert launches == {"forward_step": 0, "backward_step": 0, "input_projection": 0}, "a hit must only replay"
    assert graphs.captured == 2 and graphs.replayed == 9
    _assert_same(first, kept, "first call's results after later replays")


def test_the_module_through_autograd(graphs, launches, rng, monkeypatch):
    """gpukernels.torch.nn.LSTM (2 layers, bidirectional): the autograd Functions' layer calls
    go through graphs; outputs and parameter gradients equal the plain path's."""
    T, B, I, H = 9, 4, 6, 24
    graphs.capacity = 16  # every layer call of the model stays captured
    torch.manual_seed(0)
    module = gnn.LSTM(I, H, num_layers=2, bidirectional=True, device="cuda")

    def step(x):
        module.zero_grad(set_to_none=True)
        x = x.clone().requires_grad_(True)
        y, (h_n, c_n) = module(x)
        (y.square().sum() + h_n.sum() + c_n.sum()).backward()
        return [y.detach(), h_n.detach(), c_n.detach(), x.grad] + [p.grad.clone() for p in module.parameters()]

    xs = [random_tensor(rng, (T, B, I), "float32", "cuda", scale=1.0) for _ in range(3)]
    wants = [_plain(lambda: step(x), monkeypatch) for x in xs]
    _assert_same(step(xs[0]), wants[0], "first step")
    captured = graphs.captured
    assert captured >= 8  # 2 layers x 2 directions, forward and backward
    for counter in launches:
        launches[counter] = 0
    for index in (1, 2):
        _assert_same(step(xs[index]), wants[index], f"step {index + 1}")
    assert graphs.captured == captured and launches == {"forward_step": 0, "backward_step": 0,
                                                        "input_projection": 0}


def _forward(rng, H):
    a = _inputs(rng, "lstm", 3, 5, H, "float32", T=4)
    with gk.use_backend("triton"):
        return gk.lstm_layer(a["x"], a["h"], a["c"], *a["w"])


def test_evicted_and_cleared_graphs_give_their_memory_back(graphs, rng):
    graphs.capacity = 1
    _forward(rng, 16)  # the first capture sets up what stays (cuBLAS's workspace of the side stream)
    graphs.clear()
    gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    _forward(rng, 16)
    _forward(rng, 40)  # evicts H=16
    assert len(graphs.entries) == 1 and graphs.captured == 3
    graphs.clear()
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before
