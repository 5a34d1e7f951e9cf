"""The collectives gpukernels itself calls (the global gradient norm, metrics across processes),
made so that the process can exit right after them.

gloo runs each collective on a worker thread, which lets go of the collective's tensors a moment
*after* the caller has been told it finished. Letting go of a tensor that Python also holds
takes the GIL (torch hands the Python object back through it). If the interpreter is shutting
down in that moment, CPython ends the waiting worker with ``pthread_exit``, whose unwinding runs
into a ``noexcept`` frame: ``std::terminate``, "terminate called without an active exception",
SIGABRT (pytorch/pytorch#190489). A core dump of the README's FSDP2 example showed exactly that:
``~AsyncAllreduceWork -> TensorImpl::decref_pyobject -> take_gil -> PyThread_exit_thread`` on
the worker while the main thread was in ``Py_FinalizeEx``; 1 run in 3 aborted on a 2-core machine.

So after each collective on CPU tensors we wait, with the GIL released, until the worker has
dropped its references (the tensors' C++ use counts are back to what they were before): none to
a few 100 µs sleeps. CUDA tensors (NCCL) are not waited for: their collectives are ordered on a
stream and finish later, and waiting would stall the step."""

from __future__ import annotations

import time
from typing import Sequence

# A worker lets go within microseconds once it runs (a few 100 us sleeps here at most, on a busy
# 2-core machine); seconds mean a backend that keeps the tensors for good, and then waiting on
# every call would only cost time, so the wait is switched off after the first such call.
_SETTLE_TIMEOUT_S = 5.0
_SETTLE_POLL_S = 1e-4
_backend_lets_go = True


def _settle(tensors: Sequence, counts_before: Sequence[int]) -> None:
    """Wait (GIL released) until the backend holds no reference to ``tensors``."""
    global _backend_lets_go
    if not _backend_lets_go:
        return
    deadline = time.monotonic() + _SETTLE_TIMEOUT_S
    while any(t._use_count() > n for t, n in zip(tensors, counts_before)):
        if time.monotonic() > deadline:
            _backend_lets_go = False
            return
        time.sleep(_SETTLE_POLL_S)


def _settles(tensors: Sequence) -> bool:
    """Whether to wait for these tensors: CPU ones, where torch can tell their use count."""
    return all(t.device.type == "cpu" and hasattr(t, "_use_count") for t in tensors)


def all_reduce(tensor, op=None, group=None) -> None:
    """``torch.distributed.all_reduce(tensor, op, group)``, in place, synchronous, settled."""
    import torch.distributed as dist

    op = dist.ReduceOp.SUM if op is None else op
    if not _settles([tensor]):
        dist.all_reduce(tensor, op=op, group=group)
        return
    before = [tensor._use_count()]
    dist.all_reduce(tensor, op=op, group=group)
    _settle([tensor], before)


def all_gather(outputs: list, tensor, group=None) -> None:
    """``torch.distributed.all_gather(outputs, tensor, group)``, synchronous, settled."""
    import torch.distributed as dist

    everything = [*outputs, tensor]
    if not _settles(everything):
        dist.all_gather(outputs, tensor, group=group)
        return
    before = [t._use_count() for t in everything]
    dist.all_gather(outputs, tensor, group=group)
    _settle(everything, before)
