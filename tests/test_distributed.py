"""Our modules and optimizers in distributed training on an existing engine: gloo, 2 processes on
127.0.0.1, the CPU path (the NumPy reference).

* DDP with gpukernels.torch.nn.LSTM (+ torch's Linear) and each of our optimizers matches the
  same model with torch.nn.LSTM and torch.optim on every rank after several steps, with and
  without ``gradient_as_bucket_view``;
* ``ZeroRedundancyOptimizer(optimizer_class=...)`` with each of our optimizers trains as with
  torch's, and its consolidated ``state_dict`` loads into the matching torch.optim optimizer;
* FSDP2 (``fully_shard`` on a CPU device mesh): our optimizers update the local shards of DTensor
  parameters and keep DTensor state, which ``torch.distributed.checkpoint`` saves and reloads;
  our ``clip_grad_norm_`` takes the global norm across ranks, equal to torch's; a group mixing
  DTensors and plain tensors is refused with a TypeError naming the parameter, changing nothing.

Each test starts this file as a script in 2 processes (``python test_distributed.py CASE RANK
WORLD DIR``), bounded by a timeout so a hang fails instead of blocking; each process checks its
rank's results itself, tears the process group down, checks that gloo's threads are gone with it
(see ``_worker``), prints ``RANK n OK`` and exits through the interpreter's normal teardown: the
test requires return code 0 and no "terminate called" on stderr (``_ranks.run_ranks``)."""

from __future__ import annotations

import gc
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from _ranks import run_ranks

WORLD = 2
TIMEOUT_S = 120  # per test, both processes: generous for 2 shared cores, short of a hung CI job
HERE = Path(__file__).resolve().parent


def _run(case: str, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPUKERNELS_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("GPUKERNELS_BACKEND", None)
    commands = [[sys.executable, str(Path(__file__).resolve()), case, str(rank), str(WORLD), str(tmp_path)]
                for rank in range(WORLD)]
    outputs = run_ranks(commands, [env] * WORLD, TIMEOUT_S, case)
    for rank, out in enumerate(outputs):
        assert f"RANK {rank} OK" in out, out[-6000:]


def test_ddp_matches_torch(tmp_path):
    _run("ddp", tmp_path)


def test_zero_redundancy_optimizer(tmp_path):
    _run("zero", tmp_path)


def test_fsdp2_dtensor_optimizers_checkpoint_and_global_clipping(tmp_path):
    _run("fsdp2", tmp_path)


# ---------------------------------------------------------------------------------------------
# The worker (run as a script: everything below runs in the spawned processes)

STEPS = 4


def _optimizer_pairs():
    """(name, ours, torch's, keyword arguments) for every optimizer."""
    import torch

    import gpukernels.torch.optim as gko

    return [
        ("adam", gko.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.01)),
        ("adamw", gko.AdamW, torch.optim.AdamW, dict(lr=0.01, amsgrad=True)),
        ("sgd", gko.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
        ("rmsprop", gko.RMSprop, torch.optim.RMSprop, dict(lr=0.005, momentum=0.5, centered=True)),
    ]


def _close(got, want, what: str) -> None:
    import torch

    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what}: {m}")


def _same_on_every_rank(tensor, what: str) -> None:
    import torch
    import torch.distributed as dist

    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    for other in gathered:
        assert torch.equal(other, gathered[0]), f"{what} differs between ranks"


def _batch(rank: int, step: int, *shape):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(1000 * rank + step))


class _Recurrent:
    """A small sequence model: an LSTM (ours or torch's) and torch's Linear on its last output."""

    @staticmethod
    def build(lstm_cls):
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = lstm_cls(5, 7, num_layers=2, batch_first=True)
                self.head = torch.nn.Linear(7, 3)

            def forward(self, x):
                out, _ = self.lstm(x)
                return self.head(out[:, -1])

        return Net()


