"""The README's examples for training code (section "Using gpukernels in your training code"):
a compiled optimizer step, a whole training step captured in a CUDA graph (GPU), DDP and FSDP2,
run exactly as printed there. The distributed ones are scripts for ``torchrun
--nproc_per_node=2``; here they run in 2 processes with the environment torchrun gives them
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), bounded by a timeout."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from _ranks import run_ranks
from _readme import example

COMPILED_STEP = example("compiled-step")
CUDA_GRAPH = example("cuda-graph")
DDP = example("ddp")
FSDP2 = example("fsdp2")


def test_compiled_optimizer_step_example():
    exec(compile(COMPILED_STEP, "README:compiled-step", "exec"), {})


@pytest.mark.gpu
def test_cuda_graph_example():
    namespace: dict = {}
    exec(compile(CUDA_GRAPH, "README:cuda-graph", "exec"), namespace)
    import torch

    torch.cuda.synchronize()
    opt, model = namespace["opt"], namespace["model"]
    assert float(opt.state[next(model.parameters())]["step"]) == 13.0  # 3 warm-up steps + 10 replays
    assert torch.isfinite(namespace["static_loss"]).all()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script: str, tmp_path, name: str, world: int = 2, timeout: int = 120) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    port = str(_free_port())
    envs = [{**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
             "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
             "OMP_NUM_THREADS": "1", "GPUKERNELS_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
            for rank in range(world)]
    return run_ranks([[sys.executable, str(path)]] * world, envs, timeout, name)


def test_ddp_example(tmp_path):
    _torchrun(DDP, tmp_path, "train_ddp")


def test_fsdp2_example(tmp_path):
    outputs = _torchrun(FSDP2, tmp_path, "train_fsdp2")
    assert outputs[0].count("grad norm") == 5, outputs[0]
