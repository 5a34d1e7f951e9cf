"""Multi-head (block-diagonal) recurrent weights, ``heads=``: the compact ``w_hh`` of shape
``(G*H, H // heads)`` against (1) the dense path fed the explicit block-diagonal matrix, (2)
PyTorch float64 autograd of a hand-written loop whose recurrent product is a per-head einsum (no
dense matrix anywhere), on the reference; then the Triton kernels in the interpreter, the CuPy
backend on the host (g++), the torch ops (opcheck lives in test_torch_opcheck.py), the nn
modules and torch.compile, and the argument checks. Every backend multiplies the compact blocks
itself: spies on the one maker of a dense matrix (``_rnn_driver.block_diagonal``), on the step
kernel's launches and on the dense products assert that nothing dense is formed or multiplied
except where a kernel says it falls back (Triton's forward step under 16 units a head)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import gpukernels as gk
import gpukernels.torch.functional as GF
import gpukernels.torch.nn as gnn
from _helpers import as_float64, assert_close, assert_gradients_close, random_tensor
from conftest import DEVICE
from gpukernels.ops import rnn as rnn_ops

# kind -> (cell family, options); "peep" adds peephole weights.
KINDS = {
    "rnn_tanh": ("rnn", {"nonlinearity": "tanh"}),
    "rnn_relu": ("rnn", {"nonlinearity": "relu"}),
    "lstm": ("lstm", {}),
    "lstm_peep": ("lstm", {"peep": True}),
    "lstm_coupled": ("lstm", {"coupled": True}),
    "lstm_peep_coupled": ("lstm", {"peep": True, "coupled": True}),
    "gru": ("gru", {}),
    "gru_original": ("gru", {"linear_before_reset": False}),
}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
DIRECTIONS = [pytest.param(False, None, id="forward"), pytest.param(True, (5, 2, 4), id="reverse-lengths")]


def _arrays(rng, kind, T, B, I, H, heads, make):
    """Fresh random inputs (``make(shape, scale)`` builds one array); w_hh compact."""
    family, options = KINDS[kind]
    G = GATES[family]
    return {
        "x": make((T, B, I), 1.0), "h0": make((B, H), 0.5), "c0": make((B, H), 0.5) if family == "lstm" else None,
        "w_ih": make((G * H, I), 0.5), "w_hh": make((G * H, H // heads), 0.5), "b_ih": make((G * H,), 0.3),
        "b_hh": make((G * H,), 0.3), "w_peep": make((3, H), 0.5) if options.get("peep") else None,
        "gy": make((T, B, H), 1.0), "gh": make((B, H), 1.0), "gc": make((B, H), 1.0),
    }


def _numpy_maker(rng, dtype=np.float64):
    return lambda shape, scale: (rng.standard_normal(shape) * scale).astype(dtype)


def _run_gk(kind, a, heads, reverse, lengths, w_hh=None):
    """(outputs, gradients) of one layer through the public ops, with the compact ``a["w_hh"]``
    and ``heads``, or with the dense ``w_hh`` given (heads=1)."""
    family, options = KINDS[kind]
    w_hh = a["w_hh"] if w_hh is None else w_hh
    kw = {"reverse": reverse, "lengths": lengths, "heads": heads}
    x, h0, c0, w_ih, b_ih, b_hh = a["x"], a["h0"], a["c0"], a["w_ih"], a["b_ih"], a["b_hh"]
    if family == "rnn":
        kw["nonlinearity"] = options["nonlinearity"]
        return (gk.rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, **kw),
                gk.rnn_layer_backward(a["gy"], a["gh"], x, h0, w_ih, w_hh, b_ih, b_hh, **kw))
    if family == "gru":
        kw["linear_before_reset"] = options.get("linear_before_reset", True)
        return (gk.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, **kw),
                gk.gru_layer_backward(a["gy"], a["gh"], x, h0, w_ih, w_hh, b_ih, b_hh, **kw))
    kw.update(w_peep=a["w_peep"], coupled=options.get("coupled", False))
    return (gk.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, **kw),
            gk.lstm_layer_backward(a["gy"], a["gh"], a["gc"], x, h0, c0, w_ih, w_hh, b_ih, b_hh, **kw))


def _dense_by_hand(w_hh, gates, heads):
    """The block-diagonal ``(G*H, H)`` matrix, one row at a time (the convention as stated)."""
    rows, size = w_hh.shape
    H = size * heads
    dense = np.zeros((rows, H), dtype=w_hh.dtype)
    for r in range(rows):
        head = (r % H) // size
        dense[r, head * size:(head + 1) * size] = w_hh[r]
    return dense


def _diagonal_by_hand(dense, heads):
    rows, H = dense.shape
    size = H // heads
    return np.stack([dense[r, ((r % H) // size) * size:((r % H) // size + 1) * size] for r in range(rows)])


# ---------------------------------------------------------------------------------------------
# The hand-written PyTorch loop: the recurrent product is a per-head einsum, no dense matrix.


def _per_head(h, w, heads, gates):
    """``h @ blockdiag(w)^T`` for the compact ``w`` (gates*H, H // heads), head by head."""
    B, H = h.shape
    size = H // heads
    return torch.einsum("gkij,bkj->bgki", w.reshape(gates, heads, size, size), h.reshape(B, heads, size)).reshape(
        B, gates * H)


def _torch_loop(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, *, heads, reverse, lengths):
    family, options = KINDS[kind]
    T, B, _ = x.shape
    H = h0.shape[1]
    lens = torch.tensor(lengths if lengths is not None else [T] * B)
    h, c = h0, c0
    ys = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        gx = x[t] @ w_ih.T + b_ih
        if family == "rnn":
            a = gx + _per_head(h, w_hh, heads, 1) + b_hh
            h_new = torch.tanh(a) if options["nonlinearity"] == "tanh" else torch.relu(a)
            c_new = None
        elif family == "lstm":
            i, f, g, o = (gx + _per_head(h, w_hh, heads, 4) + b_hh).chunk(4, 1)
            if w_peep is not None:
                i, f = i + w_peep[0] * c, f + w_peep[1] * c
            i = torch.sigmoid(i)
            f = 1 - i if options.get("coupled") else torch.sigmoid(f)
            c_new = f * c + i * torch.tanh(g)
            if w_peep is not None:
                o = o + w_peep[2] * c_new
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
        else:
            xr, xz, xn = gx.chunk(3, 1)
            hr, hz = (_per_head(h, w_hh[:2 * H], heads, 2) + b_hh[:2 * H]).chunk(2, 1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            if options.get("linear_before_reset", True):
                n = torch.tanh(xn + r * (_per_head(h, w_hh[2 * H:], heads, 1) + b_hh[2 * H:]))
            else:
                n = torch.tanh(xn + _per_head(r * h, w_hh[2 * H:], heads, 1) + b_hh[2 * H:])
            h_new, c_new = (1 - z) * n + z * h, None
        active = (t < lens)[:, None]
        h = torch.where(active, h_new, h)
        c = None if c is None else torch.where(active, c_new, c)
        ys[t] = torch.where(active, h_new, torch.zeros_like(h_new))
    return torch.stack(ys), h, c


NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_peep")


def _torch_reference(kind, a, heads, reverse, lengths):
    """(outputs, gradients in the order of the public backward) by torch autograd in float64."""
    family = KINDS[kind][0]
    leaves = {n: None if a[n] is None else torch.tensor(a[n], requires_grad=True) for n in NAMES}
    y, h_n, c_n = _torch_loop(kind, *leaves.values(), heads=heads, reverse=reverse, lengths=lengths)
    loss = (y * torch.tensor(a["gy"])).sum() + (h_n * torch.tensor(a["gh"])).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.tensor(a["gc"])).sum()
    present = [n for n in NAMES if leaves[n] is not None]
    grads = dict(zip(present, torch.autograd.grad(loss, [leaves[n] for n in present])))
    names = NAMES if family == "lstm" else ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
    outputs = (y, h_n, c_n) if family == "lstm" else (y, h_n)
    return [o.detach().numpy() for o in outputs], [None if n not in grads else grads[n].numpy() for n in names]


# ---------------------------------------------------------------------------------------------
# The reference in float64


@pytest.mark.parametrize("reverse,lengths", DIRECTIONS)
@pytest.mark.parametrize("heads", [1, 2, 4], ids=lambda h: f"heads{h}")
@pytest.mark.parametrize("kind", KINDS)
def test_reference_matches_torch_autograd_of_a_per_head_loop(kind, heads, reverse, lengths, rng):
    a = _arrays(rng, kind, 5, 3, 3, 8, heads, _numpy_maker(rng))
    outputs, grads = _run_gk(kind, a, heads, reverse, lengths)
    want_outputs, want_grads = _torch_reference(kind, a, heads, reverse, lengths)
    for got, want in zip(outputs, want_outputs):
        assert_close(got, want, "float64", "reduction")
    assert grads[3 if KINDS[kind][0] != "lstm" else 4].shape == a["w_hh"].shape
    for index, (got, want) in enumerate(zip(grads, want_grads)):
        if want is None:
            assert got is None, f"gradient {index}"
        else:
            assert_close(got, want, "float64", "reduction")


def _same_sums(got, want):
    """Equal up to the order BLAS sums the same terms in: the per-head products add exactly the
    nonzero terms of the dense product, but OpenBLAS may split a K of 8 differently from a K of 4
    (measured: 1e-16 apart in float64), so bitwise equality is not promised."""
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reverse,lengths", DIRECTIONS)
@pytest.mark.parametrize("heads", [2, 4], ids=lambda h: f"heads{h}")
@pytest.mark.parametrize("kind", KINDS)
def test_heads_equal_the_dense_path_with_the_block_diagonal_matrix(kind, heads, reverse, lengths, rng):
    a = _arrays(rng, kind, 5, 3, 3, 8, heads, _numpy_maker(rng))
    dense = _dense_by_hand(a["w_hh"], GATES[KINDS[kind][0]], heads)
    outputs, grads = _run_gk(kind, a, heads, reverse, lengths)
    dense_outputs, dense_grads = _run_gk(kind, a, 1, reverse, lengths, w_hh=dense)
    for got, want in zip(outputs, dense_outputs):
        _same_sums(got, want)
    w_hh_index = 4 if KINDS[kind][0] == "lstm" else 3
    for index, (got, want) in enumerate(zip(grads, dense_grads)):
        if index == w_hh_index:
            # The compact gradient is the diagonal blocks; the dense one has more (the
            # off-diagonal blocks, which belong to no parameter and must not leak in).
            _same_sums(got, _diagonal_by_hand(want, heads))
            assert np.abs(want - _dense_by_hand(got, GATES[KINDS[kind][0]], heads)).max() > 0
        elif want is None:
            assert got is None
        else:
            _same_sums(got, want)


def _driver_backends():
    """The shared driver's array backends over NumPy (CuPy's, as the host tests run it) and torch
    CPU tensors (Triton's), with the arrays each takes."""
    from types import SimpleNamespace

    from gpukernels.cupy.rnn import _ArrayBackend
    from gpukernels.triton.rnn import _TorchBackend

    return [(_ArrayBackend(SimpleNamespace(xp=np, launch=None)), lambda a: a, lambda a: a),
            (_TorchBackend("cpu"), torch.from_numpy, lambda t: t.numpy())]


def test_expansion_on_numpy_and_torch_agrees_with_the_convention(rng):
    """The dense fallback (the kernels that cannot take the blocks) builds what the convention says."""
    from gpukernels import _rnn_driver as driver

    for ops, to, back in _driver_backends():
        w = rng.standard_normal((3 * 12, 4))  # GRU, H=12, heads=3
        dense = back(driver.block_diagonal(ops, to(w), 3, 3))
        np.testing.assert_array_equal(dense, _dense_by_hand(w, 3, 3))
        w[0, 0] = np.inf  # an inf stays in its own block: the rest of the row and column stay zero
        dense = back(driver.block_diagonal(ops, to(w), 3, 3))
        assert np.isinf(dense[0, 0]) and not np.isnan(dense).any() and np.count_nonzero(dense[0]) == 4


@pytest.mark.parametrize("gates,heads", [(1, 2), (3, 4), (4, 3), (2, 1)], ids=lambda v: str(v))
def test_the_drivers_per_head_products_equal_the_dense_ones(gates, heads, rng):
    """head_product, head_gradient and head_weight_gradient (the Triton backward and every CuPy
    product) against the same products with the dense block-diagonal matrix, on NumPy and torch."""
    from gpukernels import _rnn_driver as driver

    for ops, to, back in _driver_backends():
        B, N, H = 5, 7, 12
        w = rng.standard_normal((gates * H, H // heads))
        dense = _dense_by_hand(w, gates, heads)
        h, d = rng.standard_normal((B, H)), rng.standard_normal((B, gates * H))
        states, dgates = rng.standard_normal((N, H)), rng.standard_normal((N, gates * H))
        _same_sums(back(driver.head_product(ops, to(h), to(w), heads)), h @ dense.T)
        by_head = driver.heads_by_head(ops, to(w), gates, heads)
        _same_sums(back(driver.head_gradient(ops, to(d), by_head)), d @ dense)
        c = rng.standard_normal((B, H))  # the carried part of dh_prev, added in the same pass
        _same_sums(back(driver.head_gradient(ops, to(d), by_head, to(c))), c + d @ dense)
        _same_sums(back(driver.head_weight_gradient(ops, to(dgates), to(states), heads)),
                   _diagonal_by_hand(dgates.T @ states, heads))
        # a gate slice (the original GRU's r, z rows and its n rows): rows of the compact weight
        if gates > 1:
            size = H // heads
            _same_sums(back(driver.head_product(ops, to(h), to(w[H:]), heads)), h @ dense[H:].T)
            _same_sums(back(driver.head_gradient(ops, to(d[:, H:]), by_head[:, size:])), d[:, H:] @ dense[H:])


def test_cells_take_heads_like_a_layer_of_one_step(rng):
    a = _arrays(rng, "lstm_peep", 1, 3, 3, 6, 3, _numpy_maker(rng))
    (y, h_n, c_n), grads = _run_gk("lstm_peep", a, 3, False, None)
    h, c = gk.lstm_cell(a["x"][0], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], w_peep=a["w_peep"],
                        heads=3)
    np.testing.assert_array_equal(h, h_n)
    np.testing.assert_array_equal(c, c_n)
    cell_grads = gk.lstm_cell_backward(a["gy"][0] + a["gh"], a["gc"], a["x"][0], a["h0"], a["c0"], a["w_ih"],
                                       a["w_hh"], a["b_ih"], a["b_hh"], w_peep=a["w_peep"], heads=3)
    for got, want in zip(cell_grads[1:], grads[1:]):
        assert_close(got, want, "float64", "reduction")
    assert_close(cell_grads[0], grads[0][0], "float64", "reduction")
    g = _arrays(rng, "gru_original", 1, 2, 3, 4, 2, _numpy_maker(rng))
    _, gru_grads = _run_gk("gru_original", g, 2, False, None)
    cell = gk.gru_cell_backward(g["gy"][0] + g["gh"], g["x"][0], g["h0"], g["w_ih"], g["w_hh"], g["b_ih"], g["b_hh"],
                                linear_before_reset=False, heads=2)
    assert_close(cell[3], gru_grads[3], "float64", "reduction")
    r = gk.rnn_cell(g["x"][0], g["h0"], g["w_ih"][:4], g["w_hh"][:4], heads=2, nonlinearity="relu")
    zero = torch.zeros(4, dtype=torch.float64)  # rnn_cell without biases
    want, _, _ = _torch_loop("rnn_relu", torch.tensor(g["x"][:1]), torch.tensor(g["h0"]), None,
                             torch.tensor(g["w_ih"][:4]), torch.tensor(g["w_hh"][:4]), zero, zero, None, heads=2,
                             reverse=False, lengths=None)
    assert_close(r, want[0].numpy(), "float64", "reduction")


# ---------------------------------------------------------------------------------------------
# Triton (interpreter on CPU tensors without a GPU)

TRITON_CASES = [("rnn_tanh", "float32", 2), ("rnn_relu", "bfloat16", 3), ("lstm", "float16", 2),
                ("lstm_peep_coupled", "float32", 3), ("gru", "float32", 2), ("gru_original", "float32", 3),
                ("gru_original", "bfloat16", 2), ("gru", "float16", 6)]


@pytest.mark.parametrize("reverse,lengths", DIRECTIONS)
@pytest.mark.parametrize("kind,dtype,heads", [pytest.param(*c, id=f"{c[0]}-T5-B3-H6-heads{c[2]}-{SHORT[c[1]]}")
                                              for c in TRITON_CASES])
def test_triton_layers_with_heads_match_the_reference(kind, dtype, heads, reverse, lengths, rng):
    _run_on_device_against_reference("triton", kind, dtype, 5, 3, 6, heads, reverse, lengths, rng, DEVICE)


def _run_on_device_against_reference(backend, kind, dtype, T, B, H, heads, reverse, lengths, rng, device,
                                     library=lambda t: t):
    """One layer's outputs and every gradient on ``backend`` (inputs made on ``device``, handed
    over as ``library`` makes them) against the float64 reference."""
    scale = 1 / (1 + H / (64 * heads)) ** 0.5  # the recurrent sums have H // heads terms
    a = _arrays(rng, kind, T, B, 4, H, heads, lambda shape, s: random_tensor(rng, shape, dtype, device, s * scale))
    with gk.use_backend(backend):
        outputs, grads = _run_gk(kind, {k: None if v is None else library(v) for k, v in a.items()}, heads, reverse,
                                 lengths)
    want_outputs, want_grads = _run_gk(kind, {k: None if v is None else as_float64(v) for k, v in a.items()},
                                       heads, reverse, lengths)
    assert str(outputs[0].dtype).removeprefix("torch.") == dtype
    for got, want in zip(outputs, want_outputs):
        assert_close(got, want, dtype, "reduction")
    assert_gradients_close(grads, want_grads, dtype)


class _StepLaunches:
    """Stands in for the Triton forward step kernel: records each launch's grid and the shape of
    the recurrent weight it was given, then launches the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((tuple(grid), tuple(args[8].shape)))  # args[8]: w_ptr
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.fixture
def dense_expansions(monkeypatch):
    """Records every dense block-diagonal matrix the driver forms (its only maker), by shape."""
    from gpukernels import _rnn_driver as driver
    from gpukernels.triton import rnn_persistent

    formed = []

    def record(ops, w, gates, heads, _real=driver.block_diagonal):
        formed.append((tuple(w.shape), gates, heads))
        return _real(ops, w, gates, heads)

    monkeypatch.setattr(driver, "block_diagonal", record)
    monkeypatch.delenv(rnn_persistent.ENVIRONMENT_SWITCH, raising=False)  # the per-step kernels
    return formed


def _spy_triton_products(monkeypatch):
    """(the step-launch recorder, a list of the dense products the backward ran: addmm/mm)."""
    from gpukernels.triton import rnn as triton_rnn

    steps = _StepLaunches(triton_rnn.rnn_step_kernel)
    monkeypatch.setattr(triton_rnn, "rnn_step_kernel", steps)
    dense_products = []
    for name in ("addmm", "matmul_into"):
        def record(self, *args, _real=getattr(triton_rnn._TorchBackend, name), _name=name):
            dense_products.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(triton_rnn._TorchBackend, name, record)
    return steps, dense_products


# Heads of 16 units or more: the step kernel multiplies the compact blocks (every cell, dtype,
# heads 2 and 4, a head of 24 units that no power-of-two tile divides); T=5, B=3.
BLOCK_CASES = [("rnn_tanh", "float32", 32, 2), ("rnn_relu", "float16", 64, 4), ("lstm", "bfloat16", 32, 2),
               ("lstm_peep", "float32", 64, 4), ("lstm_coupled", "float16", 32, 2),
               ("lstm_peep_coupled", "bfloat16", 64, 4), ("gru", "float32", 64, 4), ("gru", "bfloat16", 32, 2),
               ("gru_original", "float16", 64, 4), ("gru_original", "float32", 32, 2), ("lstm", "float32", 48, 2)]


@pytest.mark.parametrize("reverse,lengths", DIRECTIONS)
@pytest.mark.parametrize("kind,dtype,H,heads", [
    pytest.param(*c, id=f"{c[0]}-T5-B3-H{c[2]}-heads{c[3]}-{SHORT[c[1]]}") for c in BLOCK_CASES])
def test_triton_kernels_multiply_the_blocks_without_a_dense_matrix(kind, dtype, H, heads, reverse, lengths, rng,
                                                                  monkeypatch, dense_expansions):
    """The step kernel gets the compact weight and a grid with one slice of programs per head;
    backward's products are per head (no addmm with a dense w_hh); nothing dense is formed. A
    kernel reading an off-diagonal block would read past its head's columns: the reference
    (per-head products, checked against torch autograd above) would tell."""
    steps, dense_products = _spy_triton_products(monkeypatch)
    _run_on_device_against_reference("triton", kind, dtype, 5, 3, H, heads, reverse, lengths, rng, DEVICE)
    assert dense_expansions == []
    assert dense_products == []
    G = GATES[KINDS[kind][0]]
    assert steps.launches
    for grid, w_shape in steps.launches:
        assert grid[2] == heads, grid
        # the original GRU's launches get the r, z rows and the n rows of the compact weight
        assert w_shape[1] == H // heads and w_shape[0] in (G * H, 2 * H, H), w_shape


@pytest.mark.parametrize("kind,dtype", [("lstm_peep", "float32"), ("gru_original", "bfloat16"),
                                        ("rnn_relu", "float16")])
def test_triton_heads_narrower_than_a_dot_tile_take_the_dense_expansion(kind, dtype, rng, monkeypatch,
                                                                        dense_expansions):
    """H=32, heads=4: 8 units a head, under the step kernel's 16 (MIN_STEP_HEAD). Exactly the
    forward step gets the dense matrix, once per layer forward (the public backward recomputes
    the forward: two); backward's products stay per head."""
    from gpukernels.triton import rnn as triton_rnn

    assert not triton_rnn.step_takes_heads(8) and triton_rnn.step_takes_heads(16)
    steps, dense_products = _spy_triton_products(monkeypatch)
    _run_on_device_against_reference("triton", kind, dtype, 4, 3, 32, 4, True, (4, 1, 3), rng, DEVICE)
    G = GATES[KINDS[kind][0]]
    assert dense_expansions == [((G * 32, 8), G, 4)] * 2
    assert dense_products == []
    for grid, w_shape in steps.launches:
        assert grid[2] == 1 and w_shape[1] == 32, (grid, w_shape)


@pytest.mark.parametrize("kind,dtype,H,heads", [("lstm_peep_coupled", "float32", 6, 2), ("gru", "bfloat16", 6, 3),
                                                ("rnn_relu", "float16", 6, 2), ("lstm", "float32", 32, 2)])
def test_persistent_triton_kernels_run_the_compact_weight(kind, dtype, H, heads, rng, monkeypatch, dense_expansions):
    """The opt-in persistent kernels (whole time loop in one launch) take the compact weight
    too, heads under the step kernel's 16 units included: nothing dense is formed when they run
    (tests/test_rnn_persistent_heads.py covers them at every cell, dtype and slice kind)."""
    from gpukernels.triton import rnn_persistent as rp

    monkeypatch.setenv(rp.ENVIRONMENT_SWITCH, "1")
    ran = []
    for name in ("layer_forward", "layer_backward"):
        def record(*args, _real=getattr(rp, name), _name=name, **kwargs):
            ran.append((_name, _real(*args, **kwargs)))
            return ran[-1][1]

        monkeypatch.setattr(rp, name, record)
    _run_on_device_against_reference("triton", kind, dtype, 4, 3, H, heads, True, (4, 1, 3), rng, DEVICE)
    assert dense_expansions == []
    assert ran == [("layer_forward", True), ("layer_forward", True), ("layer_backward", True)]


# ---------------------------------------------------------------------------------------------
# CuPy: the backend's entry points with NumPy as the array module and rnn.cu built with g++
# (see test_rnn_cupy_host.py), reached through the public ops: the dispatch call is routed there.


@pytest.fixture(scope="module")
def cupy_run():
    from _host_buffers import host_runner
    from gpukernels.cupy import rnn as cupy_rnn

    return host_runner(cupy_rnn.PROGRAM)


@pytest.fixture
def cupy_call(cupy_run):
    """A stand-in for the dispatch call that runs the CuPy backend's entry points on the host;
    records the ops it ran."""
    from gpukernels.cupy import rnn as cupy_rnn

    def call(family, op, arrays, params=None, *, returns_like=None):
        call.ran.append(op)
        return getattr(cupy_rnn, op)(*arrays, run=cupy_run, **(params or {}))

    call.ran = []
    return call


CUPY_CASES = [(kind, "float32", 2) for kind in KINDS] + [("lstm_peep", "float16", 3), ("gru_original", "bfloat16", 2),
                                                          ("rnn_tanh", "bfloat16", 6), ("gru", "float16", 3)]


@pytest.mark.parametrize("reverse,lengths", DIRECTIONS)
@pytest.mark.parametrize("kind,dtype,heads", [pytest.param(*c, id=f"{c[0]}-T5-B3-H6-heads{c[2]}-{SHORT[c[1]]}")
                                              for c in CUPY_CASES])
def test_cupy_layers_with_heads_match_the_reference(cupy_call, monkeypatch, kind, dtype, heads, reverse, lengths,
                                                    rng):
    storage = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if storage is None:
        storage = pytest.importorskip("ml_dtypes").bfloat16
    a = _arrays(rng, kind, 5, 3, 4, 6, heads, _numpy_maker(rng, storage))
    want_outputs, want_grads = _run_gk(kind, {k: None if v is None else as_float64(v) for k, v in a.items()},
                                       heads, reverse, lengths)
    with monkeypatch.context() as patch:
        patch.setattr(rnn_ops, "call", cupy_call)
        outputs, grads = _run_gk(kind, a, heads, reverse, lengths)
    assert cupy_call.ran == ["layer_forward", "layer_forward", "layer_backward"]
    assert outputs[0].dtype == storage
    for got, want in zip(outputs, want_outputs):
        assert_close(got, want, dtype, "reduction")
    assert_gradients_close(grads, want_grads, dtype)


@pytest.mark.parametrize("kind,heads", [("lstm_peep_coupled", 4), ("gru_original", 2), ("gru", 4), ("rnn_tanh", 2)])
def test_cupy_products_use_the_blocks_without_a_dense_matrix(cupy_call, monkeypatch, dense_expansions, kind, heads,
                                                             rng):
    """CuPy multiplies the compact weight (the driver's per-head products) at every head size,
    here 4 and 8 units: no dense matrix, and every forward step's weight is compact."""
    from gpukernels.cupy import rnn as cupy_rnn

    weights = []

    def forward_step(self, code, step, _real=cupy_rnn._ArrayBackend.forward_step):
        weights.append((tuple(step.w.shape), step.heads))
        return _real(self, code, step)

    monkeypatch.setattr(cupy_rnn._ArrayBackend, "forward_step", forward_step)
    a = _arrays(rng, kind, 5, 3, 4, 16, heads, _numpy_maker(rng, np.float32))
    want_outputs, want_grads = _run_gk(kind, {k: None if v is None else as_float64(v) for k, v in a.items()},
                                       heads, True, (5, 2, 4))
    with monkeypatch.context() as patch:
        patch.setattr(rnn_ops, "call", cupy_call)
        outputs, grads = _run_gk(kind, a, heads, True, (5, 2, 4))
    assert dense_expansions == []
    assert weights and all(shape[1] == 16 // heads and step_heads == heads for shape, step_heads in weights)
    for got, want in zip(outputs, want_outputs):
        assert_close(got, want, "float32", "reduction")
    assert_gradients_close(grads, want_grads, "float32")


@pytest.mark.parametrize("backend", ["numpy", "triton", "cupy"])
@pytest.mark.parametrize("kind", ["lstm_peep", "gru_original", "rnn_tanh"])
@pytest.mark.parametrize("T,B", [(0, 3), (4, 0)], ids=["T0-B3", "T4-B0"])
def test_empty_sequences_and_batches_with_heads(backend, kind, T, B, rng, monkeypatch, request):
    """Nothing to multiply: every output and gradient has its shape (w_hh's compact) and the
    weight gradients are zeros; grad_h0 is grad_h_n when T=0."""
    H, heads = 32, 2
    a = _arrays(rng, kind, T, B, 4, H, heads, _numpy_maker(rng, np.float32))
    if backend == "cupy":
        monkeypatch.setattr(rnn_ops, "call", request.getfixturevalue("cupy_call"))
    elif backend == "triton":
        a = {k: None if v is None else torch.from_numpy(v) for k, v in a.items()}
    with gk.use_backend(backend) if backend != "cupy" else contextlib.nullcontext():  # cupy: the call is routed
        outputs, grads = _run_gk(kind, a, heads, False, None)
    names = NAMES if KINDS[kind][0] == "lstm" else ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
    assert tuple(outputs[0].shape) == (T, B, H)
    for name, grad in zip(names, grads):
        if a[name] is None:
            assert grad is None, name
            continue
        assert tuple(grad.shape) == tuple(a[name].shape), name
        grad = np.asarray(grad)
        if name.startswith(("w_", "b_")):
            assert not np.any(grad), name
        elif name == "h0" and T == 0:
            np.testing.assert_array_equal(grad, np.asarray(a["gh"]))


# ---------------------------------------------------------------------------------------------
# nn modules


def _module_by_hand(module, kind, x, hx):
    """The stacked bidirectional layers of ``module`` through the hand-written per-head loop."""
    directions = 2 if module.bidirectional else 1
    h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
    layer_input, h_n, c_n = x, [], []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            w_ih, w_hh, b_ih, b_hh, w_peep = module._weights(layer, direction)
            index = layer * directions + direction
            y, h, c = _torch_loop(kind, layer_input, h0[index], None if c0 is None else c0[index], w_ih, w_hh, b_ih,
                                  b_hh, w_peep, heads=module.heads, reverse=direction == 1, lengths=None)
            outputs.append(y)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=2)
    return layer_input, torch.stack(h_n), (torch.stack(c_n) if c0 is not None else None)


@pytest.mark.parametrize("name,kind,options", [("LSTM", "lstm", {}), ("LSTM", "lstm_peep", {"peephole": True}),
                                               ("GRU", "gru", {}), ("RNN", "rnn_tanh", {})],
                         ids=["LSTM", "LSTM-peephole", "GRU", "RNN"])
def test_modules_with_heads_match_the_per_head_loop(name, kind, options):
    torch.manual_seed(0)
    module = getattr(gnn, name)(3, 6, num_layers=2, bidirectional=True, heads=2, dtype=torch.float64, **options)
    assert module.weight_hh_l1_reverse.shape == (GATES[KINDS[kind][0]] * 6, 3)
    assert "heads=2" in repr(module)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 6, dtype=torch.float64)
    hx = (h0, torch.randn_like(h0)) if name == "LSTM" else h0
    out, state = module(x, hx)
    want_out, want_h, want_c = _module_by_hand(module, kind, x, hx)
    got_h, got_c = state if name == "LSTM" else (state, None)
    for got, want in ((out, want_out), (got_h, want_h), (got_c, want_c)):
        if want is not None:
            assert_close(got, want.detach().numpy(), "float64", "reduction")
    projections = [torch.randn_like(t) for t in (want_out, want_h)]
    params = [x, *module.parameters()]
    grads = torch.autograd.grad((out * projections[0]).sum() + (got_h * projections[1]).sum(), params)
    want_grads = torch.autograd.grad((want_out * projections[0]).sum() + (want_h * projections[1]).sum(), params)
    for (param_name, _), got, want in zip([("input", x), *module.named_parameters()], grads, want_grads):
        try:
            assert_close(got, want.numpy(), "float64", "reduction")
        except AssertionError as error:
            raise AssertionError(f"{param_name}: {error}") from None


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_heads_one_state_dict_round_trips_with_torch_nn(name):
    torch.manual_seed(0)
    ours = getattr(gnn, name)(3, 4, num_layers=2, bidirectional=True, heads=1)
    theirs = getattr(torch.nn, name)(3, 4, num_layers=2, bidirectional=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3)
    with gk.use_backend("numpy"):
        torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-5, atol=1e-6)
    back = getattr(gnn, name)(3, 4, num_layers=2, bidirectional=True)
    back.load_state_dict(theirs.state_dict())
    assert "heads" not in repr(back)
    multi = getattr(gnn, name)(3, 4, num_layers=2, bidirectional=True, heads=2)
    with pytest.raises(RuntimeError, match="weight_hh_l0"):  # torch's shapes are not the compact ones
        multi.load_state_dict(theirs.state_dict())


