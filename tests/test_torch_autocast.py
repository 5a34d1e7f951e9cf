"""Autocast: under torch.autocast our modules take and return the dtypes torch.nn's do and
compute as torch does, against torch.nn under the same autocast region (same weights), on the
CPU with bfloat16 and (``gpu`` tests) on CUDA with float16 and bfloat16. torch's rules, which
ours follow (see ``gpukernels.torch._library`` and each family's module docstring): softmax and
log_softmax are float32 on CUDA and untouched on the CPU; scaled_dot_product_attention is in the
autocast dtype on both; the activations are untouched; the recurrent layers and cells are in the
autocast dtype on CUDA, and on the CPU the LSTM layer and the Elman RNN (layer and cell) are,
while the GRU layer and the LSTM and GRU cells come out in float32. The dense layer is in the
autocast dtype on both; layer_norm and rms_norm are float32 on CUDA and keep a lower-precision
input's dtype on the CPU; the losses are float32 on both, and CUDA autocast refuses
binary_cross_entropy."""

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


# ---------------------------------------------------------------------------------------------
# Dense layers, norms and losses. torch's rules (see gpukernels/torch/_linear.py,
# _normalization.py, _loss.py, _cross_entropy.py): linear is in the autocast dtype on both;
# layer_norm and rms_norm are float32 on CUDA and untouched on the CPU (lower-precision input,
# float32 parameters: the input's dtype out); every loss is float32 on both, except
# binary_cross_entropy, which CUDA autocast refuses.

def _randomised(ours, theirs):
    """Random parameters in ours (copied into theirs by the comparison): at torch's initial ones
    and zeros, the sum of squares the comparison differentiates is a constant of a norm's input."""
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
    return ours, theirs


class _TorchLinearGELU(torch.nn.Linear):
    """torch's spelling of ``gnn.Linear(..., activation="gelu")``, with its parameter names."""

    def forward(self, input):
        return F.gelu(super().forward(input))


def _torch_mlp():
    """torch's spelling of ``gnn.MLP(6, [6, 6], 3, norm=True)`` (pre-norm residual GELU layers,
    a plain output layer), with its parameter names."""

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(6, 6), torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)])
            self.norms = torch.nn.ModuleList([torch.nn.LayerNorm(6), torch.nn.LayerNorm(6)])

        def forward(self, h):
            for norm, layer in zip(self.norms, self.layers[:2]):
                h = h + F.gelu(layer(norm(h)))
            return self.layers[2](h)

    return MLP()


LAYERS = [
    ("Linear", lambda: (gnn.Linear(6, 5), torch.nn.Linear(6, 5)), 3),
    ("Linear-gelu", lambda: (gnn.Linear(6, 5, activation="gelu"), _TorchLinearGELU(6, 5)), 2),
    ("MLP-norm", lambda: _randomised(gnn.MLP(6, [6, 6], 3, norm=True), _torch_mlp()), 3),
    ("LayerNorm", lambda: _randomised(gnn.LayerNorm(6), torch.nn.LayerNorm(6)), 3),
    ("LayerNorm-2d-nobias", lambda: _randomised(gnn.LayerNorm((3, 6), bias=False),
                                                torch.nn.LayerNorm((3, 6), bias=False)), 3),
    ("RMSNorm", lambda: _randomised(gnn.RMSNorm(6), torch.nn.RMSNorm(6)), 2),
    ("RMSNorm-eps", lambda: _randomised(gnn.RMSNorm(6, eps=1e-3), torch.nn.RMSNorm(6, eps=1e-3)), 3),
]


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["fp32-in", "bf16-in"])
@pytest.mark.parametrize("make,rank", [m[1:] for m in LAYERS], ids=[m[0] for m in LAYERS])
def test_cpu_bf16_autocast_dense_and_norm_layers_match_torch_nn(make, rank, input_dtype):
    _compare_modules(make, rank, "cpu", torch.bfloat16, input_dtype)


def _targets(device, n=6, classes=5):
    target = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(3)).to(device)
    target[1] = -100
    return target


