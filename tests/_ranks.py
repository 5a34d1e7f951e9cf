"""Run one process per rank (the distributed tests' gloo jobs), bounded in time: a hang fails
the test instead of blocking CI, and a rank that exits non-zero fails it with its output."""

from __future__ import annotations

import subprocess

import pytest


def run_ranks(commands: list[list[str]], envs: list[dict], timeout: float, name: str) -> list[str]:
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for command, env in zip(commands, envs, strict=True)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"{name}: the processes did not finish within {timeout} s (a hang?)")
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"{name} rank {rank} exited with {proc.returncode}:\n{out[-6000:]}"
    return outputs
