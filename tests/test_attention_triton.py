"""The Triton attention kernels against the float64 reference: in Triton's interpreter on CPU
tensors here, on the GPU where there is one (same tests). Outputs are NaN-poisoned (conftest)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gpukernels as gk
from _helpers import DTYPES, as_float64, assert_close, random_tensor
from conftest import DEVICE
from gpukernels.reference import attention as ref

SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _mask(rng, kind, shape, dtype):
    if kind == "bool":
        mask = torch.from_numpy(rng.random(shape) > 0.4)
        mask[..., 2, :] = False  # a fully masked query row
        return mask.to(DEVICE)
    if kind == "float":
        return random_tensor(rng, shape, dtype, DEVICE, scale=1.0)
    return None


def _np(x):
    if x is None:
        return None
    return x.cpu().numpy() if x.dtype == torch.bool else as_float64(x)


class _KernelStub:
    """Stands in for a Triton kernel: records each launch's grid and runs nothing."""

    def __init__(self, name, launches):
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.name, tuple(grid)))


@pytest.fixture
def launches(monkeypatch):
    """Every kernel of the attention module replaced by a stub: the launchers run for real (their
    allocations, views and grids), the kernels not. Yields the list of (kernel, grid) launched."""
    from gpukernels.triton import attention as tri

    made = []
    for name in dir(tri):
        if name.endswith("_kernel"):
            monkeypatch.setattr(tri, name, _KernelStub(name, made))
    return made


class _Allocations(TorchDispatchMode):
    """Records every tensor an op makes in new memory, as (op, dtype, shape, bytes): outputs that
    share storage with an input (views, in-place results) are not new memory."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.made.append((str(func), t.dtype, tuple(t.shape), t.nbytes))
        return out

    @property
    def total(self) -> int:
        return sum(entry[-1] for entry in self.made)


# (B, Hq, Hk, L, S, E, Ev, mask kind, mask shape, causal)
SDPA_SHAPES = [
    ("B2-H3-L37-S53-D16", 2, 3, 3, 37, 53, 16, 16, None, None, False),
    ("B2-H3-L37-S53-D64-bool", 2, 3, 3, 37, 53, 64, 64, "bool", "LS", False),
    ("B2-H3-L37-S53-D40-Dv24-float", 2, 3, 3, 37, 53, 40, 24, "float", "B1LS", False),
    ("B2-Hq4-Hk2-L53-S37-D16-causal-gqa", 2, 4, 2, 53, 37, 16, 16, None, None, True),
    ("B1-H2-L19-S67-D32-causal", 1, 2, 2, 19, 67, 32, 32, None, None, True),
    ("B1-Hq3-Hk1-L1-S1-D16-gqa", 1, 3, 1, 1, 1, 16, 16, None, None, False),
    # a typical launch (contiguous, lengths and head dims divisible by 16): the larger tiles,
    # two 64-row query tiles and a part key tile
    ("B1-Hq4-Hk2-L128-S80-D64-causal-gqa-typical", 1, 4, 2, 128, 80, 64, 64, None, None, True),
]
SDPA_CASES = [pytest.param(*case[1:], dtype, id=f"{case[0]}-{SHORT[dtype]}")
              for case in SDPA_SHAPES for dtype in DTYPES]


def _mask_shape(which, B, H, L, S):
    return {"LS": (L, S), "B1LS": (B, 1, L, S), "BHLS": (B, H, L, S)}[which]


def _check_sdpa(B, hq, hk, L, S, E, Ev, mask_kind, mask_shape, causal, dtype, rng):
    """Forward and every gradient of one SDPA problem through the triton backend against the
    float64 reference."""
    q = random_tensor(rng, (B, hq, L, E), dtype, DEVICE, scale=1.0)
    k = random_tensor(rng, (B, hk, S, E), dtype, DEVICE, scale=1.0)
    v = random_tensor(rng, (B, hk, S, Ev), dtype, DEVICE, scale=1.0)
    mask = _mask(rng, mask_kind, _mask_shape(mask_shape, B, hq, L, S), dtype) if mask_kind else None
    dout = random_tensor(rng, (B, hq, L, Ev), dtype, DEVICE, scale=1.0)
    gqa = hq != hk
    with gk.use_backend("triton"):
        out, lse = gk.scaled_dot_product_attention_forward(q, k, v, mask, is_causal=causal, enable_gqa=gqa)
        grads = gk.scaled_dot_product_attention_backward(dout, q, k, v, out, lse, mask, causal, enable_gqa=gqa)
    assert out.dtype == q.dtype and out.shape == (B, hq, L, Ev) and lse.dtype == torch.float32
    groups = hq // hk
    want_out, want_lse = ref.sdpa_forward(as_float64(q), as_float64(k), as_float64(v), _np(mask), is_causal=causal,
                                          groups=groups)
    assert_close(out, want_out, dtype, "reduction")
    assert_close(lse, want_lse, "float32", "reduction")  # lse is fp32 whatever the storage
    want = ref.sdpa_backward(as_float64(dout), as_float64(q), as_float64(k), as_float64(v), _np(mask),
                             is_causal=causal, groups=groups)
    for name, got, expected in zip(("dq", "dk", "dv"), grads, want):
        assert got.dtype == q.dtype
        assert_close(got, expected, dtype, "reduction"), name
    if mask_kind == "bool":
        assert (out[..., 2, :] == 0).all() and torch.isneginf(lse[..., 2]).all() and (grads[0][..., 2, :] == 0).all()


@pytest.mark.parametrize("B,hq,hk,L,S,E,Ev,mask_kind,mask_shape,causal,dtype", SDPA_CASES)
def test_sdpa_forward_and_backward(B, hq, hk, L, S, E, Ev, mask_kind, mask_shape, causal, dtype, rng):
    _check_sdpa(B, hq, hk, L, S, E, Ev, mask_kind, mask_shape, causal, dtype, rng)


class _Spy:
    """Wraps a Triton kernel: records each launch's keyword arguments, then launches it."""

    def __init__(self, kernel, name, launches):
        self.kernel, self.name, self.launches = kernel, name, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.name, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.fixture(params=[80, 90], ids=["sm80", "sm90"])
