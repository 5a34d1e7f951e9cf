"""torch.compile of a model built only from our modules (2-layer bidirectional LSTM, GRU,
AdditiveAttention, GELU, LogSoftmax; gpukernels.benchmarks.compiled): fullgraph=True under the
eager, aot_eager and inductor backends on the CPU gives eager's outputs and gradients, dynamo
reports no graph break, a new batch size and sequence length recompile at most once, a backend
forced with use_backend / GPUKERNELS_BACKEND is honoured inside compiled code, and a rejected
option raises eager's error at trace time. The same for a whole training step (that model, a
fused dense head, LayerNorm and CrossEntropyLoss in one graph) and for every loss, norm and
dense-layer op; their checks that read data (class indices, BCE probabilities) run inside the
compiled ops."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

import gpukernels as gk
import gpukernels._dispatch as dispatch
import gpukernels.torch.functional as GF
import gpukernels.torch.nn as gnn
from gpukernels.benchmarks.compiled import HIDDEN, build_models, make_input, train_step


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def backends_used(monkeypatch):
    """The backend every op call chose, in order (a spy on the dispatch layer's selection)."""
    used: list[str] = []
    select = dispatch.select_backend

    def spy(first_array):
        used.append(select(first_array))
        return used[-1]

    monkeypatch.setattr(dispatch, "select_backend", spy)
    return used


def _outputs_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.sum().backward()
    return out.detach(), {name.removeprefix("_orig_mod."): p.grad.clone() for name, p in model.named_parameters()}


def test_explain_reports_no_graph_break():
    ours, _ = build_models()
    explanation = torch._dynamo.explain(ours)(make_input(5, 3))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_fullgraph_compile_matches_eager(backend):
    ours, _ = build_models()
    x = make_input(6, 4)
    expected, expected_grads = _outputs_and_grads(ours, x)
    compiled = torch.compile(ours, fullgraph=True, backend=backend)
    out, grads = _outputs_and_grads(compiled, x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys() and len(grads) == 2 * 2 * 4 + 4 + 3
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_new_batch_and_length_recompile_at_most_once():
    ours, _ = build_models()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(ours, fullgraph=True, backend=counter)
    for T, B in ((5, 3), (7, 4), (9, 2), (4, 6)):
        x = make_input(T, B)
        torch.testing.assert_close(train_step(compiled, x), ours(x).sum(), rtol=1e-5, atol=1e-5)
    assert counter.frame_count <= 2, f"compiled {counter.frame_count} times for 4 shapes"


def test_forced_backend_inside_compiled_code(backends_used, monkeypatch):
    """One compiled graph; the backend is chosen when each op runs, so use_backend and the
    environment variable steer the same graph without a recompile (TRITON_INTERPRET=1 here, so
    "triton" runs the real kernels in Triton's interpreter on these CPU tensors)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(gnn.GELU(), gnn.Softmax(dim=-1))
    lstm = gnn.LSTM(3, 4)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    @torch.compile(fullgraph=True, backend=counter)
    def step(x):
        y, _ = lstm(model(x))
        return y

    x = torch.randn(2, 3, 3)
    automatic = step(x)
    assert set(backends_used) == {"numpy"}  # CPU tensors: the reference
    for how in ("context", "environment"):
        backends_used.clear()
        if how == "context":
            with gk.use_backend("triton"):
                forced = step(x)
        else:
            monkeypatch.setenv("GPUKERNELS_BACKEND", "triton")
            forced = step(x)
            monkeypatch.delenv("GPUKERNELS_BACKEND")
        assert backends_used and set(backends_used) == {"triton"}, (how, backends_used)
        torch.testing.assert_close(forced, automatic, rtol=1e-5, atol=1e-6)
    backends_used.clear()
    with gk.use_backend("numpy"):
        step(x)
    assert set(backends_used) == {"numpy"}
    assert counter.frame_count == 1


_LSTM = gnn.LSTM(3, 4)
BAD_OPTIONS = [
    ("gelu-approximate", lambda x: GF.gelu(x, approximate="bogus"), ValueError, "approximate must be one of"),
    ("softmax-dim", lambda x: GF.softmax(x, dim=5), ValueError, "dim 5 out of range"),
    ("log_softmax-dim-type", lambda x: GF.log_softmax(x, dim=1.5), TypeError, "dim must be an integer"),
    ("leaky_relu-inplace", lambda x: GF.leaky_relu(x, -0.1, inplace=True), ValueError, "negative_slope >= 0"),
    ("sdpa-dropout", lambda x: GF.scaled_dot_product_attention(x, x, x, dropout_p=0.5), ValueError, "dropout_p"),
    ("lstm-hidden", lambda x: _LSTM(x, (torch.zeros(1, 3, 5), torch.zeros(1, 3, 5))), ValueError, "h_0"),
    ("mse-reduction", lambda x: GF.mse_loss(x, x, reduction="avg"), ValueError, "reduction must be one of"),
    ("huber-delta", lambda x: GF.huber_loss(x, x, delta=-1.0), ValueError, "delta > 0"),
    ("bce-target-shape", lambda x: GF.binary_cross_entropy(x, x[0]), ValueError, "target"),
    ("cross_entropy-smoothing", lambda x: GF.cross_entropy(x, torch.zeros(2, 3, dtype=torch.long),
                                                           label_smoothing=1.5), ValueError, "label_smoothing"),
    ("cross_entropy-target-dtype", lambda x: GF.cross_entropy(x, torch.zeros(2, 3)), TypeError, "class indices"),
    ("nll-weight-shape", lambda x: GF.nll_loss(x, torch.zeros(2, 3, dtype=torch.long), torch.ones(2)), ValueError,
     "weight has shape"),
    ("focal-gamma", lambda x: GF.focal_loss(x, torch.zeros(2, 3, dtype=torch.long), gamma=-1.0), ValueError,
     "gamma must be >= 0"),
    ("linear_ce-weight", lambda x: GF.linear_cross_entropy(x, torch.ones(4, 2), torch.zeros(2, 3, dtype=torch.long)),
     ValueError, "weight has shape"),
    ("layer_norm-shape", lambda x: GF.layer_norm(x, (4,)), ValueError, "normalized_shape"),
    ("rms_norm-eps", lambda x: GF.rms_norm(x, 3, eps=-1.0), ValueError, "eps must be >= 0"),
    ("add_layer_norm-residual", lambda x: GF.add_layer_norm(x, x[0], 3), ValueError, "residual"),
    ("linear-activation", lambda x: GF.linear(x, torch.ones(4, 3), activation="swish"), ValueError, "activation"),
    ("linear-in_features", lambda x: GF.linear(x, torch.ones(4, 5)), ValueError, "in_features"),
]


@pytest.mark.parametrize("fn,error,message", [b[1:] for b in BAD_OPTIONS], ids=[b[0] for b in BAD_OPTIONS])
def test_rejected_option_raises_eagers_error_at_trace_time(fn, error, message, backends_used):
    x = torch.randn(2, 3, 3)
    with pytest.raises(error, match=message) as eager:
        fn(x)
    # Without fullgraph dynamo hands the frame back to Python, which raises eager's very error.
    with pytest.raises(error) as compiled:
        torch.compile(fn, backend="aot_eager")(x)
    assert str(compiled.value) == str(eager.value)
    # With fullgraph=True dynamo reports the exception it traced, eager's message inside.
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported) as strict:
        torch.compile(fn, backend="aot_eager", fullgraph=True)(x)
    assert str(eager.value) in str(strict.value)
    assert backends_used == []  # no op ran: the checks come first, at trace time


@pytest.mark.gpu
def test_inductor_on_the_gpu_matches_eager():
    ours, _ = build_models(device="cuda")
    x = make_input(16, 8, device="cuda")
    expected, expected_grads = _outputs_and_grads(ours, x)
    out, grads = _outputs_and_grads(torch.compile(ours, fullgraph=True, backend="inductor"), x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def _every_op(x, lengths, mask, lstm_peep, gru_orig, cells, dot):
    """A function touching every registered op and option that the model above leaves out."""
    T, B, _ = x.shape
    y, _, _ = lstm_peep(x, lengths)
    y = y + gru_orig(x)[0]
    h, c = cells[0](x[0])
    h = h + cells[1](x[1], h) + cells[2](x[2], h)
    q = y.transpose(0, 1)                                     # (B, T, 4)
    context, weights = dot(q, q, mask=mask)
    scores = GF.attention_scores(q, q, "scaled_dot")
    attended = GF.scaled_dot_product_attention(q[:, None], q[:, None], q[:, None], is_causal=True)[:, 0]
    probs = GF.masked_softmax(scores, mask[:, None, :].expand(B, T, T))
    acts = GF.sigmoid(context) + GF.tanh(attended) + GF.relu(weights @ q) + GF.leaky_relu(q, 0.2)
    return acts.sum() + probs.sum() + GF.log_softmax(h, dim=0).sum() + GF.gelu(c, approximate="tanh").sum()


def test_every_op_and_option_compiles_without_graph_break_and_matches_eager():
    torch.manual_seed(0)
    lstm = gnn.LSTM(3, 4, peephole=True, coupled=True)
    gru = gnn.GRU(3, 4, linear_before_reset=False)
    cells = (gnn.LSTMCell(3, 4), gnn.GRUCell(3, 4), gnn.RNNCell(3, 4, nonlinearity="relu"))
    dot = gnn.DotAttention(4, kind="general")

    def lstm_with_lengths(x, lengths):  # the functional layer: variable lengths, peepholes, coupled gates
        return GF.lstm_layer(x, None, None, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0,
                             w_peep=lstm.weight_peep_l0, coupled=True, lengths=lengths)

    def fn(x, lengths, mask):
        return _every_op(x, lengths, mask, lstm_with_lengths, gru, cells, dot)

    x = torch.randn(5, 3, 3, requires_grad=True)
    lengths, mask = torch.tensor([5, 2, 4]), torch.rand(3, 5) > 0.3
    mask[:, 0] = True
    explanation = torch._dynamo.explain(fn)(x, lengths, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    expected = fn(x, lengths, mask)
    (expected_grad,) = torch.autograd.grad(expected, x)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, lengths, mask)
    (grad,) = torch.autograd.grad(compiled, x)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# A whole training step: the model above, a dense head, a LayerNorm and our CrossEntropyLoss


FEATURES = 3 * HIDDEN  # the model's output features (attention context 2H and state H)
CLASSES = 10


class _TrainingStep(torch.nn.Module):
    """The loss of the model above through a fused dense head and a LayerNorm, as one module, so
    that one compiled graph holds the model, the head, the norm and the loss (forward and
    backward)."""

    def __init__(self):
        super().__init__()
        self.model, _ = build_models()
        self.head = gnn.Linear(FEATURES, CLASSES, activation="gelu")
        self.norm = gnn.LayerNorm(CLASSES)
        self.loss = gnn.CrossEntropyLoss(label_smoothing=0.1)
        with torch.no_grad():  # not the identity torch.nn initialises a LayerNorm to
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x, target):
        return self.loss(self.norm(self.head(self.model(x))), target)


def _targets(B, seed=2):
    target = torch.randint(0, CLASSES, (B,), generator=torch.Generator().manual_seed(seed))
    target[0] = -100  # an ignored row
    return target


def _loss_and_grads(step, x, target):
    step.zero_grad(set_to_none=True)
    loss = step(x, target)
    loss.backward()
    return loss.detach(), {name.removeprefix("_orig_mod."): p.grad.clone() for name, p in step.named_parameters()}


def test_training_step_with_norm_and_loss_has_no_graph_break():
    step = _TrainingStep()
    explanation = torch._dynamo.explain(step)(make_input(5, 3), _targets(3))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_training_step_with_norm_and_loss_compiles_fullgraph_and_matches_eager(backend):
    step = _TrainingStep()
    x, target = make_input(6, 4), _targets(4)
    expected, expected_grads = _loss_and_grads(step, x, target)
    loss, grads = _loss_and_grads(torch.compile(step, fullgraph=True, backend=backend), x, target)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys() and {"head.weight", "norm.weight", "norm.bias"} <= grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_training_step_new_batch_and_length_recompile_at_most_once():
    step = _TrainingStep()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    for T, B in ((5, 3), (7, 4), (9, 2), (4, 6)):
        x, target = make_input(T, B), _targets(B)
        torch.testing.assert_close(compiled(x, target), step(x, target), rtol=1e-5, atol=1e-6)
    assert counter.frame_count <= 2, f"compiled {counter.frame_count} times for 4 shapes"


def test_data_checks_run_inside_the_compiled_ops():
    """Checks that read the data (class indices in range, BCE probabilities in [0, 1]) are the
    ops' own: they pass tracing and raise eager's error when the compiled graph runs them,
    without a recompile."""
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    @torch.compile(fullgraph=True, backend=counter)
    def losses(x, target, probabilities):
        return GF.cross_entropy(x, target) + GF.binary_cross_entropy(probabilities, probabilities.detach())

    x, probabilities = torch.randn(4, 5, requires_grad=True), torch.rand(4, 5)
    losses(x, torch.tensor([0, 4, -100, 2]), probabilities).backward()
    with pytest.raises(ValueError, match="target holds class index 5, outside"):
        losses(x, torch.tensor([0, 5, 1, 2]), probabilities)
    with pytest.raises(ValueError, match="all elements of input should be between 0 and 1"):
        losses(x, torch.tensor([0, 4, 1, 2]), probabilities + 1)
    assert counter.frame_count == 1


def _every_new_op(x, h, w, b, target, y, pos_weight, norms):
    """Every loss, norm and dense-layer op of the newer families, with their options."""
    B, C = x.shape
    p = torch.sigmoid(y)
    elementwise = (GF.mse_loss(x, y) + GF.l1_loss(x, y, reduction="sum") + GF.huber_loss(x, y, delta=0.5)
                   + GF.smooth_l1_loss(x, y, beta=0.0) + GF.smooth_l1_loss(x, y, reduction="none", beta=2.0).mean()
                   + GF.binary_cross_entropy(p, torch.sigmoid(x).detach(), pos_weight)
                   + GF.binary_cross_entropy_with_logits(x, p, reduction="sum", pos_weight=pos_weight)
                   + GF.sigmoid_focal_loss(x, p, reduction="mean"))
    rows = (GF.cross_entropy(x, target, pos_weight, label_smoothing=0.2)
            + GF.cross_entropy(x, torch.softmax(y, 1).detach(), reduction="sum")
            + GF.nll_loss(GF.log_softmax(x, 1), target, reduction="none").sum()
            + GF.focal_loss(x, target, 1.5, pos_weight, reduction="sum")
            + GF.linear_cross_entropy(h, w, target, b, label_smoothing=0.1, chunk_size=2)
            + GF.linear_cross_entropy(h, w, target, reduction="none").sum())
    out, total = GF.add_layer_norm(x, y, C, norms.weight, norms.bias)
    out2, total2 = GF.add_rms_norm(out, total, (C,), norms.weight, eps=1e-6)
    normalised = GF.rms_norm(out2, C).sum() + total2.pow(2).sum() + GF.layer_norm(x, (C,)).pow(3).sum()
    dense = GF.linear(x, w.T, None, activation="tanh").sum() + GF.linear(h, w, b, activation="gelu").pow(2).sum()
    return elementwise + rows + normalised + dense


def test_every_loss_norm_and_dense_op_compiles_without_graph_break_and_matches_eager():
    torch.manual_seed(0)
    B, C, H = 4, 5, 3
    x, y = torch.randn(B, C, requires_grad=True), torch.randn(B, C, requires_grad=True)
    h, w, b = torch.randn(B, H, requires_grad=True), torch.randn(C, H, requires_grad=True), torch.randn(C)
    target, pos_weight = torch.tensor([0, 4, -100, 2]), torch.rand(C) + 0.5
    norms = gnn.LayerNorm(C)
    args = (x, h, w, b, target, y, pos_weight, norms)
    explanation = torch._dynamo.explain(_every_new_op)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    inputs = (x, y, h, w, norms.weight, norms.bias)
    expected = _every_new_op(*args)
    expected_grads = torch.autograd.grad(expected, inputs)
    compiled = torch.compile(_every_new_op, fullgraph=True, backend="aot_eager")(*args)
    grads = torch.autograd.grad(compiled, inputs)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