def _twin_models():
    """Our model and torch's, with the same weights (a state_dict moves unchanged)."""
    import torch

    from gpukernels.torch.nn import LSTM

    torch.manual_seed(0)
    theirs = _Recurrent.build(torch.nn.LSTM)
    ours = _Recurrent.build(LSTM)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _train_step(model, opt, rank: int, step: int) -> None:
    import torch

    opt.zero_grad(set_to_none=True)
    x, y = _batch(rank, step, 4, 6, 5), _batch(rank, 100 + step, 4, 3)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def case_ddp(rank: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    for bucket_view in (False, True):
        for name, ours_cls, torch_cls, kwargs in _optimizer_pairs():
            ours, theirs = _twin_models()
            ours = DDP(ours, gradient_as_bucket_view=bucket_view)
            theirs = DDP(theirs, gradient_as_bucket_view=bucket_view)
            our_opt, their_opt = ours_cls(ours.parameters(), **kwargs), torch_cls(theirs.parameters(), **kwargs)
            for step in range(STEPS):
                _train_step(ours, our_opt, rank, step)
                _train_step(theirs, their_opt, rank, step)
            for (key, mine), their in zip(ours.module.state_dict().items(), theirs.module.state_dict().values()):
                what = f"ddp bucket_view={bucket_view} {name} {key}"
                _close(mine, their, what)
                _same_on_every_rank(mine, what)


def case_zero(rank: int) -> None:
    import torch
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    for name, ours_cls, torch_cls, kwargs in _optimizer_pairs():
        ours, theirs = _twin_models()
        ours, theirs = DDP(ours), DDP(theirs)
        our_opt = ZeroRedundancyOptimizer(ours.parameters(), optimizer_class=ours_cls, **kwargs)
        their_opt = ZeroRedundancyOptimizer(theirs.parameters(), optimizer_class=torch_cls, **kwargs)
        for step in range(STEPS):
            _train_step(ours, our_opt, rank, step)
            _train_step(theirs, their_opt, rank, step)
        for (key, mine), their in zip(ours.module.state_dict().items(), theirs.module.state_dict().values()):
            _close(mine, their, f"zero {name} {key}")
            _same_on_every_rank(mine, f"zero {name} {key}")
        our_opt.consolidate_state_dict(to=0)
        their_opt.consolidate_state_dict(to=0)
        if rank == 0:
            consolidated = our_opt.state_dict()
            plain = torch_cls(_twin_models()[1].parameters(), **kwargs)
            plain.load_state_dict(consolidated)  # ours, into torch.optim
            want = their_opt.state_dict()["state"]
            assert plain.state_dict()["state"].keys() == want.keys()
            for index, state in want.items():
                loaded = plain.state_dict()["state"][index]
                assert loaded.keys() == state.keys(), (name, loaded.keys(), state.keys())
                for key, value in state.items():
                    _close(torch.as_tensor(loaded[key]).float(), torch.as_tensor(value).float(),
                           f"zero {name} loaded state {index}.{key}")


def _fsdp_model(seed: int, mesh):
    import torch
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(11, 13), torch.nn.Tanh(), torch.nn.Linear(13, 5))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _full(tensor):
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def case_fsdp2(rank: int, directory: Path, mesh) -> None:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    from gpukernels.torch.nn.utils import clip_grad_norm_

    for name, ours_cls, torch_cls, kwargs in _optimizer_pairs():
        ours, theirs = _fsdp_model(0, mesh), _fsdp_model(0, mesh)
        our_opt, their_opt = ours_cls(ours.parameters(), **kwargs), torch_cls(theirs.parameters(), **kwargs)
        for step in range(STEPS):
            for model, opt in ((ours, our_opt), (theirs, their_opt)):
                opt.zero_grad(set_to_none=True)
                x, y = _batch(rank, step, 8, 11), _batch(rank, 50 + step, 8, 5)
                (10.0 * torch.nn.functional.mse_loss(model(x), y)).backward()  # large enough to be clipped
            norm_type = (2.0, 1.0, float("inf"), 3.0)[step]
            our_norm = clip_grad_norm_(ours.parameters(), 0.5, norm_type)
            their_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5, norm_type)
            _close(_full(our_norm), _full(their_norm), f"fsdp2 {name} global norm (p={norm_type})")
            for p, q in zip(ours.parameters(), theirs.parameters()):
                _close(p.grad.full_tensor(), q.grad.full_tensor(), f"fsdp2 {name} clipped gradient")
            our_opt.step()
            their_opt.step()
        for (key, p), q in zip(ours.named_parameters(), theirs.parameters()):
            assert isinstance(p, DTensor)
            _close(p.full_tensor(), q.full_tensor(), f"fsdp2 {name} {key}")
            for state_key, value in our_opt.state[p].items():
                if state_key != "step":
                    assert isinstance(value, DTensor), f"fsdp2 {name}: state {state_key!r} is not a DTensor"
                    _close(value.full_tensor(), their_opt.state[q][state_key].full_tensor(),
                           f"fsdp2 {name} {key} state {state_key}")

        # torch.distributed.checkpoint: save, train on (the state changes), load: the saved state
        checkpoint = directory / f"checkpoint-{name}"
        dcp.save({"optim": get_optimizer_state_dict(ours, our_opt)}, checkpoint_id=str(checkpoint))
        saved = {k: {s: _full(v).clone() for s, v in our_opt.state[p].items()} for k, p in ours.named_parameters()}
        _train_step_plain(ours, our_opt, rank)
        restored = {"optim": get_optimizer_state_dict(ours, our_opt)}
        dcp.load(restored, checkpoint_id=str(checkpoint))
        set_optimizer_state_dict(ours, our_opt, restored["optim"])
        for key, p in ours.named_parameters():
            for state_key, value in saved[key].items():
                now = our_opt.state[p][state_key]
                if state_key != "step":
                    assert isinstance(now, DTensor), f"fsdp2 {name}: reloaded {state_key!r} is not a DTensor"
                _close(_full(now).float(), value.float(), f"fsdp2 {name} reloaded {key} {state_key}")
        _train_step_plain(ours, our_opt, rank)  # and training goes on from the reloaded state

    # A group mixing a DTensor and a plain tensor: TypeError naming the parameter, nothing changed
    model = _fsdp_model(1, mesh)
    plain = torch.nn.Parameter(torch.ones(3))
    sharded = list(model.parameters())
    mixed = ours_cls(sharded[:1] + [plain], lr=0.1)
    for p in sharded[:1] + [plain]:
        p.grad = torch.ones_like(p)
    before = [_full(p).clone() for p in sharded[:1] + [plain]]
    try:
        mixed.step()
    except TypeError as error:
        assert "param_groups[0]['params'][1] is a plain tensor" in str(error), str(error)
    else:
        raise AssertionError("a group mixing DTensors and plain tensors was accepted")
    assert all(torch.equal(_full(p), b) for p, b in zip(sharded[:1] + [plain], before))
    assert not mixed.state


