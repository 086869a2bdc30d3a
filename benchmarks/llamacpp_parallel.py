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

Arguments after `--` go to both engines' `hyperbench bench` unchanged. `--idle-slots cache,keep`
runs each engine both ways, interleaved: with idle slots' KV moved to host RAM (llama-server's
default `--cache-idle-slots`) and left in the KV cache (`--no-cache-idle-slots`).
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


IDLE_FLAGS = {"cache": "--cache-idle-slots", "keep": "--no-cache-idle-slots"}


def bench(args, kind: str, quant: str, idle: str, rnd: int, extra: list[str]) -> dict | str:
    """One `hyperbench bench` run; its summary, or why it failed (one line)."""
    name = f"{kind}-{quant}-{idle}-r{rnd}"
    parallel = max(int(c) for c in args.concurrency.split(","))
    cmd = [sys.executable, "-m", "harness.cli", "bench", "--engine", kind, "--model", args.model,
           "--quant", quant, "--parallel", str(parallel), "--n-ctx", str(parallel * args.ctx_per_slot),
           "--concurrency", args.concurrency, "--input-len", str(args.input_len),
           "--output-len", str(args.output_len), "--num-requests", str(args.num_requests),
           "--temperature", "0", "--warmup", "1", "--results-dir", str(args.out), "--run-name", name,
           "--no-plots", *(["--tokenizer", args.tokenizer] if args.tokenizer else []),
           *(["--n-threads", str(args.n_threads)] if args.n_threads else []), IDLE_FLAGS[idle],
           *extra]  # fmt: skip
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
    ap.add_argument("--idle-slots", default="cache",
                    help="cache (idle slots' KV to host RAM, llama-server's default), keep (left in the KV "
                         "cache), or cache,keep (both, interleaved)")
    ap.add_argument("--n-threads", type=int, default=os.cpu_count(),
                    help="CPU threads of both engines, for prompts and decode alike (0: each engine's default)")
    ap.add_argument("--out", type=Path, default=Path("results") / f"llamacpp-parallel-{time.strftime('%Y%m%d-%H%M%S')}")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    engines, quants, idles = args.engines.split(","), args.quants.split(","), args.idle_slots.split(",")
    if unknown := set(idles) - set(IDLE_FLAGS):
        ap.error(f"--idle-slots: {', '.join(sorted(unknown))} is not one of {', '.join(IDLE_FLAGS)}")
    runs: dict[tuple[str, str, str], list] = {}  # (engine, GGUF, idle slots) -> each round's summary
    for rnd in range(1, args.rounds + 1):
        for quant in quants:
            for idle in idles:
                for kind in engines:
                    runs.setdefault((kind, quant, idle), []).append(bench(args, kind, quant, idle, rnd, extra))

    def label(kind: str, idle: str) -> str:
        return kind if idles == ["cache"] else f"{kind} {IDLE_FLAGS[idle]}"

    print(f"\n{args.model}, prompt {args.input_len} / output {args.output_len} tokens (fixed, greedy), "
          f"{args.num_requests} requests per point, --parallel {max(int(c) for c in args.concurrency.split(','))}, "
          f"median of {args.rounds} interleaved rounds (min-max); run folders in {args.out}\n")
    print("| engine | GGUF | concurrency | out tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    tputs: dict[tuple[str, str, str], dict[int, float]] = {}  # run key -> concurrency -> median tok/s
    tpots: dict[tuple[str, str, str], float] = {}  # run key -> one-stream TPOT p50
    for key, results in runs.items():
        kind, quant = label(key[0], key[2]), key[1]
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

            tputs.setdefault(key, {})[point["concurrency"]] = statistics.median(tput)
            if point["concurrency"] == 1:
                tpots[key] = med("tpot_ms", "p50")
            print(f"| {kind} | {quant} | {point['concurrency']} | {statistics.median(tput):.1f} "
                  f"({min(tput):.0f}-{max(tput):.0f}) | {med('ttft_ms', 'p50'):.0f} | {med('ttft_ms', 'p99'):.0f} | "
                  f"{med('tpot_ms', 'p50'):.1f} | {med('tpot_ms', 'p99'):.1f} |")
        if failed:
            print(f"| {kind} | {quant} | {len(failed)} round(s) failed: {failed[0]} ||||||")
    goals(tputs, tpots, label)


def goals(tputs: dict, tpots: dict, label) -> None:
    """The issue's goals from the medians: tok/s at 8 streams over one stream, and the engine's
    tok/s and one-stream TPOT over llama-server's with the same GGUF and idle-slot setting."""
    print()
    for (kind, quant, idle), by_c in tputs.items():
        if 1 in by_c and 8 in by_c:
            print(f"{label(kind, idle)} {quant}: 8 streams / 1 stream = {by_c[8] / by_c[1]:.2f}x")
    for (kind, quant, idle), by_c in tputs.items():
        peer = ("llama-server", quant, idle)
        if kind != "llamacpp" or peer not in tputs:
            continue
        ratios = ", ".join(f"{c}: {t / tputs[peer][c]:.2f}" for c, t in by_c.items() if c in tputs[peer])
        tpot = ""
        if (kind, quant, idle) in tpots and peer in tpots:
            tpot = f"; one-stream TPOT {tpots[kind, quant, idle] / tpots[peer]:.2f}x"
        print(f"{label(kind, idle)} {quant} / llama-server, tok/s at each concurrency: {ratios}{tpot}")


if __name__ == "__main__":
    main()
