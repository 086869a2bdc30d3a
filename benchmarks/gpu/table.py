"""Markdown table of every bench run folder under a results root (the GPU matrix's README table).

    python benchmarks/gpu/table.py RESULTS_ROOT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def rows(root: Path):
    for summary in sorted(root.glob("*/summary.json")):
        s = json.loads(summary.read_text())
        info = s.get("engine_info") or {}
        quant = info.get("quantization")
        if quant in (None, "none"):
            quant = info.get("dtype") or "-"
        for p in s.get("points", []):
            gpu = (p.get("gpu") or {}).get("gpus") or [{}]
            roof = p.get("roofline") or {}
            above = gpu[0].get("peak_above_baseline_bytes")
            frac = roof.get("fraction_of_roofline")
            spec = p.get("speculative") or {}
            acc = spec.get("acceptance_rate")
            spec_txt = "-" if not spec else (f"{acc:.2f} / {spec.get('mean_accepted_length'):.2f}"
                                              if acc is not None else "none drafted")
            yield [summary.parent.name, s.get("engine"), str(quant), str(p.get("concurrency", p.get("rate"))),
                   fmt((p.get("ttft_ms") or {}).get("p50")), fmt((p.get("tpot_ms") or {}).get("p50"), 2),
                   fmt(p.get("output_throughput")), fmt(above / 2**30 if above is not None else None, 2),
                   fmt(roof.get("roofline_tok_s")), fmt(frac * 100 if frac is not None else None),
                   fmt(roof.get("joules_per_output_token"), 3), spec_txt, s.get("status", "?")]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    head = ["run", "engine", "weights", "concurrency", "TTFT p50 ms", "TPOT p50 ms", "output tok/s",
            "peak GPU mem above idle GiB", "roofline tok/s (1 stream)", "% of roofline", "J / output token",
            "spec. acceptance / mean accepted length", "status"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows(root):
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