def arch(request, monkeypatch):
    """The GPU generation the launch heuristic believes it runs on (the interpreter runs the very
    kernels either way): 90 takes sm_90's configurations, TMA tensor descriptors included.
    Yields (arch, the SDPA launches as (kernel name, keyword arguments))."""
    from gpukernels.triton import attention as tri

    monkeypatch.setattr(tri, "device_arch", lambda x: request.param)
    made = []
    for name in ("sdpa_forward_kernel", "sdpa_backward_delta_kernel", "sdpa_backward_dq_kernel",
                 "sdpa_backward_dkdv_kernel"):
        monkeypatch.setattr(tri, name, _Spy(getattr(tri, name), name, made))
    return request.param, made


# Typical launches (contiguous, aligned, lengths and head dims multiples of 16, no mask), which
# take the larger tiles, and on sm_90 the tensor descriptors: (name, B, Hq, Hk, L, S, E, Ev,
# causal, EVEN for the sm_90 forward). EVEN: every length a multiple of the tiles (the mask-free
# loads); the others leave ragged query and key tiles (the descriptors' zero fill, the masked
# tail loops) and head dims short of their padded size.
SDPA_TYPICAL_SHAPES = [
    ("B1-H2-L256-S128-D64-even", 1, 2, 2, 256, 128, 64, 64, False, True),
    ("B1-Hq4-Hk2-L128-S128-D64-causal-gqa-even", 1, 4, 2, 128, 128, 64, 64, True, True),
    ("B1-Hq4-Hk2-L144-S80-D48-causal-gqa", 1, 4, 2, 144, 80, 48, 48, True, False),
    ("B1-H1-L48-S176-D64-Dv32", 1, 1, 1, 48, 176, 64, 32, False, False),
    ("B1-Hq2-Hk1-L128-S128-D128-causal-gqa-even", 1, 2, 1, 128, 128, 128, 128, True, True),
    ("B1-H1-L80-S48-D112-causal", 1, 1, 1, 80, 48, 112, 112, True, False),
    ("B1-H1-L64-S64-D256-causal", 1, 1, 1, 64, 64, 256, 256, True, True),
]


@pytest.mark.parametrize("B,hq,hk,L,S,E,Ev,causal,even,dtype", [
    pytest.param(*case[1:], dtype, id=f"{case[0]}-{SHORT[dtype]}") for case in SDPA_TYPICAL_SHAPES
    for dtype in ("float16", "bfloat16")])
def test_sdpa_typical_launches_on_each_architecture(B, hq, hk, L, S, E, Ev, causal, even, dtype, rng, arch):
    """The sm_80 (pointer loads) and sm_90 (tensor descriptors, 128-row tiles over 8 warps) paths
    of the typical launch against the reference, every gradient, and the configuration each
    kernel was launched with: the heuristic's for that architecture."""
    from gpukernels.triton import attention as tri

    target, launches = arch
    _check_sdpa(B, hq, hk, L, S, E, Ev, None, None, causal, dtype, rng)
    blocks = tri.sdpa_blocks(tri.padded_head_dim(E), tri.padded_head_dim(Ev), 2, True, target, causal)
    passes = tri.dkdv_passes(blocks.for_dkdv())  # dK and dV in one launch, or (split) one each
    assert [name for name, _ in launches] == ["sdpa_forward_kernel", "sdpa_backward_delta_kernel",
                                              "sdpa_backward_dq_kernel"] + ["sdpa_backward_dkdv_kernel"] * len(passes)
    assert [(kw["WITH_DK"], kw["WITH_DV"]) for _, kw in launches[3:]] == list(passes)
    for name, kwargs in launches:
        tiles = blocks.for_dkdv() if name == "sdpa_backward_dkdv_kernel" else blocks
        assert (kwargs["BLOCK_M"], kwargs["num_warps"]) == (tiles.block_m, tiles.num_warps), name
        if name != "sdpa_backward_delta_kernel":
            assert kwargs["BLOCK_N"] == tiles.block_n and kwargs["USE_TMA"] == (target == 90), name
            assert kwargs.get("num_stages") == tiles.num_stages, name
    forward = launches[0][1]
    assert forward["EVEN"] == even or target == 80  # sm_80's tiles are other sizes
    if target == 90 and E in (64, 128):  # two warpgroups of 64 query rows; dK/dV products of 64 key rows
        assert forward["BLOCK_M"] == 128 and forward["num_warps"] == 8 and launches[3][1]["BLOCK_N"] >= 64


