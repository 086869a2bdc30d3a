"""compare's GPU table: per run and sweep point, the card's peak memory above its idle baseline
beside the engine's own view (weights, KV cache), joules per output token and % of the
memory-bandwidth roofline, from each bench run's summary (NVML samples, GET /v1/engine)."""

from __future__ import annotations

import math

from harness.bench.report import point_label


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def gpu_table(bench: list) -> list[str]:
    """Memory, energy and roofline per run and point, where NVML sampled a GPU: the card's peak
    above its idle baseline beside what the engine says it holds (vLLM preallocates most of the
    card, so its peak says little; its weights and KV cache say what it uses)."""
    rows = []
    for e in bench:
        for p in e.points:
            gpus = (p.get("gpu") or {}).get("gpus") or []
            if not gpus:
                continue
            roof = p.get("roofline") or {}
            peak = sum(g.get("peak_above_baseline_bytes") or 0 for g in gpus)
            frac = roof.get("fraction_of_roofline")
            rows.append([e.label, point_label(p), f"{peak / 2**30:.1f}",
                         _gib(e.engine_memory.get("weight_bytes")), _gib(e.engine_memory.get("kv_cache_bytes")),
                         f"{roof['joules_per_output_token']:.3f}" if _number(roof.get("joules_per_output_token")) else "-",
                         f"{100 * frac:.1f}" if _number(frac) else "-"])  # fmt: skip
    if not rows:
        return []
    head = ["run", "point", "peak GPU mem above idle GiB", "engine: weights GiB", "engine: KV cache GiB",
            "J / output token", "% of roofline"]
    return (["", "## GPU memory, energy and roofline", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(r) + " |" for r in rows]
            + ["", "% of roofline: decode tok/s of one stream against weight bytes ÷ memory bandwidth "
                   "(above one stream it is per stream)."])


def _gib(v) -> str:
    return f"{v / 2**30:.1f}" if _number(v) and v else "-"
