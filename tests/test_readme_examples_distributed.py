"""The README's examples for training code (section "Using gpukernels in your training code"):
a compiled optimizer step, a whole training step captured in a CUDA graph (GPU), DDP and FSDP2,
run exactly as printed there. The distributed ones are scripts for ``torchrun
--nproc_per_node=2``; here they run in 2 processes with the environment torchrun gives them
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), bounded by a timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

COMPILED_STEP = '''
import torch
import gpukernels.torch.optim as gopt

model = torch.nn.Linear(16, 4)
opt = gopt.AdamW(model.parameters(), lr=torch.tensor(1e-3))  # a tensor lr: no recompile when it changes

@torch.compile(fullgraph=True)
def step():
    opt.step()

for _ in range(3):
    model(torch.randn(8, 16)).square().mean().backward()
    step()
    opt.zero_grad()
'''

CUDA_GRAPH = '''
import torch
import gpukernels.torch.optim as gopt

model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).cuda()
lr = torch.tensor(1e-3, device="cuda")
opt = gopt.Adam(model.parameters(), lr=lr, capturable=True)  # step counter and lr stay on the GPU
static_x, static_y = torch.randn(32, 64, device="cuda"), torch.randn(32, 8, device="cuda")

side = torch.cuda.Stream()  # warm up on a side stream: state, kernels and tables exist before capture
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(static_x), static_y).backward()
        opt.step()
torch.cuda.current_stream().wait_stream(side)

graph = torch.cuda.CUDAGraph()
opt.zero_grad(set_to_none=True)
with torch.cuda.graph(graph):  # forward, backward and the optimizer step in one graph
    static_loss = torch.nn.functional.mse_loss(model(static_x), static_y)
    static_loss.backward()
    opt.step()

for _ in range(10):
    static_x.copy_(torch.randn(32, 64, device="cuda"))
    static_y.copy_(torch.randn(32, 8, device="cuda"))
    graph.replay()
    lr.mul_(0.99)  # a schedule: the captured kernels read lr at each replay
'''

DDP = '''
# torchrun --nproc_per_node=2 train_ddp.py
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
import gpukernels.torch.nn as gnn
import gpukernels.torch.optim as gopt

dist.init_process_group("gloo")  # "nccl" with CUDA tensors
torch.manual_seed(0)

class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = gnn.LSTM(16, 32, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out)

model = DDP(Tagger(), gradient_as_bucket_view=True)
opt = gopt.AdamW(model.parameters(), lr=1e-3)
for step in range(5):
    x = torch.randn(8, 12, 16)
    target = torch.randint(0, 5, (8, 12))
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), target.flatten())
    opt.zero_grad()
    loss.backward()
    opt.step()
dist.destroy_process_group()
'''

FSDP2 = '''
# torchrun --nproc_per_node=2 train_fsdp2.py
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
import gpukernels.torch.optim as gopt
from gpukernels.torch.nn.utils import clip_grad_norm_

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (dist.get_world_size(),))  # "cuda" on GPUs
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
for layer in (model[0], model[2]):
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)  # parameters are now DTensors, sharded over the ranks

opt = gopt.Adam(model.parameters(), lr=1e-3)  # updates each rank's shards; state is DTensors too
for step in range(5):
    loss = model(torch.randn(16, 32)).square().mean()
    opt.zero_grad()
    loss.backward()
    norm = clip_grad_norm_(model.parameters(), max_norm=1.0)  # the global norm, over all ranks
    opt.step()
    if dist.get_rank() == 0:
        print(f"step {step}: loss {loss.item():.4f}, grad norm {norm.full_tensor().item():.4f}")
dist.destroy_process_group()
'''


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
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": "1", "GPUKERNELS_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"{name}: did not finish within {timeout} s")
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"{name} rank {rank} exited with {proc.returncode}:\n{out[-6000:]}"
    return outputs


def test_ddp_example(tmp_path):
    _torchrun(DDP, tmp_path, "train_ddp")


def test_fsdp2_example(tmp_path):
    outputs = _torchrun(FSDP2, tmp_path, "train_fsdp2")
    assert outputs[0].count("grad norm") == 5, outputs[0]
