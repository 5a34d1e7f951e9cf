"""The public recurrent ops: argument checks (TypeError/ValueError naming the argument, raised
before anything runs), return types and orders, and the array libraries in and out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk


def _lstm_args(rng, T=4, B=3, I=5, H=6, dtype=np.float32):
    make = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    return {"x": make(T, B, I), "h0": make(B, H), "c0": make(B, H), "w_ih": make(4 * H, I), "w_hh": make(4 * H, H),
            "b_ih": make(4 * H), "b_hh": make(4 * H)}


def _call(args, **options):
    a = dict(args)
    return gk.lstm_layer(a.pop("x"), a.pop("h0"), a.pop("c0"), a.pop("w_ih"), a.pop("w_hh"), a.pop("b_ih"),
                         a.pop("b_hh"), **options)


BAD_SHAPES = [
    ("h0", lambda a: a["h0"][:2], ValueError, r"h0 must have shape \(3, 6\)"),
    ("c0", lambda a: a["c0"][:, :5], ValueError, r"c0 must have shape \(3, 6\)"),
    ("w_hh", lambda a: a["w_hh"][:20], ValueError, r"w_hh must have shape \(4\*hidden_size, hidden_size\)"),
    ("w_ih", lambda a: a["w_ih"][:, :4], ValueError, r"w_ih must have shape \(24, 5\)"),
    ("b_ih", lambda a: a["b_ih"][:5], ValueError, r"b_ih must have shape \(24,\)"),
    ("x", lambda a: a["x"][0], ValueError, r"x must be 3-D"),
    ("h0", lambda a: a["h0"].astype(np.float64), TypeError, "h0 has dtype float64 but x has dtype float32"),
    ("w_hh", lambda a: torch.from_numpy(a["w_hh"]), TypeError, "w_hh is a torch array but x is a numpy array"),
    ("x", lambda a: a["x"].astype(np.int32), TypeError, "x has dtype int32"),
]


@pytest.mark.parametrize("name,change,error,message", BAD_SHAPES,
                         ids=[f"{n}-{i}" for i, (n, *_) in enumerate(BAD_SHAPES)])
def test_bad_arguments_are_named(name, change, error, message, rng):
    args = _lstm_args(rng)
    args[name] = change(args)
    with pytest.raises(error, match=message):
        _call(args)


@pytest.mark.parametrize("lengths,message", [
    ((4, 5, 1), r"lengths must lie in 1..4"), ((4, 0, 1), r"lengths must lie in 1..4"),
    ((4, 2), r"one length per sequence"), (np.array([1.0, 2.0, 3.0]), "lengths must hold integers"),
])
def test_bad_lengths(lengths, message, rng):
    with pytest.raises((ValueError, TypeError), match=message):
        _call(_lstm_args(rng), lengths=lengths)


def test_bad_options(rng):
    args = _lstm_args(rng)
    with pytest.raises(TypeError, match="reverse must be True or False"):
        _call(args, reverse="yes")
    with pytest.raises(ValueError, match="w_peep must have shape"):
        _call(args, w_peep=np.zeros((4, 6), np.float32))
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        gk.rnn_cell(args["x"][0], None, args["w_ih"][:6], args["w_hh"][:6], nonlinearity="gelu")


def test_mismatched_batch_between_x_and_hx(rng):
    a = _lstm_args(rng)
    with pytest.raises(ValueError, match=r"hx must have shape \(3, 6\)"):
        gk.gru_cell(a["x"][0], a["h0"][:2], a["w_ih"][:18], a["w_hh"][:18])


def test_bad_backward_gradients(rng):
    a = _lstm_args(rng)
    with pytest.raises(ValueError, match=r"grad_y must have shape \(4, 3, 6\)"):
        gk.lstm_layer_backward(np.ones((4, 3, 5), np.float32), None, None, *a.values())
    with pytest.raises(ValueError, match="grad_h_n has shape"):
        gk.lstm_layer_backward(np.ones((4, 3, 6), np.float32), np.ones((2, 6), np.float32), None, *a.values())


def test_a_rejected_call_writes_nothing(rng):
    a = _lstm_args(rng)
    before = {k: v.copy() for k, v in a.items()}
    with pytest.raises(ValueError):
        _call(a, lengths=(9, 1, 1))
    assert all(np.array_equal(before[k], a[k]) for k in a)


def test_return_types_and_orders(rng):
    a = _lstm_args(rng, T=2, B=2, I=3, H=4)
    y, h, c = _call(a)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (2, 2, 4)
    grads = gk.lstm_layer_backward(y, h, c, *a.values())
    assert len(grads) == 8 and grads[7] is None
    assert [g.shape for g in grads[:7]] == [v.shape for v in a.values()]
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    yt, ht, ct = _call(t)
    assert isinstance(yt, torch.Tensor) and torch.allclose(yt, torch.from_numpy(y))
    # a cell is a one-step layer
    h1, c1 = gk.lstm_cell(a["x"][0], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    y1, _, _ = _call({**a, "x": a["x"][:1]})
    np.testing.assert_allclose(h1, y1[0], rtol=1e-6)
    rnn_grads = gk.rnn_cell_backward(h1, a["x"][0], a["h0"], a["w_ih"][:4], a["w_hh"][:4])
    assert len(rnn_grads) == 6 and rnn_grads[4] is None and rnn_grads[5] is None
