"""Cross-entropy benchmark cases, ours against PyTorch eager (``F.cross_entropy``, and for the
linear + cross-entropy ``F.cross_entropy(h @ W.T, y)``) and, on a GPU, ``torch.compile`` of them.

* ``cross_entropy``: "fwd" is the loss alone; "full" is loss + backward through autograd (ours
  writes the gradient in the forward kernel). Bytes: the logits read once and (full) the
  gradient written once. CPU: N=4096, C=32000 fp32 (the reference must stay within 2x of torch).
* ``linear_cross_entropy`` "full": loss and the gradients of h and W; flops of the three
  matmuls (6 N H V). GPU: N=8192, H=4096, V=128256 (Llama-3's vocabulary); CPU: scaled down.

Peak memory is not something the timing harness records: :func:`peak_memory` measures it
(``torch.cuda.max_memory_allocated`` on a GPU, the process's peak resident set in a fresh
subprocess on the CPU) and ``python -m gpukernels.benchmarks.cross_entropy --memory [--device
cuda]`` prints it for the linear + cross-entropy cases.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import gpukernels as gk

from .registry import BenchCase, register

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
CE_GPU = ((8192, 32000), (4096, 128256))
CE_CPU = ((4096, 32000),)
LINEAR_GPU = ((8192, 4096, 128256),)
LINEAR_CPU = ((4096, 256, 16384),)


def _ce_setup(rows: int, cols: int, dtype: str):
    def make(device: str):
        import torch

        x = (torch.randn(rows, cols, device=device) * 2).to(getattr(torch, dtype))
        target = torch.randint(0, cols, (rows,), device=device)
        return {"x": x, "target": target}

    return make


def _ce_full(fn):
    def run(inputs):
        x = inputs["x"].detach().requires_grad_()
        fn(x, inputs["target"]).backward()
        return x.grad

    return run


def _ce_providers(mode: str):
    import torch.nn.functional as F

    import gpukernels.torch.functional as GF

    ours = (lambda i: gk.cross_entropy(i["x"], i["target"])) if mode == "fwd" else _ce_full(GF.cross_entropy)
    theirs = (lambda i: F.cross_entropy(i["x"], i["target"])) if mode == "fwd" else _ce_full(F.cross_entropy)
    return {
        "gpukernels": lambda inputs: lambda: ours(inputs),
        "torch": lambda inputs: lambda: theirs(inputs),
        "torch.compile": lambda inputs: _compiled(theirs, inputs),
    }


def _compiled(fn, inputs):
    import torch

    compiled = torch.compile(fn, dynamic=False)
    return lambda: compiled(inputs)


def _linear_setup(rows: int, hidden: int, vocab: int, dtype: str):
    def make(device: str):
        import torch

        torch_dtype = getattr(torch, dtype)
        return {
            "h": torch.randn(rows, hidden, device=device, dtype=torch_dtype),
            "w": (torch.randn(vocab, hidden, device=device) / hidden ** 0.5).to(torch_dtype),
            "target": torch.randint(0, vocab, (rows,), device=device),
        }

    return make


def linear_eager(h, w, target):
    import torch.nn.functional as F

    return F.cross_entropy((h @ w.T).float(), target)


def linear_ours(h, w, target):
    import gpukernels.torch.functional as GF

    return GF.linear_cross_entropy(h, w, target)


def _linear_full(fn):
    def run(inputs):
        h = inputs["h"].detach().requires_grad_()
        w = inputs["w"].detach().requires_grad_()
        fn(h, w, inputs["target"]).backward()
        return h.grad, w.grad

    return run


def _linear_providers():
    ours, theirs = _linear_full(linear_ours), _linear_full(linear_eager)
    return {
        "gpukernels": lambda inputs: lambda: ours(inputs),
        "torch": lambda inputs: lambda: theirs(inputs),
        "torch.compile": lambda inputs: _compiled(theirs, inputs),
    }


def _register_all() -> None:
    for mode in ("fwd", "full"):
        for dtype in ("float32", "bfloat16"):
            for rows, cols in sorted(set(CE_GPU) | set(CE_CPU)):
                devices = tuple(d for d, shapes in (("cuda", CE_GPU), ("cpu", CE_CPU))
                                if (rows, cols) in shapes and (d == "cuda" or dtype == "float32"))
                if not devices:
                    continue
                tensors = 1 if mode == "fwd" else 2
                register(BenchCase(
                    family="cross_entropy", op="cross_entropy", mode=mode, dtype=dtype, size=f"N={rows},C={cols}",
                    setup=_ce_setup(rows, cols, dtype), providers=_ce_providers(mode),
                    bytes_moved=tensors * rows * cols * ITEMSIZE[dtype], devices=devices,
                    provider_devices={"torch.compile": ("cuda",)}))
    for dtype in ("float32", "bfloat16"):
        for rows, hidden, vocab in LINEAR_GPU + LINEAR_CPU:
            device = "cuda" if (rows, hidden, vocab) in LINEAR_GPU else "cpu"
            if device == "cpu" and dtype != "float32":
                continue
            register(BenchCase(
                family="cross_entropy", op="linear_cross_entropy", mode="full", dtype=dtype,
                size=f"N={rows},H={hidden},V={vocab}", setup=_linear_setup(rows, hidden, vocab, dtype),
                providers=_linear_providers(), flops=6 * rows * hidden * vocab, devices=(device,),
                provider_devices={"torch.compile": ("cuda",)}, in_default_set=device == "cpu"))


_register_all()


# ---------------------------------------------------------------------------------------------
# Peak memory of the linear + cross-entropy (forward and backward)

_PROVIDERS = {"gpukernels": linear_ours, "torch": linear_eager}


def _peak_here(provider: str, device: str, rows: int, hidden: int, vocab: int, dtype: str) -> dict:
    import resource

    import torch

    inputs = _linear_setup(rows, hidden, vocab, dtype)(device)
    fn = _linear_full(_PROVIDERS[provider])
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(inputs)
        torch.cuda.synchronize()
        return {"peak_extra_bytes": torch.cuda.max_memory_allocated() - base}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn(inputs)
    return {"peak_extra_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base}


def peak_memory(provider: str, device: str, rows: int, hidden: int, vocab: int, dtype: str = "float32") -> int:
    """Bytes the provider's forward + backward allocates beyond its inputs at its peak; on the CPU
    measured in a fresh process (the resident-set peak only ever grows)."""
    if device == "cuda":
        return _peak_here(provider, device, rows, hidden, vocab, dtype)["peak_extra_bytes"]
    code = (f"import json; from gpukernels.benchmarks.cross_entropy import _peak_here; "
            f"print(json.dumps(_peak_here({provider!r}, 'cpu', {rows}, {hidden}, {vocab}, {dtype!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_extra_bytes"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory", action="store_true", help="print the linear + CE peak memory")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args(argv)
    if not args.memory:
        parser.error("nothing to do: pass --memory (timings run through `gpukernels bench`)")
    shapes = LINEAR_GPU if args.device == "cuda" else LINEAR_CPU
    dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    for rows, hidden, vocab in shapes:
        for provider in _PROVIDERS:
            peak = peak_memory(provider, args.device, rows, hidden, vocab, dtype)
            print(f"linear_cross_entropy N={rows},H={hidden},V={vocab} {dtype} {args.device} {provider}: "
                  f"peak extra {peak / 2**20:.1f} MiB (logits alone: {rows * vocab * ITEMSIZE[dtype] / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
