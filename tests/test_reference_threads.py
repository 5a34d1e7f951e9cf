"""The CPU reference's thread pool (reference/_parallel.py) and multi-tensor batching
(reference/_multi_tensor.py): the same bits for every thread count, chunked results equal to the
formula applied whole, GPUKERNELS_NUM_THREADS, errors and NumPy's error state inside the pool,
and optimizer steps over flat buffers, packed small tensors and split large ones."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

from gpukernels.reference import _multi_tensor, _parallel
from gpukernels.reference import activation as act
from gpukernels.reference import attention as attn
from gpukernels.reference import optim
from gpukernels.reference import softmax as sm

THREADS = (1, 2, 3)
ACTS = ("sigmoid", "tanh", "relu", "leaky_relu", "gelu", "gelu_tanh")


def _bits(a: np.ndarray) -> np.ndarray:
    """The array's bytes: equal bits, NaN payloads and signed zeros included."""
    return np.ascontiguousarray(a).view(np.uint8)


def _same_bits(results: list) -> None:
    first = results[0]
    for other in results[1:]:
        assert len(other) == len(first)
        for a, b in zip(first, other):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(_bits(a), _bits(b)), "the result changed with the thread count"


def _per_thread_count(monkeypatch, compute) -> list:
    results = []
    for threads in THREADS:
        monkeypatch.setenv("GPUKERNELS_NUM_THREADS", str(threads))
        assert _parallel.num_threads() == threads
        results.append([np.asarray(r) for r in compute()])
    return results


def _specials(x: np.ndarray) -> np.ndarray:
    x.reshape(-1)[:6] = [np.nan, np.inf, -np.inf, 0.0, -0.0, -30.0]
    return x


# ---------------------------------------------------------------------------------------------
# The same bits for 1, 2 and 3 threads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ACTS)
def test_activations_same_bits_for_every_thread_count(name, dtype, monkeypatch, rng):
    n = 400_003  # several uneven chunks in either dtype
    x = _specials((rng.standard_normal(n) * 4).astype(dtype))
    dy = rng.standard_normal(n).astype(dtype)
    saved = act.forward(x, name, 0.1) if name in ("sigmoid", "tanh") else x
    _same_bits(_per_thread_count(monkeypatch, lambda: (act.forward(x, name, 0.1),
                                                       act.backward(dy, saved, name, 0.1))))


@pytest.mark.parametrize("dim", [0, 1])
def test_softmax_family_same_bits_for_every_thread_count(dim, monkeypatch, rng):
    x = (rng.standard_normal((1031, 517)) * 3).astype(np.float32)
    x[5] = -np.inf  # a row (or column) with nothing finite in it
    dy = rng.standard_normal(x.shape).astype(np.float32)
    keep = rng.random(x.shape) > 0.3

    def compute():
        y, ly = sm.softmax(x, dim), sm.log_softmax(x, dim)
        return (y, ly, sm.masked_softmax(x, keep, None, dim), sm.softmax_backward(dy, y, dim),
                sm.log_softmax_backward(dy, ly, dim))

    _same_bits(_per_thread_count(monkeypatch, compute))


# blocks of query rows of one head (the causal diagonal and a mask cut into rows); blocks of
# whole heads (a mask with a head axis, grouped-query heads)
@pytest.mark.parametrize("q_shape,kv_heads,mask_shape,causal", [((1, 3, 301, 16), 3, (301, 301), True),
                                                                ((2, 4, 160, 16), 2, (2, 1, 160, 170), False)])
def test_attention_same_bits_for_every_thread_count(q_shape, kv_heads, mask_shape, causal, monkeypatch, rng):
    B, H, L, E = q_shape
    S = mask_shape[-1]
    q, dout = (rng.standard_normal(q_shape).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((B, kv_heads, S, E)).astype(np.float32) for _ in range(2))
    mask = rng.random(mask_shape) > 0.2
    groups = H // kv_heads

    def compute():
        out, lse = attn.sdpa_forward(q, k, v, mask, is_causal=causal, groups=groups)
        return (out, lse, *attn.sdpa_backward(dout, q, k, v, mask, out, lse, is_causal=causal, groups=groups))

    _same_bits(_per_thread_count(monkeypatch, compute))


