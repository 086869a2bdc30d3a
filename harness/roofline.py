"""Decode speed against the memory-bandwidth roofline, and energy per output token.

At small batch a decode step reads every weight once and produces one token per running
sequence, so no engine can decode one stream faster than `bandwidth / weight_bytes` tokens/s
(KV-cache reads only lower that bound). A GPU run records, per sweep point:

    roofline_tok_s          bandwidth / weight_bytes (the per-stream decode limit)
    decode_tok_s            1000 / TPOT p50 (the per-stream decode speed measured)
    fraction_of_roofline    decode_tok_s / roofline_tok_s
    joules_per_output_token NVML energy of the point / output tokens of the point

`weight_bytes` is the engine's own figure (`GET /v1/engine`: tensor bytes as loaded, or the
GGUF's tensor data). Bandwidth is the GPU's peak from the table below by NVML name, or
`HYPERBENCH_GPU_BANDWIDTH_GBS` (e.g. a measured device-to-device copy rate), which wins.
"""

from __future__ import annotations

import os

# Peak memory bandwidth (GB/s, vendor specification), matched by substring of the NVML name,
# most specific first.
PEAK_BANDWIDTH_GBS = [
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5 HBM3
    ("GH200", 4000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB
    ("L40S", 864.0),
    ("L40", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("A10", 600.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("V100", 900.0),
    ("T4", 320.0),
]


def bandwidth_gbs(gpu_name: str | None) -> tuple[float | None, str]:
    """(GB/s, where the number came from)."""
    if env := os.environ.get("HYPERBENCH_GPU_BANDWIDTH_GBS"):
        return float(env), "HYPERBENCH_GPU_BANDWIDTH_GBS"
    for key, gbs in PEAK_BANDWIDTH_GBS:
        if gpu_name and key.lower() in gpu_name.lower():
            return gbs, f"peak of {key} (specification)"
    return None, f"unknown GPU {gpu_name!r}: set HYPERBENCH_GPU_BANDWIDTH_GBS"


def point_roofline(point: dict, weight_bytes: int | None) -> dict | None:
    """Roofline and energy figures of one sweep point that has GPU telemetry; None otherwise."""
    gpu = point.get("gpu")
    if not gpu or not gpu.get("gpus"):
        return None
    out: dict = {}
    energy = [g.get("energy_j") for g in gpu["gpus"]]
    tokens = point.get("output_tokens")
    if tokens and all(e is not None for e in energy):
        out["joules_per_output_token"] = sum(energy) / tokens
    name = gpu["gpus"][0].get("name")
    bw, source = bandwidth_gbs(name)
    tpot = (point.get("tpot_ms") or {}).get("p50")
    if weight_bytes and bw:
        roof = bw * 1e9 / weight_bytes
        out.update(bandwidth_gbs=bw, bandwidth_source=source, weight_bytes=weight_bytes,
                   roofline_tok_s=roof)
        if tpot:
            out["decode_tok_s"] = 1000.0 / tpot
            out["fraction_of_roofline"] = out["decode_tok_s"] / roof
    elif not bw:
        out["bandwidth_source"] = source
    return out or None
