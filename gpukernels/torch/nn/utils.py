"""``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_`` on the fused kernels: one
reduction launch for the norm of all gradients together, one launch scaling them all.

Sharded gradients (DTensors, as FSDP2's ``fully_shard`` leaves them) are clipped by the global
norm, the norm of the whole gradients across every rank, as torch's ``clip_grad_norm_`` does: each
rank takes its shards' part with the kernels, one all-reduce per sharded mesh dimension combines
the parts, and every rank scales its shards by the same factor."""

from __future__ import annotations

import math
import sys
from typing import Iterable

import torch

from ...ops import optim as F

# The largest float32: as ``max_norm`` it makes the clipping kernels' factor exactly 1 for any
# finite norm (and, for an infinite or NaN one, what the global factor will be), so they
# measure a rank's part without changing it.
_MEASURE_ONLY = 3.4028234663852886e38


def _grads(parameters: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def _dtensor_type() -> type | None:
    """DTensor, or None while torch.distributed.tensor is not loaded (then there is none)."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def clip_grad_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """Scale the gradients of ``parameters`` in place so that their ``norm_type``-norm, taken
    over all of them as one vector, is at most ``max_norm``; return that norm (before
    clipping). As torch's: the factor is ``min(1, max_norm / (norm + 1e-6))``, a non-finite
    norm raises RuntimeError with ``error_if_nonfinite``, and no gradient gives a norm of 0.
    DTensor gradients (FSDP2) are clipped by their global norm, a collective every rank must
    call, and the norm comes back as a replicated DTensor, as torch's does (``.full_tensor()``).
    ``foreach`` is accepted for compatibility; the kernels are always multi-tensor."""
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    dtensor = _dtensor_type()
    if dtensor is not None and any(issubclass(kind, dtensor) for kind in set(map(type, grads))):  # a few types
        return _clip_sharded(grads, float(max_norm), float(norm_type), error_if_nonfinite, dtensor)
    return F.clip_grad_norm_(grads, float(max_norm), float(norm_type), error_if_nonfinite)


def _clip_sharded(grads: list, max_norm: float, norm_type: float, error_if_nonfinite: bool, dtensor: type):
    """The global norm of DTensor gradients, and every shard scaled by it.

    A rank's part (sum of |g|^p, or max |g|) is summed (or maxed) over the mesh dimensions the
    gradient is sharded along; along a replicated dimension every rank already holds it all.
    Gradients are grouped by placement so each part is reduced over exactly its own dimensions."""
    import torch.distributed as dist
    from torch.distributed.tensor import Partial, Replicate, Shard

    from ..._collectives import all_reduce

    for i, g in enumerate(grads):
        if not isinstance(g, dtensor):
            raise TypeError(f"parameters[{i}].grad is a plain tensor but others are DTensors; clip the gradients "
                            "of one model at a time, all sharded or all plain")
        if any(isinstance(p, Partial) for p in g.placements):
            raise ValueError(f"parameters[{i}].grad has a Partial placement {g.placements}; reduce it first "
                             "(redistribute to Shard or Replicate)")
    mesh = grads[0].device_mesh
    if any(g.device_mesh != mesh for g in grads):
        raise ValueError("the gradients lie on different device meshes; clip each mesh's parameters separately")
    if math.isnan(norm_type) or not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    infinite = math.isinf(norm_type)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault(tuple(g.placements), []).append(g.to_local())
    local = [t for members in groups.values() for t in members]
    device = local[0].device
    total = torch.zeros((), dtype=torch.float32, device=device)
    for placements, members in groups.items():
        present = [t for t in members if t.numel()]
        part = torch.zeros((), dtype=torch.float32, device=device)
        if present:
            norm = F.clip_grad_norm_(present, _MEASURE_ONLY, norm_type).to(torch.float32)
            part = norm if infinite else norm.pow(norm_type)
        for dim, placement in enumerate(placements):
            if isinstance(placement, Shard):
                all_reduce(part, dist.ReduceOp.MAX if infinite else dist.ReduceOp.SUM, mesh.get_group(dim))
        total = torch.maximum(total, part) if infinite else total + part
    if not infinite:
        total = total.pow(1.0 / norm_type)
    if error_if_nonfinite and not torch.isfinite(total).item():  # torch reads it on the host too
        from gpukernels.reference.optim import nonfinite_norm_error

        raise nonfinite_norm_error(norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    nonempty = [t for t in local if t.numel()]
    if nonempty:
        torch._foreach_mul_(nonempty, coef)  # a 0-d float32 factor: no type promotion, no host read
    return dtensor.from_local(total.to(grads[0].dtype), mesh, [Replicate()] * mesh.ndim, run_check=False)


def clip_grad_value_(parameters: torch.Tensor | Iterable[torch.Tensor], clip_value: float,
                     foreach: bool | None = None) -> None:
    """Clamp every gradient element of ``parameters`` into ``[-clip_value, clip_value]``
    (DTensor gradients: each rank its own shards, which is the same thing)."""
    grads = _grads(parameters)
    dtensor = _dtensor_type()
    if dtensor is not None:
        grads = [g.to_local() if isinstance(g, dtensor) else g for g in grads]
        grads = [g for g in grads if g.numel()]
    if grads:
        F.clip_grad_value_(grads, float(clip_value))


__all__ = ["clip_grad_norm_", "clip_grad_value_"]
