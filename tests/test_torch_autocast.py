"""Autocast: under torch.autocast our modules take and return the dtypes torch.nn's do and
compute as torch does, against torch.nn under the same autocast region (same weights), on the
CPU with bfloat16 and (``gpu`` tests) on CUDA with float16 and bfloat16. torch's rules, which
ours follow (see ``gpukernels.torch._library`` and each family's module docstring): softmax and
log_softmax are float32 on CUDA and untouched on the CPU; scaled_dot_product_attention is in the
autocast dtype on both; the activations are untouched; the recurrent layers and cells are in the
autocast dtype on CUDA, and on the CPU the LSTM layer and the Elman RNN (layer and cell) are,
while the GRU layer and the LSTM and GRU cells come out in float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gpukernels.torch.functional as GF
import gpukernels.torch.nn as gnn
from gpukernels.benchmarks.compiled import build_models, make_input

LOW_PRECISION_TOLERANCE = 3e-2  # relative norm error: a few bf16 roundings of matmul inputs


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


MODULES = [
    ("LSTM-2-bi", lambda: (gnn.LSTM(6, 5, 2, bidirectional=True), torch.nn.LSTM(6, 5, 2, bidirectional=True)), 3),
    ("GRU", lambda: (gnn.GRU(6, 5), torch.nn.GRU(6, 5)), 3),
    ("RNN", lambda: (gnn.RNN(6, 5), torch.nn.RNN(6, 5)), 3),
    ("RNN-relu", lambda: (gnn.RNN(6, 5, nonlinearity="relu"), torch.nn.RNN(6, 5, nonlinearity="relu")), 3),
    ("LSTMCell", lambda: (gnn.LSTMCell(6, 5), torch.nn.LSTMCell(6, 5)), 2),
    ("GRUCell", lambda: (gnn.GRUCell(6, 5), torch.nn.GRUCell(6, 5)), 2),
    ("RNNCell", lambda: (gnn.RNNCell(6, 5), torch.nn.RNNCell(6, 5)), 2),
    ("Softmax", lambda: (gnn.Softmax(-1), torch.nn.Softmax(-1)), 3),
    ("LogSoftmax", lambda: (gnn.LogSoftmax(1), torch.nn.LogSoftmax(1)), 3),
    ("GELU-tanh", lambda: (gnn.GELU("tanh"), torch.nn.GELU("tanh")), 3),
    ("Sigmoid", lambda: (gnn.Sigmoid(), torch.nn.Sigmoid()), 3),
    ("Tanh", lambda: (gnn.Tanh(), torch.nn.Tanh()), 3),
    ("ReLU", lambda: (gnn.ReLU(), torch.nn.ReLU()), 3),
]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _compare_modules(make, rank, device, dtype, input_dtype):
    torch.manual_seed(0)
    ours, theirs = make()
    theirs.load_state_dict(ours.state_dict())
    ours, theirs = ours.to(device), theirs.to(device)
    shape = (4, 3, 6) if rank == 3 else (3, 6)
    x = torch.randn(*shape, device=device).to(input_dtype)
    results = []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            out = _first(module(xi))
        out.float().pow(2).sum().backward()
        results.append((out, xi.grad, [p.grad for p in module.parameters()]))
    (out, gx, gp), (out_t, gx_t, gp_t) = results
    assert out.dtype == out_t.dtype
    assert gx.dtype == gx_t.dtype == input_dtype
    assert _rel(out, out_t) < LOW_PRECISION_TOLERANCE
    assert _rel(gx, gx_t) < LOW_PRECISION_TOLERANCE
    for g, g_t in zip(gp, gp_t, strict=True):
        assert g.dtype == g_t.dtype
        assert _rel(g, g_t) < LOW_PRECISION_TOLERANCE
    return out.dtype


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["fp32-in", "bf16-in"])
@pytest.mark.parametrize("make,rank", [m[1:] for m in MODULES], ids=[m[0] for m in MODULES])
def test_cpu_bf16_autocast_matches_torch_nn(make, rank, input_dtype):
    _compare_modules(make, rank, "cpu", torch.bfloat16, input_dtype)


def test_cpu_autocast_dtypes_follow_torchs_lists():
    """The dtype each op gives, spelled out (the comparison above only says "as torch")."""
    x = torch.randn(2, 3, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert GF.softmax(x, -1).dtype == torch.float32
        assert GF.softmax(x.bfloat16(), -1).dtype == torch.bfloat16
        assert GF.gelu(x).dtype == torch.float32
        assert GF.scaled_dot_product_attention(x, x, x).dtype == torch.bfloat16
        assert gnn.LSTM(8, 5)(x[0])[0].dtype == torch.bfloat16
        assert gnn.GRU(8, 5)(x[0])[0].dtype == torch.float32
        assert gnn.LSTMCell(8, 5)(x[0, 0])[0].dtype == torch.float32


def test_cpu_sdpa_under_autocast_matches_torch():
    q, k, v = (torch.randn(2, 3, 5, 8, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = GF.scaled_dot_product_attention(q, k, v, is_causal=True)
        theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert _rel(ours, theirs) < LOW_PRECISION_TOLERANCE
    grads = torch.autograd.grad(ours.float().sum(), (q, k, v))
    grads_t = torch.autograd.grad(theirs.float().sum(), (q, k, v))
    for g, g_t in zip(grads, grads_t, strict=True):
        assert g.dtype == torch.float32 and _rel(g, g_t) < LOW_PRECISION_TOLERANCE


def test_compiled_model_under_autocast_matches_eager_under_autocast():
    ours, theirs = build_models()
    x = make_input(5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = ours(x)
        compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")(x)
        reference = theirs(x)
    assert compiled.dtype == eager.dtype == reference.dtype
    torch.testing.assert_close(compiled, eager)
    assert _rel(eager, reference) < LOW_PRECISION_TOLERANCE


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("make,rank", [m[1:] for m in MODULES], ids=[m[0] for m in MODULES])
def test_cuda_autocast_matches_torch_nn(make, rank, dtype):
    _compare_modules(make, rank, "cuda", dtype, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_autocast_dtypes_follow_torchs_lists(dtype):
    x = torch.randn(2, 3, 4, 8, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        assert GF.softmax(x.to(dtype), -1).dtype == torch.float32 == F.softmax(x.to(dtype), -1).dtype
        assert GF.scaled_dot_product_attention(x, x, x).dtype == dtype
        assert gnn.LSTM(8, 5).cuda()(x[0])[0].dtype == dtype == torch.nn.LSTM(8, 5).cuda()(x[0])[0].dtype
        assert gnn.GRUCell(8, 5).cuda()(x[0, 0]).dtype == dtype == torch.nn.GRUCell(8, 5).cuda()(x[0, 0]).dtype
