"""The autograd Functions and the seq2seq attention modules: every gradient against PyTorch's
own ops (scaled dot-product attention) or the eager composition a user would write
(encoder-decoder attention), on the reference (float64, gradcheck) and on the Triton kernels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import gpukernels as gk
from _helpers import assert_close
from conftest import DEVICE
from gpukernels.torch import functional as gkf
from gpukernels.torch.nn import AdditiveAttention, DotAttention


def _leaves(rng, *shapes, dtype=torch.float64, device="cpu"):
    return [torch.from_numpy(rng.standard_normal(s)).to(device=device, dtype=dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("causal,gqa,mask", [(False, False, None), (True, True, None), (False, False, "bool"),
                                             (False, True, "float")], ids=["plain", "causal-gqa", "bool", "float-gqa"])
def test_sdpa_function_gradcheck_on_the_reference(causal, gqa, mask, rng):
    q, k, v = _leaves(rng, (1, 4, 6, 8), (1, 2 if gqa else 4, 5, 8), (1, 2 if gqa else 4, 5, 3))
    attn_mask = None
    if mask == "bool":
        attn_mask = torch.from_numpy(rng.random((6, 5)) > 0.4)
        attn_mask[1] = False
    elif mask == "float":
        attn_mask = torch.from_numpy(rng.standard_normal((1, 1, 6, 5)))
    fn = lambda q, k, v: gkf.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=causal, enable_gqa=gqa)
    assert torch.autograd.gradcheck(fn, (q, k, v))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask, is_causal=causal, enable_gqa=gqa)
    torch.testing.assert_close(fn(q, k, v), want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sdpa_function_on_triton_matches_torch(dtype, rng):
    q, k, v = _leaves(rng, (2, 2, 19, 32), (2, 1, 23, 32), (2, 1, 23, 16), dtype=getattr(torch, dtype), device=DEVICE)
    grad = torch.from_numpy(rng.standard_normal((2, 2, 19, 16))).to(device=DEVICE, dtype=q.dtype)
    with gk.use_backend("triton"):  # the backward too: outside, CPU tensors would pick the reference
        out = gkf.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        ours = torch.autograd.grad(out, (q, k, v), grad)
    q64, k64, v64 = (x.detach().double().cpu().requires_grad_() for x in (q, k, v))
    want = F.scaled_dot_product_attention(q64, k64, v64, is_causal=True, enable_gqa=True)
    theirs = torch.autograd.grad(want, (q64, k64, v64), grad.double().cpu())
    assert_close(out, want.detach().numpy(), dtype, "reduction")
    for got, expected in zip(ours, theirs):
        assert_close(got, expected.numpy(), dtype, "reduction")


def test_sdpa_function_on_triton_takes_a_broadcast_gradient(rng):
    """``out.sum().backward()`` hands the backward a stride-0 gradient, which the kernels read
    as it is (no copy): the gradients still match PyTorch's."""
    q, k, v = _leaves(rng, (2, 3, 17, 16), (2, 3, 21, 16), (2, 3, 21, 8), dtype=torch.float32, device=DEVICE)
    with gk.use_backend("triton"):
        gkf.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    q64, k64, v64 = (x.detach().double().cpu().requires_grad_() for x in (q, k, v))
    F.scaled_dot_product_attention(q64, k64, v64, is_causal=True).sum().backward()
    for got, want in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert_close(got, want.numpy(), "float32", "reduction")


def test_sdpa_function_rejects_a_mask_that_needs_a_gradient(rng):
    q, k, v = _leaves(rng, (1, 1, 3, 8), (1, 1, 4, 8), (1, 1, 4, 8))
    with pytest.raises(ValueError, match="attn_mask"):
        gkf.scaled_dot_product_attention(q, k, v, torch.zeros(3, 4, dtype=torch.float64, requires_grad=True))


KINDS = ("dot", "scaled_dot", "general", "additive")


def _params(rng, kind, dq, dk, a=5, **kw):
    if kind == "general":
        return dict(zip(("weight",), _leaves(rng, (dq, dk), **kw)))
    if kind == "additive":
        return dict(zip(("w_query", "w_keys", "v"), _leaves(rng, (a, dq), (a, dk), (a,), **kw)))
    return {}


@pytest.mark.parametrize("kind", KINDS)
def test_attention_functions_gradcheck_on_the_reference(kind, rng):
    dq = 4 if kind in ("dot", "scaled_dot") else 3
    query, keys, values = _leaves(rng, (2, 3, dq), (2, 5, 4), (2, 5, 2))
    params = _params(rng, kind, dq, 4)
    mask = torch.from_numpy(rng.random((2, 5)) > 0.3)
    mask[0] = False
    names = list(params)

    def both(query, keys, values, *p):
        context, weights = gkf.attention(query, keys, values, kind, mask, **dict(zip(names, p)))
        return context, weights

    assert torch.autograd.gradcheck(both, (query, keys, values, *params.values()))
    scores = lambda query, keys, *p: gkf.attention_scores(query, keys, kind, **dict(zip(names, p)))
    assert torch.autograd.gradcheck(scores, (query, keys, *params.values()))
    # Only the context reaching the loss (grad of weights is None inside the Function).
    context_only = lambda *args: both(*args)[0]
    assert torch.autograd.gradcheck(context_only, (query, keys, values, *params.values()))


