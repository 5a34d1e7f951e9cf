"""Large arrays in chunks, on a small thread pool: how the reference keeps up with PyTorch CPU.

NumPy releases the GIL inside its loops, so chunks of one array computed on several threads run
in parallel. Working chunk by chunk also keeps a formula of several passes (``exp``, then ``+ 1``,
then ``1 / ...``) inside the core's cache instead of streaming the whole array through memory
once per pass.

* The pool has ``num_threads()`` threads: the cores this process may run on
  (``os.sched_getaffinity``), or ``GPUKERNELS_NUM_THREADS`` when set (1 turns the pool off).
* Outputs below ``PARALLEL_MIN_BYTES`` are computed in one call on the calling thread.
* Chunk boundaries depend on the array's shape alone, never on the thread count, and a chunk is
  computed exactly as it would be alone: every thread count gives the same bits.

Two ways in: :func:`elementwise` (a formula applied to equally shaped arrays, element by element)
and :func:`along` (a formula whose reductions run along one axis, e.g. softmax along a row: split
along another axis). :func:`run` runs independent tasks (e.g. one optimizer update per tensor).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import glob
import math
import os
import queue
import threading
from typing import Callable, Sequence

import numpy as np

ENV_VAR = "GPUKERNELS_NUM_THREADS"
# A chunk is a quarter of the output, at least 256 KiB (a NumPy call costs about a microsecond,
# as much as 10^4 elements take) and at most 2 MiB (the formula's temporaries stay in cache).
# Measured on one core of the 2-core CI VM (Zen 4, 1 MiB L2): formulas of 1 to 30 passes run
# fastest on 1-2 MiB chunks (256 KiB ones cost up to 25% more), 4 MiB and more fall out of
# cache. With threads, fewer calls also mean fewer waits for the GIL between them.
MIN_CHUNK_BYTES = 1 << 18
MAX_CHUNK_BYTES = 1 << 21
PARALLEL_MIN_BYTES = 2 * MIN_CHUNK_BYTES  # smaller outputs: one call on the calling thread


def _raise_the_heaps_mmap_threshold() -> None:
    """glibc's malloc serves blocks above 128 KiB with fresh mmap pages, and keeps doing so until
    it frees such a block: every chunk's temporaries (up to 2 MiB) would fault in new pages on
    every call, costing more than the arithmetic. Freeing one 16 MiB block moves the threshold to
    16 MiB and the heap's trim threshold to 32 MiB, as the first large array freed in a process
    does anyway. (A 4 MiB block, once used here, left the trim threshold at 8 MiB: the exact
    GELU's five 2 MiB temporaries per chunk, freed together, were handed back to the system and
    faulted in again by the next chunk, 3x slower, in any process that had not yet freed a large
    array of its own.) Elsewhere this maps and unmaps 16 MiB of untouched pages, nothing more."""
    block = np.empty(16 << 20, dtype=np.uint8)
    del block


_raise_the_heaps_mmap_threshold()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def parse_threads(value: str) -> int | None:
    """The thread count ``value`` spells, or None unless it is a whole number >= 1."""
    try:
        threads = int(value)
    except ValueError:
        return None
    return threads if threads >= 1 else None


def num_threads() -> int:
    """Threads the reference uses: ``GPUKERNELS_NUM_THREADS`` if set, else the usable cores."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return available_cores()
    threads = parse_threads(value)
    if threads is None:
        raise ValueError(f"{ENV_VAR} must be a whole number >= 1 (the threads of the CPU reference), got {value!r}")
    return threads


# ---------------------------------------------------------------------------------------------
# The pool: daemon threads, each taking the next job from one queue


_queue: queue.SimpleQueue = queue.SimpleQueue()
_workers = 0
_workers_lock = threading.Lock()
_inside_task = threading.local()  # a task that itself calls run() runs those tasks inline


def _serve() -> None:
    _inside_task.active = True
    while True:
        _queue.get()()


def _ensure_workers(count: int) -> None:
    global _workers
    with _workers_lock:
        while _workers < count:
            threading.Thread(target=_serve, name=f"gpukernels-reference-{_workers}", daemon=True).start()
            _workers += 1


def _forget_workers_after_fork() -> None:
    # A forked child has none of the parent's threads: it starts its own when it needs them.
    global _queue, _workers, _workers_lock
    _queue, _workers, _workers_lock = queue.SimpleQueue(), 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_after_fork)


