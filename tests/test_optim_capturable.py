"""``capturable=True`` and torch's tensor ``lr`` on the CPU: the step reads nothing on the host
(``Tensor.item``, ``bool``, ``float``, ``int``, ``tolist`` and ``numpy`` raise while it runs: the
Triton kernels, in the interpreter here, read the step counters, the learning rate and
GradScaler's flag from memory), follows a learning rate changed between steps, and matches
torch.optim given the same tensor learning rate. A step GradScaler skips changes nothing and
does not count, also without a host read. (The CUDA-graph capture itself: test_gpu_cuda_graph.py.)"""

from __future__ import annotations

import contextlib

import pytest
import torch

import gpukernels as gk
import gpukernels.torch.optim as gko
from conftest import DEVICE

SHAPES = [(3, 5), (7,), (1,), (33, 2)]
HOST_READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy")


@contextlib.contextmanager
def no_host_reads():
    """Every way torch code reads a tensor's value into Python raises inside the block."""
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"the step read a tensor on the host: Tensor.{name}")
        return read

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def test_the_guard_catches_a_host_read():
    with no_host_reads(), pytest.raises(AssertionError, match="Tensor.item"):
        torch.ones(1).item()
    assert torch.ones(1).item() == 1.0  # restored


PAIRS = [
    pytest.param(gko.Adam, torch.optim.Adam, dict(weight_decay=0.1, betas=(0.8, 0.9)), id="adam-l2"),
    pytest.param(gko.AdamW, torch.optim.AdamW, dict(amsgrad=True, maximize=True), id="adamw-amsgrad-max"),
    pytest.param(gko.RMSprop, torch.optim.RMSprop, dict(momentum=0.5, centered=True, weight_decay=0.01),
                 id="rmsprop-centered-momentum"),
]


def _params(seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


@pytest.mark.parametrize("ours_cls,torch_cls,kwargs", PAIRS)
def test_capturable_step_reads_nothing_on_the_host_and_matches_torch(ours_cls, torch_cls, kwargs):
    start = _params(0)
    ours = [torch.nn.Parameter(p.clone().to(DEVICE)) for p in start]
    theirs = [torch.nn.Parameter(p.clone()) for p in start]
    our_lr, their_lr = torch.tensor(0.02, device=DEVICE), torch.tensor(0.02)
    our_opt = ours_cls(ours, lr=our_lr, capturable=True, **kwargs)
    # torch's capturable path wants CUDA; its single-tensor path takes the same tensor lr
    their_opt = torch_cls(theirs, lr=their_lr, foreach=False, **kwargs)
    for step in range(4):
        for mine, their, grad in zip(ours, theirs, _params(10 + step)):
            mine.grad, their.grad = grad.to(DEVICE), grad.clone()
        with gk.use_backend("triton"), no_host_reads():
            our_opt.step()
        their_opt.step()
        our_lr.mul_(0.5)  # a scheduler's change, seen by the next step without a host read
        their_lr.mul_(0.5)
    for mine, their in zip(ours, theirs):
        torch.testing.assert_close(mine.detach().cpu(), their.detach(), rtol=1e-5, atol=1e-6)
        for key, value in their_opt.state[their].items():
            torch.testing.assert_close(our_opt.state[mine][key].cpu().float(), value.float(), rtol=1e-5, atol=1e-6)


def test_sgd_takes_a_tensor_lr_without_a_host_read():
    start = _params(1)
    ours = [torch.nn.Parameter(p.clone().to(DEVICE)) for p in start]
    theirs = [torch.nn.Parameter(p.clone()) for p in start]
    our_lr, their_lr = torch.tensor(0.1, device=DEVICE), torch.tensor(0.1)
    our_opt = gko.SGD(ours, lr=our_lr, momentum=0.9, nesterov=True)
    their_opt = torch.optim.SGD(theirs, lr=their_lr, momentum=0.9, nesterov=True, foreach=False)
    for step in range(3):
        for mine, their, grad in zip(ours, theirs, _params(20 + step)):
            mine.grad, their.grad = grad.to(DEVICE), grad.clone()
        with gk.use_backend("triton"):
            if step == 0:
                our_opt.step()  # the first step makes the momentum buffers
            else:
                with no_host_reads():
                    our_opt.step()
        their_opt.step()
        our_lr.mul_(0.5)
        their_lr.mul_(0.5)
    for mine, their in zip(ours, theirs):
        torch.testing.assert_close(mine.detach().cpu(), their.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [gko.Adam, gko.RMSprop])
def test_a_skipped_step_changes_nothing_without_a_host_read(cls):
    params = [torch.nn.Parameter(p.to(DEVICE)) for p in _params(2)]
    opt = cls(params, lr=torch.tensor(0.01, device=DEVICE), capturable=True)
    for p, g in zip(params, _params(3)):
        p.grad = g.to(DEVICE)
    with gk.use_backend("triton"):
        opt.step()
    before = [p.detach().clone() for p in params]
    state_before = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    opt.grad_scale = torch.full((1,), 64.0, device=DEVICE)  # what GradScaler hands the optimizer
    opt.found_inf = torch.ones(1, device=DEVICE)
    with gk.use_backend("triton"), no_host_reads():
        opt.step()
    for p, old, old_state in zip(params, before, state_before):
        assert torch.equal(p.detach(), old)
        for key, value in old_state.items():
            assert torch.equal(opt.state[p][key], value), key
    assert all(float(opt.state[p]["step"]) == 1.0 for p in params)


def test_tensor_lr_on_the_reference_backend_matches_the_float():
    start = _params(4)
    a = [torch.nn.Parameter(p.clone()) for p in start]
    b = [torch.nn.Parameter(p.clone()) for p in start]
    opt_a, opt_b = gko.AdamW(a, lr=torch.tensor(0.03)), gko.AdamW(b, lr=0.03)
    for step in range(2):
        for p, q, g in zip(a, b, _params(30 + step)):
            p.grad, q.grad = g.clone(), g.clone()
        with gk.use_backend("numpy"):
            opt_a.step()
            opt_b.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


def test_tensor_lr_must_hold_one_element():
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        gko.Adam([torch.nn.Parameter(torch.ones(2))], lr=torch.tensor([0.1, 0.2]))
