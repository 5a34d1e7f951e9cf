"""gpukernels' own collectives (``gpukernels._collectives``: the global gradient norm of
``clip_grad_norm_`` under FSDP2, metrics across processes) return only once gloo's worker thread
has let go of their tensors, so the interpreter may shut down right after them.

A worker still holding a tensor that Python knows must take the GIL to drop it; if that happens
while the interpreter finalizes, the process aborts ("terminate called without an active
exception", pytorch/pytorch#190489; the README's FSDP2 example did so in CI). The property is
checked directly: right after each call every tensor's C++ use count is what it was before.
With plain ``torch.distributed.all_reduce`` it is still raised after about 1 call in 20 on this
machine (the worker has not run yet), so 300 calls would catch a regression.

2 gloo processes on 127.0.0.1, started as scripts (``python test_collectives.py RANK WORLD``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from _ranks import run_ranks

WORLD = 2
CALLS = 300


def test_collectives_return_after_the_backend_let_go_of_their_tensors():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    commands = [[sys.executable, str(Path(__file__).resolve()), str(rank), str(WORLD)] for rank in range(WORLD)]
    outputs = run_ranks(commands, [env] * WORLD, 120, "collectives")
    for rank, out in enumerate(outputs):
        assert f"RANK {rank} OK" in out, out[-6000:]


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int) -> None:
    import torch
    import torch.distributed as dist

    from gpukernels._collectives import all_gather, all_reduce

    dist.init_process_group("gloo", rank=rank, world_size=world)
    for call in range(CALLS):
        value = torch.full((3,), float(rank + call))
        before = value._use_count()
        all_reduce(value, dist.ReduceOp.SUM)
        assert value._use_count() == before, f"all_reduce call {call}: the backend still holds the tensor"
        want = float(sum(r + call for r in range(world)))
        assert torch.equal(value, torch.full((3,), want)), (call, value)

        # rank r contributes r + 1 values, padded to a common length (as the metrics' gathers do)
        padded = [torch.full((world,), -1, dtype=torch.int64) for _ in range(world)]
        piece = torch.full((world,), -1, dtype=torch.int64)
        piece[: rank + 1] = torch.arange(rank + 1, dtype=torch.int64) + call
        counts = [t._use_count() for t in (*padded, piece)]
        all_gather(padded, piece)
        assert [t._use_count() for t in (*padded, piece)] == counts, f"all_gather call {call}: tensors still held"
        for r, got in enumerate(padded):
            assert torch.equal(got[: r + 1], torch.arange(r + 1, dtype=torch.int64) + call), (call, r, got)
    dist.destroy_process_group()
    print(f"RANK {rank} OK", flush=True)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]))