def test_additive_attention_same_bits_for_every_thread_count(monkeypatch, rng):
    B, Tq, Tk, D, A = 9, 2, 200, 48, 40  # batch blocks of one row, the shares summed in block order
    query, keys, values = (rng.standard_normal(shape).astype(np.float32) for shape in
                           ((B, Tq, D), (B, Tk, D), (B, Tk, D)))
    w_query, w_keys = (rng.standard_normal((A, D)).astype(np.float32) * 0.2 for _ in range(2))
    v = rng.standard_normal(A).astype(np.float32)
    grad_context = rng.standard_normal((B, Tq, D)).astype(np.float32)
    mask = rng.random((B, Tk)) > 0.2

    def compute():
        context, weights = attn.attention_forward(query, keys, values, mask, w_query=w_query, w_keys=w_keys, v=v,
                                                  kind="additive")
        grads = attn.attention_backward(grad_context, None, query, keys, values, weights, w_query=w_query,
                                        w_keys=w_keys, v=v, kind="additive")
        return (context, weights, *(g for g in grads if g is not None))

    _same_bits(_per_thread_count(monkeypatch, compute))


def _optimizer_state(rng, sizes, dtype=np.float32):
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
    m = [rng.standard_normal(n).astype(dtype) for n in sizes]
    v = [np.abs(rng.standard_normal(n)).astype(dtype) for n in sizes]
    return params, grads, m, v


# large tensors split into chunks, small ones packed, an empty one, and an odd size
MIXED_SIZES = (300_007, 5, 4001, 0, 9000, 70_001, 1, 4001, 123_457)


def test_optimizer_and_clipping_same_bits_for_every_thread_count(monkeypatch, rng):
    start = _optimizer_state(rng, MIXED_SIZES)

    def compute():
        p, g, m, v = ([a.copy() for a in arrays] for arrays in start)
        optim.adam_step(p, g, m, v, None, None, None, None, 3.0, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                        weight_decay=0.1, amsgrad=False, maximize=False, decoupled_weight_decay=True)
        norm = optim.clip_grad_norm_(g, max_norm=1.0, norm_type=2.0)  # sums chunk by chunk
        return (*p, *m, *v, *g, norm, optim.grad_norm(m, norm_type=3.0))

    _same_bits(_per_thread_count(monkeypatch, compute))


# ---------------------------------------------------------------------------------------------
# Chunking itself


@pytest.mark.parametrize("size", [0, 1, 131_071, 131_072, 1_000_003])
def test_elementwise_equals_the_formula_applied_whole(size, rng):
    x = rng.standard_normal(size).astype(np.float32)
    y = rng.standard_normal(size).astype(np.float32)

    def formula(x, y, out):
        np.multiply(x, y, out=out)
        out += np.exp(x)

    whole = np.empty_like(x)
    formula(x, y, whole)
    chunked = _parallel.elementwise(formula, x, y)
    assert np.array_equal(_bits(chunked), _bits(whole))


def test_along_splits_another_axis_into_whole_lines(rng):
    x = rng.standard_normal((3, 700, 257)).astype(np.float32)
    seen = []

    def formula(x, out):
        seen.append(x.shape)
        np.copyto(out, x - x.max(axis=-1, keepdims=True))

    out = _parallel.along(formula, x, axis=2)
    assert len(seen) > 1 and all(shape[0] == 3 and shape[2] == 257 for shape in seen)  # split along the 700
    assert sum(shape[1] for shape in seen) == 700
    np.testing.assert_array_equal(out, x - x.max(axis=-1, keepdims=True))


def test_small_arrays_stay_on_the_calling_thread(monkeypatch, rng):
    monkeypatch.setenv("GPUKERNELS_NUM_THREADS", "4")
    threads = set()

    def formula(x, out):
        threads.add(threading.get_ident())
        np.copyto(out, x)

    _parallel.elementwise(formula, rng.standard_normal(1000).astype(np.float32))
    assert threads == {threading.get_ident()}


