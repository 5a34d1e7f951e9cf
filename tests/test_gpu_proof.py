"""`gpukernels gpu-proof`: the dry run of the GPU plan (so it cannot rot between GPU runs), the
parsing of its test logs, and the offline install the GPU machine uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpukernels.tools import gpu_proof

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_runs_the_whole_plan_on_the_cpu(tmp_path):
    # the dry run is the CPU rehearsal on any machine (on the H200 it failed with the GPU visible)
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "gpukernels.tools.cli", "gpu-proof", "--dry-run", "--out",
                           str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    for stage in ("## env: ok", "## bench: ok", "## tests: ok"):
        assert stage in summary
    facts = json.loads((tmp_path / "env.json").read_text())
    assert facts["copy_gbs"] > 0 and facts["matmul_tflops"]["float32"] > 0
    rows = (tmp_path / "bench.csv").read_text().splitlines()
    assert len(rows) > 5 and any(",gpukernels," in r and ",time_ms," in r for r in rows)
    assert (tmp_path / "junit-dry-run.xml").exists()


def test_every_gpu_selection_names_registered_cases():
    from gpukernels.benchmarks.registry import all_cases

    cases = all_cases()
    for selection in gpu_proof.GPU_BENCH + gpu_proof.CPU_BENCH:
        device = "cuda" if selection in gpu_proof.GPU_BENCH else "cpu"
        chosen = [c for c in cases if device in c.devices and selection.matches(c)]
        expected = len(selection.ops) * len(selection.modes) * len(selection.dtypes) * len(selection.sizes)
        # every (op, mode, dtype, size) the plan names exists, except op/mode pairs a family lacks
        assert chosen, selection
        assert len(chosen) <= expected


def test_log_counts_reads_xdist_and_single_process_lines():
    log = "\n".join([
        "[gw0] [  1%] PASSED tests/test_a.py::test_one[fp32]",
        "[gw1] [  2%] FAILED tests/test_a.py::test_two[B4-T63-fp16]",
        "tests/test_b.py::test_three SKIPPED (needs a CUDA GPU)",
        "tests/test_b.py::test_four ERROR",
        "tests/test_b.py::test_five PASSED",
        "[gw0] [  3%] ERROR tests/test_a.py::test_one[fp32]",  # teardown error after a pass
    ])
    counts, failed = gpu_proof.log_counts(log)
    assert counts == {"ERROR": 2, "FAILED": 1, "SKIPPED": 1, "PASSED": 1}
    assert failed == ["tests/test_a.py::test_one[fp32]", "tests/test_a.py::test_two[B4-T63-fp16]",
                      "tests/test_b.py::test_four"]


def test_junit_counts_and_failures(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.test_a" name="t1"/>'
        '<testcase classname="tests.test_a" name="t2"><failure message="assert 1 == 2">x</failure></testcase>'
        '<testcase classname="tests.test_a" name="t3"><error message="boom">x</error></testcase>'
        '<testcase classname="tests.test_a" name="t4"><skipped/></testcase>'
        '</testsuite></testsuites>')
    assert gpu_proof.junit_counts(xml) == {"tests": 4, "failures": 1, "errors": 1, "skipped": 1, "passed": 1}
    assert gpu_proof.junit_failures(xml) == ["tests.test_a::t2: assert 1 == 2", "tests.test_a::t3: boom"]
    assert gpu_proof.junit_counts(tmp_path / "missing.xml") is None


def test_without_a_gpu_the_real_proof_refuses_and_says_why(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the real proof would run")
    assert gpu_proof.run(gpu_proof_args(out="unused")) == 2
    assert "--dry-run" in capsys.readouterr().err


def gpu_proof_args(**values):
    import argparse

    parser = argparse.ArgumentParser()
    gpu_proof.add_arguments(parser)
    args = parser.parse_args([])
    for name, value in values.items():
        setattr(args, name, value)
    return args


def test_offline_install_command_installs_a_working_package(tmp_path):
    """The README's offline install (no index, no build isolation), here into a target folder
    so this environment is untouched; the installed package holds gpukernels.reference."""
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
                           "--no-index", "--target", str(target), str(REPO)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = ("import gpukernels, gpukernels.reference.softmax as r, gpukernels.benchmarks.registry, "
             "gpukernels.tools.gpu_proof; print(gpukernels.__file__)")
    env = dict(os.environ, PYTHONPATH=str(target))
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith(str(target))


def test_failure_log_gets_each_traceback_as_the_test_fails(tmp_path):
    """tests/conftest.py's hook (the one gpu-proof relies on when it kills a run at its budget):
    with xdist, every failure's traceback lands in GPUKERNELS_FAILURE_LOG exactly once."""
    (tmp_path / "test_sample.py").write_text(
        "def test_fails_here():\n    assert 1 + 1 == 3, 'arithmetic marker'\n\n"
        "def test_passes():\n    assert True\n\n"
        "def test_fails_too():\n    raise ValueError('second marker')\n")
    log = tmp_path / "failures.log"
    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ, GPUKERNELS_FAILURE_LOG=str(log), PYTHONPATH=str(tests_dir))
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q",
                             "-n", "2", "test_sample.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    text = log.read_text()
    assert text.count("=== test_sample.py::test_fails_here (call)") == 1
    assert text.count("=== test_sample.py::test_fails_too (call)") == 1
    assert "arithmetic marker" in text and "ValueError: second marker" in text
    assert "test_passes" not in text
