"""`gpukernels gpu-proof`: the dry run of the GPU plan (so it cannot rot between GPU runs), the
parsing of its test logs, and the offline install the GPU machine uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from gpukernels.tools import barrier_probe, gpu_proof

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_runs_the_whole_plan_on_the_cpu(tmp_path):
    # the dry run is the CPU rehearsal on any machine (on the H200 it failed with the GPU visible)
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    archive = tmp_path / "back" / "proof.tar.gz"
    done = subprocess.run([sys.executable, "-m", "gpukernels.tools.cli", "gpu-proof", "--dry-run", "--out",
                           str(tmp_path / "proof"), "--archive", str(archive)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tmp_path = tmp_path / "proof"
    summary = (tmp_path / "summary.md").read_text()
    for stage in ("## env: ok", "## probe: ok", "## bench: ok", "## tests: ok"):
        assert stage in summary
    probe = json.loads((tmp_path / "persistent.json").read_text())
    assert [c["name"] for c in probe] == [c.name for c in barrier_probe.DRY_RUN_CASES]
    assert all(c["passed"] and c["ran_as_planned"] for c in probe)
    with tarfile.open(archive) as tar:  # the last stage's archive holds every stage's files
        names = set(tar.getnames())
    assert {"proof/summary.md", "proof/persistent.json", "proof/bench.json", "proof/junit-dry-run.xml"} <= names
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


def test_the_issue_targets_are_measured_first():
    """The bench stage stops at its budget; the RNN corner and the SDPA target come first."""
    cases = gpu_proof.select_bench_cases("cuda")
    assert [(c.op, c.size) for c in cases[:4]] == [("gru_layer", "B=32,H=512,T=100")] * 2 + [
        ("lstm_layer", "B=32,H=512,T=100")] * 2
    assert {c.op for c in cases[4:20]} == {"scaled_dot_product_attention"}
    assert len(cases) == len(set(c.name for c in cases))


def test_issue14_grid_covers_the_whole_grid_target_region_first():
    """`--only issue14`: every registered case of issue 14's layer grid (LSTM/GRU, fp16/bf16,
    fwd/full, B in {8, 32, 128}, H in {256, 512, 1024}, T in {100, 1000}), once each, the
    target's region (B <= 32, H <= 512) first."""
    cases = gpu_proof.select_bench_cases("cuda", gpu_proof.ISSUE14_GRID)
    assert len(cases) == len({c.name for c in cases}) == 2 * 2 * 2 * 18
    assert {c.dtype for c in cases} == {"float16", "bfloat16"} and {c.mode for c in cases} == {"fwd", "full"}
    assert {c.size for c in cases} == {f"B={b},H={h},T={t}" for b in (8, 32, 128) for h in (256, 512, 1024)
                                       for t in (100, 1000)}
    first = cases[:32]  # fp16, LSTM then GRU, 4 sizes x 2 steps x 2 modes each
    assert all(c.dtype == "float16" and int(c.size.split(",")[0][2:]) <= 32
               and int(c.size.split(",")[1][2:]) <= 512 for c in first)
    assert cases[0].op == "lstm_layer" and cases[0].size.endswith("T=100")


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


def test_probe_fails_when_the_persistent_path_does_not_run(tmp_path, monkeypatch):
    """The probe's verdict can fail: with the switch off, the layer takes the per-step path, no
    persistent grid is recorded, and the case fails although its numbers are right."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    result = barrier_probe.run_case(barrier_probe.DRY_RUN_CASES[0], "cpu", "0", 0)
    assert result["grids"] == [] and not result["ran_as_planned"] and not result["passed"]
    assert result["max_error_vs_float64"] <= result["tolerance"]


def test_a_failed_or_hung_probe_leaves_the_persistent_path_out(tmp_path, monkeypatch):
    """A probe child that hangs is killed at its deadline; the stage names the case it was in and
    marks the run so the bench drops the persistent provider (and the GPU tests skip it)."""
    monkeypatch.delenv(barrier_probe.VERDICT_VARIABLE, raising=False)
    hang = "import time; print('probe: start lstm-B32-H512-T100-fp16', flush=True); time.sleep(60)"
    real_popen = subprocess.Popen
    monkeypatch.setattr(gpu_proof.subprocess, "Popen",
                        lambda command, **kw: real_popen([sys.executable, "-c", hang], **kw))
    budget = gpu_proof.Budget(bench=1, tests=1, probe=2)
    result = gpu_proof.stage_probe(tmp_path, "cuda", budget, dry_run=False)
    assert not result.ok and result.seconds < 30
    text = "\n".join(result.lines)
    assert "Killed at the 2 s deadline" in text and "lstm-B32-H512-T100-fp16" in text
    assert os.environ[barrier_probe.VERDICT_VARIABLE] == "failed"
    assert "gpukernels-persistent" in gpu_proof.skipped_providers()
    monkeypatch.delenv(barrier_probe.VERDICT_VARIABLE)
    assert "gpukernels-persistent" not in gpu_proof.skipped_providers()
