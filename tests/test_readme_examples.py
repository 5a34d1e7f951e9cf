"""The README's "Using gpukernels in your training code" examples, run exactly as printed there
(compile and autocast; the CUDA graph, DDP and FSDP2 examples are tested with the optimizers)."""

from __future__ import annotations

import pytest
import torch._dynamo

from _readme import example

COMPILE_EXAMPLE = example("compile")
AUTOCAST_EXAMPLE = example("autocast")


@pytest.mark.slow  # Inductor compiles the model: about 40 s on one CPU core
def test_compile_example():
    torch._dynamo.reset()
    exec(compile(COMPILE_EXAMPLE, "README:compile", "exec"), {})


def test_autocast_example():
    exec(compile(AUTOCAST_EXAMPLE, "README:autocast", "exec"), {})
