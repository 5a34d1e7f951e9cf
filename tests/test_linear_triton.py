"""The Triton dense-layer kernels against the float64 reference through the public API, in
Triton's interpreter on CPU tensors here and compiled on a GPU (same tests): every activation,
every dtype, odd shapes (1, primes, empty), every tile configuration the tuner may pick, the
bias gradient bitwise reproducible. Test ids: M<rows>-K<in>-N<out>-<activation>-<dtype>."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from conftest import DEVICE
from gpukernels.reference import linear as ref
from gpukernels.triton import linear as tl_linear

ACTIVATIONS = (None, "relu", "leaky_relu", "gelu", "gelu_tanh", "sigmoid", "tanh")

# The interpreter evaluates masked-off lanes too (exp overflow in padding); never stored.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def _layer(rng, M, K, N, dtype):
    scale = 1.0 / np.sqrt(max(K, 1))  # unit-sized pre-activations, where the activations bend
    x = random_tensor(rng, (M, K), dtype, DEVICE, scale=1.0)
    w = random_tensor(rng, (N, K), dtype, DEVICE, scale=scale)
    b = random_tensor(rng, (N,), dtype, DEVICE, scale=0.5)
    dy = random_tensor(rng, (M, N), dtype, DEVICE, scale=1.0)
    return x, w, b, dy


def _check(x, w, b, dy, activation, dtype, negative_slope=0.01, y=None, saved=None, grads=None):
    """y against the reference; the gradients against the reference's backward from the kernel's
    own rounded output (or derivative), as autograd would run it."""
    x64, w64, b64, dy64 = (None if t is None else as_float64(t) for t in (x, w, b, dy))
    want_y, _ = ref.forward(x64, w64, b64, activation, negative_slope)
    assert y.dtype == x.dtype and y.device == x.device
    assert_close(y, want_y, dtype, "reduction")
    saved64 = None if saved is None else as_float64(saved)
    want = ref.backward(dy64, x64, w64, saved64, activation, negative_slope, (True, True, b is not None))
    for got, expected in zip(grads, want):
        if expected is None:
            assert got is None
        else:
            assert_close(got, expected, dtype, "reduction")


def _run(x, w, b, dy, activation, negative_slope=0.01):
    with gk.use_backend("triton"):
        y, saved = gk.linear(x, w, b, activation=activation, negative_slope=negative_slope, return_saved=True)
        grads = gk.linear_backward(dy, x, w, saved, activation=activation, negative_slope=negative_slope,
                                   output_mask=(True, True, b is not None))
    return y, saved, grads


SHAPES = ((1, 1, 1), (37, 29, 23), (67, 131, 70))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("M,K,N", [pytest.param(*s, id=f"M{s[0]}-K{s[1]}-N{s[2]}") for s in SHAPES])
def test_every_activation_dtype_and_shape(M, K, N, activation, dtype, rng):
    x, w, b, dy = _layer(rng, M, K, N, dtype)
    y, saved, grads = _run(x, w, b, dy, activation)
    _check(x, w, b, dy, activation, dtype, y=y, saved=saved, grads=grads)


TILES = [pytest.param(c, dtype, id=f"{c.block_m}x{c.block_n}x{c.block_k}-w{c.num_warps}-{dtype}") for dtype in DTYPES
         for c in sorted({*tl_linear.configs_for(torch.empty((), dtype=getattr(torch, dtype)).element_size()),
                   tl_linear.SMALL_TILE})]


@pytest.mark.parametrize("config,dtype", TILES)
def test_every_tile_configuration(config, dtype, rng):
    # ragged in every dimension: more than one tile, the last cut by the masks
    M, K, N = config.block_m + 3, 2 * config.block_k + 5, config.block_n + 7
    x, w, b, dy = _layer(rng, M, K, N, dtype)
    y, d = tl_linear.launch_forward(x, w, b, "gelu", 0.01, "derivative", config=config)
    dx = tl_linear.launch_grad_input(dy, d, w, "gelu", 0.01, "derivative", config=config)
    dw, db = tl_linear.launch_grad_weight(dy, d, x, "gelu", 0.01, "derivative", True, config=config)
    _check(x, w, b, dy, "gelu", dtype, y=y, saved=d, grads=(dx, dw, db))


def test_without_bias_and_with_a_negative_slope(rng):
    x, w, _, dy = _layer(rng, 19, 23, 17, "float32")
    y, saved, grads = _run(x, w, None, dy, "leaky_relu", negative_slope=-0.3)
    assert grads[2] is None
    _check(x, w, None, dy, "leaky_relu", "float32", -0.3, y=y, saved=saved, grads=grads)


@pytest.mark.parametrize("M,K,N", [pytest.param(*s, id=f"M{s[0]}-K{s[1]}-N{s[2]}") for s in [(0, 5, 3), (4, 0, 3), (4, 5, 0)]])
def test_empty_dimensions(M, K, N, rng):
    x, w, b, dy = _layer(rng, M, K, N, "float32")
    y, saved, (dx, dw, db) = _run(x, w, b, dy, "gelu")
    assert y.shape == (M, N) and dx.shape == (M, K) and dw.shape == (N, K) and db.shape == (N,)
    _check(x, w, b, dy, "gelu", "float32", y=y, saved=saved, grads=(dx, dw, db))


def test_leading_dimensions_and_a_strided_input(rng):
    x = random_tensor(rng, (3, 4, 22), "float32", DEVICE, scale=1.0)[..., ::2]  # (3, 4, 11), not contiguous
    w = random_tensor(rng, (6, 11), "float32", DEVICE, scale=0.3)
    with gk.use_backend("triton"):
        y = gk.linear(x, w, activation="tanh")
    assert y.shape == (3, 4, 6)
    want, _ = ref.forward(as_float64(x).reshape(12, 11), as_float64(w), None, "tanh")
    assert_close(y.reshape(12, 6), want, "float32", "reduction")


def test_bias_and_weight_gradients_are_bitwise_reproducible(rng):
    x, w, b, dy = _layer(rng, 130, 40, 33, "float32")
    _, saved, first = _run(x, w, b, dy, "sigmoid")
    _, _, second = _run(x, w, b, dy, "sigmoid")
    for a, c in zip(first, second):
        assert torch.equal(a, c)


TF32_SWITCHES = {  # (off, on) for every way torch lets a user switch F.linear's fp32 products to TF32
    "allow_tf32": ("torch.backends.cuda.matmul.allow_tf32 = False", "torch.backends.cuda.matmul.allow_tf32 = True"),
    "fp32_precision": ('torch.backends.cuda.matmul.fp32_precision = "ieee"',
                       'torch.backends.cuda.matmul.fp32_precision = "tf32"'),
    "float32_matmul_precision": ('torch.set_float32_matmul_precision("highest")',
                                 'torch.set_float32_matmul_precision("high")'),
    "global": ('torch.backends.fp32_precision = "ieee"', 'torch.backends.fp32_precision = "tf32"'),
}


@pytest.mark.parametrize("api", list(TF32_SWITCHES))
def test_tf32_follows_torch_allow_tf32(api):
    """Each switch in a fresh process: torch >= 2.9 keeps legacy and new settings apart and
    refuses to read a mix, so one process cannot try them all and put everything back."""
    if api != "allow_tf32" and not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has only the legacy switch")
    off, on = TF32_SWITCHES[api]
    script = "\n".join([
        "import torch", "from gpukernels.triton import linear as tl_linear",
        "default = tl_linear.allow_tf32(torch.float32)",
        off, "after_off = tl_linear.allow_tf32(torch.float32)",
        on, "after_on = tl_linear.allow_tf32(torch.float32)",
        "half = tl_linear.allow_tf32(torch.bfloat16)",  # 16-bit products are tensor-core products anyway
        "print(default, after_off, after_on, half)"])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "False", "True", "False"], result.stdout


def test_rows_that_are_not_16_byte_multiples_take_the_small_tile_only():
    assert tl_linear.rows_aligned(2, 4096, 1024) and not tl_linear.rows_aligned(2, 4096, 1027)
    assert tl_linear.configs_for(2, aligned=False) == tl_linear.configs_for(4, aligned=False) == (
        tl_linear.SMALL_TILE,)


def test_autotune_prunes_to_the_tiles_the_gate_compiles():
    fp32, half = tl_linear.configs_for(4), tl_linear.configs_for(2)
    assert set(fp32) | set(half) | {tl_linear.SMALL_TILE} == set(tl_linear.TILE_CONFIGS)
    for c in fp32:  # FMA products: BLOCK_K 32, at most 32 accumulators per thread
        assert c.block_k == 32 and c.block_m * c.block_n <= 32 * 32 * c.num_warps
    for itemsize, tiles in ((4, fp32), (2, half)):  # every pipeline fits sm_80's shared memory
        assert all(c.smem_bytes(itemsize) <= 160 * 1024 for c in tiles)
    gate = {(case.tags["dtype"], case.tags["tile"], case.num_warps, case.num_stages)
            for case in tl_linear.compile_cases() if case.tags["shape"] == "aligned" and "saved-z" not in case.tags["act"]}
    for dtype, tiles in (("fp32", fp32), ("fp16", half), ("bf16", half)):
        assert {g[1:] for g in gate if g[0] == dtype} == {
            (f"{c.block_m}x{c.block_n}x{c.block_k}", c.num_warps, c.num_stages) for c in tiles}


def test_the_saved_z_variant_gives_the_same_gradients(rng):
    # the benchmark's alternative: z saved, act'(z) evaluated in the backward kernels
    x, w, b, dy = _layer(rng, 37, 29, 23, "float32")
    y, z = tl_linear.launch_forward(x, w, b, "gelu", 0.01, "preactivation")
    assert_close(z, ref.preactivation(as_float64(x), as_float64(w), as_float64(b)), "float32", "reduction")
    dx = tl_linear.launch_grad_input(dy, z, w, "gelu", 0.01, "preactivation")
    dw, db = tl_linear.launch_grad_weight(dy, z, x, "gelu", 0.01, "preactivation", True)
    _, derivative = ref.forward(*(as_float64(t) for t in (x, w, b)), "gelu", 0.01, save=True)
    _check(x, w, b, dy, "gelu", "float32", y=y, saved=derivative, grads=(dx, dw, db))
