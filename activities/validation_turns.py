"""Turns for validating recipient files: at most so many large ones at once per worker.

A validation of 1,000,000 rows holds about 150 MB (the file, its blocks in flight, the
numbers seen) and keeps both cores busy for seconds. A worker runs up to
`HERALD_MAX_CONCURRENT_ACTIVITIES` activities, so without turns sixteen uploads arriving
together validate side by side: each takes no less time than one after the other would,
the worker's sends starve meanwhile, and their memory can pass the pod's limit, which kills
the worker with every activity it holds. A file of at most `SMALL_FILE_BYTES` (tens of
thousands of rows, validated in well under a second) takes no turn: a short batch never
waits behind a long one.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import Gauge

# Files of this size or less never wait for a turn: about 40,000 rows of a typical list.
SMALL_FILE_BYTES = 1 << 20


class ValidationTurns:
    """`at_once` turns, given in the order they were asked for; `validations` counts the
    validations running (with a turn or without needing one) and waiting, by `state`."""

    def __init__(self, at_once: int, validations: Gauge) -> None:
        self._turns = asyncio.Semaphore(at_once)
        self._running = validations.labels("running")
        self._waiting = validations.labels("waiting")

    @contextlib.asynccontextmanager
    async def turn(self, size_bytes: int) -> AsyncIterator[None]:
        """Held while a file of `size_bytes` is validated: a turn if it is larger than
        `SMALL_FILE_BYTES`, waited for (cancellably) while all are taken."""
        if size_bytes <= SMALL_FILE_BYTES:
            with self._running.track_inprogress():
                yield
            return
        with self._waiting.track_inprogress():
            await self._turns.acquire()
        try:
            with self._running.track_inprogress():
                yield
        finally:
            self._turns.release()
