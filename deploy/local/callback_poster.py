"""The emulator's status callbacks on the wire: one HTTP/1.1 POST per status change, as
Twilio posts them, on keep-alive connections.

The emulator posts two callbacks per message on the same cores as Herald, so each should
cost as little CPU as Python allows: a request is bytes written to a connection and a
function called with the answer's status, with no task, future, semaphore or timeout context
of its own (Herald's lean client, activities/providers/http1.py, awaits each request: for a
fixture's fire-and-forget posts that machinery cost about as much as the request itself).
The requests that come due in one turn of the event loop are written together: with
`pipeline`, up to PIPELINE_DEPTH of them back to back on one connection (HTTP/1.1
pipelining: each is still a request of its own, answered on its own and in order), which
saves a system call and a wake-up on each side per request; without, one request at a time
per connection, as Twilio posts. One timer sweeps the connections for answers overdue, as
each request's own timeout would.
"""

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

from activities.providers.http1 import Origin

# What a request's answer is given to: its status, or None if none came (no connection,
# closed before the answer, or overdue).
Answered = Callable[[int | None], None]
SWEEP_SECONDS = 1.0
# Requests in flight on one pipelined connection at most.
PIPELINE_DEPTH = 16


class _Connection(asyncio.Protocol):
    def __init__(self, poster: "CallbackPoster", origin: Origin) -> None:
        self._poster = poster
        self._origin = origin
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        # The requests written and not yet answered: when each was written, and its callback.
        self.in_flight: deque[tuple[float, Answered]] = deque()
        self._reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, requests: list[tuple[bytes, Answered]]) -> None:
        assert self.transport is not None
        now = self._poster.loop.time()
        self.in_flight.extend((now, answered) for _, answered in requests)
        self.transport.write(b"".join(request for request, _ in requests))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()
            return
        if self._reusable and self.transport is not None and not self.transport.is_closing():
            self._poster.ready(self._origin, self)

    def on_message_complete(self) -> None:
        if not self.in_flight:
            return
        _, answered = self.in_flight.popleft()
        if not self._parser.should_keep_alive():
            self._reusable = False
            self.close()
        answered(self._parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._poster.lost(self._origin, self)
        in_flight, self.in_flight = self.in_flight, deque()
        for _, answered in in_flight:
            answered(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class CallbackPoster:
    """Up to `connections` keep-alive connections per origin; requests beyond wait in order."""

    def __init__(self, *, connections: int, timeout: float, pipeline: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.pipeline = pipeline
        self._limit = connections
        self._timeout = timeout
        # Connections with room for more requests (none in flight, without `pipeline`).
        self._free: dict[Origin, set[_Connection]] = {}
        self._open: dict[Origin, set[_Connection]] = {}
        self._connecting: dict[Origin, int] = {}
        self._waiting: dict[Origin, deque[tuple[bytes, Answered]]] = {}
        self._flushing: set[Origin] = set()
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def _depth(self) -> int:
        return PIPELINE_DEPTH if self.pipeline else 1

    def post(self, origin: Origin, request: bytes, answered: Answered) -> None:
        """Write `request` (an HTTP/1.1 request whole, for `origin`); `answered` is called
        with the answer's status, or None. Written at the end of this turn of the event loop,
        with the other requests due in it."""
        waiting = self._waiting.get(origin)
        if waiting is None:
            waiting = self._waiting[origin] = deque()
        waiting.append((request, answered))
        if origin not in self._flushing:
            self._flushing.add(origin)
            self.loop.call_soon(self._flush, origin)

    def _flush(self, origin: Origin) -> None:
        """Write the requests waiting on the connections with room; open more for those
        left, up to the limit."""
        self._flushing.discard(origin)
        waiting = self._waiting.get(origin)
        free = self._free.get(origin)
        while waiting and free:
            connection = free.pop()
            room = self._depth - len(connection.in_flight)
            connection.send([waiting.popleft() for _ in range(min(room, len(waiting)))])
            if len(connection.in_flight) < self._depth:
                free.add(connection)
        if waiting:
            self._grow(origin, len(waiting))

    def _grow(self, origin: Origin, waiting: int) -> None:
        connecting = self._connecting.get(origin, 0)
        wanted = -(-waiting // self._depth) - connecting
        room = self._limit - len(self._open.get(origin, ())) - connecting
        for _ in range(max(0, min(wanted, room))):
            self._connecting[origin] = self._connecting.get(origin, 0) + 1
            task = self.loop.create_task(self._connect(origin))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, origin: Origin) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                _, connection = await self.loop.create_connection(
                    lambda: _Connection(self, origin), origin.host, origin.port
                )
        except (OSError, TimeoutError):
            self._connecting[origin] -= 1
            # Nothing listens: the requests waiting now get no answer (none was sent).
            for _, answered in self._waiting.pop(origin, deque()):
                answered(None)
            return
        self._connecting[origin] -= 1
        self._open.setdefault(origin, set()).add(connection)
        self.ready(origin, connection)

    def ready(self, origin: Origin, connection: _Connection) -> None:
        """`connection` has room again: it takes requests waiting."""
        if len(connection.in_flight) < self._depth:
            self._free.setdefault(origin, set()).add(connection)
        if self._waiting.get(origin) and origin not in self._flushing:
            self._flush(origin)

    def lost(self, origin: Origin, connection: _Connection) -> None:
        self._open.get(origin, set()).discard(connection)
        self._free.get(origin, set()).discard(connection)
        if self._waiting.get(origin):
            self._grow(origin, len(self._waiting[origin]))

    def _sweep(self) -> None:
        now = self.loop.time()
        for connections in self._open.values():
            for connection in list(connections):
                if connection.in_flight and now - connection.in_flight[0][0] > self._timeout:
                    connection.close()
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    async def close(self) -> None:
        self._sweeper.cancel()
        for task in self._tasks:
            task.cancel()
        for connections in self._open.values():
            for connection in list(connections):
                connection.close()
        for waiting in self._waiting.values():
            for _, answered in waiting:
                answered(None)
        self._waiting.clear()