def _eager(kind, query, keys, values, mask, weight=None, w_query=None, w_keys=None, v=None):
    if kind == "additive":
        scores = torch.tanh((query @ w_query.T)[:, :, None, :] + (keys @ w_keys.T)[:, None, :, :]) @ v
    else:
        scores = (query @ weight if kind == "general" else query) @ keys.transpose(1, 2)
        if kind == "scaled_dot":
            scores = scores / math.sqrt(keys.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~(mask[:, None, :] if mask.dim() == 2 else mask), -math.inf)
    weights = torch.softmax(scores, -1).nan_to_num(0.0)
    return weights @ values, weights


@pytest.mark.parametrize("kind", KINDS)
def test_attention_function_on_triton_matches_the_eager_composition(kind, rng):
    dq = 24 if kind in ("dot", "scaled_dot") else 10
    leaves = _leaves(rng, (2, 3, dq), (2, 29, 24), (2, 29, 12), dtype=torch.float32, device=DEVICE)
    params = _params(rng, kind, dq, 24, a=18, dtype=torch.float32, device=DEVICE)
    mask = torch.from_numpy(rng.random((2, 29)) > 0.3).to(DEVICE)
    inputs = [*leaves, *params.values()]
    with gk.use_backend("triton"):  # the backward too: outside, CPU tensors would pick the reference
        context, weights = gkf.attention(*leaves, kind, mask, **params)
        loss = context.square().sum() + (weights * torch.linspace(-1, 1, 29, device=DEVICE)).sum()
        ours = torch.autograd.grad(loss, inputs)
    doubles = [x.detach().double().cpu().requires_grad_() for x in inputs]
    want_c, want_w = _eager(kind, *doubles[:3], mask.cpu(), **dict(zip(params, doubles[3:])))
    want_loss = want_c.square().sum() + (want_w * torch.linspace(-1, 1, 29, dtype=torch.float64)).sum()
    theirs = torch.autograd.grad(want_loss, doubles)
    assert_close(context, want_c.detach().numpy(), "float32", "reduction")
    assert_close(weights, want_w.detach().numpy(), "float32", "reduction")
    for got, expected in zip(ours, theirs):
        assert_close(got, expected.numpy(), "float32", "reduction")


@pytest.mark.parametrize("module_kind", ["additive", "dot", "scaled_dot", "general"])
def test_seq2seq_modules_one_step_and_many(module_kind, rng):
    torch.manual_seed(0)
    if module_kind == "additive":
        module = AdditiveAttention(query_size=6, key_size=4, attention_size=5).double()
        assert {n for n, _ in module.named_parameters()} == {"query_proj.weight", "key_proj.weight", "v"}
        params = {"w_query": module.query_proj.weight, "w_keys": module.key_proj.weight, "v": module.v}
        dq = 6
    else:
        module = DotAttention(4 if module_kind != "general" else 6, 4, kind=module_kind).double()
        params = {"weight": module.weight} if module_kind == "general" else {}
        assert [n for n, _ in module.named_parameters()] == list(params and ["weight"])
        dq = 4 if module_kind != "general" else 6
    keys = torch.from_numpy(rng.standard_normal((3, 7, 4)))
    lengths = torch.tensor([7, 3, 1])
    mask = torch.arange(7)[None, :] < lengths[:, None]
    step = torch.from_numpy(rng.standard_normal((3, dq)))
    context, weights = module(step, keys, mask=mask)  # values default to keys
    assert context.shape == (3, 4) and weights.shape == (3, 7)
    assert (weights[1, 3:] == 0).all() and torch.allclose(weights.sum(-1), torch.ones(3, dtype=torch.float64))
    want_c, want_w = _eager(module_kind, step[:, None], keys, keys, mask, **params)
    torch.testing.assert_close(context, want_c[:, 0])
    torch.testing.assert_close(weights, want_w[:, 0])
    if params:
        context.sum().backward()
        ours = [p.grad.clone() for p in params.values()]
        for p in params.values():
            p.grad = None
        want_c[:, 0].sum().backward()
        for got, p in zip(ours, params.values()):
            torch.testing.assert_close(got, p.grad)
    many = torch.from_numpy(rng.standard_normal((3, 2, dq)))
    context2, weights2 = module(many, keys, keys[..., :3], mask)
    assert context2.shape == (3, 2, 3) and weights2.shape == (3, 2, 7)


def test_dot_attention_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="query_size == key_size"):
        DotAttention(4, 5, kind="dot")
    with pytest.raises(ValueError, match="kind"):
        DotAttention(4, kind="additive")
