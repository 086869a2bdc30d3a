"""Load patterns: a closed loop of N concurrent streams, open-loop Poisson arrivals, or a trace's
own send times (harness/bench/trace.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import numpy as np

from harness.adapter import EngineClient, GenRequest, RequestRecord
from harness.bench.conversation import run_conversations
from harness.bench.send_timer import SendTimer


async def run_point(
    client: EngineClient,
    requests: list[GenRequest],
    kind: str,
    value: float,
    seed: int,
    on_record: Callable[[RequestRecord], None],
    max_concurrency: int | None = None,
    think_s: float = 0.0,
    encode: Callable[[str], list[int]] | None = None,
    answered: dict[tuple[int, int], str] | None = None,
) -> list[RequestRecord]:
    """Send every request once under the load pattern; `on_record` sees each as it finishes.
    Requests that are turns of conversations (GenRequest.turn set) go through
    harness/bench/conversation.py: `think_s`, `encode` (answer text -> ids) and `answered` (answers a
    cut session already has) are theirs."""
    point = f"{kind}={_fmt(value)}"
    records: list[RequestRecord] = []
    loop = asyncio.get_running_loop()

    # on_record runs as a loop callback, where an exception would only be logged: a record that
    # cannot be written (a full disk) is kept here and stops the point at its next request
    write_failed: list[BaseException] = []

    def done(rec: RequestRecord) -> None:
        records.append(rec)
        try:
            on_record(rec)
        except BaseException as e:  # noqa: BLE001 (raised again in the point's own task)
            write_failed.append(e)

    def check_written() -> None:
        if write_failed:
            raise write_failed[0]

    async def one(i: int, req: GenRequest, scheduled: float | None = None) -> RequestRecord:
        check_written()
        rec = await client.generate(req, RequestRecord(request_id=i, point=point, scheduled=scheduled,
                                                       conversation=req.conversation, turn=req.turn))
        # after the stream's next send: writing the record (bench appends it to records.jsonl)
        # must not delay the next request of a closed loop
        loop.call_soon(done, rec)
        return rec

    if requests and requests[0].turn is not None:
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency and kind != "concurrency" else None
        await run_conversations(one, requests, kind, value, seed, think_s, encode, answered or {}, sem)
    elif kind == "concurrency":
        queue = list(enumerate(requests))[::-1]

        async def stream() -> None:
            last_end = None
            while queue:
                i, req = queue.pop()
                rec = await one(i, req)
                if last_end is not None:
                    rec.send_gap = rec.send - last_end
                last_end = rec.end

        await asyncio.gather(*(stream() for _ in range(int(value))))
    else:
        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        offsets = schedule(requests, kind, value, seed)
        # perf_counter: the clock of `send`, so that send - scheduled is the lag
        t0 = time.perf_counter()
        # only the requests in flight are held: a finished one's task is dropped at once (a long
        # open-loop point would otherwise keep every task it ever made until its end)
        pending: set[asyncio.Task] = set()
        failed: list[BaseException] = []

        def finished(task: asyncio.Task) -> None:
            pending.discard(task)
            if not task.cancelled() and task.exception() is not None:
                failed.append(task.exception())

        with SendTimer() as timer:  # wakes at each send time to the microsecond, not the ms
            for (i, req), offset in zip(enumerate(requests), offsets):
                if failed or write_failed:
                    break  # a request or its record failed past recovery: send no more of the point
                due = t0 + offset
                await timer.until(due)

                async def limited(i=i, req=req, due=due):
                    if sem is None:
                        return await one(i, req, due)
                    async with sem:
                        return await one(i, req, due)

                task = asyncio.create_task(limited())
                pending.add(task)
                task.add_done_callback(finished)
        await asyncio.gather(*pending)
        if failed:
            raise failed[0]
    await asyncio.sleep(0)  # the last records' `done` callbacks
    check_written()
    records.sort(key=lambda r: r.request_id)
    return records


def schedule(requests: list[GenRequest], kind: str, value: float, seed: int) -> np.ndarray:
    """Each request's send time, seconds from the point's start: Poisson arrivals at `value`
    req/s, or a trace's own times (GenRequest.at_s) times the time scale `value`, from the
    first request given (a resumed point sends its missing requests on the trace's schedule)."""
    if kind == "trace":
        at = np.array([r.at_s or 0.0 for r in requests]) * value
        return at - at.min() if len(at) else at
    return np.cumsum(poisson_gaps(len(requests), value, seed))


def poisson_gaps(n: int, rate: float, seed: int) -> np.ndarray:
    """The seeded schedule of a rate point: the gap before each of `n` sends (all 0 at inf)."""
    if math.isinf(rate):
        return np.zeros(n)
    return np.random.default_rng(seed).exponential(1.0 / rate, n)


def rate_fields(records: list[RequestRecord], rate: float, seed: int) -> dict:
    """A rate point's three rates, so a short draw is not read as client lag: the target, the
    seeded schedule's own (n sends over the drawn time to the last, e.g. 45.6 req/s for a 50 req/s
    target over 500 requests), and the sends achieved over the same span (from the first send
    back to the schedule's start, which is first send - first gap)."""
    gaps = poisson_gaps(len(records), rate, seed)
    span = float(gaps.sum())
    sends = sorted(r.send for r in records)
    out = {"schedule_rate": len(records) / span if span > 0 else math.inf}
    sent_span = sends[-1] - sends[0] + (float(gaps[0]) if len(gaps) else 0.0) if sends else 0.0
    out["send_rate"] = len(records) / sent_span if sent_span > 0 else math.inf
    return out


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "inf"
    return str(int(v)) if float(v).is_integer() else str(v)
