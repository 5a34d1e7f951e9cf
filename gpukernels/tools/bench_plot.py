"""PNG plots of a bench run: throughput against size, one file per op, ours and every baseline
on the same axes (solid lines ours, dashed baselines). matplotlib is imported here only, with
the Agg backend, so a run without a display or without matplotlib still produces its numbers."""

from __future__ import annotations

import re
from pathlib import Path


def _metric(rows: list[dict]) -> tuple[str, str]:
    metrics = {r["metric"] for r in rows}
    for metric, label in (("TFLOP/s", "TFLOP/s (from the flops the op must do)"),
                          ("GB/s", "GB/s (from the bytes the op must move)")):
        if metric in metrics:
            return metric, label
    return "time_ms", "calls per second"


def plot_throughput(rows: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpukernels.benchmarks.registry import is_ours

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        metric, label = _metric(op_rows)
        sizes = list(dict.fromkeys(r["size"] for r in op_rows))  # cases arrive ordered by work
        lines: dict[tuple[str, str, str], dict[str, float]] = {}
        for r in op_rows:
            if r["metric"] == metric:
                value = float(r["median"])
                lines.setdefault((r["provider"], r["mode"], r["dtype"]), {})[r["size"]] = (
                    1e3 / value if metric == "time_ms" else value)
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (provider, mode, dtype), points in sorted(lines.items()):
            xs = [i for i, s in enumerate(sizes) if s in points]
            ax.plot(xs, [points[sizes[i]] for i in xs], marker="o",
                    linestyle="-" if is_ours(provider) else "--", label=f"{provider} {mode} {dtype}")
        ax.set_xticks(range(len(sizes)), sizes, rotation=20, ha="right", fontsize=8)
        ax.set_xlabel("size")
        ax.set_ylabel(label)
        ax.set_title(f"{op}: {op_rows[0]['device']}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', op)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
