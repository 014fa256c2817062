"""Paces a send activity to its sender's rate limit, on the timeline PostgreSQL keeps for
that sender, so the limit holds across every worker and batch at once."""

import asyncio

import asyncpg

from activities.outages import through_outages
from activities.waiting import set_within
from store import numbers

# Each reservation takes this much of the sender's timeline: small enough that concurrent
# slices interleave fairly and a stop wastes little, large enough to cost few statements.
TRANCHE_SECONDS = 0.2


class SenderPacer:
    """Hands out the send times of the sender's latest reservation. A reservation is kept as
    its first time, interval and count, and each time computed when it is taken, so the
    pacer's memory is the same whatever the rate."""

    def __init__(self, pool: asyncpg.Pool, number: str) -> None:
        self._pool = pool
        self._number = number
        self._lock = asyncio.Lock()
        self._first = 0.0
        self._interval = 0.0
        self._count = 0
        self._taken = 0
        self._unlimited = False

    async def turn(self, stopping: asyncio.Event) -> bool:
        """Wait until the next message may go; False when `stopping` is set first."""
        if self._unlimited:
            return not stopping.is_set()
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._taken >= self._count and not self._unlimited:
                granted = await through_outages(
                    lambda: numbers.reserve_slots(self._pool, self._number, seconds=TRANCHE_SECONDS)
                )
                if granted is None:
                    self._unlimited = True
                else:
                    self._first = loop.time() + granted.starts_in
                    self._interval = granted.interval
                    self._count = granted.count
                    self._taken = 0
            if self._taken < self._count:
                at = self._first + self._taken * self._interval
                self._taken += 1
            else:
                at = loop.time()
        return not await set_within(stopping, at - loop.time())
