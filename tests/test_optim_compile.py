"""The optimizers under ``torch.compile(opt.step, fullgraph=True)``: no graph break, the same
parameters and state as the eager step after several steps (eager, aot_eager and inductor on
the CPU), a tensor learning rate changed between steps without a recompile, a backend forced
around a compiled step, and ``torch.library.opcheck`` on the operators the step compiles to."""

from __future__ import annotations

import pytest
import torch

import gpukernels as gk
import gpukernels.torch.optim as gko
from gpukernels.torch import _optim_ops

SHAPES = [(3, 5), (7,), (1,), (13, 2)]

OPTIMIZERS = [
    pytest.param(gko.Adam, dict(lr=0.01, weight_decay=0.1), id="adam-l2"),
    pytest.param(gko.AdamW, dict(lr=0.01, amsgrad=True, betas=(0.8, 0.9)), id="adamw-amsgrad"),
    pytest.param(gko.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01), id="sgd-momentum"),
    pytest.param(gko.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True), id="sgd-nesterov-max"),
    pytest.param(gko.RMSprop, dict(lr=0.01, momentum=0.5, centered=True), id="rmsprop-centered-momentum"),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every optimizer instance compiles its own step (dynamo guards on it), and the step's code
    object is shared: forget earlier tests' compilations so none counts against the recompile
    limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def _grads(step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def _set_grads(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


def _assert_same(eager_opt, eager_params, compiled_opt, compiled_params) -> None:
    for a, b in zip(eager_params, compiled_params):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=0)
        sa, sb = eager_opt.state[a], compiled_opt.state[b]
        assert sa.keys() == sb.keys()
        for key in sa:
            torch.testing.assert_close(sb[key], sa[key], rtol=0, atol=0, msg=f"state {key!r}")


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_compiled_step_matches_eager(cls, kwargs, backend):
    eager_params, compiled_params = _params(), _params()
    eager_opt, compiled_opt = cls(eager_params, **kwargs), cls(compiled_params, **kwargs)
    step = torch.compile(compiled_opt.step, fullgraph=True, backend=backend)
    for i in range(3):
        _set_grads(eager_params, _grads(i))
        _set_grads(compiled_params, _grads(i))
        eager_opt.step()
        step()
    _assert_same(eager_opt, eager_params, compiled_opt, compiled_params)


@pytest.mark.parametrize("cls,kwargs", [OPTIMIZERS[0], OPTIMIZERS[1], OPTIMIZERS[2], OPTIMIZERS[4]])
def test_inductor_compiled_step_matches_eager(cls, kwargs):
    """Inductor re-inplaces the operators' functionalized mutations: still the same values (the
    step counters of every parameter included: torch 2.11's Inductor lost the operators' writes
    to all but the first, now advanced in the graph instead)."""
    eager_params, compiled_params = _params(), _params()
    eager_opt, compiled_opt = cls(eager_params, **kwargs), cls(compiled_params, **kwargs)
    step = torch.compile(compiled_opt.step, fullgraph=True, backend="inductor")
    for i in range(3):
        _set_grads(eager_params, _grads(i))
        _set_grads(compiled_params, _grads(i))
        eager_opt.step()
        step()
    _assert_same(eager_opt, eager_params, compiled_opt, compiled_params)


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_no_graph_breaks(cls, kwargs):
    params = _params()
    opt = cls(params, **kwargs)
    _set_grads(params, _grads(0))
    opt.step()  # state exists: the step traced is the steady one
    _set_grads(params, _grads(1))
    explanation = torch._dynamo.explain(opt.step)()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_tensor_lr_changes_without_recompiling():
    """As torch.optim recommends under compile: a tensor lr is a graph input, not a constant."""
    eager_params, compiled_params = _params(), _params()
    eager_lr, compiled_lr = torch.tensor(0.02), torch.tensor(0.02)
    eager_opt = gko.Adam(eager_params, lr=eager_lr, capturable=True)
    compiled_opt = gko.Adam(compiled_params, lr=compiled_lr, capturable=True)
    counter = torch._dynamo.testing.CompileCounter()
    step = torch.compile(compiled_opt.step, fullgraph=True, backend=counter)
    for i in range(4):
        _set_grads(eager_params, _grads(i))
        _set_grads(compiled_params, _grads(i))
        eager_opt.step()
        step()
        eager_lr.mul_(0.5)
        compiled_lr.mul_(0.5)
    _assert_same(eager_opt, eager_params, compiled_opt, compiled_params)
    assert counter.frame_count <= 2  # the first step (state made) and the steady step


def test_forced_backend_inside_a_compiled_step(monkeypatch):
    """The backend is chosen when the compiled step runs, not when it is traced."""
    from gpukernels import _dispatch

    # Counted where the dispatch layer hands out implementations (a module attribute patched
    # here could already be cached there by an earlier test).
    calls = []
    real = _dispatch.implementation

    def recording(family, op, backend):
        if (family, op, backend) == ("optim", "adam_step", "triton"):
            calls.append(1)
        return real(family, op, backend)

    monkeypatch.setattr(_dispatch, "implementation", recording)
    eager_params, compiled_params = _params(), _params()
    eager_opt, compiled_opt = gko.Adam(eager_params, lr=0.01), gko.Adam(compiled_params, lr=0.01)
    step = torch.compile(compiled_opt.step, fullgraph=True, backend="aot_eager")
    for i in range(2):
        _set_grads(eager_params, _grads(i))
        _set_grads(compiled_params, _grads(i))
        with gk.use_backend("triton"):
            eager_opt.step()
            n = len(calls)
            step()
            assert len(calls) == n + 1  # the compiled step ran the Triton kernels too
    for a, b in zip(eager_params, compiled_params):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=0)


