"""The CuPy recurrent backend without a GPU: its entry points (gpukernels.cupy.rnn.layer_forward /
layer_backward, the functions the dispatch layer calls: the sequence loops, the matmuls, every step
launch) run with NumPy as the array module and rnn.cu built with g++ as the launcher. Only the
RawKernel call and cuBLAS are left to the GPU tests. Compared with the float64 reference for fp32,
fp16 and bf16 storage (bf16 through ml_dtypes, as CuPy holds it)."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import assert_close, assert_gradients_close
from _host_buffers import host_runner
from gpukernels.cupy import _module
from gpukernels.cupy import rnn as cupy_rnn
from gpukernels.reference import rnn as ref

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 numpy arrays come from ml_dtypes")

DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@pytest.fixture(scope="module")
def run():
    return host_runner(cupy_rnn.PROGRAM)


CASES = [("rnn_tanh", {}), ("rnn_relu", {}), ("lstm", {}), ("lstm", {"coupled": True, "peep": True}), ("gru", {}),
         ("gru", {"linear_before_reset": False})]


def _case_id(cell, options):
    return cell + "".join(f"-{k}" for k in options)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("reverse,lengths", [(False, None), (True, (5, 2, 4))], ids=["forward", "reverse-lengths"])
@pytest.mark.parametrize("cell,options", CASES, ids=[_case_id(*c) for c in CASES])
def test_layer_forward_and_backward(run, cell, options, reverse, lengths, dtype, rng):
    T, B, I, H = 5, 3, 4, 7
    G = ref.GATES[cell]
    storage = DTYPES[dtype]

    def make(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(storage)

    arrays = [make(T, B, I, scale=1.0), make(B, H), make(B, H) if cell == "lstm" else None, make(G * H, I),
              make(G * H, H), make(G * H), make(G * H), make(3, H) if options.get("peep") else None]
    projections = [make(T, B, H, scale=1.0), make(B, H, scale=1.0), make(B, H, scale=1.0) if cell == "lstm" else None]
    kw = dict(cell=cell, reverse=reverse, lengths=lengths, coupled=options.get("coupled", False),
              linear_before_reset=options.get("linear_before_reset", True))
    as64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731

    y, h_n, c_n, ws = cupy_rnn.layer_forward(*arrays, run=run, **kw)
    want = ref.layer_forward(*map(as64, arrays), **kw)
    assert y.dtype == storage
    for got, expected in zip((y, h_n, c_n), want[:3]):
        if expected is not None:
            assert_close(got.astype(np.float64), expected, dtype, "reduction")
    if lengths is not None:
        assert np.all(y[2:, 1].astype(np.float32) == 0)

    grads = cupy_rnn.layer_backward(*projections, ws, *arrays, run=run, **kw)
    expected = ref.layer_backward(*map(as64, projections), want[3], *map(as64, arrays), **kw)
    assert_gradients_close(grads, expected, dtype)


def test_one_step_with_a_ragged_batch_and_no_biases(run, rng):
    B, I, H = 1, 2, 1  # the smallest shapes: one element per step
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((1, B, I), (B, H), (B, H), (4 * H, I), (4 * H, H))]
    y, h_n, c_n, _ = cupy_rnn.layer_forward(*arrays, None, None, None, run=run, cell="lstm")
    want = ref.layer_forward(*(a.astype(np.float64) for a in arrays), None, None, None, cell="lstm")
    for got, expected in zip((y, h_n, c_n), want[:3]):
        assert_close(got, expected, "float32", "reduction")


def test_more_elements_than_threads_loop_in_the_kernel(run, monkeypatch, rng):
    monkeypatch.setattr(_module, "_MAX_BLOCKS", 1)  # 256 threads for the 3 * 100 elements of a step
    T, B, I, H = 2, 3, 5, 100
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.3 for s in ((T, B, I), (B, H), (3 * H, I), (3 * H, H),
                                                                       (3 * H,), (3 * H,))]
    x, h0, w_ih, w_hh, b_ih, b_hh = arrays
    y, h_n, _, _ = cupy_rnn.layer_forward(x, h0, None, w_ih, w_hh, b_ih, b_hh, None, run=run, cell="gru")
    want = ref.layer_forward(*(a.astype(np.float64) for a in (x, h0)), None,
                             *(a.astype(np.float64) for a in (w_ih, w_hh, b_ih, b_hh)), None, cell="gru")
    assert_close(y, want[0], "float32", "reduction")
    assert_close(h_n, want[1], "float32", "reduction")


def test_step_launch_packs_the_kernel_widths():
    x = np.empty((2, 3, 4), np.float16)
    spec = cupy_rnn.step_launch("forward", cupy_rnn.LSTM, x, *([6] * len(cupy_rnn.FORWARD_ARGS)))
    assert spec.kernel == "rnn_forward_step<1, gk::half>" and spec.grid == (1,) and spec.block == (256,)
    assert [type(a).__name__ for a in spec.args[:3]] == ["int64", "int64", "int32"]
    with pytest.raises(ValueError):  # one argument short
        cupy_rnn.step_launch("backward", cupy_rnn.GRU, x, *([6] * (len(cupy_rnn.BACKWARD_ARGS) - 1)))
