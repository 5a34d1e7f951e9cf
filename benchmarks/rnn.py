"""Recurrent benchmark cases: the LSTM and GRU cell step and the full layer (T = 100), forward,
backward and forward+backward, B in {1, 16, 64, 256}, H in {128, 256, 512, 1024}, fp32/fp16/bf16;
and issue 14's layer grid on the GPU: B in {8, 32, 128}, H in {256, 512, 1024}, T in {100, 1000},
forward and forward+backward, fp16/bf16. Multi-head layers (``heads=4``, block-diagonal w_hh):
LSTM and GRU layers, B=16, H in {256, 512} fp16 on the GPU and B=16, H=128 fp32 on the CPU, ours
(the compact weight, per-head products) against torch.nn with the equivalent dense block-diagonal
matrix (what a PyTorch user would run: the same function at the dense FLOPs).

Providers, side by side in one run: ours (``gpukernels``: the functional cell on a GPU runs one
fused Triton step kernel; the layer is ``gpukernels.torch.nn.LSTM/GRU``), PyTorch eager
(``torch``: ``torch.nn.LSTMCell/GRUCell`` for a step, the same cell looped over T for a layer),
``torch.compile`` of the eager cell, and for layers ``torch.nn.LSTM/GRU`` under the name of what
runs it: on CUDA ``torch-cudnn`` (cuDNN switched on for the call whatever the process set; in
fp32 with TF32 off, plain fp32 math as our kernels do) and, for fp32 only, ``torch-cudnn-tf32``
(TF32 tensor cores allowed, PyTorch's default for cuDNN); on the CPU ``torch.nn`` (ATen), against
our layer running the NumPy reference (fp32, small sizes). fp16/bf16 cuDNN runs its tensor-core
math in both cases, so it has one provider. fp32 compares like with like: our providers run
their recurrent products in exact fp32 (torch's RNN TF32 switch off for the call, ``rnn_tf32``)
beside ``torch-cudnn``, and ``gpukernels-tf32`` (fp32, CUDA) runs them in TF32 beside
``torch-cudnn-tf32``. The issue's targets (not claims): a fused step
>= 1.3x faster than the eager step; the layer within 1.1x of cuDNN and faster where cuDNN is
launch-bound. Issue 14's (not a claim): the layer's forward+backward >= 1.5x cuDNN at B <= 32,
H <= 512, with the persistent path (``gpukernels-persistent``). ``gpukernels-graph``: the
per-step layer with each layer call captured as a CUDA graph per shape and replayed
(GPUKERNELS_RNN_CUDA_GRAPH=1), meant to remove the per-step launch overhead (what it saves is
measured here, not claimed). FlashRNN, when its package imports, joins the LSTM layer cases as
the ``flashrnn`` peer (benchmarks/peers.py).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Callable, Iterator

from .registry import BenchCase, register

BATCHES = (1, 16, 64, 256)
HIDDEN = (128, 256, 512, 1024)
STEPS = 100
INPUT_SIZE = 256
DTYPES = ("float32", "float16", "bfloat16")
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
GATES = {"lstm": 4, "gru": 3}
WORKSPACE_BLOCKS = {"lstm": 6, "gru": 5}
CPU_SIZES = ((16, 128),)  # (B, H) for the CPU comparison, fp32
DEFAULT_SET = {(16, 256), (256, 1024)}  # the short `gpukernels bench` set; --all runs every size
# Issue 14's grid (GPU layers only): where the persistent kernels should beat cuDNN (B <= 32,
# H <= 512) and where they should not need to (B = 128, H = 1024), at a short and a long sequence.
ISSUE14_BATCHES = (8, 32, 128)
ISSUE14_HIDDEN = (256, 512, 1024)
ISSUE14_STEPS = (100, 1000)
ISSUE14_DTYPES = ("float16", "bfloat16")
ISSUE14_MODES = ("fwd", "full")
# torch.compile of the eager layer unrolls the time loop: at T = 1000 it compiles for minutes.
COMPILE_MAX_STEPS = STEPS
HEADS = 4
HEADS_GPU_SIZES = ((16, 256), (16, 512))  # (B, H), fp16
HEADS_CPU_SIZES = ((16, 128),)  # fp32


def recurrent_weights(cell: str, H: int, heads: int = 1) -> int:
    """Elements of w_hh a step reads: G*H rows of H // heads columns (heads > 1: the compact
    block-diagonal weight, whose products the kernels run head by head)."""
    return GATES[cell] * H * (H // heads)


def step_bytes(cell: str, B: int, H: int, dtype: str, mode: str = "fwd", heads: int = 1) -> int:
    """What one fused step must move.

    Forward: w_hh and the state read, the input projection read, the output written (storage
    dtype), the fp32 workspace row written. Backward: the workspace row, the output gradient
    and the carried fp32 state gradients (h, and c for LSTM) read, w_hh read for the recurrent
    gradient, the fp32 gate gradients and the new state gradients written, and the gate
    gradients, input and state read again by the weight-gradient matmuls. Full: both. With
    ``heads``, w_hh is heads times smaller (recurrent_weights).
    """
    G, item = GATES[cell], ITEMSIZE[dtype]
    carried = 2 if cell == "lstm" else 1
    weights = recurrent_weights(cell, H, heads)
    forward = item * (weights + B * G * H + B * H) + 4 * (B * H + B * WORKSPACE_BLOCKS[cell] * H)
    backward = (4 * B * WORKSPACE_BLOCKS[cell] * H + item * B * H + 4 * carried * B * H
                + item * weights + 4 * B * G * H + 4 * carried * B * H
                # the weight-gradient matmuls read each step's gate gradients, input and state again
                + 4 * B * G * H + item * B * (INPUT_SIZE + H))
    return {"fwd": forward, "bwd": backward, "full": forward + backward}[mode]


def weight_grad_bytes(cell: str, H: int, mode: str, heads: int = 1) -> int:
    """The fp32 weight and bias gradients, written once per call whatever the number of steps
    (the w_hh gradient compact with ``heads``)."""
    return 0 if mode == "fwd" else 4 * (GATES[cell] * H * (INPUT_SIZE + 2) + recurrent_weights(cell, H, heads))


def step_flops(cell: str, B: int, H: int, mode: str, heads: int = 1) -> int:
    """The recurrent and input matmuls of one step (backward: twice the forward's); each head's
    recurrent product sees only its own H // heads state columns."""
    forward = 2 * B * GATES[cell] * H * (H // heads + INPUT_SIZE)
    return {"fwd": forward, "bwd": 2 * forward, "full": 3 * forward}[mode]


def _dense_block_diagonal(compact, gates: int, heads: int):
    """The dense (G*H, H) matrix of a compact multi-head w_hh (G*H, H // heads): what torch.nn
    must be given to compute the same layer."""
    import torch

    rows, size = compact.shape
    dense = torch.zeros(rows, size * heads, dtype=compact.dtype, device=compact.device)
    for head in range(heads):
        units = [g * size * heads + head * size + u for g in range(gates) for u in range(size)]
        dense[units, head * size:(head + 1) * size] = compact[units]
    return dense


def _setup(cell: str, kind: str, B: int, H: int, dtype: str, steps: int = STEPS, heads: int = 1):
    def make(device: str):
        import torch

        import gpukernels.torch.nn as gnn

        torch_dtype = getattr(torch, dtype)
        factory = {"device": device, "dtype": torch_dtype}
        name = cell.upper()
        eager_cell = getattr(torch.nn, f"{name}Cell")(INPUT_SIZE, H, **factory)
        ours_cell = getattr(gnn, f"{name}Cell")(INPUT_SIZE, H, **factory)
        ours_cell.load_state_dict(eager_cell.state_dict())
        inputs = {"eager_cell": eager_cell, "ours_cell": ours_cell, "cell": cell}
        if kind == "layer":
            theirs = getattr(torch.nn, name)(INPUT_SIZE, H, **factory)
            ours = getattr(gnn, name)(INPUT_SIZE, H, heads=heads, **factory)
            if heads == 1:
                ours.load_state_dict(theirs.state_dict())
            else:  # theirs (and the eager cell) get the dense matrix of our compact blocks
                state = ours.state_dict()
                state["weight_hh_l0"] = _dense_block_diagonal(state["weight_hh_l0"], GATES[cell], heads)
                theirs.load_state_dict(state)
                eager_cell.load_state_dict({k.removesuffix("_l0"): v for k, v in state.items()})
            inputs.update(theirs=theirs, ours=ours, x=torch.randn(steps, B, INPUT_SIZE, **factory, requires_grad=True))
        else:
            inputs["x"] = torch.randn(B, INPUT_SIZE, **factory, requires_grad=True)
        inputs["h"] = torch.randn(B, H, **factory, requires_grad=True)
        inputs["c"] = torch.randn(B, H, **factory, requires_grad=True)
        return inputs

    return make


def _eager_step(inputs, module):
    x, h, c = inputs["x"], inputs["h"], inputs["c"]
    out = module(x, (h, c)) if inputs["cell"] == "lstm" else module(x, h)
    return out[0] if isinstance(out, tuple) else out


def _eager_layer(inputs, module):
    """PyTorch eager's layer: the cell looped over time (what torch.compile gets to fuse)."""
    h, c = inputs["h"], inputs["c"]
    for x in inputs["x"]:
        if inputs["cell"] == "lstm":
            h, c = module(x, (h, c))
        else:
            h = module(x, h)
    return h


def _module_layer(inputs, module):
    return module(inputs["x"])[0]


def _timed(run, mode: str):
    """A zero-argument callable doing ``mode`` of ``run()``: forward only, backward only (of a
    graph built once, kept with retain_graph) or both."""
    import torch

    if mode == "fwd":
        def forward():
            with torch.no_grad():
                return run()
        return forward
    if mode == "full":
        def full():
            out = run()
            out.backward(torch.ones_like(out))
            return out
        return full
    out = run()
    grad = torch.ones_like(out)
    return lambda: out.backward(grad, retain_graph=True)


@contextlib.contextmanager
def rnn_tf32(allowed: bool) -> Iterator[None]:
    """Torch's TF32 switch for RNNs set to ``allowed`` for the block and put back after: what
    cuDNN's RNNs and our fp32 recurrent kernels read (gpukernels.triton._launch.rnn_tf32_allowed).

    Set first through the legacy ``torch.backends.cudnn.allow_tf32``, which moves torch >= 2.9's
    cuDNN RNN and convolution precisions together ("tf32" / "none"), so that its getter (which
    ``torch.backends.cudnn.flags`` reads) stays readable: setting the RNN's own precision alone,
    convolutions left at "tf32", makes it raise. Then the RNN's own ``fp32_precision`` is pinned
    ("tf32" / "ieee"), so a process-wide ``torch.backends.fp32_precision`` cannot leak in through
    "none". Afterwards the legacy switch and every value that differs from what it was are put
    back (torch reads settings back resolved, so "none" that inherited comes back as the value it
    inherited where the legacy switch alone does not restore it)."""
    import torch

    cudnn = torch.backends.cudnn
    try:
        legacy = cudnn.allow_tf32
    except RuntimeError:  # the two APIs already disagree: leave the legacy switch alone
        legacy = None
    rnn = getattr(cudnn, "rnn", None)
    fine_grained = hasattr(rnn, "fp32_precision")  # torch >= 2.9
    saved = [(owner, owner.fp32_precision) for owner in (rnn, cudnn.conv)] if fine_grained else []
    try:
        if legacy is not None:
            cudnn.allow_tf32 = allowed
        if fine_grained:
            rnn.fp32_precision = "tf32" if allowed else "ieee"
        yield
    finally:
        if legacy is not None:
            cudnn.allow_tf32 = legacy
        for owner, value in saved:
            if owner.fp32_precision != value:
                owner.fp32_precision = value


@contextlib.contextmanager
def cudnn_rnn_math(tf32: bool) -> Iterator[None]:
    """cuDNN on, with the stated fp32 math for its RNNs: TF32 tensor cores when ``tf32``, plain
    fp32 otherwise (``rnn_tf32``; our recurrent kernels read the same switch). (``torch.backends.
    cudnn.flags`` defaults to ``enabled=False``, so a bare ``flags(allow_tf32=False)`` would run
    ATen's kernels instead of cuDNN.)"""
    import torch

    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=tf32), \
            rnn_tf32(tf32):
        yield


def _under(context: Callable[[], contextlib.AbstractContextManager], make):
    """Provider ``make`` with its set-up (the graph a backward timing reuses) and every timed call
    inside ``context()``: cuDNN's backward builds its own descriptors, so it must see the flags too."""
    def provider(inputs):
        with context():
            timed = make(inputs)

        def run():
            with context():
                return timed()
        return run
    return provider


@contextlib.contextmanager
def _environment(**values: str):
    """The GPUKERNELS_* switches set to ``values`` for the call, put back after."""
    import os

    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _together(*contexts: contextlib.AbstractContextManager) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def _persistent_auto():
    """The persistent layer kernels where they fit (opt-in until a GPU run proves them)."""
    return _environment(GPUKERNELS_RNN_PERSISTENT="auto")


def _cuda_graph():
    """The per-step path with each layer call captured as a CUDA graph and replayed (opt-in
    until a GPU run proves it; the persistent path off, as the graph path requires)."""
    return _environment(GPUKERNELS_RNN_CUDA_GRAPH="1", GPUKERNELS_RNN_PERSISTENT="0")


def _providers(kind: str, mode: str, dtype: str, steps: int = STEPS):
    import torch

    compiled: dict = {}

    def compile_once(key, fn):
        if key not in compiled:
            compiled[key] = torch.compile(fn)
        return compiled[key]

    # Ours multiply fp32 in exact fp32 as the baselines they sit beside do (``torch-cudnn``, and the
    # eager cells, whose cuBLAS products follow the matmul flag, off by default), TF32 only in
    # ``gpukernels-tf32`` (beside ``torch-cudnn-tf32``): each sets torch's RNN switch around every
    # call (``rnn_tf32``, a few microseconds of host time, as the cuDNN providers' flags cost).
    # Only fp32 reads the switch, so only fp32 pays for setting it.
    def precision(tf32: bool, *more: Callable[[], contextlib.AbstractContextManager]):
        if dtype != "float32":
            return lambda: _together(*(make() for make in more))
        return lambda: _together(rnn_tf32(tf32), *(make() for make in more))

    if kind == "step":
        return {
            "gpukernels": _under(precision(False), lambda i: _timed(lambda: _eager_step(i, i["ours_cell"]), mode)),
            "torch": lambda i: _timed(lambda: _eager_step(i, i["eager_cell"]), mode),
            "torch.compile": lambda i: _timed(
                lambda: compile_once(id(i["eager_cell"]), lambda: _eager_step(i, i["eager_cell"]))(), mode),
        }
    torch_nn = lambda i: _timed(lambda: _module_layer(i, i["theirs"]), mode)  # noqa: E731
    ours = lambda i: _timed(lambda: _module_layer(i, i["ours"]), mode)  # noqa: E731
    providers = {
        "gpukernels": _under(precision(False), ours),
        "gpukernels-persistent": _under(precision(False, _persistent_auto), ours),
        "gpukernels-graph": _under(precision(False, _cuda_graph), ours),
        "torch-cudnn": _under(lambda: cudnn_rnn_math(tf32=False), torch_nn),
        "torch.nn": torch_nn,
        "torch": lambda i: _timed(lambda: _eager_layer(i, i["eager_cell"]), mode),
        "torch.compile": lambda i: _timed(
            lambda: compile_once(id(i["eager_cell"]), lambda: _eager_layer(i, i["eager_cell"]))(), mode),
    }
    if steps > COMPILE_MAX_STEPS:
        del providers["torch.compile"]
    if dtype == "float32":
        providers["torch-cudnn-tf32"] = _under(lambda: cudnn_rnn_math(tf32=True), torch_nn)
        providers["gpukernels-tf32"] = _under(precision(True), ours)
    return providers


# Which device each baseline runs on: torch.nn.LSTM/GRU is named after what runs it there.
PROVIDER_DEVICES = {"gpukernels-persistent": ("cuda",), "gpukernels-graph": ("cuda",), "gpukernels-tf32": ("cuda",),
                    "torch.compile": ("cuda",), "torch-cudnn": ("cuda",), "torch-cudnn-tf32": ("cuda",),
                    "torch.nn": ("cpu",)}


def _register(cell: str, kind: str, mode: str, dtype: str, B: int, H: int, steps: int,
              devices: tuple[str, ...], default: bool, heads: int = 1) -> None:
    size = f"B={B},H={H},T={steps}" + (f",heads={heads}" if heads > 1 else "")
    register(BenchCase(
        family="rnn", op=f"{cell}_{kind}", mode=mode, dtype=dtype, size=size,
        setup=_setup(cell, kind, B, H, dtype, steps, heads), providers=_providers(kind, mode, dtype, steps),
        bytes_moved=steps * step_bytes(cell, B, H, dtype, mode, heads) + weight_grad_bytes(cell, H, mode, heads),
        flops=steps * step_flops(cell, B, H, mode, heads),
        devices=devices, params={"B": B, "H": H, "T": steps, "cell": cell, "heads": heads},
        provider_devices=PROVIDER_DEVICES, eager="torch", in_default_set=default,
    ))


def _register_all() -> None:
    for cell, kind, mode, dtype in itertools.product(GATES, ("step", "layer"), ("fwd", "bwd", "full"), DTYPES):
        sizes = set(itertools.product(BATCHES, HIDDEN))
        if dtype == "float32" and kind == "layer":
            sizes |= set(CPU_SIZES)
        for B, H in sorted(sizes):
            on_cpu = kind == "layer" and dtype == "float32" and (B, H) in CPU_SIZES
            on_gpu = B in BATCHES and H in HIDDEN
            devices = tuple(d for d, ok in (("cuda", on_gpu), ("cpu", on_cpu)) if ok)
            _register(cell, kind, mode, dtype, B, H, STEPS if kind == "layer" else 1, devices,
                      default=(B, H) in DEFAULT_SET and dtype == "float16" or on_cpu)


def _register_issue14_grid() -> None:
    """Out of `gpukernels bench`'s short default set (144 cases; --all or filters run them); the
    GPU proof picks its corner from here (gpukernels/tools/gpu_proof.py, GPU_BENCH)."""
    for cell, mode, dtype, B, H, steps in itertools.product(
            GATES, ISSUE14_MODES, ISSUE14_DTYPES, ISSUE14_BATCHES, ISSUE14_HIDDEN, ISSUE14_STEPS):
        _register(cell, "layer", mode, dtype, B, H, steps, ("cuda",), default=False)


def _register_heads() -> None:
    """Multi-head layers (out of the short default set): the GPU sizes in fp16, the CPU one in fp32."""
    for cell, mode in itertools.product(GATES, ("fwd", "full")):
        for (B, H), dtype, device in ([(size, "float16", "cuda") for size in HEADS_GPU_SIZES]
                                      + [(size, "float32", "cpu") for size in HEADS_CPU_SIZES]):
            _register(cell, "layer", mode, dtype, B, H, STEPS, (device,), default=False, heads=HEADS)


_register_all()
_register_issue14_grid()
_register_heads()


# ---------------------------------------------------------------------------------------------
# The CPU fallback with heads: `python -m gpukernels.benchmarks.rnn --heads-cpu`


def _heads_cpu_layer(cell: str, heads: int, w_hh, arrays: dict):
    """(forward, backward) callables of our NumPy layer at ``heads`` (w_hh compact, or dense)."""
    import gpukernels as gk

    x, h0, w_ih, b, gy = (arrays[k] for k in ("x", "h0", "w_ih", "b", "gy"))
    if cell == "lstm":
        return (lambda: gk.lstm_layer(x, h0, h0, w_ih, w_hh, b, b, heads=heads),
                lambda: gk.lstm_layer_backward(gy, None, None, x, h0, h0, w_ih, w_hh, b, b, heads=heads))
    return (lambda: gk.gru_layer(x, h0, w_ih, w_hh, b, b, heads=heads),
            lambda: gk.gru_layer_backward(gy, None, x, h0, w_ih, w_hh, b, b, heads=heads))


def heads_cpu_table(B: int = 16, H: int = 128, steps: int = STEPS, rounds: int = 41) -> list[str]:
    """Medians (time.perf_counter) of the NumPy layer's forward and backward (which recomputes the
    forward), fp32, input size 128, at heads 1, 2 and 4 with the compact weight, and at heads 2
    and 4 given the equivalent dense block-diagonal matrix as heads=1 (what every heads value
    cost before the products ran per head). Each round times every variant once, so a busy
    machine slows them alike."""
    import statistics
    import time

    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    lines = []
    for cell in GATES:
        G = GATES[cell]
        arrays = {"x": rng.standard_normal((steps, B, 128)), "h0": rng.standard_normal((B, H)) * 0.5,
                  "w_ih": rng.standard_normal((G * H, 128)) * 0.1, "b": rng.standard_normal(G * H) * 0.1,
                  "gy": rng.standard_normal((steps, B, H))}
        arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
        variants = {}
        for heads in (1, 2, 4):
            w = (rng.standard_normal((G * H, H // heads)) * 0.1).astype(np.float32)
            variants[f"heads={heads}"] = _heads_cpu_layer(cell, heads, w, arrays)
            if heads > 1:
                dense = _dense_block_diagonal(torch.from_numpy(w), G, heads).numpy()
                variants[f"heads={heads} as dense"] = _heads_cpu_layer(cell, 1, dense, arrays)
        times = {name: ([], []) for name in variants}
        for forward, backward in variants.values():  # warm-up
            forward()
            backward()
        for _ in range(rounds):
            for name, pair in variants.items():
                for run, record in zip(pair, times[name]):
                    start = time.perf_counter()
                    run()
                    record.append(time.perf_counter() - start)
        for name, (forward, backward) in times.items():
            lines.append(f"{cell}_layer B={B},H={H},T={steps} {name:17s} "
                         f"forward {statistics.median(forward) * 1e3:6.2f} ms  "
                         f"backward {statistics.median(backward) * 1e3:6.2f} ms")
    return lines


# The persistent path's bytes model (computed, not measured): `python -m gpukernels.benchmarks.rnn
# --persistent-bytes`, the layers of the README's table at heads 1, 2, 4 and 8.
PERSISTENT_BYTES_LAYERS = (("lstm", 1024, "fp16", 8), ("lstm", 1024, "fp16", 32), ("lstm", 1024, "fp16", 128),
                           ("lstm", 1024, "fp32", 32), ("gru", 1024, "bf16", 32), ("lstm", 512, "fp16", 32))


def persistent_bytes_table(steps: int = STEPS, heads_values: tuple[int, ...] = (1, 2, 4, 8)) -> list[str]:
    """Markdown rows: per layer direction, w_hh bytes of the per-step path and of the persistent
    one over ``steps`` steps, the persistent programs, the exchange per forward and backward step
    (gpukernels.triton.rnn_persistent.traffic)."""
    from gpukernels.triton.rnn_persistent import traffic

    mib = lambda n: f"{n / 2**20:g} MiB"  # noqa: E731
    lines = ["| cell | H | dtype | B | heads | `w_hh` bytes, per-step path | persistent | programs (fwd/bwd) | "
             "exchange per forward step | per backward step |", "|---" * 10 + "|"]
    for cell, H, dtype, B in PERSISTENT_BYTES_LAYERS:
        for heads in heads_values:
            t = traffic(cell, H, B, steps, dtype=dtype, heads=heads)
            row = ([mib(t.w_hh_step_path), mib(t.w_hh_persistent), f"{t.programs}/{t.programs_backward}",
                    mib(t.exchange_forward),
                    mib(t.exchange_backward)] if t else ["per-step path only"] * 5)
            lines.append(f"| {cell.upper()} | {H} | {dtype} | {B} | {heads} | " + " | ".join(row) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="RNN benchmark extras (the cases run through `gpukernels bench`)")
    parser.add_argument("--heads-cpu", action="store_true", help="time the NumPy layer with heads 1/2/4")
    parser.add_argument("--persistent-bytes", action="store_true",
                        help="print the persistent path's bytes model (w_hh and exchange bytes, heads 1/2/4/8)")
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args(argv)
    if not (args.heads_cpu or args.persistent_bytes):
        parser.error("nothing to do: pass --heads-cpu or --persistent-bytes")
    if args.persistent_bytes:
        for line in persistent_bytes_table():
            print(line, flush=True)
    if args.heads_cpu:
        for line in heads_cpu_table(rounds=args.rounds):
            print(line, flush=True)


if __name__ == "__main__":
    main()
