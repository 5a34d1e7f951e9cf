"""Stateful metrics with torchmetrics' class names and constructor arguments: ``update`` adds a
batch's statistics to the state, ``compute`` reduces the state (across processes too), ``reset``
forgets it.

* ``update`` keeps everything on the inputs' device and never waits for it: the statistics are
  device arrays added to device arrays, and the value checks (NaN scores, targets out of range)
  are counted there too; ``compute`` raises a ValueError for them.
* ``compute`` with ``torch.distributed`` initialised (more than one process) sums the counts and
  sums of every process with ``all_reduce``, gathers the regression sums (merged exactly) and the
  exact-AUROC samples (``all_gather``, uneven sizes padded and trimmed). Every process must call
  ``compute`` (they meet in the collectives) and must have updated at least once, as in
  torchmetrics. The local state is left as it was.
"""

from __future__ import annotations

from typing import Any

from .._dispatch import array_library, like
from . import _arrays as A
from . import _classification as C
from . import _inputs as I
from ._regression import check_r2_arguments, mape_value, mean_absolute_error_value, merge, mse_value, r2_value
from .. import ops

# ---------------------------------------------------------------------------------------------
# Across processes


def _distributed():
    """torch.distributed when a process group of more than one process is up, else None."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _as_torch(x: Any):
    import torch

    library = array_library(x)
    if library == "torch":
        return x.clone()
    if library == "cupy":
        return torch.from_dlpack(x.copy())
    return torch.from_numpy(x.copy())


def all_reduce_sum(x: Any, sync: bool = True) -> Any:
    """The sum of ``x`` over every process (``x`` itself in a single process or without ``sync``)."""
    dist = _distributed() if sync else None
    if dist is None:
        return x
    from .._collectives import all_reduce

    total = _as_torch(x)
    all_reduce(total)
    return like(total, x)


def all_gather(x: Any, sync: bool = True) -> list[Any]:
    """``x`` of every process, in rank order; the first dimension may differ between processes."""
    dist = _distributed() if sync else None
    if dist is None:
        return [x]
    import torch

    from .._collectives import all_gather as gather

    local = _as_torch(x)
    sizes = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(dist.get_world_size())]
    gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device))
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in sizes]
    gather(gathered, padded)
    return [like(g[:n].contiguous(), x) for g, n in zip(gathered, sizes)]


# ---------------------------------------------------------------------------------------------
# The base class


class Metric:
    """update / compute / reset; calling the metric updates it and returns the batch's value."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._state: Any = None
        self._problems: list[tuple[Any, str]] | None = None

    def _count_problems(self, found: list[tuple[Any, str]]) -> None:
        if self._problems is None:
            self._problems = found
        else:
            self._problems = [(total + count, message) for (total, message), (count, _) in zip(self._problems, found)]

    def _check_problems(self) -> None:
        if self._problems is not None:
            counts = all_reduce_sum(A.stack([count for count, _ in self._problems]), self._sync)
            I.raise_problems([(counts[i], message) for i, (_, message) in enumerate(self._problems)])

    def _require_update(self) -> None:
        if self._state is None:
            raise RuntimeError(f"{type(self).__name__}.compute() was called before any update()")

    def update(self, preds: Any, target: Any) -> None:
        raise NotImplementedError

    def compute(self) -> Any:
        raise NotImplementedError

    _sync = True  # compute() combines every process's state

    def __call__(self, preds: Any, target: Any) -> Any:
        """Update with the batch and return the batch's own value (this process's, unsynced)."""
        batch = type(self).__new__(type(self))
        batch.__dict__.update({k: v for k, v in self.__dict__.items() if not k.startswith("_")})
        batch.reset()
        batch._sync = False
        batch.update(preds, target)
        self.update(preds, target)
        return batch.compute()


# ---------------------------------------------------------------------------------------------
# Classification