def _train_step_plain(model, opt, rank: int) -> None:
    import torch

    opt.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(_batch(rank, 99, 8, 11)), _batch(rank, 98, 8, 5)).backward()
    opt.step()


def _gloo_threads() -> list[str]:
    """The names of this process's threads that gloo started (its work loops and its TCP loop)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended while we looked
            continue
        if "gloo" in name:
            names.append(name)
    return sorted(names)


def _gloo_threads_after(seconds: float) -> list[str]:
    """gloo's threads still listed after up to ``seconds``: a joined thread can stay listed in
    /proc for a moment after its join returns (the kernel is still ending it; much longer when a
    debugger traces the process), a thread of a live group stays for good."""
    deadline = time.monotonic() + seconds
    while (left := _gloo_threads()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _worker(case: str, rank: int, world: int, directory: Path) -> None:
    import torch
    import torch.distributed as dist
    # Imported before the process group exists, on purpose: torch.distributed.nn.functional
    # (imported by torch.distributed.checkpoint, torch.distributed.fsdp, DDP's first use) and
    # torch.distributed.optim declare functions with ``group=group.WORLD`` defaults, evaluated at
    # import. Imported after init_process_group, those defaults hold the default group forever:
    # destroy_process_group then cannot free it, and gloo's threads run on into the interpreter's
    # teardown (see the end of this function).
    import torch.distributed.checkpoint  # noqa: F401
    import torch.distributed.nn  # noqa: F401
    import torch.distributed.optim  # noqa: F401
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    # A file store, not a TCP one: the TCP store's server thread lives in rank 0 and, under load,
    # could still be running when the interpreter exits; a file store has no thread.
    dist.init_process_group("gloo", init_method=f"file://{directory / 'store'}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    mesh = None
    try:
        if case == "ddp":
            case_ddp(rank)
        elif case == "zero":
            case_zero(rank)
        elif case == "fsdp2":
            mesh = init_device_mesh("cpu", (world,))
            case_fsdp2(rank, directory, mesh)
        else:
            raise ValueError(f"unknown case {case!r}")
        dist.barrier()
    finally:
        dist.destroy_process_group()
        if mesh is not None:
            # A DeviceMesh keeps its process groups in ``_pg_registry``, and DTensor's sharding
            # caches keep the mesh (through every DTensorSpec) for the life of the process, so
            # the group would outlive destroy_process_group. The mesh is unusable from here on.
            getattr(mesh, "_pg_registry", {}).clear()
            del mesh
        # A model under fully_shard is a reference cycle (the module, its FSDP state and hooks)
        # that keeps the group: only the cycle collector frees it. Left to the interpreter's
        # teardown, that collection would join gloo's threads in mid-finalization.
        gc.collect()
    # The clean exit this checks for: destroy_process_group freed the gloo group, so its
    # destructor joined gloo's threads while the interpreter was still whole. A gloo work thread
    # left running takes the GIL each time it releases a finished work's Python tensors (gdb:
    # AsyncAllgatherWork::~AsyncAllgatherWork -> TensorImpl::decref_pyobject ->
    # gil_scoped_acquire); if it waits for the GIL when the interpreter starts finalizing,
    # CPython ends it with pthread_exit, and that unwinding through a noexcept destructor is
    # std::terminate: "terminate called without an active exception", after every check passed.
    left = _gloo_threads_after(10.0)
    assert not left, (f"{case}: gloo threads still running after destroy_process_group: {left} "
                      "(something still holds the process group)")
    print(f"RANK {rank} OK", flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
