"""One elementwise update over every tensor of an optimizer step, in few NumPy calls.

The optimizers write their update once, as a formula over equally shaped arrays that it changes
in place (the textbook update). :func:`foreach` decides which arrays the formula sees:

* tensors that lie back to back in memory, at the same boundaries in every list and with one
  dtype per list (a flat parameter buffer, as torch's ``_foreach`` kernels like them), are one
  flat view: no copies;
* small tensors are packed into batches of about a chunk (``pack=True``, for formulas of many
  calls): each list is gathered into one scratch array (one ``np.concatenate``), the formula
  runs once per batch, and the lists it writes are copied back; 250 small tensors cost a few
  batches, not 250 times every call of the formula;
* a large tensor is split into chunks;
* float16 storage is gathered into float32 and rounded once when written back.

Batches run on the thread pool. They are cut from the tensors' sizes and memory layout alone,
never from the thread count, so every thread count gives the same bits.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from . import _parallel

CHUNK = 1 << 18  # elements per batch (1 MiB of float32 per list): fewer, larger NumPy calls
PACK_BELOW = 1 << 13  # elements: a smaller tensor costs less copied into a batch than updated alone

Piece = dict  # list name -> the array (a view) of one tensor, or of part or run of tensors


def _work_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _follows(before: np.ndarray, after: np.ndarray) -> bool:
    """``after`` starts in memory where ``before`` ends, both contiguous, with one dtype."""
    return (after.dtype == before.dtype and before.flags.c_contiguous and after.flags.c_contiguous
            and _address(before) + before.nbytes == _address(after))


def _pieces(lists: Mapping[str, Sequence[np.ndarray]], indices: Sequence[int]) -> list[Piece]:
    """Tensors ``indices`` as pieces, each tensor in its own shape; a run of tensors adjacent in
    memory in every list is one flat view per list.

    Reading an address costs about as much as a small update, so runs are looked for only when
    the first two tensors of the first list are adjacent (a flat buffer); separately allocated
    tensors are taken as they come.
    """
    names = list(lists)
    first = lists[names[0]]
    if not (len(indices) > 1 and _follows(first[indices[0]], first[indices[1]])):
        return [{name: lists[name][i] for name in names} for i in indices]
    pieces: list[Piece] = []
    previous: int | None = None  # the previous tensor, if its piece may grow
    for i in indices:
        piece = {name: lists[name][i] for name in names}
        if previous is not None and all(_follows(lists[n][previous], a) for n, a in piece.items()):
            last = pieces[-1]
            for name, a in piece.items():  # the run's view, grown over this tensor's memory
                last[name] = np.lib.stride_tricks.as_strided(last[name].reshape(-1), shape=(last[name].size + a.size,),
                                                             strides=(a.itemsize,), writeable=True)
        else:
            pieces.append(piece)
        previous = i
    return pieces


def _chunks(piece: Piece) -> list[Piece]:
    """A large contiguous piece as flat chunks of CHUNK elements; any other piece whole."""
    arrays = piece.values()
    size = next(iter(arrays)).size
    if size <= CHUNK or not all(a.flags.c_contiguous for a in arrays):
        return [piece]
    flat = {name: a.reshape(-1) for name, a in piece.items()}
    return [{name: a[lo:hi] for name, a in flat.items()} for lo, hi in _parallel.split(size, CHUNK)]


def _gather(pieces: list[np.ndarray]) -> np.ndarray:
    """The pieces as one array in the dtype the math runs in: a view where one piece already is."""
    dtype = _work_dtype(pieces[0].dtype)
    if len(pieces) == 1 and pieces[0].dtype == dtype:
        return pieces[0]
    if len(pieces) == 1:
        return pieces[0].astype(dtype)
    return np.concatenate([p.reshape(-1) for p in pieces], dtype=dtype)


def _scatter(work: np.ndarray, pieces: list[np.ndarray]) -> None:
    """Write ``work`` back into ``pieces`` (rounding float32 to float16 storage once)."""
    if len(pieces) == 1:
        if pieces[0] is not work:
            np.copyto(pieces[0], work, casting="same_kind")
        return
    start = 0
    for piece in pieces:
        np.copyto(piece, work[start:start + piece.size].reshape(piece.shape), casting="same_kind")
        start += piece.size


def foreach(formula: Callable[..., object], lists: Mapping[str, Sequence[np.ndarray]], writes: Sequence[str] = (),
            copies: Mapping[str, str] | None = None, indices: Sequence[int] | None = None, pack: bool = True) -> list:
    """Apply ``formula(**arrays)`` to tensors ``indices`` (default: all) of ``lists``.

    ``lists`` maps the formula's argument names to lists of arrays (one per tensor, each index
    the same shape in every list). The formula changes the lists named in ``writes`` in place.
    ``copies`` {target: source}: list ``target`` is not passed to the formula but receives
    ``source``'s new values (a float16 parameter taking its float32 master copy's rounding).
    ``pack=False`` leaves small tensors unpacked (for a formula of one or two calls, copying a
    tensor in and out costs more than calling it once more); they still share a task.
    Returns what the formula returned, one value per call, in a fixed order.
    """
    copies = dict(copies or {})
    names = list(lists)
    arguments = [name for name in names if name not in copies]
    if indices is None:
        indices = range(len(lists[names[0]]))

    def direct(piece: Piece):  # the formula on this piece's own arrays
        return formula(**(piece if not copies else {name: piece[name] for name in arguments}))

    def together(pieces: list[Piece]):  # the pieces gathered into one array per list
        work = {name: _gather([piece[name] for piece in pieces]) for name in arguments}
        result = formula(**work)
        for name in writes:
            _scatter(work[name], [piece[name] for piece in pieces])
        for target, source in copies.items():
            _scatter(work[source], [piece[target] for piece in pieces])
        return result

    tasks: list[Callable[[], list]] = []
    # Tasks that are batches of small tensors updated one by one spend their time in Python,
    # holding the GIL: on the pool they would only queue for it. They run on the calling thread.
    inline: set[int] = set()  # indices into tasks
    for dtypes, group in _by_dtypes(lists, indices).items():
        as_they_are = not copies and all(_work_dtype(d) == d for d in dtypes)
        alone = direct if as_they_are else (lambda piece: together([piece]))
        batch: list[Piece] = []  # consecutive pieces of up to about a chunk: one task
        batch_size = 0
        for piece in _pieces(lists, group):
            size = piece[names[0]].size
            if size > CHUNK:  # large: a task per chunk
                tasks.extend(lambda chunk=chunk, alone=alone: [alone(chunk)] for chunk in _chunks(piece))
            elif size > 0:
                batch.append(piece)
                batch_size += size
            if batch and (batch_size >= CHUNK or size > CHUNK):
                _task(batch, pack, alone, together, tasks, inline)
                batch, batch_size = [], 0
        if batch:
            _task(batch, pack, alone, together, tasks, inline)
    results = [None] * len(tasks)

    def record(k: int) -> None:
        results[k] = tasks[k]()

    _parallel.run([lambda k=k: record(k) for k in range(len(tasks)) if k not in inline])
    for k in inline:
        record(k)
    return [value for values in results for value in values]


def _task(pieces: list[Piece], pack: bool, alone, together, tasks: list, inline: set) -> None:
    """Add the task for a batch of pieces: with ``pack``, the small ones gathered and updated
    together, the others one by one. A batch of small pieces updated one by one is marked in
    ``inline`` (by its index: Python-bound, for the calling thread)."""
    is_small = [next(iter(p.values())).size < PACK_BELOW for p in pieces]
    if not pack or sum(is_small) < 2:
        if len(pieces) > 1 and all(is_small):
            inline.add(len(tasks))
        tasks.append(lambda: [alone(piece) for piece in pieces])
        return
    small = [p for p, s in zip(pieces, is_small) if s]
    others = [p for p, s in zip(pieces, is_small) if not s]
    tasks.append(lambda: [together(small)] + [alone(piece) for piece in others])


def _by_dtypes(lists: Mapping[str, Sequence[np.ndarray]], indices: Sequence[int]) -> dict[tuple, list[int]]:
    """Tensor indices grouped by their dtype in each list (a batch holds one dtype per list)."""
    if all(len({a.dtype for a in values}) == 1 for values in lists.values()):
        return {tuple(values[indices[0]].dtype for values in lists.values()): list(indices)} if len(indices) else {}
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        groups.setdefault(tuple(values[i].dtype for values in lists.values()), []).append(i)
    return groups
