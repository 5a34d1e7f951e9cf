"""On a CUDA GPU (skipped elsewhere): a whole training step (forward, backward, our optimizer's
step) captured in a CUDA graph with the torch.cuda.graphs documentation's whole-network recipe
and replayed on new data, against the same model trained eagerly. With ``capturable=True`` the
step counter and the tensor learning rate live on the device, so the replays advance the
counters and follow a learning rate changed between replays."""

from __future__ import annotations

import pytest
import torch

import gpukernels.torch.optim as gko

pytestmark = pytest.mark.gpu

OPTIMIZERS = [
    pytest.param(gko.Adam, dict(weight_decay=0.01), id="adam"),
    pytest.param(gko.AdamW, dict(amsgrad=True), id="adamw-amsgrad"),
    pytest.param(gko.RMSprop, dict(momentum=0.5, centered=True), id="rmsprop"),
]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    # The subject is the optimizer step: the layers are torch's, sized oddly (primes) on purpose.
    return torch.nn.Sequential(torch.nn.Linear(37, 61), torch.nn.Tanh(), torch.nn.Linear(61, 5)).cuda()


def _batches(steps: int):
    generator = torch.Generator(device="cuda").manual_seed(7)
    return [(torch.randn(17, 37, device="cuda", generator=generator),
             torch.randn(17, 5, device="cuda", generator=generator)) for _ in range(steps)]


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_whole_training_step_in_a_cuda_graph(cls, kwargs):
    loss_fn = torch.nn.MSELoss()
    warmup, replays = 3, 6
    batches = _batches(warmup + replays)

    # Eager twin: the same model, optimizer and data, step by step.
    eager_model = _model(0)
    eager_lr = torch.tensor(0.01, device="cuda")
    eager_opt = cls(eager_model.parameters(), lr=eager_lr, capturable=True, **kwargs)
    for i, (x, y) in enumerate(batches):
        eager_opt.zero_grad(set_to_none=True)
        loss_fn(eager_model(x), y).backward()
        eager_opt.step()
        if i >= warmup:
            eager_lr.mul_(0.9)

    # The recipe: warm up on a side stream, capture forward + backward + step, replay.
    model = _model(0)
    lr = torch.tensor(0.01, device="cuda")
    opt = cls(model.parameters(), lr=lr, capturable=True, **kwargs)
    static_input, static_target = torch.zeros(17, 37, device="cuda"), torch.zeros(17, 5, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for x, y in batches[:warmup]:
            static_input.copy_(x)
            static_target.copy_(y)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(static_input), static_target).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = loss_fn(model(static_input), static_target)
        static_loss.backward()
        opt.step()

    for x, y in batches[warmup:]:
        static_input.copy_(x)
        static_target.copy_(y)
        graph.replay()
        lr.mul_(0.9)  # read by the captured kernels at the next replay
    torch.cuda.synchronize()

    for p in model.parameters():
        assert float(opt.state[p]["step"]) == warmup + replays
    for ours, want in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(ours.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        for key, value in eager_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=1e-5, atol=1e-6, msg=f"state {key!r}")


def test_capturable_step_makes_no_host_sync():
    """torch's sync-debug mode raises on any synchronising call inside the step."""
    model = _model(2)
    opt = gko.AdamW(model.parameters(), lr=torch.tensor(0.01, device="cuda"), capturable=True)
    x, y = _batches(1)[0]
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()  # state, tables and kernels made
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert float(opt.state[next(model.parameters())]["step"]) == 2.0


def test_capture_without_capturable_is_refused_as_torch_refuses_it():
    """Last in this file: the refused capture ends an (empty) capture by raising inside it."""
    model = _model(1)
    opt = gko.Adam(model.parameters(), lr=0.01)
    x, y = _batches(1)[0]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable is False"):
        with torch.cuda.graph(graph):
            opt.step()
