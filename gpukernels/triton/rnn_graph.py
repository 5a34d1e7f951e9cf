"""CUDA-graph capture of the per-step recurrent layer: the whole layer call (input projection,
one step kernel launch per time step, and in backward the per-step kernels, addmms and the
weight-gradient matmuls) captured once per shape and replayed, so a layer of T steps costs one
graph launch from Python instead of T (2T for the original GRU) kernel launches.

Opt-in: ``GPUKERNELS_RNN_CUDA_GRAPH=1`` (default 0), and only where the persistent kernel is off
(``GPUKERNELS_RNN_PERSISTENT`` 0, its default): the persistent path is already one launch per
layer, and a captured cooperative launch is untried. It has never run on a GPU.

How a call goes (``LayerGraphs.call``):

* The key is everything that changes what the call launches: which loop (forward/backward), the
  keyword options (cell, reverse, coupled, linear_before_reset, and any the entry point adds),
  every array's shape, strides, dtype and device or its absence (biases, peepholes, h0/c0 and
  the incoming gradients), whether lengths are given, and the autocast and matmul-precision
  state (cuBLAS bakes its math mode into the captured matmuls), and whether torch allows TF32
  for RNNs (the step kernels' fp32 products take TF32 or exact fp32 by it, a constant of the
  captured launches).
* Lengths enter the key by presence, not by value: the loop makes no host decision on them, the
  kernels only read the int32 lengths array, so one graph with a static lengths array serves
  every set of lengths of that shape (keying on values would capture a new graph for nearly
  every batch of packed sequences). The plain path builds that array from a host list at every
  call, a host-to-device copy a capture may not contain; here it is built before the capture
  and refreshed in place before each replay.
* Miss: static copies of the inputs, ``capture(run on the static copies)`` (on CUDA: one
  warm-up run on a side stream, as torch requires, then ``torch.cuda.graph``), an LRU entry of
  at most ``CAPACITY``; the evicted graph is reset, and its memory pool freed with it.
* Hit: the inputs copied into the static buffers, ``replay()``.
* Either way the outputs returned are clones of the graph's static outputs, which the next
  replay overwrites.

What it costs per call beyond the plain path: one device copy of every input into its static
buffer (the workspace and grad_y included in backward; weights too, since a graph reads fixed
addresses), B int32 lengths from the host when given, and one clone of every output (the
workspace included in forward). Multi-head layers need nothing of their own: ``heads`` is one
of the options (so part of the key) and the compact ``w_hh`` is copied in like any weight. The
cache is per process and assumes one thread launches layers.

The plumbing is written against ``capture(fn) -> (replayable, outputs)``, so the CPU tests drive
it with a stand-in that re-runs ``fn`` (tests/test_rnn_graph.py); only ``cuda_capture`` needs a GPU.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import rnn_persistent
from ._launch import environment_choice, rnn_tf32_allowed

ENVIRONMENT_SWITCH = "GPUKERNELS_RNN_CUDA_GRAPH"
DEFAULT_SWITCH = "0"  # opt-in until a GPU run proves it
# Graphs kept per process. A handful covers a stacked, bidirectional model's layers (forward and
# backward each) at one shape, plus a ragged last batch; each holds its own memory pool (the
# workspace and outputs of one call), so more would pin memory a training run needs.
CAPACITY = 8


def switch() -> bool:
    """Whether ``GPUKERNELS_RNN_CUDA_GRAPH`` asks for the graph path (unset or empty: the default)."""
    return environment_choice(ENVIRONMENT_SWITCH, DEFAULT_SWITCH, ("0", "1")) == "1"


# One side stream per device for every warm-up and capture: cuBLAS keeps a workspace per stream
# it has run on, so a fresh stream per capture would leave a workspace behind each time.
_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def _side_stream() -> torch.cuda.Stream:
    device = torch.cuda.current_device()
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


def cuda_capture(fn: Callable[[], tuple]) -> tuple[Any, tuple]:
    """(graph, static outputs) of ``fn`` on the current device: run once on a side stream first
    (Triton compiles its kernels and cuBLAS sets up its handle and workspace there, none of which
    a capture may do), then captured on that stream into the graph's own memory pool."""
    current, side = torch.cuda.current_stream(), _side_stream()
    side.wait_stream(current)
    with torch.cuda.stream(side):
        fn()
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        outputs = fn()
    return graph, outputs


class _StaticLengths:
    """The backend with one lengths array for every run of a captured call (see the module
    docstring); everything else is the backend's own."""

    def __init__(self, ops, array):
        self._ops, self._array = ops, array

    def __getattr__(self, name):
        return getattr(self._ops, name)

    def lengths(self, lengths, T: int, B: int):
        return self._array


@dataclass
class _Entry:
    graph: Any
    inputs: tuple  # static copies of the arrays (None where absent)
    lens: torch.Tensor  # static int32 lengths
    outputs: tuple  # the graph's static outputs: overwritten by every replay


