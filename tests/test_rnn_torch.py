"""gpukernels.torch.nn.RNN/LSTM/GRU and the cells against torch.nn with copied weights:
outputs, final states and the gradients of the input, the initial states and every parameter;
1-3 layers, uni/bidirectional, batch_first, PackedSequence with unsorted lengths; the CPU path
(NumPy reference) in fp32 and the Triton kernels in fp32/fp16/bf16 (compiled on a GPU, in the
interpreter on CPU tensors without one), against torch.nn on the CPU.
Also: constructor arguments, parameter names and init, state_dict round trips, the extra
options, bad input, and a short training run against torch.nn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gpukernels as gk
from _helpers import assert_close
from conftest import DEVICE
from gpukernels.reference.rnn import WORKSPACE_BLOCKS
from gpukernels.torch import nn as gnn

MODULES = ("RNN", "LSTM", "GRU")


def _pair(name, *args, **kwargs):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(*args, **kwargs)
    ours = getattr(gnn, name)(*args, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _states(name, layers, batch, H, dtype=torch.float32):
    h0 = torch.randn(layers, batch, H, dtype=dtype)
    return (h0, torch.randn(layers, batch, H, dtype=dtype)) if name == "LSTM" else h0


def _run(module, x, hx, backend, packed_lengths=None, batch_first=False):
    """Outputs, final states and every gradient (input, initial states, parameters)."""
    module.zero_grad()
    x = x.detach().clone().requires_grad_()
    leaves = [s.detach().clone().requires_grad_() for s in (hx if isinstance(hx, tuple) else (hx,))]
    state = tuple(leaves) if isinstance(hx, tuple) else leaves[0]
    inp = x if packed_lengths is None else pack_padded_sequence(x, packed_lengths, batch_first=batch_first,
                                                                enforce_sorted=False)
    with gk.use_backend(backend):
        out, final = module(inp, state)
        data = out.data if isinstance(out, PackedSequence) else out
        finals = final if isinstance(final, tuple) else (final,)
        weights = torch.linspace(-1, 1, data.numel(), dtype=data.dtype, device=data.device).reshape(data.shape)
        loss = (data.float() * weights.float()).sum() + sum((f.float() * 0.5).sum() for f in finals)
        loss.backward()
    grads = {"input": x.grad, **{f"state{i}": leaf.grad for i, leaf in enumerate(leaves)}}
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return out, finals, grads


def _compare(a, b, dtype="float32"):
    (out_a, finals_a, grads_a), (out_b, finals_b, grads_b) = a, b
    if isinstance(out_a, PackedSequence):
        assert torch.equal(out_a.batch_sizes, out_b.batch_sizes)
        assert torch.equal(out_a.sorted_indices.cpu(), out_b.sorted_indices.cpu())
        assert torch.equal(out_a.unsorted_indices.cpu(), out_b.unsorted_indices.cpu())
        out_a, out_b = out_a.data, out_b.data
    assert out_a.shape == out_b.shape
    assert_close(out_b, out_a.detach().double().numpy(), dtype, "reduction")
    for fa, fb in zip(finals_a, finals_b):
        assert_close(fb, fa.detach().double().numpy(), dtype, "reduction")
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        try:
            assert_close(grads_b[name], grads_a[name].double().numpy(), dtype, "reduction")
        except AssertionError as error:
            raise AssertionError(f"gradient of {name}: {error}") from None


CPU_CASES = [(name, layers, bidirectional, batch_first, packed)
             for name in MODULES for layers, bidirectional, batch_first, packed in
             ((1, False, False, False), (2, True, True, False), (3, False, False, True), (2, True, True, True))]


@pytest.mark.parametrize("name,layers,bidirectional,batch_first,packed", [
    pytest.param(*c, id=f"{c[0]}-L{c[1]}-{'bi' if c[2] else 'uni'}{'-batch_first' if c[3] else ''}"
                 f"{'-packed' if c[4] else ''}") for c in CPU_CASES])
def test_modules_match_torch_nn_on_the_cpu_path(name, layers, bidirectional, batch_first, packed):
    T, B, I, H = 6, 4, 5, 7
    theirs, ours = _pair(name, I, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    hx = _states(name, layers * (2 if bidirectional else 1), B, H)
    lengths = torch.tensor([4, 6, 1, 5]) if packed else None  # unsorted
    _compare(_run(theirs, x, hx, "numpy", lengths, batch_first), _run(ours, x, hx, "numpy", lengths, batch_first))


TRITON_CASES = [("LSTM", "float32", True), ("GRU", "float32", True), ("RNN", "float32", True),
                ("LSTM", "float16", False), ("GRU", "bfloat16", False)]


@pytest.mark.parametrize("name,dtype,packed", [
    pytest.param(*c, id=f"{c[0]}-L2-bi-T4-B3-H5-{c[1]}{'-packed' if c[2] else ''}") for c in TRITON_CASES])
def test_modules_match_torch_nn_through_triton(name, dtype, packed):
    T, B, I, H = 4, 3, 5, 5
    theirs, ours = _pair(name, I, H, num_layers=2, bidirectional=True)
    x, hx = torch.randn(T, B, I), _states(name, 4, B, H)
    lengths = torch.tensor([2, 4, 3]) if packed else None
    expected = _run(theirs.double(), x.double(), tuple(s.double() for s in hx) if isinstance(hx, tuple)
                    else hx.double(), "numpy", lengths)
    torch_dtype = getattr(torch, dtype)
    ours = ours.to(DEVICE, torch_dtype)
    rounded = lambda t: t.to(torch_dtype)  # noqa: E731
    on_device = lambda t: rounded(t).to(DEVICE)  # noqa: E731
    got = _run(ours, on_device(x), tuple(map(on_device, hx)) if isinstance(hx, tuple) else on_device(hx), "triton",
               lengths)
    assert got[0].data.dtype == torch_dtype and all(f.dtype == torch_dtype for f in got[1])
    assert got[0].data.device.type == DEVICE
    if dtype != "float32":  # torch's float64 run from the same rounded values
        theirs.load_state_dict({k: v.to(torch_dtype).double() for k, v in ours.state_dict().items()})
        expected = _run(theirs, rounded(x).double(), tuple(rounded(s).double() for s in hx)
                        if isinstance(hx, tuple) else rounded(hx).double(), "numpy", lengths)
    _compare(expected, got, dtype)


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_cells_match_torch_nn(name, backend):
    B, I, H = 3, 4, 6
    device = DEVICE if backend == "triton" else "cpu"  # torch.nn runs on the CPU either way
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(I, H)
    ours = getattr(gnn, name)(I, H).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(B, I)
    hx = (torch.randn(B, H), torch.randn(B, H)) if name == "LSTMCell" else torch.randn(B, H)
    results = []
    for module, where in ((theirs, "cpu"), (ours, device)):
        module.zero_grad()
        xl = x.clone().to(where).requires_grad_()
        states = [s.clone().to(where).requires_grad_() for s in (hx if isinstance(hx, tuple) else (hx,))]
        with gk.use_backend(backend):
            out = module(xl, tuple(states) if isinstance(hx, tuple) else states[0])
            outs = out if isinstance(out, tuple) else (out,)
            sum((o * (k + 1)).sum() for k, o in enumerate(outs)).backward()
        results.append((outs, [xl.grad] + [s.grad for s in states] + [p.grad for p in module.parameters()]))
    for got, want in zip(results[1][0] + tuple(results[1][1]), results[0][0] + tuple(results[0][1])):
        assert_close(got, want.detach().double().numpy(), "float32", "reduction")
    # unbatched input and no state
    with gk.use_backend(backend):
        single = ours(x[0].to(device))
        expected = theirs(x[0])
    for got, want in zip(single if isinstance(single, tuple) else (single,),
                         expected if isinstance(expected, tuple) else (expected,)):
        assert got.shape == want.shape == (H,)
        assert_close(got, want.detach().double().numpy(), "float32", "reduction")


@pytest.mark.parametrize("name", MODULES)
def test_unbatched_input_and_default_state(name):
    theirs, ours = _pair(name, 3, 4, num_layers=2)
    x = torch.randn(5, 3)
    out_t, final_t = theirs(x)
    out_o, final_o = ours(x)
    assert out_o.shape == out_t.shape == (5, 4)
    assert_close(out_o, out_t.detach().double().numpy(), "float32", "reduction")
    for a, b in zip(final_o if name == "LSTM" else (final_o,), final_t if name == "LSTM" else (final_t,)):
        assert a.shape == b.shape == (2, 4)


@pytest.mark.parametrize("name", MODULES)
def test_parameters_names_shapes_init_and_state_dict_round_trip(name):
    kwargs = {"num_layers": 2, "bidirectional": True, "bias": True}
    torch.manual_seed(3)
    theirs = getattr(torch.nn, name)(5, 8, **kwargs)
    torch.manual_seed(3)
    ours = getattr(gnn, name)(5, 8, **kwargs)
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == \
           [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]
    bound = 1 / np.sqrt(8)
    assert all(p.abs().max() <= bound for p in ours.parameters())
    for n, p in ours.named_parameters():  # same init stream, same order: the same numbers
        assert torch.equal(p, dict(theirs.named_parameters())[n])
    state = ours.state_dict()
    fresh = getattr(torch.nn, name)(5, 8, **kwargs)
    fresh.load_state_dict(state)
    back = getattr(gnn, name)(5, 8, **kwargs)
    back.load_state_dict(fresh.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), state.values()))
    no_bias = getattr(gnn, name)(5, 8, bias=False)
    assert [n for n, _ in no_bias.named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]


def test_extra_options_add_parameters_and_match_the_reference(rng):
    lstm = gnn.LSTM(3, 4, peephole=True, coupled=True, bidirectional=True)
    names = [n for n, _ in lstm.named_parameters()]
    assert "weight_peep_l0" in names and "weight_peep_l0_reverse" in names
    assert lstm.weight_peep_l0.shape == (3, 4)
    x = torch.randn(5, 2, 3)
    out, (h, c) = lstm(x)
    w = [getattr(lstm, f"{n}_l0").detach() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    y, h_n, c_n = gk.lstm_layer(x, torch.zeros(2, 4), torch.zeros(2, 4), *w, w_peep=lstm.weight_peep_l0.detach(),
                                coupled=True)
    assert torch.allclose(out[:, :, :4], y) and torch.allclose(h[0], h_n) and torch.allclose(c[0], c_n)
    out.sum().backward()
    assert lstm.weight_peep_l0.grad is not None and lstm.weight_peep_l0.grad.abs().sum() > 0
    assert lstm.weight_ih_l0.grad[4:8].abs().sum() == 0  # coupled: the f rows are unused
    gru = gnn.GRU(3, 4, linear_before_reset=False)
    cell = gnn.GRUCell(3, 4, linear_before_reset=False)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in gru.state_dict().items()})
    out, h = gru(x[:1])
    assert torch.allclose(cell(x[0]), h[0], atol=1e-6)
    torch_form = gnn.GRU(3, 4)
    torch_form.load_state_dict(gru.state_dict())
    assert not torch.allclose(torch_form(x[:1])[0], out, atol=1e-4)  # the same weights, another formula


def test_dropout_between_layers_is_applied_in_training_only():
    theirs, ours = _pair("LSTM", 3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3)
    ours.eval()
    theirs.eval()
    assert_close(ours(x)[0], theirs(x)[0].detach().double().numpy(), "float32", "reduction")
    ours.train()
    torch.manual_seed(1)
    a = ours(x)[0]
    torch.manual_seed(2)
    b = ours(x)[0]
    assert not torch.allclose(a, b)


def test_bad_module_arguments_and_inputs():
    with pytest.raises(ValueError, match="proj_size"):
        gnn.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="dropout"):
        gnn.GRU(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="nonlinearity"):
        gnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="hidden_size"):
        gnn.LSTM(3, 0)
    with pytest.raises(TypeError, match="peephole"):
        gnn.GRU(3, 4, peephole=True)
    lstm = gnn.LSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="input_size=3"):
        lstm(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\)"):
        lstm(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    with pytest.raises(TypeError, match="dtype float64"):
        lstm(torch.randn(5, 2, 3, dtype=torch.float64))


def _train(module_cls, steps=200, seed=0):
    """A small sequence model on a synthetic task: predict the running mean of the inputs."""
    torch.manual_seed(seed)
    rnn = module_cls(3, 16, batch_first=True)
    head = torch.nn.Linear(16, 1)
    return rnn, head


def _fit(rnn, head, data, steps):
    x, target = data
    params = list(rnn.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        out, _ = rnn(x)
        loss = torch.nn.functional.mse_loss(head(out).squeeze(-1), target)
        loss.backward()
        optimizer.step()
    return loss.item()


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
def test_training_reaches_the_same_loss_as_torch_nn(name):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(16, 12, 3, generator=generator)
    target = x.sum(-1).cumsum(1) / torch.arange(1, 13)
    rnn_t, head_t = _train(getattr(torch.nn, name))
    rnn_o, head_o = _train(getattr(gnn, name))
    rnn_o.load_state_dict(rnn_t.state_dict())
    head_o.load_state_dict(head_t.state_dict())
    start = torch.nn.functional.mse_loss(head_t(rnn_t(x)[0]).squeeze(-1), target).item()
    loss_t = _fit(rnn_t, head_t, (x, target), 200)
    loss_o = _fit(rnn_o, head_o, (x, target), 200)
    assert loss_t < 0.1 * start  # the task is learnable at all
    assert abs(loss_o - loss_t) <= 0.05 * loss_t + 1e-4, (loss_o, loss_t)


_CELL = {"RNN": "rnn_tanh", "LSTM": "lstm", "GRU": "gru"}


@pytest.mark.parametrize("used", ["final-state-only", "output-only"])
@pytest.mark.parametrize("name", MODULES)
def test_gradients_when_only_some_outputs_are_used(name, used):
    """Unused outputs get no gradient (not zeros): the final state alone (grad_y None, made
    zero in the backward) or the output alone (grad_h_n / grad_c_n None) still give torch.nn's
    gradients, and autograd fills no zero gradient for the workspace (T x B x 6H for an LSTM)."""
    T, B, I, H = 5, 3, 4, 6
    theirs, ours = _pair(name, I, H, num_layers=2)
    x = torch.randn(T, B, I)
    grads = []
    for module in (theirs, ours):
        module.zero_grad()
        xi = x.clone().requires_grad_()
        out, final = module(xi)
        finals = final if isinstance(final, tuple) else (final,)
        loss = sum((f * (k + 1)).sum() for k, f in enumerate(finals)) if used == "final-state-only" else (out ** 2).sum()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            loss.backward()
        if module is ours and WORKSPACE_BLOCKS[_CELL[name]] > 1:  # (an RNN's is shaped like y, whose zeros are due)
            workspace = [T, B, WORKSPACE_BLOCKS[_CELL[name]] * H]
            filled = [e.input_shapes for e in prof.events() if e.name in ("aten::fill_", "aten::zero_", "aten::zeros")]
            assert not [shapes for shapes in filled if workspace in shapes or [workspace] == shapes[:1]]
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    for a, b in zip(*grads):
        assert_close(b, a.double().numpy(), "float32", "reduction")
