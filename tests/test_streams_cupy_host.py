"""Which stream the CuPy backend runs on, proven without a GPU: when its arrays view torch's
memory (how the dispatch layer hands torch tensors over) and torch's CUDA is in use, every entry
point of every family runs all its work (each kernel launch, each array-module call: allocations,
copies, the matmuls that are cuBLAS on the GPU) inside ``cupy.cuda.ExternalStream`` of
``torch.cuda.current_stream()``; with CuPy's own arrays it leaves CuPy's current stream alone.
Torch's stream and CuPy's stream context are stand-ins here; the kernels run for real (g++)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _host_buffers import PoisonedNumpy, host_program
from gpukernels.cupy import _stream, activation, attention, optim, rnn, softmax
from gpukernels.cupy._module import Runner

cupy = pytest.importorskip("cupy")

TORCH_STREAM = 0x5EED  # the handle torch.cuda.current_stream() reports in these tests
_entered: list[tuple[int, int]] = []  # the (device, stream) contexts open right now


class FakeExternalStream:
    def __init__(self, ptr, device_id=-1):
        self.ptr, self.device_id = ptr, device_id

    def __enter__(self):
        _entered.append((self.device_id, self.ptr))

    def __exit__(self, *exc):
        _entered.pop()


class FakeDevice:
    def __init__(self, device=None):
        self.id = device

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def current_stream():
    return _entered[-1][1] if _entered else None


class Recording:
    """An array module that logs the stream current at each of its calls."""

    __name__ = "numpy"

    def __init__(self, xp, log):
        self._xp, self._log = xp, log

    def __getattr__(self, name):
        attr = getattr(self._xp, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def recorded(*args, **kwargs):
            self._log.append((name, current_stream()))
            return attr(*args, **kwargs)

        return recorded


@pytest.fixture
def torch_side_stream(monkeypatch):
    """torch's CUDA in use, its current stream TORCH_STREAM; CuPy's stream context recorded."""
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=TORCH_STREAM))
    monkeypatch.setattr(cupy.cuda, "ExternalStream", FakeExternalStream)
    monkeypatch.setattr(cupy.cuda, "Device", FakeDevice)
    _entered.clear()


def _runner(module, log):
    program = host_program(module.PROGRAM)

    def launch(spec):
        log.append((spec.kernel, current_stream()))
        program.launch(spec)

    return Runner(Recording(PoisonedNumpy(), log), launch)


def _borrowed_cupy_array():
    """A cupy array over memory CuPy did not allocate, as cupy.from_dlpack makes of a torch tensor."""
    memory = cupy.cuda.memory.UnownedMemory(0x10000, 64, None, device_id=0)
    return cupy.ndarray((4,), cupy.float32, memptr=cupy.cuda.memory.MemoryPointer(memory, 0))


class _CudaLooking(torch.Tensor):
    """A CPU tensor that reports a CUDA device: what the dispatch layer's own torch inputs look like."""

    @property
    def device(self):
        return torch.device("cuda", 1)


def test_torch_memory_is_recognised():
    assert _stream.torch_memory_device(_borrowed_cupy_array()) == 0
    assert _stream.torch_memory_device(torch.ones(3).as_subclass(_CudaLooking)) == 1
    assert _stream.torch_memory_device(np.ones(3)) is None
    assert _stream.torch_memory_device(torch.ones(3)) is None  # a CPU tensor
    assert _stream.torch_memory_device(None) is None


def test_torch_stream_is_picked_only_for_borrowed_memory_with_torch_cuda_in_use(torch_side_stream, monkeypatch):
    borrowed = _borrowed_cupy_array()
    assert _stream.torch_stream([np.ones(2), borrowed]) == (0, TORCH_STREAM)
    assert _stream.torch_stream([[None, borrowed]]) == (0, TORCH_STREAM)  # optimizer lists
    assert _stream.torch_stream([torch.ones(1).as_subclass(_CudaLooking)]) == (1, TORCH_STREAM)
    assert _stream.torch_stream([np.ones(2), 3.0, None]) is None
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert _stream.torch_stream([borrowed]) is None