def _signature(a) -> tuple | None:
    return None if a is None else (tuple(a.shape), a.stride(), a.dtype, a.device)


def _matmul_mode() -> tuple:
    """The matmul math switches cuBLAS reads when a matmul is captured."""
    matmul = torch.backends.cuda.matmul
    fp32 = getattr(matmul, "fp32_precision", None)  # torch >= 2.9
    return (matmul.allow_tf32 if fp32 is None else fp32, matmul.allow_fp16_reduced_precision_reduction,
            matmul.allow_bf16_reduced_precision_reduction)


def layer_key(run: Callable, arrays: tuple, lengths, options: dict) -> tuple:
    """What a captured layer call depends on besides the values of its inputs."""
    device_type = arrays[0].device.type
    autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
    return (run, tuple(_signature(a) for a in arrays), lengths is not None, tuple(sorted(options.items())),
            autocast, _matmul_mode(), rnn_tf32_allowed())


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _on(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # not FakeTensor, FunctionalTensor or other subclasses


class LayerGraphs:
    """An LRU of captured layer calls. ``capture(fn) -> (replayable, outputs)``; ``device_type``:
    the tensors it takes (cuda; the CPU tests use cpu with a stand-in capture)."""

    def __init__(self, capture: Callable = cuda_capture, capacity: int = CAPACITY, device_type: str = "cuda"):
        self.capture, self.capacity, self.device_type = capture, capacity, device_type
        self.entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.captured = self.replayed = 0  # counts, for tests and the curious

    def accepts(self, arrays: tuple) -> bool:
        """False where the call must take the plain path: tensors of another device or not plain
        tensors (fake tensors of a torch.compile trace, other subclasses), inside a compile trace,
        inside a graph capture already in progress (ours would nest), empty arrays (nothing to
        launch)."""
        present = [a for a in arrays if a is not None]
        if not present or any(type(a) not in _PLAIN or a.device.type != self.device_type for a in present):
            return False
        if torch.compiler.is_compiling() or _capturing(present[0].device):
            return False
        return all(a.numel() for a in present)

    def call(self, run: Callable, ops, arrays: tuple, lengths, options: dict) -> tuple:
        """``run(ops, *arrays, lengths=lengths, **options)`` through a graph. ``arrays[0]`` is x
        or grad_y, ``(T, B, ...)``."""
        key = layer_key(run, arrays, lengths, options)
        with torch.no_grad(), _on(arrays[0].device):
            entry = self.entries.get(key)
            if entry is None:
                entry = self._capture(run, ops, arrays, lengths, options)
                self._insert(key, entry)
            else:
                self.entries.move_to_end(key)
                for static, a in zip(entry.inputs, arrays):
                    if static is not None:
                        static.copy_(a)
                if lengths is not None:
                    entry.lens.copy_(torch.tensor(lengths, dtype=torch.int32))
            entry.graph.replay()
            self.replayed += 1
            return tuple(o.clone() if isinstance(o, torch.Tensor) else o for o in entry.outputs)

    def _capture(self, run, ops, arrays, lengths, options) -> _Entry:
        inputs = tuple(None if a is None else a.clone() for a in arrays)
        T, B = arrays[0].shape[:2]
        lens = ops.lengths(lengths, T, B)
        static_ops = _StaticLengths(ops, lens)
        graph, outputs = self.capture(lambda: run(static_ops, *inputs, lengths=lengths, **options))
        self.captured += 1
        return _Entry(graph, inputs, lens, tuple(outputs))

    def _insert(self, key: tuple, entry: _Entry) -> None:
        self.entries[key] = entry
        while len(self.entries) > self.capacity:
            _, evicted = self.entries.popitem(last=False)
            _release(evicted)

    def clear(self) -> None:
        """Frees every graph. (Eviction needs no wait: it follows a capture, which synchronises
        the device, so the evicted graph cannot be running; here one may be.)"""
        if self.device_type == "cuda" and self.entries:
            torch.cuda.synchronize()
        while self.entries:
            _release(self.entries.popitem()[1])


def _release(entry: _Entry) -> None:
    """Frees a graph now (its pool goes when nothing else holds its tensors: the outputs were
    only ever handed out as clones)."""
    reset = getattr(entry.graph, "reset", None)
    if reset is not None:
        reset()


# The process's graphs (the Triton backend's entry points use these).
GRAPHS = LayerGraphs()


def wanted(arrays: tuple) -> bool:
    """Whether this layer call goes through a graph: switched on, the persistent path off, and
    a call ``GRAPHS`` accepts. Raises ValueError for a bad switch value before anything runs."""
    return switch() and rnn_persistent._switch() == "0" and GRAPHS.accepts(arrays)


def layer_call(run: Callable, ops, arrays: tuple, lengths, options: dict) -> tuple:
    """The entry points' route: ``run(ops, *arrays, lengths=lengths, **options)``, graphed."""
    return GRAPHS.call(run, ops, arrays, lengths, options)
