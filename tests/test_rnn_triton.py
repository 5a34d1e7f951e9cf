"""The Triton recurrent kernels (compiled on a GPU, under TRITON_INTERPRET=1 on CPU tensors
without one) through the public API against the float64 reference: each step kernel as a cell on odd sizes, whole layers with
reverse and variable lengths, fp32/fp16/bf16, with NaN-poisoned fresh outputs (conftest)."""

from __future__ import annotations

import pytest
import torch

import gpukernels as gk
from _helpers import as_float64, assert_close, assert_gradients_close, random_tensor
from conftest import DEVICE
from gpukernels.triton import rnn as triton_rnn

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "lstm_peep_coupled": 4, "gru": 3, "gru_original": 3}
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _inputs(rng, kind, B, I, H, dtype, T=None):
    G = GATES[kind]
    lead = () if T is None else (T,)
    return {
        "x": random_tensor(rng, (*lead, B, I), dtype, DEVICE, scale=1.0),
        "h": random_tensor(rng, (B, H), dtype, DEVICE, scale=0.5),
        "c": random_tensor(rng, (B, H), dtype, DEVICE, scale=0.5),
        "w": [random_tensor(rng, s, dtype, DEVICE, scale=0.3) for s in ((G * H, I), (G * H, H), (G * H,), (G * H,))],
        "peep": random_tensor(rng, (3, H), dtype, DEVICE, scale=0.3),
    }


def _cell_forward_backward(kind, a, grads):
    """(outputs, gradients) of one step through the public cell ops on the current backend."""
    x, h, c, w, peep = a["x"], a["h"], a["c"], a["w"], a["peep"]
    if kind.startswith("rnn"):
        nl = kind.split("_")[1]
        return (gk.rnn_cell(x, h, *w, nonlinearity=nl),), gk.rnn_cell_backward(grads[0], x, h, *w, nonlinearity=nl)
    if kind.startswith("lstm"):
        extra = {"w_peep": peep, "coupled": True} if kind == "lstm_peep_coupled" else {}
        out = gk.lstm_cell(x, h, c, *w, **extra)
        return out, gk.lstm_cell_backward(grads[0], grads[1], x, h, c, *w, **extra)
    lbr = kind == "gru"
    return ((gk.gru_cell(x, h, *w, linear_before_reset=lbr),),
            gk.gru_cell_backward(grads[0], x, h, *w, linear_before_reset=lbr))


def _as64(a):
    return {k: ([as_float64(t) for t in v] if isinstance(v, list) else as_float64(v)) for k, v in a.items()}


def _check(kind, dtype, outputs, grads, outputs64, grads64):
    for got, want in zip(outputs, outputs64):
        assert_close(got, want, dtype, "reduction")
    assert_gradients_close(grads, grads64, dtype)


# Every H and every B of the list appears for every kernel in fp32; fp16/bf16 on the
# small sizes and one larger case each (the interpreter runs each tl.dot in NumPy, so the large
# sizes cost seconds). H=257 runs once per kernel: rnn_tanh covers RNN, lstm_peep_coupled LSTM.
STEP_SIZES = [(1, 1, "float32"), (3, 7, "float32"), (64, 100, "float32"), (3, 7, "float16"), (3, 7, "bfloat16")]
STEP_CASES = [pytest.param(kind, B, H, dtype, id=f"{kind}-B{B}-H{H}-{SHORT[dtype]}")
              for kind in GATES for B, H, dtype in STEP_SIZES]
STEP_CASES += [pytest.param(kind, B, H, dtype, id=f"{kind}-B{B}-H{H}-{SHORT[dtype]}") for kind, B, H, dtype in (
    ("rnn_tanh", 3, 257, "float32"), ("lstm_peep_coupled", 3, 257, "float32"), ("gru", 3, 257, "float32"),
    ("gru_original", 3, 257, "float32"), ("lstm_peep_coupled", 64, 100, "float16"),
    ("gru_original", 64, 100, "bfloat16"))]