def test_cell_modules_take_heads():
    torch.manual_seed(0)
    cell = gnn.GRUCell(3, 4, heads=2, dtype=torch.float64)
    assert cell.weight_hh.shape == (12, 2) and "heads=2" in repr(cell)
    x, h = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    want, _, _ = _torch_loop("gru", x[None], h, None, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, None,
                             heads=2, reverse=False, lengths=None)
    assert_close(cell(x, h), want[0].detach().numpy(), "float64", "reduction")


def test_a_module_with_heads_compiles_fullgraph_and_matches_eager():
    torch.manual_seed(0)
    gru = gnn.GRU(3, 4, heads=2, bidirectional=True)
    x = torch.randn(5, 2, 3, requires_grad=True)
    expected = gru(x)[0].sum()
    (expected_grad,) = torch.autograd.grad(expected, x)
    compiled = torch.compile(lambda t: gru(t)[0].sum(), fullgraph=True, backend="aot_eager")(x)
    (grad,) = torch.autograd.grad(compiled, x)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# On a CUDA GPU (skipped elsewhere): the compiled Triton kernels, and CuPy fed cupy arrays (the
# expansion then runs on cupy arrays) or torch CUDA tensors (on torch tensors).


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["triton", "cupy-torch", "cupy-cupy"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind,H,heads", [("lstm_peep_coupled", 100, 4), ("gru", 100, 5), ("gru_original", 100, 2),
                                          ("rnn_tanh", 7, 7)], ids=lambda v: str(v))
