"""Every Triton softmax kernel against the float64 reference, through the public API and at
every launch the heuristic can pick: in Triton's interpreter on CPU tensors here, on the GPU
where there is one (same tests). Test ids: R<rows>-C<cols>-<dtype>."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from conftest import DEVICE
from gpukernels.reference import softmax as ref
from gpukernels.triton import softmax as tsm

OPS = ("softmax", "log_softmax")
ROW_LENGTHS = (1, 7, 1000, 4097)

# The interpreter evaluates masked-off lanes too (rows past the end: -inf - -inf, log 0) and
# NumPy warns about them; those lanes are never stored, and the results are checked below.
pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")


def _run(name, x, dy, dim):
    with gk.use_backend("triton"):
        y = getattr(gk, name)(x, dim)
        dx = getattr(gk, f"{name}_backward")(dy, y, dim)
    return y, dx


def _check(name, x, dy, y, dx, dim, dtype):
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert_close(y, getattr(ref, name)(as_float64(x), dim), dtype, "reduction")
    # backward from the kernel's own (rounded) output, as autograd would
    assert_close(dx, getattr(ref, f"{name}_backward")(as_float64(dy), as_float64(y), dim), dtype, "reduction")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", ROW_LENGTHS, ids=lambda c: f"R3-C{c}")
@pytest.mark.parametrize("name", OPS)
def test_rows_of_every_length(name, cols, dtype, rng):
    x = random_tensor(rng, (3, cols), dtype, DEVICE)
    dy = random_tensor(rng, (3, cols), dtype, DEVICE, scale=1.0)
    y, dx = _run(name, x, dy, -1)
    _check(name, x, dy, y, dx, 1, dtype)


@pytest.mark.parametrize("name", OPS)
def test_long_row_takes_the_online_loop(name, rng):
    cols = 2**16 + 3  # 17 chunks of the online kernel, the last one ragged
    assert tsm.row_launch(cols).online
    x = random_tensor(rng, (2, cols), "float32", DEVICE)
    dy = random_tensor(rng, (2, cols), "float32", DEVICE, scale=1.0)
    y, dx = _run(name, x, dy, 1)
    _check(name, x, dy, y, dx, 1, "float32")


def test_a_row_of_more_than_2_to_the_20_columns():
    # the minimum for the online kernel, forward only to keep the interpreter's time
    x = torch.randn(1, 2**20 + 3, device=DEVICE) * 3
    with gk.use_backend("triton"):
        y = gk.softmax(x)
    assert_close(y, ref.softmax(as_float64(x), 1), "float32", "reduction")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPS)
def test_inputs_around_1e4_are_stable(name, dtype, rng):
    x = random_tensor(rng, (5, 257), dtype, DEVICE, scale=1e4)
    dy = random_tensor(rng, (5, 257), dtype, DEVICE, scale=1.0)
    y, dx = _run(name, x, dy, 1)
    assert torch.isfinite(y).all()
    _check(name, x, dy, y, dx, 1, dtype)


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
@pytest.mark.parametrize("name", OPS)
def test_every_dim(name, dim, rng):
    x = random_tensor(rng, (6, 5, 7), "float32", DEVICE)
    dy = random_tensor(rng, (6, 5, 7), "float32", DEVICE, scale=1.0)
    y, dx = _run(name, x, dy, dim)
    _check(name, x, dy, y, dx, dim % 3, "float32")


def _launch_id(launch):
    kind = "online" if launch.online else "single"
    return f"{kind}-B{launch.block_n}-R{launch.rows}-W{launch.num_warps}"


def _rows_for(launch):
    # a ragged row (block_n - 3 columns; the online kernel two chunks and a ragged third) and a
    # partly filled last program
    cols = 2 * launch.block_n + 5 if launch.online else max(1, launch.block_n - 3)
    return 2 * launch.rows + 1, cols


@pytest.mark.parametrize("launch", tsm.all_launches(), ids=_launch_id)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_every_launch_the_heuristic_can_pick(launch, log, rng):
    rows, cols = _rows_for(launch)
    assert tsm.row_launch(cols) == launch or launch.online and cols > tsm.MAX_SINGLE_PASS
    x = random_tensor(rng, (rows, cols), "float32", DEVICE)
    dy = random_tensor(rng, (rows, cols), "float32", DEVICE, scale=1.0)
    y = tsm.launch_forward(x, None, log, launch)
    dx = tsm.launch_backward(dy, y, log, launch)
    name = "log_softmax" if log else "softmax"
    _check(name, x, dy, y, dx, 1, "float32")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_online_kernel_with_a_small_chunk_iterates(log, dtype, rng):
    # the online kernel on a short row with a 64-wide chunk: 16 iterations, ragged tail
    launch = tsm.RowLaunch(online=True, block_n=64, rows=1, num_warps=2)
    x = random_tensor(rng, (3, 1000), dtype, DEVICE, scale=30.0)
    dy = random_tensor(rng, (3, 1000), dtype, DEVICE, scale=1.0)
    y = tsm.launch_forward(x, None, log, launch)
    dx = tsm.launch_backward(dy, y, log, launch)
    _check("log_softmax" if log else "softmax", x, dy, y, dx, 1, dtype)


def test_online_max_growing_late_rescales_the_sum():
    # increasing rows: every chunk raises the running max, so the sum is rescaled each time
    x = torch.linspace(-50, 50, 3000, device=DEVICE).repeat(2, 1)
    x[1] = x[1].flip(0)
    launch = tsm.RowLaunch(online=True, block_n=128, rows=1, num_warps=4)
    y = tsm.launch_forward(x, None, False, launch)
    assert_close(y, ref.softmax(as_float64(x), 1), "float32", "reduction")


def test_heuristic_picks_the_narrowest_tile_then_the_online_loop():
    assert tsm.row_launch(1).block_n == 32
    assert tsm.row_launch(33).block_n == 128
    assert tsm.row_launch(1000).block_n == 2048
    assert tsm.row_launch(8192) == tsm.RowLaunch(False, 8192, 1, 16)
    assert tsm.row_launch(8193).online and tsm.row_launch(2**20).online


def test_compile_cases_cover_every_launch_and_variant():
    cases = list(tsm.compile_cases())
    for dtype, alignment in tsm.GATE_SPECIALISATIONS:
        for launch in tsm.all_launches():
            tags = {"dtype": dtype, "alignment": alignment, "block_n": str(launch.block_n), "rows": str(launch.rows)}
            names = {c.name for c in cases if c.tags == tags and c.num_warps == launch.num_warps}
            suffix = "_online" if launch.online else ""
            assert names == {f"softmax_forward{suffix}[{v}]" for v in ("softmax", "log_softmax", "masked_softmax")} | {
                f"softmax_backward{suffix}[{v}]" for v in ("softmax", "log_softmax")}, (dtype, alignment, launch)
    assert {d for d, _ in tsm.GATE_SPECIALISATIONS} == {"fp32", "fp16", "bf16"}


# ---------------------------------------------------------------------------------------------
# Masked softmax


def _masked_check(x, y, dy, dx, keep64, dtype):
    want = ref.masked_softmax(as_float64(x), keep64, None, 1)
    assert_close(y, want, dtype, "reduction")
    assert_close(dx, ref.softmax_backward(as_float64(dy), as_float64(y), 1), dtype, "reduction")
    assert (as_float64(y)[~keep64] == 0).all() and (as_float64(dx)[~keep64] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", (7, 1000, 4097), ids=lambda c: f"R4-C{c}")
def test_masked_softmax_with_a_boolean_mask(cols, dtype, rng):
    x = random_tensor(rng, (4, cols), dtype, DEVICE, scale=1e4)
    dy = random_tensor(rng, (4, cols), dtype, DEVICE, scale=1.0)
    keep = torch.from_numpy(rng.random((4, cols)) > 0.5)
    keep[2] = False  # a fully masked row
    keep[3] = False
    keep[3, -1] = True  # a single kept position, at the ragged end
    with gk.use_backend("triton"):
        y = gk.masked_softmax(x, keep.to(DEVICE))
        dx = gk.masked_softmax_backward(dy, y)
    assert not torch.isnan(y).any() and not torch.isnan(dx).any()
    assert (y[2] == 0).all() and (dx[2] == 0).all() and y[3, -1] == 1
    _masked_check(x, y, dy, dx, keep.numpy(), dtype)


@pytest.mark.parametrize("cols", (9, 5000), ids=lambda c: f"R5-C{c}")
def test_masked_softmax_with_lengths_and_a_broadcast_mask(cols, rng):
    x = random_tensor(rng, (5, cols), "float32", DEVICE)
    dy = random_tensor(rng, (5, cols), "float32", DEVICE, scale=1.0)
    lengths = torch.tensor([0, 1, cols // 2, cols, cols + 10], device=DEVICE)
    column_mask = torch.from_numpy(rng.random((1, cols)) > 0.2)
    with gk.use_backend("triton"):
        y_len = gk.masked_softmax(x, lengths=lengths)
        y_both = gk.masked_softmax(x, column_mask.to(DEVICE), lengths.int())
        dx = gk.masked_softmax_backward(dy, y_len)
    prefix = np.arange(cols)[None, :] < lengths.cpu().numpy()[:, None]
    _masked_check(x, y_len, dy, dx, prefix, "float32")
    assert (y_len[0] == 0).all() and (dx[0] == 0).all()
    both = prefix & column_mask.numpy()
    assert_close(y_both, ref.masked_softmax(as_float64(x), both, None, 1), "float32", "reduction")


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_masked_softmax_along_every_dim(dim, rng):
    x = random_tensor(rng, (4, 6, 5), "float32", DEVICE)
    mask = torch.from_numpy(rng.random((4, 1, 5)) > 0.4)
    lengths_shape = tuple(s for a, s in enumerate(x.shape) if a != dim)
    lengths = torch.from_numpy(rng.integers(0, x.shape[dim] + 1, lengths_shape))
    with gk.use_backend("triton"):
        y = gk.masked_softmax(x, mask.to(DEVICE), lengths.to(DEVICE), dim)
    want = ref.masked_softmax(as_float64(x), mask.numpy(), lengths.numpy(), dim)
    assert_close(y, want, "float32", "reduction")


def test_masked_softmax_without_a_mask_zeroes_rows_of_minus_infinity():
    x = torch.tensor([[1.0, 2.0, 3.0], [float("-inf")] * 3], device=DEVICE)
    with gk.use_backend("triton"):
        y = gk.masked_softmax(x)
        plain = gk.softmax(x)
    assert_close(y, ref.masked_softmax(as_float64(x), None, None, 1), "float32", "reduction")
    assert (y[1] == 0).all()
    assert torch.isnan(plain[1]).all()  # plain softmax keeps PyTorch's 0/0 = NaN


def test_special_values_follow_torch(rng):
    x = torch.tensor([[float("-inf"), 0.0, 1.0], [float("inf"), 1.0, 2.0], [float("nan"), 1.0, 2.0]], device=DEVICE)
    with gk.use_backend("triton"):
        for name in OPS:
            got = getattr(gk, name)(x, 1)
            assert_close(got, getattr(torch, name)(x.double().cpu(), 1).numpy(), "float32", "reduction")


# ---------------------------------------------------------------------------------------------
# Layouts, odd shapes, dtypes


def test_non_contiguous_and_offset_views(rng):
    base = random_tensor(rng, (65, 34), "float16", DEVICE)
    for x in (base.t(), base[:, 1:], base[1:]):
        dy = random_tensor(rng, tuple(x.shape), "float16", DEVICE, scale=1.0)
        y, dx = _run("softmax", x, dy, 1)
        _check("softmax", x, dy, y, dx, 1, "float16")


def test_empty_and_zero_dimensional_inputs(rng):
    with gk.use_backend("triton"):
        for shape in [(0, 5), (4, 0), (0,)]:
            x = torch.ones(shape, device=DEVICE)
            assert gk.softmax(x).shape == shape
            assert gk.log_softmax_backward(x, x, -1).shape == shape
            assert gk.masked_softmax(x, torch.ones(shape, dtype=torch.bool, device=DEVICE)).shape == shape
        scalar = torch.tensor(3.5, device=DEVICE)
        assert gk.softmax(scalar).shape == () and gk.softmax(scalar).item() == 1.0
        assert gk.log_softmax(scalar, 0).item() == 0.0


def test_float64_is_rejected_with_the_supported_dtypes():
    x = torch.ones(4, dtype=torch.float64, device=DEVICE)
    with gk.use_backend("triton"), pytest.raises(TypeError, match="float64.*supported: float16, bfloat16, float32"):
        gk.softmax(x)
