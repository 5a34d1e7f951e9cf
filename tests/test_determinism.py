"""DESIGN.md: reductions are deterministic, two-stage, no float atomics: the same inputs give the
same bits. Float atomics (the order of additions set by the scheduler) are what breaks it, so no
kernel source may contain one. Integer atomics are exact in any order (the metric kernels count
with them): a line that uses one says so with an ``integer atomic`` comment, and the kernels'
tests check that the counts they write are integer arrays."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import gpukernels as gk
from conftest import DEVICE

PACKAGE = Path(gk.__file__).resolve().parent
TRITON_ATOMIC = re.compile(r"\btl\.atomic_\w+")
CUDA_ATOMIC = re.compile(r"\batomic(Add|Max|Min|Exch|CAS)\s*\(")


@pytest.mark.parametrize("path", sorted((PACKAGE / "triton").glob("*.py")) + sorted((PACKAGE / "cupy").glob("*.cu*")),
                         ids=lambda p: p.name)
def test_no_kernel_source_uses_atomics(path):
    text = "\n".join(line for line in path.read_text().splitlines() if "integer atomic" not in line)
    found = TRITON_ATOMIC.findall(text) + [m.group(0) for m in CUDA_ATOMIC.finditer(text)]
    assert not found, f"{path.name} uses {found}: reduce in two stages instead"


@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 3.0])
def test_clip_grad_norm_gives_the_same_bits_twice(norm_type, rng):
    """Many blocks in several tensors: the norm goes through pass 2's fixed order."""
    sizes = (70_001, 4099, 1, 16_384)
    base = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    norms = []
    for _ in range(2):
        grads = [torch.from_numpy(b.copy()).to(DEVICE) for b in base]
        with gk.use_backend("triton"):
            norm = gk.clip_grad_norm_(grads, max_norm=1.0, norm_type=norm_type)
        norms.append((torch.as_tensor(norm).cpu().numpy().tobytes(), [g.cpu().numpy().tobytes() for g in grads]))
    assert norms[0] == norms[1]
