"""The dense layer in PyTorch: the autograd Function against torch's own F.linear + activation
(float64 on the CPU through the reference; gradcheck), gradients only where autograd asks,
gpukernels.torch.nn.Linear as a drop-in for torch.nn.Linear (arguments, initialisation,
state_dict both ways), and the MLP block against the same network written with torch.nn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpukernels.torch import functional as gkF
from gpukernels.torch import nn as gknn
from test_linear_reference import torch_layer

ACTIVATIONS = (None, "relu", "leaky_relu", "gelu", "gelu_tanh", "sigmoid", "tanh")


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=str)
def test_function_matches_torch_in_float64(activation):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 7, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    ours, theirs = _leaves(x, w, b), _leaves(x, w, b)
    y = gkF.linear(*ours, activation=activation)
    want = torch_layer(*theirs, activation)
    torch.testing.assert_close(y, want)
    dy = torch.randn_like(y)
    y.backward(dy)
    want.backward(dy)
    for a, c in zip(ours, theirs):
        torch.testing.assert_close(a.grad, c.grad)


@pytest.mark.parametrize("activation", ("gelu", "sigmoid", None), ids=str)
def test_gradcheck(activation):
    torch.manual_seed(1)
    x, w, b = _leaves(torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64),
                      torch.randn(2, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda x, w, b: gkF.linear(x, w, b, activation=activation), (x, w, b))


def test_only_the_gradients_autograd_needs():
    torch.manual_seed(2)
    x = torch.randn(4, 3)  # no grad: the first layer's input
    w = torch.randn(2, 3, requires_grad=True)
    y = gkF.linear(x, w, None, activation="relu")
    y.sum().backward()
    assert x.grad is None and w.grad is not None


def test_linear_module_is_a_drop_in_for_torch_nn_linear():
    torch.manual_seed(3)
    ours = gknn.Linear(6, 4, activation="gelu")
    torch.manual_seed(3)
    theirs = torch.nn.Linear(6, 4)
    assert isinstance(ours, torch.nn.Linear)
    for name, p in theirs.state_dict().items():  # same names, shapes and initialisation
        assert torch.equal(ours.state_dict()[name], p)
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 6)
    torch.testing.assert_close(ours(x), F.gelu(theirs(x)))
    plain = gknn.Linear(6, 4, bias=False, dtype=torch.float64)
    assert plain.bias is None and plain.weight.dtype == torch.float64 and list(plain.state_dict()) == ["weight"]
    assert "activation='gelu'" in repr(ours)


def test_linear_module_rejects_an_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        gknn.Linear(3, 2, activation="swish")


def _torch_mlp(ours: gknn.MLP, x, activation):
    """The same network written with torch ops, from our module's parameters."""
    h = x
    for i, layer in enumerate(ours.layers):
        if i >= ours.hidden_count:
            h = F.linear(h, layer.weight, layer.bias)
            continue
        out = torch_layer(h, layer.weight, layer.bias, activation)
        h = h + out if ours.residual and out.shape == h.shape else out
    return h


@pytest.mark.parametrize("residual", [True, False])
def test_mlp_matches_the_same_network_in_torch(residual):
    torch.manual_seed(4)
    mlp = gknn.MLP(8, [8, 8, 6], 3, activation="gelu", residual=residual, dtype=torch.float64)
    assert [tuple(l.weight.shape) for l in mlp.layers] == [(8, 8), (8, 8), (6, 8), (3, 6)]
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = mlp(x)
    want = _torch_mlp(mlp, x2, "gelu")
    torch.testing.assert_close(y, want)
    grads = torch.autograd.grad(y.sum(), [x, *mlp.parameters()])
    want_grads = torch.autograd.grad(want.sum(), [x2, *mlp.parameters()])
    for a, c in zip(grads, want_grads):
        torch.testing.assert_close(a, c)


def test_mlp_residual_only_where_widths_agree():
    torch.manual_seed(5)
    mlp = gknn.MLP(4, [6, 6], activation="relu")
    assert len(mlp.layers) == 2 and mlp.norms is None  # no output layer without out_features
    x = torch.randn(3, 4)
    h1 = F.relu(F.linear(x, mlp.layers[0].weight, mlp.layers[0].bias))  # 4 -> 6: no residual
    want = h1 + F.relu(F.linear(h1, mlp.layers[1].weight, mlp.layers[1].bias))
    torch.testing.assert_close(mlp(x), want)


def test_mlp_needs_a_hidden_layer():
    with pytest.raises(ValueError, match="hidden_features"):
        gknn.MLP(4, [])


def test_mlp_with_layer_norm_matches_torch():
    """Pre-norm residual MLP (norm=True uses our LayerNorm) against the same math in torch ops."""
    torch.manual_seed(6)
    mlp = gknn.MLP(8, [8, 8], activation="gelu", norm=True, dtype=torch.float64)
    assert all(isinstance(norm, gknn.LayerNorm) for norm in mlp.norms)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    h = x
    for ln, layer in zip(mlp.norms, mlp.layers):
        h = h + F.gelu(F.linear(F.layer_norm(h, (8,), ln.weight, ln.bias, ln.eps), layer.weight, layer.bias))
    y = mlp(x)
    torch.testing.assert_close(y, h)
    g = torch.randn_like(y)
    (ours,) = torch.autograd.grad(y, x, g)
    (theirs,) = torch.autograd.grad(h, x, g)
    torch.testing.assert_close(ours, theirs)


def test_no_derivative_is_kept_when_no_backward_can_follow(monkeypatch):
    """gelu's act'(z) is an extra (M, N) write: made only when a backward can use it."""
    from gpukernels.ops import linear as ops_linear

    asked = []
    real = ops_linear.linear
    monkeypatch.setattr(ops_linear, "linear", lambda *a, **k: asked.append(k.get("return_saved", False)) or real(*a, **k))
    x, layer = torch.randn(3, 6), gknn.Linear(6, 4, activation="gelu")
    with torch.no_grad():
        y_no_grad = layer(x)
    layer.requires_grad_(False)
    y_frozen = layer(x)
    layer.requires_grad_(True)
    y_train = layer(x)
    assert asked == [False, False, True]
    torch.testing.assert_close(y_no_grad, y_train.detach(), rtol=0, atol=0)
    torch.testing.assert_close(y_frozen, y_train.detach(), rtol=0, atol=0)
    y_train.sum().backward()
    assert layer.weight.grad is not None
