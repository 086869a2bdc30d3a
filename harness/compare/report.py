"""compare's report.md: the runs, a table per sweep point with the best value of each column
marked, the GPU table, accuracy beside speed, and workload settings that differ."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from harness.bench.report import stat  # (compare.plots reads it from here too)
from harness.config import Workload

if TYPE_CHECKING:
    from harness.compare.run import Entry

# workload fields that must agree for a speed comparison to mean anything
WORKLOAD_KEYS = ("input_len", "output_len", "num_requests", "dataset", "fixed_output", "temperature", "chat",
                 "turns", "think_time_ms")


def workload_mismatch(entries: list[Entry]) -> dict[str, list]:
    """Workload settings that differ between bench runs (a comparison of unlike runs is flagged)."""
    out = {}
    for key in WORKLOAD_KEYS:
        # a field a run's version did not have yet reads as its default (turns: 1)
        values = {str(e.workload.get(key, Workload.model_fields[key].default)) for e in entries if e.workload}
        if len(values) > 1:
            out[key] = sorted(values)
    return out


SPEED_COLUMNS = (
    ("out tok/s", lambda p: p.get("output_throughput")),
    ("req/s", lambda p: p.get("request_throughput")),
    ("TTFT p50", lambda p: stat(p, "ttft_ms", "p50")),
    ("TTFT p99", lambda p: stat(p, "ttft_ms", "p99")),
    ("TPOT p50", lambda p: stat(p, "tpot_ms", "p50")),
    ("TPOT p99", lambda p: stat(p, "tpot_ms", "p99")),
    ("E2E p50", lambda p: stat(p, "e2e_ms", "p50")),
    ("E2E p99", lambda p: stat(p, "e2e_ms", "p99")),
)


def render(entries: list[Entry], data: dict, plots: list[str]) -> str:
    from harness.compare.gpu import gpu_table
    from harness.compare.repeats import significance_section
    from harness.bench.report import fmt, point_label

    bench = [e for e in entries if e.kind == "bench"]
    score = [e for e in entries if e.kind == "score"]
    lines = ["# hyperbench compare", ""]
    lines += ["| run | kind | engine | quant | model | status | folder |", "|---|---|---|---|---|---|---|"]
    for e in entries:
        status = e.status + (f": {str(e.reason).splitlines()[0][:120]}" if e.reason else "")
        lines.append(f"| {e.label} | {e.kind} | {e.engine} | {e.quant or '-'} | {e.model} | {status} | "
                     f"`{relative_path(e.path, None)}` |")
    if bench:
        w = bench[0].workload
        lines += ["", f"Workload: input {w.get('input_len')} tokens, output {w.get('output_len')} tokens"
                  f"{' (fixed)' if w.get('fixed_output') else ''}, {w.get('num_requests')} requests per "
                  f"point. Latencies in ms; throughput in tokens or requests per second."]
    if data["workload_mismatch"]:
        lines += ["", "> **The runs' workloads differ**, so their numbers are not directly comparable: "
                  + "; ".join(f"{k}: {', '.join(v)}" for k, v in data["workload_mismatch"].items())]
    for point in union_points(bench):
        lines += ["", f"## {point_label(point)}", "",
                  "| run | ok/total | " + " | ".join(c for c, _ in SPEED_COLUMNS) + " |",
                  "|" + "---|" * (len(SPEED_COLUMNS) + 2)]
        best = _best(bench, point)
        for e in bench:
            p = _find(e, point)
            if p is None:
                lines.append(f"| {e.label} | - |" + " - |" * len(SPEED_COLUMNS))
                continue
            cells = []
            for name, f in SPEED_COLUMNS:
                v = f(p)
                cells.append(f"**{fmt(v)}**" if v is not None and best.get(name) == v else fmt(v))
            ok = f"{p.get('completed', 0)}/{p.get('requests', 0)}" + (" (partial)" if p.get("partial") else "")
            lines.append(f"| {e.label} | {ok} | " + " | ".join(cells) + " |")
    if bench:
        lines += ["", "Best per column in bold (highest throughput, lowest latency)"
                  + ("; with repeats, each run's first repeat (the means and tests follow)." if data["significance"]
                     else ".")]
        lines += significance_section(data["significance"])
        lines += gpu_table(bench)
    if score:
        lines += ["", "## Accuracy" + (" beside speed" if bench else ""), ""] + _accuracy(bench, score)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    return "\n".join(lines) + "\n"


def _accuracy(bench: list[Entry], score: list[Entry]) -> list[str]:
    """One row per score run; the matching bench run's (same engine, model, quant) peak output
    throughput and lowest-load TPOT beside it."""
    from harness.bench.report import fmt

    metrics = sorted({m for e in score for m in e.metrics})
    speed = {e.key(): e for e in bench}
    head = ["run", *metrics, "out tok/s (peak)", "TPOT p50 (lowest load)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in score:
        b = speed.get(e.key())
        done = [p for p in (b.points if b else []) if p.get("completed")]
        peak = max((p.get("output_throughput") or 0 for p in done), default=None)
        tpot = stat(done[0], "tpot_ms", "p50") if done else None
        rows.append("| " + " | ".join([e.label, *[fmt(e.metrics.get(m)) for m in metrics], fmt(peak), fmt(tpot)]) + " |")
    if not metrics:
        rows.append("\n(no accuracy numbers found in these score runs' summary.json: see "
                    "`harness.compare.run.score_metrics`)")
    return rows


def load_of(point: dict) -> tuple[str, float] | None:
    for k in ("concurrency", "rate", "trace"):
        if k in point:
            v = point[k]
            return k, math.inf if v == "inf" else float(v)
    return None


def union_points(entries: list[Entry]) -> list[dict]:
    """Every sweep point any run has, in order (kind, value)."""
    seen: dict[tuple, dict] = {}
    for e in entries:
        for p in e.points:
            if (k := load_of(p)) is not None:
                seen.setdefault(k, p)
    return [seen[k] for k in sorted(seen)]


def _find(e: Entry, point: dict) -> dict | None:
    want = load_of(point)
    return next((p for p in e.points if load_of(p) == want), None)


def _best(entries: list[Entry], point: dict) -> dict:
    best = {}
    for name, f in SPEED_COLUMNS:
        values = [v for e in entries if (p := _find(e, point)) and p.get("completed") and not p.get("partial")
                  and (v := f(p)) is not None]
        if len(values) > 1:
            best[name] = max(values) if ("tok/s" in name or "req/s" in name) else min(values)
    return best


def relative_path(path: Path, base: Path | None) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base or Path.cwd()).resolve()))
    except ValueError:
        return str(path)
