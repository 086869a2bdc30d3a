"""The open-loop send timer (harness/bench/send_timer.py): never early, and on Linux to a fraction
of the millisecond asyncio's own sleep rounds its timeouts up to."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import numpy as np
import pytest

from harness.bench import send_timer


async def _lateness_ms(n: int = 60, gap_s: float = 0.002) -> tuple[bool, np.ndarray]:
    with send_timer.SendTimer() as timer:
        t0 = time.perf_counter() + 0.01
        late = []
        for i in range(n):
            due = t0 + i * gap_s
            await timer.until(due)
            late.append(time.perf_counter() - due)
        return timer.precise, 1000 * np.array(late)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_wakes_at_the_send_time_never_before():
    precise, late = asyncio.run(_lateness_ms())
    assert precise
    assert late.min() >= 0
    if os.getloadavg()[0] <= (os.cpu_count() or 1):  # a core free: the scheduler wakes us at once
        assert np.median(late) < 0.3, late  # asyncio.sleep: 0-1 ms from its rounding alone


def test_without_a_timerfd_it_is_asyncios_sleep(monkeypatch):
    monkeypatch.setattr(send_timer, "_libc", lambda: None)
    precise, late = asyncio.run(_lateness_ms(n=5))
    assert not precise and late.min() >= 0


def test_a_time_passed_returns_at_once():
    async def go():
        with send_timer.SendTimer() as timer:
            t = time.perf_counter()
            await timer.until(t - 1.0)
            return time.perf_counter() - t

    assert asyncio.run(go()) < 0.01
