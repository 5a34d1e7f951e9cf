"""Every Triton normalisation kernel against the float64 reference, through the public API and at
every launch the heuristic can pick: in Triton's interpreter on CPU tensors here, on the GPU
where there is one (same tests). Test ids: R<rows>-C<cols>-<dtype>."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, torch_dtype
from _normalization_cases import OPS, check_outputs, expected, inputs, is_add, is_rms, run_op, source_of
from conftest import DEVICE
from gpukernels.reference import normalization as ref
from gpukernels.triton import normalization as tn

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")


def _tensor(dtype):
    return lambda v: torch.from_numpy(np.asarray(v)).to(device=DEVICE, dtype=torch_dtype(dtype))


def _check_op(op, shape, normalized_ndim, dtype, rng, affine=True):
    a, a64 = inputs(rng, shape, normalized_ndim, _tensor(dtype))
    w, b = (a["w"], a["b"]) if affine else (None, None)
    normalized_shape = shape[len(shape) - normalized_ndim:]
    with gk.use_backend("triton"):
        got = run_op(op, a["x"], a["r"], w, b, a["dy"], a["ds"], normalized_shape)
    assert got["y"].dtype == a["x"].dtype and got["y"].shape == a["x"].shape and got["y"].device == a["x"].device
    want = expected(op, a64["x"], a64["r"], a64["w"] if affine else None, a64["b"] if affine else None, a64["dy"],
                    a64["ds"], normalized_ndim, source_of(op, got, a["x"]))
    check_outputs(op, got, want, dtype)
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", (1, 7, 1000, 4097), ids=lambda c: f"R3-C{c}")
@pytest.mark.parametrize("op", OPS)
def test_rows_of_every_length(op, cols, dtype, rng):
    _check_op(op, (3, cols), 1, dtype, rng)


@pytest.mark.parametrize("op", OPS)
def test_several_normalized_dims_and_leading_dims(op, rng):
    _check_op(op, (2, 3, 5, 7), 2, "float32", rng)


@pytest.mark.parametrize("op", ("layer_norm", "rms_norm", "add_layer_norm"))
def test_without_weight_and_bias(op, rng):
    _check_op(op, (5, 33), 1, "float32", rng, affine=False)


def test_weight_without_bias_and_bias_without_weight(rng):
    x = torch.randn(4, 9, device=DEVICE)
    w, b = torch.randn(9, device=DEVICE), torch.randn(9, device=DEVICE)
    for weight, bias in ((w, None), (None, b)):
        with gk.use_backend("triton"):
            y = gk.layer_norm(x, (9,), weight, bias)
        want, _, _ = ref.layer_norm(as_float64(x), None if weight is None else as_float64(weight),
                                    None if bias is None else as_float64(bias), normalized_ndim=1, eps=1e-5)
        assert_close(y, want, "float32", "reduction")


def _launch_id(launch):
    return f"{'long' if launch.long else 'single'}-B{launch.block_n}-R{launch.rows}-W{launch.num_warps}"


def _forward_backward(op, a, forward_launch, backward_launch):
    rms, add = is_rms(op), is_add(op)
    y, s, mean, rstd = tn.launch_forward(a["x"], a["r"] if add else None, a["w"], None if rms else a["b"], 1e-5, rms,
                                         forward_launch)
    dx, dw, db = tn.launch_backward(a["dy"], a["ds"] if add else None, s if add else a["x"], mean, rstd, a["w"],
                                    not rms, rms, backward_launch)
    return {"y": y, "s": s, "mean": None if mean is None else mean[:, None], "rstd": rstd[:, None], "dx": dx,
            "dw": dw, "db": db}


def _tier_shape(launch):
    # a ragged row and a partly filled last tile; the long path with two chunks and a ragged third
    return 2 * launch.rows + 1, (2 * launch.block_n + 5 if launch.long else max(1, launch.block_n - 3))


# Each forward launch paired with a backward one (the same row length where both are single-pass).
LAUNCH_PAIRS = list(zip(tn.all_launches("forward"), tn.all_launches("backward")))


@pytest.mark.parametrize("pair", LAUNCH_PAIRS, ids=[f"{_launch_id(f)}+{_launch_id(b)}" for f, b in LAUNCH_PAIRS])
@pytest.mark.parametrize("op", OPS)
def test_every_launch_the_heuristic_can_pick(op, pair, rng):
    forward, backward = pair
    rows, cols = _tier_shape(forward)
    rows = max(rows, 2 * backward.rows + 1)
    assert tn.row_launch(cols, "forward") == forward and tn.row_launch(cols, "backward") == backward
    a, a64 = inputs(rng, (rows, cols), 1, _tensor("float32"))
    got = _forward_backward(op, a, forward, backward)
    want = expected(op, a64["x"], a64["r"], a64["w"], a64["b"], a64["dy"], a64["ds"], 1, source_of(op, got, a["x"]))
    check_outputs(op, got, want, "float32")


LONG_ROW_CASES = [(op, "float32") for op in OPS] + [("layer_norm", "bfloat16"), ("add_rms_norm", "float16")]


@pytest.mark.parametrize("op,dtype", LONG_ROW_CASES, ids=[f"{op}-R2-C70000-{d}" for op, d in LONG_ROW_CASES])
def test_a_row_of_70000_through_the_long_path_with_a_small_tile(op, dtype, rng):
    # 70000 columns in 1024-wide chunks: 69 chunks, the last ragged; rows spread over programs
    launch = tn.RowLaunch(long=True, block_n=1024, rows=1, num_warps=4)
    a, a64 = inputs(rng, (2, 70000), 1, _tensor(dtype))
    got = _forward_backward(op, a, launch, launch)
    want = expected(op, a64["x"], a64["r"], a64["w"], a64["b"], a64["dy"], a64["ds"], 1, source_of(op, got, a["x"]))
    check_outputs(op, got, want, dtype)


def test_long_rows_with_a_large_offset_keep_the_variance():
    # mean 100, spread 1: a sum-of-squares variance would lose 4 of fp32's 7 digits; the chunk
    # merge loses none
    launch = tn.RowLaunch(long=True, block_n=256, rows=1, num_warps=4)
    x = torch.randn(2, 3000, device=DEVICE) + 100.0
    y, _, mean, rstd = tn.launch_forward(x, None, None, None, 1e-5, False, launch)
    want, mean64, rstd64 = ref.layer_norm(as_float64(x), None, None, normalized_ndim=1, eps=1e-5)
    assert_close(rstd, rstd64.reshape(-1), "float32", "reduction")
    assert_close(y, want, "float32", "reduction")


def test_heuristic_picks_the_narrowest_tile_then_the_long_loop():
    assert tn.row_launch(1) == tn.RowLaunch(False, 64, 32, 4)
    assert tn.row_launch(1, "backward") == tn.RowLaunch(False, 64, 16, 4)
    assert tn.row_launch(4096) == tn.RowLaunch(False, 4096, 1, 8)
    assert tn.row_launch(4096, "backward") == tn.RowLaunch(False, 4096, 1, 16)
    assert tn.row_launch(4097).long and tn.row_launch(70000, "backward").long
    assert tn.backward_programs(8192, tn.row_launch(4096, "backward")) == tn.MAX_BACKWARD_PROGRAMS
    assert tn.backward_programs(5, tn.row_launch(7)) == 1


@pytest.mark.parametrize("op", OPS)
def test_gradients_are_bitwise_repeatable(op, rng):
    # many rows over the programs' partial sums: the same bits on every run
    a, _ = inputs(rng, (301, 40), 1, _tensor("float32"))
    runs = []
    for _ in range(2):
        with gk.use_backend("triton"):
            got = run_op(op, a["x"], a["r"], a["w"], a["b"], a["dy"], a["ds"], (40,))
        runs.append([t.cpu().numpy().tobytes() for t in got.values() if t is not None])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("op", OPS)
def test_zero_variance_rows_and_rows_of_length_1(op, rng):
    x = torch.full((3, 8), 2.5, device=DEVICE)
    x[1] = -1.0
    for cols_x in (x, torch.randn(4, 1, device=DEVICE)):
        cols = cols_x.shape[1]
        r = torch.zeros_like(cols_x)
        w, b = torch.randn(cols, device=DEVICE), torch.randn(cols, device=DEVICE)
        dy = torch.randn_like(cols_x)
        with gk.use_backend("triton"):
            got = run_op(op, cols_x, r, w, b, dy, dy, (cols,))
        assert torch.isfinite(got["y"]).all() and torch.isfinite(got["dx"]).all()
        want = expected(op, as_float64(cols_x), as_float64(r), as_float64(w), as_float64(b), as_float64(dy),
                        as_float64(dy), 1)
        # layer norm of a constant row is its bias; RMS norm of a row of length 1 is sign(x) w (for |x| >> eps)
        if not is_rms(op):
            assert_close(got["y"], np.broadcast_to(as_float64(b), cols_x.shape), "float32", "reduction")
        check_outputs(op, got, want, "float32")


@pytest.mark.parametrize("op", OPS)
def test_empty_batches_and_rows_of_length_0(op):
    for shape in ((0, 6), (2, 0, 6), (3, 0)):
        x = torch.ones(shape, device=DEVICE)
        cols = shape[-1]
        w, b = torch.ones(cols, device=DEVICE), torch.zeros(cols, device=DEVICE)
        with gk.use_backend("triton"):
            got = run_op(op, x, x, w, b, x, x, (cols,))
        assert got["y"].shape == shape and got["dx"].shape == shape
        assert got["rstd"].shape == shape[:-1] + (1,)
        assert (got["dw"] == 0).all() and got["dw"].shape == (cols,)
        if cols == 0:
            np.testing.assert_allclose(as_float64(got["rstd"]), 1 / np.sqrt(1e-5), rtol=1e-6)  # variance 0


def test_non_contiguous_and_offset_views(rng):
    base = torch.from_numpy(rng.standard_normal((65, 34))).to(device=DEVICE, dtype=torch.float16)
    for x in (base.t(), base[:, 1:], base[1:]):
        cols = x.shape[1]
        w = torch.randn(cols, device=DEVICE, dtype=torch.float16)
        with gk.use_backend("triton"):
            y = gk.layer_norm(x, (cols,), w)
        want, _, _ = ref.layer_norm(as_float64(x), as_float64(w), None, normalized_ndim=1, eps=1e-5)
        assert_close(y, want, "float16", "reduction")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_rms_norm_eps_none_is_torchs(dtype):
    """torch's eps=None is the epsilon of the type it computes in: float32's for half inputs.
    Rows of small values show it (the dtype's own epsilon would move them by up to 1.3)."""
    x = (torch.randn(3, 64, generator=torch.Generator().manual_seed(3)) * 0.05).to(DEVICE, dtype)
    with gk.use_backend("triton"):
        y = gk.rms_norm(x, (64,))
    name = str(dtype).removeprefix("torch.")
    want = torch.nn.functional.rms_norm(x.double().cpu(), (64,), eps=torch.finfo(torch.float32).eps)
    assert_close(y, want.numpy(), name, "reduction")
    torch_own = torch.nn.functional.rms_norm(x.cpu(), (64,))  # torch's half kernel, eps=None
    assert_close(torch_own, want.numpy(), name, "reduction")


def test_float64_is_rejected_with_the_supported_dtypes():
    x = torch.ones(2, 4, dtype=torch.float64, device=DEVICE)
    with gk.use_backend("triton"), pytest.raises(TypeError, match="float64.*supported: float16, bfloat16, float32"):
        gk.layer_norm(x, (4,))


def test_compile_cases_cover_every_launch_and_variant():
    cases = list(tn.compile_cases())
    for dtype, alignment in tn.GATE_SPECIALISATIONS:
        for direction in ("forward", "backward"):
            for launch in tn.all_launches(direction):
                tags = {"dtype": dtype, "alignment": alignment, "block_n": str(launch.block_n),
                        "rows": str(launch.rows)}
                names = {c.name for c in cases if c.tags == tags and c.num_warps == launch.num_warps}
                suffix = "_long" if launch.long else ""
                for variant in ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"):
                    assert f"norm_{direction}{suffix}[{variant}]" in names, (direction, launch, variant)
    assert {c.tags["dtype"] for c in cases if c.name == "norm_column_sum"} == {"fp32", "fp16", "bf16"}