def _opcheck_cases():
    generator = torch.Generator().manual_seed(1)

    def t(*shape):
        return torch.randn(shape, generator=generator)

    def steps():
        return [torch.tensor(2.0), torch.tensor(2.0)]

    adam = dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, amsgrad=True, maximize=False,
                decoupled_weight_decay=True)
    yield pytest.param(_optim_ops.adam_step_, (
        [t(3), t(2, 2)], [t(3), t(2, 2)], [t(3), t(2, 2)], [t(3).abs(), t(2, 2).abs()], [t(3).abs(), t(2, 2).abs()],
        [], steps(), None, None, torch.tensor([0.02])), adam, id="adam")
    yield pytest.param(_optim_ops.adam_step_, (
        [t(5)], [t(5)], [t(5)], [t(5).abs()], [], [], [torch.tensor(1.0)], torch.tensor([2.0]), torch.tensor([0.0]),
        None), {**adam, "amsgrad": False}, id="adam-amp")
    yield pytest.param(_optim_ops.sgd_step_, (
        [t(3), t(4)], [t(3), t(4)], [t(3), torch.zeros(4)], [False, True], [], None, None, None),
        dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True, maximize=False), id="sgd")
    yield pytest.param(_optim_ops.rmsprop_step_, (
        [t(3)], [t(3)], [t(3).abs()], [t(3)], [t(3)], [], [torch.tensor(4.0)], None, None, torch.tensor([0.01])),
        dict(lr=0.0, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.5, centered=True, maximize=True),
        id="rmsprop")


@pytest.mark.parametrize("op,args,kwargs", list(_opcheck_cases()))
def test_opcheck(op, args, kwargs):
    torch.library.opcheck(op, args, kwargs)


@pytest.mark.parametrize("op", ["adam_step_", "rmsprop_step_"])
def test_the_operators_only_read_the_step_counters(op):
    """The counters are advanced in the traced graph, outside the operators (see _optim_ops)."""
    schema = getattr(_optim_ops, op)._opoverload._schema
    arguments = {a.name: a for a in schema.arguments}
    assert arguments["steps"].alias_info is None or not arguments["steps"].alias_info.is_write
    assert arguments["params"].alias_info is not None and arguments["params"].alias_info.is_write
