"""``gpu-proof``'s barrier probe: the persistent RNN kernels' multi-program path, first, in a
child process with a deadline.

Why a child: the persistent kernels' programs meet at a spin barrier once per step, and a barrier
that never opens hangs its process for good (Python cannot interrupt a running kernel). Run here,
such a hang costs the probe's deadline: ``gpu-proof`` kills the child, records which case hung,
and the rest of the proof runs with the persistent path left out (the bench drops its
``gpukernels-persistent`` provider; the GPU tests that launch it skip, naming this probe).

Per case (cell, B, H, T, dtype, mixed lengths), written to ``persistent.json`` after each case so
a hang leaves the cases before it: the grid each persistent launch got (forward, backward) and
whether that is the multi-program path the launch rule promised; the relative error
``norm(got - ref) / norm(ref)`` of every output and gradient against the float64 reference, held
to DESIGN.md's tolerance for matmul-class results (fp32 layers with TF32 switched off); the same
against the per-step path; and the forward+backward time of both paths (median of CUDA-event
timings). The cases cover both slice kinds: ``tl.dot`` slices (LSTM H=256) and the wide row-wise
ones (H=512 and 1024, four units a program for the fp32 LSTM at 1024), per-head slices on a grid
of (slices of a head, heads), and the issue's target corner (LSTM B=32, H=512, T=100 fp16).

``--dry-run`` runs tiny cases on the CPU through Triton's interpreter, where the launcher takes the
one-program path (``GPUKERNELS_RNN_PERSISTENT=1``), so the probe itself cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

GATES = {"rnn_tanh": 1, "lstm": 4, "gru": 3}
# DESIGN.md's tolerances for results of matmuls/reductions: norm(got - ref) / norm(ref).
TOLERANCE = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}
KERNELS = ("rnn_persistent_forward_kernel", "rnn_persistent_backward_kernel")
# Set to "failed" by gpu-proof for the stages after a probe that failed or hung: the bench leaves
# the persistent provider out and the GPU tests that launch the multi-program path skip.
VERDICT_VARIABLE = "GPUKERNELS_PROOF_PERSISTENT"


@dataclass(frozen=True)
class ProbeCase:
    cell: str
    B: int
    H: int
    T: int
    dtype: str
    heads: int = 1

    @property
    def name(self) -> str:
        short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[self.dtype]
        heads = f"-heads{self.heads}" if self.heads > 1 else ""
        return f"{self.cell}-B{self.B}-H{self.H}-T{self.T}{heads}-{short}"


GPU_CASES = (
    ProbeCase("lstm", 32, 512, 100, "float16"),    # the target corner; row-wise, 64 programs
    ProbeCase("lstm", 32, 256, 100, "float16"),    # tl.dot slices, 16 programs
    ProbeCase("gru", 32, 512, 100, "bfloat16"),
    ProbeCase("rnn_tanh", 16, 512, 100, "float32"),
    ProbeCase("lstm", 8, 1024, 100, "bfloat16"),   # 128 programs, one per SM on an H100/H200
    ProbeCase("lstm", 8, 1024, 50, "float32"),     # 256 programs of 4 units
    ProbeCase("lstm", 32, 1024, 100, "float16", heads=4),  # per-head slices: grids (16, 4) and (32, 4)
)
DRY_RUN_CASES = (ProbeCase("lstm", 3, 20, 4, "float32"), ProbeCase("gru", 2, 9, 3, "bfloat16"),
                 ProbeCase("lstm", 2, 12, 3, "float16", heads=2))


@contextlib.contextmanager
def _switch(value: str):
    from gpukernels.triton.rnn_persistent import ENVIRONMENT_SWITCH

    before = os.environ.get(ENVIRONMENT_SWITCH)
    os.environ[ENVIRONMENT_SWITCH] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENVIRONMENT_SWITCH, None)
        else:
            os.environ[ENVIRONMENT_SWITCH] = before


@contextlib.contextmanager
def recorded_grids(grids: list):
    """Records the grid of every persistent launch (warmup and attributes pass through)."""
    from gpukernels.triton import rnn_persistent

    originals = {name: getattr(rnn_persistent, name) for name in KERNELS}

    class Recording:
        def __init__(self, name, kernel):
            self._name, self._kernel = name, kernel

        def __getitem__(self, grid):
            grids.append((self._name, tuple(grid)))
            return self._kernel[grid]

        def __getattr__(self, attribute):
            return getattr(self._kernel, attribute)

    for name, kernel in originals.items():
        setattr(rnn_persistent, name, Recording(name, kernel))
    try:
        yield
    finally:
        for name, kernel in originals.items():
            setattr(rnn_persistent, name, kernel)


def promised_grids(cell: str, H: int, dtype: str, heads: int = 1, one_program: bool = False) -> list:
    """[(kernel, grid)] the launch rule promises the forward and backward persistent kernels of a
    layer (``dtype`` a torch dtype name): one program per slice, or one program in all."""
    from gpukernels.triton import rnn_persistent

    short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
    grids = []
    for name, backward in zip(KERNELS, (False, True)):
        tile = rnn_persistent.slice_tile(cell, H, dtype=short, backward=backward, heads=heads)
        single = one_program or tile is None
        programs = 1 if single else rnn_persistent.slice_count(H, heads, tile)
        grids.append((name, rnn_persistent._grid(programs, heads, single)))
    return grids


def _inputs(case: ProbeCase, device: str, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    G, I = GATES[case.cell], 64
    dtype = getattr(torch, case.dtype)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)

    w_scale = 0.3 / (1 + case.H / case.heads / 64) ** 0.5  # keeps the gates out of saturation at every width
    return {"x": rand(case.T, case.B, I), "h": rand(case.B, case.H, scale=0.5), "c": rand(case.B, case.H, scale=0.5),
            "w": [rand(G * case.H, I, scale=w_scale), rand(G * case.H, case.H // case.heads, scale=w_scale),
                  rand(G * case.H, scale=0.1), rand(G * case.H, scale=0.1)],
            "gy": rand(case.T, case.B, case.H), "gh": rand(case.B, case.H),
            "lengths": tuple(int(v) for v in torch.randint(1, case.T + 1, (case.B,), generator=g))}


def _forward_backward(cell: str, a: dict, heads: int) -> list:
    """Outputs then every gradient, through the public ops."""
    import gpukernels as gk

    x, h, c, w, gy, gh = a["x"], a["h"], a["c"], a["w"], a["gy"], a["gh"]
    options = {"lengths": a["lengths"], "heads": heads}
    if cell == "rnn_tanh":
        out = gk.rnn_layer(x, h, *w, **options)
        grads = gk.rnn_layer_backward(gy, gh, x, h, *w, **options)
    elif cell == "lstm":
        out = gk.lstm_layer(x, h, c, *w, **options)
        grads = gk.lstm_layer_backward(gy, gh, None, x, h, c, *w, **options)
    else:
        out = gk.gru_layer(x, h, *w, **options)
        grads = gk.gru_layer_backward(gy, gh, x, h, *w, **options)
    return [t for t in (*out, *grads) if t is not None]


def _relative(got, want) -> float:
    import torch

    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    norm = torch.linalg.vector_norm(want).item()
    diff = torch.linalg.vector_norm(got - want).item()
    return diff / norm if norm > 0 else diff


def _median_ms(fn, device: str, repeats: int) -> float | None:
    import torch

    if device != "cuda":
        return None
    fn()  # warm: compiles, plans, caches
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run_case(case: ProbeCase, device: str, persistent_switch: str, repeats: int) -> dict:
    import torch

    import gpukernels as gk
    from gpukernels.benchmarks.rnn import rnn_tf32

    expected_grids = promised_grids(case.cell, case.H, case.dtype, case.heads, one_program=persistent_switch == "1")
    a = _inputs(case, device, seed=zlib.crc32(case.name.encode()))
    grids: list = []
    # Strict fp32 products (the default lets fp32 layers take TF32): the probe holds the barrier's
    # results to the fp32 tolerance, and both paths then do the same math.
    with gk.use_backend("triton"), rnn_tf32(False):
        with _switch(persistent_switch), recorded_grids(grids):
            persistent = _forward_backward(case.cell, a, case.heads)
            if device == "cuda":
                torch.cuda.synchronize()  # a barrier that never opens hangs here
        with _switch("0"):
            per_step = _forward_backward(case.cell, a, case.heads)
        with _switch(persistent_switch):
            persistent_ms = _median_ms(lambda: _forward_backward(case.cell, a, case.heads), device, repeats)
        with _switch("0"):
            per_step_ms = _median_ms(lambda: _forward_backward(case.cell, a, case.heads), device, repeats)
    as64 = {k: v if k == "lengths" else [t.double().cpu() for t in v] if k == "w" else v.double().cpu()
            for k, v in a.items()}
    reference = _forward_backward(case.cell, as64, case.heads)
    errors = [_relative(got, want) for got, want in zip(persistent, reference)]
    against_step = [_relative(got, want) for got, want in zip(persistent, per_step)]
    step_errors = [_relative(got, want) for got, want in zip(per_step, reference)]
    multi_program = grids[:1] + grids[-1:] == expected_grids
    accurate = max(errors) <= TOLERANCE[case.dtype]
    return {**asdict(case), "name": case.name, "switch": persistent_switch, "grids": grids,
            "grids_expected": expected_grids, "ran_as_planned": multi_program,
            "max_error_vs_float64": max(errors), "tolerance": TOLERANCE[case.dtype],
            "max_error_per_step_vs_float64": max(step_errors), "max_difference_vs_per_step": max(against_step),
            "persistent_ms": persistent_ms, "per_step_ms": per_step_ms,
            "passed": bool(multi_program and accurate)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for persistent.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny cases through the interpreter on the CPU")
    parser.add_argument("--budget", type=float, default=75.0, help="seconds after which no new case starts")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases, device, switch, repeats = ((DRY_RUN_CASES, "cpu", "1", 0) if args.dry_run else (GPU_CASES, "cuda", "auto", 5))
    started, results = time.perf_counter(), []
    for case in cases:
        if time.perf_counter() - started > args.budget:
            results.append({"name": case.name, "passed": False, "not_run": "the probe's budget ran out"})
            continue
        print(f"probe: start {case.name}", flush=True)  # the last such line names a hung case
        try:
            result = run_case(case, device, switch, repeats)
        except Exception as exc:  # recorded; the next case still runs
            result = {"name": case.name, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        results.append(result)
        (out / "persistent.json").write_text(json.dumps(results, indent=1))
        print(f"probe: {'passed' if result['passed'] else 'FAILED'} {case.name}", flush=True)
    return 0 if results and all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
