"""The registry of benchmark cases: one place every op family adds its cases to."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

MODES = ("fwd", "bwd", "full")


@dataclass(frozen=True)
class BenchCase:
    """One op at one size, dtype and mode, with every provider that can run it.

    ``setup(device)`` builds the inputs once (outside the timing); each provider maps those
    inputs to a zero-argument callable that does the work once. ``bytes_moved`` /
    ``flops`` are what the op must move or compute for these inputs (None when not
    meaningful); GB/s and TFLOP/s are derived from them. Providers whose name starts with
    "gpukernels" are ours; every other provider is a baseline.
    """

    family: str
    op: str
    mode: str
    dtype: str
    size: str  # label, e.g. "n=1048576" or "B=16,H=256"
    setup: Callable[[str], Any]
    providers: dict[str, Callable[[Any], Callable[[], Any]]]
    bytes_moved: int | None = None
    flops: int | None = None
    devices: tuple[str, ...] = ("cuda", "cpu")  # where the case makes sense
    params: dict[str, Any] = field(default_factory=dict)
    # Optional, so every family's existing cases keep working:
    # providers that only make sense on some devices (e.g. torch.compile or cuDNN on "cuda").
    provider_devices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The provider that is PyTorch eager: `gpukernels report` profiles it on the CPU to count
    # the bytes eager's composition of aten ops moves.
    eager: str = "torch"
    # False keeps a case out of the short default set of `gpukernels bench` (still in --all).
    in_default_set: bool = True

    def runs_on(self, provider: str, device: str) -> bool:
        return device in self.provider_devices.get(provider, self.devices)

    @property
    def work(self) -> float:
        """What orders sizes: bytes the op must move, else flops, else 0."""
        return float(self.bytes_moved or self.flops or 0)

    @property
    def name(self) -> str:
        return f"{self.op}-{self.mode}-{self.dtype}-{self.size}"


_CASES: list[BenchCase] = []


def register(case: BenchCase) -> BenchCase:
    if case.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {case.mode!r}")
    _CASES.append(case)
    return case


def all_cases() -> list[BenchCase]:
    """Every registered case, with the importable peer libraries added as baselines; importing
    each module of this package registers its cases."""
    import gpukernels.benchmarks as package

    from .peers import with_peers

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("registry", "harness", "run", "peers") and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    return with_peers(list(_CASES))


def is_ours(provider: str) -> bool:
    """Providers named gpukernels* are this project's; every other one is a baseline."""
    return provider.startswith("gpukernels")