def test_large_arrays_run_on_several_threads_at_once(monkeypatch, rng):
    monkeypatch.setenv("GPUKERNELS_NUM_THREADS", "4")
    both_inside = threading.Barrier(2, timeout=10)  # broken (an error) unless two chunks overlap
    lock = threading.Lock()
    first_two = []

    def formula(x, out):
        with lock:
            first = len(first_two) < 2
            if first:
                first_two.append(threading.get_ident())
        if first:
            both_inside.wait()
        np.copyto(out, x)

    x = rng.standard_normal(2_000_000).astype(np.float32)
    np.testing.assert_array_equal(_parallel.elementwise(formula, x), x)
    assert len(set(first_two)) == 2


# ---------------------------------------------------------------------------------------------
# Matrix products: row blocks on the pool, BLAS on one thread


@pytest.mark.parametrize("shape", [(5, 7, 3), (300, 200, 150), (1031, 257, 129)], ids=lambda s: "M{}-K{}-N{}".format(*s))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_same_bits_for_every_thread_count_and_close_to_numpys(shape, dtype, monkeypatch, rng):
    M, K, N = shape
    a, b = rng.standard_normal((M, K)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
    at = np.asfortranarray(a)  # a transposed operand's rows (linear's dz.T) are not contiguous
    results = _per_thread_count(monkeypatch, lambda: [_parallel.matmul(a, b), _parallel.matmul(at, b)])
    _same_bits(results)
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got in results[0]:
        assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want)


def test_matmul_splits_large_products_into_row_blocks_on_one_blas_thread(monkeypatch, rng):
    threads = _parallel.openblas_threads()
    seen = []
    real_run = _parallel.run
    monkeypatch.setattr(_parallel, "run", lambda tasks: (seen.append(
        (len(tasks), threads[0]() if threads else 1)), real_run(tasks))[1])
    a, b = rng.standard_normal((512, 256)).astype(np.float32), rng.standard_normal((256, 128)).astype(np.float32)
    _parallel.matmul(a, b)  # 16.8M multiply-adds: split
    _parallel.matmul(a[:8], b)  # small: one call, no tasks
    assert seen == [(_parallel.MATMUL_BLOCKS, 1)]


def test_linear_and_its_cross_entropy_same_bits_for_every_thread_count(monkeypatch, rng):
    from gpukernels.reference import cross_entropy as ce
    from gpukernels.reference import linear

    x = rng.standard_normal((300, 130)).astype(np.float32)
    w = rng.standard_normal((170, 130)).astype(np.float32) * 0.1
    b = rng.standard_normal(170).astype(np.float32)
    dy = rng.standard_normal((300, 170)).astype(np.float32)
    target = rng.integers(0, 170, 300)

    def compute():
        y, saved = linear.forward(x, w, b, "gelu", save=True)
        grads = linear.backward(dy, x, w, saved, "gelu")
        loss, *ce_grads = ce.linear_cross_entropy_rows(x, w, target, b, np.float32(1.0), reduction="mean",
                                                       compute_grad=True, chunk_size=128)
        return [y, *grads, loss, *ce_grads]

    _same_bits(_per_thread_count(monkeypatch, compute))