def _probabilities(n=6, classes=5, device="cpu"):
    return torch.rand(n, classes, generator=torch.Generator().manual_seed(4)).to(device)


# (id, ours, torch's): each called as fn(input, device); input (6, 5) logits
LOSSES = [
    ("mse", lambda x, d: GF.mse_loss(x, _probabilities(device=d)),
     lambda x, d: F.mse_loss(x, _probabilities(device=d))),
    ("l1-sum", lambda x, d: GF.l1_loss(x, _probabilities(device=d), reduction="sum"),
     lambda x, d: F.l1_loss(x, _probabilities(device=d), reduction="sum")),
    ("huber", lambda x, d: GF.huber_loss(x, _probabilities(device=d), delta=0.5),
     lambda x, d: F.huber_loss(x, _probabilities(device=d), delta=0.5)),
    ("smooth_l1-none", lambda x, d: GF.smooth_l1_loss(x, _probabilities(device=d), reduction="none", beta=0.5),
     lambda x, d: F.smooth_l1_loss(x, _probabilities(device=d), reduction="none", beta=0.5)),
    ("bce_with_logits", lambda x, d: GF.binary_cross_entropy_with_logits(
        x, _probabilities(device=d), pos_weight=torch.full((5,), 2.0, device=d)),
     lambda x, d: F.binary_cross_entropy_with_logits(x, _probabilities(device=d),
                                                     pos_weight=torch.full((5,), 2.0, device=d))),
    ("cross_entropy", lambda x, d: GF.cross_entropy(x, _targets(d), label_smoothing=0.1),
     lambda x, d: F.cross_entropy(x, _targets(d), label_smoothing=0.1)),
    ("cross_entropy-probs", lambda x, d: GF.cross_entropy(x, _probabilities(device=d).softmax(1), reduction="none"),
     lambda x, d: F.cross_entropy(x, _probabilities(device=d).softmax(1), reduction="none")),
    ("nll", lambda x, d: GF.nll_loss(x, _targets(d), reduction="sum"),
     lambda x, d: F.nll_loss(x, _targets(d), reduction="sum")),
    ("CrossEntropyLoss", lambda x, d: gnn.CrossEntropyLoss()(x, _targets(d)),
     lambda x, d: torch.nn.CrossEntropyLoss()(x, _targets(d))),
]
CPU_ONLY_LOSSES = [  # CUDA autocast refuses binary_cross_entropy (test_cuda_autocast_refuses_bce_as_torch)
    ("bce", lambda x, d: GF.binary_cross_entropy(torch.sigmoid(x), _probabilities(device=d)),
     lambda x, d: F.binary_cross_entropy(torch.sigmoid(x), _probabilities(device=d))),
]


def _compare_losses(ours, theirs, device, dtype, input_dtype):
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(5)).to(device=device, dtype=input_dtype)
    results = []
    for fn in (ours, theirs):
        xi = x.clone().requires_grad_()
        with torch.autocast(device, dtype=dtype):
            loss = fn(xi, device)
        loss.float().sum().backward()
        results.append((loss, xi.grad))
    (loss, grad), (loss_t, grad_t) = results
    assert loss.dtype == loss_t.dtype == torch.float32
    assert grad.dtype == grad_t.dtype == input_dtype
    assert _rel(loss, loss_t) < 1e-5 if input_dtype == torch.float32 else _rel(loss, loss_t) < LOW_PRECISION_TOLERANCE
    assert _rel(grad, grad_t) < LOW_PRECISION_TOLERANCE


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=["fp32-in", "bf16-in"])
@pytest.mark.parametrize("ours,theirs", [m[1:] for m in LOSSES + CPU_ONLY_LOSSES],
                         ids=[m[0] for m in LOSSES + CPU_ONLY_LOSSES])
def test_cpu_bf16_autocast_losses_match_torch(ours, theirs, input_dtype):
    _compare_losses(ours, theirs, "cpu", torch.bfloat16, input_dtype)


