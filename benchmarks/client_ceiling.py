"""Client ceiling, side by side: hyperbench's client, `vllm bench serve`, GuideLLM and AIPerf
(each peer its own CLI in its own venv, run as a subprocess: benchmarks/ceiling_peers.py) against the
same synthetic engine, interleaved point by point, the first client rotating (issue 20 item 7).

(a) Highest sustained request rate with schedule lag p99 < 1 ms: every client sends a constant-
    rate schedule (hyperbench: a trace of sends i / R; the peers: their constant-rate modes, see
    ceiling_peers.py), 4 output tokens, the engine at TTFT/ITL 1 ms. The lag is measured by the
    same meter for all: the engine's arrival stamps (`GET /v1/engine/trace`, CLOCK_MONOTONIC),
    lag_i = arrival_i - i / R - the earliest such offset (so a schedule anchored as early as the
    arrivals allow; p99 of it). hyperbench's own recorded lag (send - scheduled) is shown beside it.
(b) TTFT error at 1 and 256 streams: engine TTFT 100 ms, ITL 20 ms, 16 tokens; each client's
    median TTFT (its own report) minus 100 ms.
(c) Client CPU per output token: hyperbench, process CPU around the requests; a peer, its
    subprocess tree's CPU minus that of a one-request run (its import and start-up), over the tokens.

    python benchmarks/client_ceiling.py [--out ceiling.json] [--rates 25,50,100,200,400,800]

Prints markdown tables. The peers come from scripts/install_vllm_cpu.sh and
scripts/install_client_peers.sh; one whose venv is missing is left out, in one line. A few
minutes per peer (each run starts a fresh CLI: vLLM's import alone is ~10-30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from harness.adapter import EngineClient, GenRequest, RequestRecord
from harness.bench.loadgen import run_point
from harness.bench.metrics import summarize
from backends.synthetic import launch
from ceiling_peers import find_peers

SECONDS = 2.0  # a rate point sends rate x SECONDS requests (at most MAX_REQUESTS)
MAX_REQUESTS = 3000  # under the engine's trace of 4096 arrivals
RATE_TOKENS = 4
TTFT_MS, ITL_MS, TTFT_TOKENS = 100.0, 20.0, 16
SETTLE_S = 2.0
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


def ceiling(rows: list[dict], client: str) -> float | None:
    """The highest rate of the ascending walk up to which every point held lag p99 < 1 ms."""
    best = None
    for r in rows:
        c = r.get(client)
        if c is None or "error" in c or c["failed"] or c["engine_lag_p99_ms"] >= 1.0:
            break
        best = r["rate"]
    return best


def rates_arg(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",")]
    except ValueError:
        rates = []
    if not rates or any(r <= 0 for r in rates) or rates != sorted(rates):
        raise SystemExit(f"client_ceiling: --rates wants positive req/s, ascending, comma-separated; got {text!r}")
    return rates


def point(row: dict, name: str, measure) -> None:
    """One client's share of a point; a point that broke (the engine overrun) is said, not fatal.
    Each starts on a settled machine: a peer's helper processes (AIPerf's services, GuideLLM's
    workers) may still be exiting when its CLI returns, and would fall on the next client's point."""
    time.sleep(SETTLE_S)
    try:
        row[name] = measure()
    except Exception as e:
        row[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="Also write the results as JSON here.")
    p.add_argument("--rates", default="25,50,100,200,400,800", help="Constant rates tried, ascending (req/s); "
                   "above ~800 vLLM's client opens more connections than the synthetic engine's select() holds.")
    args = p.parse_args(argv)
    rates = rates_arg(args.rates)
    from harness.models import resolve_model

    peers, missing = find_peers(str(resolve_model("tiny-llama").path))
    for line in missing:
        print(line, file=sys.stderr)
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]},
                    "clients": ["hyperbench"], "missing": missing, "rates": [], "ttft": []}
    with launch(ttft_ms=1, itl_ms=1) as endpoint:
        for peer in list(peers):
            try:
                peer.calibrate(endpoint, rate=rates[0])
            except Exception as e:
                print(f"{peer.name}: left out, its one-request run failed: {str(e)[-300:]}", file=sys.stderr)
                result["missing"].append(f"{peer.name}: not measured (its one-request run failed).")
                peers.remove(peer)
        runs = {"hyperbench": None, **{peer.name: peer for peer in peers}}
        result["clients"] = list(runs)

        def rate_point(peer, rate: float, n: int) -> dict:
            if peer is None:
                return hb_rate(endpoint, rate, n)
            return {**peer.run(endpoint, n, RATE_TOKENS, rate=rate),
                    "engine_lag_p99_ms": lag_p99_ms(arrivals(endpoint.base_url, n), rate)}

        for k, rate in enumerate(rates):
            n = min(int(rate * SECONDS), MAX_REQUESTS)
            row: dict = {"rate": rate, "requests": n}
            # interleaved, the first client rotating: none always meets a fresher machine
            for name in rotated(list(runs), k):
                point(row, name, lambda: rate_point(runs[name], rate, n))
            result["rates"].append(row)
            print(json.dumps(row), file=sys.stderr)
    with launch(ttft_ms=TTFT_MS, itl_ms=ITL_MS) as endpoint:

        def ttft_point(peer, streams: int, n: int) -> dict:
            if peer is None:
                return hb_ttft(endpoint, streams, n)
            v = peer.run(endpoint, n, TTFT_TOKENS, streams=streams)
            return {**v, "ttft_err_p50_ms": v["median_ttft_ms"] - TTFT_MS}

        for k, (streams, n) in enumerate(TTFT_POINTS):
            row = {"streams": streams, "requests": n}
            for name in rotated(list(runs), k):
                point(row, name, lambda: ttft_point(runs[name], streams, n))
            result["ttft"].append(row)
            print(json.dumps(row), file=sys.stderr)
    result["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(markdown(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


def rotated(names: list[str], k: int) -> list[str]:
    k %= len(names)
    return names[k:] + names[:k]


def markdown(result: dict) -> str:
    clients = result["clients"]
    lines = ["| rate req/s | requests | " + " | ".join(f"{c}: lag p99 ms (engine-side)" for c in clients)
             + " | hyperbench's own lag p99 ms | " + " | ".join(f"{c}: CPU µs/token" for c in clients) + " |",
             "|" + "---|" * (3 + 2 * len(clients))]

    def cell(c: dict, key: str, f: str) -> str:
        if "error" in c:
            return "error"
        return format(c[key], f) + (f" ({c['failed']} failed)" if key in ("engine_lag_p99_ms", "ttft_err_p50_ms")
                                    and c["failed"] else "")

    for r in result["rates"]:
        lag = [cell(r[c], "engine_lag_p99_ms", ".2f") for c in clients]
        cpu = [cell(r[c], "cpu_us_per_token", ".0f") for c in clients]
        lines.append(f"| {r['rate']:g} | {r['requests']} | " + " | ".join(lag)
                     + f" | {cell(r['hyperbench'], 'own_lag_p99_ms', '.2f')} | " + " | ".join(cpu) + " |")
    lines += ["", "Highest rate with lag p99 < 1 ms: " + "; ".join(
        f"{c} {ceiling(result['rates'], c) or 'below the first rate'}" for c in clients), "",
        "| streams | requests | " + " | ".join(f"{c}: TTFT p50 error ms" for c in clients)
        + " | " + " | ".join(f"{c}: CPU µs/token" for c in clients) + " |",
        "|" + "---|" * (2 + 2 * len(clients))]
    for r in result["ttft"]:
        lines.append(f"| {r['streams']} | {r['requests']} | "
                     + " | ".join(cell(r[c], "ttft_err_p50_ms", "+.2f") for c in clients) + " | "
                     + " | ".join(cell(r[c], "cpu_us_per_token", ".0f") for c in clients) + " |")
    m = result["machine"]
    lines += ["", f"{m['cpus']} CPUs, load average {m['load_avg_before']} before and {m['load_avg_after']} after."]
    lines += ["", *result["missing"]] if result["missing"] else []
    return "\n".join(lines)


if __name__ == "__main__":
    main()