class _Classification(Metric):
    def __init__(self, task: str, threshold: float = 0.5, num_classes: int | None = None,
                 num_labels: int | None = None, average: str | None = "micro", multidim_average: str = "global",
                 top_k: int = 1, ignore_index: int | None = None, validate_args: bool = True,
                 zero_division: float = 0) -> None:
        self.task = I.check_task(task)
        self.threshold = I.check_threshold(threshold)
        self.ignore_index = I.check_ignore_index(ignore_index)
        self.validate_args = bool(validate_args)
        self.zero_division = I.check_zero_division(zero_division)
        if top_k != 1:
            raise ValueError(f"top_k must be 1 (top-k metrics are not implemented), got {top_k!r}")
        if multidim_average != "global":
            raise ValueError(f"multidim_average must be 'global', got {multidim_average!r}")
        self.num_classes = I.check_count(num_classes, "num_classes") if self.task == "multiclass" else num_classes
        self.num_labels = I.check_count(num_labels, "num_labels") if self.task == "multilabel" else num_labels
        self.average = "binary" if self.task == "binary" else I.check_average(average)
        super().__init__()

    def _normalised(self, preds: Any, target: Any) -> tuple[Any, Any, int]:
        if self.task == "binary":
            return (*I.binary_inputs(preds, target), 2)
        if self.task == "multilabel":
            return (*I.multilabel_inputs(preds, target, self.num_labels), 2)
        return (*I.multiclass_inputs(preds, target, self.num_classes), self.num_classes)

    def update(self, preds: Any, target: Any) -> None:
        preds, target, classes = self._normalised(preds, target)
        if self.validate_args:
            self._count_problems(I.problems(preds, target, classes=classes, ignore_index=self.ignore_index))
        if self.task == "multiclass":
            stats = C.class_stats(preds, target, self.num_classes, self.ignore_index)
        else:
            stats = C.label_stats(preds, target, self.threshold, self.ignore_index)
        self._state = stats if self._state is None else self._state + stats

    def compute(self) -> Any:
        self._require_update()
        self._check_problems()
        stats = all_reduce_sum(self._state, self._sync)
        return A.result(self._reduce(stats, self.task == "multilabel"), stats)

    def _reduce(self, stats: Any, multilabel: bool) -> Any:
        raise NotImplementedError


class Accuracy(_Classification):
    """torchmetrics.Accuracy: ``Accuracy(task="multiclass", num_classes=10)``."""

    def _reduce(self, stats, multilabel):
        return C.accuracy_reduce(stats, self.average, multilabel)


class Precision(_Classification):
    def _reduce(self, stats, multilabel):
        return C.precision_recall_reduce("precision", stats, self.average, multilabel, self.zero_division)


class Recall(_Classification):
    def _reduce(self, stats, multilabel):
        return C.precision_recall_reduce("recall", stats, self.average, multilabel, self.zero_division)


class F1Score(_Classification):
    def _reduce(self, stats, multilabel):
        return C.f1_reduce(stats, self.average, multilabel, self.zero_division)


class AUROC(Metric):
    """torchmetrics.AUROC. Exact (``thresholds=None``): keeps the batches' scores (sigmoid or
    softmax applied per batch where torchmetrics applies them) and targets, and sorts them all in
    ``compute`` (gathered from every process); binned (``thresholds=int``): keeps (L, T+1, 2)
    counts, summed across processes."""

    def __init__(self, task: str, thresholds: int | None = None, num_classes: int | None = None,
                 num_labels: int | None = None, average: str | None = "macro", max_fpr: float | None = None,
                 ignore_index: int | None = None, validate_args: bool = True) -> None:
        self.task = I.check_task(task)
        self.thresholds = I.check_thresholds(thresholds)
        if max_fpr is not None:
            raise ValueError(f"max_fpr (partial AUROC) is not implemented; pass None, got {max_fpr!r}")
        self.ignore_index = I.check_ignore_index(ignore_index)
        self.validate_args = bool(validate_args)
        self.num_classes = I.check_count(num_classes, "num_classes") if self.task == "multiclass" else num_classes
        self.num_labels = I.check_count(num_labels, "num_labels") if self.task == "multilabel" else num_labels
        allowed = ("macro", "weighted", "none") if self.task == "multiclass" else I.AVERAGES
        self.average = I.check_average(average, allowed)
        super().__init__()

    def _normalised(self, preds, target):
        if self.task == "binary":
            return (*I.binary_inputs(preds, target, allow_int=False), 2)
        if self.task == "multilabel":
            preds, target = I.multilabel_inputs(preds, target, self.num_labels, allow_int=False)
            if self.average == "micro":
                preds, target = preds.reshape(-1, 1), target.reshape(-1, 1)
            return preds, target, 2
        return (*I.multiclass_inputs(preds, target, self.num_classes, scores_only=True), self.num_classes)

    def _scores(self, preds, target):
        """Per batch, as torchmetrics: a batch with a kept score outside [0, 1] is logits."""
        return C.auroc_scores(preds, target, multiclass=self.task == "multiclass", ignore_index=self.ignore_index)

    def _state_of(self, scores, target):
        return C.auroc_state(scores, target, self.thresholds, one_vs_rest=self.task == "multiclass",
                             ignore_index=self.ignore_index)

    def update(self, preds, target):
        preds, target, classes = self._normalised(preds, target)
        if self.validate_args:
            self._count_problems(I.problems(preds, target, classes=classes, ignore_index=self.ignore_index))
        scores = self._scores(preds, target)
        if self.thresholds is not None:
            counts = self._state_of(scores, target)
            self._state = counts if self._state is None else self._state + counts
        else:
            self._state = [] if self._state is None else self._state
            self._state.append((scores, target))

    def compute(self):
        self._require_update()
        self._check_problems()
        if self.thresholds is not None:
            state = all_reduce_sum(self._state, self._sync)
        else:
            preds = A.concat(all_gather(A.concat([p for p, _ in self._state]), self._sync))
            target = A.concat(all_gather(A.concat([t for _, t in self._state]), self._sync))
            state = self._state_of(preds, target)
        scores, support = C.auroc_per_column(state, self.thresholds is not None)
        if self.task == "binary" or self.average == "micro":
            return A.result(scores[0], state)
        return A.result(C.auroc_reduce(scores, support, self.average), state)