def run(tasks: Sequence[Callable[[], object]]) -> None:
    """Run independent ``tasks`` on the pool (the calling thread takes part) and wait for all.

    Threads take the next task as they become free, so a core slowed by other work takes fewer.
    NumPy's error state (``np.errstate``) and other context variables of the caller hold in every
    task. An exception in a task is raised here once every task has finished.
    """
    threads = min(num_threads(), len(tasks))
    if threads <= 1 or getattr(_inside_task, "active", False):
        for task in tasks:
            task()
        return
    pending = iter(tasks)
    lock = threading.Lock()
    finished = threading.Event()
    left = [len(tasks)]
    errors: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                task = next(pending, None)
            if task is None:
                return
            try:
                task()
            except BaseException as error:  # raised in the caller, after the other tasks
                errors.append(error)
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    finished.set()

    _ensure_workers(threads - 1)
    for _ in range(threads - 1):
        _queue.put(functools.partial(contextvars.copy_context().run, work))
    _inside_task.active = True
    try:
        work()
    finally:
        _inside_task.active = False
    finished.wait()
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------------------------
# Splitting arrays


def split(length: int, step: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of ``step`` items (the last one shorter) covering ``length`` items."""
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def _chunk_bytes(total_bytes: int) -> int:
    return min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, total_bytes // 4))


def _items_per_chunk(items: int, item_bytes: int) -> int:
    """How many items (elements, or slices along an axis) of ``item_bytes`` make one chunk: a
    function of the sizes alone."""
    return max(1, _chunk_bytes(items * item_bytes) // max(1, item_bytes))


def elementwise(formula: Callable[..., object], *arrays: np.ndarray, dtype=None, out=None) -> np.ndarray:
    """``out`` with ``formula(*arrays, out=out)`` computed for every element.

    ``formula`` must be elementwise: each output element depends only on the input elements at
    the same index. The arrays share one shape; ``out`` has it too, with ``dtype`` (default: the
    first array's), and may be one of the arrays (in place). Large contiguous arrays go chunk by
    chunk over the pool.
    """
    first = arrays[0]
    if out is None:
        out = np.empty(first.shape, dtype=first.dtype if dtype is None else dtype)
    itemsize = max(a.itemsize for a in (*arrays, out))
    if first.size * itemsize < PARALLEL_MIN_BYTES or not all(a.flags.c_contiguous and a.shape == first.shape
                                                             for a in (*arrays, out)):
        formula(*arrays, out=out)
        return out
    flat_in = [a.reshape(-1) for a in arrays]
    flat_out = out.reshape(-1)
    step = _items_per_chunk(first.size, itemsize)
    run([lambda lo=lo, hi=hi: formula(*(a[lo:hi] for a in flat_in), out=flat_out[lo:hi])
         for lo, hi in split(first.size, step)])
    return out


def along(formula: Callable[..., object], *arrays: np.ndarray, axis: int, out_shape=None, dtype=None,
          out=None) -> np.ndarray:
    """``out`` with ``formula(*arrays, out=out)``, for a formula whose reductions run along ``axis``.

    The arrays share ``axis``'s length and are split along another axis (the longest) into
    slices that hold whole lines along ``axis``; each slice is computed as the
    formula would compute it alone. The arrays have as many dimensions as ``out`` and broadcast
    against it (an axis of length 1 is not split); ``out`` has ``out_shape`` (default: the first
    array's shape). ``out`` may be given, one of the arrays too (in place).
    """
    first = arrays[0]
    if out is None:
        shape = first.shape if out_shape is None else tuple(out_shape)
        out = np.empty(shape, dtype=first.dtype if dtype is None else dtype)
    shape = out.shape
    size = math.prod(shape)
    others = [k for k in range(len(shape)) if k != axis % max(len(shape), 1)]
    cut = max(others, key=lambda k: shape[k], default=None)  # the first of the longest
    itemsize = max(a.itemsize for a in (*arrays, out))
    if size * itemsize < PARALLEL_MIN_BYTES or cut is None or shape[cut] == 1:
        formula(*arrays, out=out)
        return out
    per_slice = size // shape[cut]
    step = _items_per_chunk(shape[cut], per_slice * itemsize)

    def piece(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
        if a.shape[cut] == 1:  # broadcast along the split axis: every slice reads all of it
            return a
        return a[(slice(None),) * cut + (slice(lo, hi),)]

    run([lambda lo=lo, hi=hi: formula(*(piece(a, lo, hi) for a in arrays), out=piece(out, lo, hi))
         for lo, hi in split(shape[cut], step)])
    return out


@functools.lru_cache(maxsize=16)
def _constant_chunk(value: float, dtype: np.dtype, size: int) -> np.ndarray:
    chunk = np.full(size, value, dtype)
    chunk.flags.writeable = False  # shared by every thread and every call
    return chunk


def filled_like(x: np.ndarray, value: float) -> np.ndarray:
    """A read-only array of ``value`` shaped like ``x``; chunk-sized ones are made once.

    NumPy's binary ufuncs broadcast a scalar through a loop several times slower than the one for
    two arrays (np.maximum(x, 0) against np.maximum(x, zeros)): formulas pass arrays instead.
    """
    size = MAX_CHUNK_BYTES // x.itemsize
    if x.size > size:
        return np.full_like(x, value)
    return _constant_chunk(float(value), x.dtype, size)[:x.size].reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# BLAS threads


@functools.lru_cache(maxsize=1)
def openblas_threads():
    """(get, set) for the thread count of the OpenBLAS that NumPy's wheels bundle, or None where
    NumPy uses another BLAS (then its threads are left alone)."""
    numpy_dir = os.path.dirname(np.__file__)
    candidates = glob.glob(os.path.join(numpy_dir, os.pardir, "numpy.libs", "*openblas*"))  # Linux wheels
    candidates += glob.glob(os.path.join(numpy_dir, ".dylibs", "*openblas*"))  # macOS wheels
    for path in candidates:
        try:
            library = ctypes.CDLL(path)  # already loaded by NumPy: the same handle
        except OSError:
            continue
        for suffix in ("64_", "", "_64_"):
            prefix = "scipy_openblas" if suffix else "openblas"
            getter = getattr(library, f"{prefix}_get_num_threads{suffix}", None)
            setter = getattr(library, f"{prefix}_set_num_threads{suffix}", None)
            if getter is not None and setter is not None:
                getter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
                return getter, setter
    return None


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved = 1


@contextlib.contextmanager
def one_blas_thread():
    """OpenBLAS on the calling thread while the block runs; the count NumPy had comes back when
    the last such block running ends. For ops made of many small products (an RNN step, additive
    attention's per-row products): OpenBLAS's own threads gain nothing on them and, spin-waiting
    for work while our pool and torch's threads share the cores, cost up to milliseconds per call
    (measured: 3.9 ms instead of 28 us for an LSTM step's product on a busy 2-core VM). Thread
    counts do not change BLAS's results (its threads split the output, never a dot product)."""
    global _blas_users, _blas_saved
    threads = openblas_threads()
    if threads is None:
        yield
        return
    get, set_threads = threads
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved = get()
            if _blas_saved != 1:
                set_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_saved != 1:
                set_threads(_blas_saved)


# ---------------------------------------------------------------------------------------------
# Matrix products on the pool

# Products below this many multiply-adds (about a millisecond on one core) are one BLAS call.
MATMUL_SPLIT_MIN = 1 << 23
MATMUL_BLOCKS = 4  # row blocks of a larger product: enough to balance 2-4 threads


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N), in row blocks of ``a`` on the pool, each
    block one BLAS call on its own thread (``one_blas_thread``).

    Why not BLAS's own threads: after a multi-threaded call, OpenBLAS's idle threads spin for
    about 0.1 s (measured: 0.09 s of CPU time in its worker while the caller slept), holding a
    core that PyTorch's next parallel op, or the pool's next task, then waits for. Every element
    is one BLAS dot product over all of K whatever the blocking, and the blocks depend on the
    shapes alone: the same bits for every thread count."""
    M, K = a.shape
    N = b.shape[1]
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    with one_blas_thread():
        if M * N * K < MATMUL_SPLIT_MIN or M < 2 * MATMUL_BLOCKS:
            np.matmul(a, b, out=out)
            return out
        step = -(-M // MATMUL_BLOCKS)
        run([lambda lo=lo, hi=hi: np.matmul(a[lo:hi], b, out=out[lo:hi]) for lo, hi in split(M, step)])
    return out