@pytest.mark.parametrize("kind,B,H,dtype", STEP_CASES)
def test_step_kernels_forward_and_backward(kind, B, H, dtype, rng):
    a = _inputs(rng, kind, B, 5, H, dtype)
    grads = [random_tensor(rng, (B, H), dtype, DEVICE, scale=1.0) for _ in range(2)]
    with gk.use_backend("triton"):
        outputs, got = _cell_forward_backward(kind, a, grads)
    outputs64, want = _cell_forward_backward(kind, _as64(a), [as_float64(g) for g in grads])
    assert all(o.dtype == a["x"].dtype for o in outputs)
    _check(kind, dtype, outputs, got, outputs64, want)


LAYER_CASES = [(kind, "float32") for kind in GATES] + [("lstm", "float16"), ("gru_original", "bfloat16")]


def _layer(kind, a, gy, gh, gc, reverse, lengths):
    x, h, c, w, peep = a["x"], a["h"], a["c"], a["w"], a["peep"]
    options = {"reverse": reverse, "lengths": lengths}
    if kind.startswith("rnn"):
        options["nonlinearity"] = kind.split("_")[1]
        return gk.rnn_layer(x, h, *w, **options), gk.rnn_layer_backward(gy, gh, x, h, *w, **options)
    if kind.startswith("lstm"):
        if kind == "lstm_peep_coupled":
            options.update(w_peep=peep, coupled=True)
        return gk.lstm_layer(x, h, c, *w, **options), gk.lstm_layer_backward(gy, gh, gc, x, h, c, *w, **options)
    options["linear_before_reset"] = kind == "gru"
    return gk.gru_layer(x, h, *w, **options), gk.gru_layer_backward(gy, gh, x, h, *w, **options)