# ---------------------------------------------------------------------------------------------
# Regression


class _Regression(Metric):
    flatten = True  # every element one observation (MSE, MAE, MAPE); R2 keeps its outputs

    def reset(self):
        super().reset()
        self._num_obs = 0

    def update(self, preds, target):
        I.regression_inputs(preds, target)
        if self.flatten:
            preds, target = preds.reshape(-1, 1), target.reshape(-1, 1)
        else:
            self._check_shape(preds)
            if preds.ndim == 1:
                preds, target = preds.reshape(-1, 1), target.reshape(-1, 1)
        sums = ops.metrics.regression_sums(preds, target)
        self._num_obs += int(preds.shape[0])
        self._state = sums if self._state is None else merge(self._state, sums)

    def _check_shape(self, preds):
        pass

    def _merged(self):
        self._require_update()
        parts = all_gather(self._state[None], self._sync)
        state = parts[0][0]
        for part in parts[1:]:
            state = merge(state, part[0])
        return state


class MeanSquaredError(_Regression):
    def __init__(self, squared: bool = True) -> None:
        if not isinstance(squared, bool):
            raise TypeError(f"squared must be a bool, got {type(squared).__name__}")
        self.squared = squared
        super().__init__()

    def compute(self):
        state = self._merged()
        return A.result(mse_value(state, self.squared), state)


class MeanAbsoluteError(_Regression):
    def compute(self):
        state = self._merged()
        return A.result(mean_absolute_error_value(state), state)


class MeanAbsolutePercentageError(_Regression):
    def compute(self):
        state = self._merged()
        return A.result(mape_value(state), state)


class R2Score(_Regression):
    flatten = False

    def __init__(self, num_outputs: int = 1, adjusted: int = 0, multioutput: str = "uniform_average") -> None:
        check_r2_arguments(adjusted, multioutput)
        self.num_outputs = I.check_count(num_outputs, "num_outputs", minimum=1)
        self.adjusted, self.multioutput = int(adjusted), multioutput
        super().__init__()

    def _check_shape(self, preds):
        outputs = 1 if preds.ndim == 1 else preds.shape[1]
        if preds.ndim not in (1, 2) or outputs != self.num_outputs:
            raise ValueError(f"preds has shape {tuple(preds.shape)}; expected (N,) or (N, num_outputs) with "
                             f"num_outputs={self.num_outputs}")

    def compute(self):
        state = self._merged()
        num_obs = int(all_reduce_sum(A.zeros(state, (), "int64") + self._num_obs, self._sync))
        return A.result(r2_value(state, num_obs, self.adjusted, self.multioutput), state)