_BLAS_SPIN_SCRIPT = """
import os, sys, time
import numpy as np
from gpukernels.reference import _parallel, linear
from gpukernels.reference import cross_entropy as ce
if _parallel.openblas_threads() is None:
    print("no-openblas"); sys.exit()
_parallel.openblas_threads()[1](2)
rng = np.random.default_rng(0)
x, w = rng.standard_normal((1024, 512)).astype(np.float32), rng.standard_normal((512, 512)).astype(np.float32)
y, _ = linear.forward(x, w, None)
linear.backward(y, x, w, None)
ce.linear_cross_entropy_rows(x, w, rng.integers(0, 512, 1024), None, np.float32(1.0), reduction="mean",
                             compute_grad=True)
if "--numpy" in sys.argv:
    x @ w  # what NumPy's own product does: the control that shows the measurement works
def cpu_seconds():
    tick, total = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir("/proc/self/task"):
        if tid != str(os.getpid()):
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            total[tid] = (int(fields[11]) + int(fields[12])) / tick
    return total
before = cpu_seconds()
time.sleep(0.4)
after = cpu_seconds()
print(max([after[t] - before.get(t, 0.0) for t in after] + [0.0]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="per-thread CPU times from Linux's /proc")
def test_no_blas_thread_spins_after_the_reference_products():
    """OpenBLAS's idle threads spin for about 0.1 s after a multi-threaded call, holding a core
    that PyTorch's next parallel op waits for. After the reference's linear forward/backward and
    linear cross-entropy no other thread of the process may use CPU while the caller sleeps;
    after a plain NumPy product (the control) one does."""
    def busiest(*flags):
        run = subprocess.run([sys.executable, "-c", _BLAS_SPIN_SCRIPT, *flags], capture_output=True, text=True,
                             timeout=120, check=True)
        return run.stdout.split()[-1]

    control = busiest("--numpy")
    if control == "no-openblas":
        pytest.skip("NumPy does not use its bundled OpenBLAS here")
    if float(control) < 0.02:
        pytest.skip(f"this OpenBLAS's threads do not spin here ({control} s after NumPy's own product)")
    quiet = busiest()
    assert float(quiet) < 0.02, f"a thread used {quiet} s of CPU while the caller slept (NumPy's own: {control} s)"


_KEPT_OUTPUTS_SCRIPT = """
import resource
import numpy as np
from gpukernels.reference import activation
x = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32)
kept = [activation.gelu(x), activation.gelu(x)]  # the outputs stay alive, as a training step's do
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
kept.append(activation.gelu(x))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc thresholds; ru_minflt as Linux counts it")
@pytest.mark.parametrize("threads", [1, 2])
def test_chunk_temporaries_are_not_faulted_in_again_on_every_call(threads):
    """A fresh process (its own heap) computes the exact GELU of 2^22 float32 elements (2 MiB
    chunks, five temporaries each) while keeping its outputs. Only the new 16 MiB output may take
    page faults (4096 pages at most); with the heap's trim threshold at 8 MiB every chunk's
    temporaries went back to the system and were faulted in again: 16 000 faults per call."""
    env = dict(os.environ, GPUKERNELS_NUM_THREADS=str(threads))
    run = subprocess.run([sys.executable, "-c", _KEPT_OUTPUTS_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    faults = int(run.stdout.split()[-1])
    assert faults <= 4096 + 512, f"{faults} page faults for one call (the output has 4096 pages)"


def test_num_threads_defaults_to_the_usable_cores(monkeypatch):
    monkeypatch.delenv("GPUKERNELS_NUM_THREADS", raising=False)
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert _parallel.num_threads() == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_thread_count_is_a_value_error_naming_the_variable(value, monkeypatch, rng):
    monkeypatch.setenv("GPUKERNELS_NUM_THREADS", value)
    with pytest.raises(ValueError, match="GPUKERNELS_NUM_THREADS must be a whole number >= 1"):
        act.sigmoid(rng.standard_normal(1_000_000).astype(np.float32))


def test_a_failing_task_raises_in_the_caller_after_the_others_ran(monkeypatch):
    monkeypatch.setenv("GPUKERNELS_NUM_THREADS", "3")
    done = []

    def fail():
        raise KeyError("task 3")

    tasks = [lambda k=k: done.append(k) for k in range(3)] + [fail] + [lambda k=k: done.append(k) for k in range(4, 9)]
    with pytest.raises(KeyError, match="task 3"):
        _parallel.run(tasks)
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7, 8]


def test_numpy_error_state_holds_in_the_pool_threads(monkeypatch):
    """The reference silences overflow (exp(1000) = inf is the right intermediate); a pool
    thread that did not inherit np.errstate would warn, and with warnings as errors, fail."""
    monkeypatch.setenv("GPUKERNELS_NUM_THREADS", "3")
    x = np.full(3_000_000, -1000.0, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = act.sigmoid(x)
    assert np.all(y == 0)


def test_a_task_that_runs_tasks_runs_them_inline(monkeypatch, rng):
    monkeypatch.setenv("GPUKERNELS_NUM_THREADS", "2")
    x = rng.standard_normal(1_000_000).astype(np.float32)
    results = [None] * 4

    def task(k):
        results[k] = act.tanh(x)  # itself chunked: must not wait on the busy pool

    _parallel.run([lambda k=k: task(k) for k in range(4)])
    for r in results:
        np.testing.assert_array_equal(r, np.tanh(x))


# ---------------------------------------------------------------------------------------------
# Multi-tensor batching


def _views_of_one_buffer(rng, sizes, dtype=np.float32):
    flat = rng.standard_normal(sum(sizes)).astype(dtype)
    return np.split(flat, np.cumsum(sizes)[:-1]), flat


def test_tensors_of_one_buffer_are_one_flat_view(rng):
    sizes = (3, 100, 7, 50, 1)
    g, _ = _views_of_one_buffer(rng, sizes)
    seen = []
    _multi_tensor.foreach(lambda g: seen.append(g.shape), {"g": g}, pack=False)
    assert seen == [(sum(sizes),)]
    separate = [a.copy() for a in g]  # separately allocated: one call each without packing
    seen.clear()
    _multi_tensor.foreach(lambda g: seen.append(g.shape), {"g": separate}, pack=False)
    assert seen == [(n,) for n in sizes]
    seen.clear()
    _multi_tensor.foreach(lambda g: seen.append(g.shape), {"g": separate})  # packed into one batch
    assert seen == [(sum(sizes),)]


def _adam_textbook(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """AdamW on one float64 tensor, written out as torch.optim documents it."""
    p = p * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    p = p - lr / (1 - beta1**t) * m / (np.sqrt(v) / np.sqrt(1 - beta2**t) + eps)
    return p, m, v


@pytest.mark.parametrize("layout", ["separate", "one-buffer"])
def test_adamw_over_every_kind_of_batch_matches_the_textbook(layout, rng):
    sizes = MIXED_SIZES
    if layout == "one-buffer":  # as flat-parameter training loops keep them
        (params, _), (grads, _), (m, _), (v, v_flat) = (_views_of_one_buffer(rng, sizes, np.float64) for _ in range(4))
        np.abs(v_flat, out=v_flat)
    else:
        params, grads, m, v = _optimizer_state(rng, sizes, np.float64)
    want = [_adam_textbook(p, g, a, b, 4.0, 1e-2, 0.9, 0.99, 1e-8, 0.1) for p, g, a, b in zip(params, grads, m, v)]
    optim.adam_step(params, grads, m, v, None, None, None, None, 4.0, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                    weight_decay=0.1, amsgrad=False, maximize=False, decoupled_weight_decay=True)
    for i, (p, a, b) in enumerate(want):
        np.testing.assert_allclose(params[i], p, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(m[i], a, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(v[i], b, rtol=1e-13, atol=1e-15)


def test_float16_parameters_take_their_master_copys_rounding(rng):
    sizes = (5, 4001, 70_001)
    masters = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    params = [p.astype(np.float16) for p in masters]
    grads = [rng.standard_normal(n).astype(np.float16) for n in sizes]
    m = [np.zeros(n, np.float32) for n in sizes]
    v = [np.zeros(n, np.float32) for n in sizes]
    before = [p.copy() for p in masters]
    optim.adam_step(params, grads, m, v, None, masters, None, None, 1.0, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8,
                    weight_decay=0.0, amsgrad=False, maximize=False, decoupled_weight_decay=False)
    for p, master, old in zip(params, masters, before):
        assert not np.array_equal(master, old)
        np.testing.assert_array_equal(p, master.astype(np.float16))


def test_steps_per_tensor_get_their_own_bias_correction(rng):
    p, g, m, v = _optimizer_state(rng, (10, 20, 30), np.float64)
    want = [_adam_textbook(*arrays, t, 1e-2, 0.9, 0.99, 1e-8, 0.0) for arrays, t in zip(zip(p, g, m, v), (1, 5, 1))]
    optim.adam_step(p, g, m, v, None, None, None, None, [np.array([1.0]), np.array([5.0]), np.array([1.0])],
                    lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                    decoupled_weight_decay=True)
    for i, (pw, mw, vw) in enumerate(want):
        np.testing.assert_allclose(p[i], pw, rtol=1e-13)
        np.testing.assert_allclose(v[i], vw, rtol=1e-13)