def test_layers_with_heads_on_the_device(kind, H, heads, dtype, path, rng, dense_expansions):
    backend, _, inputs = path.partition("-")
    library = lambda t: t  # noqa: E731
    if backend == "cupy":
        cupy = pytest.importorskip("cupy")
        if dtype == "bfloat16":
            pytest.importorskip("ml_dtypes", reason="cupy represents bfloat16 through ml_dtypes")
        if inputs == "cupy":
            library = cupy.from_dlpack
    _run_on_device_against_reference(backend, kind, dtype, 6, 5, H, heads, True, (6, 2, 5, 1, 3), rng, "cuda",
                                     library)
    # the dense matrix only for the Triton forward step of heads under 16 units (twice: the
    # public backward recomputes the forward), never for CuPy
    narrow = backend == "triton" and H // heads < 16
    assert len(dense_expansions) == (2 if narrow else 0), dense_expansions


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_modules_with_heads_on_the_device(name):
    """fp32 on the GPU (Triton) against the same module in float64 on the CPU (the reference)."""
    torch.manual_seed(0)
    ours = getattr(gnn, name)(8, 32, num_layers=2, bidirectional=True, heads=4).cuda()
    oracle = getattr(gnn, name)(8, 32, num_layers=2, bidirectional=True, heads=4, dtype=torch.float64)
    oracle.load_state_dict(ours.state_dict())
    x = torch.randn(7, 3, 8, device="cuda")
    results = []
    for module, xl in ((ours, x.clone()), (oracle, x.double().cpu())):
        xl.requires_grad_()
        out, _ = module(xl)
        out.square().sum().backward()
        results.append([out, xl.grad, *(p.grad for p in module.parameters())])
    for got, want in zip(*results):
        assert_close(got, want.detach().numpy(), "float32", "reduction")


