"""Paces a send activity to its sender's rate limit, on the timeline PostgreSQL keeps for
that sender, so the limit holds across every worker and batch at once."""

import asyncio
import contextlib
from collections import deque

import asyncpg

from store import numbers

# Each reservation takes this much of the sender's timeline: small enough that concurrent
# slices interleave fairly and a stop wastes little, large enough to cost few statements.
TRANCHE_SECONDS = 0.2


class SenderPacer:
    def __init__(self, pool: asyncpg.Pool, number: str) -> None:
        self._pool = pool
        self._number = number
        self._lock = asyncio.Lock()
        self._slots: deque[float] = deque()
        self._unlimited = False

    async def turn(self, stopping: asyncio.Event) -> bool:
        """Wait until the next message may go; False when `stopping` is set first."""
        if self._unlimited:
            return not stopping.is_set()
        loop = asyncio.get_running_loop()
        async with self._lock:
            if not self._slots and not self._unlimited:
                granted = await numbers.reserve_slots(
                    self._pool, self._number, seconds=TRANCHE_SECONDS
                )
                if granted is None:
                    self._unlimited = True
                else:
                    first = loop.time() + granted.starts_in
                    self._slots.extend(first + i * granted.interval for i in range(granted.count))
            at = self._slots.popleft() if self._slots else loop.time()
        delay = at - loop.time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
        return not stopping.is_set()
