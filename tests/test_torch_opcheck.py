"""torch.library.opcheck for every operator in the ``gpukernels`` namespace (schema, autograd
registration, fake tensors, AOT dispatch with dynamic shapes), on small random inputs. A backward
op gets inputs that do not require grad (there is no double backward: backpropagating through
one raises torch's "no autograd formula" error). Every registered op must have samples here: an
op registered without them fails ``test_every_registered_op_has_samples``."""

from __future__ import annotations

import pytest
import torch

import gpukernels.torch._optim_ops  # noqa: F401  (registers the optimizer operators)
import gpukernels.torch.functional  # noqa: F401  (registers the ops the samples call)
from gpukernels.torch._library import registered_ops

CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _r(*shape, grad=True):
    return torch.randn(*shape, dtype=torch.float32).requires_grad_(grad)


def _rnn_args(cell, T=3, B=2, I=4, H=5, peephole=False, lengths=None, bias=True, heads=1):
    G = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}[cell]
    c0 = _r(B, H) if cell == "lstm" else None
    b = (_r(G * H), _r(G * H)) if bias else (None, None)
    peep = _r(3, H) if peephole else None
    return (cell, _r(T, B, I), _r(B, H), c0, _r(G * H, I), _r(G * H, H // heads), *b, peep, False, lengths, False, True,
            heads)


def _rnn_backward_args(cell, **kw):
    args = _rnn_args(cell, **kw)
    cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, *options = args
    with torch.no_grad():
        y, h_n, c_n, ws = torch.ops.gpukernels.recurrent_layer(*args)
    grad_c = torch.randn_like(c_n) if cell == "lstm" else None
    return (cell, torch.randn_like(y), torch.randn_like(h_n), grad_c, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep,
            *options)


def _sdpa_args(mask=False):
    q, k, v = _r(2, 3, 4, 8), _r(2, 3, 5, 8), _r(2, 3, 5, 6)
    return q, k, v, (torch.rand(4, 5) > 0.3) if mask else None, not mask, None, False


def _sdpa_backward_args():
    q, k, v, mask, causal, scale, gqa = _sdpa_args(mask=True)
    with torch.no_grad():
        out, lse = torch.ops.gpukernels.scaled_dot_product_attention(q, k, v, mask, causal, scale, gqa)
    return torch.randn_like(out), q, k, v, out, lse, mask, causal, scale, gqa


ADDITIVE = lambda: (None, _r(6, 4), _r(6, 5), _r(6))  # noqa: E731  (weight, w_query, w_keys, v)


def _classes(*shape, classes=5, ignored=True):
    target = torch.randint(0, classes, shape)
    if ignored and target.numel() > 1:
        target.view(-1)[1] = -100
    return target


def _probs(*shape):
    return torch.softmax(torch.randn(*shape), 1).requires_grad_()


def _logsumexp(x, dim):
    return torch.logsumexp(x.detach(), dim)


def _norm_backward_args(name, add, rms, shape=(3, 7), normalized=(7,), affine=True):
    x = _r(*shape)
    residual = (_r(*shape),) if add else ()
    params = (_r(*normalized),) + (() if rms else (_r(*normalized),)) if affine else (None,) * (1 if rms else 2)
    with torch.no_grad():
        outputs = getattr(torch.ops.gpukernels, name)(x, *residual, list(normalized), *params, 1e-5)
    stats = outputs[2:] if add else outputs[1:]
    source = (_r(*shape), outputs[1]) if add else (x,)  # (grad_sum, sum) or (input,)
    return (_r(*shape), *source, list(normalized), *stats, *params)


def _linear_backward_args(activation, slope=0.01, bias=True, mask=(True, True, True)):
    x, w = _r(2, 3, 4), _r(5, 4)
    with torch.no_grad():
        out, derivative = torch.ops.gpukernels.linear(x, w, _r(5) if bias else None, activation, slope, True)
    saved = {"sigmoid": out, "relu": out, "gelu": derivative, "gelu_tanh": derivative}.get(activation)
    return (_r(2, 3, 5), x, w, saved, activation, slope, *mask)


def _y(op, x, dim):
    with torch.no_grad():
        return getattr(torch.ops.gpukernels, op)(x, dim)


def _plain(*shape):
    return torch.randn(*shape)


def _tensors(count=2):
    """Fresh parameter-shaped lists for the in-place optimizer operators (no autograd)."""
    return [_plain(3, 5), _plain(7)][:count]


def _steps(count=2):
    return [torch.tensor(float(n + 1)) for n in range(count)]


SAMPLES = {
    "sigmoid": lambda: [(_r(3, 7),)],
    "tanh": lambda: [(_r(3, 7),)],
    "relu": lambda: [(_r(3, 7),)],
    "leaky_relu": lambda: [(_r(3, 7), 0.1), (_r(5,), -0.2)],
    "gelu": lambda: [(_r(3, 7), "none"), (_r(2, 5), "tanh")],
    "sigmoid_backward": lambda: [(_r(3, 7), torch.rand(3, 7).requires_grad_())],
    "tanh_backward": lambda: [(_r(3, 7), torch.rand(3, 7).requires_grad_())],
    "relu_backward": lambda: [(_r(3, 7), _r(3, 7))],
    "leaky_relu_backward": lambda: [(_r(3, 7), _r(3, 7), 0.1)],
    "gelu_backward": lambda: [(_r(3, 7), _r(3, 7), "tanh"), (_r(4,), _r(4,), "none")],
    "softmax": lambda: [(_r(3, 7), 1), (_r(4, 2, 5), 0)],
    "log_softmax": lambda: [(_r(3, 7), 1), (_r(4, 2, 5), 2)],
    "masked_softmax": lambda: [(_r(3, 7), torch.rand(3, 7) > 0.3, None, 1),
                               (_r(3, 7), None, torch.tensor([7, 0, 3]), 1)],
    "softmax_backward": lambda: [(_r(3, 7), _y("softmax", _r(3, 7), 1).requires_grad_(), 1)],
    "log_softmax_backward": lambda: [(_r(3, 7), _y("log_softmax", _r(3, 7), 0).requires_grad_(), 0)],
    "scaled_dot_product_attention": lambda: [_sdpa_args(), _sdpa_args(mask=True)],
    "scaled_dot_product_attention_backward": lambda: [_sdpa_backward_args()],
    "attention_scores": lambda: [(_r(2, 3, 4), _r(2, 5, 4), "dot", None, None, None, None),
                                 (_r(2, 3, 4), _r(2, 5, 5), "additive", *ADDITIVE())],
    "attention_scores_backward": lambda: [(_r(2, 3, 5), _r(2, 3, 4), _r(2, 5, 4), "general", _r(4, 4), None, None,
                                           None)],
    "attention": lambda: [(_r(2, 3, 4), _r(2, 5, 5), _r(2, 5, 6), "additive", torch.rand(2, 5) > 0.2, *ADDITIVE()),
                          (_r(2, 3, 4), _r(2, 5, 4), _r(2, 5, 6), "scaled_dot", None, None, None, None, None)],
    "attention_backward": lambda: [(_r(2, 3, 6), _r(2, 3, 5), _r(2, 3, 4), _r(2, 5, 5), _r(2, 5, 6),
                                    torch.softmax(torch.randn(2, 3, 5), -1), "additive", *ADDITIVE())],
    "recurrent_layer": lambda: [_rnn_args("lstm", peephole=True), _rnn_args("gru", bias=False),
                                _rnn_args("rnn_relu", lengths=torch.tensor([3, 1])),
                                _rnn_args("lstm", H=6, heads=2), _rnn_args("gru", H=6, heads=3)],
    "recurrent_layer_backward": lambda: [_rnn_backward_args("lstm"), _rnn_backward_args("gru"),
                                         _rnn_backward_args("rnn_tanh", lengths=torch.tensor([2, 3])),
                                         _rnn_backward_args("lstm", H=6, heads=3),
                                         _rnn_backward_args("gru", H=4, heads=2)],
    # elementwise losses: a target that requires grad too (every one of them differentiates it)
    "mse_loss": lambda: [(_r(3, 7), _r(3, 7), "mean"), (_r(4,), _r(4, grad=False), "none")],
    "l1_loss": lambda: [(_r(3, 7), _r(3, 7), "sum"), (_r(2, 3), _r(2, 3), "none")],
    "huber_loss": lambda: [(_r(3, 7), _r(3, 7), "mean", 0.5), (_r(5,), _r(5,), "none", 2.0)],
    "smooth_l1_loss": lambda: [(_r(3, 7), _r(3, 7), "mean", 0.5), (_r(5,), _r(5,), "sum", 0.0)],
    "binary_cross_entropy": lambda: [
        ((torch.rand(3, 7) * 0.9 + 0.05).requires_grad_(), torch.rand(3, 7).requires_grad_(), torch.rand(7), "mean"),
        ((torch.rand(4,) * 0.9 + 0.05).requires_grad_(), torch.rand(4,), None, "none")],
    "binary_cross_entropy_with_logits": lambda: [(_r(3, 7), torch.rand(3, 7), torch.rand(7), torch.rand(7), "mean"),
                                                 (_r(2, 5), torch.rand(2, 5).requires_grad_(), None, None, "none")],
    "sigmoid_focal_loss": lambda: [(_r(3, 7), torch.rand(3, 7), 0.25, 2.0, "none"),
                                   (_r(6,), torch.rand(6,).requires_grad_(), -1.0, 1.5, "mean")],
    "elementwise_loss_backward": lambda: [
        ("mse", _r(3, 7), _r(3, 7), _r(3, 7), None, None, "none", 0.0, 0.0, True, True),
        ("bce_logits", _r(()), _r(3, 7), torch.rand(3, 7), torch.rand(7), torch.rand(7), "mean", 0.0, 0.0, True,
         False),
        ("focal", _r(()), _r(4,), torch.rand(4,), None, None, "sum", 0.25, 2.0, False, True)],
    # cross-entropy family: ignored targets, class weights, probability targets, spatial dims
    "cross_entropy": lambda: [(_r(6, 5), _classes(6), torch.rand(5), -100, "mean", 0.1, True),
                              (_r(2, 5, 3), _classes(2, 3), None, -100, "none", 0.0, False),
                              (_r(4, 5), torch.softmax(torch.randn(4, 5), 1), None, -100, "sum", 0.2, True),
                              # probability targets that require grad: the row log-sum-exp kept for them
                              (_r(4, 5), _probs(4, 5), torch.rand(5), -100, "mean", 0.2, True, True),
                              (_r(2, 5, 3, grad=False), _probs(2, 5, 3), None, -100, "none", 0.0, False, True),
                              # class weights that require grad (probability targets): differentiated too
                              (_r(4, 5, grad=False), _probs(4, 5).detach(), torch.rand(5).requires_grad_(), -100,
                               "mean", 0.2, False, True),
                              (_r(2, 5, 3), _probs(2, 5, 3), torch.rand(5).requires_grad_(), -100, "none", 0.1, True,
                               True)],
    "cross_entropy_target_backward": lambda: [
        (_r(()), _r(4, 5), _probs(4, 5), torch.rand(5), -100, "mean", 0.1, _logsumexp(_r(4, 5), 1)),
        (_r(2, 3), _r(2, 5, 3), _probs(2, 5, 3), None, -100, "none", 0.0, None)],
    "cross_entropy_weight_backward": lambda: [
        (_r(()), _r(4, 5), _probs(4, 5), torch.rand(5), -100, "mean", 0.1, _logsumexp(_r(4, 5), 1)),
        (_r(2, 3), _r(2, 5, 3), _probs(2, 5, 3), None, -100, "none", 0.0, None)],
    "focal_loss": lambda: [(_r(6, 5), _classes(6), torch.rand(5), 2.0, -100, "mean", True),
                           (_r(2, 5, 3), _classes(2, 3), None, 0.5, -100, "none", False)],
    "cross_entropy_backward": lambda: [(_r(()), _r(6, 5), _classes(6), torch.rand(5), -100, "mean", 0.1),
                                       (_r(2, 3), _r(2, 5, 3), _classes(2, 3), None, -100, "none", 0.0)],
    "focal_loss_backward": lambda: [(_r(()), _r(6, 5), _classes(6), torch.rand(5), 2.0, -100, "sum")],
    "nll_loss": lambda: [(_r(6, 5), _classes(6), torch.rand(5), -100, "mean"),
                         (_r(2, 5, 3), _classes(2, 3, ignored=False), None, 1, "none")],
    "nll_loss_backward": lambda: [(_r(()), _r(6, 5), _classes(6), torch.rand(5), -100, "mean")],
    "linear_cross_entropy": lambda: [(_r(6, 4), _r(7, 4), _classes(6, classes=7), _r(7), -100, "mean", 0.1, 2, True),
                                     (_r(2, 3, 4), _r(7, 4), _classes(2, 3, classes=7), None, -100, "none", 0.0,
                                      None, False)],
    "linear_cross_entropy_backward": lambda: [
        (_r(2, 3), _r(2, 3, 4), _r(7, 4), _classes(2, 3, classes=7), _r(7), -100, "none", 0.1, 4),
        (_r(()), _r(5, 4), _r(7, 4), _classes(5, classes=7), None, -100, "sum", 0.0, None)],
    # normalisation
    "layer_norm": lambda: [(_r(3, 7), [7], _r(7), _r(7), 1e-5), (_r(2, 3, 4), [3, 4], None, None, 1e-3)],
    "rms_norm": lambda: [(_r(3, 7), [7], _r(7), None), (_r(2, 3, 4), [3, 4], None, 1e-3)],
    "add_layer_norm": lambda: [(_r(3, 7), _r(3, 7), [7], _r(7), _r(7), 1e-5), (_r(2, 5), _r(2, 5), [5], None, None,
                                                                                1e-5)],
    "add_rms_norm": lambda: [(_r(3, 7), _r(3, 7), [7], _r(7), None), (_r(2, 5), _r(2, 5), [5], None, 1e-6)],
    "layer_norm_backward": lambda: [_norm_backward_args("layer_norm", False, False),
                                    _norm_backward_args("layer_norm", False, False, (2, 3, 4), (3, 4), False)],
    "rms_norm_backward": lambda: [_norm_backward_args("rms_norm", False, True)],
    "add_layer_norm_backward": lambda: [_norm_backward_args("add_layer_norm", True, False)],
    "add_rms_norm_backward": lambda: [_norm_backward_args("add_rms_norm", True, True, affine=False)],
    # the fused dense layer: each kind of saved tensor (none, the output, the derivative)
    "linear": lambda: [(_r(2, 3, 4), _r(5, 4), _r(5), None, 0.01, True), (_r(3, 4), _r(5, 4), None, "gelu", 0.01, True),
                       (_r(3, 4), _r(5, 4), _r(5), "sigmoid", 0.01, True),
                       (_r(3, 4), _r(5, 4), _r(5), "leaky_relu", -0.2, True),
                       (_r(3, 4).detach(), _r(5, 4).detach(), None, "gelu", 0.01, False)],
    "linear_backward": lambda: [_linear_backward_args(None), _linear_backward_args("gelu", bias=False,
                                                                                   mask=(True, True, False)),
                                _linear_backward_args("relu", mask=(False, True, True))],
    # Optimizer steps (in place, mutated lists declared in the schema; steps/lr as device tensors):
    # params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, grad_scale,
    # found_inf, lr_tensor, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled
    "adam_step_": lambda: [
        (_tensors(), _tensors(), _tensors(), [t.abs() for t in _tensors()], [], [], _steps(), None, None, None,
         1e-3, 0.9, 0.999, 1e-8, 0.01, False, False, True),
        (_tensors(), _tensors(), _tensors(), [t.abs() for t in _tensors()], [t.abs() for t in _tensors()], [],
         _steps(), torch.tensor(2.0), torch.tensor(0.0), torch.tensor(1e-3), 0.0, 0.9, 0.99, 1e-8, 0.0, True, True,
         False)],
    # params, grads, square_avgs, grad_avgs, momentum_buffers, master_params, steps, grad_scale,
    # found_inf, lr_tensor, lr, alpha, eps, weight_decay, momentum, centered, maximize
    "rmsprop_step_": lambda: [
        (_tensors(), _tensors(), [t.abs() for t in _tensors()], _tensors(), _tensors(), [], _steps(), None, None,
         None, 1e-2, 0.99, 1e-8, 0.0, 0.9, True, False)],
    # params, grads, momentum_buffers, first_step, master_params, grad_scale, found_inf, lr_tensor,
    # lr, momentum, dampening, weight_decay, nesterov, maximize
    "sgd_step_": lambda: [
        (_tensors(), _tensors(), _tensors(), [False, True], [], None, None, None, 0.1, 0.9, 0.0, 1e-4, True, False),
        (_tensors(), _tensors(), [], [], [], None, None, torch.tensor(0.05), 0.0, 0.0, 0.0, 0.0, False, False)],
}


def test_every_registered_op_has_samples():
    names = {op._schema.name.split("::")[1] for op in registered_ops()}
    assert names == set(SAMPLES), f"missing samples: {names - set(SAMPLES)}; stale: {set(SAMPLES) - names}"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_opcheck(name):
    op = getattr(torch.ops.gpukernels, name).default
    torch.manual_seed(0)
    for args in SAMPLES[name]():
        if name.endswith("_backward"):  # backward ops have no double backward: inputs without grad
            args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        result = torch.library.opcheck(op, args, test_utils=CHECKS)
        assert result == {check: "SUCCESS" for check in CHECKS}, result


@pytest.mark.parametrize("name", ["cross_entropy", "focal_loss", "linear_cross_entropy"])
def test_losses_whose_forward_computes_the_gradient_refuse_double_backward(name):
    """Their backward reuses the gradient the forward kernel computed, a constant to autograd:
    create_graph=True would silently drop its dependence on the inputs, so it raises instead."""
    torch.manual_seed(0)
    x, target = _r(4, 5).double(), torch.tensor([0, 4, -100, 2])
    if name == "linear_cross_entropy":
        w = _r(5, 5).double()
        loss = getattr(torch.ops.gpukernels, name)(x, w, target, None, -100, "mean", 0.0, None, True)[0]
        leaves = (x, w)
    else:
        options = (None, -100, "mean", 0.1) if name == "cross_entropy" else (None, 2.0, -100, "mean")
        loss = getattr(torch.ops.gpukernels, name)(x, target, *options, True)[0]
        leaves = (x,)
    (first,) = torch.autograd.grad(loss, leaves[:1], retain_graph=True)  # once: fine
    assert torch.isfinite(first).all()
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(loss, leaves, create_graph=True)
