"""Load patterns: a closed loop of N concurrent streams, or open-loop Poisson arrivals."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import numpy as np

from harness.adapter import EngineClient, GenRequest, RequestRecord


async def run_point(
    client: EngineClient,
    requests: list[GenRequest],
    kind: str,
    value: float,
    seed: int,
    on_record: Callable[[RequestRecord], None],
    max_concurrency: int | None = None,
) -> list[RequestRecord]:
    """Send every request once under the load pattern; `on_record` sees each as it finishes."""
    point = f"{kind}={_fmt(value)}"
    records: list[RequestRecord] = []

    async def one(i: int, req: GenRequest) -> None:
        rec = await client.generate(req, RequestRecord(request_id=i, point=point))
        records.append(rec)
        on_record(rec)

    if kind == "concurrency":
        queue = list(enumerate(requests))[::-1]

        async def worker() -> None:
            while queue:
                i, req = queue.pop()
                await one(i, req)

        await asyncio.gather(*(worker() for _ in range(int(value))))
    else:
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        rng = np.random.default_rng(seed)
        gaps = np.zeros(len(requests)) if math.isinf(value) else rng.exponential(1.0 / value, len(requests))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        arrival = 0.0
        tasks = []
        for (i, req), gap in zip(enumerate(requests), gaps):
            arrival += gap
            delay = t0 + arrival - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

            async def limited(i=i, req=req):
                if sem is None:
                    return await one(i, req)
                async with sem:
                    return await one(i, req)

            tasks.append(asyncio.create_task(limited()))
        await asyncio.gather(*tasks)
    records.sort(key=lambda r: r.request_id)
    return records


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "inf"
    return str(int(v)) if float(v).is_integer() else str(v)
