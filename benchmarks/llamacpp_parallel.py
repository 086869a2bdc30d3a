"""hyperbench's llamacpp engine against llama.cpp's own llama-server, same GGUF, same workload.

Both serve `--parallel` slots (continuous batching, one unified KV cache) and are measured by
the same `hyperbench bench` client at concurrency 1, 4, 8, 16 (fixed lengths: prompt 128
token ids, exactly --output-len tokens, greedy). Engines are interleaved: round 1 runs every
engine once, round 2 again, ..., so a slow minute of a shared machine does not land on one
engine only; the table gives each point's median over rounds (and the spread).

CPU (smollm2-135m, built in; llama-server from scripts/build_llama_server.sh):

    python benchmarks/llamacpp_parallel.py --quants q8_0,q4_k_m

GPU (the 7B-shaped GGUFs of benchmarks/gpu; llama-server built with CUDA, see the README):

    python benchmarks/llamacpp_parallel.py --model .gpu/gguf/q8_0.gguf --tokenizer .gpu/models/llama2-7b \\
        --quants native --output-len 128 -- --n-gpu-layers -1 --flash-attn

Arguments after `--` go to both engines' `hyperbench bench` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ENGINES = ("llamacpp", "llama-server")


def bench(args, kind: str, quant: str, rnd: int, extra: list[str]) -> dict | str:
    """One `hyperbench bench` run; its summary, or why it failed (one line)."""
    name = f"{kind}-{quant}-r{rnd}"
    parallel = max(int(c) for c in args.concurrency.split(","))
    cmd = [sys.executable, "-m", "harness.cli", "bench", "--engine", kind, "--model", args.model,
           "--quant", quant, "--parallel", str(parallel), "--n-ctx", str(parallel * args.ctx_per_slot),
           "--concurrency", args.concurrency, "--input-len", str(args.input_len),
           "--output-len", str(args.output_len), "--num-requests", str(args.num_requests),
           "--temperature", "0", "--warmup", "1", "--results-dir", str(args.out), "--run-name", name,
           "--no-plots", *(["--tokenizer", args.tokenizer] if args.tokenizer else []),
           *(["--n-threads", str(args.n_threads)] if args.n_threads else []), *extra]  # fmt: skip
    print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1][:160]
    return json.loads((args.out / name / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokenizer", default=None, help="HF folder of the GGUF's tokenizer (a .gguf --model needs it)")
    ap.add_argument("--quants", default="q8_0,q4_k_m", help="GGUF types (native: the .gguf as it is)")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--num-requests", type=int, default=32, help="per concurrency point")
    ap.add_argument("--ctx-per-slot", type=int, default=512, help="n_ctx = parallel x this")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-threads", type=int, default=os.cpu_count(),
                    help="CPU threads of both engines, for prompts and decode alike (0: each engine's default)")
    ap.add_argument("--out", type=Path, default=Path("results") / f"llamacpp-parallel-{time.strftime('%Y%m%d-%H%M%S')}")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    engines, quants = args.engines.split(","), args.quants.split(",")
    runs: dict[tuple[str, str], list] = {}
    for rnd in range(1, args.rounds + 1):
        for quant in quants:
            for kind in engines:
                runs.setdefault((kind, quant), []).append(bench(args, kind, quant, rnd, extra))
    print(f"\n{args.model}, prompt {args.input_len} / output {args.output_len} tokens (fixed, greedy), "
          f"{args.num_requests} requests per point, --parallel {max(int(c) for c in args.concurrency.split(','))}, "
          f"median of {args.rounds} interleaved rounds (min-max); run folders in {args.out}\n")
    print("| engine | GGUF | concurrency | out tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for (kind, quant), results in runs.items():
        failed = [r for r in results if isinstance(r, str)]
        ok = [r for r in results if not isinstance(r, str)]
        if not ok:
            print(f"| {kind} | {quant} | failed: {failed[0]} ||||||")
            continue
        for i, point in enumerate(ok[0]["points"]):
            pts = [r["points"][i] for r in ok]
            tput = [p["output_throughput"] for p in pts]

            def med(metric, q):
                return statistics.median(p[metric][q] for p in pts)

            print(f"| {kind} | {quant} | {point['concurrency']} | {statistics.median(tput):.1f} "
                  f"({min(tput):.0f}-{max(tput):.0f}) | {med('ttft_ms', 'p50'):.0f} | {med('ttft_ms', 'p99'):.0f} | "
                  f"{med('tpot_ms', 'p50'):.1f} | {med('tpot_ms', 'p99'):.1f} |")
        if failed:
            print(f"| {kind} | {quant} | {len(failed)} round(s) failed: {failed[0]} ||||||")


if __name__ == "__main__":
    main()
