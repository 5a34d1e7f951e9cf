"""Metric benchmark cases: ours (gpukernels.metrics) against the PyTorch composite a user would
write (bincount / sort + cumsum / elementwise then sum) and, where it is installed,
torchmetrics' functional metric. Bytes model: what the metric must read (scores and targets once).
GPU sizes up to 2^26 elements; CPU sizes smaller (the NumPy reference as the CPU fallback)."""

from __future__ import annotations

import gpukernels.metrics as M

from .registry import BenchCase, register

GPU_N = (1 << 20, 1 << 24)
CPU_N = (1 << 20,)
REGRESSION_GPU_N = (1 << 22, 1 << 26)
REGRESSION_CPU_N = (1 << 22,)
AUROC_GPU_N = (1 << 20, 1 << 24)
AUROC_CPU_N = (1 << 18,)
CLASSES = 10
BINS = 100


def _torchmetrics():
    try:
        import torchmetrics.functional as tmf
    except ImportError:
        return None
    return tmf


# ---------------------------------------------------------------------------------------------
# The PyTorch composites


def _torch_binary_f1(preds, target):
    hard = preds > 0.5
    positive = target == 1
    tp = (hard & positive).sum()
    fp = (hard & ~positive).sum()
    fn = (~hard & positive).sum()
    return 2 * tp / (2 * tp + fp + fn)


def _torch_multiclass_accuracy(preds, target):
    import torch

    classes = preds.shape[1]
    confusion = torch.bincount(target * classes + preds.argmax(1), minlength=classes * classes).reshape(classes, classes)
    return (confusion.diagonal() / confusion.sum(1)).mean()


def _torch_binary_auroc(preds, target):
    """Sort, cumulative counts, the last index of each distinct score, trapezoids."""
    import torch

    scores, order = torch.sort(preds, descending=True)
    positive = target[order].double()
    last = torch.cat([scores[1:] != scores[:-1], torch.ones(1, dtype=torch.bool, device=preds.device)])
    tps = positive.cumsum(0)[last]
    fps = (1 - positive).cumsum(0)[last]
    tpr = torch.cat([tps.new_zeros(1), tps / tps[-1]])
    fpr = torch.cat([fps.new_zeros(1), fps / fps[-1]])
    return torch.trapezoid(tpr, fpr)


def _torch_binned_auroc(preds, target):
    import torch

    thresholds = torch.linspace(0, 1, BINS, device=preds.device)
    above = preds[:, None] >= thresholds
    positive = (target == 1)[:, None]
    tpr = (above & positive).sum(0) / positive.sum()
    fpr = (above & ~positive).sum(0) / (~positive).sum()
    return torch.trapezoid(tpr.flip(0), fpr.flip(0))


def _torch_mse(preds, target):
    return ((preds - target) ** 2).mean()


def _torch_r2(preds, target):
    return 1 - ((target - preds) ** 2).sum() / ((target - target.mean()) ** 2).sum()


# ---------------------------------------------------------------------------------------------
# Cases


def _binary_inputs(n: int):
    def make(device: str):
        import torch

        return {"preds": torch.rand(n, device=device), "target": torch.randint(0, 2, (n,), device=device)}

    return make


def _multiclass_inputs(n: int):
    def make(device: str):
        import torch

        return {"preds": torch.randn(n, CLASSES, device=device), "target": torch.randint(0, CLASSES, (n,), device=device)}

    return make


def _regression_inputs(n: int):
    def make(device: str):
        import torch

        target = torch.randn(n, device=device)
        return {"preds": target + 0.1 * torch.randn(n, device=device), "target": target}

    return make


def _providers(ours, composite, torchmetrics_call):
    providers = {
        "gpukernels": lambda i: lambda: ours(i["preds"], i["target"]),
        "torch": lambda i: lambda: composite(i["preds"], i["target"]),
    }
    tmf = _torchmetrics()
    if tmf is not None:
        providers["torchmetrics"] = lambda i: lambda: torchmetrics_call(tmf, i["preds"], i["target"])
    return providers


# (op, inputs, bytes per sample (fp32 scores, int64 targets), ours, composite, torchmetrics, GPU sizes, CPU sizes)
CASES = (
    ("binary_f1_score", _binary_inputs, 4 + 8, lambda p, t: M.binary_f1_score(p, t, validate_args=False),
     _torch_binary_f1, lambda tmf, p, t: tmf.classification.binary_f1_score(p, t, validate_args=False), GPU_N, CPU_N),
    ("multiclass_accuracy", _multiclass_inputs, 4 * CLASSES + 8,
     lambda p, t: M.multiclass_accuracy(p, t, CLASSES, validate_args=False), _torch_multiclass_accuracy,
     lambda tmf, p, t: tmf.classification.multiclass_accuracy(p, t, CLASSES, validate_args=False), GPU_N, CPU_N),
    ("binary_auroc", _binary_inputs, 4 + 8, lambda p, t: M.binary_auroc(p, t, validate_args=False),
     _torch_binary_auroc, lambda tmf, p, t: tmf.classification.binary_auroc(p, t, validate_args=False),
     AUROC_GPU_N, AUROC_CPU_N),
    ("binary_auroc_binned", _binary_inputs, 4 + 8,
     lambda p, t: M.binary_auroc(p, t, thresholds=BINS, validate_args=False), _torch_binned_auroc,
     lambda tmf, p, t: tmf.classification.binary_auroc(p, t, thresholds=BINS, validate_args=False),
     AUROC_GPU_N, AUROC_CPU_N),
    ("mean_squared_error", _regression_inputs, 8, M.mean_squared_error, _torch_mse,
     lambda tmf, p, t: tmf.mean_squared_error(p, t), REGRESSION_GPU_N, REGRESSION_CPU_N),
    ("r2_score", _regression_inputs, 8, M.r2_score, _torch_r2, lambda tmf, p, t: tmf.r2_score(p, t),
     REGRESSION_GPU_N, REGRESSION_CPU_N),
)


def _register_all() -> None:
    for op, inputs, per_sample, ours, composite, tm_call, gpu_sizes, cpu_sizes in CASES:
        for n in sorted(set(gpu_sizes) | set(cpu_sizes)):
            devices = tuple(d for d, sizes in (("cuda", gpu_sizes), ("cpu", cpu_sizes)) if n in sizes)
            register(BenchCase(
                family="metrics", op=op, mode="fwd", dtype="float32", size=f"n={n}", setup=inputs(n),
                providers=_providers(ours, composite, tm_call), bytes_moved=per_sample * n, devices=devices,
                in_default_set=n in (gpu_sizes[-1], cpu_sizes[0]),
            ))


_register_all()
