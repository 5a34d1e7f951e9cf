"""The CuPy recurrent backend without a GPU: its own host code (gpukernels.cupy.rnn.run_forward /
run_backward, the sequence loops and the matmuls) runs with NumPy as the array module, and each
step's kernel body (rnn.cuh) runs through the g++-built harness tests/host/rnn_host.cpp. Only the
CUDA launch and the grid-stride loop are left to the GPU tests. Compared with the float64
reference for fp32, fp16 and bf16 storage (bf16 through ml_dtypes, as CuPy holds it)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from _helpers import assert_close
from gpukernels.cupy import rnn as cupy_rnn
from gpukernels.reference import rnn as ref
from gpukernels.tools.verify.host import build

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 numpy arrays come from ml_dtypes")

SHIM = Path(__file__).parent / "host" / "rnn_host.cpp"
DTYPES = {"float32": (np.float32, 0), "float16": (np.float16, 1), "bfloat16": (ml_dtypes.bfloat16, 2)}
CTYPES = {"i64": ctypes.c_longlong, "i32": ctypes.c_int}


@pytest.fixture(scope="module")
def step():
    library = build(SHIM)
    functions = {"forward": (library.gk_rnn_forward_step, cupy_rnn.FORWARD_ARGS),
                 "backward": (library.gk_rnn_backward_step, cupy_rnn.BACKWARD_ARGS)}

    def launch(direction, code, storage, *args):
        function, types = functions[direction]
        converted = [ctypes.c_void_p(a.ctypes.data) if t == "p" else CTYPES[t](int(a)) for t, a in zip(types, args)]
        assert function(code, DTYPES[str(storage.dtype)][1], *converted) == 0

    return launch


CASES = [("rnn_tanh", {}), ("rnn_relu", {}), ("lstm", {}), ("lstm", {"coupled": True, "peep": True}), ("gru", {}),
         ("gru", {"linear_before_reset": False})]


def _case_id(cell, options):
    return cell + "".join(f"-{k}" for k in options)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("reverse,lengths", [(False, None), (True, (5, 2, 4))], ids=["forward", "reverse-lengths"])
@pytest.mark.parametrize("cell,options", CASES, ids=[_case_id(*c) for c in CASES])
def test_layer_forward_and_backward(step, cell, options, reverse, lengths, dtype, rng):
    T, B, I, H = 5, 3, 4, 7
    G = ref.GATES[cell]
    storage = DTYPES[dtype][0]

    def make(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(storage)

    arrays = [make(T, B, I, scale=1.0), make(B, H), make(B, H) if cell == "lstm" else None, make(G * H, I),
              make(G * H, H), make(G * H), make(G * H), make(3, H) if options.get("peep") else None]
    projections = [make(T, B, H, scale=1.0), make(B, H, scale=1.0), make(B, H, scale=1.0) if cell == "lstm" else None]
    kw = dict(cell=cell, reverse=reverse, lengths=lengths, coupled=options.get("coupled", False),
              linear_before_reset=options.get("linear_before_reset", True))
    as64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731

    y, h_n, c_n, ws = cupy_rnn.run_forward(np, step, *arrays, **kw)
    want = ref.layer_forward(*map(as64, arrays), **kw)
    assert y.dtype == storage
    for got, expected in zip((y, h_n, c_n), want[:3]):
        if expected is not None:
            assert_close(got.astype(np.float64), expected, dtype, "reduction")
    if lengths is not None:
        assert np.all(y[2:, 1].astype(np.float32) == 0)

    grads = cupy_rnn.run_backward(np, step, *projections, ws, *arrays, **kw)
    expected = ref.layer_backward(*map(as64, projections), want[3], *map(as64, arrays), **kw)
    for index, (got, exp) in enumerate(zip(grads, expected)):
        if exp is None:
            assert got is None, f"gradient {index}"
            continue
        try:
            assert_close(np.asarray(got, dtype=np.float64), exp, dtype, "reduction")
        except AssertionError as error:
            raise AssertionError(f"gradient {index}: {error}") from None


def test_one_step_with_a_ragged_batch_and_no_biases(step, rng):
    B, I, H = 1, 2, 1  # the smallest shapes: one element per step
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((1, B, I), (B, H), (B, H), (4 * H, I), (4 * H, H))]
    y, h_n, c_n, _ = cupy_rnn.run_forward(np, step, *arrays, None, None, None, cell="lstm")
    want = ref.layer_forward(*(a.astype(np.float64) for a in arrays), None, None, None, cell="lstm")
    for got, expected in zip((y, h_n, c_n), want[:3]):
        assert_close(got, expected, "float32", "reduction")