# ---------------------------------------------------------------------------------------------
# Bad input: raised before any kernel runs


@pytest.fixture
def no_kernel(monkeypatch):
    def call(*args, **kwargs):
        raise AssertionError("a kernel ran before the arguments were checked")

    monkeypatch.setattr(rnn_ops, "call", call)


BAD_HEADS = [("2", TypeError, "heads must be an int, got str"), (2.0, TypeError, "heads must be an int"),
             (True, TypeError, "heads must be an int, got bool"), (0, ValueError, r"heads.*hidden_size=8.*heads=0"),
             (3, ValueError, r"heads must be a positive divisor of hidden_size=8, got heads=3"),
             (-2, ValueError, r"heads.*hidden_size=8")]


@pytest.mark.parametrize("heads,error,message", BAD_HEADS, ids=[repr(b[0]) for b in BAD_HEADS])
def test_bad_heads_are_refused_before_any_kernel(no_kernel, heads, error, message, rng):
    a = _arrays(rng, "lstm", 2, 3, 3, 8, 1, _numpy_maker(rng))
    a["w_hh"] = a["w_hh"][:, :4]  # what heads=2 would take: only the heads check can fail
    x, h0, c0, w_ih, w_hh = a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"]
    for run in (lambda: gk.lstm_layer(x, h0, c0, w_ih, w_hh, heads=heads),
                lambda: gk.lstm_layer_backward(a["gy"], None, None, x, h0, c0, w_ih, w_hh, heads=heads),
                lambda: gk.lstm_cell(x[0], h0, c0, w_ih, w_hh, heads=heads),
                lambda: GF.lstm_layer(*(torch.from_numpy(t) for t in (x, h0, c0, w_ih, w_hh)), heads=heads)):
        with pytest.raises(error, match=message):
            run()
    with pytest.raises(error, match=message):
        gnn.LSTM(3, 8, heads=heads)
    with pytest.raises(error, match=message):
        gnn.GRUCell(3, 8, heads=heads)


