"""The NumPy normalisation reference in float64 against PyTorch CPU autograd (F.layer_norm,
F.rms_norm, and add + norm for the fused residual variants) and central differences; the
statistics against ATen's native_layer_norm; odd rows (length 1, zero variance, length 0) and
empty batches; fp32/fp16 computed in fp32; the same bits whatever the thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import assert_close
from gpukernels.reference import _parallel
from gpukernels.reference import normalization as ref

SHAPES = [((1,), 1), ((7,), 1), ((3, 1000), 1), ((2, 4097), 1), ((4, 3, 5), 2), ((2, 3, 4, 5), 3)]
SHAPE_IDS = [f"N{'x'.join(map(str, s))}-k{k}" for s, k in SHAPES]


def _torch_op(op, x, r, w, b, normalized_shape):
    """What a PyTorch user writes, returning (normalised, sum or None)."""
    source = x + r if op.startswith("add_") else x
    if "rms" in op:
        y = F.rms_norm(source, normalized_shape, w, eps=1e-5)
    else:
        y = F.layer_norm(source, normalized_shape, w, b, eps=1e-5)
    return y, (source if op.startswith("add_") else None)


def _ours(op, x, r, w, b, k):
    if op == "layer_norm":
        y, mean, rstd = ref.layer_norm(x, w, b, normalized_ndim=k, eps=1e-5)
        return y, None, mean, rstd
    if op == "rms_norm":
        y, rstd = ref.rms_norm(x, w, normalized_ndim=k, eps=1e-5)
        return y, None, None, rstd
    if op == "add_layer_norm":
        return ref.add_layer_norm(x, r, w, b, normalized_ndim=k, eps=1e-5)
    y, s, rstd = ref.add_rms_norm(x, r, w, normalized_ndim=k, eps=1e-5)
    return y, s, None, rstd


def _ours_backward(op, dy, ds, source, mean, rstd, w, b, k):
    if op == "layer_norm":
        return ref.layer_norm_backward(dy, source, mean, rstd, w, normalized_ndim=k, bias_grad=b is not None)
    if op == "rms_norm":
        return (*ref.rms_norm_backward(dy, source, rstd, w, normalized_ndim=k), None)
    if op == "add_layer_norm":
        return ref.add_layer_norm_backward(dy, ds, source, mean, rstd, w, normalized_ndim=k, bias_grad=b is not None)
    return (*ref.add_rms_norm_backward(dy, ds, source, rstd, w, normalized_ndim=k), None)


OPS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape,k", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("op", OPS)
def test_matches_torch_autograd_float64(op, shape, k, affine, rng):
    trailing = shape[len(shape) - k:]
    x, r, dy, ds = (rng.standard_normal(shape) * 3 + 1 for _ in range(4))
    w = rng.standard_normal(trailing) if affine else None
    b = rng.standard_normal(trailing) if affine and "rms" not in op else None
    used_r = r if op.startswith("add_") else None
    tensors = [torch.from_numpy(a).requires_grad_() if a is not None else None for a in (x, used_r, w, b)]
    y_t, s_t = _torch_op(op, *tensors, trailing)
    outputs, grads_in = [y_t], [torch.from_numpy(dy)]
    if s_t is not None:
        outputs.append(s_t)
        grads_in.append(torch.from_numpy(ds))
    wanted = [t for t in tensors if t is not None]
    grads = torch.autograd.grad(outputs, wanted, grads_in)
    by_name = dict(zip([n for n, t in zip("xrwb", tensors) if t is not None], grads))

    y, s, mean, rstd = _ours(op, x, r, w, b, k)
    assert y.dtype == np.float64
    assert_close(y, y_t.detach().numpy(), "float64", "reduction")
    source = s if s is not None else x
    dx, dw, db = _ours_backward(op, dy, ds if s is not None else None, source, mean, rstd, w, b, k)
    # elementwise with an absolute floor: a row of one has gradients of rounding size only
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)  # noqa: E731
    close(dx, by_name["x"].numpy())
    if op.startswith("add_"):
        close(dx, by_name["r"].numpy())  # the same gradient reaches both
    if w is not None:
        close(dw, by_name["w"].numpy())
    else:
        assert dw is None
    if b is not None:
        close(db, by_name["b"].numpy())


@pytest.mark.parametrize("shape,k", [((4, 6), 1), ((3, 2, 5), 2)], ids=["R4-C6", "R3-C2x5"])
def test_statistics_match_aten_native_layer_norm(shape, k, rng):
    x = rng.standard_normal(shape) * 2 + 3
    trailing = shape[len(shape) - k:]
    _, mean_t, rstd_t = torch.native_layer_norm(torch.from_numpy(x), trailing, None, None, 1e-5)
    _, mean, rstd = ref.layer_norm(x, None, None, normalized_ndim=k, eps=1e-5)
    assert mean.shape == tuple(mean_t.shape) and rstd.shape == tuple(rstd_t.shape)
    assert_close(mean, mean_t.numpy(), "float64", "reduction")
    assert_close(rstd, rstd_t.numpy(), "float64", "reduction")


@pytest.mark.parametrize("op", OPS)
def test_backward_matches_central_differences(op, rng):
    x, r = rng.standard_normal((3, 6)) * 2, rng.standard_normal((3, 6))
    w, b = rng.standard_normal(6), rng.standard_normal(6)
    dy, ds = rng.standard_normal((3, 6)), rng.standard_normal((3, 6))
    add = op.startswith("add_")

    def loss(x, w, b):
        y, s, _, _ = _ours(op, x, r, w, b, 1)
        return np.sum(dy * y) + (np.sum(ds * s) if add else 0.0)

    h = 1e-6
    numeric = {}
    for name, base in (("x", x), ("w", w), ("b", b)):
        grad = np.empty_like(base)
        for index in np.ndindex(base.shape):
            args = {"x": x, "w": w, "b": b}
            step = np.zeros_like(base)
            step[index] = h
            plus, minus = dict(args), dict(args)
            plus[name], minus[name] = base + step, base - step
            grad[index] = (loss(**plus) - loss(**minus)) / (2 * h)
        numeric[name] = grad
    y, s, mean, rstd = _ours(op, x, r, w, b, 1)
    dx, dw, db = _ours_backward(op, dy, ds if add else None, s if add else x, mean, rstd, w, b, 1)
    np.testing.assert_allclose(dx, numeric["x"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numeric["w"], rtol=1e-6, atol=1e-7)
    if "rms" not in op:
        np.testing.assert_allclose(db, numeric["b"], rtol=1e-6, atol=1e-7)


def test_zero_variance_rows_and_rows_of_length_1():
    b = np.array([0.5, -2.0, 3.0])
    y, mean, rstd = ref.layer_norm(np.full((2, 3), 7.0), None, b, normalized_ndim=1, eps=1e-5)
    np.testing.assert_array_equal(y, np.broadcast_to(b, (2, 3)))
    np.testing.assert_allclose(rstd, 1 / np.sqrt(1e-5))
    y, _, _ = ref.layer_norm(np.array([[3.0], [-1.0]]), None, None, normalized_ndim=1, eps=1e-5)
    np.testing.assert_array_equal(y, 0.0)
    dx, dw, db = ref.layer_norm_backward(np.ones((2, 1)), np.array([[3.0], [-1.0]]), np.array([[3.0], [-1.0]]),
                                         np.full((2, 1), 1 / np.sqrt(1e-5)), np.ones(1), normalized_ndim=1,
                                         bias_grad=True)
    np.testing.assert_array_equal(dx, 0.0)  # a row of one: the output does not depend on x
    assert dw.shape == (1,) and db.tolist() == [2.0]


def test_empty_batches_and_rows_of_length_0():
    for op in OPS:
        x = np.ones((0, 4))
        y, s, mean, rstd = _ours(op, x, x, np.ones(4), np.zeros(4), 1)
        assert y.shape == (0, 4) and rstd.shape == (0, 1)
        dx, dw, db = _ours_backward(op, x, x, x, mean, rstd, np.ones(4), np.zeros(4), 1)
        assert dx.shape == (0, 4) and dw.tolist() == [0.0] * 4
    y, mean, rstd = ref.layer_norm(np.ones((3, 0)), None, None, normalized_ndim=1, eps=1e-5)
    assert y.shape == (3, 0) and (mean == 0).all() and np.allclose(rstd, 1 / np.sqrt(1e-5))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_low_precision_inputs_are_computed_in_float32(dtype, rng):
    x64 = rng.standard_normal((5, 300)) * 3
    x = x64.astype(dtype)
    y, mean, rstd = ref.layer_norm(x, None, None, normalized_ndim=1, eps=1e-5)
    assert y.dtype == np.dtype(dtype) and mean.dtype == np.float32 and rstd.dtype == np.float32
    want, _, _ = ref.layer_norm(x.astype(np.float64), None, None, normalized_ndim=1, eps=1e-5)
    assert_close(y, want, dtype, "reduction")


def test_the_bits_do_not_depend_on_the_thread_count(monkeypatch, rng):
    x = rng.standard_normal((4096, 300)).astype(np.float32)  # several chunks of rows
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(300).astype(np.float32)
    results = []
    for threads in ("1", "2", "5"):
        monkeypatch.setenv(_parallel.ENV_VAR, threads)
        y, mean, rstd = ref.layer_norm(x, w, w, normalized_ndim=1, eps=1e-5)
        grads = ref.layer_norm_backward(dy, x, mean, rstd, w, normalized_ndim=1, bias_grad=True)
        results.append([a.tobytes() for a in (y, mean, rstd, *grads)])
    assert results[0] == results[1] == results[2]