# The typical tiles that give each warp its own rows (sm_80 at d=128 and 256, sm_90's split dK/dV
# at d=256), forced on every launch (``sdpa_blocks`` replaced), so that they also run on fp32
# storage and on lengths that are not multiples of 16, which the heuristic gives other tiles:
# (name, table, Hq, Hk, L, S, E, Ev). Each length passes a whole tile of every kernel and stops
# short of the next (sm_80 d=128: 128x32 forward and dQ tiles, 16x128 dK/dV; d=256: 32x64 and
# 32x16; sm_90 d=256: 64x32 and 16x64), and one head dim is short of its padded size.
SDPA_FORCED_SHAPES = [
    ("sm80-Hq2-Hk1-L37-S139-D112-Dv128-gqa", "SDPA_TYPICAL_TILES", 2, 1, 37, 139, 112, 128),
    ("sm80-H1-L45-S70-D256-Dv240", "SDPA_TYPICAL_TILES", 1, 1, 45, 70, 256, 240),
    ("sm90-Hq2-Hk1-L80-S70-D256-Dv240-gqa", "SDPA_SM90_TILES", 2, 1, 80, 70, 256, 240),
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("table,hq,hk,L,S,E,Ev,dtype", [
    pytest.param(*case[1:], dtype, id=f"{case[0]}-{SHORT[dtype]}") for case in SDPA_FORCED_SHAPES
    for dtype in DTYPES])
def test_sdpa_typical_tiles_on_ragged_lengths_and_every_dtype(table, hq, hk, L, S, E, Ev, dtype, causal, rng,
                                                               monkeypatch):
    """The typical tiles that give each warp its own rows or columns of every product, on ragged
    lengths, causal and not, fp32/fp16/bf16: the forward and every gradient against the float64
    reference, launched with exactly those tiles (sm_90's through tensor descriptors, dK and dV
    in two launches)."""
    from gpukernels.triton import attention as tri

    tiles = getattr(tri, table)[tri.padded_head_dim(max(E, Ev))]
    monkeypatch.setattr(tri, "sdpa_blocks", lambda *args, **kwargs: tiles)
    made = []
    for name in ("sdpa_forward_kernel", "sdpa_backward_dq_kernel", "sdpa_backward_dkdv_kernel"):
        monkeypatch.setattr(tri, name, _Spy(getattr(tri, name), name, made))
    _check_sdpa(1, hq, hk, L, S, E, Ev, None, None, causal, dtype, rng)
    assert {name for name, _ in made} == {"sdpa_forward_kernel", "sdpa_backward_dq_kernel",
                                          "sdpa_backward_dkdv_kernel"}
    for name, kwargs in made:
        want = tiles.for_dkdv() if name == "sdpa_backward_dkdv_kernel" else tiles
        got = (kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["num_warps"], kwargs.get("num_stages"), kwargs["USE_TMA"])
        assert got == (want.block_m, want.block_n, want.num_warps, want.num_stages, want.tma), name
        assert not kwargs["EVEN"], name  # every launch here takes the masked loads
    passes = [(kw["WITH_DK"], kw["WITH_DV"]) for name, kw in made if name == "sdpa_backward_dkdv_kernel"]
    assert passes == list(tri.dkdv_passes(tiles.for_dkdv()))


@pytest.mark.parametrize("E", [16, 128, 256])
def test_sdpa_every_head_dim_tier(E, rng):
    """Each tile-size tier of the launch heuristic on a small problem (fp16 and fp32)."""
    for dtype in ("float16", "float32"):
        q, k, v = (random_tensor(rng, (1, 1, 21, E), dtype, DEVICE, scale=1.0) for _ in range(3))
        dout = random_tensor(rng, (1, 1, 21, E), dtype, DEVICE, scale=1.0)
        with gk.use_backend("triton"):
            out, lse = gk.scaled_dot_product_attention_forward(q, k, v, is_causal=True)
            grads = gk.scaled_dot_product_attention_backward(dout, q, k, v, out, lse, None, True)
        args = [as_float64(x) for x in (q, k, v)]
        assert_close(out, ref.sdpa_forward(*args, is_causal=True)[0], dtype, "reduction")
        for got, want in zip(grads, ref.sdpa_backward(as_float64(dout), *args, is_causal=True)):
            assert_close(got, want, dtype, "reduction")


def test_sdpa_non_contiguous_inputs_and_explicit_scale(rng):
    base = random_tensor(rng, (2, 29, 3, 16), "float32", DEVICE, scale=1.0)
    q = base.transpose(1, 2)  # (B, H, L, E) view of a (B, L, H, E) tensor, as models make them
    k = random_tensor(rng, (2, 3, 16, 31), "float32", DEVICE, scale=1.0).transpose(-1, -2)
    v = random_tensor(rng, (2, 3, 31, 8), "float32", DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        out = gk.scaled_dot_product_attention(q, k, v, scale=0.7)
    assert_close(out, ref.sdpa_forward(as_float64(q), as_float64(k), as_float64(v), scale=0.7)[0], "float32",
                 "reduction")


@pytest.mark.parametrize("scale", [1.3, -0.45, 0.0], ids=lambda s: f"scale{s}")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_sdpa_any_scale_on_mask_free_and_masked_tiles(scale, causal, rng):
    """The mask-free tiles fold the scale into the max and the exp2's FMA (a negative scale is
    moved onto the query by the launch); the tail and diagonal tiles scale before masking. S=150
    gives both kinds of tile at every tile width the launch may pick."""
    q, k = (random_tensor(rng, (1, 2, 150, 16), "float32", DEVICE, scale=1.0) for _ in range(2))
    v, dout = (random_tensor(rng, (1, 2, 150, 8), "float32", DEVICE, scale=1.0) for _ in range(2))
    with gk.use_backend("triton"):
        out, lse = gk.scaled_dot_product_attention_forward(q, k, v, is_causal=causal, scale=scale)
        grads = gk.scaled_dot_product_attention_backward(dout, q, k, v, out, lse, None, causal, scale=scale)
    q64, k64, v64 = as_float64(q), as_float64(k), as_float64(v)
    want_out, want_lse = ref.sdpa_forward(q64, k64, v64, is_causal=causal, scale=scale)
    assert_close(out, want_out, "float32", "reduction")
    assert_close(lse, want_lse, "float32", "reduction")
    for got, want in zip(grads, ref.sdpa_backward(as_float64(dout), q64, k64, v64, is_causal=causal, scale=scale)):
        assert_close(got, want, "float32", "reduction")


@pytest.mark.parametrize("scale", [1.3, -0.45], ids=lambda s: f"scale{s}")
def test_sdpa_shift_is_each_rows_true_maximum_for_either_sign_of_scale(scale, rng):
    """Scores spanning hundreds (log2 units) overflow exp2 unless the shift is the row's true
    maximum, which for a negative scale is the scaled minimum of q.k (so the launch negates q).
    At this spread float32 itself only resolves the outputs to about 1e-4 (conditioning, not
    the kernel): the check is that nothing overflowed and the result is that close."""
    q, k = (random_tensor(rng, (1, 2, 150, 16), "float32", DEVICE, scale=8.0) for _ in range(2))
    v = random_tensor(rng, (1, 2, 150, 8), "float32", DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        out, lse = gk.scaled_dot_product_attention_forward(q, k, v, scale=scale)
    want_out, want_lse = ref.sdpa_forward(as_float64(q), as_float64(k), as_float64(v), scale=scale)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    np.testing.assert_allclose(as_float64(out), want_out, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(as_float64(lse), want_lse, rtol=1e-4)


def test_sdpa_large_inputs_stay_finite(rng):
    q, k, v = (random_tensor(rng, (1, 2, 17, 16), "float32", DEVICE, scale=1e4) for _ in range(3))
    with gk.use_backend("triton"):
        out = gk.scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all()
    assert_close(out, ref.sdpa_forward(as_float64(q), as_float64(k), as_float64(v))[0], "float32", "reduction")


@pytest.mark.parametrize("L,S", [(0, 5), (5, 0)])
def test_sdpa_empty_lengths(L, S, rng):
    q = random_tensor(rng, (1, 2, L, 16), "float32", DEVICE)
    k, v = (random_tensor(rng, (1, 2, S, 16), "float32", DEVICE) for _ in range(2))
    with gk.use_backend("triton"):
        out, lse = gk.scaled_dot_product_attention_forward(q, k, v)
        grads = gk.scaled_dot_product_attention_backward(torch.ones_like(out), q, k, v, out, lse)
    assert out.shape == (1, 2, L, 16) and (out == 0).all()
    assert all((g == 0).all() and g.shape == x.shape for g, x in zip(grads, (q, k, v)))


@pytest.mark.parametrize("dtype,hq,hk,mask_kind", [("float16", 4, 4, None), ("bfloat16", 4, 2, "bool"),
                                                   ("float32", 2, 1, "float")],
                         ids=["fp16", "bf16-gqa-bool", "fp32-gqa-float"])
def test_sdpa_allocates_its_results_and_row_statistics_only(dtype, hq, hk, mask_kind, rng, launches):
    """The launchers' plan, kernels stubbed (no interpreter): the forward makes the output and
    the fp32 log-sum-exp; the backward makes dQ, dK, dV (what it returns) and one fp32 statistic
    per query row, nothing else: no fp32 copy of K or V, no copy of a broadcast gradient."""
    B, L, S, E = 2, 33, 47, 40
    q = random_tensor(rng, (B, hq, L, E), dtype, DEVICE)
    k, v = (random_tensor(rng, (B, hk, S, E), dtype, DEVICE) for _ in range(2))
    mask = _mask(rng, mask_kind, (L, S), dtype) if mask_kind else None
    dout = torch.ones((), dtype=q.dtype, device=DEVICE).expand(B, hq, L, E)  # what out.sum() sends back
    statistics = B * hq * L * 4  # fp32, one per query row
    with gk.use_backend("triton"):
        with _Allocations() as forward:
            out, lse = gk.scaled_dot_product_attention_forward(q, k, v, mask, enable_gqa=hq != hk)
        with _Allocations() as backward:
            grads = gk.scaled_dot_product_attention_backward(dout, q, k, v, out, lse, mask, enable_gqa=hq != hk)
    assert forward.total == out.nbytes + statistics, forward.made
    assert backward.total <= sum(g.nbytes for g in grads) + statistics, backward.made
    assert [name for name, _ in launches] == ["sdpa_forward_kernel", "sdpa_backward_delta_kernel",
                                              "sdpa_backward_dq_kernel", "sdpa_backward_dkdv_kernel"]



def test_sdpa_function_takes_a_broadcast_gradient_as_it_is(rng, launches):
    """``out.sum().backward()`` sends a stride-0 gradient; the autograd Function hands it to the
    kernels (they read strides) instead of copying it: the backward makes the three gradients and
    the row statistic only (kernels stubbed)."""
    from gpukernels.torch.functional import scaled_dot_product_attention

    B, H, L, E = 2, 3, 33, 16
    q, k, v = (random_tensor(rng, (B, H, L, E), "float16", DEVICE).requires_grad_() for _ in range(3))
    with gk.use_backend("triton"):
        loss = scaled_dot_product_attention(q, k, v).sum()
        with _Allocations() as backward:
            loss.backward()
    scalar_seed = 2  # the fp16 1.0 that backward() starts from
    assert backward.total <= 3 * q.nbytes + B * H * L * 4 + scalar_seed, backward.made
    assert [name for name, _ in launches][-3:] == ["sdpa_backward_delta_kernel", "sdpa_backward_dq_kernel",
                                                   "sdpa_backward_dkdv_kernel"]

CUDA_GRID_LIMITS = (2**31 - 1, 65535, 65535)  # blocks per grid axis (x, y, z)


def _assert_grids_fit(launches, programs: int) -> None:
    """Each launch's grid within CUDA's limits, with room for one program per head or batch row
    at least (the projection tiles the flattened (batch x length) rows instead)."""
    assert launches
    for name, grid in launches:
        assert len(grid) <= 3 and all(1 <= n <= cap for n, cap in zip(grid, CUDA_GRID_LIMITS)), (name, grid)
        assert name == "projection_kernel" or math.prod(grid) >= programs, (name, grid)


def test_sdpa_launches_fit_cuda_grids_past_65535_heads(rng, launches):
    """Z * Hq = 131074 query heads and Z * Hk = 65537 key/value heads, past the 65535 that grid
    axes 1 and 2 hold, at L = S = 1, d = 16. The kernels are stubbed: the interpreter runs about 3
    ms per program here, minutes for one such launch; tests/test_gpu_attention.py runs it for
    real on a GPU, and the tile/head decoding is the one every other test here exercises."""
    q = random_tensor(rng, (65537, 2, 1, 16), "float16", DEVICE)
    k, v = (random_tensor(rng, (65537, 1, 1, 16), "float16", DEVICE) for _ in range(2))
    with gk.use_backend("triton"):
        out, lse = gk.scaled_dot_product_attention_forward(q, k, v, enable_gqa=True)
        gk.scaled_dot_product_attention_backward(out, q, k, v, out, lse, enable_gqa=True)
    _assert_grids_fit(launches, 65537)


@pytest.mark.parametrize("kind", ["dot", "additive"])
@pytest.mark.parametrize("Tq", [1, 2])
def test_encoder_decoder_launches_fit_cuda_grids_past_65535_batch_rows(kind, Tq, rng, launches):
    """B = 65537 batch rows, each launch of the forward, the scores and both backwards within
    CUDA's grid limits (kernels stubbed, as above), for the single-row and 16-row tiles."""
    B, Tk, D, A = 65537, 3, 16, 8
    query, keys, values = (random_tensor(rng, (B, t, D), "float16", DEVICE) for t in (Tq, Tk, Tk))
    params = _score_params(rng, kind, D, D, A, "float16")
    with gk.use_backend("triton"):
        context, weights = gk.attention(query, keys, values, kind, None, **params)
        gk.attention_backward(context, weights, query, keys, values, weights, kind, **params)
        scores = gk.attention_scores(query, keys, kind, **params)
        gk.attention_scores_backward(scores, query, keys, kind, **params)
    _assert_grids_fit(launches, B)


def test_program_grid_refuses_more_programs_than_cuda_holds():
    from gpukernels.triton import attention as tri

    assert tri.program_grid(2**16, 2**15 - 1) == (2**31 - 2**16,)
    with pytest.raises(ValueError, match="more than a CUDA grid holds"):
        tri.program_grid(2**16, 2**15)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention

KINDS = ("dot", "scaled_dot", "general", "additive")


def _score_params(rng, kind, dq, dk, a, dtype):
    if kind == "general":  # scores of standard deviation ~2: a softmax peaked as trained models' are,
        # not one-hot (where dP - sum P dP cancels: a float32 evaluation of the reference itself
        # then misses the float64 gradients by 2.6e-4 on the Tq=1 shape)
        return {"weight": random_tensor(rng, (dq, dk), dtype, DEVICE, scale=2.0 / math.sqrt(dq * dk))}
    if kind == "additive":
        return {"w_query": random_tensor(rng, (a, dq), dtype, DEVICE, scale=0.3),
                "w_keys": random_tensor(rng, (a, dk), dtype, DEVICE, scale=0.3),
                "v": random_tensor(rng, (a,), dtype, DEVICE, scale=1.0)}
    return {}


# (id, B, Tq, Tk, Dk, Dq for general/additive, Dv, A, mask shape). The launcher's two row tiles:
# 16 rows (a block of decoder steps; Tq=5 pads, Tq=19 takes two tiles) and 1 row (one decoder
# step, with three key tiles of 64 and two feature slices of 32); two value slices of 64 each.
ENC_DEC_SHAPES = [
    ("B2-Tq5-Tk37-Dk24-Dv70-A20-maskBTk", 2, 5, 37, 24, 12, 70, 20, "BTk"),
    ("B2-Tq1-Tk150-Dk40-Dv70-A40-maskBTqTk", 2, 1, 150, 40, 17, 70, 40, "BTqTk"),
    ("B1-Tq19-Tk1-Dk16-Dv8-A5", 1, 19, 1, 16, 16, 8, 5, None),
]
# Every dtype on the two tiles' shapes; the last (a single key) in fp32, to keep the
# interpreter's time in check.
ENC_DEC_CASES = [pytest.param(kind, *shape[1:], dtype, id=f"{shape[0]}-{kind}-{SHORT[dtype]}")
                 for index, shape in enumerate(ENC_DEC_SHAPES) for kind in KINDS
                 for dtype in (DTYPES if index < 2 else ("float32",))]


@pytest.mark.parametrize("kind,B,Tq,Tk,Dk,Dq,Dv,A,mask_shape,dtype", ENC_DEC_CASES)
def test_encoder_decoder_attention_forward_and_backward(kind, B, Tq, Tk, Dk, Dq, Dv, A, mask_shape, dtype, rng):
    Dq = Dk if kind in ("dot", "scaled_dot") else Dq
    scale = 1.0 / math.sqrt(Dk)  # keep unscaled dot scores moderate, as trained models do
    query = random_tensor(rng, (B, Tq, Dq), dtype, DEVICE, scale=1.0)
    keys = random_tensor(rng, (B, Tk, Dk), dtype, DEVICE, scale=scale if kind == "dot" else 1.0)
    values = random_tensor(rng, (B, Tk, Dv), dtype, DEVICE, scale=1.0)
    params = _score_params(rng, kind, Dq, Dk, A, dtype)
    mask = None
    if mask_shape == "BTk":
        mask = torch.from_numpy(rng.random((B, Tk)) > 0.3)
        mask[-1] = False  # a fully masked batch row
    elif mask_shape == "BTqTk":
        mask = torch.from_numpy(rng.random((B, Tq, Tk)) > 0.3)
        mask[0, -1] = False
    mask = None if mask is None else mask.to(DEVICE)
    g_context = random_tensor(rng, (B, Tq, Dv), dtype, DEVICE, scale=1.0)
    g_weights = random_tensor(rng, (B, Tq, Tk), dtype, DEVICE, scale=1.0)
    g_scores = random_tensor(rng, (B, Tq, Tk), dtype, DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        scores = gk.attention_scores(query, keys, kind, **params)
        score_grads = gk.attention_scores_backward(g_scores, query, keys, kind, **params)
        context, weights = gk.attention(query, keys, values, kind, mask, **params)
        grads = gk.attention_backward(g_context, g_weights, query, keys, values, weights, kind, **params)
        grads_no_dw = gk.attention_backward(g_context, None, query, keys, values, weights, kind, **params)

    p64 = {name: as_float64(x) for name, x in params.items()}
    args = (as_float64(query), as_float64(keys))
    assert_close(scores, ref.attention_scores(*args, kind=kind, **p64), dtype, "reduction")
    names = ("query", "keys", "weight", "w_query", "w_keys", "v")
    for name, got, want in zip(names, score_grads, ref.attention_scores_backward(as_float64(g_scores), *args,
                                                                                 kind=kind, **p64)):
        assert (got is None) == (want is None), name
        if got is not None:
            assert got.dtype == query.dtype
            assert_close(got, want, dtype, "reduction")

    want_context, want_weights = ref.attention_forward(*args, as_float64(values), _np(mask), kind=kind, **p64)
    assert_close(context, want_context, dtype, "reduction")
    assert_close(weights, want_weights, dtype, "reduction")
    if mask_shape == "BTk":
        assert (weights[-1] == 0).all() and (context[-1] == 0).all()
    # The backward takes the weights the forward stored (in the storage dtype), as the autograd
    # Function passes them: the reference gets the same weights.
    names = ("query", "keys", "values", "weight", "w_query", "w_keys", "v")
    for g_w, result in ((g_weights, grads), (None, grads_no_dw)):
        want = ref.attention_backward(as_float64(g_context), None if g_w is None else as_float64(g_w), *args,
                                      as_float64(values), as_float64(weights), kind=kind, **p64)
        for name, got, expected in zip(names, result, want):
            assert (got is None) == (expected is None), name
            if got is not None:
                assert_close(got, expected, dtype, "reduction")


@pytest.mark.parametrize("Tq", [1, 9])
def test_additive_attention_allocates_no_hidden_tensor(Tq, rng, launches):
    """The launchers' plan (kernels stubbed): every buffer of the additive forward and backward
    is O(B T A) or O(B Tq Tk), never the [B, Tq, Tk, A] hidden tensor; the projections are made
    once per call (fp32, [B, T, A]) and nothing else of their size."""
    B, Tk, D, A = 2, 33, 8, 24
    query, keys, values = (random_tensor(rng, (B, t, D), "float16", DEVICE) for t in (Tq, Tk, Tk))
    params = _score_params(rng, "additive", D, D, A, "float16")
    with gk.use_backend("triton"), _Allocations() as log:
        context, weights = gk.attention(query, keys, values, "additive", None, **params)
        gk.attention_backward(torch.ones_like(context), None, query, keys, values, weights, "additive", **params)
    largest = max(B * Tk * max(A, D), B * Tq * Tk)  # keys-sized, projection-sized or score-sized
    assert all(math.prod(shape) <= largest for _, _, shape, _ in log.made), log.made
    assert Tq == 1 or largest * 4 < B * Tq * Tk * A  # (one step's hidden tensor is projection-sized)
    key_projections = [entry for entry in log.made if entry[1] == torch.float32 and entry[2] == (B, Tk, A)]
    assert len(key_projections) == 2  # keys W_k^T: once in the forward, once in the backward


@pytest.mark.parametrize("dtype", DTYPES, ids=[SHORT[d] for d in DTYPES])
def test_score_projection_on_several_tiles_each_way(dtype, rng):
    """The projection kernel (x W^T in fp32) on 2 x 2 output tiles and 2 depth steps of each
    storage width's tiles, with W transposed as the general kind passes it, against float64."""
    from gpukernels.triton import attention as tri

    blocks = tri.projection_blocks(torch.empty((), dtype=getattr(torch, dtype)).element_size())
    rows, cols, depth = 2 * blocks.block_m - 3, 2 * blocks.block_n - 5, 2 * blocks.block_k - 7
    x = random_tensor(rng, (1, rows, depth), dtype, DEVICE, scale=1.0)
    w = random_tensor(rng, (depth, cols), dtype, DEVICE, scale=1.0).T  # (cols, depth), strides (1, cols)
    got = tri._project(x, w)
    assert got.dtype == torch.float32 and got.shape == (1, rows, cols)
    assert_close(got, as_float64(x) @ as_float64(w).T, "float32", "reduction")  # fp32 out, whatever the storage

def test_additive_attention_exact_when_the_tanh_saturates(rng):
    """Projections of +-60 and more (exp(2x) overflows fp32): scores, weights and gradients stay
    finite and match the reference. The gradients live where qp + kp is near 0 with |qp| ~ 100,
    where fp32 itself moves qp + kp by ~100 * 2^-24 * sqrt(D): they are held to 1e-4."""
    B, Tq, Tk, D, A = 2, 3, 20, 6, 9
    query, keys, values = (random_tensor(rng, (B, t, D), "float32", DEVICE, scale=1.0) for t in (Tq, Tk, Tk))
    params = _score_params(rng, "additive", D, D, A, "float32")
    params["w_query"] = params["w_query"] * 200
    params["w_keys"] = params["w_keys"] * 200
    g_context = random_tensor(rng, (B, Tq, D), "float32", DEVICE, scale=1.0)
    with gk.use_backend("triton"):
        scores = gk.attention_scores(query, keys, "additive", **params)
        context, weights = gk.attention(query, keys, values, "additive", None, **params)
        grads = gk.attention_backward(g_context, None, query, keys, values, weights, "additive", **params)
    p64 = {name: as_float64(x) for name, x in params.items()}
    args = (as_float64(query), as_float64(keys))
    assert abs(as_float64(query) @ p64["w_query"].T).max() > 60
    assert_close(scores, ref.attention_scores(*args, kind="additive", **p64), "float32", "reduction")
    want_c, want_w = ref.attention_forward(*args, as_float64(values), kind="additive", **p64)
    assert_close(context, want_c, "float32", "reduction")
    assert_close(weights, want_w, "float32", "reduction")
    want = ref.attention_backward(as_float64(g_context), None, *args, as_float64(values), as_float64(weights),
                                  kind="additive", **p64)
    for got, expected in zip(grads, want):
        if expected is not None:
            got, expected = as_float64(got), np.asarray(expected)
            assert np.isfinite(got).all()
            assert np.linalg.norm(got - expected) <= 1e-4 * np.linalg.norm(expected)


@pytest.mark.parametrize("kind", ["scaled_dot", "additive"])
def test_scores_backward_reads_a_strided_gradient(kind, rng):
    B, Tq, Tk, D, A = 2, 4, 11, 8, 6
    query, keys = (random_tensor(rng, (B, t, D), "float32", DEVICE) for t in (Tq, Tk))
    params = _score_params(rng, kind, D, D, A, "float32")
    g_scores = random_tensor(rng, (B, Tk, Tq), "float32", DEVICE, scale=1.0).transpose(1, 2)
    assert not g_scores.is_contiguous()
    with gk.use_backend("triton"):
        grads = gk.attention_scores_backward(g_scores, query, keys, kind, **params)
    p64 = {name: as_float64(x) for name, x in params.items()}
    want = ref.attention_scores_backward(as_float64(g_scores), as_float64(query), as_float64(keys), kind=kind, **p64)
    for got, expected in zip(grads, want):
        if expected is not None:
            assert_close(got, expected, "float32", "reduction")


def test_encoder_decoder_non_contiguous_inputs(rng):
    keys = random_tensor(rng, (16, 2, 23), "float32", DEVICE, scale=0.3).permute(1, 2, 0)  # (B, Tk, Dk) view
    query = random_tensor(rng, (2, 16, 4), "float32", DEVICE).transpose(1, 2)
    values = random_tensor(rng, (2, 6, 23), "float32", DEVICE).transpose(1, 2)
    assert not (keys.is_contiguous() or query.is_contiguous() or values.is_contiguous())
    dc = random_tensor(rng, (2, 6, 4), "float32", DEVICE).transpose(1, 2)
    with gk.use_backend("triton"):
        context, weights = gk.attention(query, keys, values, "scaled_dot")
        grads = gk.attention_backward(dc, None, query, keys, values, weights, "scaled_dot")
    args = [as_float64(x) for x in (query, keys, values)]
    want_c, want_w = ref.attention_forward(*args, kind="scaled_dot")
    assert_close(context, want_c, "float32", "reduction")
    for got, want in zip(grads, ref.attention_backward(as_float64(dc), None, *args, as_float64(weights),
                                                       kind="scaled_dot")):
        if want is not None:
            assert_close(got, want, "float32", "reduction")


def test_compile_gate_covers_every_sdpa_tile_config():
    """Every configuration the launch heuristic can pick, for each (padded head dim, storage
    dtype, causal, architecture, launch class), is a build of the gate for that architecture:
    tiles, warps, pipelining depth and copy path, at a launch of that class (the typical tiles
    at typical launches, the others at the worst); a typical configuration both with EVEN
    (lengths that divide the tiles) and without."""
    from gpukernels.triton import attention as tri

    compiled = {}
    for c in tri.compile_cases():
        if c.name.startswith("sdpa"):
            key = (c.name, c.tags["d"], c.tags.get("causal", "False"), c.tags["launch"] != "worst",
                   c.args["BLOCK_M"], c.args.get("BLOCK_N"), c.num_warps, c.num_stages, c.args.get("USE_TMA"))
            for target in c.targets or tri.ARCHS:
                compiled.setdefault((target, *key), set()).add(c.args.get("EVEN"))
    causal_builds = {"sdpa_backward_delta": (False,)}
    for head_dim, typical, arch, causal in itertools.product(range(1, 257), (False, True), tri.ARCHS, (False, True)):
        block_d = tri.padded_head_dim(head_dim)
        assert block_d in tri.HEAD_DIMS
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            blocks = tri.sdpa_blocks(block_d, block_d, dtype.itemsize, typical, arch, causal)
            for kernel in ("sdpa_forward", "sdpa_backward_dq", "sdpa_backward_dkdv", "sdpa_backward_delta"):
                tiles = blocks.for_dkdv() if kernel == "sdpa_backward_dkdv" else blocks
                delta = kernel == "sdpa_backward_delta"
                key = (arch, kernel, str(block_d), str(causal and not delta), typical, tiles.block_m,
                       None if delta else tiles.block_n, tiles.num_warps, None if delta else tiles.num_stages,
                       None if delta else tiles.tma)
                assert key in compiled, key
                if typical and not delta:
                    assert compiled[key] == {True, False}, key


def test_sdpa_takes_the_larger_tiles_only_for_typical_launches(monkeypatch):
    """Contiguous, 16-byte-aligned q/k/v (and o, dO, lse), lengths and head dims divisible by
    16, no mask: the typical tiles (tensor descriptors on sm_90); any one of those broken: the
    tiles proven at the worst launch, pointer loads, on either architecture."""
    from gpukernels.triton import attention as tri

    def blocks(tensors, sizes=(64, 48, 64, 64), mask_kind=tri.MASK_NONE, itemsize=2):
        return tri._launch_blocks(tensors, sizes, mask_kind, 64, 64, itemsize, False)

    q = torch.empty((2, 3, 64, 64), dtype=torch.float16)
    big, small = tri.SDPA_TYPICAL_TILES[64], tri.SDPA_TILES[(64, 2)]
    assert big.block_m == 64 and small.block_m < 64 and not big.tma and not small.tma
    assert blocks((q, q, q)) == big
    assert blocks((q, q, q), (64, 40, 64, 64)) == small  # a ragged key length
    assert blocks((q, q, q), mask_kind=tri.MASK_BOOL) == small
    offset = torch.empty(q.numel() + 1, dtype=torch.float16)[1:].view(q.shape)  # one element into its storage
    assert blocks((q, offset, q)) == small
    assert blocks((q, q, q.transpose(2, 3))) == small  # head dim not the unit stride
    padded = torch.empty((2, 3, 64, 72), dtype=torch.float16)[..., :64]  # rows 72 elements apart
    assert blocks((q, q, padded)) == small
    assert blocks((q, q, q), itemsize=4) == tri.SDPA_TILES[(64, 4)]
    monkeypatch.setattr(tri, "device_arch", lambda x: 90)
    hopper = tri.SDPA_SM90_TILES[64]
    assert blocks((q, q, q)) == hopper and hopper.tma and hopper.for_dkdv().tma
    assert blocks((q, offset, q)) == small and blocks((q, q, q), itemsize=4) == tri.SDPA_TILES[(64, 4)]


def test_sdpa_sm90_tiles_are_hopper_shaped():
    """sm_90's typical tiles at d=64 and 128: 128 query rows over two warpgroups (8 warps) in the
    forward and dQ, at least 64 key rows in dK/dV (every product a wgmma), tensor descriptors
    throughout, and the next tile's copy in flight during the current product (num_stages >= 2);
    dK and dV in one launch there, in two at d=256."""
    from gpukernels.triton import attention as tri

    for head_dim, causal in itertools.product((64, 128), (False, True)):
        blocks = tri.sdpa_blocks(head_dim, head_dim, 2, True, 90, causal)
        assert (blocks.block_m, blocks.num_warps, blocks.tma) == (128, 8, True)
        assert blocks.for_dkdv().block_n >= 64 and blocks.for_dkdv().tma
        assert blocks.num_stages >= 2 and blocks.for_dkdv().num_stages >= 2
        assert tri.dkdv_passes(blocks.for_dkdv()) == ((True, True),)
    # d=256: 64 key rows over one warpgroup, 16 rows a warp (chained wgmma products put every warp
    # down the rows: over 8 warps the score products ran twice), which cannot hold both [64, 256]
    # fp32 accumulators: dK, then dV, one launch each
    for causal in (False, True):
        dkdv = tri.sdpa_blocks(256, 256, 2, True, 90, causal).for_dkdv()
        assert (dkdv.block_n, dkdv.num_warps, dkdv.tma) == (64, 4, True)
        assert tri.dkdv_passes(dkdv) == ((True, False), (False, True))


def test_sdpa_sm80_typical_tiles_give_each_warp_its_own_rows():
    """No two warps compute the same scores at sm_80's typical tiles (the report's inner-loop "mma
    work" 1.0; 1.5 to 2.5 before at d=128 dK/dV and at d=256). Triton lays out the chained
    products of a kernel as its [rows, head dim] accumulator's: warps down the rows when the tile
    has as many rows as the head dim, then 16 rows each (mma.sync's m16); else across the columns,
    and then each score tile needs 8 columns (n8) a warp. Rows: query rows in the forward and dQ,
    key rows in dK/dV, whose score tiles are transposed (key rows x query rows)."""
    from gpukernels.triton import attention as tri

    for head_dim in tri.HEAD_DIMS:
        blocks = tri.SDPA_TYPICAL_TILES[head_dim]
        dkdv = blocks.for_dkdv()
        for name, rows, columns, warps in (("forward/dQ", blocks.block_m, blocks.block_n, blocks.num_warps),
                                           ("dK/dV", dkdv.block_n, dkdv.block_m, dkdv.num_warps)):
            if rows >= head_dim:
                assert rows >= 16 * warps, (head_dim, name)
            else:
                assert columns >= 8 * warps, (head_dim, name)


def test_sdpa_descriptor_scratch_allocator_only_where_needed_and_only_for_the_launch(monkeypatch):
    """The host side of the sm_90 launches (their GPU run is tests/test_gpu_attention.py): a
    launch with tensor descriptors, compiled (not interpreted), gets an allocator for their
    global scratch while it runs when the caller set none, and leaves the caller's in place."""
    import triton
    from triton.runtime import _allocation

    from gpukernels.triton import attention as tri

    monkeypatch.setattr(tri, "triton_interpreting", lambda: False)
    hopper, ampere = tri.SDPA_SM90_TILES[128], tri.SDPA_TYPICAL_TILES[128]
    previous = _allocation._allocator.get()

    def callers(size, alignment, stream):
        raise AssertionError("not called here")

    try:
        triton.set_allocator(_allocation.NullAllocator())
        with tri._descriptor_scratch(hopper):
            assert _allocation._allocator.get() is tri._torch_scratch
        assert isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        with tri._descriptor_scratch(ampere):  # pointer loads: no scratch, nothing set
            assert isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        triton.set_allocator(callers)
        with tri._descriptor_scratch(hopper):
            assert _allocation._allocator.get() is callers
        assert _allocation._allocator.get() is callers
    finally:
        triton.set_allocator(previous)


def test_sdpa_device_arch_off_the_gpu():
    from gpukernels.triton import attention as tri

    assert tri.device_arch(torch.empty(1)) == 80  # CPU tensors (the interpreter): sm_80's configurations


def test_compile_gate_covers_every_kernel_and_encoder_decoder_tile():
    """Every kernel of the module is in the gate, the encoder-decoder kernels at each row tile
    the launcher picks, the projection at each storage width's tiles."""
    from gpukernels.triton import attention as tri

    cases = list(tri.compile_cases())
    kernels = {name for name in dir(tri) if name.endswith("_kernel")}
    assert kernels == {c.kernel.__name__ for c in cases}
    enc_dec = {c.kernel.__name__ for c in cases if not c.name.startswith(("sdpa", "attention_projection"))}
    for query_rows, kernel, launch, dtype in itertools.product(range(1, 40), enc_dec, tri.LAUNCHES, tri._ENC_DEC_DTYPES):
        blocks = tri.enc_dec_blocks(query_rows)
        assert any(c.kernel.__name__ == kernel and c.tags["launch"] == launch and c.tags["dtype"] == dtype
                   and c.args["BLOCK_M"] == blocks.block_m and c.args["BLOCK_N"] == blocks.block_n
                   and c.num_warps == blocks.num_warps for c in cases), (kernel, query_rows, launch, dtype)
    scores = {(c.tags["kind"], c.tags["out"], c.tags["mask"], c.tags["block_m"], c.tags["launch"])
              for c in cases if c.name == "attention_scores"}
    assert len(scores) == 3 * 3 * 2 * 2  # every kind and output, at each row tile and launch
    for dtype, launch in itertools.product((torch.float16, torch.bfloat16, torch.float32), tri.LAUNCHES):
        blocks = tri.projection_blocks(dtype.itemsize)
        assert any(c.name == "attention_projection" and c.tags["dtype"] == tri.TRITON_DTYPES[dtype]
                   and c.tags["launch"] == launch and c.args["BLOCK_M"] == blocks.block_m
                   and c.args["BLOCK_K"] == blocks.block_k and c.num_warps == blocks.num_warps for c in cases)


@pytest.mark.parametrize("Tq", [1, 20])
def test_additive_cost_model_names_every_kernel_launched(Tq, rng, launches):
    """The benchmark's cost model of the additive path (``--model``) has one entry per Triton
    launch the forward and the forward+backward make (the rest of its entries are cuBLAS)."""
    from gpukernels.benchmarks.attention import additive_kernels

    B, Tk, D, A = 2, 40, 8, 12
    query, keys, values = (random_tensor(rng, (B, t, D), "float16", DEVICE) for t in (Tq, Tk, Tk))
    params = _score_params(rng, "additive", D, D, A, "float16")
    with gk.use_backend("triton"):
        context, weights = gk.attention(query, keys, values, "additive", None, **params)
        forward = len(launches)
        gk.attention_backward(context, None, query, keys, values, weights, "additive", **params)

    def triton_entries(mode):
        return [k for k in additive_kernels(B, Tq, Tk, D, A, mode) if "cuBLAS" not in k.name]

    assert forward == len(triton_entries("fwd"))
    assert len(launches) == len(triton_entries("full"))