def _linear_cross_entropy_pair(device):
    h = torch.randn(6, 8, device=device, requires_grad=True)
    w = torch.randn(5, 8, device=device, requires_grad=True)
    b = torch.randn(5, device=device, requires_grad=True)
    return h, w, b


def _compare_linear_cross_entropy(device, dtype):
    """Ours against ``cross_entropy(linear(h, w, b))``: the matmul in the autocast dtype, the loss
    in float32, the gradients in the leaves' float32."""
    torch.manual_seed(0)
    leaves = _linear_cross_entropy_pair(device)
    target = _targets(device)
    with torch.autocast(device, dtype=dtype):
        ours = GF.linear_cross_entropy(*leaves[:2], target, leaves[2], chunk_size=4)
        theirs = F.cross_entropy(F.linear(*leaves), target)
    assert ours.dtype == theirs.dtype == torch.float32
    assert _rel(ours, theirs) < LOW_PRECISION_TOLERANCE
    grads, grads_t = torch.autograd.grad(ours, leaves), torch.autograd.grad(theirs, leaves)
    for g, g_t in zip(grads, grads_t, strict=True):
        assert g.dtype == g_t.dtype == torch.float32 and _rel(g, g_t) < LOW_PRECISION_TOLERANCE


def test_cpu_bf16_autocast_linear_cross_entropy_matches_linear_then_cross_entropy():
    _compare_linear_cross_entropy("cpu", torch.bfloat16)


def test_cpu_autocast_loss_and_norm_dtypes_follow_torchs_lists():
    x, t = torch.randn(4, 5), torch.rand(4, 5)
    target = torch.tensor([0, 4, 1, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for dtype in (torch.float32, torch.bfloat16):
            xd, td = x.to(dtype), t.to(dtype)
            assert GF.mse_loss(xd, td).dtype == torch.float32
            assert GF.binary_cross_entropy(torch.sigmoid(xd), td).dtype == torch.float32
            assert GF.sigmoid_focal_loss(xd, td).dtype == torch.float32
            assert GF.focal_loss(xd, target).dtype == torch.float32
            assert GF.cross_entropy(xd, target).dtype == torch.float32 == F.cross_entropy(xd, target).dtype
            assert GF.layer_norm(xd, (5,)).dtype == dtype == F.layer_norm(xd, (5,)).dtype
            assert GF.rms_norm(xd, (5,)).dtype == dtype == F.rms_norm(xd, (5,)).dtype
            out, total = GF.add_layer_norm(xd, xd, 5)
            assert out.dtype == total.dtype == dtype


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("make,rank", [m[1:] for m in LAYERS], ids=[m[0] for m in LAYERS])
def test_cuda_autocast_dense_and_norm_layers_match_torch_nn(make, rank, dtype):
    _compare_modules(make, rank, "cuda", dtype, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("ours,theirs", [m[1:] for m in LOSSES], ids=[m[0] for m in LOSSES])
def test_cuda_autocast_losses_match_torch(ours, theirs, dtype):
    _compare_losses(ours, theirs, "cuda", dtype, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_autocast_linear_cross_entropy_matches_linear_then_cross_entropy(dtype):
    _compare_linear_cross_entropy("cuda", dtype)


@pytest.mark.gpu
def test_cuda_autocast_refuses_bce_as_torch():
    p, t = torch.rand(4, 5, device="cuda"), torch.rand(4, 5, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            F.binary_cross_entropy(p, t)
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            GF.binary_cross_entropy(p, t)
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            gnn.BCELoss()(p, t)
    assert GF.binary_cross_entropy(p, t).dtype == torch.float32  # outside autocast, as usual


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_autocast_norm_dtypes_are_float32(dtype):
    x = torch.randn(4, 5, device="cuda", dtype=dtype)
    with torch.autocast("cuda", dtype=dtype):
        assert GF.layer_norm(x, (5,)).dtype == torch.float32 == F.layer_norm(x, (5,)).dtype
        assert GF.rms_norm(x, (5,)).dtype == torch.float32 == F.rms_norm(x, (5,)).dtype
        assert GF.add_rms_norm(x, x, 5)[0].dtype == torch.float32
