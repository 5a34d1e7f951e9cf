"""Run one process per rank (the distributed tests' gloo jobs), bounded in time: a hang fails
the test instead of blocking CI, and a rank that does not exit cleanly fails it with its output.

A clean exit is return code 0 and no "terminate called" on stderr (what C++'s std::terminate
prints before it aborts the process). stdout and stderr are read apart, so a failure shows the
rank's stderr whole (a C++ abort's message, a Python traceback), not mixed into its prints."""

from __future__ import annotations

import signal
import subprocess

import pytest

TAIL_CHARS = 6000


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _report(name: str, rank: int, why: str, out: str, err: str) -> str:
    return (f"{name} rank {rank} {why}\n--- stderr (last {TAIL_CHARS} chars) ---\n{err[-TAIL_CHARS:]}"
            f"\n--- stdout (last {TAIL_CHARS} chars) ---\n{out[-TAIL_CHARS:]}")


def run_ranks(commands: list[list[str]], envs: list[dict], timeout: float, name: str) -> list[str]:
    """Start every rank, wait for all (at most ``timeout`` s each), check each exited cleanly;
    returns each rank's stdout."""
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for command, env in zip(commands, envs, strict=True)]
    results = []
    try:
        for proc in procs:
            results.append(proc.communicate(timeout=timeout))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.communicate()
        pytest.fail(f"{name}: the processes did not finish within {timeout} s (a hang?)")
    for rank, (proc, (out, err)) in enumerate(zip(procs, results)):
        if proc.returncode != 0:
            pytest.fail(_report(name, rank, f"exited with {_exit_status(proc.returncode)}", out, err))
        if "terminate called" in err:
            pytest.fail(_report(name, rank, "aborted in C++ (std::terminate) although it exited with code 0",
                                out, err))
    return [out for out, _ in results]
