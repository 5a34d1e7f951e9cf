"""On a CUDA GPU (skipped elsewhere): the CuPy backend given torch tensors runs on torch's current
stream. Under ``torch.cuda.stream(side)``, with the side stream kept busy so that work on any other
stream would overtake it, an activation, softmax, an in-place AdamW step, an LSTM layer and attention
(SDPA and additive) on the cupy backend run every kernel launch and every cuBLAS matmul on the side
stream, and their results (read on the side stream right after) match the float64 reference; cupy
arrays of CuPy's own keep CuPy's current stream; and a cupy-backend op on a zero-copy view of a
torch tensor is captured in a torch CUDA graph and replays on new input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpukernels as gk
from _helpers import as_float64, assert_close
from gpukernels.cupy import _module
from gpukernels.cupy import activation as cupy_activation
from gpukernels.reference import activation as ref_activation
from gpukernels.reference import attention as ref_attention
from gpukernels.reference import optim as ref_optim
from gpukernels.reference import rnn as ref_rnn
from gpukernels.reference import softmax as ref_softmax

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")

BUSY_CYCLES = 20_000_000  # about 10 ms of the side stream spinning before each op


@pytest.fixture
def streams_used(monkeypatch):
    """(kernel or 'matmul', CuPy's current stream) of every launch and cuBLAS call from here on."""
    used: list[tuple[str, int]] = []
    real_kernel, real_matmul = _module.kernel, cupy.matmul

    def spying_kernel(program, name):
        function = real_kernel(program, name)

        def launch(grid, block, args):
            used.append((name, cupy.cuda.get_current_stream().ptr))
            function(grid, block, args)

        return launch

    def spying_matmul(*args, **kwargs):
        used.append(("matmul", cupy.cuda.get_current_stream().ptr))
        return real_matmul(*args, **kwargs)

    monkeypatch.setattr(_module, "kernel", spying_kernel)
    monkeypatch.setattr(cupy, "matmul", spying_matmul)
    return used


def _cuda(rng, *shape, positive=False):
    values = rng.standard_normal(shape)
    return torch.from_numpy(np.abs(values) if positive else values).float().cuda()


def _on_a_busy_side_stream(op):
    """``op()`` on the cupy backend inside torch.cuda.stream(side), the side stream busy first;
    returns (side stream, what op returned, cloned on the side stream right after)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # the inputs were made on the current stream
    with torch.cuda.stream(side), gk.use_backend("cupy"):
        torch.cuda._sleep(BUSY_CYCLES)
        result = op()
        seen = _clone(result)  # read on the side stream: ordered after op's kernels only if they ran there
    torch.cuda.synchronize()
    return side, seen


def _clone(result):
    if isinstance(result, torch.Tensor):
        return result.clone()
    if isinstance(result, (tuple, list)):
        return type(result)(_clone(r) for r in result)
    return result


def _assert_all_on(used, stream, what):
    assert used, f"{what}: no launch seen"
    off = [name for name, ptr in used if ptr != stream.cuda_stream]
    assert not off, f"{what}: {off[:5]} ran off torch's current stream"


def test_activation_and_softmax_run_on_torchs_stream(streams_used, rng):
    x, dy = _cuda(rng, 3, 1000), _cuda(rng, 3, 1000)
    mask = torch.from_numpy(rng.random((3, 1000)) > 0.3).cuda()
    side, (y, dx, p, masked) = _on_a_busy_side_stream(
        lambda: (gk.gelu(x), gk.gelu_backward(dy, x), gk.softmax(x, dim=-1), gk.masked_softmax(x, mask)))
    _assert_all_on(streams_used, side, "activation and softmax")
    x64, dy64 = as_float64(x), as_float64(dy)
    assert_close(y, ref_activation.forward(x64, "gelu"), "float32")
    assert_close(dx, ref_activation.backward(dy64, x64, "gelu"), "float32")
    assert_close(p, ref_softmax.softmax(x64, -1), "float32", "reduction")
    assert_close(masked, ref_softmax.masked_softmax(x64, as_float64(mask) != 0, None, -1), "float32", "reduction")


def test_an_in_place_adamw_step_is_ordered_on_torchs_stream(streams_used, rng):
    sizes = (1000, 4097, 2**20 + 3)
    params, grads = [_cuda(rng, n) for n in sizes], [_cuda(rng, n) for n in sizes]
    m, v = [_cuda(rng, n) for n in sizes], [_cuda(rng, n, positive=True) for n in sizes]
    p64, g64, m64, v64 = ([as_float64(t) for t in ts] for ts in (params, grads, m, v))
    hyper = dict(lr=0.01, eps=1e-8, weight_decay=0.1)
    ref_optim.adam_step(p64, g64, m64, v64, None, None, None, None, 3.0, beta1=0.9, beta2=0.99, amsgrad=False,
                        maximize=False, decoupled_weight_decay=True, **hyper)

    def step():
        gk.adam_step(params, grads, m, v, step=3.0, betas=(0.9, 0.99), decoupled_weight_decay=True, **hyper)
        return params + m + v

    side, seen = _on_a_busy_side_stream(step)
    _assert_all_on(streams_used, side, "adam_step")
    for got, want in zip(seen, p64 + m64 + v64):
        assert_close(got, want, "float32")


def test_an_lstm_layer_forward_and_backward_run_on_torchs_stream(streams_used, rng):
    T, B, I, H = 6, 3, 8, 16
    x, h0, c0 = _cuda(rng, T, B, I), _cuda(rng, B, H), _cuda(rng, B, H)
    weights = [_cuda(rng, 4 * H, I) * 0.3, _cuda(rng, 4 * H, H) * 0.3, _cuda(rng, 4 * H), _cuda(rng, 4 * H)]
    grad_y = _cuda(rng, T, B, H)
    side, (out, grads) = _on_a_busy_side_stream(
        lambda: (gk.lstm_layer(x, h0, c0, *weights), gk.lstm_layer_backward(grad_y, None, None, x, h0, c0, *weights)))
    _assert_all_on(streams_used, side, "lstm layer")
    arrays64 = [as_float64(t) for t in (x, h0, c0, *weights)]
    want = ref_rnn.layer_forward(*arrays64, None, cell="lstm")
    for got, expected in zip(out, want[:3]):
        assert_close(got, expected, "float32", "reduction")
    want_grads = ref_rnn.layer_backward(as_float64(grad_y), None, None, want[3], *arrays64, None, cell="lstm")
    for got, expected in zip(grads, want_grads):
        if expected is not None:
            assert_close(got, expected, "float32", "reduction")


def test_attention_runs_on_torchs_stream(streams_used, rng):
    q, k, v = _cuda(rng, 2, 4, 33, 64), _cuda(rng, 2, 4, 47, 64), _cuda(rng, 2, 4, 47, 64)
    query, keys, values = _cuda(rng, 2, 5, 12), _cuda(rng, 2, 9, 10), _cuda(rng, 2, 9, 7)
    w_query, w_keys, va = _cuda(rng, 6, 12), _cuda(rng, 6, 10), _cuda(rng, 6)
    side, (out, (context, weights)) = _on_a_busy_side_stream(lambda: (
        gk.scaled_dot_product_attention(q, k, v, is_causal=True),
        gk.attention(query, keys, values, kind="additive", w_query=w_query, w_keys=w_keys, v=va)))
    _assert_all_on(streams_used, side, "attention")
    assert any(name == "matmul" for name, _ in streams_used)
    assert_close(out, ref_attention.sdpa_forward(as_float64(q), as_float64(k), as_float64(v), is_causal=True)[0],
                 "float32", "reduction")
    want_context, want_weights = ref_attention.attention_forward(
        *(as_float64(t) for t in (query, keys, values)), kind="additive", w_query=as_float64(w_query),
        w_keys=as_float64(w_keys), v=as_float64(va))
    assert_close(context, want_context, "float32", "reduction")
    assert_close(weights, want_weights, "float32", "reduction")


def test_cupys_own_arrays_keep_cupys_current_stream(streams_used, rng):
    x = cupy.asarray(rng.standard_normal(5000).astype(np.float32))
    stream = cupy.cuda.Stream()  # blocking: ordered after the upload on the null stream
    with stream:
        y = gk.gelu(x)
    stream.synchronize()
    assert streams_used and all(ptr == stream.ptr for _, ptr in streams_used)
    assert_close(y, ref_activation.forward(as_float64(x), "gelu"), "float32")


def test_a_cupy_op_on_a_torch_tensor_is_captured_in_a_cuda_graph(rng):
    x = torch.from_numpy(rng.standard_normal(4099).astype(np.float32)).cuda()
    view = cupy.from_dlpack(x)  # the zero-copy view the dispatch layer makes of a torch tensor
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # warm-up: compiles, and leaves a block of the output's size in CuPy's pool for this stream,
        # so the capture allocates without cudaMalloc
        warm = cupy_activation.forward(view, "gelu")
        del warm
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        captured = cupy_activation.forward(view, "gelu")
    new = rng.standard_normal(4099).astype(np.float32)
    x.copy_(torch.from_numpy(new))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(captured, ref_activation.forward(new.astype(np.float64), "gelu"), "float32")


def test_gk_op_with_the_cupy_backend_is_captured_in_a_cuda_graph(rng):
    """Through the dispatch layer: the torch -> cupy view, the op and the cupy -> torch result all
    run on torch's capturing stream, so DLPack records no cross-stream event during capture."""
    x = torch.from_numpy(rng.standard_normal(4099).astype(np.float32)).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with gk.use_backend("cupy"):
        with torch.cuda.stream(side):
            warm = gk.gelu(x)  # compiles, and leaves a block of this size in CuPy's pool for the stream
            del warm
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            captured = gk.gelu(x)
    new = rng.standard_normal(4099).astype(np.float32)
    x.copy_(torch.from_numpy(new))
    graph.replay()
    torch.cuda.synchronize()
    assert isinstance(captured, torch.Tensor) and captured.device == x.device
    assert_close(captured.cpu().numpy(), ref_activation.forward(new.astype(np.float64), "gelu"), "float32")
