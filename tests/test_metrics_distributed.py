"""The metric classes across two processes (torch.distributed, gloo on 127.0.0.1): each process
updates with its own, unevenly sized share of the data, and compute() on every process gives the
metric of all the data (counts all-reduced, regression sums gathered and merged, exact-AUROC
samples all-gathered with padding). The processes are this file run as a script; a timeout turns
a hang into a failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

WORLD = 2
SIZES = (50, 77)  # uneven on purpose: all_gather must pad and trim


def share(rank: int):
    """Rank ``rank``'s data, the same in the worker and in the test."""
    rng = np.random.default_rng(1000 + rank)
    n = SIZES[rank]
    binary = np.r_[3.0, rng.standard_normal(n - 1)], rng.integers(0, 2, n)
    multiclass = rng.standard_normal((n, 4)).astype(np.float32), rng.integers(0, 4, n)
    regression = rng.standard_normal((n, 2)), rng.standard_normal((n, 2)) + 50
    return binary, multiclass, regression


def metrics(M):
    """(name, metric, which data) for every metric the test checks."""
    return [
        ("accuracy", M.Accuracy(task="multiclass", num_classes=4, average="macro"), 1),
        ("f1", M.F1Score(task="binary"), 0),
        ("auroc", M.AUROC(task="binary"), 0),
        ("auroc_multiclass", M.AUROC(task="multiclass", num_classes=4, average="weighted"), 1),
        ("auroc_binned", M.AUROC(task="binary", thresholds=33), 0),
        ("mse", M.MeanSquaredError(), 2),
        ("r2", M.R2Score(num_outputs=2, multioutput="raw_values"), 2),
    ]


def functional(M, name, preds, target):
    return {
        "accuracy": lambda: M.multiclass_accuracy(preds, target, 4, average="macro"),
        "f1": lambda: M.binary_f1_score(preds, target),
        "auroc": lambda: M.binary_auroc(preds, target),
        "auroc_multiclass": lambda: M.multiclass_auroc(preds, target, 4, average="weighted"),
        "auroc_binned": lambda: M.binary_auroc(preds, target, thresholds=33),
        "mse": lambda: M.mean_squared_error(preds, target),
        "r2": lambda: M.r2_score(preds, target, multioutput="raw_values"),
    }[name]()


def worker(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    import gpukernels.metrics as M

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=30))
    try:
        data = share(rank)
        results = {}
        for name, metric, which in metrics(M):
            preds, target = (torch.from_numpy(a) for a in data[which])
            metric.update(preds[: len(preds) // 2], target[: len(target) // 2])
            metric.update(preds[len(preds) // 2:], target[len(target) // 2:])
            results[name] = np.atleast_1d(metric.compute().double().numpy()).tolist()
            results[name + "_local"] = np.atleast_1d(metric.compute().double().numpy()).tolist()  # state kept
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_compute_the_metric_of_all_the_data(tmp_path):
    pytest.importorskip("torch.distributed")
    import torch
    import torch.distributed as dist

    import gpukernels.metrics as M

    if not dist.is_available():
        pytest.skip("torch was built without torch.distributed")
    port = _free_port()
    env = {**os.environ, "GPUKERNELS_BACKEND": "numpy", "CUDA_VISIBLE_DEVICES": ""}
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(WORLD)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=90)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    shares = [share(rank) for rank in range(WORLD)]
    for name, _, which in metrics(M):
        preds = torch.from_numpy(np.concatenate([s[which][0] for s in shares]))
        target = torch.from_numpy(np.concatenate([s[which][1] for s in shares]))
        if name == "auroc_binned":  # counts decide logits per update (torchmetrics too): every update had one
            preds = torch.sigmoid(preds)
        want = np.atleast_1d(functional(M, name, preds, target).double().numpy())
        for rank in range(WORLD):
            np.testing.assert_allclose(results[rank][name], want, rtol=1e-6, err_msg=f"{name} on rank {rank}")
            np.testing.assert_allclose(results[rank][name + "_local"], want, rtol=1e-6)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