def run_layer_against_reference(kind, dtype, T, B, H, reverse, lengths, rng):
    """A layer's outputs and every gradient on the Triton backend against the float64 reference
    (fresh random inputs of T steps, B rows, H units); returns the Triton outputs."""
    a = _inputs(rng, kind, B, 4, H, dtype, T=T)
    gy = random_tensor(rng, (T, B, H), dtype, DEVICE, scale=1.0)
    gh, gc = random_tensor(rng, (B, H), dtype, DEVICE, scale=1.0), random_tensor(rng, (B, H), dtype, DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        outputs, grads = _layer(kind, a, gy, gh, gc, reverse, lengths)
    outputs64, grads64 = _layer(kind, _as64(a), as_float64(gy), as_float64(gh), as_float64(gc), reverse, lengths)
    _check(kind, dtype, outputs, grads, outputs64, grads64)
    return outputs


@pytest.mark.parametrize("reverse,lengths", [(False, None), (True, (5, 2, 4))], ids=["forward", "reverse-lengths"])
@pytest.mark.parametrize("kind,dtype", [pytest.param(k, d, id=f"{k}-T5-B3-H7-{SHORT[d]}") for k, d in LAYER_CASES])
def test_layers_through_time(kind, dtype, reverse, lengths, rng):
    outputs = run_layer_against_reference(kind, dtype, 5, 3, 7, reverse, lengths, rng)
    if lengths is not None:  # padded steps output exact zeros
        assert torch.all(outputs[0][2:, 1] == 0) and torch.all(outputs[0][4:, 2] == 0)


@pytest.mark.parametrize("kind,B,H,dtype", [pytest.param(k, b, h, d, id=f"{k}-T6-B{b}-H{h}-{SHORT[d]}") for k, b, h, d in (
    ("rnn_tanh", 17, 257, "float16"), ("gru", 17, 257, "float16"))])
def test_half_precision_layers_keep_the_state_and_projection_in_fp32(kind, B, H, dtype, rng):
    """The sizes that failed on the H200: rounding the fp32 state to fp16 before each recurrent
    product, and the input projection to fp16, put the gradients 5-9x over the fp16 bound here."""
    T = 6
    a = _inputs(rng, kind, B, 5, H, dtype, T=T)
    gy = random_tensor(rng, (T, B, H), dtype, DEVICE, scale=1.0)
    gh = random_tensor(rng, (B, H), dtype, DEVICE, scale=1.0)
    lengths = tuple(int(v) for v in rng.integers(1, T + 1, B))
    with gk.use_backend("triton"):
        outputs, grads = _layer(kind, a, gy, gh, None, True, lengths)
    outputs64, grads64 = _layer(kind, _as64(a), as_float64(gy), as_float64(gh), None, True, lengths)
    _check(kind, dtype, outputs, grads, outputs64, grads64)


def test_layers_without_biases_and_with_a_large_batch_tile(rng):
    T, B, H = 2, 20, 9  # B > 16 picks the 64-row tile
    a = _inputs(rng, "lstm", B, 3, H, "float32", T=T)
    a["w"][2] = a["w"][3] = None
    gy = random_tensor(rng, (T, B, H), "float32", DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        outputs, grads = _layer("lstm", a, gy, None, None, False, None)
    outputs64, grads64 = _layer("lstm", _as64({k: v for k, v in a.items() if k != "w"}) | {
        "w": [as_float64(a["w"][0]), as_float64(a["w"][1]), None, None]}, as_float64(gy), None, None, False, None)
    _check("lstm", "float32", outputs, grads, outputs64, grads64)
    assert triton_rnn.step_tile(B) == triton_rnn.STEP_TILES[1]


def test_empty_sequence_and_batch(rng):
    for T, B in ((0, 3), (4, 0)):
        a = _inputs(rng, "gru", B, 3, 5, "float32", T=T)
        with gk.use_backend("triton"):
            y, h_n = gk.gru_layer(a["x"], a["h"], *a["w"])
            grads = gk.gru_layer_backward(torch.ones(T, B, 5, device=DEVICE), torch.ones(B, 5, device=DEVICE),
                                          a["x"], a["h"], *a["w"])
        assert y.shape == (T, B, 5) and h_n.shape == (B, 5) and y.device == h_n.device == a["x"].device
        if T == 0:
            assert torch.equal(h_n, a["h"]) and torch.equal(grads[1], torch.ones(B, 5, device=DEVICE))
        assert grads[0].shape == a["x"].shape and grads[2].shape == a["w"][0].shape


def test_float64_is_rejected_by_the_triton_backend(rng):
    a = _inputs(rng, "gru", 2, 3, 4, "float32")
    with gk.use_backend("triton"), pytest.raises(TypeError, match="x has dtype float64"):
        gk.gru_cell(a["x"].double(), a["h"].double(), *(w.double() for w in a["w"]))


def test_non_contiguous_inputs(rng):
    T, B, I, H = 3, 4, 5, 6
    a = _inputs(rng, "gru", B, I, H, "float32", T=T)
    strided = {"x": random_tensor(rng, (B, T, I), "float32", DEVICE, scale=1.0).transpose(0, 1),  # batch_first
               "h": random_tensor(rng, (H, B), "float32", DEVICE, scale=0.5).t(),
               "c": a["c"], "peep": a["peep"],
               "w": [random_tensor(rng, (3 * H, 2 * I), "float32", DEVICE, scale=0.3)[:, ::2],
                     random_tensor(rng, (H, 3 * H), "float32", DEVICE, scale=0.3).t(), a["w"][2], a["w"][3]]}
    assert not strided["x"].is_contiguous() and not strided["w"][0].is_contiguous()
    gy = random_tensor(rng, (B, T, H), "float32", DEVICE, scale=1.0).transpose(0, 1)
    with gk.use_backend("triton"):
        outputs, grads = _layer("gru", strided, gy, None, None, True, (3, 1, 2, 3))
    outputs64, grads64 = _layer("gru", _as64(strided), as_float64(gy), None, None, True, (3, 1, 2, 3))
    _check("gru", "float32", outputs, grads, outputs64, grads64)


class _Counting:
    """Stands in for a @triton.jit kernel and counts its launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("kind,per_step", [("lstm", 1), ("gru", 1), ("rnn_tanh", 1), ("gru_original", 2)])
def test_kernels_per_time_step(kind, per_step, rng, monkeypatch):
    T, B, H = 4, 2, 3
    forward = _Counting(triton_rnn.rnn_step_kernel)
    backward = _Counting(triton_rnn.rnn_backward_step_kernel)
    monkeypatch.setattr(triton_rnn, "rnn_step_kernel", forward)
    monkeypatch.setattr(triton_rnn, "rnn_backward_step_kernel", backward)
    a = _inputs(rng, kind, B, 2, H, "float32", T=T)
    gy = random_tensor(rng, (T, B, H), "float32", DEVICE)
    with gk.use_backend("triton"):
        _layer(kind, a, gy, None, None, False, None)  # the backward op recomputes the forward
    assert forward.launches == 2 * T * per_step
    assert backward.launches == T * per_step
