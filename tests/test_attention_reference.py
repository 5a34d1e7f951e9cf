"""The NumPy attention reference in float64 against PyTorch CPU autograd (scaled dot-product
attention: outputs and every gradient) and against finite differences (the encoder-decoder
step, which PyTorch has no op for, checked against an eager PyTorch composition as well)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gpukernels as gk
from gpukernels.reference import attention as ref


def _t(rng, *shape, scale=1.0):
    return torch.from_numpy(rng.standard_normal(shape) * scale).requires_grad_()


SDPA_CASES = [
    # (batch dims, Hq, Hk, L, S, E, Ev, mask, causal)
    pytest.param((2,), 3, 3, 37, 53, 16, 16, None, False, id="B2-H3-L37-S53-D16"),
    pytest.param((2,), 3, 3, 37, 53, 40, 24, "bool", False, id="B2-H3-L37-S53-D40-Dv24-bool"),
    pytest.param((2,), 3, 3, 37, 53, 64, 64, "float", False, id="B2-H3-L37-S53-D64-float"),
    pytest.param((2,), 4, 2, 29, 13, 16, 8, None, True, id="B2-Hq4-Hk2-L29-S13-D16-causal-gqa"),
    pytest.param((2,), 2, 2, 13, 29, 16, 16, None, True, id="B2-H2-L13-S29-D16-causal"),
    pytest.param((), 1, 1, 1, 1, 16, 16, None, False, id="L1-S1-D16-rank3"),
    pytest.param((2, 3), 2, 1, 7, 11, 32, 16, "bool", False, id="B2x3-Hq2-Hk1-L7-S11-D32-bool-gqa"),
    pytest.param((1,), 4, 2, 9, 11, 8, 8, "float", False, id="B1-Hq4-Hk2-L9-S11-D8-float-mask-1x1-gqa"),
    # large enough for the CPU's blocks (reference/attention.py, _Heads): whole heads per block
    # (a mask with a head axis), rows of one head per block (a mask cut into rows, and the
    # causal diagonal crossing the blocks)
    pytest.param((2,), 4, 2, 130, 140, 16, 8, "bool", False, id="B2-Hq4-Hk2-L130-S140-D16-bool-gqa-head-blocks"),
    pytest.param((), 1, 1, 301, 293, 16, 16, "float", False, id="L301-S293-D16-float-row-blocks"),
    pytest.param((), 1, 1, 301, 293, 16, 16, None, True, id="L301-S293-D16-causal-row-blocks"),
]


def _make_mask(rng, kind, shape):
    if kind == "bool":
        mask = torch.from_numpy(rng.random(shape) > 0.5)
        mask[..., 1, :] = False  # a fully masked row
        return mask
    if kind == "float":
        return torch.from_numpy(rng.standard_normal(shape))
    return None


@pytest.mark.parametrize("batch,hq,hk,L,S,E,Ev,mask_kind,causal", SDPA_CASES)
def test_sdpa_matches_torch_autograd_in_float64(batch, hq, hk, L, S, E, Ev, mask_kind, causal, rng):
    q, k, v = _t(rng, *batch, hq, L, E), _t(rng, *batch, hk, S, E), _t(rng, *batch, hk, S, Ev)
    mask = _make_mask(rng, mask_kind, (*batch, 1, L, S)) if batch else _make_mask(rng, mask_kind, (L, S))
    gqa = hq != hk
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    grad = torch.randn_like(want)
    want.backward(grad)

    groups = hq // hk
    mask_np = None if mask is None else mask.numpy()
    out, lse = ref.sdpa_forward(q.detach().numpy(), k.detach().numpy(), v.detach().numpy(), mask_np,
                                is_causal=causal, groups=groups)
    np.testing.assert_allclose(out, want.detach().numpy(), atol=1e-12, rtol=1e-10)
    grads = ref.sdpa_backward(grad.numpy(), q.detach().numpy(), k.detach().numpy(), v.detach().numpy(), mask_np,
                              is_causal=causal, groups=groups)
    for got, tensor in zip(grads, (q, k, v)):
        np.testing.assert_allclose(got, tensor.grad.numpy(), atol=1e-12, rtol=1e-10)
    # The log-sum-exp the kernels save: log sum_j exp(scaled, masked scores).
    scores = (q @ k.repeat_interleave(groups, dim=-3).transpose(-1, -2)).detach() / math.sqrt(E)
    if causal:
        scores = scores.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -math.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    np.testing.assert_allclose(lse, torch.logsumexp(scores, -1).numpy(), atol=1e-12, rtol=1e-10)


def test_fully_masked_rows_give_zero_output_and_gradients_as_torch(rng):
    q, k, v = _t(rng, 1, 2, 5, 16), _t(rng, 1, 2, 7, 16), _t(rng, 1, 2, 7, 16)
    mask = torch.from_numpy(rng.random((5, 7)) > 0.3)
    mask[0] = False
    mask[3] = False
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    want.backward(torch.ones_like(want))
    out, lse = ref.sdpa_forward(q.detach().numpy(), k.detach().numpy(), v.detach().numpy(), mask.numpy())
    assert (out[..., [0, 3], :] == 0).all() and np.isneginf(lse[..., [0, 3]]).all()
    np.testing.assert_allclose(out, want.detach().numpy(), atol=1e-12)
    dq, dk, dv = ref.sdpa_backward(np.ones(out.shape), q.detach().numpy(), k.detach().numpy(), v.detach().numpy(),
                                   mask.numpy())
    assert (dq[..., [0, 3], :] == 0).all()
    for got, tensor in zip((dq, dk, dv), (q, k, v)):
        np.testing.assert_allclose(got, tensor.grad.numpy(), atol=1e-12)


def test_large_scores_stay_finite(rng):
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 2, 9, 16)) * 1e4) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v)
    out = gk.scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, want, atol=1e-8, rtol=1e-10)


def test_public_op_on_numpy_and_torch_returns_the_callers_arrays(rng):
    q, k, v = (rng.standard_normal((2, 3, 5, 16)).astype(np.float32) for _ in range(3))
    out = gk.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 3, 5, 16)
    want = F.scaled_dot_product_attention(*(torch.from_numpy(x) for x in (q, k, v)), scale=0.3)
    np.testing.assert_allclose(out, want.numpy(), atol=1e-6, rtol=1e-5)
    out16, lse = gk.scaled_dot_product_attention_forward(*(torch.from_numpy(x).half() for x in (q, k, v)))
    assert out16.dtype == torch.float16 and lse.dtype == torch.float32 and lse.shape == (2, 3, 5)


# ---------------------------------------------------------------------------------------------
# Encoder-decoder attention


def _torch_scores(kind, q, k, weight=None, w_query=None, w_keys=None, v=None):
    """The eager composition a user would write (materialises [B, Tq, Tk, A] for additive)."""
    if kind == "additive":
        hidden = torch.tanh((q @ w_query.T)[:, :, None, :] + (k @ w_keys.T)[:, None, :, :])
        return hidden @ v
    if kind == "general":
        q = q @ weight
    scores = q @ k.transpose(-1, -2)
    return scores / math.sqrt(k.shape[-1]) if kind == "scaled_dot" else scores


def _params(rng, kind, dq, dk, a=6):
    if kind == "general":
        return {"weight": _t(rng, dq, dk)}
    if kind == "additive":
        return {"w_query": _t(rng, a, dq), "w_keys": _t(rng, a, dk), "v": _t(rng, a)}
    return {}


KINDS = ("dot", "scaled_dot", "general", "additive")


# (B, Tq, Tk, Dk, Dv, Dq where it differs from Dk, A): small; large enough for the CPU's batch blocks
# of additive attention (reference/attention.py, _batch_blocks: here 7 blocks of one batch row)
STEP_SIZES = [pytest.param((2, 3, 7, 5, 4, 6, 6), id="B2-Tq3-Tk7"),
              pytest.param((7, 2, 150, 32, 8, 24, 40), id="B7-Tq2-Tk150-A40-blocks")]


@pytest.mark.parametrize("sizes", STEP_SIZES)
@pytest.mark.parametrize("mask_shape", [None, "BTk", "BTqTk"])
@pytest.mark.parametrize("kind", KINDS)
def test_attention_step_matches_the_eager_torch_composition(kind, mask_shape, sizes, rng):
    B, Tq, Tk, Dk, Dv, Dq, A = sizes
    Dq = Dk if kind in ("dot", "scaled_dot") else Dq
    q, k, values = _t(rng, B, Tq, Dq), _t(rng, B, Tk, Dk), _t(rng, B, Tk, Dv)
    params = _params(rng, kind, Dq, Dk, A)
    mask = None
    if mask_shape == "BTk":
        mask = torch.from_numpy(rng.random((B, Tk)) > 0.4)
        mask[1] = False  # a fully masked batch row
    elif mask_shape == "BTqTk":
        mask = torch.from_numpy(rng.random((B, Tq, Tk)) > 0.4)
        mask[0, -1] = False  # a fully masked query row
    scores = _torch_scores(kind, q, k, **params)
    keep = None if mask is None else (mask[:, None, :] if mask.dim() == 2 else mask)
    if keep is not None:
        scores = scores.masked_fill(~keep, -math.inf)
    weights = torch.softmax(scores, -1).nan_to_num(0.0)  # fully masked rows: zeros
    context = weights @ values
    g_context, g_weights = torch.randn_like(context), torch.randn_like(weights)
    (context * g_context).sum().add((weights * g_weights).sum()).backward()

    arrays = {name: p.detach().numpy() for name, p in params.items()}
    mask_np = None if mask is None else mask.numpy()
    c, w = ref.attention_forward(q.detach().numpy(), k.detach().numpy(), values.detach().numpy(), mask_np,
                                 kind=kind, **arrays)
    np.testing.assert_allclose(c, context.detach().numpy(), atol=1e-12, rtol=1e-10)
    np.testing.assert_allclose(w, weights.detach().numpy(), atol=1e-12, rtol=1e-10)
    grads = ref.attention_backward(g_context.numpy(), g_weights.numpy(), q.detach().numpy(), k.detach().numpy(),
                                   values.detach().numpy(), w, kind=kind, **arrays)
    names = ("query", "keys", "values", "weight", "w_query", "w_keys", "v")
    tensors = {"query": q, "keys": k, "values": values, **params}
    for name, got in zip(names, grads):
        if name in tensors:
            np.testing.assert_allclose(got, tensors[name].grad.numpy(), atol=1e-12, rtol=1e-10, err_msg=name)
        else:
            assert got is None, name


@pytest.mark.parametrize("kind", KINDS)
def test_attention_scores_backward_against_finite_differences(kind, rng):
    B, Tq, Tk, Dk = 2, 3, 4, 5
    Dq = Dk if kind in ("dot", "scaled_dot") else 3
    arrays = {"query": rng.standard_normal((B, Tq, Dq)), "keys": rng.standard_normal((B, Tk, Dk))}
    arrays.update({n: p.detach().numpy() for n, p in _params(rng, kind, Dq, Dk).items()})
    g = rng.standard_normal((B, Tq, Tk))

    def loss():
        return float(np.sum(ref.attention_scores(**arrays, kind=kind) * g))

    grads = dict(zip(("query", "keys", "weight", "w_query", "w_keys", "v"),
                     ref.attention_scores_backward(g, **arrays, kind=kind)))
    eps = 1e-6
    for name, x in arrays.items():
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            saved = x[index]
            x[index] = saved + eps
            up = loss()
            x[index] = saved - eps
            down = loss()
            x[index] = saved
            numeric[index] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, atol=1e-7, rtol=1e-6, err_msg=name)
