"""compare's plots: throughput and latency against load, one line per engine and quant."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from harness.compare.report import load_of, stat
from harness.results import RunFolder

if TYPE_CHECKING:
    from harness.compare.run import Entry


def write_plots(folder: RunFolder, entries: list[Entry]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for e in entries:
        pts = [(lk, p) for p in e.points if p.get("completed") and (lk := load_of(p)) is not None]
        if pts:
            series.append((e.label, pts))
    if not series:
        return []
    kind = series[0][1][0][0][0]
    finite = [lk[1] for _, pts in series for lk, _ in pts if math.isfinite(lk[1])]
    top = max(finite) * 2 if finite else 1.0
    out = folder.path / "plots"
    out.mkdir(exist_ok=True)

    def xs(pts):
        return [lk[1] if math.isfinite(lk[1]) else top for lk, _ in pts]

    has_inf = any(not math.isfinite(lk[1]) for _, pts in series for lk, _ in pts)

    def scale(ax):  # concurrency 1, 8, 64...: evenly spaced on a log axis
        if finite and min(finite) > 0 and max(finite) / min(finite) >= 4:
            ax.set_xscale("log", base=2)
        if has_inf:  # rate=inf sits at `top`: its tick says inf
            from harness.bench.report import tick_inf

            tick_inf(ax, finite, top)

    def finish(ax, title):  # every panel: titled, load on x, grid, legend
        ax.set_title(title)
        ax.set_xlabel(kind)
        scale(ax)
        ax.grid(alpha=0.3)
        ax.legend()

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for label, pts in series:
        axes[0].plot(xs(pts), [p.get("output_throughput") for _, p in pts], marker="o", label=label)
        axes[1].plot(xs(pts), [p.get("request_throughput") for _, p in pts], marker="o", label=label)
    for ax, title in zip(axes, ("output tokens/s", "requests/s")):
        finish(ax, title)
    save(fig, "compare_throughput.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (key, title) in zip(axes, (("ttft_ms", "TTFT p50 (ms)"), ("tpot_ms", "TPOT p50 (ms)"),
                                       ("e2e_ms", "E2E p50 (ms)"))):
        for label, pts in series:
            ax.plot(xs(pts), [stat(p, key, "p50") for _, p in pts], marker="o", label=label)
        finish(ax, title)
    save(fig, "compare_latency.png")
    return ["compare_throughput.png", "compare_latency.png"]