@pytest.mark.parametrize("shape,heads", [((24, 6), 1), ((24, 2), 2), ((24, 6), 2), ((24, 3), 4), ((23, 3), 2)],
                         ids=["heads1-compact", "heads2-too-narrow", "heads2-dense", "heads4-too-wide", "rows"])
def test_a_w_hh_of_the_wrong_compact_shape_is_refused(no_kernel, shape, heads, rng):
    a = _arrays(rng, "gru", 2, 3, 3, 8, 1, _numpy_maker(rng))
    w_hh = rng.standard_normal(shape)
    with pytest.raises(ValueError, match=r"w_hh must have shape \(3\*hidden_size, hidden_size"):
        gk.gru_layer(a["x"], a["h0"], a["w_ih"], w_hh, heads=heads)
    with pytest.raises(ValueError, match="w_hh must have shape"):
        gk.gru_layer_backward(a["gy"], None, a["x"], a["h0"], a["w_ih"], w_hh, heads=heads)


# ---------------------------------------------------------------------------------------------
# The benchmarks' bytes/FLOP model


@pytest.mark.parametrize("heads", [2, 4], ids=lambda h: f"heads{h}")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_bytes_and_flops_model_counts_each_heads_block_only(cell, heads):
    """The recurrent product of a step: 2*B*G*H*(H // heads) FLOPs and G*H*(H // heads) weights
    read (forward; again in backward); the rest of the step is as many bytes as without heads."""
    from gpukernels.benchmarks import registry
    from gpukernels.benchmarks import rnn as bench

    B, H, G = 16, 256, GATES[cell]
    saved = G * H * (H - H // heads)  # weight elements no longer read or multiplied
    assert bench.step_flops(cell, B, H, "fwd") - bench.step_flops(cell, B, H, "fwd", heads) == 2 * B * saved
    assert bench.step_flops(cell, B, H, "full") - bench.step_flops(cell, B, H, "full", heads) == 3 * 2 * B * saved
    assert bench.step_bytes(cell, B, H, "float16") - bench.step_bytes(cell, B, H, "float16", heads=heads) == 2 * saved
    assert (bench.step_bytes(cell, B, H, "float16", "full") - bench.step_bytes(cell, B, H, "float16", "full", heads)
            == 2 * 2 * saved)
    assert bench.weight_grad_bytes(cell, H, "full") - bench.weight_grad_bytes(cell, H, "full", heads) == 4 * saved
    if heads == bench.HEADS:  # the registered multi-head cases carry the model
        case = next(c for c in registry.all_cases() if c.op == f"{cell}_layer" and c.mode == "fwd"
                    and c.size == f"B={B},H={H},T={bench.STEPS},heads={heads}")
        assert case.flops == bench.STEPS * bench.step_flops(cell, B, H, "fwd", heads)
        assert case.params["heads"] == heads


def test_the_heads_cpu_timing_table_runs():
    """`python -m gpukernels.benchmarks.rnn --heads-cpu` (the README's CPU numbers), tiny."""
    from gpukernels.benchmarks import rnn as bench

    lines = bench.heads_cpu_table(B=2, H=8, steps=3, rounds=1)
    assert len(lines) == 2 * 5  # LSTM and GRU: heads 1, 2, 4 and 2, 4 as dense
    assert all(" ms  backward " in line for line in lines) and sum("as dense" in line for line in lines) == 4
