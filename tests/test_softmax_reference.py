"""The NumPy softmax reference in float64 against PyTorch CPU autograd and central differences,
on every dim, rows of length 1..4097, inputs around 1e4 and fully masked rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import assert_close
from gpukernels.reference import softmax as ref

SHAPES_DIMS = [((1,), 0), ((7,), 0), ((3, 1000), 1), ((2, 4097), 1), ((5, 4, 3), 0), ((5, 4, 3), 1), ((5, 4, 3), 2)]
CASE_IDS = [f"N{'x'.join(map(str, s))}-dim{d}" for s, d in SHAPES_DIMS]


def _torch_forward_backward(fn, x: np.ndarray, dy: np.ndarray, dim: int):
    xt = torch.from_numpy(x).requires_grad_()
    yt = fn(xt, dim)
    (gt,) = torch.autograd.grad(yt, xt, torch.from_numpy(dy))
    return yt.detach().numpy(), gt.numpy()


def _torch_masked_softmax(x: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """What a PyTorch user writes: fill dropped scores with -inf, and zero rows with nothing
    kept (shifting them to 0 first, so no NaN reaches autograd)."""
    any_kept = keep.any(dim=dim, keepdim=True)
    scores = torch.where(any_kept, x.masked_fill(~keep, float("-inf")), torch.zeros_like(x))
    return torch.where(keep, torch.softmax(scores, dim), torch.zeros_like(x))


@pytest.mark.parametrize("scale", [3.0, 1e4], ids=["x3", "x1e4"])
@pytest.mark.parametrize("shape,dim", SHAPES_DIMS, ids=CASE_IDS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_matches_torch_autograd_float64(name, shape, dim, scale, rng):
    x = rng.standard_normal(shape) * scale
    dy = rng.standard_normal(shape)
    forward, backward = getattr(ref, name), getattr(ref, f"{name}_backward")
    y = forward(x, dim)
    y_torch, g_torch = _torch_forward_backward(getattr(torch, name), x, dy, dim)
    assert y.dtype == np.float64 and np.isfinite(y).all()
    assert_close(y, y_torch, "float64")
    assert_close(backward(dy, y, dim), g_torch, "float64")


# Row maxima that let the forward exponentiate x itself (0 .. 80 for 1000 columns in float32) and
# ones that need the maximum subtracted first: all negative (log-probabilities), around 0, past
# exp's float32 range, and a block where one row alone needs the shift.
OFFSETS = {"minus200": -200.0, "minus95": -95.0, "around0": None, "plus40": 40.0, "plus79": 79.0, "plus85": 85.0, "one-row-over": "mixed"}


def _offset_rows(rng, offset) -> np.ndarray:
    x = rng.standard_normal((6, 1000)) * 3
    if offset is None:
        return x - x.max(axis=1, keepdims=True) + rng.uniform(-1, 1, (6, 1))  # maxima on both sides of 0
    if offset == "mixed":
        x[2] += 300
        return x
    return x + offset


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("offset", list(OFFSETS.values()), ids=list(OFFSETS))
def test_rows_far_from_zero_match_torch_and_keep_float32_accuracy(name, offset, rng):
    x = _offset_rows(rng, offset)
    dy = rng.standard_normal(x.shape)
    y_torch, g_torch = _torch_forward_backward(getattr(torch, name), x, dy, 1)
    forward, backward = getattr(ref, name), getattr(ref, f"{name}_backward")
    y = forward(x, 1)
    assert_close(y, y_torch, "float64")
    assert_close(backward(dy, y, 1), g_torch, "float64")
    y32 = forward(x.astype(np.float32), 1)
    assert np.isfinite(y32).all()
    assert_close(y32, y, "float32", "reduction")


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_shift_invariance_across_both_ways_of_exponentiating(name, rng):
    """softmax(x + c) = softmax(x) and log_softmax(x + c) = log_softmax(x): a block whose maxima
    allow exp(x) (c = 30) against the same block shifted below 0 (c = -30), which subtracts
    the maximum first, agree to float32 precision."""
    x = (rng.standard_normal((64, 333)) * 3).astype(np.float32)
    forward = getattr(ref, name)
    want = forward(x.astype(np.float64), 1)
    for c in (30.0, -30.0):
        got = forward(x + np.float32(c), 1)
        assert_close(got, want, "float32", "reduction")
        if name == "softmax":
            np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("cols", [1000, ref.EINSUM_ROW_MAX, ref.EINSUM_ROW_MAX + 1, 2**20])
def test_row_sums_stay_float32_accurate_at_any_length(cols, rng):
    """The softmax normaliser (the row sum of exp values) stays within a few float32 ulp however
    long the row; a sum whose error grows along the row (einsum's: about 100 ulp at 2^20 values)
    would not. And the float32 softmax of such rows adds up to 1."""
    x = (rng.standard_normal((4, cols)) * 3).astype(np.float32)
    values = np.exp(x)
    want = values.astype(np.float64).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ref.row_sum(values, 1), want, rtol=4e-7)
    y = ref.softmax(x, 1)
    np.testing.assert_allclose(y.astype(np.float64).sum(axis=1), 1, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_backward_matches_central_differences(name, rng):
    x = rng.standard_normal((4, 9)) * 2
    dy = rng.standard_normal(x.shape)
    forward, backward = getattr(ref, name), getattr(ref, f"{name}_backward")
    h = 1e-6
    numeric = np.empty_like(x)
    for index in np.ndindex(x.shape):  # each input perturbed on its own: a full Jacobian-vector product
        step = np.zeros_like(x)
        step[index] = h
        numeric[index] = np.sum(dy * (forward(x + step, 1) - forward(x - step, 1))) / (2 * h)
    np.testing.assert_allclose(backward(dy, forward(x, 1), 1), numeric, rtol=1e-6, atol=1e-8)


def test_masked_backward_matches_central_differences(rng):
    x = rng.standard_normal((4, 9)) * 2
    mask = rng.random(x.shape) > 0.4
    mask[2] = False  # a fully masked row
    dy = rng.standard_normal(x.shape)
    h = 1e-6
    numeric = np.empty_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        plus, minus = ref.masked_softmax(x + step, mask, None, 1), ref.masked_softmax(x - step, mask, None, 1)
        numeric[index] = np.sum(dy * (plus - minus)) / (2 * h)
    grad = ref.softmax_backward(dy, ref.masked_softmax(x, mask, None, 1), 1)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    assert np.all(grad[~mask] == 0)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_masked_softmax_matches_the_torch_composition(dim, rng):
    x = rng.standard_normal((6, 5, 7)) * 1e4
    mask = rng.random((6, 1, 7)) > 0.5  # broadcast along dim 1
    keep = np.broadcast_to(mask, x.shape)
    dy = rng.standard_normal(x.shape)
    xt = torch.from_numpy(x).requires_grad_()
    yt = _torch_masked_softmax(xt, torch.from_numpy(np.ascontiguousarray(keep)), dim)
    (gt,) = torch.autograd.grad(yt, xt, torch.from_numpy(dy))
    y = ref.masked_softmax(x, mask, None, dim)
    assert np.isfinite(y).all()
    assert_close(y, yt.detach().numpy(), "float64")
    assert_close(ref.softmax_backward(dy, y, dim), gt.numpy(), "float64")


def test_lengths_keep_a_prefix_and_combine_with_a_mask(rng):
    x = rng.standard_normal((4, 6))
    lengths = np.array([0, 1, 4, 9])  # empty row, one kept, a prefix, longer than the row
    y = ref.masked_softmax(x, None, lengths, 1)
    keep = np.arange(6)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(y[~keep], 0)
    np.testing.assert_array_equal(y[0], 0)
    np.testing.assert_allclose(y.sum(axis=1), [0, 1, 1, 1])
    mask = rng.random(x.shape) > 0.3
    both = ref.masked_softmax(x, mask, lengths, 1)
    np.testing.assert_array_equal(both, ref.masked_softmax(x, mask & keep, None, 1))


def test_lengths_along_a_middle_dim(rng):
    x = rng.standard_normal((3, 5, 2))
    lengths = rng.integers(0, 6, size=(3, 2))
    y = ref.masked_softmax(x, None, lengths, 1)
    keep = np.arange(5)[None, :, None] < lengths[:, None, :]
    np.testing.assert_allclose(y, ref.masked_softmax(x, keep, None, 1))


def test_fully_masked_rows_are_zero_never_nan():
    x = np.array([[1.0, 2.0], [-np.inf, -np.inf], [3.0, -np.inf]])
    mask = np.array([[False, False], [True, True], [True, True]])
    y = ref.masked_softmax(x, mask, None, 1)
    np.testing.assert_array_equal(y, [[0, 0], [0, 0], [1, 0]])


def test_unmasked_rows_of_minus_infinity_are_nan_as_in_torch():
    x = np.array([[-np.inf, -np.inf], [np.inf, 1.0], [np.nan, 1.0], [-np.inf, 0.0]])
    for name in ("softmax", "log_softmax"):
        want = getattr(torch, name)(torch.from_numpy(x), 1).numpy()
        assert_close(getattr(ref, name)(x, 1), want, "float64")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_keeps_dtype_and_rounds_once(name, dtype, rng):
    x = (rng.standard_normal((8, 300)) * 3).astype(dtype)
    dy = rng.standard_normal((8, 300)).astype(dtype)
    forward, backward = getattr(ref, name), getattr(ref, f"{name}_backward")
    y = forward(x, 1)
    assert y.dtype == dtype
    label = np.dtype(dtype).name
    assert_close(y, forward(x.astype(np.float64), 1), label, "reduction")
    g = backward(dy, y, 1)
    assert g.dtype == dtype
    assert_close(g, backward(dy.astype(np.float64), y.astype(np.float64), 1), label, "reduction")


def test_empty_rows_and_empty_batches():
    for shape, dim in [((0, 5), 1), ((3, 0), 1), ((3, 0), 0)]:
        x = np.ones(shape)
        assert ref.softmax(x, dim).shape == shape
        assert ref.log_softmax(x, dim).shape == shape
        assert ref.masked_softmax(x, np.ones(shape, bool), None, dim).shape == shape


def test_masked_float16_is_computed_in_float32_and_rounded_once(rng):
    x = (rng.standard_normal((3, 40)) * 3).astype(np.float16)
    mask = rng.random((3, 40)) > 0.5
    lengths = np.array([40, 7, 0])
    y = ref.masked_softmax(x, mask, lengths, 1)
    assert y.dtype == np.float16
    want = ref.masked_softmax(x.astype(np.float64), mask, lengths, 1)
    assert_close(y, want, "float16", "reduction")
    assert (y[2] == 0).all()
