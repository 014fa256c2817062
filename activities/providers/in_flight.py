"""How many requests of one carrier account a worker keeps in flight.

Twilio limits the REST requests an account has in flight at once (its error 20429, HTTP 429:
"too many concurrent requests"; such a request is never processed). A worker's lanes could
keep 1,536 requests in flight by default; against a 100-request limit most would be refused, each
refused row deferred to its slice's next attempt. So a worker learns each account's limit as
TCP learns a path's window: it starts from a few requests in flight and doubles them with
every round of accepted answers (slow start) up to all its lanes; once the carrier throttles
the account it keeps 0.7 of what was in flight and grows by one request per round (AIMD).
"""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

# Requests in flight an account starts with, in each worker: under Twilio's default limit
# of 100 with one or two workers.
INITIAL = 48
# The fewest requests in flight a throttle leaves: an account throttled throughout is still
# asked at this pace, so that its slices learn it and defer (carrier_outage_seconds).
FLOOR = 4
# What a throttle leaves of the requests in flight. TCP's Reno halves its window; CUBIC keeps
# 0.7 of it, for more of the path's capacity between two losses.
DECREASE = 0.7
# With no throttle for this long, the limit grows by slow start again.
RECOVERY_SECONDS = 30.0


class StoppedWaiting(Exception):
    """The request's sender stopped while it waited for a place: it was never sent."""


class InFlightLimit:
    """The requests of one carrier account in flight from this worker, and their limit.

    A request takes a place (`place`) and gives it back with what its answer said
    (`give_back`). Only a throttle of a request sent since the last decrease lowers the limit:
    the requests in flight when the carrier first refused one are refused together, and count
    as one signal, as the losses of one TCP window do.
    """

    def __init__(self, ceiling: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ceiling = ceiling
        self._clock = clock
        self._limit = float(min(INITIAL, ceiling))
        # Below this the limit doubles each round (slow start), above it grows by one.
        self._threshold = float(ceiling)
        self._in_flight = 0
        # Decreases so far: a request carries the count it was sent under.
        self._epoch = 0
        self._throttled_at: float | None = None
        self._waiters: deque[asyncio.Future[int]] = deque()

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def place(self, stopping: asyncio.Event | None = None) -> int:
        """A place for a request, as the epoch to give back with it (`give_back`): at once
        when one is free and nobody waits, else once one is (`wait`)."""
        epoch = self.take()
        return await self.wait(stopping) if epoch is None else epoch

    def take(self) -> int | None:
        """A place for a request, as the epoch to give back with it; None when there is none
        free (or others wait first)."""
        if self._waiters or self._in_flight >= self._limit:
            return None
        self._in_flight += 1
        return self._epoch

    async def wait(self, stopping: asyncio.Event | None = None) -> int:
        """A place for a request once one is free, in the order they were asked for; raises
        StoppedWaiting if `stopping` is set first (a slice paused or cancelled starts no
        request, however long it waited)."""
        granted: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        try:
            if stopping is not None:
                stopped = asyncio.ensure_future(stopping.wait())
                try:
                    await asyncio.wait((granted, stopped), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                if stopping.is_set():
                    raise StoppedWaiting
            return await granted
        except (asyncio.CancelledError, StoppedWaiting):
            if granted.done() and not granted.cancelled():
                # Given a place as it stopped waiting: the next waiter has it instead.
                self._in_flight -= 1
                self._wake()
            else:
                granted.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(granted)
            raise

    def give_back(self, epoch: int, *, throttled: bool | None) -> None:
        """The place of a request sent under `epoch`, with what its answer says of the
        account's load: throttled (True), answered otherwise (False), or nothing (None: no
        answer, or the sender gave up)."""
        self._in_flight -= 1
        if throttled:
            self._throttled_at = self._clock()
            if epoch == self._epoch:
                self._epoch += 1
                # From what was really in flight: a limit never reached says nothing.
                current = min(self._in_flight + 1, self._limit)
                self._limit = self._threshold = max(FLOOR, current * DECREASE)
        elif (
            throttled is False
            and self._limit < self._ceiling
            and self._in_flight >= (self._limit / 2)
        ):
            # Grown only while the limit is what holds the requests back, as TCP grows a
            # window only while it is full: a sender paced far below it proves nothing.
            if (
                self._throttled_at is not None
                and self._clock() - self._throttled_at >= RECOVERY_SECONDS
            ):
                self._throttled_at, self._threshold = None, float(self._ceiling)
            grown = self._limit + (1 if self._limit < self._threshold else 1 / self._limit)
            self._limit = min(grown, self._ceiling)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            granted = self._waiters.popleft()
            if not granted.done():
                self._in_flight += 1
                granted.set_result(self._epoch)
