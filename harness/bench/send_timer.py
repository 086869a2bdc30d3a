"""Waking the event loop at a send time, to the microsecond.

asyncio's timers cannot send an open-loop schedule to better than a millisecond: on Linux its
selector rounds every timeout *up* to whole milliseconds (epoll takes milliseconds), so a
`sleep(delay)` wakes 0 to 1 ms late, and a schedule's lag p99 sits near 1 ms before the client
has done any work (vLLM's `bench serve` paces its sends this way). A timerfd armed for the
absolute send time is a file descriptor that becomes readable at that instant: the loop's epoll
returns for it as for a socket, tens of microseconds after the time, and nothing spins.

`perf_counter` is CLOCK_MONOTONIC on Linux, the timerfd's clock, so send times keep the clock
the records stamp (`RequestRecord.send`, `scheduled`). Elsewhere (no timerfd) it is asyncio's
sleep, as before.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import itertools
import math
import os
import sys
import time

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK, _TFD_CLOEXEC, _TFD_TIMER_ABSTIME = 0o4000, 0o2000000, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc():
    if not sys.platform.startswith("linux") or time.get_clock_info("perf_counter").implementation != \
            "clock_gettime(CLOCK_MONOTONIC)":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "timerfd_create") else None
    except OSError:
        return None


class SendTimer:
    """`await timer.until(t)`: return at perf_counter time `t` (at once if it has passed). Any
    number of waiters (the schedule's sender, conversations' think times): one timerfd, armed for
    the earliest. Use it as a context manager inside the loop that awaits it."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiting: list[tuple[float, int, asyncio.Future]] = []  # a heap by due time
        self._order = itertools.count()  # ties: first come, first woken
        self._fd = -1
        libc = _libc()
        if libc is not None:
            fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._libc, self._fd = libc, fd
                self._loop.add_reader(fd, self._fired)

    def __enter__(self) -> SendTimer:
        return self

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        # waiters left when the block ends (a point that failed mid-way, its other conversations
        # still thinking) would never wake: they are cancelled, so they send nothing more
        for _, _, waiter in self._waiting:
            waiter.cancel()
        self._waiting.clear()

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    async def until(self, due: float) -> None:
        delay = due - time.perf_counter()
        if delay <= 0:
            return
        if self._fd < 0:
            await asyncio.sleep(delay)
            return
        waiter = self._loop.create_future()
        heapq.heappush(self._waiting, (due, next(self._order), waiter))
        if self._waiting[0][2] is waiter:
            self._arm(due)
        try:
            await waiter
        finally:
            waiter.cancel()  # (a no-op once woken) a cancelled waiter is skipped when its time comes

    def _arm(self, due: float) -> None:
        sec = int(due)
        nsec = min(math.ceil((due - sec) * 1e9), 999_999_999)  # rounded up: never before `due`
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(sec, nsec))
        if self._libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime")

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)  # the expiry count; reading it clears readability
        except BlockingIOError:
            return
        now = time.perf_counter()
        while self._waiting and (self._waiting[0][0] <= now or self._waiting[0][2].done()):
            waiter = heapq.heappop(self._waiting)[2]
            if not waiter.done():
                waiter.set_result(None)
        if self._waiting:
            self._arm(self._waiting[0][0])
