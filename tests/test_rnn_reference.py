"""The NumPy reference of the recurrent family in float64: against PyTorch CPU autograd
(torch.nn.RNN/LSTM/GRU with the same weights, packed sequences for variable lengths, the
reverse direction of a bidirectional module) and against finite differences, including the
options PyTorch lacks (peepholes, coupled gates, the original GRU). The CPU pipeline (stages
over chunks of steps on the thread pool, BLAS on the calling thread): the same bits for every
thread count, the same results run sequentially or side by side, errors raised, not hung on."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gpukernels as gk
from _helpers import assert_close
from gpukernels.reference import rnn as ref

CELLS = {"rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}), "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
         "lstm": (torch.nn.LSTM, {}), "gru": (torch.nn.GRU, {})}


def _weights(rng, cell, I, H, bias=True, peep=False, scale=0.5):
    G = ref.GATES[cell]
    w = [rng.standard_normal((G * H, I)) * scale, rng.standard_normal((G * H, H)) * scale]
    w += [rng.standard_normal(G * H) * scale, rng.standard_normal(G * H) * scale] if bias else [None, None]
    w.append(rng.standard_normal((3, H)) * scale if peep else None)
    return w


@pytest.fixture(params=["sequential", "pipelined"])
def pipeline(request, monkeypatch):
    """Layers run their stages one after another, or (any size) on a pool of two threads."""
    if request.param == "pipelined":
        monkeypatch.setattr(ref, "PIPELINE_MIN_WORK", 0)
        monkeypatch.setenv("GPUKERNELS_NUM_THREADS", "2")
    return request.param


@pytest.mark.parametrize("lengths", [None, (5, 2, 4, 1)], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_layer_matches_torch_autograd_both_directions(cell, lengths, pipeline, rng):
    T, B, I, H = 5, 4, 3, 6
    module_cls, kwargs = CELLS[cell]
    module = module_cls(I, H, bidirectional=True, **kwargs).double()
    x = torch.from_numpy(rng.standard_normal((T, B, I))).requires_grad_()
    h0 = torch.from_numpy(rng.standard_normal((2, B, H))).requires_grad_()
    c0 = torch.from_numpy(rng.standard_normal((2, B, H))).requires_grad_()
    state = (h0, c0) if cell == "lstm" else h0
    if lengths is None:
        y, final = module(x, state)
    else:
        packed, final = module(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False), state)
        y, _ = pad_packed_sequence(packed, total_length=T)
    h_n, c_n = final if cell == "lstm" else (final, None)
    gy, ghn = torch.randn_like(y), torch.randn_like(h_n)
    gcn = torch.randn_like(c_n) if cell == "lstm" else None
    loss = (y * gy).sum() + (h_n * ghn).sum() + ((c_n * gcn).sum() if cell == "lstm" else 0)
    loss.backward()

    grad_x = np.zeros((T, B, I))
    for d, suffix in enumerate(("", "_reverse")):
        weights = [getattr(module, f"{n}_l0{suffix}").detach().numpy()
                   for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        c0_d = c0[d].detach().numpy() if cell == "lstm" else None
        args = (x.detach().numpy(), h0[d].detach().numpy(), c0_d, *weights, None)
        options = dict(cell=cell, reverse=bool(d), lengths=lengths)
        y_d, h_d, c_d, ws = ref.layer_forward(*args, **options)
        assert_close(y_d, y[:, :, d * H:(d + 1) * H].detach().numpy(), "float64")
        assert_close(h_d, h_n[d].detach().numpy(), "float64")
        if cell == "lstm":
            assert_close(c_d, c_n[d].detach().numpy(), "float64")
        grads = ref.layer_backward(gy[:, :, d * H:(d + 1) * H].numpy(), ghn[d].numpy(),
                                   None if gcn is None else gcn[d].numpy(), ws, *args, **options)
        grad_x += grads[0]
        assert_close(grads[1], h0.grad[d].numpy(), "float64", "reduction")
        if cell == "lstm":
            assert_close(grads[2], c0.grad[d].numpy(), "float64", "reduction")
        for got, name in zip(grads[3:7], ("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
            assert_close(got, getattr(module, f"{name}_l0{suffix}").grad.numpy(), "float64", "reduction")
    assert_close(grad_x, x.grad.numpy(), "float64", "reduction")


def _loss(cell, arrays, projections, options):
    """A scalar of every output, for finite differences."""
    y, h_n, c_n, _ = ref.layer_forward(*arrays, cell=cell, **options)
    gy, ghn, gcn = projections
    return (y * gy).sum() + (h_n * ghn).sum() + (0.0 if c_n is None else (c_n * gcn).sum())


VARIANTS = [
    ("rnn_tanh", {}, False), ("rnn_relu", {}, False),
    ("lstm", {}, False), ("lstm", {}, True), ("lstm", {"coupled": True}, False), ("lstm", {"coupled": True}, True),
    ("gru", {}, False), ("gru", {"linear_before_reset": False}, False),
]


@pytest.mark.parametrize("reverse,lengths", [(False, None), (True, (3, 1, 2))], ids=["forward", "reverse-lengths"])
@pytest.mark.parametrize("cell,options,peep", VARIANTS,
                         ids=[f"{c}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}{'-peep' if p else ''}"
                              for c, o, p in VARIANTS])
def test_every_gradient_matches_finite_differences(cell, options, peep, reverse, lengths, rng):
    T, B, I, H = 3, 3, 2, 4
    w_ih, w_hh, b_ih, b_hh, w_peep = _weights(rng, cell, I, H, peep=peep)
    arrays = [rng.standard_normal((T, B, I)), rng.standard_normal((B, H)),
              rng.standard_normal((B, H)) if cell == "lstm" else None, w_ih, w_hh, b_ih, b_hh, w_peep]
    projections = (rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    options = dict(options, reverse=reverse, lengths=lengths)
    *_, ws = ref.layer_forward(*arrays, cell=cell, **options)
    grads = ref.layer_backward(*projections[:2], projections[2] if cell == "lstm" else None, ws, *arrays,
                               cell=cell, **options)
    eps = 1e-6
    for index, (array, grad) in enumerate(zip(arrays, grads)):
        if array is None:
            assert grad is None
            continue
        numeric = np.zeros_like(array)
        for k in np.ndindex(array.shape):
            saved = array[k]
            array[k] = saved + eps
            up = _loss(cell, arrays, projections, options)
            array[k] = saved - eps
            down = _loss(cell, arrays, projections, options)
            array[k] = saved
            numeric[k] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7, err_msg=f"gradient of argument {index}")


def test_coupled_lstm_ignores_the_forget_rows_and_gives_them_zero_gradient(rng):
    T, B, I, H = 4, 2, 3, 5
    w_ih, w_hh, b_ih, b_hh, _ = _weights(rng, "lstm", I, H)
    x, h0, c0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    y, h, c, ws = ref.layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, cell="lstm", coupled=True)
    w_ih2 = w_ih.copy()
    w_ih2[H:2 * H] = 7.0  # the f rows
    y2, *_ = ref.layer_forward(x, h0, c0, w_ih2, w_hh, b_ih, b_hh, None, cell="lstm", coupled=True)
    np.testing.assert_array_equal(y, y2)
    i, f = ws[:, :, :H], ws[:, :, H:2 * H]
    np.testing.assert_allclose(f, 1 - i, rtol=0, atol=1e-15)
    grads = ref.layer_backward(np.ones_like(y), None, None, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None,
                               cell="lstm", coupled=True)
    assert np.all(grads[3][H:2 * H] == 0) and np.all(grads[4][H:2 * H] == 0)


def test_lengths_keep_the_state_and_zero_the_output(rng):
    T, B, I, H = 6, 3, 2, 4
    w = _weights(rng, "gru", I, H)
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    y, h_n, _, _ = ref.layer_forward(x, h0, None, *w, cell="gru", lengths=(6, 2, 4))
    _, h_rev, _, _ = ref.layer_forward(x, h0, None, *w, cell="gru", reverse=True, lengths=(6, 2, 4))
    assert np.all(y[2:, 1] == 0) and np.all(y[4:, 2] == 0) and np.all(y[:, 0] != 0)
    for b, n in enumerate((6, 2, 4)):
        alone, h_alone, _, _ = ref.layer_forward(x[:n, b:b + 1], h0[b:b + 1], None, *w, cell="gru")
        np.testing.assert_allclose(h_n[b], h_alone[0], rtol=1e-14)
        np.testing.assert_allclose(y[:n, b], alone[:, 0], rtol=1e-14)
        # reverse: each sequence starts at its own last element
        _, h_rev_alone, _, _ = ref.layer_forward(x[:n, b:b + 1][::-1].copy(), h0[b:b + 1], None, *w, cell="gru")
        np.testing.assert_allclose(h_rev[b], h_rev_alone[0], rtol=1e-14)


@pytest.mark.parametrize("shape", [(0, 3), (4, 0)], ids=["T0", "B0"])
def test_empty_sequences_and_batches(shape, rng):
    T, B = shape
    I, H = 3, 5
    w = _weights(rng, "lstm", I, H)
    x, h0, c0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    y, h_n, c_n = gk.lstm_layer(x, h0, c0, *w[:4])
    assert y.shape == (T, B, H)
    if T == 0:
        np.testing.assert_array_equal(h_n, h0)
    grads = gk.lstm_layer_backward(np.ones((T, B, H)), np.ones((B, H)), None, x, h0, c0, *w[:4])
    assert [g.shape for g in grads[:7]] == [x.shape, h0.shape, c0.shape, w[0].shape, w[1].shape, w[2].shape,
                                            w[3].shape]


def test_public_cells_match_torch_functional_cells(rng):
    B, I, H = 3, 4, 5
    x, h, c = (rng.standard_normal(s) for s in ((B, I), (B, H), (B, H)))
    t = torch.from_numpy
    for cell, fn, torch_fn in (("lstm", None, torch.lstm_cell), ("gru", gk.gru_cell, torch.gru_cell),
                               ("rnn_tanh", gk.rnn_cell, torch.rnn_tanh_cell)):
        w = _weights(rng, cell, I, H)[:4]
        if cell == "lstm":
            got = gk.lstm_cell(x, h, c, *w)
            want = torch_fn(t(x), (t(h), t(c)), *map(t, w))
            for g, e in zip(got, want):
                assert_close(g, e.numpy(), "float64")
        else:
            assert_close(fn(x, h, *w), torch_fn(t(x), t(h), *map(t, w)).numpy(), "float64")


def test_public_cell_backward_matches_torch_autograd(rng):
    B, I, H = 3, 4, 5
    w = _weights(rng, "lstm", I, H)[:4]
    x, h, c = (rng.standard_normal(s) for s in ((B, I), (B, H), (B, H)))
    gh, gc = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    leaves = [torch.from_numpy(a).requires_grad_() for a in (x, h, c, *w)]
    h1, c1 = torch.lstm_cell(leaves[0], (leaves[1], leaves[2]), *leaves[3:])
    ((h1 * torch.from_numpy(gh)).sum() + (c1 * torch.from_numpy(gc)).sum()).backward()
    grads = gk.lstm_cell_backward(gh, gc, x, h, c, *w)
    assert grads[7] is None
    for got, leaf in zip(grads[:7], leaves):
        assert_close(got, leaf.grad.numpy(), "float64", "reduction")


def test_float32_and_float16_compute_like_float64(rng):
    T, B, I, H = 4, 3, 5, 6
    w = _weights(rng, "gru", I, H)[:4]
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    y64, h64 = gk.gru_layer(x, h0, *w)
    for dtype, tol in ((np.float32, "float32"), (np.float16, "float16")):
        y, h = gk.gru_layer(x.astype(dtype), h0.astype(dtype), *(a.astype(dtype) for a in w))
        assert y.dtype == dtype and h.dtype == dtype
        y_ref, _ = gk.gru_layer(*(a.astype(dtype).astype(np.float64) for a in (x, h0, *w)))
        assert_close(y, y_ref, tol, "reduction")


# ---------------------------------------------------------------------------------------------
# The CPU pipeline


def _bits(arrays) -> list[bytes]:
    return [None if a is None else (a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()) for a in arrays]


@pytest.mark.parametrize("cell,options,peep", VARIANTS,
                         ids=[f"{c}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}{'-peep' if p else ''}"
                              for c, o, p in VARIANTS])
def test_same_bits_for_every_thread_count(cell, options, peep, monkeypatch, rng):
    monkeypatch.setattr(ref, "PIPELINE_MIN_WORK", 0)
    T, B, I, H = 19, 5, 7, 6  # 19 steps: uneven chunks of 3
    w_ih, w_hh, b_ih, b_hh, w_peep = (None if w is None else w.astype(np.float32)
                                      for w in _weights(rng, cell, I, H, peep=peep))
    arrays = [rng.standard_normal((T, B, I)).astype(np.float32), rng.standard_normal((B, H)).astype(np.float32),
              rng.standard_normal((B, H)).astype(np.float32) if cell == "lstm" else None, w_ih, w_hh, b_ih, b_hh,
              w_peep]
    grads_out = [rng.standard_normal(s).astype(np.float32) for s in ((T, B, H), (B, H), (B, H))]
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setenv("GPUKERNELS_NUM_THREADS", str(threads))
        for reverse, lengths in ((False, None), (True, (19, 4, 11, 1, 19))):
            kw = dict(options, cell=cell, reverse=reverse, lengths=lengths)
            y, h, c, ws = ref.layer_forward(*arrays, **kw)
            grads = ref.layer_backward(grads_out[0], grads_out[1], grads_out[2] if cell == "lstm" else None, ws,
                                       *arrays, **kw)
            results.append(_bits((y, h, c, ws, *grads)))
    assert results[0:2] == results[2:4] == results[4:6]


def test_a_failing_stage_raises_and_releases_the_stages_after_it():
    done = []

    def fail_on_two(k):
        if k == 2:
            raise ZeroDivisionError("stage 0, chunk 2")

    def record(k):
        done.append(k)

    outcome = []

    def call():
        try:
            ref._pipeline([(fail_on_two, range(4), None), (record, range(4), 0), (record, (3,), 1)], parallel=True)
        except ZeroDivisionError as error:
            outcome.append(error)

    runner = threading.Thread(target=call, daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "a stage waited forever for a failed one"
    assert len(outcome) == 1 and str(outcome[0]) == "stage 0, chunk 2"
    assert done in ([], [0], [0, 1])  # only chunks the failed stage had finished, never chunk 3


def test_blas_runs_on_the_calling_thread_inside_a_layer_and_gets_its_threads_back(monkeypatch, rng):
    threads = ref._parallel.openblas_threads()
    if threads is None:
        pytest.skip("NumPy does not use its bundled OpenBLAS here: the layer leaves BLAS's threads alone")
    get, set_threads = threads
    before = get()
    seen = []  # BLAS's thread count at each step
    try:
        set_threads(2)
        w = _weights(rng, "rnn_tanh", 3, 4)
        step = ref._STEP["rnn_tanh"]
        monkeypatch.setitem(ref._STEP, "rnn_tanh", lambda *a: (seen.append(get()), step(*a))[1])
        ref.layer_forward(rng.standard_normal((3, 2, 3)), rng.standard_normal((2, 4)), None, *w, cell="rnn_tanh")
        assert seen == [1, 1, 1] and get() == 2
    finally:
        set_threads(before)
