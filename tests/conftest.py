"""Test set-up shared by every test file.

* Triton runs on a real GPU when torch sees one; otherwise every Triton kernel runs in
  Triton's interpreter (TRITON_INTERPRET=1, read when kernels are defined, so it is set here,
  before any test imports gpukernels.triton). Tests of the Triton backend build their tensors
  on ``DEVICE``, the device that matches.
* Freshly allocated torch outputs are filled with NaN (PyTorch's deterministic mode with
  ``fill_uninitialized_memory``), so a kernel that leaves any element unwritten fails.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

try:
    import torch
except ImportError:  # the numpy-only tests still run
    torch = None

HAS_CUDA = torch is not None and torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
# Where every test of the Triton backend builds its torch tensors: compiled Triton reads GPU
# memory only (the dispatch refuses CPU tensors there), the interpreter runs on CPU tensors.
DEVICE = "cuda" if HAS_CUDA else "cpu"
os.environ.pop("GPUKERNELS_BACKEND", None)  # tests choose backends explicitly


@pytest.fixture(autouse=True)
def poison_fresh_outputs():
    if torch is None:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill


def _math_settings() -> dict:
    """Process-wide matmul/cuDNN precision switches. A test that changes one and does not put it
    back makes every later test in its process compute differently (TF32 costs ~1e-3 in fp32)."""
    backends = torch.backends
    try:  # raises once the legacy and the torch >= 2.9 APIs have both been used: a state too
        float32_matmul = torch.get_float32_matmul_precision()
    except RuntimeError as error:
        float32_matmul = f"unreadable ({str(error)[:60]})"
    settings = {"float32_matmul_precision": float32_matmul,
                "cudnn.enabled": backends.cudnn.enabled, "cudnn.benchmark": backends.cudnn.benchmark,
                "cudnn.deterministic": backends.cudnn.deterministic}
    for name, owner in (("fp32_precision", backends), ("cuda.matmul.fp32_precision", backends.cuda.matmul),
                        ("cudnn.fp32_precision", backends.cudnn),
                        ("cudnn.rnn.fp32_precision", getattr(backends.cudnn, "rnn", None)),
                        ("cudnn.conv.fp32_precision", getattr(backends.cudnn, "conv", None))):
        if owner is not None and hasattr(owner, "fp32_precision"):  # torch >= 2.9
            settings[name] = owner.fp32_precision
    if "cuda.matmul.fp32_precision" not in settings:  # older torch: the legacy switches alone
        settings["cuda.matmul.allow_tf32"] = backends.cuda.matmul.allow_tf32
        settings["cudnn.allow_tf32"] = backends.cudnn.allow_tf32
    return settings


@pytest.fixture(autouse=True)
def math_settings_are_left_as_found(request):
    """Fails the test that leaks a precision switch (named in the error), instead of the later
    tests whose results it silently changes."""
    if torch is None:
        yield
        return
    before = _math_settings()
    yield
    after = _math_settings()
    changed = {key: (before[key], after.get(key)) for key in before if after.get(key) != before[key]}
    if changed:
        if not before["float32_matmul_precision"].startswith("unreadable"):
            torch.set_float32_matmul_precision(before["float32_matmul_precision"])
        pytest.fail(f"{request.node.nodeid} left process-wide math settings changed (before, after): {changed}")


@pytest.fixture(autouse=True)
def strict_fp32_recurrent_products(math_settings_are_left_as_found):
    """Every test runs with torch's TF32 switch for RNNs off (set after the check above records
    the settings, which it requests for that order, and put back before it compares them):
    torch's default allows TF32, which our fp32 recurrent kernels then use on a GPU as cuDNN
    does, and the tests hold fp32 layers to fp32 tolerance. The TF32 tests switch it on
    themselves (tests/test_rnn_tf32.py, tests/test_gpu_rnn.py)."""
    if torch is None:
        yield
        return
    from gpukernels.benchmarks.rnn import rnn_tf32

    with rnn_tf32(False):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        # The GPU-only tests first: on a borrowed GPU with a time budget they matter most.
        items.sort(key=lambda item: "gpu" not in item.keywords)
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# GPUKERNELS_FAILURE_LOG=path: each failure's traceback is appended to that file the moment the
# test fails, so a run killed at its time budget (gpu-proof) still leaves every traceback behind;
# pytest itself prints them only at the end. Written by the controlling process only (xdist
# workers send it their reports), one writer, no interleaving.
FAILURE_LOG = os.environ.get("GPUKERNELS_FAILURE_LOG")


def pytest_runtest_logreport(report):
    if not FAILURE_LOG or not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    text = report.longreprtext.splitlines()
    with open(FAILURE_LOG, "a") as handle:
        handle.write(f"=== {report.nodeid} ({report.when})\n")
        handle.write("\n".join(text[-80:]) + "\n")
