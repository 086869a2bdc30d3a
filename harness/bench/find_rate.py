"""`bench --find-max-rate`: the highest Poisson rate at which at least a stated share of requests
meets every SLO (--slo), found by bracketing (doubling, or halving when the first rate already
fails) and then bisection until the bracket is within the stated relative precision.

Every rate tried is an ordinary point of the run (records, summary, report); the walk is kept in
summary.json `max_rate` so the curve it found the answer on can be read back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

MAX_POINTS = 24  # a bound on the walk: doubling from 1 req/s passes 10^6 req/s in 20 steps


async def find_max_rate(measure: Callable[[float], Awaitable[dict]], start: float, share: float,
                        precision: float) -> dict:
    """`measure(rate)` runs one rate point and returns its summary (with `slo_attainment`).
    Returns {rate, bracket, walk, ...}: `rate` the highest rate that passed (None if none did),
    `bracket` [passed, failed] with (failed - passed) / failed <= precision when found."""
    walk: list[dict] = []

    async def passes(rate: float) -> bool:
        point = await measure(rate)
        share_met = point.get("slo_attainment") or 0.0
        walk.append({"rate": rate, "slo_attainment": share_met, "passed": share_met >= share})
        return walk[-1]["passed"]

    lo, hi = None, None  # highest rate that passed, lowest that failed
    rate = start
    while len(walk) < MAX_POINTS and (lo is None or hi is None):
        if await passes(rate):
            lo = rate
            rate *= 2
        else:
            hi = rate
            rate /= 2
    while lo is not None and hi is not None and (hi - lo) / hi > precision and len(walk) < MAX_POINTS:
        mid = (lo + hi) / 2
        if await passes(mid):
            lo = mid
        else:
            hi = mid
    found = lo is not None and hi is not None and (hi - lo) / hi <= precision
    return {"rate": lo, "bracket": [lo, hi], "found": found, "goodput_share": share, "precision": precision,
            "walk": walk}