def _rng_arrays(rng, *shapes, dtype=np.float32):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _every_entry_point(rng, runners):
    """Each entry point of each family on small inputs: (name, thunk)."""
    x, dy = _rng_arrays(rng, (3, 40), (3, 40))
    mask, lengths = rng.random((3, 40)) > 0.3, np.array([40, 3, 0], np.int64)
    p, g, m, v = _rng_arrays(rng, (300,), (300,), (300,), (300,))
    v = np.abs(v)
    q, k, vv, do = _rng_arrays(rng, (2, 5, 8), (2, 7, 8), (2, 7, 8), (2, 5, 8))
    w_q, w_k, va = _rng_arrays(rng, (6, 8), (6, 8), (6,))
    T, B, I, H = 3, 2, 4, 5
    layer = _rng_arrays(rng, (T, B, I), (B, H), (B, H), (4 * H, I), (4 * H, H), (4 * H,), (4 * H,))
    act, soft, opt, rec, s = (runners[f] for f in ("activation", "softmax", "optim", "rnn", "attention"))
    adam = dict(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, amsgrad=False, maximize=False,
                decoupled_weight_decay=True)
    sgd = dict(first_step=[False], lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True,
               maximize=False)
    rms = dict(lr=0.1, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.5, centered=True, maximize=False)
    y, h_n, c_n, ws = rnn.layer_forward(*layer, None, cell="lstm", run=rec)
    weights = attention.attention_forward(q, k, vv, run=s, kind="additive", w_query=w_q, w_keys=w_k, v=va)[1]
    return [
        ("activation.forward", lambda: activation.forward(x, "gelu", run=act)),
        ("activation.backward", lambda: activation.backward(dy, x, "gelu", run=act)),
        ("softmax.softmax", lambda: softmax.softmax(x, 1, run=soft)),
        ("softmax.log_softmax", lambda: softmax.log_softmax(x, 0, run=soft)),
        ("softmax.masked_softmax", lambda: softmax.masked_softmax(x, mask, lengths, 1, run=soft)),
        ("softmax.softmax_backward", lambda: softmax.softmax_backward(dy, x, 1, run=soft)),
        ("softmax.log_softmax_backward", lambda: softmax.log_softmax_backward(dy, x, 1, run=soft)),
        ("optim.adam_step", lambda: optim.adam_step([p], [g], [m], [v], None, None, None, None, 2.0, run=opt, **adam)),
        ("optim.sgd_step", lambda: optim.sgd_step([p], [g], [m], None, None, None, run=opt, **sgd)),
        ("optim.rmsprop_step", lambda: optim.rmsprop_step([p], [g], [v], [m], [g.copy()], None, None, None, run=opt,
                                                          **rms)),
        ("optim.clip_grad_norm_", lambda: optim.clip_grad_norm_([g], max_norm=1.0, norm_type=2.0,
                                                                error_if_nonfinite=True, run=opt)),
        ("optim.clip_grad_value_", lambda: optim.clip_grad_value_([g], clip_value=0.5, run=opt)),
        ("rnn.layer_forward", lambda: rnn.layer_forward(*layer, None, cell="lstm", run=rec)),
        ("rnn.layer_backward", lambda: rnn.layer_backward(y, h_n, c_n, ws, *layer, None, cell="lstm", run=rec)),
        ("attention.sdpa_forward", lambda: attention.sdpa_forward(q, k, vv, is_causal=True, run=s)),
        ("attention.sdpa_backward", lambda: attention.sdpa_backward(do, q, k, vv, is_causal=True, run=s)),
        ("attention.attention_scores", lambda: attention.attention_scores(q, k, kind="scaled_dot", run=s)),
        ("attention.attention_forward", lambda: attention.attention_forward(q, k, vv, mask[:2, :7], run=s)),
        ("attention.attention_scores_backward",
         lambda: attention.attention_scores_backward(weights, q, k, kind="additive", w_query=w_q, w_keys=w_k, v=va,
                                                     run=s)),
        ("attention.attention_backward",
         lambda: attention.attention_backward(do, weights, q, k, vv, weights, run=s)),
    ]


FAMILIES = {"activation": activation, "softmax": softmax, "optim": optim, "rnn": rnn, "attention": attention}


def test_with_torch_memory_every_entry_point_runs_on_torchs_stream(torch_side_stream, monkeypatch, rng):
    # numpy arrays stand in for cupy views of torch tensors (the kernels then run for real on the CPU)
    monkeypatch.setattr(_stream, "torch_memory_device", lambda a: 0 if isinstance(a, np.ndarray) else None)
    log: list = []
    runners = {name: _runner(module, log) for name, module in FAMILIES.items()}
    for name, call in _every_entry_point(rng, runners):
        log.clear()
        call()
        assert log, f"{name} did nothing"
        off = [what for what, stream in log if stream != TORCH_STREAM]
        assert not off, f"{name} ran {off[:5]} outside torch's current stream"
        assert not _entered, f"{name} left a stream context open"


def test_with_cupys_own_arrays_no_stream_is_entered(torch_side_stream, rng):
    log: list = []
    runners = {name: _runner(module, log) for name, module in FAMILIES.items()}
    for name, call in _every_entry_point(rng, runners):
        log.clear()
        call()
        assert log and all(stream is None for _, stream in log), name


def test_torchs_default_stream_is_cupys_null_stream(torch_side_stream, monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(cupy.cuda, "Stream", SimpleNamespace(null=FakeExternalStream(0)))
    with _stream.callers_stream([_borrowed_cupy_array()]):
        assert _entered == [(-1, 0)]
    assert not _entered
