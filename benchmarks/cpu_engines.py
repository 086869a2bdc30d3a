"""Engines side by side on CPU: `hyperbench bench` on smollm2-135m at concurrency 1/4/8.

Runs the real CLI once per engine/quantization (each engine started and stopped in turn by the
process launcher), then prints one markdown table from the run folders' summary.json files.

    python benchmarks/cpu_engines.py [--engines hf,llamacpp:q8_0,llamacpp:q4_k_m,llama-server:q8_0,vllm] [--out DIR]

Both llama.cpp engines run `--parallel` the highest concurrency (continuous batching, as hf and
vLLM batch); llama-server rows need scripts/build_llama_server.sh first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DEFAULT = "hf,llamacpp:q8_0,llamacpp:q4_k_m,llama-server:q8_0,vllm"
EXTRA = {"hf": ["--dtype", "float32"], "vllm": ["--dtype", "float32"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default=DEFAULT)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--input-len", default="128")
    ap.add_argument("--output-len", default="64")
    ap.add_argument("--num-requests", default="16")
    ap.add_argument("--out", type=Path, default=Path("results") / f"cpu-engines-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args()
    rows = []
    for entry in args.engines.split(","):
        kind, _, quant = entry.partition(":")
        name = entry.replace(":", "-")
        cmd = [sys.executable, "-m", "harness.cli", "bench", "--engine", kind, "--model", args.model,
               "--concurrency", args.concurrency, "--input-len", args.input_len,
               "--output-len", args.output_len, "--num-requests", args.num_requests,
               "--results-dir", str(args.out), "--run-name", name, "--no-plots", *EXTRA.get(kind, [])]
        if quant:
            cmd += ["--quant", quant]
        if kind in ("llamacpp", "llama-server"):  # slots for every concurrent request, as llama-server serves
            # 4096 cells in all (512 a slot at 8: prompt + output fit), as the README's table ran
            cmd += ["--parallel", str(max(int(c) for c in args.concurrency.split(","))), "--n-ctx", "4096"]
        print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1][:120]
            rows.append(f"| {entry} | skipped: {why} |||||||")
            continue
        summary = json.loads((args.out / name / "summary.json").read_text())
        for p in summary["points"]:
            rows.append(
                f"| {entry} | {p['concurrency']} | {p['output_throughput']:.1f} | {p['ttft_ms']['p50']:.0f} | "
                f"{p['ttft_ms']['p99']:.0f} | {p['tpot_ms']['p50']:.1f} | {p['tpot_ms']['p99']:.1f} | "
                f"{p['e2e_ms']['p50']:.0f} |")
    print(f"\n{args.model}, input {args.input_len} / output {args.output_len} tokens (fixed), "
          f"{args.num_requests} requests per point; run folders in {args.out}\n")
    print("| engine | concurrency | out tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | E2E p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
