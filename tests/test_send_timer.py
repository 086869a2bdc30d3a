"""The open-loop send timer (harness/bench/send_timer.py): never early, on a timerfd where Linux
has one, any number of waiters woken in time order, none left hanging."""

from __future__ import annotations

import asyncio
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
    assert precise  # the timerfd, not asyncio's ms-rounded sleep (how precise: test_trace's 1 ms
    assert late.min() >= 0  # replay check and benchmarks/client_ceiling.py)


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


def test_many_waiters_each_wake_at_their_own_time_in_order():
    """Conversations wait out their think times on one timer: 40 waiters at shuffled times (ties
    too), one cancelled, each woken at or after its time, in time order."""

    async def go():
        with send_timer.SendTimer() as timer:
            t0 = time.perf_counter() + 0.02
            dues = [t0 + 0.001 * (i // 2) for i in range(40)]
            order = np.random.default_rng(0).permutation(40)
            woke: list[tuple[int, float]] = []

            async def wait(i):
                await timer.until(dues[i])
                woke.append((i, time.perf_counter()))

            tasks = {i: asyncio.create_task(wait(i)) for i in order}
            await asyncio.sleep(0)
            tasks[order[0]].cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            return dues, order[0], woke

    dues, cancelled, woke = asyncio.run(go())
    assert sorted(i for i, _ in woke) == sorted(set(range(40)) - {cancelled})
    assert all(t >= dues[i] for i, t in woke)
    assert [dues[i] for i, _ in woke] == sorted(dues[i] for i, _ in woke)


def test_waiters_left_when_the_block_ends_are_cancelled_not_left_hanging():
    async def go():
        with send_timer.SendTimer() as timer:
            task = asyncio.create_task(timer.until(time.perf_counter() + 60))
            await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(task, 5)
        except asyncio.CancelledError:
            return "cancelled"
        return "woke"

    assert asyncio.run(go()) == "cancelled"
